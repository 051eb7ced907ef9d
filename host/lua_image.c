/* lua_image.c — Lua bindings for image files and datasets:
 *   image_load(path[, hint]) -> u8 tensor [h, w, 3], scale denominator
 *   image_decode(bytes[, name[, hint]]) -> same, from a string in memory
 *   image_save_png(path, u8 tensor [h, w, 3])
 *   dataset_scan(root) / dataset_list(path) -> Dataset userdata
 * (the lead maps them into sere.image / sere.data in lua/sere/init.lua).
 * A hint is {crop = {w, h}, size = {w, h}} (see image_decode.h), or
 * {denom = d} to decode JPEGs at exactly 1/d (d = 1, 2, 4, 8).
 *
 * A Dataset keeps its paths in C (one arena); Lua sees ds.count,
 * ds.num_classes, ds.root, ds.classes (a table of names, built once),
 * ds:path(i), ds:label(i) (1-based; nil for an unlabelled list) and #ds, so a
 * million files never become a million Lua strings. */
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "image_decode.h"
#include "lua_tensor.h"

#define DATASET_MT "sere.Dataset"

/* Moves a decoded image into a new u8 tensor [h, w, 3] and pushes it. */
static int push_image(lua_State *L, sere_image *img, int denom) {
  int64_t shape[3] = {img->h, img->w, 3};
  sere_tensor *t = sere_tensor_new_uninit(SERE_U8, 3, shape);
  if (t) memcpy(sere_data(t), img->px, (size_t)img->w * img->h * 3);
  sere_image_free(img);
  sere_lua_push(L, t);
  lua_pushinteger(L, denom);
  return 2;
}

static int read_pair(lua_State *L, int idx, const char *field, const char *op, int *a, int *b) {
  lua_getfield(L, idx, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) luaL_error(L, "%s: hint.%s must be a table {w, h}", op, field);
  for (int i = 0; i < 2; i++) {
    lua_geti(L, -1 - i, i + 1);
    int ok;
    lua_Integer v = lua_tointegerx(L, -1, &ok);
    if (!ok || v <= 0 || v > SERE_IMAGE_MAX_SIDE)
      luaL_error(L, "%s: hint.%s[%d] must be an integer in [1, %d]", op, field, i + 1, SERE_IMAGE_MAX_SIDE);
    *(i ? b : a) = (int)v;
  }
  lua_pop(L, 3);
  return 1;
}

/* The optional hint table at idx: the scale denominator it asks for (1
 * when absent). */
static int opt_denom(lua_State *L, int idx, const char *op) {
  if (lua_isnoneornil(L, idx)) return 1;
  luaL_checktype(L, idx, LUA_TTABLE);
  sere_decode_hint hint;
  int has_crop = read_pair(L, idx, "crop", op, &hint.crop_w, &hint.crop_h);
  int has_size = read_pair(L, idx, "size", op, &hint.out_w, &hint.out_h);
  if (has_crop != has_size) luaL_error(L, "%s: a hint needs both crop = {w, h} and size = {w, h}", op);
  int type = lua_getfield(L, idx, "denom");
  lua_Integer d = lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (type == LUA_TNIL) return has_crop ? sere_decode_denom(&hint) : 1;
  if (has_crop) luaL_error(L, "%s: a hint has either denom or crop and size, not both", op);
  if (d != 1 && d != 2 && d != 4 && d != 8) luaL_error(L, "%s: hint.denom must be 1, 2, 4 or 8", op);
  return (int)d;
}

static int image_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int denom = opt_denom(L, 2, "image_load");
  uint8_t *data;
  size_t len;
  if (sere_file_read(path, &data, &len)) return sere_lua_raise(L);
  sere_image img;
  int rc = sere_image_decode_scaled(data, len, path, denom, &img, &denom);
  free(data);
  if (rc) return sere_lua_raise(L);
  return push_image(L, &img, denom);
}

static int image_decode(lua_State *L) {
  size_t len;
  const char *bytes = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "<bytes>");
  int denom = opt_denom(L, 3, "image_decode");
  sere_image img;
  if (sere_image_decode_scaled(bytes, len, name, denom, &img, &denom)) return sere_lua_raise(L);
  return push_image(L, &img, denom);
}

static int image_save_png(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  sere_tensor *t = sere_lua_check(L, 2, "image_save_png");
  char buf[128];
  if (t->dtype != SERE_U8 || t->ndim != 3 || t->shape[2] != 3 || t->storage->device != SERE_CPU)
    return luaL_error(L, "image_save_png: want a CPU u8 tensor [h, w, 3], got %s %s on %s",
                      sere_dtype_name(t->dtype), sere_shape_str(t, buf, sizeof buf),
                      t->storage->device == SERE_CPU ? "cpu" : "cuda");
  if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > SERE_IMAGE_MAX_SIDE || t->shape[1] > SERE_IMAGE_MAX_SIDE)
    return luaL_error(L, "image_save_png: image sides of %s must be in [1, %d]", sere_shape_str(t, buf, sizeof buf),
                      SERE_IMAGE_MAX_SIDE);
  sere_tensor *c = sere_contiguous_raw(t);
  if (!c) return sere_lua_raise(L);
  sere_image img = {(int)t->shape[1], (int)t->shape[0], sere_data(c)};
  int rc = sere_image_write_png(path, &img);
  sere_tensor_release(c);
  if (rc) return sere_lua_raise(L);
  return 0;
}

/* ---- datasets -------------------------------------------------------- */

static sere_dataset *check_dataset(lua_State *L, int idx) {
  sere_dataset **p = luaL_checkudata(L, idx, DATASET_MT);
  if (!*p) luaL_error(L, "dataset: already freed");
  return *p;
}

static int64_t check_index(lua_State *L, const sere_dataset *ds, int idx, const char *op) {
  lua_Integer i = luaL_checkinteger(L, idx);
  if (i < 1 || i > ds->count)
    luaL_error(L, "dataset:%s: index %I is out of range [1, %I]", op, i, (lua_Integer)ds->count);
  return (int64_t)i - 1;
}

/* Wraps a dataset (or raises the core error for NULL) in a userdata. */
static int push_dataset(lua_State *L, sere_dataset *ds) {
  if (!ds) return sere_lua_raise(L);
  sere_dataset **p = lua_newuserdatauv(L, sizeof *p, 1);
  *p = ds;
  luaL_setmetatable(L, DATASET_MT);
  return 1;
}

static int dataset_scan(lua_State *L) {
  const char *root = luaL_checkstring(L, 1);
  return push_dataset(L, sere_dataset_scan(root));
}

static int dataset_list(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  return push_dataset(L, sere_dataset_list(path));
}

static int ds_path(lua_State *L) {
  sere_dataset *ds = check_dataset(L, 1);
  int64_t i = check_index(L, ds, 2, "path");
  const char *rel = sere_dataset_rel_path(ds, i);
  if (rel[0] == '/') {
    lua_pushstring(L, rel);
  } else {
    lua_pushstring(L, ds->root);
    lua_pushliteral(L, "/");
    lua_pushstring(L, rel);
    lua_concat(L, 3);
  }
  return 1;
}

static int ds_label(lua_State *L) {
  sere_dataset *ds = check_dataset(L, 1);
  int64_t i = check_index(L, ds, 2, "label");
  if (ds->label[i] < 0) {
    lua_pushnil(L);
  } else {
    lua_pushinteger(L, (lua_Integer)ds->label[i] + 1);
  }
  return 1;
}

static int ds_class_counts(lua_State *L) {
  sere_dataset *ds = check_dataset(L, 1);
  lua_createtable(L, ds->nclasses, 0);
  for (int c = 0; c < ds->nclasses; c++) {
    lua_pushinteger(L, ds->class_count[c]);
    lua_rawseti(L, -2, c + 1);
  }
  return 1;
}

/* ds.classes: names in label order, built on first use and kept in the user value. */
static int push_classes(lua_State *L, sere_dataset *ds) {
  if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) return 1;
  lua_pop(L, 1);
  if (!ds->class_off) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, ds->nclasses, 0);
  for (int c = 0; c < ds->nclasses; c++) {
    lua_pushstring(L, sere_dataset_class_name(ds, c));
    lua_rawseti(L, -2, c + 1);
  }
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, 1, 1);
  return 1;
}

static int ds_index(lua_State *L) {
  sere_dataset *ds = check_dataset(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "count") == 0) {
    lua_pushinteger(L, ds->count);
  } else if (strcmp(key, "num_classes") == 0) {
    lua_pushinteger(L, ds->nclasses);
  } else if (strcmp(key, "root") == 0) {
    lua_pushstring(L, ds->root);
  } else if (strcmp(key, "classes") == 0) {
    push_classes(L, ds);
  } else {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1)); /* the method table */
  }
  return 1;
}

static int ds_len(lua_State *L) {
  lua_pushinteger(L, check_dataset(L, 1)->count);
  return 1;
}

static int ds_tostring(lua_State *L) {
  sere_dataset *ds = check_dataset(L, 1);
  lua_pushfstring(L, "Dataset(%I files, %d classes, root '%s')", (lua_Integer)ds->count, ds->nclasses, ds->root);
  return 1;
}

static int ds_gc(lua_State *L) {
  sere_dataset **p = luaL_checkudata(L, 1, DATASET_MT);
  sere_dataset_free(*p);
  *p = NULL;
  return 0;
}

void sere_lua_open_image(lua_State *L) {
  static const luaL_Reg functions[] = {
      {"image_load", image_load},     {"image_decode", image_decode}, {"image_save_png", image_save_png},
      {"dataset_scan", dataset_scan}, {"dataset_list", dataset_list}, {NULL, NULL}};
  static const luaL_Reg methods[] = {
      {"path", ds_path}, {"label", ds_label}, {"class_counts", ds_class_counts}, {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__len", ds_len}, {"__tostring", ds_tostring}, {"__gc", ds_gc}, {NULL, NULL}};
  luaL_newmetatable(L, DATASET_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_pushcclosure(L, ds_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  sere_lua_register(L, NULL, functions);
}
