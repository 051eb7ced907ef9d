/* lua_nn_loss.c — the Lua surface of the fused loss ops:
 * sere.soft_cross_entropy(student, teacher[, center][, student_temp][, teacher_temp])
 * (ops/soft_cross_entropy.c). */
#include "lua_tensor.h"
#include "ops/ops.h"

static double opt_temp(lua_State *L, int idx, const char *name) {
  if (lua_isnoneornil(L, idx)) return 1;
  if (lua_type(L, idx) != LUA_TNUMBER)
    return luaL_error(L, "soft_cross_entropy: argument #%d (%s): expected a number, got %s", idx, name,
                      luaL_typename(L, idx));
  return lua_tonumber(L, idx);
}

/* The centre may be left out entirely: a number as argument 3 is the
 * student temperature. */
static int l_soft_cross_entropy(lua_State *L) {
  const char *op = "soft_cross_entropy";
  sere_tensor *s = sere_lua_check(L, 1, op), *t = sere_lua_check(L, 2, op), *c = NULL;
  int temp_at = 3;
  if (lua_type(L, 3) != LUA_TNUMBER && !lua_isnone(L, 3)) {
    if (!lua_isnil(L, 3)) c = sere_lua_check(L, 3, op);
    temp_at = 4;
  }
  double ts = opt_temp(L, temp_at, "student_temp"), tt = opt_temp(L, temp_at + 1, "teacher_temp");
  return sere_lua_push(L, sere_soft_cross_entropy(s, t, c, ts, tt));
}

void sere_lua_open_nn_loss(lua_State *L) {
  static const luaL_Reg functions[] = {{"soft_cross_entropy", l_soft_cross_entropy}, {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
