#!/usr/bin/env bash
# Bring up the local test cluster (etcd, OpenLDAP, 2x Dex, the test issuer, kube-apiserver with
# --oidc-* flags and a second one with --authentication-config, kube-controller-manager)
# on 127.0.0.1 with free ports. With NODE=1 also the node (node.sh: kube-scheduler, containerd,
# kubelet, kube-proxy in a network namespace of their own), which tests that run pods need. State goes to CLUSTER_DIR (default target/cluster); the env file
# $CLUSTER_DIR/env is written last. Idempotent: a healthy cluster is left alone, a partly running
# one gets its missing components restarted with the same ports and keys.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# One up/down at a time per cluster (parallel test processes may all call cluster-up).
mkdir -p "$(dirname "$CLUSTER_DIR")"
exec 9>"$CLUSTER_DIR.lock"
flock 9

[[ -z "$KUBERNETES_VERSION_ASKED" || "$KUBERNETES_VERSION_ASKED" == "$KUBERNETES_VERSION" ]] ||
	die "the cluster in $CLUSTER_DIR runs Kubernetes $KUBERNETES_VERSION, not $KUBERNETES_VERSION_ASKED: make cluster-down first"
NODE="${NODE:-}"
wanted=("${COMPONENTS[@]}")
[[ "$NODE" != 1 ]] || wanted+=("${NODE_COMPONENTS[@]}")

all_healthy() {
	[[ -f "$CLUSTER_DIR/env" ]] || return 1
	local n
	for n in "${wanted[@]}"; do
		pid_of "$n" >/dev/null || return 1
		is_ready "$n" || return 1
	done
}

if all_healthy; then
	log "cluster in $CLUSTER_DIR is already up; env: $CLUSTER_DIR/env"
	exit 0
fi

# ---- prerequisites -------------------------------------------------------------------------
for tool in go curl /usr/sbin/slapd /usr/sbin/slapadd /usr/sbin/slappasswd setsid; do
	command -v "$tool" >/dev/null || die "missing $tool (apt-get install -y slapd curl; Go toolchain)"
done

mkdir -p "$CLUSTER_DIR" "$RUN" "$LOGS" "$PKI" "$CLUSTER_BIN"

# ---- build (Go's build cache makes this a no-op/relink when nothing changed) -----------------
# The version Kubernetes' own build stamps in (kubectl get nodes, /version's gitVersion).
version_ldflags() { # version_ldflags v1.37.2
	local vpkg=k8s.io/component-base/version minor="${1#v1.}"
	echo "-X $vpkg.gitVersion=$1 -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=${minor%%.*}"
}
build() {
	local t0=$SECONDS
	log "building kcluster, dex and dexkey into $CLUSTER_BIN (log: $LOGS/build.log)"
	# kcluster is static (as upstream builds Kubernetes), so that kctools, the node's tool image's
	# binary, shares its build cache.
	{
		(cd "$CLUSTER_SRC" && CGO_ENABLED=0 go build -ldflags="$(version_ldflags "$KUBE_MODULE_VERSION")" -o "$CLUSTER_BIN/kcluster" ./cmd/kcluster) &&
			(cd "$CLUSTER_SRC/dex" && go build -o "$CLUSTER_BIN/dex" github.com/dexidp/dex/cmd/dex) &&
			(cd "$CLUSTER_SRC/dex" && go build -o "$CLUSTER_BIN/dexkey" ./cmd/dexkey)
	} >>"$LOGS/build.log" 2>&1 || {
		tail -n 40 "$LOGS/build.log" >&2
		die "build failed"
	}
	log "build done in $((SECONDS - t0))s"
}
build

# kubectl of the cluster's version (kctools, also the tool image's binary), first on PATH for
# `source env` and make test: kubectl 1.32 against 1.37, outside the supported skew of one
# minor, misreads multi-document files ("json: invalid character '-' in numeric literal").
build_kubectl() {
	local src
	if [[ -x "$CLUSTER_BIN/kctools" && "$CLUSTER_BIN/kctools" -nt "$CLUSTER_SRC/go.sum" ]]; then
		src="$(find "$CLUSTER_SRC/cmd/kctools" -newer "$CLUSTER_BIN/kctools" -print -quit)"
		[[ -n "$src" ]] || { ln -sfn kctools "$CLUSTER_BIN/kubectl"; return 0; }
	fi
	log "building kctools (kubectl $(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$CLUSTER_SRC/go.mod")) into $CLUSTER_BIN"
	(cd "$CLUSTER_SRC" && CGO_ENABLED=0 go build -ldflags=-s -o "$CLUSTER_BIN/kctools" ./cmd/kctools) >>"$LOGS/build.log" 2>&1 || {
		tail -n 40 "$LOGS/build.log" >&2
		die "build failed"
	}
	ln -sfn kctools "$CLUSTER_BIN/kubectl"
}
build_kubectl

# Another release than go.mod's (KUBERNETES_VERSION, lib.sh): kcluster and kubectl of it, from a
# module in KUBE_BIN/../src with this directory's cmd/ and that release only: k8s.io/kubernetes
# at it, each staging module its go.mod replaces pinned to the same release (as go.mod does for
# its own), and the rest as `go mod tidy` resolves it (etcd as that release's go.mod names it).
build_kubernetes() {
	[[ "$KUBE_BIN" != "$CLUSTER_BIN" ]] || return 0
	local ver="v$KUBERNETES_VERSION" src="${KUBE_BIN%/bin}/src" upstream t0=$SECONDS
	log "building kcluster and kctools of Kubernetes $ver into $KUBE_BIN (log: $LOGS/build.log)"
	mkdir -p "$src" "$KUBE_BIN"
	rm -rf "$src/cmd"
	cp -r "$CLUSTER_SRC/cmd" "$src/cmd"
	{
		upstream="$(go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')" &&
			[[ -f "$upstream" ]] &&
			{
				printf 'module kubeconfig-operator/tests/cluster\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
					"$(awk '$1 == "go" { print $2 }' "$CLUSTER_SRC/go.mod")" "$ver"
				awk -v v="v0.${ver#v1.}" '$2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }' "$upstream"
				echo ")"
			} >"$src/go.mod.want" &&
			if cmp -s "$src/go.mod.want" "$src/go.mod.wanted" && [[ -f "$src/go.sum" ]]; then
				rm "$src/go.mod.want"
			else
				cp "$src/go.mod.want" "$src/go.mod" && (cd "$src" && go mod tidy) && mv "$src/go.mod.want" "$src/go.mod.wanted"
			fi &&
			(cd "$src" && CGO_ENABLED=0 go build -ldflags="$(version_ldflags "$ver")" -o "$KUBE_BIN/kcluster" ./cmd/kcluster) &&
			(cd "$src" && CGO_ENABLED=0 go build -ldflags=-s -o "$KUBE_BIN/kctools" ./cmd/kctools)
	} >>"$LOGS/build.log" 2>&1 || {
		tail -n 40 "$LOGS/build.log" >&2
		die "building Kubernetes $ver failed"
	}
	ln -sfn kctools "$KUBE_BIN/kubectl"
	log "Kubernetes $ver built in $((SECONDS - t0))s"
}
build_kubernetes
[[ -f "$CLUSTER_DIR/kubernetes-version" ]] || echo "$KUBERNETES_VERSION" >"$CLUSTER_DIR/kubernetes-version"

# kubelogin (`kubectl oidc-login`), the plugin of exec kubeconfigs, for tests/kubelogin.rs and for
# trying them by hand: built from its upstream source in ../shared/tools/kubelogin, since the Go
# module proxy does not serve its module. Without that directory it is not built, and
# tests/kubelogin.rs fails saying so.
build_kubelogin() {
	local script="$REPO_ROOT/../shared/tools/kubelogin/build.sh"
	[[ -x "$CLUSTER_BIN/kubectl-oidc_login" ]] && return 0
	[[ -f "$script" ]] || { log "no $script: kubectl oidc-login not built"; return 0; }
	log "building kubelogin into $CLUSTER_BIN/kubectl-oidc_login"
	bash "$script" "$CLUSTER_BIN/kubectl-oidc_login" >>"$LOGS/build.log" 2>&1 || {
		tail -n 40 "$LOGS/build.log" >&2
		die "building kubelogin failed"
	}
}
build_kubelogin

# The consumers' own loaders (tests/consumers: Cluster API's, Flux's and Argo CD's code reading
# the Secrets the operator writes), for tests/formats.rs, as kubeconfig-consumers. Argo CD v3.6
# needs Go 1.27, which the go command fetches from the module proxy (GOTOOLCHAIN). Built beside
# the start of the cluster, at a lower priority; the script waits for it before it ends.
build_consumers() {
	local src="$REPO_ROOT/tests/consumers" out="$CLUSTER_BIN/kubeconfig-consumers"
	[[ -x "$out" && -z "$(find "$src" -newer "$out" -print -quit)" ]] && return 0
	log "building the consumers' loaders into $out (log: $LOGS/consumers-build.log)"
	(cd "$src" && GOTOOLCHAIN=go1.27.3 nice go build -o "$out" .) >"$LOGS/consumers-build.log" 2>&1 || {
		tail -n 40 "$LOGS/consumers-build.log" >&2
		return 1
	}
	log "consumers' loaders built"
}
build_consumers &
consumers_build=$!

# The node's images, FROM scratch: the pod sandbox (pause) and the tests' tools (kctools).
build_images() {
	local t0=$SECONDS
	log "building the pause and tools images into $CLUSTER_BIN/images"
	mkdir -p "$CLUSTER_BIN/images"
	{
		(cd "$CLUSTER_SRC" && CGO_ENABLED=0 go build -ldflags=-s -o "$CLUSTER_BIN/pause" ./cmd/pause)
	} >>"$LOGS/build.log" 2>&1 || {
		tail -n 40 "$LOGS/build.log" >&2
		die "build failed"
	}
	if [[ "$CLUSTER_BIN/pause" -nt "$CLUSTER_BIN/images/pause.tar" ]]; then
		"$CLUSTER_BIN/kcluster" oci-archive --name "$PAUSE_IMAGE" --out "$CLUSTER_BIN/images/pause.tar" \
			--entrypoint /pause --user 65535 --file "/pause=$CLUSTER_BIN/pause"
	fi
	if [[ "$CLUSTER_BIN/kctools" -nt "$CLUSTER_BIN/images/tools.tar" ]]; then
		"$CLUSTER_BIN/kcluster" oci-archive --name "$TOOLS_IMAGE" --out "$CLUSTER_BIN/images/tools.tar" \
			--entrypoint /kctools --user 65532 --file "/kctools=$CLUSTER_BIN/kctools" --dir /tmp
	fi
	log "images done in $((SECONDS - t0))s"
}
[[ "$NODE" != 1 ]] || build_images

# ---- ports, keys, secrets (kept across restarts of this cluster) ---------------------------
if [[ ! -f "$CLUSTER_DIR/ports" ]]; then
	mapfile -t p < <("$CLUSTER_BIN/kcluster" freeports 9)
	((${#p[@]} == 9)) || die "could not allocate ports"
	cat >"$CLUSTER_DIR/ports.tmp" <<EOF
ETCD_PORT=${p[0]}
ETCD_PEER_PORT=${p[1]}
LDAP_PORT=${p[2]}
DEX_PORT=${p[3]}
DEX_SHORT_PORT=${p[4]}
API_PORT=${p[5]}
KCM_PORT=${p[6]}
TEST_ISSUER_PORT=${p[7]}
API_AUTHN_PORT=${p[8]}
EOF
	mv "$CLUSTER_DIR/ports.tmp" "$CLUSTER_DIR/ports"
fi
load_ports
# The kubeconfig page's port for tests (its redirect URL must be registered at Dex exactly);
# added to clusters whose ports file predates it.
if [[ -z "${CONSOLE_PORT:-}" ]]; then
	CONSOLE_PORT=$("$CLUSTER_BIN/kcluster" freeports 1)
	[[ "$CONSOLE_PORT" =~ ^[0-9]+$ ]] || die "could not allocate the console port"
	echo "CONSOLE_PORT=$CONSOLE_PORT" >>"$CLUSTER_DIR/ports"
fi
# The node's ports on the host (kube-scheduler's, the kubelet's as netfwd forwards it).
if [[ -z "${SCHED_PORT:-}" || -z "${KUBELET_PORT:-}" ]]; then
	mapfile -t p < <("$CLUSTER_BIN/kcluster" freeports 2)
	((${#p[@]} == 2)) || die "could not allocate ports"
	printf 'SCHED_PORT=%s\nKUBELET_PORT=%s\n' "${p[0]}" "${p[1]}" >>"$CLUSTER_DIR/ports"
fi
# Ports added after this cluster was first brought up: appended, so running components keep theirs.
if [[ -z "${TEST_ISSUER_PORT:-}" || -z "${API_AUTHN_PORT:-}" ]]; then
	mapfile -t p < <("$CLUSTER_BIN/kcluster" freeports 2)
	((${#p[@]} == 2)) || die "could not allocate ports"
	printf 'TEST_ISSUER_PORT=%s\nAPI_AUTHN_PORT=%s\n' "${p[0]}" "${p[1]}" >>"$CLUSTER_DIR/ports"
	load_ports
fi

"$CLUSTER_BIN/kcluster" certs "$PKI"
"$CLUSTER_BIN/kcluster" testissuer-keys "$CLUSTER_DIR/test-issuer"

rand() { tr -dc 'A-Za-z0-9' </dev/urandom | head -c "${1:-24}" || true; }
if [[ ! -f "$CLUSTER_DIR/secrets" ]]; then
	umask 077
	cat >"$CLUSTER_DIR/secrets.tmp" <<EOF
ALICE_PASSWORD=$(rand)
BOB_PASSWORD=$(rand)
OIDC_CLIENT_SECRET=$(rand 32)
OIDC_OTHER_CLIENT_SECRET=$(rand 32)
LDAP_ADMIN_PASSWORD=$(rand 32)
EOF
	mv "$CLUSTER_DIR/secrets.tmp" "$CLUSTER_DIR/secrets"
	umask 022
fi
# shellcheck disable=SC1091
source "$CLUSTER_DIR/secrets"

# ---- OpenLDAP: the user directory behind Dex (alice in team-a, bob in no group) ------------
LDAPDIR="$CLUSTER_DIR/ldap"
if [[ ! -f "$LDAPDIR/.seeded" ]]; then
	rm -rf "$LDAPDIR"
	mkdir -p "$LDAPDIR/data"
	ssha() { # hash a password for userPassword without putting it on a command line
		local f="$LDAPDIR/.pw"
		(umask 077 && printf '%s' "$1" >"$f")
		/usr/sbin/slappasswd -h '{SSHA}' -T "$f"
		rm -f "$f"
	}
	cat >"$LDAPDIR/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $LDAPDIR/slapd.pid
argsfile $LDAPDIR/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 104857600
suffix "dc=example,dc=com"
rootdn "cn=admin,dc=example,dc=com"
rootpw $(ssha "$LDAP_ADMIN_PASSWORD")
directory $LDAPDIR/data
access to attrs=userPassword by anonymous auth by self write by * none
access to * by * read
EOF
	cat >"$LDAPDIR/seed.ldif" <<EOF
dn: dc=example,dc=com
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=com
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=com
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
mail: alice@example.com
userPassword: $(ssha "$ALICE_PASSWORD")

dn: uid=bob,ou=people,dc=example,dc=com
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
mail: bob@example.com
userPassword: $(ssha "$BOB_PASSWORD")

dn: cn=team-a,ou=groups,dc=example,dc=com
objectClass: groupOfNames
cn: team-a
member: uid=alice,ou=people,dc=example,dc=com
EOF
	/usr/sbin/slapadd -f "$LDAPDIR/slapd.conf" -l "$LDAPDIR/seed.ldif" >>"$LOGS/ldap.log" 2>&1 ||
		{ tail -n 20 "$LOGS/ldap.log" >&2; die "slapadd failed"; }
	touch "$LDAPDIR/.seeded"
fi

# ---- Dex (main issuer, 24h ID tokens) and dex-short (same users/clients, 5s ID tokens) -------
mkdir -p "$CLUSTER_DIR/dex"
dex_config() { # dex_config PORT ID_TOKEN_EXPIRY DB_FILE
	# SQLite rather than memory storage: a restarted Dex keeps its signing keys, so tokens it
	# issued before and after the restart both verify (kube-apiserver and the operator cache keys).
	cat <<EOF
issuer: https://127.0.0.1:$1/dex
storage:
  type: sqlite3
  config:
    file: $3
web:
  https: 127.0.0.1:$1
  tlsCert: $PKI/dex.crt
  tlsKey: $PKI/dex.key
logger:
  level: info
  format: text
expiry:
  idTokens: $2
  signingKeys: 6h
oauth2:
  passwordConnector: ldap
  skipApprovalScreen: true
  responseTypes: [code]
  grantTypes:
    - authorization_code
    - refresh_token
    - password
    - urn:ietf:params:oauth:grant-type:device_code
    - urn:ietf:params:oauth:grant-type:token-exchange
# Dex v2.41 static passwords cannot carry groups, so users live in OpenLDAP (see slapd.conf).
enablePasswordDB: false
connectors:
  - type: ldap
    id: ldap
    name: LDAP
    config:
      host: 127.0.0.1:$LDAP_PORT
      insecureNoSSL: true
      bindDN: cn=admin,dc=example,dc=com
      bindPW: $LDAP_ADMIN_PASSWORD
      usernamePrompt: Email
      userSearch:
        baseDN: ou=people,dc=example,dc=com
        filter: (objectClass=inetOrgPerson)
        username: mail
        idAttr: uid
        emailAttr: mail
        nameAttr: cn
        preferredUsernameAttr: uid
      groupSearch:
        baseDN: ou=groups,dc=example,dc=com
        filter: (objectClass=groupOfNames)
        userMatchers:
          - userAttr: DN
            groupAttr: member
        nameAttr: cn
staticClients:
  - id: kubeconfig-operator
    name: kubeconfig-operator
    secret: $OIDC_CLIENT_SECRET
    # The kubeconfig page (server::console) of make run (default LISTEN) and of tests/console.rs.
    redirectURIs:
      - http://127.0.0.1:8000/callback
      - http://localhost:8000/callback
      - http://127.0.0.1:$CONSOLE_PORT/callback
    # kubelogin's tokens must carry this client's ID, the audience kube-apiserver checks.
    trustedPeers: [other-app, kubelogin]
  # The public client of exec kubeconfigs: kubelogin on a user's machine holds no secret. It
  # asks for audience:server:client_id:kubeconfig-operator, so its tokens name both clients.
  - id: kubelogin
    name: kubelogin
    public: true
    redirectURIs:
      - http://localhost:8000
      - http://localhost:18000
  - id: other-app
    name: other-app
    secret: $OIDC_OTHER_CLIENT_SECRET
    redirectURIs:
      - http://127.0.0.1:8001/callback
    trustedPeers: [kubeconfig-operator]
EOF
}
(umask 077 && dex_config "$DEX_PORT" 24h "$CLUSTER_DIR/dex/dex.db" >"$CLUSTER_DIR/dex/dex.yaml" &&
	dex_config "$DEX_SHORT_PORT" 5s "$CLUSTER_DIR/dex/dex-short.db" >"$CLUSTER_DIR/dex/dex-short.yaml")

# ---- kubeconfigs ------------------------------------------------------------------------------
kubeconfig() { # kubeconfig USER CERT_BASENAME
	cat <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: kcluster
    cluster:
      server: https://127.0.0.1:$API_PORT
      certificate-authority: $PKI/ca.crt
users:
  - name: $1
    user:
      client-certificate: $PKI/$2.crt
      client-key: $PKI/$2.key
contexts:
  - name: $1@kcluster
    context:
      cluster: kcluster
      user: $1
current-context: $1@kcluster
EOF
}
kubeconfig admin admin >"$CLUSTER_DIR/admin.kubeconfig"
kubeconfig kube-controller-manager kcm-masters >"$CLUSTER_DIR/kcm.kubeconfig"
kubeconfig kube-scheduler scheduler >"$CLUSTER_DIR/scheduler.kubeconfig"
kubeconfig "system:node:$NODE_NAME" node >"$CLUSTER_DIR/node.kubeconfig"
kubeconfig kube-proxy kube-proxy >"$CLUSTER_DIR/kube-proxy.kubeconfig"

# ---- start ----------------------------------------------------------------------------------
t0=$SECONDS
for n in "${COMPONENTS[@]}"; do
	start_component "$n"
	# Dex needs LDAP only at login time, apiserver needs Dex's discovery document (it retries).
	wait_ready "$n" 240
done

if [[ "$NODE" == 1 ]]; then
	t1=$SECONDS
	node_setup
	for n in "${NODE_COMPONENTS[@]}"; do
		start_component "$n"
		wait_ready "$n" 120
		case "$n" in
		netfwd) node_service_endpoints ;;
		containerd) node_images ;;
		kubelet) node_wait_ready 120 ;;
		esac
	done
	log "node up in $((SECONDS - t1))s"
fi

# ---- env ------------------------------------------------------------------------------------
{
	echo "# Written by tests/cluster/up.sh; source it: . $CLUSTER_DIR/env"
	# kubectl of the cluster's version first (build_kubectl, build_kubernetes).
	printf 'export PATH=%q:%q:"$PATH"\n' "$KUBE_BIN" "$CLUSTER_BIN"
	printf 'export %s=%q\n' \
		CLUSTER_DIR "$CLUSTER_DIR" \
		KUBERNETES_VERSION "$KUBERNETES_VERSION" \
		KUBECONFIG "$CLUSTER_DIR/admin.kubeconfig" \
		KUBE_SERVER "https://127.0.0.1:$API_PORT" \
		KUBE_CA_FILE "$PKI/ca.crt" \
		OIDC_ISSUER_URL "https://127.0.0.1:$DEX_PORT/dex" \
		OIDC_SHORT_ISSUER_URL "https://127.0.0.1:$DEX_SHORT_PORT/dex" \
		DEX_KEY_TOOL "$CLUSTER_BIN/dexkey" \
		DEX_DB_FILE "$CLUSTER_DIR/dex/dex.db" \
		TEST_ISSUER_URL "https://127.0.0.1:$TEST_ISSUER_PORT" \
		TEST_ISSUER_RSA_KEY_FILE "$CLUSTER_DIR/test-issuer/rsa.pem" \
		TEST_ISSUER_EC_KEY_FILE "$CLUSTER_DIR/test-issuer/ec.pem" \
		KUBE_AUTHN_SERVER "https://127.0.0.1:$API_AUTHN_PORT" \
		AUTHENTICATION_CONFIG_FILE "$CLUSTER_DIR/authentication-config.yaml" \
		OIDC_CA_FILE "$PKI/dex-ca.crt" \
		OIDC_CLIENT_ID kubeconfig-operator \
		OIDC_CLIENT_SECRET "$OIDC_CLIENT_SECRET" \
		OIDC_OTHER_CLIENT_ID other-app \
		OIDC_PUBLIC_CLIENT_ID kubelogin \
		OIDC_OTHER_CLIENT_SECRET "$OIDC_OTHER_CLIENT_SECRET" \
		CONSOLE_REDIRECT_URL "http://127.0.0.1:$CONSOLE_PORT/callback" \
		ALICE_USERNAME alice@example.com \
		ALICE_PASSWORD "$ALICE_PASSWORD" \
		BOB_USERNAME bob@example.com \
		BOB_PASSWORD "$BOB_PASSWORD"
	if pid_of kubelet >/dev/null; then
		printf 'export %s=%q\n' \
			NODE_NAME "$NODE_NAME" \
			NODE_IP "$NODE_IP" \
			NODE_NETNS "$NODE_NETNS" \
			CONTAINERD_ADDRESS "$CONTAINERD_SOCK" \
			PAUSE_IMAGE "$PAUSE_IMAGE" \
			TOOLS_IMAGE "$TOOLS_IMAGE"
	fi
} >"$CLUSTER_DIR/env.tmp"
chmod 600 "$CLUSTER_DIR/env.tmp"
mv "$CLUSTER_DIR/env.tmp" "$CLUSTER_DIR/env"
wait "$consumers_build" || die "building the consumers' loaders failed"
log "cluster up in $((SECONDS - t0))s; env: $CLUSTER_DIR/env"
