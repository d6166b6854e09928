#!/usr/bin/env bash
# Issuance at scale and the operator's memory on the local cluster (benches/issuance.rs: every
# time against plain writes through the same API server in the same run). Prints the table and
# appends it to bench/results.md. Settings: ISSUANCE_SIZES (1000,5000), MEMORY_REQUESTS
# (10000,20000: totals of Ready requests, the memory per request between them),
# UNRELATED_SECRETS (20000), SINGLE_SAMPLES (30). Takes about 20 minutes on 2 cores.
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
bench_cluster
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo bench --profile "${BENCH_PROFILE:-bench}" --bench issuance 2>&1 | tee "$log" >&2
grep '^|' "$log" | append_results "Issuance and memory (bench/issuance.sh)" \
	"BENCH_PROFILE=${BENCH_PROFILE:-bench} ISSUANCE_SIZES=${ISSUANCE_SIZES:-1000,5000} MEMORY_REQUESTS=${MEMORY_REQUESTS:-10000,20000} UNRELATED_SECRETS=${UNRELATED_SECRETS:-20000} bench/issuance.sh"
