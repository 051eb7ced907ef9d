/* repl.h — the interactive read-eval-print loop (repl.c) and the protected
 * call helpers main.c shares with it. */
#ifndef SERE_REPL_H
#define SERE_REPL_H

#include <lua.h>

/* Runs the REPL on stdin until end of input; returns the exit status. */
int sere_repl(lua_State *L);
/* Message handler that appends a traceback. */
int sere_traceback_handler(lua_State *L);
/* pcall with traceback; prints an error to stderr; returns the Lua status. */
int sere_run_protected(lua_State *L, int nargs, int nresults);

#endif
