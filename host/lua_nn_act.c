/* lua_nn_act.c — the Lua surface of ops/activation.c: sere.gelu(x) and
 * sere.relu(x), also as methods x:gelu() and x:relu(). */
#include "lua_tensor.h"
#include "ops/ops.h"

static int l_gelu(lua_State *L) { return sere_lua_push(L, sere_gelu(sere_lua_check(L, 1, "gelu"))); }
static int l_relu(lua_State *L) { return sere_lua_push(L, sere_relu(sere_lua_check(L, 1, "relu"))); }

void sere_lua_open_nn_act(lua_State *L) {
  static const luaL_Reg fns[] = {{"gelu", l_gelu}, {"relu", l_relu}, {NULL, NULL}};
  sere_lua_register(L, fns, fns);
}
