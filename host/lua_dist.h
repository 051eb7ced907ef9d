/* lua_dist.h — the Lua module "sere.dist_core" (lua_dist.c), preloaded by
 * main.c; lua/sere/dist.lua builds sere.dist on it. */
#ifndef SERE_LUA_DIST_H
#define SERE_LUA_DIST_H

#include <lua.h>

int luaopen_sere_dist_core(lua_State *L);

#endif
