/* repl.c — the interactive loop (first version: line by line, no editing). */
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "repl.h"

int sere_repl(lua_State *L) {
  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    if (luaL_loadstring(L, line) != LUA_OK) {
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
      lua_pop(L, 1);
      continue;
    }
    sere_run_protected(L, 0, 0);
  }
  return 0;
}
