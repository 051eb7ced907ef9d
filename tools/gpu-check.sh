#!/usr/bin/env bash
# gpu-check.sh — what sere checks on a GPU machine, in one call: the CUDA
# parity suite (tests/lua/test_cuda_*.lua), compute-sanitizer memcheck and
# racecheck over it, the tiny recipe on the GPU, and the benchmarks that
# exist. Results go under $OUT (the device tool brings them back); a short
# table is printed last.
#
# Here (no GPU), once per change:
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2
#   echo /.device/ >> .git/info/exclude
#   ../shared/tools/device-pack build/sere .device
#   cp build/test_cuda_* .device/bin/     # the C GPU tests (same libraries)
# Then, through the device tool, from the repository root:
#   bash tools/gpu-check.sh [parity|sanitize|tiny|bench|all] (default all)
# Each part fits in one 10-minute call when run alone.
set -u
part=${1:-all}
OUT=${OUT:-/tmp/sere-gpu-check}
mkdir -p "$OUT"
[ -f .device/env.sh ] || { echo "gpu-check: no .device/ (pack the build first, see the header)" >&2; exit 2; }
# shellcheck disable=SC1091
source .device/env.sh
ln -sfn ../lua .device/lua # the packed binary finds lua/ at <bin>/../lua
SERE=.device/bin/sere
summary=()

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$SERE" -e 'local s = require "sere"; print("sere sees " .. s.cuda.device_count() .. " GPU(s): " ..
  (s.cuda.is_available() and s.cuda.device_name() or "none"))' 2>&1 | tee "$OUT/device.txt"

run_parity() {
  mkdir -p "$OUT/parity"
  for f in tests/lua/test_cuda_*.lua; do
    name=$(basename "$f" .lua)
    local t0=$SECONDS
    "$SERE" "$f" > "$OUT/parity/$name.txt" 2>&1
    local rc=$?
    summary+=("parity   $name rc=$rc $(tail -n 1 "$OUT/parity/$name.txt") ($((SECONDS - t0)) s)")
  done
  for t in .device/bin/test_cuda_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    "$t" > "$OUT/parity/$name.txt" 2>&1
    summary+=("parity   $name rc=$? $(tail -n 1 "$OUT/parity/$name.txt")")
  done
}

run_sanitize() {
  local cs
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  mkdir -p "$OUT/sanitize"
  for tool in memcheck racecheck; do
    for f in tests/lua/test_cuda_*.lua; do
      name=$(basename "$f" .lua)
      local t0=$SECONDS
      timeout 240 "$cs" --tool "$tool" --error-exitcode 9 "$SERE" "$f" > "$OUT/sanitize/$tool-$name.txt" 2>&1
      local rc=$?
      summary+=("$tool $name rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize/$tool-$name.txt" | tail -n 1) ($((SECONDS - t0)) s)")
    done
  done
}

run_tiny() {
  local t0=$SECONDS
  "$SERE" recipes/tiny.lua --device cuda --output_dir "$OUT/tiny" > "$OUT/tiny.txt" 2>&1
  summary+=("tiny     rc=$? $(tail -n 1 "$OUT/tiny.txt") ($((SECONDS - t0)) s)")
}

run_bench() {
  for b in bench/step.lua; do
    [ -f "$b" ] || continue
    name=$(basename "$b" .lua)
    "$SERE" "$b" > "$OUT/bench-$name.txt" 2>&1
    summary+=("bench    $name rc=$?")
  done
}

case $part in
  parity) run_parity ;;
  sanitize) run_sanitize ;;
  tiny) run_tiny ;;
  bench) run_bench ;;
  all) run_parity; run_sanitize; run_tiny; run_bench ;;
  *) echo "gpu-check: unknown part '$part' (parity, sanitize, tiny, bench or all)" >&2; exit 2 ;;
esac

printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
