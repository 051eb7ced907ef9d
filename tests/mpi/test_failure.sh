#!/usr/bin/env bash
# test_failure.sh — a failure on one rank ends the whole `mpirun -np 2`
# job quickly, with a non-zero status and a message naming the rank,
# instead of leaving the other rank waiting in a collective forever: a Lua
# error raised on rank 1 only (rank 0 waits in a barrier), os.exit(3) on
# rank 1, and rank 1 killed by a signal. Also: a job whose ranks all
# succeed exits 0 (MPI finalised on both), and a launcher that announces
# more processes than MPI sees (srun without --mpi=pmix) is refused
# instead of training alone in each. Every job runs under `timeout`,
# so a hang fails the test (status 124) instead of blocking CI.
#   usage: tests/mpi/test_failure.sh "MPIRUN [FLAGS]" path/to/sere
set -u
MPIRUN=${1:?usage: test_failure.sh "MPIRUN [FLAGS]" path/to/sere}
SERE=$(realpath "${2:?usage: test_failure.sh "MPIRUN [FLAGS]" path/to/sere}")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
LIMIT=20 # seconds; a job that stops as it should takes well under 2

# job NAME LUA_CODE: runs the code on 2 ranks; sets $rc, $out (stdout and stderr), $secs
job() {
  local start=$SECONDS
  # shellcheck disable=SC2086 # MPIRUN is a command line
  timeout -k 5 60 $MPIRUN -np 2 "$SERE" -e "local dist = require 'sere.dist'; $2" >"$TMP/out" 2>&1
  rc=$? secs=$((SECONDS - start)) out=$(cat "$TMP/out")
}
fail() {
  failed=$((failed + 1))
  printf 'FAIL %s\n  rc=%s after %ss\n  output: %s\n' "$1" "$rc" "$secs" "${out//$'\n'/$'\n          '}" >&2
}
# expect_failure NAME PATTERN...: non-zero status (not the timeout's), in time, output matching each pattern
expect_failure() {
  local name=$1 p
  shift
  if [[ $rc == 0 || $rc == 124 || $secs -gt $LIMIT ]]; then fail "$name"; return; fi
  for p in "$@"; do
    if ! grep -Eq -- "$p" <<<"$out"; then fail "$name (output lacks /$p/)"; return; fi
  done
  passed=$((passed + 1))
}

job "all ranks succeed" 'dist.barrier(); print("done on rank " .. dist.rank())'
if [[ $rc == 0 && $out == *"done on rank 0"* && $out == *"done on rank 1"* ]]; then
  passed=$((passed + 1))
else
  fail "a job whose ranks all succeed exits 0"
fi

job "error" 'if dist.rank() == 1 then error("broken on purpose") end; dist.barrier(); print("rank 0 went on")'
expect_failure "a Lua error on rank 1 stops rank 0 waiting in a barrier" \
  'sere \(rank 1 of 2\): \(command line\):1: broken on purpose' 'stack traceback' \
  'sere \(rank 1 of 2\): exit status 1: stopping every rank'
if grep -q "rank 0 went on" <<<"$out"; then fail "rank 0 must not pass the barrier"; fi

job "exit" 'if dist.rank() == 1 then os.exit(3) end; dist.barrier()'
expect_failure "os.exit(3) on rank 1 stops the job" 'sere \(rank 1 of 2\): exit status 3: stopping every rank'

job "killed" 'if dist.rank() == 1 then
  local pid = io.open("/proc/self/stat"):read("n")
  os.execute("kill -KILL " .. pid)
end
dist.barrier()'
expect_failure "rank 1 killed by a signal stops the job" "process rank 1 .* exited on signal 9"

# srun without --mpi=pmix: each task would be a world of one; sere refuses
start=$SECONDS
SLURM_STEP_NUM_TASKS=2 timeout -k 5 60 "$SERE" -e 'print("trained alone")' >"$TMP/out" 2>&1
rc=$? secs=$((SECONDS - start)) out=$(cat "$TMP/out")
expect_failure "a launcher that announces 2 tasks but MPI sees 1: refused" \
  'the launcher started 2 processes \(SLURM_STEP_NUM_TASKS\) but MPI sees a world of 1'
if grep -q "trained alone" <<<"$out"; then fail "the script must not run"; fi

echo "$passed passed, $failed failed, 0 skipped"
[[ $failed == 0 ]]
