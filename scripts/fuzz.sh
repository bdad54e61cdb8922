#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, in build-fuzz/) and runs each for a bounded
# time on a copy of its seed corpus. Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# (default 60 s, every target in tests/fuzz/targets.cmake). Fails on any crash, leak, timeout or
# out-of-memory; the input that caused it is left in build-fuzz/findings/<target>/ (move it to
# tests/fuzz/regressions/<target>/ once fixed). Prints the executions of each target.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
BUILD_DIR="${BUILD_DIR:-build-fuzz}"
DSV3_WITH_CLANG=1 scripts/setup.sh
CXX=clang++-14 cmake -S . -B "$BUILD_DIR" -G Ninja -DDSV3_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then mapfile -t targets < "$BUILD_DIR/tests/fuzz/targets.txt"; fi

failed=()
summary=()
for t in "${targets[@]}"; do
  work="$BUILD_DIR/corpus/$t"        # grows as the fuzzer finds new coverage; seeds stay clean
  findings="$BUILD_DIR/findings/$t"
  rm -rf "$findings"
  mkdir -p "$work" "$findings"
  dict=()
  if [[ -f "tests/fuzz/$t.dict" ]]; then dict=(-dict="tests/fuzz/$t.dict"); fi
  log="$BUILD_DIR/fuzz-$t.log"
  echo "fuzz: $t for ${seconds}s" >&2
  status=0
  # -timeout: one input running longer is a hang; -rss_limit_mb: memory per process;
  # -max_len: inputs up to 64 KiB (seeds may be longer).
  "$BUILD_DIR/tests/fuzz/fuzz_$t" "$work" "tests/fuzz/corpus/$t" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2560 -max_len=65536 \
    -artifact_prefix="$findings/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  summary+=("$(printf '%-20s %10s executions  %s' "$t" "${execs:-?}" \
    "$([[ $status -eq 0 ]] && echo ok || echo "FAILED (exit $status, see $log)")")")
  if [[ $status -ne 0 ]]; then
    failed+=("$t")
    tail -n 40 "$log" >&2
  fi
done
printf '%s\n' "fuzz summary (${seconds}s per target):" "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: failures in ${failed[*]}; inputs in $BUILD_DIR/findings/" >&2
  exit 1
fi
