#!/usr/bin/env bash
# quickstart.sh — from a fresh clone (Debian 12, as root) to a running or a
# tested sere. Run from anywhere; it works in the repository it lives in.
#   tools/quickstart.sh run [args...]  install dependencies, build build/ (release),
#                                      then build/sere recipes/tiny.lua [args...]
#   tools/quickstart.sh test           install dependencies, build build/ (release; CUDA
#                                      kernels too when nvcc is found) and build-asan/
#                                      (ASan+UBSan, CPU only), run ctest in both; then
#                                      build-emu/ (the CUDA kernels on the CPU emulator,
#                                      ASan+UBSan) and run the GPU tests there
# Environment: JOBS (parallel compile jobs, default: all cores),
# CTEST_PARALLEL_LEVEL (parallel tests, default: one at a time).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }

build() { # build DIR CMAKE_ARGS...
  local dir=$1
  shift
  echo "== configuring $dir: $*"
  mkdir -p "$dir"
  cmake -S . -B "$dir" "$@" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; return 1; }
  grep -E "sere: CUDA" "$dir/configure.log" || true
  echo "== building $dir"
  cmake --build "$dir" -j "$JOBS"
}

# Runs ctest in DIR and records its summary line in SUMMARY.
SUMMARY=()
run_tests() { # run_tests DIR [CTEST_ARGS...]
  local dir=$1 status=0
  shift
  echo "== testing $dir $*"
  ctest --test-dir "$dir" --output-on-failure "$@" 2>&1 | tee "$dir/ctest.log" || status=1
  local line
  line=$(grep -E "tests passed|No tests were found" "$dir/ctest.log" | tail -n 1 || true)
  SUMMARY+=("$dir: ${line:-ctest did not finish}")
  return $status
}

case "${1:-}" in
  run)
    shift
    tools/install-deps.sh
    build build -DCMAKE_BUILD_TYPE=Release
    if [[ ! -f recipes/tiny.lua ]]; then
      echo "quickstart: recipes/tiny.lua not found" >&2
      exit 1
    fi
    echo "== build/sere recipes/tiny.lua $*"
    exec build/sere recipes/tiny.lua "$@"
    ;;
  test)
    tools/install-deps.sh
    failed=0
    if build build -DCMAKE_BUILD_TYPE=Release; then
      run_tests build || failed=1
    else
      SUMMARY+=("build: BUILD FAILED"); failed=1
    fi
    if build build-asan -DSERE_SANITIZE=ON -DSERE_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug; then
      run_tests build-asan || failed=1
    else
      SUMMARY+=("build-asan: BUILD FAILED"); failed=1
    fi
    # No GPU here: the parity suite runs the kernels on the emulator, with
    # ASan watching their memory accesses (kernels/emulator/emulator.h).
    if build build-emu -DSERE_CUDA=EMULATE -DSERE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Release; then
      run_tests build-emu -R "cuda|emulator" || failed=1
    else
      SUMMARY+=("build-emu: BUILD FAILED"); failed=1
    fi
    echo
    echo "== summary"
    printf '  %s\n' "${SUMMARY[@]}"
    if [[ $failed == 0 ]]; then echo "quickstart test: OK"; else echo "quickstart test: FAILED"; fi
    exit $failed
    ;;
  -h | --help)
    usage
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
