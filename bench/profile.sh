#!/usr/bin/env bash
# CPU profiles as flame graphs (perf + inferno), saved under bench/:
#   bench/profile-http.svg      the operator serving GET /kube-config under wrk load, a fresh token each;
#                               and its CPU per answer by part, beside /healthz's
#   bench/profile-proxy.svg     the operator proxying `kubectl get configmaps` under wrk load
#   bench/profile-proxy-apiserver.svg  kube-apiserver serving those proxied requests
#   bench/profile-issuance.svg  the operator issuing ISSUANCE_SIZES requests (benches/issuance.rs)
#   bench/profile-issuance-apiserver.svg  kube-apiserver during that issuance: the cost the
#                               operator's calls cause where issuance is bound (frame pointers)
# PROFILE_HTTP=0, PROFILE_PROXY=0 and PROFILE_ISSUANCE=0 skip a section. All use the `profiling`
# build (release with symbols) and DWARF call graphs, so the operator needs no frame pointers.
# Needs perf (linux-perf) and inferno (`cargo install inferno`).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
SECONDS_RECORDED=${SECONDS_RECORDED:-15}
command -v perf >/dev/null && command -v wrk >/dev/null || BENCH=1 bash scripts/install-deps.sh
command -v inferno-flamegraph >/dev/null || cargo install inferno --locked
bench_cluster
bench_build profiling
bench_scratch

# perf's samples in $1 as folded stacks in $2.
collapse() { perf script -i "$1" 2>/dev/null | inferno-collapse-perf >"$2"; }

flamegraph() {
	local data=$1 title=$2 out=$3
	collapse "$data" "$work/folded"
	inferno-flamegraph --title "$title" --minwidth 0.2 <"$work/folded" >"$out"
	# The heaviest frames by self time, for the note beside the picture.
	awk '{n = $NF; sub(/ [0-9]+$/, ""); k = split($0, f, ";"); self[f[k]] += n; total += n}
		END {for (s in self) printf "%5.1f%% %s\n", 100 * self[s] / total, s}' "$work/folded" |
		sort -rn | head -15 || true # head closing early is not a failure
}

# The API server's samples by what they were serving (the first pattern a stack matches), from
# the folded stacks `flamegraph` left behind.
apiserver_shares() {
	awk '{
		n = $NF; total += n
		if (/StatusREST\)\.Update/) k = "status apply of a KubeconfigRequest"
		else if (/registry\.\(\*Store\)\.Update/) k = "apply of a Secret"
		else if (/crdHandler/ && /registry\.\(\*Store\)\.create/) k = "create of a KubeconfigRequest"
		else if (/registry\.\(\*Store\)\.create/) k = "create of a Secret or an Event"
		else if (/registry\.\(\*Store\)\.Get/) k = "GET"
		else if (/WatchServer|watchChan|watchCache|cacheWatcher/) k = "watches"
		else if (/gcBgMarkWorker|bgsweep|bgscavenge/) k = "Go garbage collection"
		else if (/crypto\/tls/) k = "TLS"
		else if (/grpc|etcd3/) k = "etcd client"
		else if (/net\/http/) k = "the rest of request handling (filters, routing, answers)"
		else k = "other"
		share[k] += n
	} END {for (k in share) printf "%5.1f%% %s\n", 100 * share[k] / total, k}' "$work/folded" |
		sort -rn
}

token=$(tests/cluster/id-token alice)

# Table rows of two columns of µs per part: $1 (parts_us or filter_us) on the folded profile $2
# with $3 µs per answer, and on $4 with $5; the second column's heaviest part first.
side_by_side() {
	local parts=$1
	join -t $'\t' -a1 -a2 -e 0 -o 0,1.2,2.2 <("$parts" "$2" "$3" | sort) <("$parts" "$4" "$5" | sort) |
		sort -t $'\t' -k3 -rn | awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}'
}

# Each sample of a folded profile ($1) goes to the first part of this list its stack (or, for the
# RSA check, the allocator, memcpy and the HTTP stack, its innermost frame) matches; its share
# times the CPU per answer ($2 µs) is what that part costs an answer. The kernel's wake-up of a sleeping client is its own part: it depends on how
# often the client sleeps, so on the rate, not on the answer.
parts_us() {
	awk -v us="$2" '{
		n = $NF; total += n; s = $0; sub(/ [0-9]+$/, "", s)
		m = split(s, f, ";"); leaf = f[m]
		if (s ~ /sock_def_readable/) k = "kernel: waking the client"
		else if (s ~ /do_writev/) k = "kernel: sending the answer"
		else if (s ~ /ksys_write/) k = "kernel: writing the log line"
		else if (s ~ /recvfrom/) k = "kernel: reading the request"
		else if (s ~ /entry_SYSCALL|asm_|irqentry/) k = "kernel: other (epoll, interrupts)"
		else if (leaf ~ /aws_lc|bn_|BN_|RSA|rsaz|mulx|sqrx/) k = "the RSA check (aws-lc)"
		else if (s ~ /tracing_subscriber/) k = "formatting the log line"
		else if (s ~ /jwt::check_shape/) k = "check_shape (base64, JSON, go-oidc view)"
		else if (s ~ /kubeconfig::render/) k = "rendering the kubeconfig"
		else if (s ~ /verdicts::|sha2::/) k = "the verdict cache (the token digest, the table)"
		else if (s ~ /oidc::claims::/) k = "the claims (times, audience, identity)"
		else if (s ~ /oidc::signature::|oidc::jwks::/) k = "the header checks and key lookup"
		else if (s ~ /server::issue::|audit::/) k = "the download handler: headers, audit event"
		else if (s ~ /auth::bearer_token/) k = "reading the bearer token"
		else if (leaf ~ /_rjem|je_|cache_bin|free_fastpath|tcache|arena_|sdallocx|emap/) k = "the allocator, elsewhere"
		else if (leaf ~ /memcpy|memmove|memset/) k = "memcpy, elsewhere (moves of futures and buffers)"
		else if (leaf ~ /hyper|httparse|http::|axum|tower|tokio|bytes::/) k = "HTTP: hyper, axum, tower, tokio"
		else k = "the rest"
		share[k] += n
	} END {for (k in share) printf "%s\t%.1f\n", k, us * share[k] / total}' "$1"
}

# ---- the HTTP path (PROFILE_HTTP=0 skips it) ----------------------------------------------------
# A different valid token on every request, as users arrive (bench/fresh_tokens.py): one token
# repeated would profile the verdict cache. PROFILE_TOKENS must outlast each pass (2 s measured,
# SECONDS_RECORDED + 3 s profiled); a pass that runs out shows non-2xx answers and fails. Then
# /healthz, the floor, profiled the same way, and each one's CPU per answer (measured without
# perf first) split by part.
if [[ ${PROFILE_HTTP:-1} == 1 ]]; then
port=$(free_ports 1)
# Tokens for the measuring pass and for the profile apart: the operator keeps a verdict for 10 s.
DEX_KEY_TOOL=$DEX_KEY_TOOL DEX_DB_FILE=$DEX_DB_FILE python3 bench/fresh_tokens.py "${PROFILE_TOKENS:-150000}" \
	"$work/tokens-measured" "$work/tokens-profiled" <<<"$token"
# shellcheck disable=SC2086 # PROFILE_ARGS: extra `run` flags, split on spaces
start_operator "127.0.0.1:$port" bench-profile --confirm-with-api-server=false ${PROFILE_ARGS:-}
operator=${pids[0]}
# wrk against $1 for $2 seconds (for /kube-config, a fresh token per request from
# $work/tokens-$3), output in $work/wrk.txt.
load() {
	case $1 in
	healthz) taskset -c 1 wrk -t1 -c16 -d"$2s" "http://127.0.0.1:$port/healthz" >"$work/wrk.txt" ;;
	kube-config) TOKENS=$work/tokens-$3 taskset -c 1 wrk -t1 -c16 -d"$2s" -s bench/fresh_tokens.lua \
		"http://127.0.0.1:$port/kube-config" >"$work/wrk.txt" ;;
	esac
	if grep -q 'Non-2xx' "$work/wrk.txt"; then
		echo "GET /$1: $(grep 'Non-2xx' "$work/wrk.txt") (out of tokens? raise PROFILE_TOKENS)" >&2
		exit 1
	fi
}
declare -A answer_us
for target in healthz kube-config; do
	before=$(cpu_ticks "$operator")
	load "$target" 2 measured
	answer_us[$target]=$(awk -v t=$(($(cpu_ticks "$operator") - before)) -v hz="$(getconf CLK_TCK)" \
		'/requests in/ {printf "%.1f", t / hz * 1e6 / $1}' "$work/wrk.txt")
done
load kube-config "$((SECONDS_RECORDED + 3))" profiled &
loader=$!
sleep 2
perf record -F 499 --call-graph dwarf,32768 -o "$work/http.data" -p "$operator" -- sleep "$SECONDS_RECORDED" 2>/dev/null
wait "$loader"
echo "== GET /kube-config under load, a fresh token each, confirmation off: heaviest functions by self time"
flamegraph "$work/http.data" "GET /kube-config under wrk load (16 connections, a fresh token each)" bench/profile-http.svg
mv "$work/folded" "$work/folded-kube-config"
load healthz "$((SECONDS_RECORDED + 3))" &
loader=$!
sleep 2
perf record -F 499 -g -o "$work/healthz.data" -p "$operator" -- sleep "$SECONDS_RECORDED" 2>/dev/null
wait "$loader"
collapse "$work/healthz.data" "$work/folded-healthz"
echo "== the operator's CPU per answer (µs) by part: /healthz ${answer_us[healthz]}, /kube-config with a fresh token ${answer_us[kube-config]}"
echo "| part | /healthz | /kube-config, fresh token |"
echo "|---|---|---|"
side_by_side parts_us "$work/folded-healthz" "${answer_us[healthz]}" "$work/folded-kube-config" "${answer_us[kube-config]}"
kill "$operator"
wait "$operator" 2>/dev/null || true
fi

# ---- the proxy (PROFILE_PROXY=0 skips it) ------------------------------------------------------
# What a proxied `kubectl get` costs beyond the same request sent straight to the API server: the
# CPU per request of the operator and of the API server under each load, then where that CPU goes
# in both processes (profiles taken in a second pass, so perf's own cost is not in the first).
if [[ ${PROFILE_PROXY:-1} == 1 ]]; then
namespace=bench-profile-proxy
mapfile -t ports < <(free_ports 2)
bench_proxy "$namespace" "127.0.0.1:${ports[1]}"
start_operator "127.0.0.1:${ports[0]}" "$namespace" --confirm-with-api-server=false "${proxy_flags[@]}"
operator=${pids[-1]}
apiserver=$(cat "$CLUSTER_DIR/run/apiserver.pid")
declare -A url=(
	[direct]="$KUBE_SERVER/api/v1/namespaces/$namespace/configmaps"
	[proxy]="https://127.0.0.1:${ports[1]}/api/v1/namespaces/$namespace/configmaps"
)
declare -A apiserver_us
echo "== a proxied request against a direct one: CPU per request (µs), $SECONDS_RECORDED s of wrk each"
echo "| target | requests/s | operator | kube-apiserver | both |"
echo "|---|---|---|---|---|"
for target in direct proxy; do
	op=$(cpu_ticks "$operator") api=$(cpu_ticks "$apiserver")
	out=$(taskset -c 1 wrk -t1 -c16 -d"${SECONDS_RECORDED}s" -H "Authorization: Bearer $token" "${url[$target]}")
	grep -q 'Non-2xx' <<<"$out" && { echo "$target: $(grep 'Non-2xx' <<<"$out")" >&2; exit 1; }
	row=$(awk -v n="$(awk '/requests in/ {print $1}' <<<"$out")" -v rps="$(awk '/^Requests\/sec/ {print $2}' <<<"$out")" \
		-v op=$(($(cpu_ticks "$operator") - op)) -v api=$(($(cpu_ticks "$apiserver") - api)) \
		-v hz="$(getconf CLK_TCK)" -v t="$target" \
		'BEGIN { f = 1e6 / hz / n; printf "| %s | %.0f | %.0f | %.0f | %.0f |", t, rps, op * f, api * f, (op + api) * f }')
	echo "$row"
	apiserver_us[$target]=$(awk -F'|' '{print $5 + 0}' <<<"$row")
done
for target in direct proxy; do
	taskset -c 1 wrk -t1 -c16 -d"$((SECONDS_RECORDED + 4))s" -H "Authorization: Bearer $token" \
		"${url[$target]}" >"$work/wrk.txt" &
	load=$!
	sleep 2
	recorder=""
	if [[ $target == proxy ]]; then
		perf record -F 499 --call-graph dwarf,32768 -o "$work/proxy.data" -p "$operator" -- sleep "$SECONDS_RECORDED" 2>/dev/null &
		recorder=$!
	fi
	perf record -F 499 -g -o "$work/apiserver-$target.data" -p "$apiserver" -- sleep "$SECONDS_RECORDED" 2>/dev/null
	wait $recorder "$load" || true
done
echo "== the proxy under load: heaviest functions by self time"
flamegraph "$work/proxy.data" "the apiserver-proxy serving GET configmaps under wrk load (16 connections)" bench/profile-proxy.svg
echo "== kube-apiserver serving the proxied requests: heaviest functions by self time"
flamegraph "$work/apiserver-proxy.data" "kube-apiserver serving proxied GET configmaps (impersonating alice)" bench/profile-proxy-apiserver.svg
mv "$work/folded" "$work/folded-proxy"
collapse "$work/apiserver-direct.data" "$work/folded-direct"
# Each sample goes to the innermost filter or handler on its stack; its share of the samples
# times the API server's CPU per request is what that part costs a request.
filter_us() {
	awk -v us="$2" '{
		n = $NF; total += n; k = "other"
		m = split($0, frames, ";")
		for (i = m; i >= 1 && k == "other"; i--) {
			f = frames[i]
			if (f ~ /ListResource|cacher/) k = "the list itself"
			else if (f ~ /go-restful|APIServerHandler/) k = "routing"
			else if (f ~ /[Ww]ithImpersonation/) k = "impersonation"
			else if (f ~ /[Ww]ithAuthorization/) k = "authorization"
			else if (f ~ /[Ww]ithAuthentication/) k = "authentication"
			else if (f ~ /[Ww]ithAudit/) k = "audit"
			else if (f ~ /crypto\/tls/) k = "TLS"
			else if (f ~ /gcBgMarkWorker|bgsweep|bgscavenge/) k = "Go garbage collection"
			else if (f ~ /net\/http/) k = "the rest of request handling"
		}
		share[k] += n
	} END {for (k in share) printf "%s\t%.0f\n", k, us * share[k] / total}' "$1"
}
echo "== kube-apiserver's CPU per request (µs) by the innermost filter or handler"
echo "| part | direct | proxied |"
echo "|---|---|---|"
side_by_side filter_us "$work/folded-direct" "${apiserver_us[direct]}" "$work/folded-proxy" "${apiserver_us[proxy]}"
kill "$operator"
wait "$operator" 2>/dev/null || true
fi

# ---- issuance (PROFILE_ISSUANCE=0 skips it) ---------------------------------------------------
[[ ${PROFILE_ISSUANCE:-1} == 1 ]] || exit 0
ISSUANCE_SIZES=${ISSUANCE_SIZES:-1000} MEMORY_REQUESTS=0 UNRELATED_SECRETS=0 SINGLE_SAMPLES=1 \
	cargo bench --profile profiling --bench issuance >"$work/issuance.txt" 2>&1 &
bench=$!
pids+=($bench)
operator=""
until [[ -n $operator ]]; do
	sleep 1
	operator=$(pgrep -f 'target/profiling/kubeconfig-operator run' | head -1 || true)
	kill -0 "$bench" 2>/dev/null || { cat "$work/issuance.txt" >&2; exit 1; }
done
perf record -F 499 --call-graph dwarf,32768 -o "$work/issuance.data" -p "$operator" 2>/dev/null &
recorder=$!
# The API server only while the requests are issued (the bench's namespace exists and is not yet
# being deleted), not during the plain-write baselines.
issuing() { kubectl get ns -o jsonpath='{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}' | grep '^bench-issue' || true; }
until [[ -n $(issuing) ]]; do
	sleep 0.2
	kill -0 "$bench" 2>/dev/null || { cat "$work/issuance.txt" >&2; exit 1; }
done
perf record -F 499 -g -o "$work/apiserver.data" -p "$(cat "$CLUSTER_DIR/run/apiserver.pid")" 2>/dev/null &
apiserver_recorder=$!
until state=$(issuing) && [[ -z $state || $state == *Terminating* ]]; do sleep 0.2; done
kill -INT "$apiserver_recorder"
wait "$apiserver_recorder" || true
wait "$bench"
kill -INT "$recorder"
wait "$recorder" || true
grep '^|' "$work/issuance.txt"
echo "== issuance of ${ISSUANCE_SIZES:-1000} requests: heaviest functions by self time"
flamegraph "$work/issuance.data" "issuance of ${ISSUANCE_SIZES:-1000} requests (operator process)" bench/profile-issuance.svg
echo "== kube-apiserver during that issuance: heaviest functions by self time"
flamegraph "$work/apiserver.data" "kube-apiserver while ${ISSUANCE_SIZES:-1000} requests are issued" bench/profile-issuance-apiserver.svg
echo "== kube-apiserver during that issuance: its samples by what they served"
apiserver_shares
