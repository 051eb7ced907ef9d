/* lua_autocast.c — the Lua surface of the mixed-precision mode
 * (ops/autocast.h): sere.set_autocast_enabled(on) -> previous state and
 * sere.is_autocast_enabled(); lua/sere/init.lua builds sere.autocast(fn)
 * on them. */
#include "lua_tensor.h"
#include "ops/autocast.h"

static int l_set_autocast_enabled(lua_State *L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, sere_set_autocast_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_autocast_enabled(lua_State *L) {
  lua_pushboolean(L, sere_autocast_enabled());
  return 1;
}

void sere_lua_open_autocast(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"set_autocast_enabled", l_set_autocast_enabled}, {"is_autocast_enabled", l_is_autocast_enabled}, {NULL, NULL}};
  sere_lua_register(L, NULL, fns);
}
