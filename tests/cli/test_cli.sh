#!/usr/bin/env bash
# test_cli.sh — the sere program's command line and its REPL on piped
# stdin: --version/--help, the `arg` table, -e, -l, -, -i, exit statuses,
# error messages with tracebacks, multi-line input, expression printing,
# errors that do not end the REPL, pretty-printed tensors. With python3 it
# also drives the terminal REPL through a pseudo-terminal (pty_repl.py):
# readline, history file, Ctrl-C at the prompt and during a computation.
#   usage: tests/cli/test_cli.sh path/to/sere
set -u
SERE=$(realpath "${1:?usage: test_cli.sh path/to/sere}")
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0 skipped=0

# run CMD... : runs it with stdin from $IN (default: nothing), sets $out, $err, $rc
IN=/dev/null
run() { "$@" <"$IN" >"$TMP/out" 2>"$TMP/err"; rc=$?; out=$(cat "$TMP/out"); err=$(cat "$TMP/err"); IN=/dev/null; }
pass() { passed=$((passed + 1)); }
fail() {
  failed=$((failed + 1))
  printf 'FAIL %s\n  rc=%s\n  stdout: %s\n  stderr: %s\n' "$1" "$rc" "${out//$'\n'/$'\n          '}" "${err//$'\n'/$'\n          '}" >&2
}
# expect NAME RC STDOUT_EXACT [STDERR_PATTERN...] (grep -E patterns, each must match)
expect() {
  local name=$1 want_rc=$2 want_out=$3
  shift 3
  if [[ $rc != "$want_rc" || $out != "$want_out" ]]; then
    fail "$name (expected rc=$want_rc, stdout '$want_out')"
    return
  fi
  local p
  for p in "$@"; do
    if ! grep -Eq -- "$p" <<<"$err"; then fail "$name (stderr lacks /$p/)"; return; fi
  done
  pass
}

# ---- options -----------------------------------------------------------
run "$SERE" --version
[[ $rc == 0 && $out =~ ^sere\ [0-9]+\.[0-9]+\.[0-9]+\ \(Lua\ 5\.4 ]] && pass || fail "--version"
run "$SERE" -v
[[ $rc == 0 && $out =~ ^sere\  ]] && pass || fail "-v"
run "$SERE" --help
[[ $rc == 0 && $out == *"usage: sere"* && $out == *"-e code"* && -z $err ]] && pass || fail "--help"
run "$SERE" --frobnicate
expect "unknown option exits 2 with usage" 2 "" "unknown option '--frobnicate'" "usage: sere"
run "$SERE" -e
expect "-e without its argument" 2 "" "'-e' needs an argument" "usage: sere"

# ---- scripts and arg -----------------------------------------------------
cat >"$TMP/args.lua" <<'LUA'
print(arg[0]:match("[^/]*$"), arg[1], arg[2], arg[3], #arg, select("#", ...), ...)
print(arg[-1]:match("[^/]*$") == "sere" or arg[-1], arg[-2])
LUA
run "$SERE" "$TMP/args.lua" a "b c" -x
expect "script arguments in arg and ..." 0 $'args.lua\ta\tb c\t-x\t3\t3\ta\tb c\t-x\ntrue\tnil'
run "$SERE" -e 'x = 1' -e 'x = x * 10' "$TMP/args.lua" one
expect "-e before the script: interpreter args at negative indices" 0 $'args.lua\tone\tnil\tnil\t1\t1\tone\nx = x * 10\t-e'
run "$SERE" -e 'io.write(x or "nil", " ")' -e 'x = 2' -e 'print(x)'
expect "-e runs in order" 0 "nil 2"
run "$SERE" -e 'print(arg[0]:match("[^/]*$"), arg[1], arg[2])'
expect "no script: arg[0] is the program" 0 $'sere\t-e\tprint(arg[0]:match("[^/]*$"), arg[1], arg[2])'
run "$SERE" -l sere.testing -e 'print(type(testing.gradcheck), type(sere.tensor))'
expect "-l and the preloaded global sere" 0 $'function\tfunction'
printf 'print("from stdin", ...)\n' >"$TMP/stdin.lua"
IN="$TMP/stdin.lua" run "$SERE" - p q
expect "- runs stdin as the script" 0 $'from stdin\tp\tq'
run "$SERE" -e 'print(1)' -e 'os.exit(7)' -e 'print(2)'
expect "os.exit" 7 "1"
run "$SERE" -e 'io.write("flushed"); os.exit(true, true)'
expect "os.exit(true, close)" 0 "flushed"

# ---- errors ---------------------------------------------------------------
cat >"$TMP/err.lua" <<'LUA'
print("before")
local function inner() error("boom " .. 6 * 7) end
local function outer() inner() end
outer()
print("after")
LUA
run "$SERE" "$TMP/err.lua"
expect "runtime error: status 1, message and traceback" 1 "before" \
  "^sere: .*err\.lua:2: boom 42$" "^stack traceback:" "in (local|upvalue) 'inner'" "err\.lua:4: in main chunk"
run "$SERE" -e 'error({})'
expect "non-string error object" 1 "" "error object is a table value"
printf 'print("never")\nlocal x = = 1\n' >"$TMP/syntax.lua"
run "$SERE" "$TMP/syntax.lua"
expect "syntax error: status 1, nothing runs" 1 "" "^sere: .*syntax\.lua:2: unexpected symbol near '='"
run "$SERE" "$TMP/does-not-exist.lua"
expect "missing script" 1 "" "^sere: cannot open .*does-not-exist\.lua"
run "$SERE" -e 'print(('
expect "syntax error in -e" 1 "" "^sere: \(command line\):1: unexpected symbol near <eof>"
run "$SERE" -e 'print(1)' "$TMP/does-not-exist.lua"
expect "-e runs, then the missing script fails" 1 "1" "cannot open"
run "$SERE" -e 'sere.tensor({1, 2}):reshape(3)'
expect "tensor misuse is a Lua error naming the op" 1 "" "reshape" "stack traceback"

# Ctrl-C (SIGINT) interrupts a running script with an error and a traceback.
# Job control gives the background job its own process group, where SIGINT
# is not ignored.
set -m
"$SERE" -e 'local function spin() while true do end end print("spinning") spin()' >"$TMP/out" 2>"$TMP/err" &
pid=$!
for _ in $(seq 100); do grep -q spinning "$TMP/out" && break; sleep 0.05; done
kill -INT "$pid"
wait "$pid"
rc=$? out=$(cat "$TMP/out") err=$(cat "$TMP/err")
set +m
expect "SIGINT interrupts a script" 1 "spinning" "^sere: (.*: )?interrupted$" "^stack traceback:" "in (local|upvalue) 'spin'"

# ---- the REPL on piped stdin ---------------------------------------------
printf '1+1\nlocal x = \n 3\nprint(x)\nerror("boom")\nprint(2)\n' >"$TMP/repl1"
IN="$TMP/repl1" run "$SERE"
expect "REPL: expression, local across lines (as lua), error, continue" 0 $'2\nnil\n2' \
  "^stdin:1: boom$" "^stack traceback:"
cat >"$TMP/repl2" <<'LUA'
y = 5
y
return 1, nil, "three"
for i = 1, 3 do
  io.write(i, " ")
end
print()
function f(a,
           b)
  return a * b
end
f(6, 7)
local t = {1, 2}; print(#t)
print(("unfinished"
this is not lua
"still running"
x = sere.tensor({{1, -2.5}, {3, 4}})
x
sere.tensor({1, 2}, {dtype = "i32"}), sere.zeros(0, 3)
x:dim() == nil
LUA
IN="$TMP/repl2" run "$SERE"
expect "REPL: values, multi-line chunks, syntax errors, tensors" 0 \
  $'5\n1\tnil\tthree\n1 2 3 \n42\n2\nstill running\ntensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]])\ntensor([1, 2], dtype=i32)\ttensor([], size=[0, 3])\nfalse' \
  "^stdin:2: '\)' expected \(to close '\(' at line 1\) near 'this'$"
printf 'for i = 1, 2 do\nprint(i)\n' >"$TMP/repl3"
IN="$TMP/repl3" run "$SERE"
expect "REPL: input ending inside a chunk" 0 "" "^stdin:2: 'end' expected \(to close 'for' at line 1\) near <eof>$"
printf 'setmetatable({}, {__tostring = function() error("bad tostring") end})\nprint("ok")\n' >"$TMP/repl4"
IN="$TMP/repl4" run "$SERE"
expect "REPL: an error while printing a value" 0 "ok" "bad tostring"
printf 'os.exit(4)\nprint("not reached")\n' >"$TMP/repl5"
IN="$TMP/repl5" run "$SERE"
expect "REPL: os.exit" 4 ""

# ---- -i -------------------------------------------------------------------
printf 'z = 21\n' >"$TMP/setz.lua"
printf 'z * 2\n' >"$TMP/repl6"
IN="$TMP/repl6" run "$SERE" -i "$TMP/setz.lua"
expect "-i: script, then the REPL on piped stdin" 0 "42"
IN="$TMP/repl6" run "$SERE" -i -e 'z = 1' -e 'error("oops")'
expect "-i: REPL after an error, status still 1" 1 "2" "oops"
IN="$TMP/repl6" run "$SERE" -e 'z = 3'
expect "-e without -i: no REPL" 0 ""

# ---- the terminal REPL ----------------------------------------------------
if command -v python3 >/dev/null 2>&1; then
  if python3 "$HERE/pty_repl.py" "$SERE" "$TMP" >"$TMP/pty" 2>&1; then pass; else
    rc=1 out=$(cat "$TMP/pty") err=""
    fail "terminal REPL (pty_repl.py)"
  fi
else
  skipped=$((skipped + 1))
  echo "SKIP terminal REPL: python3 not found (needed to drive a pseudo-terminal)"
fi

echo "$passed passed, $failed failed, $skipped skipped"
[[ $failed == 0 ]]
