/* lua_create.c — Lua bindings that make tensors: sere.tensor from nested
 * tables, zeros/ones/empty/full(_like), arange/linspace/eye, the random
 * fills (rand/randn/randint, t:uniform_/t:normal_) and sere.Generator
 * streams (ops/random.c documents the stream layout). */
#include <string.h>

#include "lua_tensor.h"
#include "ops/ops.h"

#define GENERATOR_MT "sere.Generator"

/* ---- creation -------------------------------------------------------- */
/* Walks a nested table once to find its shape and whether it holds
 * integers only, booleans only, or floats. */
static void table_shape(lua_State *L, int idx, int depth, int *ndim, int64_t *shape, int *kind) {
  lua_Integer n = luaL_len(L, idx);
  if (depth >= SERE_MAX_DIMS) luaL_error(L, "tensor: table nested deeper than %d levels", SERE_MAX_DIMS);
  if (depth == *ndim) {
    shape[depth] = n;
    (*ndim)++;
  } else if (shape[depth] != n) {
    luaL_error(L, "tensor: ragged nested table (dim %d has sizes %I and %I)", depth + 1,
               (lua_Integer)shape[depth], (lua_Integer)n);
  }
  for (lua_Integer i = 1; i <= n; i++) {
    int ty = lua_geti(L, idx, i);
    if (ty == LUA_TTABLE) {
      if (depth + 1 < *ndim && *ndim == depth + 1) luaL_error(L, "tensor: ragged nested table");
      table_shape(L, lua_gettop(L), depth + 1, ndim, shape, kind);
    } else if (ty == LUA_TNUMBER || ty == LUA_TBOOLEAN) {
      if (*ndim != depth + 1) luaL_error(L, "tensor: ragged nested table (a number where a table was expected)");
      int k = ty == LUA_TBOOLEAN ? 0 : lua_isinteger(L, -1) ? 1 : 2;
      if (*kind < 0) *kind = k;
      else if ((*kind == 0) != (k == 0)) luaL_error(L, "tensor: table mixes booleans and numbers");
      else if (k > *kind) *kind = k;
    } else {
      luaL_error(L, "tensor: tables may hold only numbers, booleans or tables, found %s", lua_typename(L, ty));
    }
    lua_pop(L, 1);
  }
}

static void table_fill(lua_State *L, int idx, sere_tensor *t, int depth, int64_t *pos) {
  lua_Integer n = luaL_len(L, idx);
  for (lua_Integer i = 1; i <= n; i++) {
    int ty = lua_geti(L, idx, i);
    if (ty == LUA_TTABLE) table_fill(L, lua_gettop(L), t, depth + 1, pos);
    else if (t->dtype == SERE_I64 && lua_isinteger(L, -1))
      ((int64_t *)t->storage->data)[(*pos)++] = lua_tointeger(L, -1);
    else sere_store_linear(t->storage->data, t->dtype, (*pos)++, ty == LUA_TBOOLEAN ? lua_toboolean(L, -1) : lua_tonumber(L, -1));
    lua_pop(L, 1);
  }
}

static void apply_requires_grad(lua_State *L, int opts, sere_tensor *t) {
  if (!lua_istable(L, opts)) return;
  lua_getfield(L, opts, "requires_grad");
  if (lua_toboolean(L, -1)) {
    if (!sere_dtype_is_float(t->dtype)) luaL_error(L, "requires_grad: only float tensors can require grad");
    t->requires_grad = 1;
  }
  lua_pop(L, 1);
}

/* opts.device, or `dev` when opts has none. */
static sere_device_type opt_device(lua_State *L, int opts, sere_device_type dev) {
  if (lua_istable(L, opts)) {
    lua_getfield(L, opts, "device");
    if (!lua_isnil(L, -1) && !sere_lua_device_name(L, lua_gettop(L), &dev))
      luaL_error(L, "unknown device '%s' (expected 'cpu' or 'cuda')", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  return dev;
}

/* Ends every creation function: the new tensor is at the top of the stack;
 * it moves to opts.device (default `dev`), then gets opts.requires_grad. */
static int finish_created(lua_State *L, int opts, sere_device_type dev) {
  dev = opt_device(L, opts, dev);
  sere_tensor *t = sere_lua_check(L, -1, "device");
  if (sere_device_of(t) != dev) {
    sere_tensor *moved = sere_to_device(t, dev);
    lua_pop(L, 1);
    sere_lua_push(L, moved);
    t = moved;
  }
  apply_requires_grad(L, opts, t);
  return 1;
}

/* sere.tensor(value, opts): value is a nested table, a number or a boolean. */
static int l_tensor(lua_State *L) {
  int ndim = 0, kind = -1;
  int64_t shape[SERE_MAX_DIMS] = {0};
  if (sere_lua_opt_tensor(L, 1)) {
    sere_tensor *src = sere_lua_opt_tensor(L, 1);
    sere_tensor *t = sere_tensor_new(sere_lua_opt_dtype(L, 2, src->dtype), src->ndim, src->shape);
    if (t && sere_copy_raw(t, src)) { sere_tensor_release(t); t = NULL; }
    if (!t) return sere_lua_raise(L);
    sere_lua_push(L, t);
    return finish_created(L, 2, sere_device_of(src));
  }
  int ty = lua_type(L, 1);
  if (ty == LUA_TTABLE) table_shape(L, 1, 0, &ndim, shape, &kind);
  else if (ty == LUA_TNUMBER) kind = lua_isinteger(L, 1) ? 1 : 2;
  else if (ty == LUA_TBOOLEAN) kind = 0;
  else return luaL_error(L, "tensor: expected a table, number or boolean, got %s", luaL_typename(L, 1));
  sere_dtype def = kind == 0 ? SERE_BOOL : kind == 1 ? SERE_I64 : SERE_F32;
  sere_tensor *t = sere_tensor_new(sere_lua_opt_dtype(L, 2, def), ndim, shape);
  if (!t) return sere_lua_raise(L);
  sere_lua_push(L, t);
  int64_t pos = 0;
  if (ty == LUA_TTABLE) table_fill(L, 1, t, 0, &pos);
  else if (t->dtype == SERE_I64 && lua_isinteger(L, 1)) ((int64_t *)t->storage->data)[0] = lua_tointeger(L, 1);
  else sere_store_linear(t->storage->data, t->dtype, 0, ty == LUA_TBOOLEAN ? lua_toboolean(L, 1) : lua_tonumber(L, 1));
  return finish_created(L, 2, SERE_CPU);
}

/* Shared parsing for zeros/ones/empty/full/rand...: shape then optional opts. */
static int shape_and_opts(lua_State *L, int idx, int *ndim, int64_t *shape, const char *op) {
  int used = sere_lua_shape(L, idx, ndim, shape, op);
  int opts = idx + used;
  if (!lua_isnoneornil(L, opts) && !lua_istable(L, opts))
    luaL_error(L, "%s: expected an options table after the shape, got %s", op, luaL_typename(L, opts));
  for (int i = 0; i < *ndim; i++)
    if (shape[i] < 0) luaL_error(L, "%s: invalid size %I", op, (lua_Integer)shape[i]);
  return opts;
}

static int filled(lua_State *L, double v, const char *op) {
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int opts = shape_and_opts(L, 1, &ndim, shape, op);
  sere_tensor *t = sere_full(ndim, shape, v, sere_lua_opt_dtype(L, opts, SERE_F32));
  sere_lua_push(L, t);
  return finish_created(L, opts, SERE_CPU);
}

static int l_zeros(lua_State *L) { return filled(L, 0, "zeros"); }
static int l_ones(lua_State *L) { return filled(L, 1, "ones"); }
static int l_empty(lua_State *L) { return filled(L, 0, "empty"); }

static int l_full(lua_State *L) {
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  sere_lua_shape(L, 1, &ndim, shape, "full");
  if (!lua_istable(L, 1)) return luaL_error(L, "full: shape must be a table: sere.full({2, 3}, value)");
  double v = lua_isboolean(L, 2) ? lua_toboolean(L, 2) : luaL_checknumber(L, 2);
  sere_dtype def = lua_isboolean(L, 2) ? SERE_BOOL : lua_isinteger(L, 2) ? SERE_I64 : SERE_F32;
  sere_tensor *t = sere_full(ndim, shape, v, sere_lua_opt_dtype(L, 3, def));
  sere_lua_push(L, t);
  return finish_created(L, 3, SERE_CPU);
}

/* zeros_like / ones_like / full_like(t, v) */
static int like(lua_State *L, double v, int value_idx, const char *op) {
  sere_tensor *src = sere_lua_check(L, 1, op);
  if (value_idx) v = luaL_checknumber(L, value_idx);
  int opts = value_idx ? 3 : 2;
  sere_tensor *t = sere_full(src->ndim, src->shape, v, sere_lua_opt_dtype(L, opts, src->dtype));
  sere_lua_push(L, t);
  return finish_created(L, opts, sere_device_of(src));
}
static int l_zeros_like(lua_State *L) { return like(L, 0, 0, "zeros_like"); }
static int l_ones_like(lua_State *L) { return like(L, 1, 0, "ones_like"); }
static int l_full_like(lua_State *L) { return like(L, 0, 2, "full_like"); }

/* sere.arange(end) / arange(start, end[, step][, opts]) — end exclusive. */
static int l_arange(lua_State *L) {
  int top = lua_gettop(L), nnum = 0;
  while (nnum < top && lua_type(L, nnum + 1) == LUA_TNUMBER) nnum++;
  if (nnum < 1 || nnum > 3) return luaL_error(L, "arange: expected (end), (start, end) or (start, end, step)");
  double start = 0, end, step = 1;
  int all_int = 1;
  for (int i = 1; i <= nnum; i++) all_int &= lua_isinteger(L, i);
  if (nnum == 1) end = lua_tonumber(L, 1);
  else { start = lua_tonumber(L, 1); end = lua_tonumber(L, 2); }
  if (nnum == 3) step = lua_tonumber(L, 3);
  sere_lua_push(L, sere_arange(start, end, step, sere_lua_opt_dtype(L, nnum + 1, all_int ? SERE_I64 : SERE_F32)));
  return finish_created(L, nnum + 1, SERE_CPU);
}

static int l_linspace(lua_State *L) {
  double a = luaL_checknumber(L, 1), b = luaL_checknumber(L, 2);
  lua_Integer n = luaL_checkinteger(L, 3);
  sere_lua_push(L, sere_linspace(a, b, n, sere_lua_opt_dtype(L, 4, SERE_F32)));
  return finish_created(L, 4, SERE_CPU);
}

static int l_eye(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  lua_Integer m = lua_type(L, 2) == LUA_TNUMBER ? lua_tointeger(L, 2) : n;
  int opts = lua_type(L, 2) == LUA_TNUMBER ? 3 : 2;
  sere_lua_push(L, sere_eye(n, m, sere_lua_opt_dtype(L, opts, SERE_F32)));
  return finish_created(L, opts, SERE_CPU);
}

/* ---- random ---------------------------------------------------------- */
static sere_generator *opt_generator(lua_State *L, int opts) {
  sere_generator *g = sere_default_generator();
  if (!lua_istable(L, opts)) return g;
  if (lua_getfield(L, opts, "generator") != LUA_TNIL) g = luaL_checkudata(L, -1, GENERATOR_MT);
  lua_pop(L, 1);
  return g;
}

typedef enum { RAND_UNIFORM, RAND_NORMAL } rand_kind;

static int random_tensor(lua_State *L, rand_kind kind, const char *op) {
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int opts = shape_and_opts(L, 1, &ndim, shape, op);
  sere_dtype d = sere_lua_opt_dtype(L, opts, SERE_F32);
  if (!sere_dtype_is_float(d)) return luaL_error(L, "%s: dtype must be f32 or bf16", op);
  /* filled where it lives: the streams are the same on every device */
  sere_tensor *t = sere_tensor_new_uninit_on(opt_device(L, opts, SERE_CPU), d, ndim, shape);
  sere_lua_push(L, t);
  sere_generator *g = opt_generator(L, opts);
  int rc = kind == RAND_UNIFORM ? sere_uniform_(t, 0, 1, g) : sere_normal_(t, 0, 1, g);
  if (rc) return sere_lua_raise(L);
  return finish_created(L, opts, SERE_CPU);
}

static int l_rand(lua_State *L) { return random_tensor(L, RAND_UNIFORM, "rand"); }
static int l_randn(lua_State *L) { return random_tensor(L, RAND_NORMAL, "randn"); }

/* sere.randint(low, high, shape[, opts]) — values in [low, high), like PyTorch. */
static int l_randint(lua_State *L) {
  lua_Integer lo = luaL_checkinteger(L, 1), hi = luaL_checkinteger(L, 2);
  if (hi <= lo) return luaL_error(L, "randint: empty range [%I, %I)", (lua_Integer)lo, (lua_Integer)hi);
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int opts = shape_and_opts(L, 3, &ndim, shape, "randint");
  sere_tensor *t = sere_tensor_new_uninit_on(opt_device(L, opts, SERE_CPU), sere_lua_opt_dtype(L, opts, SERE_I64),
                                             ndim, shape);
  sere_lua_push(L, t);
  if (sere_randint_(t, lo, hi, opt_generator(L, opts))) return sere_lua_raise(L);
  return finish_created(L, opts, SERE_CPU);
}

static int l_manual_seed(lua_State *L) {
  sere_generator *g = sere_default_generator();
  g->seed = (uint64_t)luaL_checkinteger(L, 1);
  g->offset = 0;
  return 0;
}

/* sere.Generator(seed): an explicit stream; fields seed and offset. */
static int l_generator(lua_State *L) {
  sere_generator *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->seed = (uint64_t)luaL_optinteger(L, 1, 0);
  g->offset = 0;
  luaL_setmetatable(L, GENERATOR_MT);
  return 1;
}

static int gen_index(lua_State *L) {
  sere_generator *g = luaL_checkudata(L, 1, GENERATOR_MT);
  const char *k = luaL_checkstring(L, 2);
  if (!strcmp(k, "seed")) lua_pushinteger(L, (lua_Integer)g->seed);
  else if (!strcmp(k, "offset")) lua_pushinteger(L, (lua_Integer)g->offset);
  else return luaL_error(L, "Generator has no field '%s' (fields: seed, offset)", k);
  return 1;
}

static int gen_newindex(lua_State *L) {
  sere_generator *g = luaL_checkudata(L, 1, GENERATOR_MT);
  const char *k = luaL_checkstring(L, 2);
  lua_Integer v = luaL_checkinteger(L, 3);
  if (!strcmp(k, "seed")) g->seed = (uint64_t)v;
  else if (!strcmp(k, "offset")) g->offset = (uint64_t)v;
  else return luaL_error(L, "Generator has no field '%s' (fields: seed, offset)", k);
  return 0;
}

static int l_get_rng_state(lua_State *L) {
  sere_generator *g = sere_default_generator();
  lua_newtable(L);
  lua_pushinteger(L, (lua_Integer)g->seed);
  lua_setfield(L, -2, "seed");
  lua_pushinteger(L, (lua_Integer)g->offset);
  lua_setfield(L, -2, "offset");
  return 1;
}

static int l_set_rng_state(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  sere_generator *g = sere_default_generator();
  lua_getfield(L, 1, "seed");
  lua_getfield(L, 1, "offset");
  g->seed = (uint64_t)luaL_checkinteger(L, -2);
  g->offset = (uint64_t)luaL_checkinteger(L, -1);
  lua_pop(L, 2);
  return 0;
}

/* In-place random fills: t:uniform_(lo, hi, opts), t:normal_(mean, std, opts). */
static int m_uniform_(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "uniform_");
  if (sere_check_inplace(t, "uniform_")) return sere_lua_raise(L);
  if (sere_uniform_(t, luaL_optnumber(L, 2, 0), luaL_optnumber(L, 3, 1), opt_generator(L, 4))) return sere_lua_raise(L);
  sere_bump_version(t);
  lua_settop(L, 1);
  return 1;
}

static int m_normal_(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "normal_");
  if (sere_check_inplace(t, "normal_")) return sere_lua_raise(L);
  if (sere_normal_(t, luaL_optnumber(L, 2, 0), luaL_optnumber(L, 3, 1), opt_generator(L, 4))) return sere_lua_raise(L);
  sere_bump_version(t);
  lua_settop(L, 1);
  return 1;
}


void sere_lua_open_create(lua_State *L) {
  static const luaL_Reg methods[] = {{"uniform_", m_uniform_}, {"normal_", m_normal_}, {NULL, NULL}};
  static const luaL_Reg functions[] = {
      {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"empty", l_empty}, {"full", l_full},
      {"zeros_like", l_zeros_like}, {"ones_like", l_ones_like}, {"full_like", l_full_like},
      {"arange", l_arange}, {"linspace", l_linspace}, {"eye", l_eye}, {"rand", l_rand}, {"randn", l_randn},
      {"randint", l_randint}, {"manual_seed", l_manual_seed}, {"Generator", l_generator},
      {"get_rng_state", l_get_rng_state}, {"set_rng_state", l_set_rng_state}, {NULL, NULL}};
  sere_lua_register(L, methods, functions);
  luaL_newmetatable(L, GENERATOR_MT);
  lua_pushcfunction(L, gen_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gen_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pop(L, 1);
}
