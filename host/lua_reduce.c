/* lua_reduce.c — Lua bindings of reductions, softmax and topk, as methods
 * (t:sum()) and module functions (sere.sum(t)); docs/lua-api.md
 * documents them. Dims are 1-based (negative from the end) and may be one
 * integer or a table of integers; returned indices are 1-based. */
#include <math.h>
#include <string.h>

#include "lua_tensor.h"
#include "ops/ops.h"

/* Optional dims at idx: none/nil -> all (returns 0), an integer, or a table. */
static int opt_dims(lua_State *L, int idx, int *dims, const char *op) {
  if (lua_isnoneornil(L, idx)) return 0;
  if (lua_isinteger(L, idx)) {
    dims[0] = sere_lua_dim(L, idx, op);
    return 1;
  }
  if (!lua_istable(L, idx))
    return luaL_error(L, "%s: argument #%d: expected a dim or a table of dims, got %s", op, idx,
                      luaL_typename(L, idx));
  lua_Integer n = luaL_len(L, idx);
  if (n > SERE_MAX_DIMS) return luaL_error(L, "%s: %d dims given, at most %d", op, (int)n, SERE_MAX_DIMS);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    dims[i - 1] = sere_lua_dim(L, lua_gettop(L), op);
    lua_pop(L, 1);
  }
  return (int)n;
}

static int opt_bool(lua_State *L, int idx, int def) { return lua_isnoneornil(L, idx) ? def : lua_toboolean(L, idx); }

/* t:sum([dims][, keepdim]) and t:mean(...) */
static int l_sum(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "sum");
  int dims[SERE_MAX_DIMS], n = opt_dims(L, 2, dims, "sum");
  return sere_lua_push(L, sere_sum(t, n, dims, lua_toboolean(L, 3)));
}

static int l_mean(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "mean");
  int dims[SERE_MAX_DIMS], n = opt_dims(L, 2, dims, "mean");
  return sere_lua_push(L, sere_mean(t, n, dims, lua_toboolean(L, 3)));
}

/* t:var([dims][, keepdim][, correction]) and t:std(...); correction defaults to 1. */
static int var_std(lua_State *L, int is_std) {
  const char *op = is_std ? "std" : "var";
  sere_tensor *t = sere_lua_check(L, 1, op);
  int dims[SERE_MAX_DIMS], n = opt_dims(L, 2, dims, op);
  lua_Integer corr = luaL_optinteger(L, 4, 1);
  if (corr < 0 || corr > 1 << 30) return luaL_error(L, "%s: correction must be >= 0, got %I", op, corr);
  int keep = lua_toboolean(L, 3);
  return sere_lua_push(L, is_std ? sere_std(t, n, dims, (int)corr, keep) : sere_var(t, n, dims, (int)corr, keep));
}
static int l_var(lua_State *L) { return var_std(L, 0); }
static int l_std(lua_State *L) { return var_std(L, 1); }

/* t:norm([p][, dims][, keepdim]); p is a number (math.huge for inf), "inf" or "fro". */
static int l_norm(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "norm");
  double p = 2;
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *s = lua_tostring(L, 2);
    if (!strcmp(s, "inf")) p = INFINITY;
    else if (strcmp(s, "fro")) return luaL_error(L, "norm: unknown p '%s' (expected a number, 'inf' or 'fro')", s);
  } else if (!lua_isnoneornil(L, 2)) {
    p = luaL_checknumber(L, 2);
  }
  int dims[SERE_MAX_DIMS], n = opt_dims(L, 3, dims, "norm");
  return sere_lua_push(L, sere_norm(t, p, n, dims, lua_toboolean(L, 4)));
}

/* t:max() -> value; t:max(dim[, keepdim]) -> values, indices. Same for min. */
static int max_min(lua_State *L, int is_max) {
  const char *op = is_max ? "max" : "min";
  sere_tensor *t = sere_lua_check(L, 1, op);
  if (sere_lua_opt_tensor(L, 2))
    return luaL_error(L, "%s: takes a dim, not a tensor; for the element-wise %s of two tensors use sere.%s(a, b)",
                      op, is_max ? "maximum" : "minimum", is_max ? "maximum" : "minimum");
  int all = lua_isnoneornil(L, 2);
  int dim = all ? SERE_ALL_DIMS : sere_lua_dim(L, 2, op);
  sere_tensor *v, *ix;
  int rc = is_max ? sere_max_dim(t, dim, lua_toboolean(L, 3), 1, &v, &ix)
                  : sere_min_dim(t, dim, lua_toboolean(L, 3), 1, &v, &ix);
  if (rc) return sere_lua_raise(L);
  if (all) {
    sere_tensor_release(ix);
    return sere_lua_push(L, v);
  }
  sere_lua_push(L, v);
  return sere_lua_push(L, ix) + 1;
}
static int l_max(lua_State *L) { return max_min(L, 1); }
static int l_min(lua_State *L) { return max_min(L, 0); }

/* t:argmax([dim][, keepdim]): 1-based indices (into the flattened tensor without dim). */
static int arg_max_min(lua_State *L, int is_max) {
  const char *op = is_max ? "argmax" : "argmin";
  sere_tensor *t = sere_lua_check(L, 1, op);
  int dim = lua_isnoneornil(L, 2) ? SERE_ALL_DIMS : sere_lua_dim(L, 2, op);
  int keep = lua_toboolean(L, 3);
  return sere_lua_push(L, is_max ? sere_argmax(t, dim, keep, 1) : sere_argmin(t, dim, keep, 1));
}
static int l_argmax(lua_State *L) { return arg_max_min(L, 1); }
static int l_argmin(lua_State *L) { return arg_max_min(L, 0); }

/* t:softmax([dim]) / t:log_softmax([dim]); dim defaults to -1. */
static int l_softmax(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "softmax");
  return sere_lua_push(L, sere_softmax(t, lua_isnoneornil(L, 2) ? -1 : sere_lua_dim(L, 2, "softmax")));
}

static int l_log_softmax(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "log_softmax");
  return sere_lua_push(L, sere_log_softmax(t, lua_isnoneornil(L, 2) ? -1 : sere_lua_dim(L, 2, "log_softmax")));
}

/* t:topk(k[, dim][, largest][, sorted]) -> values, indices (1-based). */
static int l_topk(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "topk");
  lua_Integer k = luaL_checkinteger(L, 2);
  int dim = lua_isnoneornil(L, 3) ? -1 : sere_lua_dim(L, 3, "topk");
  sere_tensor *v, *ix;
  if (sere_topk(t, k, dim, opt_bool(L, 4, 1), opt_bool(L, 5, 1), 1, &v, &ix)) return sere_lua_raise(L);
  sere_lua_push(L, v);
  return sere_lua_push(L, ix) + 1;
}

void sere_lua_open_reduce(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"sum", l_sum},       {"mean", l_mean},     {"var", l_var},       {"std", l_std},
      {"norm", l_norm},     {"max", l_max},       {"min", l_min},       {"argmax", l_argmax},
      {"argmin", l_argmin}, {"softmax", l_softmax}, {"log_softmax", l_log_softmax}, {"topk", l_topk},
      {NULL, NULL}};
  sere_lua_register(L, fns, fns);
}
