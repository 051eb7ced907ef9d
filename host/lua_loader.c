/* lua_loader.c — Lua bindings of the multi-crop sample and the threaded
 * loader (loader.h). lua/sere/data.lua builds on these:
 *   loader_new(dataset, pipeline, opts) -> Loader userdata
 *     loader:start(epoch[, start_batch]), loader:next() -> batch table or nil,
 *     loader:close(), loader:num_batches(), loader:indices(epoch),
 *     loader:bad_count()
 *   loader_sample(dataset, index, epoch, seed, pipeline) -> batch of 1
 * Indices, labels and start_batch are 1-based here (start_batch = 1, the
 * default, is the whole epoch); epochs and seeds are plain integers. */
#include <string.h>
#include <unistd.h>

#include "loader.h"
#include "lua_augment.h"
#include "lua_tensor.h"

#define LOADER_MT "sere.Loader"
#define DATASET_MT "sere.Dataset" /* lua_image.c's dataset userdata: a sere_dataset* */

typedef struct lua_loader {
  sere_loader *ld;
} lua_loader;

static const sere_dataset *check_dataset(lua_State *L, int idx, const char *op) {
  sere_dataset **p = luaL_testudata(L, idx, DATASET_MT);
  if (!p) luaL_error(L, "%s: argument #%d must be a Dataset (sere.dataset_scan / dataset_list)", op, idx);
  if (!*p) luaL_error(L, "%s: the dataset was already freed", op);
  return *p;
}

static int field_int(lua_State *L, int t, const char *key, lua_Integer def, lua_Integer lo, lua_Integer hi,
                     const char *op) {
  int type = lua_getfield(L, t, key);
  if (type != LUA_TNIL && !lua_isinteger(L, -1)) luaL_error(L, "%s: field '%s' must be an integer", op, key);
  lua_Integer v = type == LUA_TNIL ? def : lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (v < lo || v > hi) luaL_error(L, "%s: field '%s' = %I is not in [%I, %I]", op, key, v, lo, hi);
  return (int)v;
}

/* t[key] as a list of 1..max numbers (a single number counts as a list of
 * one); returns the count, 0 when absent. */
static int field_list(lua_State *L, int t, const char *key, double *out, int max, const char *op) {
  int type = lua_getfield(L, t, key), n = 1;
  if (type == LUA_TNIL) {
    n = 0;
  } else if (type == LUA_TNUMBER) {
    out[0] = lua_tonumber(L, -1);
  } else if (type == LUA_TTABLE) {
    n = (int)luaL_len(L, -1);
    if (n < 1 || n > max) luaL_error(L, "%s: field '%s' must list 1 to %d numbers, got %d", op, key, max, n);
    for (int i = 0; i < n; i++) {
      if (lua_geti(L, -1, i + 1) != LUA_TNUMBER) luaL_error(L, "%s: field '%s' must hold numbers", op, key);
      out[i] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
  } else {
    luaL_error(L, "%s: field '%s' must be a number or a list of numbers", op, key);
  }
  lua_pop(L, 1);
  return n;
}

/* The crops listed in pipeline[key] into out; returns their count. */
static int check_crops(lua_State *L, int t, const char *key, sere_crop_recipe *out, int max, const char *op) {
  int type = lua_getfield(L, t, key), n = 0;
  if (type == LUA_TTABLE) {
    n = (int)luaL_len(L, -1);
    if (n > max) luaL_error(L, "%s: at most %d %s crops, got %d", op, max, key, n);
    for (int i = 0; i < n; i++) {
      lua_geti(L, -1, i + 1);
      out[i] = sere_lua_check_crop_recipe(L, lua_gettop(L), op);
      lua_pop(L, 1);
    }
  } else if (type != LUA_TNIL) {
    luaL_error(L, "%s: pipeline.%s must be a list of crop recipes", op, key);
  }
  lua_pop(L, 1);
  return n;
}

/* The pipeline table built by sere.data.multicrop_recipe. */
static void check_pipeline(lua_State *L, int t, sere_pipeline *p, const char *op) {
  luaL_checktype(L, t, LUA_TTABLE);
  memset(p, 0, sizeof *p);
  p->n_global = check_crops(L, t, "global", p->global, SERE_MAX_GLOBAL, op);
  p->n_local = check_crops(L, t, "local", p->local, SERE_MAX_LOCAL, op);
  if (p->n_global < 1) luaL_error(L, "%s: pipeline.global must list at least one crop", op);
  double ov[2], mean[3] = {0.485, 0.456, 0.406}, std[3] = {0.229, 0.224, 0.225};
  if (field_list(L, t, "overlap_size", ov, 2, op) != 2) luaL_error(L, "%s: overlap_size must be {S0, S1}", op);
  p->overlap[0] = (int)ov[0];
  p->overlap[1] = (int)ov[1];
  p->lg_size = field_int(L, t, "lg_size", 6, 2, 1024, op);
  p->patch = field_int(L, t, "patch_size", 16, 1, 4096, op);
  int nm = field_list(L, t, "mean", mean, 3, op), ns = field_list(L, t, "std", std, 3, op);
  if ((nm && nm != 3) || (ns && ns != 3)) luaL_error(L, "%s: mean and std must list 3 numbers", op);
  for (int c = 0; c < 3; c++) {
    p->mean[c] = (float)mean[c];
    p->std[c] = (float)std[c];
  }
  p->mask_n = field_list(L, t, "pred_ratio", p->mask_mean, 16, op);
  int nv = field_list(L, t, "pred_ratio_var", p->mask_var, 16, op);
  if (nv && nv != p->mask_n) luaL_error(L, "%s: pred_ratio and pred_ratio_var differ in length", op);
  lua_getfield(L, t, "pred_shape");
  static const char *const shapes[] = {"block", "rand", NULL};
  p->mask_rand = luaL_checkoption(L, -1, "block", shapes);
  lua_pop(L, 1);
  p->mask_start_epoch = field_int(L, t, "pred_start_epoch", 0, 0, 1 << 30, op);
  int type = lua_getfield(L, t, "dct_scaling");
  if (type != LUA_TNIL && type != LUA_TBOOLEAN) luaL_error(L, "%s: pipeline.dct_scaling must be a boolean", op);
  p->dct_scaling = type == LUA_TNIL || lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (sere_pipeline_check(p)) sere_lua_raise(L);
}

/* Pushes a batch's tensors as a table (stealing the references). */
static void push_batch(lua_State *L, sere_batch *bt, int n_local) {
  sere_tensor *t[9] = {bt->global,  bt->local,     bt->masks,    bt->gg_rows, bt->gg_cols,
                       bt->lg_local, bt->lg_global, bt->mappings, bt->labels};
  static const char *const names[9] = {"global_crops",   "local_crops",     "masks",    "grids_gg_rows", "grids_gg_cols",
                                       "grids_lg_local", "grids_lg_global", "mappings", "labels"};
  memset(bt, 0, sizeof *bt);
  lua_createtable(L, 0, 9);
  for (int i = 0; i < 9; i++) {
    if (n_local == 0 && (i == 1 || i == 5 || i == 6)) {
      sere_tensor_release(t[i]);
      continue;
    }
    sere_lua_push(L, t[i]);
    lua_setfield(L, -2, names[i]);
  }
}

static lua_loader *check_loader(lua_State *L, int idx, const char *op) {
  lua_loader *u = luaL_checkudata(L, idx, LOADER_MT);
  if (!u->ld) luaL_error(L, "loader:%s: the loader is closed", op);
  return u;
}

static uint64_t check_u64(lua_State *L, int idx, const char *op, const char *what) {
  lua_Integer v = luaL_checkinteger(L, idx);
  if (v < 0) luaL_error(L, "%s: %s must be >= 0, got %I", op, what, v);
  return (uint64_t)v;
}

/* sere.loader_new(dataset, pipeline, opts) */
static int l_loader_new(lua_State *L) {
  const char *op = "loader_new";
  lua_settop(L, 3);
  const sere_dataset *ds = check_dataset(L, 1, op);
  sere_pipeline p;
  check_pipeline(L, 2, &p, op);
  luaL_checktype(L, 3, LUA_TTABLE);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  sere_loader_opts o;
  o.batch_size = field_int(L, 3, "batch_size", 0, 1, 1 << 24, op);
  o.threads = field_int(L, 3, "threads", cores > 0 ? cores : 1, 1, 1024, op);
  o.depth = field_int(L, 3, "prefetch", 2, 1, 64, op);
  o.world_size = field_int(L, 3, "world_size", 1, 1, 1 << 20, op);
  o.rank = field_int(L, 3, "rank", 0, 0, o.world_size - 1, op);
  lua_getfield(L, 3, "seed");
  o.seed = lua_isnil(L, -1) ? 0 : check_u64(L, -1, op, "seed");
  lua_pop(L, 1);
  lua_getfield(L, 3, "drop_last");
  o.drop_last = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_getfield(L, 3, "shuffle");
  o.shuffle = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 2);
  lua_loader *u = lua_newuserdatauv(L, sizeof *u, 2);
  u->ld = NULL;
  luaL_setmetatable(L, LOADER_MT);
  lua_pushvalue(L, 1); /* keeps the dataset alive */
  lua_setiuservalue(L, -2, 1);
  lua_pushinteger(L, p.n_local);
  lua_setiuservalue(L, -2, 2);
  u->ld = sere_loader_new(ds, &p, &o);
  if (!u->ld) return sere_lua_raise(L);
  return 1;
}

/* loader:start(epoch[, start_batch]): start_batch is 1-based, 1 .. num_batches + 1 */
static int l_start(lua_State *L) {
  lua_loader *u = check_loader(L, 1, "start");
  uint64_t epoch = check_u64(L, 2, "loader:start", "epoch");
  lua_Integer first = luaL_optinteger(L, 3, 1), n = sere_loader_num_batches(u->ld);
  if (first < 1 || first > n + 1)
    return luaL_error(L, "loader:start: start_batch %I is not in [1, %I] (%I batches per epoch, or one past the last)",
                      first, n + 1, n);
  if (sere_loader_start(u->ld, epoch, first - 1)) return sere_lua_raise(L);
  return 0;
}

static int l_next(lua_State *L) {
  lua_loader *u = check_loader(L, 1, "next");
  sere_batch bt;
  int rc = sere_loader_next(u->ld, &bt);
  if (rc < 0) return sere_lua_raise(L);
  if (rc == 0) return 0;
  lua_getiuservalue(L, 1, 2);
  int n_local = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  push_batch(L, &bt, n_local);
  return 1;
}

static int l_close(lua_State *L) {
  lua_loader *u = luaL_checkudata(L, 1, LOADER_MT);
  sere_loader_free(u->ld);
  u->ld = NULL;
  return 0;
}

static int l_num_batches(lua_State *L) {
  lua_pushinteger(L, sere_loader_num_batches(check_loader(L, 1, "num_batches")->ld));
  return 1;
}

static int l_bad_count(lua_State *L) {
  lua_pushinteger(L, sere_loader_bad_count(check_loader(L, 1, "bad_count")->ld));
  return 1;
}

/* loader:indices(epoch) -> this rank's 1-based sample indices (before drop_last) */
static int l_indices(lua_State *L) {
  lua_loader *u = check_loader(L, 1, "indices");
  uint64_t epoch = check_u64(L, 2, "loader:indices", "epoch");
  int64_t n = sere_loader_indices(u->ld, epoch, NULL);
  int64_t *idx = lua_newuserdatauv(L, (size_t)n * sizeof *idx, 0);
  if (sere_loader_indices(u->ld, epoch, idx) < 0) return sere_lua_raise(L);
  lua_createtable(L, (int)n, 0);
  for (int64_t i = 0; i < n; i++) {
    lua_pushinteger(L, idx[i] + 1);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

/* sere.loader_sample(dataset, index, epoch, seed, pipeline) -> batch of one sample */
static int l_sample(lua_State *L) {
  const char *op = "loader_sample";
  lua_settop(L, 5);
  const sere_dataset *ds = check_dataset(L, 1, op);
  lua_Integer index = luaL_checkinteger(L, 2);
  if (index < 1 || index > ds->count) return luaL_error(L, "%s: index %I is out of range [1, %I]", op, index, (lua_Integer)ds->count);
  uint64_t epoch = check_u64(L, 3, op, "epoch"), seed = check_u64(L, 4, op, "seed");
  sere_pipeline p;
  check_pipeline(L, 5, &p, op);
  sere_batch bt;
  if (sere_batch_alloc(&bt, &p, 1)) return sere_lua_raise(L);
  sere_badset *bad = sere_badset_new(ds->count);
  sere_sample_scratch ws = {0};
  int rc = bad ? sere_sample_make(ds, index - 1, epoch, seed, &p, bad, &ws, &bt, 0) : -1;
  sere_sample_scratch_free(&ws);
  sere_badset_free(bad);
  if (rc) {
    sere_batch_free(&bt);
    return sere_lua_raise(L);
  }
  push_batch(L, &bt, p.n_local);
  return 1;
}

void sere_lua_open_loader(lua_State *L) {
  static const luaL_Reg functions[] = {{"loader_new", l_loader_new}, {"loader_sample", l_sample}, {NULL, NULL}};
  static const luaL_Reg methods[] = {{"start", l_start},       {"next", l_next},          {"close", l_close},
                                     {"num_batches", l_num_batches}, {"bad_count", l_bad_count}, {"indices", l_indices},
                                     {NULL, NULL}};
  luaL_newmetatable(L, LOADER_MT);
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__close");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  sere_lua_register(L, NULL, functions);
}
