/* repl.h — the interactive read-eval-print loop (repl.c) and the protected
 * call that main.c shares with it (traceback on error, Ctrl-C interrupts
 * the running Lua code). */
#ifndef SERE_REPL_H
#define SERE_REPL_H

#include <lua.h>

/* Runs the REPL on stdin until end of input (readline with history when
 * stdin is a terminal, plain lines otherwise); returns the exit status. */
int sere_repl(lua_State *L);

/* Calls the function below `nargs` arguments on the stack, like lua_pcall,
 * with a traceback added to any error message. A SIGINT while it runs
 * raises an "interrupted" error inside the Lua code. On error the message
 * is left on the stack. Returns the Lua status. */
int sere_docall(lua_State *L, int nargs, int nresults);

/* Prints the error message on top of the stack to stderr, after
 * "prefix: " when prefix is not NULL, and pops it. */
void sere_report(lua_State *L, const char *prefix);

#endif
