#!/usr/bin/env bash
# HTTP load on the release build (issue 12): wrk (Debian's package) on core 1, the operator on
# core 0 (the rows the API server bounds: see APISERVER_OWN_CORE below), CONNECTIONS connections,
# ROUNDS interleaved rounds of DURATION per target. Targets:
#   healthz              the server's own /healthz: the HTTP floor
#   kube-config          GET /kube-config with alice's Dex token, API-server confirmation off
#   kube-config+confirm  the same with SelfSubjectReview confirmation on (the default)
#   kube-config-fresh, kube-config+confirm-fresh
#                        the same two with a different valid token on every request, as real users
#                        arrive (bench/fresh_tokens.py signs FRESH_TOKENS per round with Dex's key,
#                        REVIEW_TOKENS for the rows that reach the API server; bench/fresh_tokens.lua
#                        sends each once), for FRESH_DURATION per round
#   selfsubjectreview-fresh
#                        the API server's own floor for the confirmation's question: a
#                        SelfSubjectReview POSTed straight at it with a fresh token each (what
#                        `kubectl auth whoami` sends), none of them seen by it before
#   proxy / direct       a `kubectl get configmaps` request (GET .../configmaps with alice's token)
#                        through the apiserver-proxy, and straight at the API server
#   proxy-1 / direct-1   the same over one connection: what the proxy adds to one user's
#                        `kubectl get`, without 16 clients queueing for the machine's 2 cores
#   model-healthz / model-verified
#                        benches/model_server.rs on core 0: a server whose answers are /healthz's
#                        alone, and /healthz's plus one RS256 verification (the target's model of
#                        a fresh-token download), to show how near the target's arithmetic the
#                        model itself comes on this harness
# Also the operator's CPU per /kube-config answer, with one token and with fresh tokens, against
# one RS256 verification (the `jsonwebtoken_decode` baseline of `cargo bench --bench throughput`,
# on the same core), and the target it sets: 0.8 / (1/healthz rate + one verification), the rate
# of one verification on top of the HTTP floor, with 20 % to spare. The CPU of the operators and
# of the API server per answer of the fresh rows, and wrk's own share of its core (under 100 %:
# the client is not the limit).
# Prints a table and appends it to bench/results.md. Usage: bench/http.sh (BENCH_PROFILE=profiling
# uses the release build with symbols that bench/profile.sh builds, to save a build).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-16}
# Enough that no token repeats within a round: a run that needs more fails (non-2xx answers).
FRESH_TOKENS=${FRESH_TOKENS:-60000}
REVIEW_TOKENS=${REVIEW_TOKENS:-20000}
FRESH_DURATION=${FRESH_DURATION:-3s}
command -v wrk >/dev/null || BENCH=1 bash scripts/install-deps.sh

bench_cluster
bench_build "${BENCH_PROFILE:-release}"
cargo bench --profile "${BENCH_PROFILE:-bench}" --bench throughput --no-run >&2
model_bin=$(cargo bench --profile "${BENCH_PROFILE:-bench}" --bench model_server --no-run --message-format=json 2>/dev/null |
	python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "model_server" and m.get("executable"):
        print(m["executable"])')
bench_scratch

token=$(tests/cluster/id-token alice)
namespace=bench-http
mapfile -t ports < <(free_ports 4)
plain=127.0.0.1:${ports[0]} confirming=127.0.0.1:${ports[1]} proxy=127.0.0.1:${ports[2]}
model=127.0.0.1:${ports[3]}
bench_proxy "$namespace" "$proxy"

# One operator per configuration, both on core 0; only one is under load at a time. Both watch
# only $namespace (no requests there), so the controller is idle.
start_operator "$plain" "$namespace" --confirm-with-api-server=false "${proxy_flags[@]}"
plain_pid=${pids[-1]}
start_operator "$confirming" "$namespace"
confirming_pid=${pids[-1]}
apiserver_pid=$(cat "$CLUSTER_DIR/run/apiserver.pid")
# The download target's model as a server (benches/model_server.rs), on the operator's core.
MODEL_SERVER_LISTEN=$model taskset -c 0 "$model_bin" >"$work/model.log" 2>&1 &
pids+=($!)
model_pid=$!
for _ in $(seq 1 50); do curl -fs "http://$model/verified" >/dev/null && break; sleep 0.1; done
[[ $(curl -fs "http://$model/verified") == ok ]] || { echo "the model server does not answer; $work/model.log:" >&2; cat "$work/model.log" >&2; exit 1; }
# The rows the API server bounds (every answer waits on it: the confirmation's fresh tokens, the
# proxy, and their direct baselines) give it core 1 to itself and run wrk beside the operator on
# core 0. Its own rate is then measured on the same core whether it is asked directly or through
# the operator: unpinned, the direct baseline also had the operator's idle core 0, which a real
# API server never lends to the operator's node. The other rows keep wrk on core 1 (the API
# server idles there). APISERVER_OWN_CORE=0 shares both cores as runs before 2026-12-05T19:16Z
# did.
APISERVER_OWN_CORE=${APISERVER_OWN_CORE:-1}
apiserver_bound=" kube-config+confirm-fresh selfsubjectreview-fresh proxy direct proxy-1 direct-1 "
if ((APISERVER_OWN_CORE)); then
	pin_apiserver() { taskset -a -p -c "$1" "$apiserver_pid" >/dev/null; }
	pin_apiserver 1
	trap 'pin_apiserver 0-1 || true; for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT
fi

declare -A url=(
	[healthz]="http://$plain/healthz"
	[kube-config]="http://$plain/kube-config"
	[kube-config+confirm]="http://$confirming/kube-config"
	[proxy]="https://$proxy/api/v1/namespaces/$namespace/configmaps"
	[direct]="$KUBE_SERVER/api/v1/namespaces/$namespace/configmaps"
)
url[proxy-1]=${url[proxy]} url[direct-1]=${url[direct]}
url[kube-config-fresh]=${url[kube-config]} url[kube-config+confirm-fresh]=${url[kube-config+confirm]}
url[model-healthz]="http://$model/healthz" url[model-verified]="http://$model/verified"
url[selfsubjectreview-fresh]="$KUBE_SERVER/apis/authentication.k8s.io/v1/selfsubjectreviews"
review='{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}'
targets=(healthz kube-config kube-config-fresh kube-config+confirm kube-config+confirm-fresh selfsubjectreview-fresh proxy direct proxy-1 direct-1 model-healthz model-verified)
# Each fresh row's tokens in its own file per round ($work/<target>-<round>), none shared with
# another row: the API server keeps its verdict on a token for 10 s.
fresh_file() { echo "$work/$1-$2"; }
sign_fresh() {
	local count=$1 target round files=()
	shift
	for target in "$@"; do
		for round in $(seq 1 "$ROUNDS"); do files+=("$(fresh_file "$target" "$round")"); done
	done
	echo "signing $ROUNDS x $count fresh tokens for $*" >&2
	DEX_KEY_TOOL=$DEX_KEY_TOOL DEX_DB_FILE=$DEX_DB_FILE python3 bench/fresh_tokens.py "$count" "${files[@]}" <<<"$token"
}
sign_fresh "$FRESH_TOKENS" kube-config-fresh
sign_fresh "$REVIEW_TOKENS" kube-config+confirm-fresh selfsubjectreview-fresh
for target in "${targets[@]}"; do
	[[ $target == *-fresh ]] && continue
	code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "${url[$target]}")
	[[ $code == 200 ]] || { echo "$target answers $code, not 200: nothing to measure" >&2; exit 1; }
done

# "123.4us" / "5.6ms" / "1.2s" -> milliseconds
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; printf "%.3f", n }'; }

# Each fresh row is checked with the last token of its last file, which no run reaches.
for target in kube-config-fresh kube-config+confirm-fresh selfsubjectreview-fresh; do
	last_fresh=$(tail -n 1 "$(fresh_file "$target" "$ROUNDS")")
	ask=(-H "Authorization: Bearer $last_fresh")
	[[ $target == selfsubjectreview-* ]] && ask+=(--cacert "$KUBE_CA_FILE" -H 'Content-Type: application/json' -d "$review")
	code=$(curl -s -o /dev/null -w '%{http_code}' "${ask[@]}" "${url[$target]}")
	[[ $code == 20[01] ]] || { echo "$target answers $code to a fresh token, not 200/201" >&2; exit 1; }
done

# wrk with "$@", then the CPU seconds it used (user + system) on a line of its own: `times` in
# the command substitution's subshell, whose only child is wrk (into a file: a pipe would fork
# `times` into a subshell of its own, with no children).
wrk_with_cpu() {
	"$@"
	times >"$work/times"
	awk 'NR == 2 { split($1 " " $2, t, /[ms ]+/); printf "wrk-cpu %.3f\n", t[1] * 60 + t[2] + t[3] * 60 + t[4] }' "$work/times"
}

declare -A rps p50 p99 requests ticks ticks_confirming ticks_apiserver ticks_model wrk_cpu wrk_seconds
# Other work on the machine (builds, other benchmarks) shows in the load average: noted with the
# figures.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
	for target in "${targets[@]}"; do
		connections=$CONNECTIONS
		[[ $target == *-1 ]] && connections=1
		load=(-d"$DURATION" -H "Authorization: Bearer $token")
		[[ $target == *-fresh ]] && load=(-d"$FRESH_DURATION" -s bench/fresh_tokens.lua)
		method=GET body=
		wrk_core=1
		((APISERVER_OWN_CORE)) && [[ $apiserver_bound == *" $target "* ]] && wrk_core=0
		[[ $target == selfsubjectreview-* ]] && method=POST body=$review
		before=$(cpu_ticks "$plain_pid") before_confirming=$(cpu_ticks "$confirming_pid")
		before_apiserver=$(cpu_ticks "$apiserver_pid") before_model=$(cpu_ticks "$model_pid")
		out=$(TOKENS=$(fresh_file "$target" "$round") METHOD=$method BODY=$body wrk_with_cpu \
			taskset -c "$wrk_core" wrk -t1 -c"$connections" --latency "${load[@]}" "${url[$target]}")
		after=$(cpu_ticks "$plain_pid")
		ticks_confirming[$target]=$((${ticks_confirming[$target]:-0} + $(cpu_ticks "$confirming_pid") - before_confirming))
		ticks_apiserver[$target]=$((${ticks_apiserver[$target]:-0} + $(cpu_ticks "$apiserver_pid") - before_apiserver))
		ticks_model[$target]=$((${ticks_model[$target]:-0} + $(cpu_ticks "$model_pid") - before_model))
		wrk_cpu[$target]=$(awk -v a="${wrk_cpu[$target]:-0}" '$1 == "wrk-cpu" { print a + $2 }' <<<"$out")
		wrk_seconds[$target]=$(awk -v a="${wrk_seconds[$target]:-0}" -v ms="$(to_ms "${load[0]#-d}")" 'BEGIN { print a + ms / 1000 }')
		if grep -q 'Non-2xx' <<<"$out"; then
			echo "round $round, $target: $(grep 'Non-2xx' <<<"$out")" >&2
			[[ $target == *-fresh ]] && echo "(out of fresh tokens? raise FRESH_TOKENS)" >&2
			exit 1
		fi
		rps[$target]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
		p50[$target]+="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") "
		p99[$target]+="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")") "
		requests[$target]=$((${requests[$target]:-0} + $(awk '/requests in/ {print $1}' <<<"$out")))
		ticks[$target]=$((${ticks[$target]:-0} + after - before))
	done
	echo "round $round of $ROUNDS done" >&2
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
placement="wrk on core 1; the API server is not pinned"
((APISERVER_OWN_CORE)) && placement="the API server on core 1 alone; wrk on core 0 for ${apiserver_bound# }and on core 1 for the rest"
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
verify_ns=$(taskset -c 0 cargo bench --profile "${BENCH_PROFILE:-bench}" --bench throughput 2>/dev/null | awk '$2 == "jsonwebtoken_decode" {print $3}')
# µs of CPU per answer of target $1: the plain operator's, or the $2 array's (ticks_confirming,
# ticks_apiserver)
cpu_us() {
	local -n counted=${2:-ticks}
	awk -v t="${counted[$1]}" -v n="${requests[$1]}" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }'
}

floor=$(median "${rps[healthz]}")
direct=$(median "${rps[direct]}") direct1=$(median "${rps[direct-1]}")
{
	echo "| target | requests/s | ratio | p50 ms | p99 ms |"
	echo "|---|---|---|---|---|"
	for target in "${targets[@]}"; do
		r=$(median "${rps[$target]}")
		case $target in
		proxy) ratio=$(awk -v a="$r" -v b="$direct" 'BEGIN { printf "%.2f× direct", a / b }') ;;
		kube-config+confirm-fresh) ratio=$(awk -v a="$r" -v b="$(median "${rps[selfsubjectreview-fresh]}")" 'BEGIN { printf "%.2f× selfsubjectreview-fresh", a / b }') ;;
		direct) ratio="1.00× direct" ;;
		selfsubjectreview-fresh) ratio="1.00× selfsubjectreview-fresh" ;;
		proxy-1) ratio=$(awk -v a="$r" -v b="$direct1" 'BEGIN { printf "%.2f× direct-1", a / b }') ;;
		model-verified) ratio=$(awk -v a="$r" -v b="$(median "${rps[model-healthz]}")" 'BEGIN { printf "%.2f× model-healthz", a / b }') ;;
		direct-1) ratio="1.00× direct-1" ;;
		*) ratio=$(awk -v a="$r" -v b="$floor" 'BEGIN { printf "%.2f× healthz", a / b }') ;;
		esac
		echo "| $target | $r | $ratio | $(median "${p50[$target]}") | $(median "${p99[$target]}") |"
	done
	echo
	for target in kube-config kube-config-fresh; do
		awk -v c="$(cpu_us "$target")" -v v="$verify_ns" -v t="$target" 'BEGIN { printf "Operator CPU per %s answer (confirmation off): %s µs = %.2f× one RS256 verification (%.1f µs, jsonwebtoken::decode on the same core).\n", t, c, c * 1000 / v, v / 1000 }'
	done
	awk -v h="$floor" -v v="$verify_ns" -v r="$(median "${rps[kube-config-fresh]}")" 'BEGIN {
		target = 0.8 / (1 / h + v / 1e9)
		printf "Target for kube-config-fresh: 0.8 / (1/healthz + one RS256 verification) = 0.8 / (%.1f µs + %.1f µs) = %.0f/s; measured %.0f/s = %.2f× the target.\n", 1e6 / h, v / 1000, target, r, r / target
	}'
	# The same target from CPU time instead of rates: what the rates would be with core 0 to
	# the operator alone, so other work on the machine moves it less than the line above.
	awk -v h="$(cpu_us healthz)" -v f="$(cpu_us kube-config-fresh)" -v v="$verify_ns" 'BEGIN {
		printf "The same target by the operator CPU per answer: 0.8 × (healthz %.1f µs + one verification %.1f µs) / kube-config-fresh %.1f µs = %.2f× the target.\n", h, v / 1000, f, (h + v / 1000) / (0.8 * f)
	}'
	# The target's arithmetic applied to the model, which does the target's work and nothing else.
	awk -v h="$(median "${rps[model-healthz]}")" -v v="$verify_ns" -v r="$(median "${rps[model-verified]}")" \
		-v hc="$(cpu_us model-healthz ticks_model)" -v vc="$(cpu_us model-verified ticks_model)" \
		-v op="$(median "${rps[kube-config-fresh]}")" 'BEGIN {
		computed = 1 / (1 / h + v / 1e9)
		printf "The target'"'"'s model as a server (benches/model_server.rs: /healthz plus one RS256 verification per answer, nothing else, on core 0): %.0f/s against the %.0f/s its own /healthz and one verification add up to (1 / (%.1f µs + %.1f µs)) = %.2f×; by CPU per answer %s µs against %.1f µs = %.2f×. The operator'"'"'s kube-config-fresh rate is %.2f× the model'"'"'s.\n", r, computed, 1e6 / h, v / 1000, r / computed, vc, hc + v / 1000, (hc + v / 1000) / vc, op / r
	}'
	echo "CPU per fresh-token answer (µs): kube-config-fresh: operator $(cpu_us kube-config-fresh); kube-config+confirm-fresh: operator $(cpu_us kube-config+confirm-fresh ticks_confirming), kube-apiserver $(cpu_us kube-config+confirm-fresh ticks_apiserver); selfsubjectreview-fresh: kube-apiserver $(cpu_us selfsubjectreview-fresh ticks_apiserver)."
	printf "wrk's CPU, share of its core:"
	for target in kube-config kube-config-fresh kube-config+confirm-fresh selfsubjectreview-fresh; do
		awk -v c="${wrk_cpu[$target]}" -v s="${wrk_seconds[$target]}" -v t="$target" 'BEGIN { printf " %s %.0f %%;", t, 100 * c / s }'
	done
	echo
	echo "Medians of $ROUNDS interleaved rounds of $DURATION ($FRESH_DURATION for the -fresh rows, each token sent once), $CONNECTIONS connections (1 for proxy-1 and direct-1), operator on core 0, $placement. Load average (1, 5, 15 min) before the rounds: $load_before; after: $load_after."
} | append_results "HTTP load (bench/http.sh)" "BENCH_PROFILE=${BENCH_PROFILE:-release} APISERVER_OWN_CORE=$APISERVER_OWN_CORE ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS FRESH_TOKENS=$FRESH_TOKENS REVIEW_TOKENS=$REVIEW_TOKENS FRESH_DURATION=$FRESH_DURATION bench/http.sh"
