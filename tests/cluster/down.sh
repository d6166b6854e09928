#!/usr/bin/env bash
# Stop every process of the local test cluster in CLUSTER_DIR (default target/cluster), the
# node's first, wait for them to exit (SIGKILL after 20s), remove the node's network namespace,
# mounts and cgroups, then remove the state directory. The built binaries in
# target/cluster/bin are kept so the next cluster-up does not relink.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# One up/down at a time per cluster (parallel test processes may all call cluster-up).
mkdir -p "$(dirname "$CLUSTER_DIR")"
exec 9>"$CLUSTER_DIR.lock"
flock 9

if [[ ! -d "$CLUSTER_DIR" ]]; then
	log "nothing in $CLUSTER_DIR"
	exit 0
fi

for ((i = ${#NODE_COMPONENTS[@]} - 1; i >= 0; i--)); do
	stop_component "${NODE_COMPONENTS[i]}"
done
for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
	stop_component "${COMPONENTS[i]}"
done

# Stragglers: any process started for this cluster whose pid file got lost.
for pid in $(all_our_pids); do
	log "straggler pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null))"
	stop_pid "$pid" straggler || true
done
left="$(all_our_pids | tr '\n' ' ')"
[[ -z "$left" ]] || die "processes still running for $CLUSTER_DIR: $left"
# The node's namespace, mounts, cgroups and the kubelet's sysctls (nothing to do without a node).
node_teardown

if [[ "$CLUSTER_BIN" == "$CLUSTER_DIR"/* ]]; then
	# Default cluster: keep the binaries, drop everything else.
	find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -path "$CLUSTER_BIN" -exec rm -rf {} +
else
	rm -rf "$CLUSTER_DIR"
fi
log "cluster in $CLUSTER_DIR is down"
