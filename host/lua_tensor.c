/* lua_tensor.c — the Tensor userdata and the core of the Lua surface:
 * views, properties (grad, requires_grad, is_leaf, grad_fn), indexing
 * t[i], item/totable, autograd entry points, the shared binding helpers of
 * lua_tensor.h, and luaopen_sere_core (creation is in lua_create.c).
 *
 * Memory: a tensor's userdata is a pointer while its storage may be huge,
 * so Lua's collector would run far too rarely. sere_lua_push runs a full
 * collection whenever live tensor storage has doubled since the last one
 * (floor 64 MiB), so loops hold steady memory without collectgarbage(). */
#include "lua_tensor.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ops/ops.h"

static const char *const METHODS_KEY = "sere.Tensor.methods";
static const char *const MODULE_KEY = "sere.core.module";

/* ---- shared helpers -------------------------------------------------- */
static size_t gc_threshold = 64u << 20;

int sere_lua_raise(lua_State *L) { return luaL_error(L, "%s", sere_last_error()); }

int sere_lua_push(lua_State *L, sere_tensor *t) {
  if (!t) return sere_lua_raise(L);
  sere_tensor **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = t;
  luaL_setmetatable(L, SERE_TENSOR_MT);
  size_t live = sere_storage_live_bytes();
  if (live > gc_threshold) {
    lua_gc(L, LUA_GCCOLLECT);
    live = sere_storage_live_bytes();
    gc_threshold = live * 2 > (64u << 20) ? live * 2 : (64u << 20);
  }
  return 1;
}

sere_tensor *sere_lua_opt_tensor(lua_State *L, int idx) {
  sere_tensor **ud = luaL_testudata(L, idx, SERE_TENSOR_MT);
  return ud ? *ud : NULL;
}

sere_tensor *sere_lua_check(lua_State *L, int idx, const char *op) {
  sere_tensor **ud = luaL_testudata(L, idx, SERE_TENSOR_MT);
  if (!ud) {
    luaL_error(L, "%s: argument #%d: expected a tensor, got %s", op, idx, luaL_typename(L, idx));
    return NULL;
  }
  if (!*ud) luaL_error(L, "%s: argument #%d: tensor was freed", op, idx);
  return *ud;
}

int sere_lua_dim_value(lua_State *L, lua_Integer d, const char *op) {
  if (d == 0) luaL_error(L, "%s: dims are 1-based (1 is the first, -1 the last); got 0", op);
  if (d > 64 || d < -64) luaL_error(L, "%s: dim %d out of range", op, (int)d);
  return d > 0 ? (int)d - 1 : (int)d;
}

int sere_lua_dim(lua_State *L, int idx, const char *op) {
  if (!lua_isinteger(L, idx))
    luaL_error(L, "%s: argument #%d: expected an integer dim, got %s", op, idx, luaL_typename(L, idx));
  return sere_lua_dim_value(L, lua_tointeger(L, idx), op);
}

static int64_t check_size(lua_State *L, int type_ok, lua_Integer v, const char *op) {
  if (!type_ok) luaL_error(L, "%s: sizes must be integers", op);
  if (v < -1) luaL_error(L, "%s: invalid size %I", op, (lua_Integer)v);
  return (int64_t)v;
}

int sere_lua_shape(lua_State *L, int idx, int *ndim, int64_t *shape, const char *op) {
  if (lua_istable(L, idx)) {
    lua_Integer n = luaL_len(L, idx);
    if (n > SERE_MAX_DIMS) luaL_error(L, "%s: %d dims is more than the supported %d", op, (int)n, SERE_MAX_DIMS);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_geti(L, idx, i);
      int isnum;
      lua_Integer v = lua_tointegerx(L, -1, &isnum);
      shape[i - 1] = check_size(L, isnum, v, op);
      lua_pop(L, 1);
    }
    *ndim = (int)n;
    return 1;
  }
  int n = 0, top = lua_gettop(L);
  for (int i = idx; i <= top && lua_type(L, i) == LUA_TNUMBER; i++) {
    if (n == SERE_MAX_DIMS) luaL_error(L, "%s: more than %d dims", op, SERE_MAX_DIMS);
    int isnum;
    lua_Integer v = lua_tointegerx(L, i, &isnum);
    shape[n++] = check_size(L, isnum, v, op);
  }
  *ndim = n;
  return n;
}

sere_dtype sere_lua_check_dtype(lua_State *L, int idx) {
  const char *name = luaL_checkstring(L, idx);
  sere_dtype d;
  if (sere_dtype_from_name(name, &d))
    luaL_error(L, "unknown dtype '%s' (expected f32, bf16, i32, i64, u8 or bool)", name);
  return d;
}

int sere_lua_device_name(lua_State *L, int idx, sere_device_type *dev) {
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  const char *name = lua_tostring(L, idx);
  if (!strcmp(name, "cpu")) *dev = SERE_CPU;
  else if (!strcmp(name, "cuda")) *dev = SERE_CUDA;
  else if (!strncmp(name, "cuda:", 5)) {
    luaL_error(L, "device '%s': a sere process uses one GPU, called 'cuda' (pick it with "
               "sere.cuda.set_device before creating tensors)", name);
  } else return 0;
  return 1;
}

sere_dtype sere_lua_opt_dtype(lua_State *L, int idx, sere_dtype def) {
  if (!lua_istable(L, idx)) return def;
  lua_getfield(L, idx, "dtype");
  sere_dtype d = def;
  if (!lua_isnil(L, -1)) d = sere_lua_check_dtype(L, lua_gettop(L));
  lua_pop(L, 1);
  return d;
}

sere_tensor *sere_lua_tensor_or_scalar(lua_State *L, int idx, sere_dtype like, const char *op) {
  sere_tensor *t = sere_lua_opt_tensor(L, idx);
  if (t) return sere_tensor_retain(t);
  double v;
  if (lua_isboolean(L, idx)) v = lua_toboolean(L, idx);
  else if (lua_type(L, idx) == LUA_TNUMBER) v = lua_tonumber(L, idx);
  else {
    luaL_error(L, "%s: argument #%d: expected a tensor or a number, got %s", op, idx, luaL_typename(L, idx));
    return NULL;
  }
  sere_tensor *s = sere_tensor_new(like, 0, NULL);
  if (!s) sere_lua_raise(L);
  sere_fill_raw(s, v);
  return s;
}

void sere_lua_register(lua_State *L, const luaL_Reg *methods, const luaL_Reg *functions) {
  if (methods) {
    lua_getfield(L, LUA_REGISTRYINDEX, METHODS_KEY);
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 1);
  }
  if (functions) {
    lua_getfield(L, LUA_REGISTRYINDEX, MODULE_KEY);
    luaL_setfuncs(L, functions, 0);
    lua_pop(L, 1);
  }
}

void sere_lua_set_metamethods(lua_State *L, const luaL_Reg *metamethods) {
  luaL_getmetatable(L, SERE_TENSOR_MT);
  luaL_setfuncs(L, metamethods, 0);
  lua_pop(L, 1);
}

/* ---- metamethods and properties -------------------------------------- */
static int t_gc(lua_State *L) {
  sere_tensor **ud = luaL_checkudata(L, 1, SERE_TENSOR_MT);
  sere_tensor_release(*ud);
  *ud = NULL;
  return 0;
}

/* Pushes one element of a 0-dim tensor (or the only element of any tensor)
 * as a Lua value: integer for integer dtypes, boolean for bool. */
static void push_scalar(lua_State *L, const sere_tensor *t, const int64_t *index) {
  unsigned char elem[8];
  if (sere_read_elem(t, index, elem)) sere_lua_raise(L);
  double v = sere_load_linear(elem, t->dtype, 0);
  if (t->dtype == SERE_BOOL) lua_pushboolean(L, v != 0);
  else if (sere_dtype_is_float(t->dtype)) lua_pushnumber(L, v);
  else if (t->dtype == SERE_I64) lua_pushinteger(L, *(const int64_t *)elem);
  else lua_pushinteger(L, (lua_Integer)v);
}

static int64_t check_position(lua_State *L, const sere_tensor *t, lua_Integer i) {
  if (t->ndim == 0) luaL_error(L, "index: cannot index a 0-dim tensor (use t:item())");
  int64_t size = t->shape[0];
  if (i == 0 || i > size || i < -size)
    luaL_error(L, "index: %I out of range for dim 1 of size %I (indices are 1-based, negative from the end)",
               (lua_Integer)i, (lua_Integer)size);
  return i > 0 ? i - 1 : i + size;
}

static int t_index(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "index");
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (!isint) return luaL_error(L, "index: tensor indices must be integers");
    int64_t pos = check_position(L, t, i);
    if (t->ndim == 1) {
      int64_t idx[1] = {pos};
      push_scalar(L, t, idx);
      return 1;
    }
    return sere_lua_push(L, sere_select(t, 0, pos));
  }
  const char *key = lua_tostring(L, 2);
  if (!key) return luaL_error(L, "index: tensors are indexed by integers or method names, got %s", luaL_typename(L, 2));
  lua_getfield(L, LUA_REGISTRYINDEX, METHODS_KEY);
  if (lua_getfield(L, -1, key) != LUA_TNIL) return 1;
  lua_pop(L, 2);
  if (!strcmp(key, "grad")) {
    if (!t->grad) { lua_pushnil(L); return 1; }
    return sere_lua_push(L, sere_tensor_retain(t->grad));
  }
  if (!strcmp(key, "requires_grad")) { lua_pushboolean(L, sere_tensor_requires_grad(t)); return 1; }
  if (!strcmp(key, "is_leaf")) { lua_pushboolean(L, t->grad_fn == NULL); return 1; }
  if (!strcmp(key, "grad_fn")) {
    if (t->grad_fn) lua_pushstring(L, t->grad_fn->name);
    else lua_pushnil(L);
    return 1;
  }
  return luaL_error(L, "Tensor has no method or property '%s'", key);
}

static int t_newindex(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "index");
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int isint;
    lua_Integer i = lua_tointegerx(L, 2, &isint);
    if (!isint) return luaL_error(L, "index: tensor indices must be integers");
    int64_t pos = check_position(L, t, i);
    sere_tensor *dst = sere_select(t, 0, pos);
    if (!dst) return sere_lua_raise(L);
    sere_tensor *src = sere_lua_opt_tensor(L, 3);
    int rc;
    if (src) rc = sere_copy_(dst, src);
    else if (lua_type(L, 3) == LUA_TNUMBER || lua_isboolean(L, 3)) {
      rc = sere_check_inplace(dst, "index assignment");
      if (!rc) {
        sere_fill_raw(dst, lua_isboolean(L, 3) ? lua_toboolean(L, 3) : lua_tonumber(L, 3));
        sere_bump_version(dst);
      }
    } else {
      sere_tensor_release(dst);
      return luaL_error(L, "index assignment: expected a number or a tensor, got %s", luaL_typename(L, 3));
    }
    sere_tensor_release(dst);
    if (rc) return sere_lua_raise(L);
    return 0;
  }
  const char *key = luaL_checkstring(L, 2);
  if (!strcmp(key, "requires_grad")) {
    int on = lua_toboolean(L, 3);
    if (t->grad_fn && !on)
      return luaL_error(L, "requires_grad: cannot turn off requires_grad of a non-leaf tensor; use detach()");
    if (on && !sere_dtype_is_float(t->dtype))
      return luaL_error(L, "requires_grad: only float tensors can require grad (this one is %s)",
                        sere_dtype_name(t->dtype));
    if (!t->grad_fn) t->requires_grad = on;
    return 0;
  }
  if (!strcmp(key, "grad")) {
    sere_tensor *g = lua_isnil(L, 3) ? NULL : sere_lua_check(L, 3, "grad assignment");
    if (g && !sere_same_shape(g, t)) {
      char a[128], b[128];
      return luaL_error(L, "grad assignment: gradient of shape %s for a tensor of shape %s",
                        sere_shape_str(g, a, sizeof a), sere_shape_str(t, b, sizeof b));
    }
    sere_tensor_release(t->grad);
    t->grad = sere_tensor_retain(g);
    return 0;
  }
  return luaL_error(L, "Tensor property '%s' cannot be set (settable: requires_grad, grad)", key);
}

static int t_len(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "#");
  lua_pushinteger(L, t->ndim ? t->shape[0] : 0);
  return 1;
}

/* ---- queries --------------------------------------------------------- */
static void push_int_array(lua_State *L, int n, const int64_t *v) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushinteger(L, v[i]);
    lua_rawseti(L, -2, i + 1);
  }
}

static int m_shape(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "shape");
  if (!lua_isnoneornil(L, 2)) {
    int d;
    if (t->ndim == 0) return luaL_error(L, "size: a 0-dim tensor has no dims");
    if (sere_wrap_dim(sere_lua_dim(L, 2, "size"), t->ndim, "size", &d)) return sere_lua_raise(L);
    lua_pushinteger(L, t->shape[d]);
    return 1;
  }
  push_int_array(L, t->ndim, t->shape);
  return 1;
}

static int m_stride(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "stride");
  push_int_array(L, t->ndim, t->stride);
  return 1;
}

static int m_dim(lua_State *L) { lua_pushinteger(L, sere_lua_check(L, 1, "dim")->ndim); return 1; }
static int m_numel(lua_State *L) { lua_pushinteger(L, sere_numel(sere_lua_check(L, 1, "numel"))); return 1; }
static int m_dtype(lua_State *L) { lua_pushstring(L, sere_dtype_name(sere_lua_check(L, 1, "dtype")->dtype)); return 1; }
static int m_device(lua_State *L) {
  lua_pushstring(L, sere_device_name(sere_device_of(sere_lua_check(L, 1, "device"))));
  return 1;
}
static int m_is_contiguous(lua_State *L) {
  lua_pushboolean(L, sere_is_contiguous(sere_lua_check(L, 1, "is_contiguous")));
  return 1;
}
static int m_storage_offset(lua_State *L) {
  lua_pushinteger(L, sere_lua_check(L, 1, "storage_offset")->offset);
  return 1;
}
/* Same storage? (for tests of view semantics) */
static int m_shares_storage(lua_State *L) {
  lua_pushboolean(L, sere_lua_check(L, 1, "shares_storage")->storage == sere_lua_check(L, 2, "shares_storage")->storage);
  return 1;
}

static int m_item(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "item");
  if (sere_numel(t) != 1) {
    char a[128];
    return luaL_error(L, "item: only a tensor with one element converts to a number, got shape %s",
                      sere_shape_str(t, a, sizeof a));
  }
  int64_t idx[SERE_MAX_DIMS] = {0};
  push_scalar(L, t, idx);
  return 1;
}

static void totable_rec(lua_State *L, const sere_tensor *t, int depth, int64_t *index) {
  if (depth == t->ndim) {
    push_scalar(L, t, index);
    return;
  }
  lua_createtable(L, (int)t->shape[depth], 0);
  for (int64_t i = 0; i < t->shape[depth]; i++) {
    index[depth] = i;
    totable_rec(L, t, depth + 1, index);
    lua_rawseti(L, -2, i + 1);
  }
}

static int m_totable(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "totable");
  if (sere_device_of(t) != SERE_CPU) {
    /* one transfer, then read the copy (kept on the stack for the GC) */
    sere_lua_push(L, sere_to_device(t, SERE_CPU));
    t = sere_lua_check(L, -1, "totable");
  }
  int64_t index[SERE_MAX_DIMS] = {0};
  luaL_checkstack(L, SERE_MAX_DIMS + 4, "totable");
  totable_rec(L, t, 0, index);
  return 1;
}

/* ---- views and conversion -------------------------------------------- */
static int m_reshape_like(lua_State *L, int allow_copy, const char *op) {
  sere_tensor *t = sere_lua_check(L, 1, op);
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  sere_lua_shape(L, 2, &ndim, shape, op);
  return sere_lua_push(L, allow_copy ? sere_reshape(t, ndim, shape) : sere_view(t, ndim, shape));
}
static int m_reshape(lua_State *L) { return m_reshape_like(L, 1, "reshape"); }
static int m_view(lua_State *L) { return m_reshape_like(L, 0, "view"); }

static int m_expand(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "expand");
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  sere_lua_shape(L, 2, &ndim, shape, "expand");
  return sere_lua_push(L, sere_expand(t, ndim, shape));
}

static int m_expand_as(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "expand_as"), *o = sere_lua_check(L, 2, "expand_as");
  return sere_lua_push(L, sere_expand(t, o->ndim, o->shape));
}

static int m_transpose(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "transpose");
  return sere_lua_push(L, sere_transpose(t, sere_lua_dim(L, 2, "transpose"), sere_lua_dim(L, 3, "transpose")));
}

/* t:t() — transpose of a matrix (or a 1-D tensor unchanged). */
static int m_t(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "t");
  if (t->ndim > 2) return luaL_error(L, "t: expects a tensor with at most 2 dims, got %d (use transpose)", t->ndim);
  if (t->ndim < 2) return sere_lua_push(L, sere_tensor_retain(t));
  return sere_lua_push(L, sere_transpose(t, 0, 1));
}

static int m_permute(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "permute");
  int perm[SERE_MAX_DIMS], n = 0;
  if (lua_istable(L, 2)) {
    n = (int)luaL_len(L, 2);
    if (n > SERE_MAX_DIMS) return luaL_error(L, "permute: too many dims");
    for (int i = 0; i < n; i++) {
      lua_geti(L, 2, i + 1);
      perm[i] = sere_lua_dim(L, -1, "permute");
      lua_pop(L, 1);
    }
  } else {
    for (int i = 2; i <= lua_gettop(L) && n < SERE_MAX_DIMS; i++) perm[n++] = sere_lua_dim(L, i, "permute");
  }
  return sere_lua_push(L, sere_permute(t, n, perm));
}

/* t:narrow(dim, start, length) — start is 1-based. */
static int m_narrow(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "narrow");
  int dim = sere_lua_dim(L, 2, "narrow");
  lua_Integer start = luaL_checkinteger(L, 3), len = luaL_checkinteger(L, 4);
  if (start == 0) return luaL_error(L, "narrow: start is 1-based; got 0");
  return sere_lua_push(L, sere_narrow(t, dim, start > 0 ? start - 1 : start, len));
}

/* t:select(dim, index) — index is 1-based; negative counts from the end. */
static int m_select(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "select");
  int dim = sere_lua_dim(L, 2, "select");
  lua_Integer i = luaL_checkinteger(L, 3);
  if (i == 0) return luaL_error(L, "select: indices are 1-based; got 0");
  return sere_lua_push(L, sere_select(t, dim, i > 0 ? i - 1 : i));
}

static int m_unsqueeze(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "unsqueeze");
  return sere_lua_push(L, sere_unsqueeze(t, sere_lua_dim(L, 2, "unsqueeze")));
}

static int m_squeeze(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "squeeze");
  int dim = lua_isnoneornil(L, 2) ? SERE_ALL_DIMS : sere_lua_dim(L, 2, "squeeze");
  return sere_lua_push(L, sere_squeeze(t, dim));
}

static int m_flatten(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "flatten");
  int s = lua_isnoneornil(L, 2) ? 0 : sere_lua_dim(L, 2, "flatten");
  int e = lua_isnoneornil(L, 3) ? -1 : sere_lua_dim(L, 3, "flatten");
  return sere_lua_push(L, sere_flatten(t, s, e));
}

static int m_contiguous(lua_State *L) { return sere_lua_push(L, sere_contiguous(sere_lua_check(L, 1, "contiguous"))); }
static int m_clone(lua_State *L) { return sere_lua_push(L, sere_clone(sere_lua_check(L, 1, "clone"))); }
static int m_detach(lua_State *L) { return sere_lua_push(L, sere_detach(sere_lua_check(L, 1, "detach"))); }

/* t:to(dtype) / t:to("cpu") / t:to("cuda"): a copy on the device or in the
 * dtype (t itself when nothing changes); differentiable. */
static int m_to(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "to");
  sere_device_type dev;
  if (sere_lua_device_name(L, 2, &dev)) return sere_lua_push(L, sere_to_device(t, dev));
  return sere_lua_push(L, sere_to_dtype(t, sere_lua_check_dtype(L, 2)));
}
static int m_cuda(lua_State *L) { return sere_lua_push(L, sere_to_device(sere_lua_check(L, 1, "cuda"), SERE_CUDA)); }
static int m_cpu(lua_State *L) { return sere_lua_push(L, sere_to_device(sere_lua_check(L, 1, "cpu"), SERE_CPU)); }

static int to_fixed(lua_State *L, sere_dtype d, const char *op) {
  return sere_lua_push(L, sere_to_dtype(sere_lua_check(L, 1, op), d));
}
static int m_float(lua_State *L) { return to_fixed(L, SERE_F32, "float"); }
static int m_bfloat16(lua_State *L) { return to_fixed(L, SERE_BF16, "bfloat16"); }
static int m_long(lua_State *L) { return to_fixed(L, SERE_I64, "long"); }
static int m_int(lua_State *L) { return to_fixed(L, SERE_I32, "int"); }
static int m_bool(lua_State *L) { return to_fixed(L, SERE_BOOL, "bool"); }
static int m_byte(lua_State *L) { return to_fixed(L, SERE_U8, "byte"); }

static int m_copy_(lua_State *L) {
  sere_tensor *dst = sere_lua_check(L, 1, "copy_"), *src = sere_lua_check(L, 2, "copy_");
  if (sere_copy_(dst, src)) return sere_lua_raise(L);
  lua_settop(L, 1);
  return 1;
}

/* ---- autograd -------------------------------------------------------- */
/* t:backward([grad][, {retain_graph = bool}]) */
static int m_backward(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "backward");
  sere_tensor *g = sere_lua_opt_tensor(L, 2);
  int opts = g ? 3 : 2;
  int retain = 0;
  if (lua_istable(L, opts)) {
    lua_getfield(L, opts, "retain_graph");
    retain = lua_toboolean(L, -1);
    lua_pop(L, 1);
  } else if (!g && !lua_isnoneornil(L, 2)) {
    return luaL_error(L, "backward: expected a gradient tensor or an options table, got %s", luaL_typename(L, 2));
  }
  if (sere_backward(t, g, retain)) return sere_lua_raise(L);
  return 0;
}

/* t:requires_grad_([on]) — sets the flag through t.requires_grad = on and returns t. */
static int m_requires_grad_(lua_State *L) {
  sere_lua_check(L, 1, "requires_grad_");
  int on = lua_isnone(L, 2) ? 1 : lua_toboolean(L, 2);
  lua_settop(L, 1);
  lua_pushliteral(L, "requires_grad");
  lua_pushboolean(L, on);
  t_newindex(L);
  lua_settop(L, 1);
  return 1;
}

static int m_zero_grad(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "zero_grad");
  sere_tensor_release(t->grad);
  t->grad = NULL;
  return 0;
}

static int l_set_grad_enabled(lua_State *L) {
  lua_pushboolean(L, sere_set_grad_enabled(lua_toboolean(L, 1)));
  return 1;
}

static int l_is_grad_enabled(lua_State *L) {
  lua_pushboolean(L, sere_grad_enabled());
  return 1;
}

static int l_is_tensor(lua_State *L) {
  lua_pushboolean(L, sere_lua_opt_tensor(L, 1) != NULL);
  return 1;
}

/* sere.clock(): monotonic wall-clock seconds, for benchmarks and progress lines. */
static int l_clock(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + ts.tv_nsec * 1e-9);
  return 1;
}

static int l_storage_bytes(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sere_storage_live_bytes());
  return 1;
}

void sere_lua_open_tensor(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"shape", m_shape}, {"size", m_shape}, {"stride", m_stride}, {"dim", m_dim}, {"numel", m_numel},
      {"dtype", m_dtype}, {"device", m_device}, {"is_contiguous", m_is_contiguous},
      {"storage_offset", m_storage_offset}, {"shares_storage", m_shares_storage}, {"item", m_item},
      {"totable", m_totable}, {"reshape", m_reshape}, {"view", m_view}, {"expand", m_expand},
      {"expand_as", m_expand_as}, {"transpose", m_transpose}, {"t", m_t}, {"permute", m_permute},
      {"narrow", m_narrow}, {"select", m_select}, {"unsqueeze", m_unsqueeze}, {"squeeze", m_squeeze},
      {"flatten", m_flatten}, {"contiguous", m_contiguous}, {"clone", m_clone}, {"detach", m_detach},
      {"to", m_to}, {"cuda", m_cuda}, {"cpu", m_cpu}, {"float", m_float}, {"bfloat16", m_bfloat16}, {"long", m_long}, {"int", m_int},
      {"bool", m_bool}, {"byte", m_byte}, {"copy_", m_copy_}, {"backward", m_backward},
      {"requires_grad_", m_requires_grad_}, {"zero_grad", m_zero_grad}, {NULL, NULL}};
  static const luaL_Reg functions[] = {
      {"set_grad_enabled", l_set_grad_enabled}, {"is_grad_enabled", l_is_grad_enabled},
      {"is_tensor", l_is_tensor}, {"storage_bytes", l_storage_bytes}, {"clock", l_clock},
      {"reshape", m_reshape}, {"transpose", m_transpose}, {"permute", m_permute}, {"narrow", m_narrow},
      {"select", m_select}, {"unsqueeze", m_unsqueeze}, {"squeeze", m_squeeze}, {"flatten", m_flatten},
      {"clone", m_clone}, {"detach", m_detach}, {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__gc", t_gc}, {"__index", t_index}, {"__newindex", t_newindex}, {"__len", t_len}, {NULL, NULL}};
  sere_lua_set_metamethods(L, meta);
  sere_lua_register(L, methods, functions);

}

/* The C module: require "sere.core". lua/sere/init.lua builds on it. */
int luaopen_sere_core(lua_State *L) {
  luaL_newmetatable(L, SERE_TENSOR_MT);
  lua_pushliteral(L, "Tensor");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, METHODS_KEY);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, MODULE_KEY);

  sere_lua_open_tensor(L);
  sere_lua_open_create(L);
  sere_lua_open_math(L);
  sere_lua_open_reduce(L);
  sere_lua_open_index(L);
  sere_lua_open_io(L);
  sere_lua_open_cuda(L);
  sere_lua_open_nn_norm(L);
  sere_lua_open_nn_act(L);
  sere_lua_open_nn_attention(L);
  sere_lua_open_nn_spatial(L);
  sere_lua_open_nn_loss(L);
  sere_lua_open_optim(L);
  sere_lua_open_image(L);
  sere_lua_open_augment(L);
  sere_lua_open_loader(L);
  sere_lua_open_autocast(L);

  /* expose the method table so Lua code can add methods (sere/init.lua) */
  lua_getfield(L, LUA_REGISTRYINDEX, METHODS_KEY);
  lua_setfield(L, -2, "Tensor");
  luaL_getmetatable(L, SERE_TENSOR_MT);
  lua_setfield(L, -2, "_tensor_mt");
  return 1;
}
