#!/usr/bin/env bash
# What the revocation check costs a proxied request (issue 25): alice's `kubectl get configmaps`
# through the apiserver-proxy with no KubeconfigRevocation of this script's in the cluster, and
# with REVOCATIONS of them in force (each for a user no token carries, so every request is judged
# against all of them and allowed). Every proxied request also waits, beside its answer, for a
# revocation that would end it; that is in both figures. wrk on core 1 with CONNECTIONS
# connections, the operator on core 0; ROUNDS rounds of DURATION each way, in alternating order.
# Prints requests/s, p50 and the operator's CPU per request with revocations as ratios to without,
# and appends the table to bench/results.md. Usage: bench/revocation.sh (BENCH_PROFILE=dev for a
# quick look with the tests' debug binary).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
REVOCATIONS=${REVOCATIONS:-100}
command -v wrk >/dev/null || BENCH=1 bash scripts/install-deps.sh

bench_cluster
bench_build "${BENCH_PROFILE:-release}"
bench_scratch

token=$(tests/cluster/id-token alice)
namespace=bench-revocation
mapfile -t ports < <(free_ports 2)
plain=127.0.0.1:${ports[0]} proxy=127.0.0.1:${ports[1]}
bench_proxy "$namespace" "$proxy"
start_operator "$plain" "$namespace" --confirm-with-api-server=false "${proxy_flags[@]}"
operator_pid=${pids[-1]}
url="https://$proxy/api/v1/namespaces/$namespace/configmaps"

not_before=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for i in $(seq 1 "$REVOCATIONS"); do
	printf -- '---\napiVersion: kubeconfig.dev/v1alpha1\nkind: KubeconfigRevocation\nmetadata:\n  name: bench-revocation-%d\n  labels: {kubeconfig.dev/bench: revocation}\nspec:\n  user: nobody-%d@example.com\n  notBefore: "%s"\n' \
		"$i" "$i" "$not_before"
done >"$work/revocations.yaml"
revocations() {
	case $1 in
	in-force) kubectl apply -f "$work/revocations.yaml" >/dev/null ;;
	none) kubectl delete kubeconfigrevocations -l kubeconfig.dev/bench=revocation --ignore-not-found >/dev/null ;;
	esac
	# The operator follows them with a watch: a second is ample.
	sleep 1
}
revocations none
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url")
[[ $code == 200 ]] || { echo "the proxy answers $code, not 200: nothing to measure" >&2; exit 1; }

# "123.4us" / "5.6ms" / "1.2s" -> milliseconds
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; printf "%.3f", n }'; }
declare -A rps p50 requests ticks
for round in $(seq 1 "$ROUNDS"); do
	order=(none in-force)
	((round % 2 == 0)) && order=(in-force none)
	for state in "${order[@]}"; do
		revocations "$state"
		before=$(cpu_ticks "$operator_pid")
		out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" --latency -d"$DURATION" -H "Authorization: Bearer $token" "$url")
		after=$(cpu_ticks "$operator_pid")
		if grep -q 'Non-2xx' <<<"$out"; then
			echo "round $round, $state: $(grep 'Non-2xx' <<<"$out")" >&2
			exit 1
		fi
		rps[$state]+="$(awk '/^Requests\/sec/ {print $2}' <<<"$out") "
		p50[$state]+="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") "
		requests[$state]=$((${requests[$state]:-0} + $(awk '/requests in/ {print $1}' <<<"$out")))
		ticks[$state]=$((${ticks[$state]:-0} + after - before))
	done
	echo "round $round of $ROUNDS done" >&2
done
revocations none

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
cpu_us() { awk -v t="${ticks[$1]}" -v n="${requests[$1]}" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }'; }
{
	echo "| revocations | requests/s | p50 ms | operator CPU µs per request |"
	echo "|---|---|---|---|"
	for state in none in-force; do
		label=0
		[[ $state == in-force ]] && label=$REVOCATIONS
		echo "| $label | $(median "${rps[$state]}") | $(median "${p50[$state]}") | $(cpu_us "$state") |"
	done
	echo
	awk -v a="$(median "${rps[in-force]}")" -v b="$(median "${rps[none]}")" \
		-v c="$(cpu_us in-force)" -v d="$(cpu_us none)" -v n="$REVOCATIONS" \
		'BEGIN { printf "With %d revocations in force: %.3f× the requests/s and %.3f× the operator CPU per proxied request of none.\n", n, a / b, c / d }'
	echo "Medians of $ROUNDS rounds of $DURATION each way (alternating order), $CONNECTIONS connections, wrk on core 1, operator on core 0; the API server is not pinned."
} | append_results "Revocation check per proxied request (bench/revocation.sh)" "BENCH_PROFILE=${BENCH_PROFILE:-release} ROUNDS=$ROUNDS DURATION=$DURATION CONNECTIONS=$CONNECTIONS REVOCATIONS=$REVOCATIONS bench/revocation.sh"
