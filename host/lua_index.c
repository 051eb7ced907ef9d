/* lua_index.c — Lua bindings of matrix products (matmul, mm, bmm) and of
 * joining, splitting and indexing (cat, stack, chunk, split, unbind,
 * index_select, gather, scatter_add, masked_select, nonzero).
 * Dims and positions are 1-based here, as are the values of index tensors:
 * the core gets 0-based dims and base = 1. */
#include <limits.h>

#include "lua_tensor.h"
#include "ops/ops.h"

#define SHAPE_BUF 160

static int l_matmul(lua_State *L) {
  return sere_lua_push(L, sere_matmul(sere_lua_check(L, 1, "matmul"), sere_lua_check(L, 2, "matmul")));
}

static int l_mm(lua_State *L) {
  sere_tensor *a = sere_lua_check(L, 1, "mm"), *b = sere_lua_check(L, 2, "mm");
  if (a->ndim != 2 || b->ndim != 2) {
    char x[SHAPE_BUF], y[SHAPE_BUF];
    return luaL_error(L, "mm: expects two 2-D tensors, got shapes %s and %s (matmul takes any dims)",
                      sere_shape_str(a, x, sizeof x), sere_shape_str(b, y, sizeof y));
  }
  return sere_lua_push(L, sere_matmul(a, b));
}

static int l_bmm(lua_State *L) {
  return sere_lua_push(L, sere_bmm(sere_lua_check(L, 1, "bmm"), sere_lua_check(L, 2, "bmm")));
}

/* The tensors of the table at idx, in a userdata left on the stack (so a
 * Lua error while reading them leaks nothing). */
static sere_tensor **tensor_list(lua_State *L, int idx, const char *op, int *n) {
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: argument #%d: expected a table of tensors, got %s", op, idx, luaL_typename(L, idx));
  lua_Integer len = luaL_len(L, idx);
  if (len < 1) luaL_error(L, "%s: expected a non-empty table of tensors", op);
  if (len > INT_MAX / (lua_Integer)sizeof(sere_tensor *)) luaL_error(L, "%s: too many tensors", op);
  sere_tensor **ts = lua_newuserdatauv(L, sizeof *ts * (size_t)len, 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_geti(L, idx, i);
    ts[i - 1] = sere_lua_opt_tensor(L, -1);
    if (!ts[i - 1]) luaL_error(L, "%s: element %d of the table is a %s, not a tensor", op, (int)i, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  *n = (int)len;
  return ts;
}

static int opt_dim(lua_State *L, int idx, const char *op) {
  return lua_isnoneornil(L, idx) ? 0 : sere_lua_dim(L, idx, op);
}

/* sere.cat({a, b, ...}[, dim]) */
static int l_cat(lua_State *L) {
  int n, dim = opt_dim(L, 2, "cat");
  sere_tensor **ts = tensor_list(L, 1, "cat", &n);
  return sere_lua_push(L, sere_cat(n, ts, dim));
}

/* sere.stack({a, b, ...}[, dim]) */
static int l_stack(lua_State *L) {
  int n, dim = opt_dim(L, 2, "stack");
  sere_tensor **ts = tensor_list(L, 1, "stack", &n);
  return sere_lua_push(L, sere_stack(n, ts, dim));
}

/* Core dim of t for splitting ops, raising a Lua error when invalid. */
static int split_dim(lua_State *L, const sere_tensor *t, int idx, const char *op) {
  int d, dim = opt_dim(L, idx, op);
  if (t->ndim == 0) return luaL_error(L, "%s: cannot split a 0-dim tensor", op);
  if (sere_wrap_dim(dim, t->ndim, op, &d)) return sere_lua_raise(L);
  return d;
}

/* Pushes a table of consecutive narrow views of t along d with the given sizes. */
static int push_pieces(lua_State *L, sere_tensor *t, int d, int64_t count, int64_t step, const int64_t *sizes) {
  lua_createtable(L, (int)count, 0);
  int64_t start = 0;
  for (int64_t i = 0; i < count; i++) {
    int64_t len = sizes ? sizes[i] : (t->shape[d] - start < step ? t->shape[d] - start : step);
    sere_lua_push(L, sere_narrow(t, d, start, len));
    lua_rawseti(L, -2, i + 1);
    start += len;
  }
  return 1;
}

/* t:chunk(n[, dim]) — pieces of ceil(size / n) along dim (fewer than n when
 * that divides evenly sooner), as in PyTorch. */
static int m_chunk(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "chunk");
  lua_Integer chunks = luaL_checkinteger(L, 2);
  if (chunks < 1) return luaL_error(L, "chunk: number of chunks must be at least 1, got %I", chunks);
  int d = split_dim(L, t, 3, "chunk");
  int64_t size = t->shape[d];
  if (size == 0) return push_pieces(L, t, d, chunks, 0, NULL);
  int64_t step = (size + chunks - 1) / chunks;
  return push_pieces(L, t, d, (size + step - 1) / step, step, NULL);
}

/* t:split(size[, dim]) — pieces of `size` (the last may be smaller);
 * t:split({s1, s2, ...}[, dim]) — pieces of exactly these sizes. */
static int m_split(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "split");
  int d = split_dim(L, t, 3, "split");
  int64_t size = t->shape[d];
  if (lua_istable(L, 2)) {
    lua_Integer count = luaL_len(L, 2), total = 0;
    if (count < 1) return luaL_error(L, "split: the table of sizes is empty");
    if (count > INT_MAX / (lua_Integer)sizeof(int64_t)) return luaL_error(L, "split: too many sizes");
    int64_t *sizes = lua_newuserdatauv(L, sizeof(int64_t) * (size_t)count, 0);
    for (lua_Integer i = 1; i <= count; i++) {
      lua_geti(L, 2, i);
      int isint;
      lua_Integer v = lua_tointegerx(L, -1, &isint);
      if (!isint || v < 0) return luaL_error(L, "split: sizes must be integers >= 0 (entry %I)", i);
      sizes[i - 1] = v;
      total += v;
      lua_pop(L, 1);
    }
    if (total != size)
      return luaL_error(L, "split: sizes sum to %I but dim %d has size %I", total, d + 1, (lua_Integer)size);
    return push_pieces(L, t, d, count, 0, sizes);
  }
  lua_Integer step = luaL_checkinteger(L, 2);
  if (step < 1 && !(step == 0 && size == 0))
    return luaL_error(L, "split: split size must be at least 1, got %I", step);
  if (size == 0) return push_pieces(L, t, d, 1, 0, NULL);
  return push_pieces(L, t, d, (size + step - 1) / step, step, NULL);
}

/* t:unbind([dim]) — the slices along dim (each without that dim). */
static int m_unbind(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "unbind");
  int d = split_dim(L, t, 2, "unbind");
  lua_createtable(L, (int)t->shape[d], 0);
  for (int64_t i = 0; i < t->shape[d]; i++) {
    sere_lua_push(L, sere_select(t, d, i));
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int m_index_select(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "index_select");
  int dim = sere_lua_dim(L, 2, "index_select");
  return sere_lua_push(L, sere_index_select(t, dim, sere_lua_check(L, 3, "index_select"), 1));
}

static int m_gather(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "gather");
  int dim = sere_lua_dim(L, 2, "gather");
  return sere_lua_push(L, sere_gather(t, dim, sere_lua_check(L, 3, "gather"), 1));
}

static int m_scatter_add(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "scatter_add");
  int dim = sere_lua_dim(L, 2, "scatter_add");
  sere_tensor *index = sere_lua_check(L, 3, "scatter_add"), *src = sere_lua_check(L, 4, "scatter_add");
  return sere_lua_push(L, sere_scatter_add(t, dim, index, src, 1));
}

static int m_masked_select(lua_State *L) {
  sere_tensor *t = sere_lua_check(L, 1, "masked_select");
  return sere_lua_push(L, sere_masked_select(t, sere_lua_check(L, 2, "masked_select")));
}

static int m_nonzero(lua_State *L) { return sere_lua_push(L, sere_nonzero(sere_lua_check(L, 1, "nonzero"), 1)); }

void sere_lua_open_index(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"matmul", l_matmul}, {"mm", l_mm}, {"bmm", l_bmm}, {"chunk", m_chunk}, {"split", m_split},
      {"unbind", m_unbind}, {"index_select", m_index_select}, {"gather", m_gather},
      {"scatter_add", m_scatter_add}, {"masked_select", m_masked_select}, {"nonzero", m_nonzero},
      {NULL, NULL}};
  static const luaL_Reg functions[] = {
      {"matmul", l_matmul}, {"mm", l_mm}, {"bmm", l_bmm}, {"cat", l_cat}, {"stack", l_stack},
      {"chunk", m_chunk}, {"split", m_split}, {"unbind", m_unbind}, {"index_select", m_index_select},
      {"gather", m_gather}, {"scatter_add", m_scatter_add}, {"masked_select", m_masked_select},
      {"nonzero", m_nonzero}, {NULL, NULL}};
  sere_lua_register(L, methods, functions);
}
