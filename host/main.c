/* main.c — the sere program: runs Lua scripts (`sere script.lua args`),
 * code strings (`sere -e code`) and the interactive REPL (see repl.c), with
 * the sere Lua library found next to the executable. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua_tensor.h"
#include "repl.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: sere [options] [script.lua [args...]]\n"
          "  script.lua args  run a script; its arguments are in the table `arg`\n"
          "  -e code          run a string of Lua code (may be repeated)\n"
          "  -i               enter the interactive REPL after running the script / code\n"
          "  -v, --version    print the version and exit\n"
          "  -h, --help       print this help and exit\n"
          "With no script and no -e, sere opens the REPL (it reads stdin line by line\n"
          "when stdin is not a terminal). `local sere = require \"sere\"` is preloaded\n"
          "as the global `sere`.\n");
}

/* Finds lua/ relative to the executable: <bin>/../lua (build tree inside the
 * source tree), <bin>/../share/sere/lua (install), then the source tree the
 * binary was configured from. */
static int find_lua_dir(char *out, size_t n) {
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  const char *rel[] = {"/../lua", "/../share/sere/lua"};
  if (len > 0) {
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
      char probe[PATH_MAX + 64];
      snprintf(probe, sizeof probe, "%s%s/sere/init.lua", exe, rel[i]);
      if (access(probe, R_OK) == 0) {
        snprintf(probe, sizeof probe, "%s%s", exe, rel[i]);
        if (realpath(probe, out)) return 0;
      }
    }
  }
  char probe[PATH_MAX + 64];
  snprintf(probe, sizeof probe, "%s/sere/init.lua", SERE_SOURCE_LUA_DIR);
  if (access(probe, R_OK) == 0) {
    snprintf(out, n, "%s", SERE_SOURCE_LUA_DIR);
    return 0;
  }
  return -1;
}

static int setup_paths(lua_State *L) {
  char dir[PATH_MAX];
  if (find_lua_dir(dir, sizeof dir)) {
    fprintf(stderr, "sere: cannot find the sere Lua library (lua/sere/init.lua) next to the executable\n");
    return -1;
  }
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_sere_core);
  lua_setfield(L, -2, "sere.core");
  lua_pop(L, 2);
  return 0;
}

int sere_traceback_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs the function on top of the stack with nargs arguments under the
 * traceback handler; prints the error to stderr. Returns the Lua status. */
int sere_run_protected(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, sere_traceback_handler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status != LUA_OK) {
    fprintf(stderr, "sere: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return status;
}

int main(int argc, char **argv) {
  int interactive = 0, script = 0;
  int i;
  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
    if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--version")) { printf("sere %s (%s)\n", SERE_VERSION, LUA_RELEASE); return 0; }
    if (!strcmp(argv[i], "-i")) { interactive = 1; continue; }
    if (!strcmp(argv[i], "-e")) {
      if (++i >= argc) { fprintf(stderr, "sere: -e needs an argument\n"); usage(stderr); return 2; }
      continue;
    }
    if (!strcmp(argv[i], "--")) { i++; break; }
    if (argv[i][0] == '-' && argv[i][1]) { fprintf(stderr, "sere: unknown option '%s'\n", argv[i]); usage(stderr); return 2; }
    break;
  }
  script = i < argc ? i : 0;

  lua_State *L = luaL_newstate();
  if (!L) { fprintf(stderr, "sere: cannot create a Lua state\n"); return 1; }
  luaL_openlibs(L);
  if (setup_paths(L)) { lua_close(L); return 1; }

  /* arg table: arg[0] = script, arg[1..] = its arguments, negative = interpreter args */
  lua_createtable(L, argc, 1);
  for (int k = 0; k < argc; k++) {
    lua_pushstring(L, argv[k]);
    lua_rawseti(L, -2, k - (script ? script : argc));
  }
  lua_setglobal(L, "arg");

  /* the global `sere` */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sere");
  int status = sere_run_protected(L, 1, 1);
  if (status != LUA_OK) { lua_close(L); return 1; }
  lua_setglobal(L, "sere");

  int ran_code = 0;
  for (int k = 1; k < (script ? script : argc) && status == LUA_OK; k++) {
    if (strcmp(argv[k], "-e")) continue;
    const char *code = argv[++k];
    ran_code = 1;
    if (luaL_loadbuffer(L, code, strlen(code), "=(command line)") != LUA_OK) {
      fprintf(stderr, "sere: %s\n", lua_tostring(L, -1));
      status = LUA_ERRSYNTAX;
    } else {
      status = sere_run_protected(L, 0, 0);
    }
  }
  if (status == LUA_OK && script) {
    if (luaL_loadfile(L, argv[script]) != LUA_OK) {
      fprintf(stderr, "sere: %s\n", lua_tostring(L, -1));
      status = LUA_ERRFILE;
    } else {
      int nargs = argc - script - 1;
      luaL_checkstack(L, nargs + 8, "too many arguments");
      for (int k = script + 1; k < argc; k++) lua_pushstring(L, argv[k]);
      status = sere_run_protected(L, nargs, 0);
    }
  }
  int rc = status == LUA_OK ? 0 : 1;
  if ((interactive || (!script && !ran_code)) && (status == LUA_OK || interactive)) rc = sere_repl(L);
  fflush(stdout);
  lua_close(L);
  return rc;
}
