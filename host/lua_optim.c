/* lua_optim.c — the Lua surface of the fused optimiser ops (ops/optim.c):
 *   sere.adamw_step_(params, grads, exp_avgs, exp_avg_sqs, steps,
 *                    {lr =, weight_decay =, beta1 =, beta2 =, eps =})
 *   sere.ema_(teacher_params, student_params, momentum)
 *   sere.norms(tensors) -> {n1, n2, ...}
 *   sere.scale_(tensors, factors)
 * Lists are Lua arrays of equal length; scratch arrays live in userdata so
 * an error never strands memory. */
#include "lua_tensor.h"
#include "ops/ops.h"

/* The array at idx as a C array of n tensors (n = #list); the array is
 * kept alive by the userdata pushed on the stack. */
static sere_tensor **tensor_list(lua_State *L, int idx, const char *op, int *n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_Integer len = luaL_len(L, idx);
  if (*n >= 0 && len != *n) luaL_error(L, "%s: argument #%d has %I entries, expected %d", op, idx, len, *n);
  *n = (int)len;
  sere_tensor **ts = lua_newuserdatauv(L, sizeof *ts * (size_t)(len ? len : 1), 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    sere_tensor *t = sere_lua_opt_tensor(L, -1);
    if (!t) luaL_error(L, "%s: argument #%d entry %I is not a tensor", op, idx, i);
    ts[i - 1] = t;
    lua_pop(L, 1);
  }
  return ts;
}

static double *number_list(lua_State *L, int idx, const char *op, int n) {
  luaL_checktype(L, idx, LUA_TTABLE);
  if (luaL_len(L, idx) != n) luaL_error(L, "%s: argument #%d must have %d numbers", op, idx, n);
  double *v = lua_newuserdatauv(L, sizeof *v * (size_t)(n ? n : 1), 0);
  for (int i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_isnumber(L, -1)) luaL_error(L, "%s: argument #%d entry %d is not a number", op, idx, i);
    v[i - 1] = lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  return v;
}

static double field_number(lua_State *L, int idx, const char *key, const char *op) {
  lua_getfield(L, idx, key);
  if (!lua_isnumber(L, -1)) luaL_error(L, "%s: hyperparameter '%s' must be a number", op, key);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static int l_adamw_step_(lua_State *L) {
  const char *op = "adamw_step_";
  int n = -1;
  sere_tensor **p = tensor_list(L, 1, op, &n), **g = tensor_list(L, 2, op, &n);
  sere_tensor **m = tensor_list(L, 3, op, &n), **v = tensor_list(L, 4, op, &n);
  double *steps_d = number_list(L, 5, op, n);
  luaL_checktype(L, 6, LUA_TTABLE);
  sere_adamw_hparams h = {field_number(L, 6, "lr", op), field_number(L, 6, "weight_decay", op),
                          field_number(L, 6, "beta1", op), field_number(L, 6, "beta2", op),
                          field_number(L, 6, "eps", op)};
  int64_t *steps = lua_newuserdatauv(L, sizeof *steps * (size_t)(n ? n : 1), 0);
  for (int i = 0; i < n; i++) steps[i] = (int64_t)steps_d[i];
  if (sere_adamw_step_(n, p, g, m, v, steps, &h)) return sere_lua_raise(L);
  return 0;
}

static int l_ema_(lua_State *L) {
  int n = -1;
  sere_tensor **t = tensor_list(L, 1, "ema_", &n), **s = tensor_list(L, 2, "ema_", &n);
  if (sere_ema_(n, t, s, luaL_checknumber(L, 3))) return sere_lua_raise(L);
  return 0;
}

static int l_norms(lua_State *L) {
  int n = -1;
  sere_tensor **ts = tensor_list(L, 1, "norms", &n);
  double *out = lua_newuserdatauv(L, sizeof *out * (size_t)(n ? n : 1), 0);
  if (sere_norms(n, ts, out)) return sere_lua_raise(L);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushnumber(L, out[i]);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int l_scale_(lua_State *L) {
  int n = -1;
  sere_tensor **ts = tensor_list(L, 1, "scale_", &n);
  double *f = number_list(L, 2, "scale_", n);
  if (sere_scale_(n, ts, f)) return sere_lua_raise(L);
  return 0;
}

void sere_lua_open_optim(lua_State *L) {
  static const luaL_Reg functions[] = {
      {"adamw_step_", l_adamw_step_}, {"ema_", l_ema_}, {"norms", l_norms}, {"scale_", l_scale_}, {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
