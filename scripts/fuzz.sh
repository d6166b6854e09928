#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for SECONDS_PER_TARGET (default 60) each, starting from the
# checked-in seeds in fuzz/corpus/<target>/. Exits non-zero if any target crashes; the
# reproducer is then in fuzz/artifacts/<target>/ (rerun it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>`).
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z flags that
# cargo-fuzz passes (sanitizer, coverage instrumentation).
#
# Environment:
#   FUZZ_TARGETS    space-separated targets to run (default: all, from `cargo fuzz list`)
#   FUZZ_SANITIZER  address (default) or none (faster, but catches only panics, not UB in C code)
#   CARGO_BUILD_JOBS  cargo build jobs (default: all cores)
#   FUZZ_KEEP_CORPUS=1  keep the new corpus entries (their directory is printed)
#   FUZZ_BUILD_ONLY=1   build the targets and stop
set -euo pipefail

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: $0 [SECONDS_PER_TARGET]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz not found; installing it from crates.io" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
build_args=(--sanitizer "$sanitizer")

# Longest input per target: real tokens are 1-4 KiB (the verifier refuses more than 16 KiB
# before parsing), configuration files and requests are small.
max_len_for() {
  case $1 in
    token_verify) echo 8192 ;;
    config_load) echo 4096 ;;
    http_request) echo 4096 ;;
    *) echo 4096 ;;
  esac
}

read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
echo "building ${targets[*]} (sanitizer: $sanitizer)" >&2
cargo fuzz build "${build_args[@]}"
# FUZZ_BUILD_ONLY=1: build the targets now (e.g. beside other builds) and run them later.
if [[ -n ${FUZZ_BUILD_ONLY:-} ]]; then exit 0; fi

scratch_root=$(mktemp -d "${TMPDIR:-/tmp}/kubeconfig-operator-fuzz.XXXXXX")
if [[ -z ${FUZZ_KEEP_CORPUS:-} ]]; then trap 'rm -rf "$scratch_root"' EXIT; fi

failed=()
summary=()
for target in "${targets[@]}"; do
  seeds=fuzz/corpus/$target
  mkdir -p "$seeds" "fuzz/artifacts/$target"
  scratch=$scratch_root/$target
  mkdir -p "$scratch"
  log=$scratch_root/$target.log
  echo "=== $target: ${seconds}s, seeds in $seeds, new inputs in $scratch" >&2
  # The first corpus directory receives new inputs, so the checked-in seeds stay untouched.
  started=$SECONDS
  set +e
  cargo fuzz run "${build_args[@]}" "$target" "$scratch" "$seeds" -- \
    -max_total_time="$seconds" -max_len="$(max_len_for "$target")" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 2>&1 | tee "$log" | grep -E --line-buffered \
    '^(#[0-9]+[[:space:]]+(INITED|DONE|pulse)|INFO: seed corpus|==[0-9]+==|thread .* panicked|SUMMARY|artifact_prefix|Test unit written|stat::)' >&2
  status=${PIPESTATUS[0]}
  set -e
  elapsed=$((SECONDS - started))
  # Final stats if libFuzzer printed them, else the last status line ("#N ...").
  execs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" | tail -n1 | grep -Eo '[0-9]+$' || true)
  if [[ -z $execs ]]; then
    execs=$(grep -Eo '^#[0-9]+' "$log" | tail -n1 | tr -d '#' || true)
  fi
  if ((status != 0)); then
    failed+=("$target")
    artifact=$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -n1 | sed 's/Test unit written to //' || true)
    summary+=("fuzz: $target ${execs:-?} executions in $elapsed s, 1 crashes (exit $status, reproducer: ${artifact:-none written, see $log})")
    # Keep the log of a crashed target: the scratch directory is removed on exit.
    cp "$log" "fuzz/artifacts/$target/last-crash.log"
  else
    summary+=("fuzz: $target ${execs:-?} executions in $elapsed s, 0 crashes")
  fi
done

echo
echo "fuzz summary (${seconds}s per target, sanitizer $sanitizer):"
printf '%s\n' "${summary[@]}"
if [[ -n ${FUZZ_KEEP_CORPUS:-} ]]; then echo "new corpus entries kept in $scratch_root"; fi
if ((${#failed[@]} > 0)); then
  echo "crashed: ${failed[*]}" >&2
  exit 1
fi
exit 0
