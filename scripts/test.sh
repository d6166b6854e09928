#!/usr/bin/env bash
# `make test`: every test against the local cluster, then each fuzz target for FUZZ_SECONDS.
# The builds (the cluster's Go binaries and node images, the Rust test binaries, the fuzz targets,
# the operator's image) are independent, so they run side by side; on a fresh 2-core machine that
# saves about ten minutes over building them one after another. A second cluster,
# $CLUSTER_DIR-node, has the node: tests/node.rs runs pods there and tests/deploy.rs installs the
# image there (a node and an installed operator would change what the other tests see). Both
# clusters are torn down even when tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
# CI builds once, from scratch: incremental state would only take disk (1.3 GB) and time.
if [[ -n ${CI:-} ]]; then export CARGO_INCREMENTAL=0; fi
# kubectl of the cluster's Kubernetes version (tests/cluster/up.sh builds it): the tests run
# kubectl, and the machine's may be more than one minor older than the cluster.
export PATH="${CLUSTER_BIN:-$PWD/target/cluster/bin}:$PATH"
# The node's cluster (tests/node.rs, tests/deploy.rs; see tests/support/node.rs).
node_cluster="${CLUSTER_DIR:-target/cluster}-node"
logs=target/test-logs
mkdir -p "$logs"

echo "[test] building the Rust tests and the fuzz targets beside the cluster" >&2
cargo test --no-run >"$logs/cargo-build.log" 2>&1 &
rust_build=$!
FUZZ_BUILD_ONLY=1 bash scripts/fuzz.sh "$seconds" >"$logs/fuzz-build.log" 2>&1 &
fuzz_build=$!
# The image (scripts/image.sh) needs neither: it builds beside them at a lower priority;
# tests/deploy.rs installs it, scripts/test-image.sh runs it at the end.
echo "[test] building the image beside them (log: $logs/image.log)" >&2
nice -n 10 bash scripts/image.sh >"$logs/image.log" 2>&1 &
image_build=$!

rc=0
# Sequentially: the two share the built binaries (target/cluster/bin).
make cluster-up || rc=$?
if ((rc == 0)); then CLUSTER_DIR="$node_cluster" make node-up || rc=$?; fi
wait "$rust_build" || { echo "[test] cargo test --no-run failed:" >&2; tail -n 60 "$logs/cargo-build.log" >&2; rc=1; }
wait "$fuzz_build" || { echo "[test] building the fuzz targets failed:" >&2; tail -n 60 "$logs/fuzz-build.log" >&2; rc=1; }
wait "$image_build" || { echo "[test] building the image failed:" >&2; tail -n 60 "$logs/image.log" >&2; rc=1; }
if ((rc == 0)); then cargo test || rc=$?; fi
if ((rc == 0)); then bash scripts/fuzz.sh "$seconds" || rc=$?; fi
make cluster-down || true
CLUSTER_DIR="$node_cluster" make cluster-down || true
if ((rc == 0)); then bash scripts/test-image.sh || rc=$?; fi
exit "$rc"
