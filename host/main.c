/* main.c — the sere program: runs Lua scripts (`sere script.lua args`),
 * code strings (`sere -e code`), stdin (`sere -`) and the REPL (repl.c),
 * with the sere Lua library found from the executable's location and the
 * global `sere` preloaded. Command line and `arg` table as in the standard
 * `lua` program. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_setup.h"
#include "dist.h"
#include "lua_dist.h"
#include "lua_tensor.h"
#include "repl.h"

/* "sere", or "sere (rank 1 of 4)" in a distributed run, so that every
 * message says which process it comes from. */
static const char *progname = "sere";

static void usage(FILE *f) {
  fprintf(f,
          "usage: sere [options] [script.lua [args...]]\n"
          "  script.lua args  run a script; its arguments are arg[1], arg[2], ... and `...`\n"
          "  -                run the script read from stdin\n"
          "  -e code          run a string of Lua code (repeatable; runs before the script)\n"
          "  -l name          name = require(\"name\") (-l sere.nn sets `nn`; repeatable)\n"
          "  -i               enter the REPL after running the script / code\n"
          "  --               stop handling options\n"
          "  -v, --version    print the version and exit\n"
          "  -h, --help       print this help and exit\n"
          "With no script and no -e, sere opens the REPL (on a terminal: line editing\n"
          "and history in ~/.sere_history or $SERE_HISTORY; otherwise it reads stdin\n"
          "line by line). The global `sere` is preloaded: sere.tensor({1, 2}) works at once.\n");
}

/* ---- finding the Lua library ------------------------------------------ */
static int has_library(const char *dir) {
  char probe[PATH_MAX + 32];
  snprintf(probe, sizeof probe, "%s/sere/init.lua", dir);
  return access(probe, R_OK) == 0;
}

/* lua/ relative to the executable: <bin>/../share/sere/lua (an install),
 * <bin>/../lua (a build directory directly inside the source tree); else
 * the source tree the build was configured from (any other build dir). */
static int find_lua_dir(char *out, size_t n) {
  char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    exe[len] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    const char *rel[] = {"/../share/sere/lua", "/../lua"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
      char probe[PATH_MAX + 32];
      snprintf(probe, sizeof probe, "%s%s", exe, rel[i]);
      if (has_library(probe) && realpath(probe, out)) return 0;
    }
  }
  if (has_library(SERE_SOURCE_LUA_DIR)) {
    snprintf(out, n, "%s", SERE_SOURCE_LUA_DIR);
    return 0;
  }
  return -1;
}

static int setup_paths(lua_State *L) {
  char dir[PATH_MAX];
  if (find_lua_dir(dir, sizeof dir)) {
    fprintf(stderr, "%s: cannot find the sere Lua library (sere/init.lua) in <bin>/../share/sere/lua, "
                    "<bin>/../lua or %s\n", progname, SERE_SOURCE_LUA_DIR);
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
  lua_pushcfunction(L, luaopen_sere_dist_core);
  lua_setfield(L, -2, "sere.dist_core");
  lua_pop(L, 2);
  return 0;
}

/* ---- command line ----------------------------------------------------- */
typedef struct {
  int script;      /* index of the script in argv, 0 if none */
  int interactive; /* -i */
  int has_code;    /* some -e */
} options;

/* The argument of -e / -l: attached ("-eCODE") or the next word. */
static const char *option_arg(char **argv, int *i) {
  if (argv[*i][2]) return argv[*i] + 2;
  return argv[*i + 1] ? argv[++*i] : NULL;
}

/* Returns 0 to go on, or 1 + the exit status (--help, --version, misuse). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || !strcmp(a, "-")) break;
    if (!strcmp(a, "--")) { i++; break; }
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 1; }
    if (!strcmp(a, "-v") || !strcmp(a, "--version")) {
      printf("sere %s (%s)\n", SERE_VERSION, LUA_RELEASE);
      return 1;
    }
    if (!strcmp(a, "-i")) { o->interactive = 1; continue; }
    if (a[1] == 'e' || a[1] == 'l') {
      if (!option_arg(argv, &i)) {
        fprintf(stderr, "%s: option '%s' needs an argument\n", progname, a);
        usage(stderr);
        return 3;
      }
      o->has_code |= a[1] == 'e';
      continue;
    }
    fprintf(stderr, "%s: unknown option '%s'\n", progname, a);
    usage(stderr);
    return 3;
  }
  o->script = i < argc ? i : 0;
  return 0;
}

/* arg[0] = the script, arg[1..] its arguments, negative indices the
 * interpreter and its options; with no script arg[0] is the program. */
static void create_arg_table(lua_State *L, int argc, char **argv, int script) {
  lua_createtable(L, argc - script, script + 1);
  for (int k = 0; k < argc; k++) {
    lua_pushstring(L, argv[k]);
    lua_rawseti(L, -2, k - script);
  }
  lua_setglobal(L, "arg");
}

static int report_unless_ok(lua_State *L, int status) {
  if (status != LUA_OK) sere_report(L, progname);
  return status;
}

static int run_string(lua_State *L, const char *code) {
  int status = luaL_loadbuffer(L, code, strlen(code), "=(command line)");
  if (status == LUA_OK) status = sere_docall(L, 0, 0);
  return report_unless_ok(L, status);
}

/* -l name: global = require(name), the global named after the last
 * component of name (-l sere.nn sets `nn`). */
static int run_require(lua_State *L, const char *name) {
  const char *dot = strrchr(name, '.');
  lua_getglobal(L, "require");
  lua_pushstring(L, name);
  int status = sere_docall(L, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, dot ? dot + 1 : name);
  return report_unless_ok(L, status);
}

/* Runs -e and -l in command-line order. */
static int run_options(lua_State *L, char **argv, int end) {
  for (int i = 1; i < end; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || (a[1] != 'e' && a[1] != 'l')) continue;
    const char *value = option_arg(argv, &i);
    int status = a[1] == 'e' ? run_string(L, value) : run_require(L, value);
    if (status != LUA_OK) return status;
  }
  return LUA_OK;
}

static int run_script(lua_State *L, int argc, char **argv, int script) {
  const char *fname = argv[script];
  /* "-" is stdin, unless it came after "--" */
  int from_stdin = !strcmp(fname, "-") && strcmp(argv[script - 1], "--");
  int status = luaL_loadfile(L, from_stdin ? NULL : fname);
  if (status == LUA_OK) {
    int nargs = argc - script - 1;
    luaL_checkstack(L, nargs + 3, "too many arguments to the script");
    for (int k = script + 1; k < argc; k++) lua_pushstring(L, argv[k]);
    status = sere_docall(L, nargs, 0);
  }
  return report_unless_ok(L, status);
}

int main(int argc, char **argv) {
  sere_cpu_setup(argv);
  options o;
  int early = parse_args(argc, argv, &o);
  if (early) return early - 1;
  /* Under mpirun / srun: MPI from here on, and an error exit (status != 0)
   * aborts every rank of the job (dist.c). */
  if (sere_dist_init()) {
    fprintf(stderr, "%s: %s\n", progname, sere_last_error());
    return 1;
  }
  static char rank_name[64];
  if (sere_dist_is_distributed()) {
    snprintf(rank_name, sizeof rank_name, "%s (rank %d of %d)", progname, sere_dist_rank(), sere_dist_world_size());
    progname = rank_name;
  }

  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "%s: cannot create a Lua state (out of memory)\n", progname);
    return 1;
  }
  luaL_openlibs(L);
  if (setup_paths(L)) {
    lua_close(L);
    return 1;
  }
  create_arg_table(L, argc, argv, o.script);

  int status = run_require(L, "sere");
  if (status == LUA_OK) status = run_options(L, argv, o.script ? o.script : argc);
  if (status == LUA_OK && o.script) status = run_script(L, argc, argv, o.script);
  int rc = status == LUA_OK ? 0 : 1;
  /* Like `python -i`, -i opens the REPL even after an error, to inspect
   * it; the exit status still reports the error. */
  if (o.interactive || (status == LUA_OK && !o.script && !o.has_code)) {
    int repl_rc = sere_repl(L);
    if (rc == 0) rc = repl_rc;
  }
  fflush(stdout);
  lua_close(L);
  return rc;
}
