# Shared by the bench/ scripts: the cluster, the release build, and the results file. Every
# figure a script prints is a ratio to a baseline measured in the same run on the same machine;
# absolute numbers are printed beside it only to show the scale.
# shellcheck shell=bash
set -euo pipefail
bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$bench_root"
results="$bench_root/bench/results.md"
export CLUSTER_DIR=${CLUSTER_DIR:-$bench_root/target/cluster}

# The local cluster (started or reused) and its env; the operator's CRD, policy and RBAC, and the
# path of a kubeconfig with exactly the operator's rights in $operator_kubeconfig.
bench_cluster() {
	make --no-print-directory cluster-up >&2
	# shellcheck disable=SC1091
	source "$CLUSTER_DIR/env"
	operator_kubeconfig=$(scripts/install-dev.sh "$CLUSTER_DIR/env" 2>/dev/null)
}

# The release build the figures are for; `profiling` (release with symbols) for bench/profile.sh;
# `dev` for a quick run on the tests' debug binary.
bench_build() {
	local profile=${1:-release}
	case $profile in
	# The debug binary `cargo test --test ...` built (with the test features, so a plain debug
	# build would recompile half the tree): a quick look, not a figure for the README.
	dev)
		operator_bin="$bench_root/target/debug/kubeconfig-operator"
		return
		;;
	esac
	cargo build --profile "$profile" --bin kubeconfig-operator >&2
	case $profile in
	release) operator_bin="$bench_root/target/release/kubeconfig-operator" ;;
	*) operator_bin="$bench_root/target/$profile/kubeconfig-operator" ;;
	esac
}

# A scratch directory in $work, and the processes in $pids, both gone when the script exits.
bench_scratch() {
	work=$(mktemp -d)
	pids=()
	trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}

# N free ports on 127.0.0.1, one per line.
free_ports() {
	python3 -c 'import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s], sep="\n")' "$1"
}

# Starts the operator on core 0 (the load generator gets core 1) listening on $1 and watching
# namespace $2, with no per-client rate limit, and waits until it is ready; its pid is appended
# to $pids and its log is $work/operator-$1.log. Further arguments go to `run`.
start_operator() {
	local listen=$1 namespace=$2
	shift 2
	KUBECONFIG=$operator_kubeconfig taskset -c 0 "$operator_bin" run \
		--watch-namespace "$namespace" --cluster-name local --server "$KUBE_SERVER" --ca-file "$KUBE_CA_FILE" \
		--oidc-issuer-url "$OIDC_ISSUER_URL" --oidc-client-id "$OIDC_CLIENT_ID" --oidc-ca-file "$OIDC_CA_FILE" \
		--listen "$listen" --metrics-listen 127.0.0.1:0 --requests-per-minute-per-client 100000000 --max-connections 4096 "$@" \
		>"$work/operator-$listen.log" 2>&1 &
	pids+=($!)
	wait_ready "$listen"
}

# What the proxy rows measure: alice may view namespace $1, which holds five ConfigMaps to list
# (a `kubectl get configmaps`), and the operator can serve the apiserver-proxy on $2 with a
# certificate for 127.0.0.1 and its ServiceAccount's token (config/proxy). The `run` flags for
# that are left in $proxy_flags.
bench_proxy() {
	local namespace=$1 listen=$2 i
	kubectl create namespace "$namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
	kubectl create rolebinding alice-view -n "$namespace" --clusterrole=view --user="$ALICE_USERNAME" \
		--dry-run=client -o yaml | kubectl apply -f - >/dev/null
	for i in $(seq 1 5); do
		kubectl create configmap "cm-$i" -n "$namespace" --from-literal=k=v --dry-run=client -o yaml |
			kubectl apply -f - >/dev/null
	done
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-proxy \
		-addext subjectAltName=IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
	kubectl apply -n kubeconfig-operator -k config/proxy >/dev/null
	kubectl create token kubeconfig-operator-proxy -n kubeconfig-operator --duration=2h >"$work/proxy-token"
	proxy_flags=(--proxy-listen "$listen" --proxy-url "https://$listen" --proxy-tls-cert-file "$work/tls.crt"
		--proxy-tls-key-file "$work/tls.key" --proxy-ca-file "$work/tls.crt" --proxy-token-file "$work/proxy-token")
}

# CPU time of a process so far, user and system, in clock ticks (getconf CLK_TCK per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# VmRSS and VmHWM (peak) of a process in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# Waits until http://$1/readyz answers 200 (the controller's cache has synced).
wait_ready() {
	local i
	for i in $(seq 1 200); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' "http://$1/readyz") == 200 ]] && return 0
		sleep 0.1
	done
	echo "operator on $1 never became ready" >&2
	return 1
}

# Appends a section to bench/results.md: a heading, the machine and versions, the commands that
# produced it, and the table on stdin.
append_results() {
	local title=$1 commands=$2 version
	# Before anything is appended: the appending itself leaves the tree dirty.
	version=$(git describe --always --dirty 2>/dev/null)
	{
		printf '\n## %s: %s\n\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$title"
		printf -- '- machine: %s cores, %s, %s MiB memory (%s)\n' "$(nproc)" \
			"$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
			"$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)" "$(uname -r)"
		printf -- '- versions: operator %s (%s), %s, kube-apiserver %s\n' \
			"$version" "$(cargo pkgid | sed 's/.*[#@]//')" \
			"$(rustc --version)" \
			"$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' tests/cluster/go.mod)"
		printf -- '- commands: `%s`\n\n' "$commands"
		cat
	} | tee -a "$results"
}
