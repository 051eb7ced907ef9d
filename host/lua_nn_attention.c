/* lua_nn_attention.c — the Lua surface of the fused attention op
 * (ops/attention.c): sere.attention(q, k, v[, scale]), also named
 * sere.scaled_dot_product_attention. */
#include <math.h>

#include "lua_tensor.h"
#include "ops/ops.h"

/* scale defaults to 1 / sqrt(d), d = the last dim of q. */
static int l_attention(lua_State *L) {
  sere_tensor *q = sere_lua_check(L, 1, "attention"), *k = sere_lua_check(L, 2, "attention"),
              *v = sere_lua_check(L, 3, "attention");
  double scale = 1;
  if (!lua_isnoneornil(L, 4)) {
    if (lua_type(L, 4) != LUA_TNUMBER)
      return luaL_error(L, "attention: argument #4 (scale): expected a number, got %s", luaL_typename(L, 4));
    scale = lua_tonumber(L, 4);
  } else if (q->ndim > 0 && q->shape[q->ndim - 1] > 0) {
    scale = 1.0 / sqrt((double)q->shape[q->ndim - 1]);
  }
  return sere_lua_push(L, sere_attention(q, k, v, scale));
}

void sere_lua_open_nn_attention(lua_State *L) {
  static const luaL_Reg functions[] = {
      {"attention", l_attention}, {"scaled_dot_product_attention", l_attention}, {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
