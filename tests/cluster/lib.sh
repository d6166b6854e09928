# shellcheck shell=bash
# Shared helpers for the local test cluster scripts (up.sh, down.sh, ctl, id-token).
# Sourced, not executed.

CLUSTER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_SRC/../.." && pwd)"
# State directory of this cluster (certs, configs, data, logs, pid files, env).
CLUSTER_DIR="${CLUSTER_DIR:-$REPO_ROOT/target/cluster}"
case "$CLUSTER_DIR" in /*) ;; *) CLUSTER_DIR="$REPO_ROOT/$CLUSTER_DIR" ;; esac
CLUSTER_DIR="${CLUSTER_DIR%/}"
# Built binaries are shared by every cluster and survive cluster-down.
CLUSTER_BIN="${CLUSTER_BIN:-$REPO_ROOT/target/cluster/bin}"

PKI="$CLUSTER_DIR/pki"
RUN="$CLUSTER_DIR/run"
LOGS="$CLUSTER_DIR/logs"

# Start order; stop order is the reverse. The node's (NODE_COMPONENTS, node.sh) start after these
# and only when asked (NODE=1 up.sh, make node-up).
COMPONENTS=(etcd ldap dex dex-short test-issuer apiserver apiserver-authn controller-manager)

log() { echo "[cluster $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[cluster] ERROR: $*" >&2; exit 1; }

# The Kubernetes this cluster runs: the release tests/cluster/go.mod names (its binaries in
# CLUSTER_BIN), or KUBERNETES_VERSION=1.35.4 (any release the Go module proxy serves), whose
# kcluster and kubectl up.sh builds into KUBE_BIN from a module of its own (build_kubernetes).
# A cluster keeps the release it was first brought up with, in $CLUSTER_DIR/kubernetes-version.
KUBE_MODULE_VERSION="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$CLUSTER_SRC/go.mod")"
KUBERNETES_VERSION_ASKED="${KUBERNETES_VERSION:-}"
KUBERNETES_VERSION_ASKED="${KUBERNETES_VERSION_ASKED#v}"
if [[ -f "$CLUSTER_DIR/kubernetes-version" ]]; then
	KUBERNETES_VERSION="$(cat "$CLUSTER_DIR/kubernetes-version")"
else
	KUBERNETES_VERSION="${KUBERNETES_VERSION_ASKED:-${KUBE_MODULE_VERSION#v}}"
fi
[[ "$KUBERNETES_VERSION" =~ ^1\.[0-9]+\.[0-9]+$ ]] || die "KUBERNETES_VERSION=$KUBERNETES_VERSION is not a release like 1.35.4"
if [[ "v$KUBERNETES_VERSION" == "$KUBE_MODULE_VERSION" ]]; then
	KUBE_BIN="$CLUSTER_BIN"
else
	KUBE_BIN="$REPO_ROOT/target/kubernetes/v$KUBERNETES_VERSION/bin"
fi

load_ports() {
	[[ -f "$CLUSTER_DIR/ports" ]] || return 1
	# shellcheck disable=SC1091
	source "$CLUSTER_DIR/ports"
}

# pid_of NAME: prints the pid recorded for NAME if that process is alive and really ours
# (its command line mentions this cluster's directory), else nothing and returns 1.
pid_of() {
	local f="$RUN/$1.pid" pid
	[[ -f "$f" ]] || return 1
	pid="$(cat "$f" 2>/dev/null)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	is_ours "$pid" || return 1
	echo "$pid"
}

is_ours() {
	local pid="$1"
	[[ -r "/proc/$pid/cmdline" ]] || return 1
	# Arguments after argv[0] must mention this cluster's directory (argv[0] is the shared
	# binary path, which lives under the default cluster dir). A zombie has an empty command line.
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | tail -n +2 | grep -qF -- "$CLUSTER_DIR/"
}

# Every live process whose command line mentions this cluster's directory.
all_our_pids() {
	local p
	for p in /proc/[0-9]*; do
		p="${p#/proc/}"
		[[ "$p" == "$$" ]] && continue
		if is_ours "$p"; then
			# Skip our own scripts (bash/make/etc.) that merely mention the dir in their args.
			case "$(cat "/proc/$p/comm" 2>/dev/null)" in
			kcluster | dex | slapd | containerd | containerd-shim) echo "$p" ;;
			esac
		fi
	done
}

# Command line for each component (array name: CMD).
# The flags both API servers share (same etcd, certificates and service-account keys): CMD for
# one listening on PORT with its own CERT_DIR; callers append their authentication flags.
apiserver_cmd() { # apiserver_cmd PORT CERT_DIR
	CMD=("$KUBE_BIN/kcluster" apiserver
		--etcd-servers="http://127.0.0.1:$ETCD_PORT"
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$1"
		--cert-dir="$2"
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key"
		--client-ca-file="$PKI/ca.crt"
		--service-account-issuer="https://kubernetes.default.svc.cluster.local"
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key"
		--service-cluster-ip-range=10.0.0.0/24
		--endpoint-reconciler-type=none
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt"
		--kubelet-client-key="$PKI/apiserver-kubelet-client.key"
		--authorization-mode=Node,RBAC)
}

# The audit policy of both API servers (logs/audit.log and logs/audit-authn.log, JSON lines).
# What no test can see otherwise: the identity that exec, attach and port-forward requests are
# authorized as (the proxy impersonates; the cluster has no kubelet), and every resource request
# of the identities that the operator issues credentials for, with their
# authentication.kubernetes.io/credential-id extra (README "Audit trail"). The harness's own
# machinery (the admin and the control plane in system:masters, nodes, the operator under test)
# and discovery are left out, so the log stays small.
write_audit_policy() {
	cat >"$CLUSTER_DIR/audit-policy.yaml" <<-'POLICY'
		apiVersion: audit.k8s.io/v1
		kind: Policy
		omitStages: [RequestReceived]
		rules:
		  - level: Metadata
		    resources:
		      - group: ""
		        resources: ["pods/exec", "pods/attach", "pods/portforward"]
		  - level: None
		    userGroups: ["system:masters", "system:nodes"]
		  - level: None
		    users:
		      - system:apiserver
		      - system:kube-controller-manager
		      - system:kube-scheduler
		      - system:kube-proxy
		      - system:serviceaccount:kubeconfig-operator:kubeconfig-operator
		  - level: None
		    nonResourceURLs: ["*"]
		  - level: Metadata
		    userGroups: ["system:authenticated"]
		  - level: None
	POLICY
}

component_cmd() {
	local name="$1"
	load_ports || die "no $CLUSTER_DIR/ports: run up.sh first"
	case "$name" in
	etcd)
		CMD=("$KUBE_BIN/kcluster" etcd --data-dir "$CLUSTER_DIR/etcd" --client-port "$ETCD_PORT" --peer-port "$ETCD_PEER_PORT")
		;;
	ldap)
		CMD=(/usr/sbin/slapd -d 0 -f "$CLUSTER_DIR/ldap/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/")
		;;
	dex)
		CMD=("$CLUSTER_BIN/dex" serve "$CLUSTER_DIR/dex/dex.yaml")
		;;
	dex-short)
		CMD=("$CLUSTER_BIN/dex" serve "$CLUSTER_DIR/dex/dex-short.yaml")
		;;
	apiserver)
		write_audit_policy
		apiserver_cmd "$API_PORT" "$CLUSTER_DIR/apiserver-certs"
		CMD+=(
			--oidc-issuer-url="https://127.0.0.1:$DEX_PORT/dex"
			--oidc-client-id=kubeconfig-operator
			--oidc-username-claim=email --oidc-groups-claim=groups
			--oidc-ca-file="$PKI/dex-ca.crt"
			--audit-policy-file="$CLUSTER_DIR/audit-policy.yaml"
			--audit-log-path="$LOGS/audit.log" --audit-log-format=json --audit-log-maxsize=50
			--profiling=false
			--v=1)
		;;
	test-issuer)
		CMD=("$CLUSTER_BIN/kcluster" testissuer --dir "$CLUSTER_DIR/test-issuer" --port "$TEST_ISSUER_PORT"
			--cert "$PKI/dex.crt" --key "$PKI/dex.key")
		;;
	apiserver-authn)
		# A second API server on the same etcd, configured the modern way: an
		# AuthenticationConfiguration instead of --oidc-* flags (tests/differential.rs compares
		# its verdicts with the operator's).
		write_authentication_config >"$CLUSTER_DIR/authentication-config.yaml"
		write_audit_policy
		apiserver_cmd "$API_AUTHN_PORT" "$CLUSTER_DIR/apiserver-authn-certs"
		CMD+=(
			--authentication-config="$CLUSTER_DIR/authentication-config.yaml"
			--audit-policy-file="$CLUSTER_DIR/audit-policy.yaml"
			--audit-log-path="$LOGS/audit-authn.log" --audit-log-format=json --audit-log-maxsize=50
			--profiling=false
			--v=1)
		;;
	controller-manager)
		CMD=("$KUBE_BIN/kcluster" controller-manager
			--kubeconfig="$CLUSTER_DIR/kcm.kubeconfig"
			--authentication-kubeconfig="$CLUSTER_DIR/kcm.kubeconfig"
			--authorization-kubeconfig="$CLUSTER_DIR/kcm.kubeconfig"
			--bind-address=127.0.0.1 --secure-port="$KCM_PORT"
			--cert-dir="$CLUSTER_DIR/kcm-certs"
			--controllers=garbage-collector-controller,namespace-controller,serviceaccount-token-controller,serviceaccount-controller,clusterrole-aggregation-controller,root-ca-certificate-publisher-controller,deployment-controller,replicaset-controller,endpointslice-controller,disruption-controller,node-lifecycle-controller
			--use-service-account-credentials=false
			--service-account-private-key-file="$PKI/sa.key"
			--root-ca-file="$PKI/ca.crt"
			--leader-elect=false
			--profiling=false
			--v=1)
		;;
	*) node_cmd "$name" || die "unknown component '$name' (one of: ${COMPONENTS[*]} ${NODE_COMPONENTS[*]})" ;;
	esac
}

# is_ready NAME: one quick probe of the component's own health endpoint.
# The AuthenticationConfiguration of apiserver-authn, which the operator reads too in
# tests/differential.rs: three issuers (main Dex, short-lived Dex, the harness's test issuer), two
# audiences, claim rules, CEL mappings for username, uid and extra, group prefixes, a user rule.
write_authentication_config() {
	local dex_ca
	dex_ca="$(sed 's/^/      /' "$PKI/dex-ca.crt")"
	cat <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://127.0.0.1:$DEX_PORT/dex
    audiences: [kubeconfig-operator, other-app]
    audienceMatchPolicy: MatchAny
    certificateAuthority: |
$dex_ca
  claimValidationRules:
  - expression: "!has(claims.email_verified) || claims.email_verified == true"
    message: the email address must be verified
  claimMappings:
    username:
      expression: "'dex:' + claims.email"
    groups:
      claim: groups
      prefix: "dex:"
    uid:
      claim: sub
    extra:
    - key: example.com/name
      valueExpression: "has(claims.name) ? claims.name : ''"
- issuer:
    url: https://127.0.0.1:$DEX_SHORT_PORT/dex
    audiences: [kubeconfig-operator]
    certificateAuthority: |
$dex_ca
  claimMappings:
    username:
      claim: email
      prefix: "short:"
    groups:
      claim: groups
      prefix: ""
- issuer:
    url: https://127.0.0.1:$TEST_ISSUER_PORT
    audiences: [kubeconfig-operator, test-audience-b]
    audienceMatchPolicy: MatchAny
    certificateAuthority: |
$dex_ca
  claimValidationRules:
  - claim: tenant
    requiredValue: acme
  - expression: "!has(claims.blocked) || claims.blocked != true"
    message: blocked by the test issuer
  claimMappings:
    username:
      claim: email
      prefix: "test:"
    groups:
      claim: groups
      prefix: "test:"
    uid:
      expression: "'uid-' + claims.sub"
    extra:
    - key: example.com/roles
      valueExpression: "has(claims.roles) ? claims.roles : []"
    - key: example.com/tenant
      valueExpression: claims.tenant
  userValidationRules:
  - expression: "!user.username.startsWith('test:root')"
    message: root is not a user
EOF
}

is_ready() {
	load_ports || return 1
	case "$1" in
	etcd) curl -sf -m 3 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"' ;;
	ldap) (exec 3<>"/dev/tcp/127.0.0.1/$LDAP_PORT") 2>/dev/null ;;
	dex) curl -sf -m 3 --cacert "$PKI/dex-ca.crt" "https://127.0.0.1:$DEX_PORT/dex/.well-known/openid-configuration" >/dev/null ;;
	dex-short) curl -sf -m 3 --cacert "$PKI/dex-ca.crt" "https://127.0.0.1:$DEX_SHORT_PORT/dex/.well-known/openid-configuration" >/dev/null ;;
	test-issuer) curl -sf -m 3 --cacert "$PKI/dex-ca.crt" "https://127.0.0.1:$TEST_ISSUER_PORT/keys" >/dev/null ;;
	apiserver) [[ "$(curl -s -m 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" == ok ]] ;;
	apiserver-authn) [[ "$(curl -s -m 5 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://127.0.0.1:$API_AUTHN_PORT/readyz" 2>/dev/null)" == ok ]] ;;
	controller-manager) [[ "$(curl -s -m 3 -k "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" == ok ]] ;;
	*) node_is_ready "$1" ;;
	esac
}

start_component() {
	local name="$1" pid
	if pid="$(pid_of "$name")"; then
		log "$name already running (pid $pid)"
		return 0
	fi
	component_cmd "$name"
	mkdir -p "$RUN" "$LOGS"
	echo "==== $(date -Is) start: ${CMD[*]}" >>"$LOGS/$name.log"
	# setsid: own session, so the component outlives the shell/test that started it;
	# all three std streams redirected so callers capturing our output don't hang.
	# 9>&-: do not hand the up/down lock (fd 9) to the long-lived component.
	setsid "${CMD[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
	echo $! >"$RUN/$name.pid"
	log "started $name (pid $!, log $LOGS/$name.log)"
}

# alive PID: the process exists and has not exited (a zombie has).
alive() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	[[ -n "$stat" && "${stat##*) }" != Z* ]]
}

# wait_ready NAME [TIMEOUT_S]: NAME was just started (or found running) under the pid recorded in
# its pid file. Whether it exited is judged by that process being alive, not by is_ours: while a
# forked shell execs the component, its command line is briefly the script's, or empty, and
# taking that for an exit made `make cluster-up` fail now and then ("dex exited before becoming
# ready" while Dex was starting normally).
wait_ready() {
	local name="$1" timeout="${2:-120}" start=$SECONDS pid
	pid="$(cat "$RUN/$name.pid" 2>/dev/null)"
	while ! is_ready "$name"; do
		if ! alive "$pid"; then
			echo "---- last lines of $LOGS/$name.log:" >&2
			tail -n 40 "$LOGS/$name.log" >&2 || true
			die "$name exited before becoming ready"
		fi
		if ((SECONDS - start > timeout)); then
			echo "---- last lines of $LOGS/$name.log:" >&2
			tail -n 40 "$LOGS/$name.log" >&2 || true
			die "$name not ready after ${timeout}s"
		fi
		sleep 0.5
	done
	log "$name ready"
}

# stop_pid PID NAME [GRACE_S]: SIGTERM, then SIGKILL after GRACE_S seconds (default 20).
stop_pid() {
	local pid="$1" name="$2" grace="${3:-20}" i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < grace * 5; i++)); do
		is_ours "$pid" || return 0
		sleep 0.2
	done
	log "$name (pid $pid) still alive after ${grace}s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		is_ours "$pid" || return 0
		sleep 0.1
	done
	log "WARNING: $name (pid $pid) survived SIGKILL"
	return 1
}

stop_component() {
	local name="$1" pid
	if pid="$(pid_of "$name")"; then
		log "stopping $name (pid $pid)"
		# kube-apiserver stops listening at once but then waits up to 60s for open watch
		# connections; nothing here needs that, so it gets 5s before SIGKILL.
		# containerd: its pods' containers first (the kubelet, stopped before it, cannot restart them).
		[[ "$name" != containerd ]] || node_kill_pods
		if [[ "$name" == apiserver ]]; then stop_pid "$pid" "$name" 5; else stop_pid "$pid" "$name"; fi
	fi
	rm -f "$RUN/$name.pid"
}

# shellcheck source=node.sh
source "$CLUSTER_SRC/node.sh"
