/* lua_nn_norm.c — the Lua surface of the normalisation ops: layer norm
 * (ops/layernorm.c), L2 normalisation (ops/normalize.c, also the method
 * x:normalize()) and batch norm (ops/batchnorm.c). Optional tensors are
 * nil; dims are 1-based. batch_norm's `sync` flag connects the C core's
 * SyncBatchNorm hook to the MPI all-reduce of dist.c. */
#include "dist.h"
#include "lua_tensor.h"
#include "ops/ops.h"

/* A tensor, or NULL for nil / none; anything else is an error naming op. */
static sere_tensor *opt_tensor(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_isnoneornil(L, idx)) return NULL;
  sere_tensor *t = sere_lua_opt_tensor(L, idx);
  if (!t)
    luaL_error(L, "%s: argument #%d (%s): expected a tensor or nil, got %s", op, idx, what, luaL_typename(L, idx));
  return t;
}

/* sere.layer_norm(x[, weight][, bias][, eps = 1e-5]) */
static int l_layer_norm(lua_State *L) {
  sere_tensor *x = sere_lua_check(L, 1, "layer_norm");
  sere_tensor *w = opt_tensor(L, 2, "layer_norm", "weight"), *b = opt_tensor(L, 3, "layer_norm", "bias");
  double eps = luaL_optnumber(L, 4, 1e-5);
  return sere_lua_push(L, sere_layer_norm(x, w, b, eps));
}

/* sere.normalize(x[, dim = -1][, eps = 1e-12]), x:normalize(...) */
static int l_normalize(lua_State *L) {
  sere_tensor *x = sere_lua_check(L, 1, "normalize");
  int dim = lua_isnoneornil(L, 2) ? -1 : sere_lua_dim(L, 2, "normalize");
  double eps = luaL_optnumber(L, 3, 1e-12);
  return sere_lua_push(L, sere_l2_normalize(x, dim, eps));
}

/* sere.batch_norm(x, weight, bias, running_mean, running_var[, training = false][, momentum = 0.1][, eps = 1e-5]
 *                 [, sync = false]); sync: batch statistics over all ranks (a no-op in a world of 1) */
static int l_batch_norm(lua_State *L) {
  const char *op = "batch_norm";
  sere_tensor *x = sere_lua_check(L, 1, op);
  sere_tensor *w = opt_tensor(L, 2, op, "weight"), *b = opt_tensor(L, 3, op, "bias");
  sere_tensor *rm = opt_tensor(L, 4, op, "running_mean"), *rv = opt_tensor(L, 5, op, "running_var");
  if (!lua_isnoneornil(L, 6) && !lua_isboolean(L, 6))
    return luaL_error(L, "%s: argument #6 (training): expected a boolean, got %s", op, luaL_typename(L, 6));
  int training = lua_toboolean(L, 6);
  double momentum = luaL_optnumber(L, 7, 0.1), eps = luaL_optnumber(L, 8, 1e-5);
  if (!lua_isnoneornil(L, 9) && !lua_isboolean(L, 9))
    return luaL_error(L, "%s: argument #9 (sync): expected a boolean, got %s", op, luaL_typename(L, 9));
  const sere_bn_sync *sync = lua_toboolean(L, 9) ? sere_dist_bn_sync() : NULL;
  return sere_lua_push(L, sere_batch_norm(x, w, b, rm, rv, training, momentum, eps, sync));
}

void sere_lua_open_nn_norm(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"layer_norm", l_layer_norm}, {"normalize", l_normalize}, {"batch_norm", l_batch_norm}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"normalize", l_normalize}, {NULL, NULL}};
  sere_lua_register(L, methods, fns);
}
