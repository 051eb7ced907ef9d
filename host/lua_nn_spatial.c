/* lua_nn_spatial.c — the Lua surface of the spatial ops of the ViT and of
 * SERE's relation alignment: sere.patch_embed (ops/patch_embed.c),
 * sere.interpolate_bicubic / x:interpolate_bicubic (ops/interpolate.c) and
 * sere.grid_sample / input:grid_sample (ops/grid_sample.c). */
#include "lua_tensor.h"
#include "ops/ops.h"

/* A number argument, or a Lua error naming op and the argument. */
static double check_number(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "%s: argument #%d (%s): expected a number, got %s", op, idx, what, luaL_typename(L, idx));
  return lua_tonumber(L, idx);
}

/* sere.patch_embed(x, weight, bias, p): bias may be nil. */
static int l_patch_embed(lua_State *L) {
  sere_tensor *x = sere_lua_check(L, 1, "patch_embed"), *w = sere_lua_check(L, 2, "patch_embed");
  sere_tensor *b = lua_isnil(L, 3) ? NULL : sere_lua_check(L, 3, "patch_embed");
  if (!lua_isinteger(L, 4))
    return luaL_error(L, "patch_embed: argument #4 (patch size): expected an integer, got %s", luaL_typename(L, 4));
  lua_Integer p = lua_tointeger(L, 4);
  if (p < 1 || p > 1 << 20) return luaL_error(L, "patch_embed: patch size must be positive, got %I", p);
  return sere_lua_push(L, sere_patch_embed(x, w, b, (int)p));
}

/* sere.interpolate_bicubic(x, sy[, sx]): sx defaults to sy. */
static int l_interpolate_bicubic(lua_State *L) {
  sere_tensor *x = sere_lua_check(L, 1, "interpolate_bicubic");
  double sy = check_number(L, 2, "interpolate_bicubic", "sy");
  double sx = lua_isnoneornil(L, 3) ? sy : check_number(L, 3, "interpolate_bicubic", "sx");
  return sere_lua_push(L, sere_interpolate_bicubic(x, sy, sx));
}

/* sere.grid_sample(input, grid) */
static int l_grid_sample(lua_State *L) {
  sere_tensor *input = sere_lua_check(L, 1, "grid_sample"), *grid = sere_lua_check(L, 2, "grid_sample");
  return sere_lua_push(L, sere_grid_sample(input, grid));
}

void sere_lua_open_nn_spatial(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"interpolate_bicubic", l_interpolate_bicubic}, {"grid_sample", l_grid_sample}, {NULL, NULL}};
  static const luaL_Reg functions[] = {{"patch_embed", l_patch_embed},
                                       {"interpolate_bicubic", l_interpolate_bicubic},
                                       {"grid_sample", l_grid_sample},
                                       {NULL, NULL}};
  sere_lua_register(L, methods, functions);
}
