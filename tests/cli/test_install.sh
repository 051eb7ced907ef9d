#!/usr/bin/env bash
# test_install.sh — `cmake --install` gives a working program: the
# installed bin/sere finds its Lua library in share/sere/lua with no
# environment variable; the build tree's binary uses the source tree's
# lua/; a binary moved away from both falls back to the source tree (what a
# build directory anywhere else relies on).
#   usage: tests/cli/test_install.sh BUILD_DIR CMAKE SOURCE_DIR
set -u
BUILD=$(realpath "${1:?usage: test_install.sh BUILD_DIR CMAKE SOURCE_DIR}") CMAKE=${2:?} SRC=$(realpath "${3:?}")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
check() { # check NAME EXPECTED ACTUAL
  if [[ $2 == "$3" ]]; then passed=$((passed + 1)); else
    failed=$((failed + 1))
    printf 'FAIL %s\n  expected: %s\n  got:      %s\n' "$1" "$2" "$3" >&2
  fi
}
WHERE='print(package.searchpath("sere", package.path))'
unset LUA_PATH LUA_PATH_5_4 LUA_INIT

if ! "$CMAKE" --install "$BUILD" --prefix "$TMP/prefix" >"$TMP/install.log" 2>&1; then
  cat "$TMP/install.log" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
check "installed layout" "yes" "$([[ -x $TMP/prefix/bin/sere && -f $TMP/prefix/share/sere/lua/sere/init.lua ]] && echo yes)"
check "installed binary runs" "tensor([1, 2])" "$(cd / && "$TMP/prefix/bin/sere" -e 'print(require("sere").tensor({1,2}))' 2>&1)"
check "installed binary uses the installed library" "$TMP/prefix/share/sere/lua/sere/init.lua" \
  "$(cd / && "$TMP/prefix/bin/sere" -e "$WHERE" 2>&1)"
check "build tree binary uses the source library" "$SRC/lua/sere/init.lua" "$(cd / && "$BUILD/sere" -e "$WHERE" 2>&1)"
mkdir -p "$TMP/elsewhere/bin"
cp "$BUILD/sere" "$TMP/elsewhere/bin/sere"
check "binary elsewhere falls back to the source library" "$SRC/lua/sere/init.lua" \
  "$(cd / && "$TMP/elsewhere/bin/sere" -e "$WHERE" 2>&1)"

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
