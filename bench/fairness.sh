#!/usr/bin/env bash
# One tenant holding his share of the proxy against another tenant's latency (issue 26, item 3).
# bob opens SHARE watches through the apiserver-proxy (his whole `proxy.maxRequestsPerUser`)
# and EXTRA more, which must be refused with 429; meanwhile alice makes REQUESTS `kubectl get
# configmaps` requests through the proxy, each on a new connection as a kubectl run opens one.
# Her latency is measured first with bob idle (the baseline), then while bob holds his share, in
# the same run. The pool (`proxy.maxConnections`) is SHARE + 16, so without the per-user cap bob
# could hold all of it. Prints a table and appends it to bench/results.md.
# Usage: bench/fairness.sh (BENCH_PROFILE=profiling reuses bench/profile.sh's build).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
SHARE=${SHARE:-128}
EXTRA=${EXTRA:-32}
REQUESTS=${REQUESTS:-200}

bench_cluster
bench_build "${BENCH_PROFILE:-release}"
bench_scratch

namespace=bench-fairness
mapfile -t ports < <(free_ports 2)
plain=127.0.0.1:${ports[0]} proxy=127.0.0.1:${ports[1]}
bench_proxy "$namespace" "$proxy"
kubectl create rolebinding bob-view -n "$namespace" --clusterrole=view --user="$BOB_USERNAME" \
	--dry-run=client -o yaml | kubectl apply -f - >/dev/null
start_operator "$plain" "$namespace" --confirm-with-api-server=false "${proxy_flags[@]}" \
	--proxy-max-requests-per-user "$SHARE" --proxy-max-connections $((SHARE + 16))

alice=$(tests/cluster/id-token alice) bob=$(tests/cluster/id-token bob)
url="https://$proxy/api/v1/namespaces/$namespace/configmaps"

# alice's latencies in ms, one per line, each request on a fresh connection (curl on core 1).
alice_latencies() {
	local i
	for i in $(seq 1 "$REQUESTS"); do
		taskset -c 1 curl -sk -o /dev/null -w '%{http_code} %{time_total}\n' \
			-H "Authorization: Bearer $alice" "$url"
	done | awk '$1 != 200 { print "alice got " $1 > "/dev/stderr"; exit 1 } { printf "%.3f\n", $2 * 1000 }'
}
percentile() { sort -g | awk -v p="$1" '{a[NR] = $1} END {i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i]}'; }

idle=$(alice_latencies)

# bob's share: each watch holds its connection and its slot until killed; the proxy counts a
# watch once its answer's head is sent.
for _ in $(seq 1 "$SHARE"); do
	curl -sk -N -o /dev/null -H "Authorization: Bearer $bob" "$url?watch=true" &
	pids+=($!)
done
for _ in $(seq 1 100); do
	held=$(curl -s "http://$plain/metrics" | awk -F' ' '/proxy_requests_total\{verb="watch",code="200"\}/ {print $2}')
	[[ ${held:-0} -ge $SHARE ]] && break
	sleep 0.2
done
refused=0
for _ in $(seq 1 "$EXTRA"); do
	code=$(curl -sk -o /dev/null -m 10 -w '%{http_code}' -H "Authorization: Bearer $bob" "$url?watch=true")
	[[ $code == 429 ]] && refused=$((refused + 1))
done
busy=$(alice_latencies)

row() { echo "| $1 | $(percentile 50 <<<"$2") | $(percentile 99 <<<"$2") | $3 |"; }
ratio() { awk -v a="$(percentile "$1" <<<"$busy")" -v b="$(percentile "$1" <<<"$idle")" 'BEGIN { printf "%.2f×", a / b }'; }
{
	echo "| alice's \`kubectl get\` through the proxy | p50 ms | p99 ms | ratio to bob idle (p50, p99) |"
	echo "|---|---|---|---|"
	row "bob idle" "$idle" "1.00×, 1.00×"
	row "bob holding $SHARE watches (his share)" "$busy" "$(ratio 50), $(ratio 99)"
	echo
	echo "bob's further $EXTRA watches: $refused answered 429. $REQUESTS requests of alice per phase, each on a new connection; pool $((SHARE + 16)) connections."
} | append_results "One tenant's watches against another's requests (bench/fairness.sh)" \
	"BENCH_PROFILE=${BENCH_PROFILE:-release} SHARE=$SHARE EXTRA=$EXTRA REQUESTS=$REQUESTS bench/fairness.sh"
