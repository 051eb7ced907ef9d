/* repl.c — the interactive loop (`sere` with no script, or after `-i`) and
 * the protected call every piece of Lua code runs under.
 *
 * It behaves like the standard `lua` REPL: a line is first compiled as
 * `return <line>;` so expressions print their values (tab-separated,
 * through tostring, so tensors pretty-print); otherwise it is compiled as a
 * statement, and while the parser stops at <eof> more lines are read
 * (prompt ">> ") and appended. Each chunk is its own function, so a
 * `local` does not outlive its chunk, as in lua.
 *
 * On a terminal: GNU readline, history in $SERE_HISTORY or ~/.sere_history
 * (failures to read or write it are ignored), Ctrl-C at the prompt drops
 * what is being typed, Ctrl-D exits. Otherwise lines come from stdin with
 * no prompts, and the end of input ends the loop with status 0.
 *
 * Ctrl-C during a computation: the SIGINT handler only installs a Lua hook
 * (lua_sethook may be called from a signal handler) and the hook raises
 * "interrupted" at the next Lua instruction, as lua.c does. The handler
 * also restores the default action, so a second Ctrl-C ends a program
 * stuck in a long C operation. */
#include "repl.h"

#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#define HISTORY_LINES 1000

static lua_State *volatile running_L; /* set while sere_docall runs Lua code */
static volatile sig_atomic_t prompt_interrupted;

/* ---- protected calls and Ctrl-C --------------------------------------- */
static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted");
}

static void on_sigint(int sig) {
  lua_State *L = running_L;
  if (L) {
    signal(sig, SIG_DFL);
    lua_sethook(L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
  } else {
    prompt_interrupted = 1;
  }
}

/* Installs on_sigint, unless SIGINT is ignored (a background job, nohup).
 * No SA_RESTART: a wait at the prompt must end with EINTR. */
static void catch_sigint(struct sigaction *old) {
  struct sigaction sa, cur;
  sigaction(SIGINT, NULL, &cur);
  if (old) *old = cur;
  if (cur.sa_handler == SIG_IGN) return;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
}

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int sere_docall(lua_State *L, int nargs, int nresults) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  struct sigaction old;
  running_L = L;
  catch_sigint(&old);
  int status = lua_pcall(L, nargs, nresults, base);
  sigaction(SIGINT, &old, NULL);
  running_L = NULL;
  /* A Ctrl-C that came after the last Lua instruction must not hit the next chunk. */
  if (lua_gethook(L) == interrupt_hook) lua_sethook(L, NULL, 0, 0);
  lua_remove(L, base);
  return status;
}

void sere_report(lua_State *L, const char *prefix) {
  const char *msg = lua_tostring(L, -1);
  fflush(stdout);
  if (prefix) fprintf(stderr, "%s: ", prefix);
  fprintf(stderr, "%s\n", msg ? msg : "(error object is not a string)");
  fflush(stderr);
  lua_pop(L, 1);
}

/* ---- reading input ---------------------------------------------------- */
typedef struct {
  int tty;
  char history[4096]; /* history file; empty: none */
} repl_input;

/* readline's key reader, so that Ctrl-C at the prompt ends the line: the
 * handler only sets a flag, and a newline makes readline return what was
 * typed, which the caller then drops. SIGINT stays blocked except inside
 * pselect, so a Ctrl-C between the flag test and the wait is not lost. */
static int getc_interruptible(FILE *f) {
  int fd = fileno(f), c = EOF;
  sigset_t sigint, old;
  sigemptyset(&sigint);
  sigaddset(&sigint, SIGINT);
  sigprocmask(SIG_BLOCK, &sigint, &old);
  for (;;) {
    if (prompt_interrupted) {
      rl_echo_signal_char(SIGINT);
      c = '\n';
      break;
    }
    fd_set ready;
    FD_ZERO(&ready);
    FD_SET(fd, &ready);
    if (pselect(fd + 1, &ready, NULL, NULL, NULL, &old) < 0) {
      if (errno != EINTR) break;
      rl_check_signals(); /* readline's own, e.g. a window size change */
      continue;
    }
    unsigned char byte;
    ssize_t n = read(fd, &byte, 1);
    if (n == 1) c = byte;
    if (n != -1 || errno != EINTR) break;
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  return c;
}

/* readline installs its own SIGINT handler on every call (to clean up and
 * re-raise); this startup hook puts ours back. */
static int take_sigint(void) {
  catch_sigint(NULL);
  return 0;
}

static void open_input(repl_input *in) {
  in->tty = isatty(STDIN_FILENO);
  in->history[0] = 0;
  if (!in->tty) return;
  rl_readline_name = "sere";
  rl_getc_function = getc_interruptible;
  rl_startup_hook = take_sigint;
  const char *file = getenv("SERE_HISTORY"), *home = getenv("HOME");
  if (file) snprintf(in->history, sizeof in->history, "%s", file);
  else if (home && *home) snprintf(in->history, sizeof in->history, "%s/.sere_history", home);
  if (in->history[0]) read_history(in->history);
}

static void save_history(const repl_input *in, const char *chunk) {
  if (!in->tty || !chunk[strspn(chunk, " \t\r\n")]) return;
  add_history(chunk);
  if (in->history[0] && append_history(1, in->history) != 0) write_history(in->history);
}

/* One line without its newline (malloc'ed), or NULL at end of input. After
 * the call, prompt_interrupted says whether Ctrl-C cancelled the line. */
static char *read_line(const repl_input *in, const char *prompt) {
  prompt_interrupted = 0;
  if (in->tty) return readline(prompt);
  char *line = NULL;
  size_t cap = 0;
  ssize_t n = getline(&line, &cap, stdin);
  if (n < 0) {
    free(line);
    return NULL;
  }
  if (n > 0 && line[n - 1] == '\n') line[n - 1] = 0;
  return line;
}

/* ---- compiling chunks ------------------------------------------------- */
enum { CHUNK_OK, CHUNK_ERROR, CHUNK_CANCELLED, CHUNK_EOF };

/* A syntax error at <eof> means the chunk is unfinished (as in lua.c). */
static int incomplete(lua_State *L, int status) {
  static const char mark[] = "<eof>";
  size_t len, k = sizeof mark - 1;
  if (status != LUA_ERRSYNTAX) return 0;
  const char *msg = lua_tolstring(L, -1, &len);
  return len >= k && !strcmp(msg + len - k, mark);
}

/* Reads and compiles one chunk. CHUNK_OK leaves the function on the stack,
 * CHUNK_ERROR the syntax error, the others nothing. */
static int load_chunk(lua_State *L, const repl_input *in) {
  char *line = read_line(in, "> ");
  if (prompt_interrupted) {
    free(line);
    return CHUNK_CANCELLED;
  }
  if (!line) return CHUNK_EOF;
  lua_pushstring(L, line);
  free(line);
  const char *expr = lua_pushfstring(L, "return %s;", lua_tostring(L, -1));
  if (luaL_loadbuffer(L, expr, strlen(expr), "=stdin") == LUA_OK) {
    save_history(in, lua_tostring(L, -3));
    lua_replace(L, -3);
    lua_pop(L, 1);
    return CHUNK_OK;
  }
  lua_pop(L, 2);
  for (;;) {
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    int status = luaL_loadbuffer(L, text, len, "=stdin");
    char *more = incomplete(L, status) ? read_line(in, ">> ") : NULL;
    if (prompt_interrupted) {
      free(more);
      lua_pop(L, 2);
      return CHUNK_CANCELLED;
    }
    if (!more) { /* complete, or cut short by the end of input */
      save_history(in, text);
      lua_remove(L, -2);
      return status == LUA_OK ? CHUNK_OK : CHUNK_ERROR;
    }
    lua_pop(L, 1);
    lua_pushliteral(L, "\n");
    lua_pushstring(L, more);
    free(more);
    lua_concat(L, 3);
  }
}

/* ---- the loop --------------------------------------------------------- */
static int print_values(lua_State *L) {
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *s = luaL_tolstring(L, i, &len);
    if (i > 1) fputc('\t', stdout);
    fwrite(s, 1, len, stdout);
    lua_pop(L, 1);
  }
  fputc('\n', stdout);
  fflush(stdout);
  return 0;
}

int sere_repl(lua_State *L) {
  repl_input in;
  struct sigaction old_sigint;
  open_input(&in);
  if (in.tty) {
    /* Ctrl-C never ends an interactive session: between chunks it is ignored */
    catch_sigint(&old_sigint);
    printf("sere %s (%s)  Ctrl-D exits, Ctrl-C interrupts\n", SERE_VERSION, LUA_RELEASE);
  }
  int base = lua_gettop(L);
  for (;;) {
    int r = load_chunk(L, &in);
    if (r == CHUNK_EOF) break;
    if (r == CHUNK_CANCELLED) continue;
    int status = r == CHUNK_OK ? sere_docall(L, 0, LUA_MULTRET) : LUA_ERRSYNTAX;
    int n = lua_gettop(L) - base;
    if (status == LUA_OK && n > 0) {
      lua_pushcfunction(L, print_values);
      lua_insert(L, base + 1);
      status = sere_docall(L, n, 0);
    }
    if (status != LUA_OK) sere_report(L, NULL);
    lua_settop(L, base);
  }
  if (in.tty) {
    fputc('\n', stdout);
    if (in.history[0]) history_truncate_file(in.history, HISTORY_LINES);
    sigaction(SIGINT, &old_sigint, NULL);
  }
  fflush(stdout);
  return 0;
}
