/* lua_augment.c — the Lua surface of the image augmentations, crop and mask
 * sampling and overlap grids (ops/augment.h): sere.augment_* functions on
 * u8 image tensors [h, w, 3]. Each image function returns a new tensor and
 * leaves its input alone. Crop boxes are (x, y, w, h) pixel offsets from
 * the top-left corner, 0-based like the method's crop mappings (they are
 * coordinates, not Lua indices).
 *
 * Random functions take either a sere.Generator (numbers drawn from its
 * (seed, offset) stream with the counter's high half all ones; its offset
 * advances past the blocks used) or a table {seed=, epoch=, sample=,
 * crop=} naming the per-crop stream the data loader uses. */
#include <string.h>

#include "lua_augment.h"
#include "lua_tensor.h"
#include "ops/augment.h"
#include "ops/ops.h"

#define GENERATOR_MT "sere.Generator"

/* The image at idx as a contiguous CPU u8 [h, w, 3] tensor, kept alive on
 * the Lua stack (pushed at the top) so an error cannot leak it. Callers
 * first set the stack to their argument count, so the pushed values never
 * sit where an omitted argument is looked for. */
static sere_image check_image(lua_State *L, int idx, const char *op) {
  sere_tensor *t = sere_lua_check(L, idx, op);
  char buf[96];
  if (t->dtype != SERE_U8 || t->ndim != 3 || t->shape[2] != 3)
    luaL_error(L, "%s: expected a u8 image tensor [h, w, 3], got %s %s", op, sere_dtype_name(t->dtype),
               sere_shape_str(t, buf, sizeof buf));
  if (t->storage->device != SERE_CPU) luaL_error(L, "%s: the image must be on the CPU", op);
  if (t->shape[0] < 1 || t->shape[1] < 1 || t->shape[0] > SERE_IMAGE_MAX_SIDE || t->shape[1] > SERE_IMAGE_MAX_SIDE)
    luaL_error(L, "%s: image size %s must be between 1 and %d per side", op, sere_shape_str(t, buf, sizeof buf),
               SERE_IMAGE_MAX_SIDE);
  sere_tensor *c = sere_contiguous_raw(t);
  sere_lua_push(L, c);
  return (sere_image){(int)c->shape[1], (int)c->shape[0], sere_data(c)};
}

/* A new u8 image tensor [h, w, 3] pushed on the stack. */
static sere_image push_image(lua_State *L, int w, int h) {
  int64_t shape[3] = {h, w, 3};
  sere_tensor *t = sere_tensor_new_uninit(SERE_U8, 3, shape);
  sere_lua_push(L, t);
  return (sere_image){w, h, sere_data(t)};
}

static sere_image push_copy(lua_State *L, sere_image src) {
  sere_image out = push_image(L, src.w, src.h);
  memcpy(out.px, src.px, 3 * (size_t)src.w * src.h);
  return out;
}

static lua_Integer check_int(lua_State *L, int idx, const char *op, const char *what, lua_Integer lo, lua_Integer hi) {
  if (!lua_isinteger(L, idx))
    luaL_error(L, "%s: %s must be an integer, got %s", op, what, luaL_typename(L, idx));
  lua_Integer v = lua_tointeger(L, idx);
  if (v < lo || v > hi) luaL_error(L, "%s: %s must be in [%I, %I], got %I", op, what, lo, hi, v);
  return v;
}

static double check_num(lua_State *L, int idx, const char *op, const char *what) {
  if (lua_type(L, idx) != LUA_TNUMBER) luaL_error(L, "%s: %s must be a number, got %s", op, what, luaL_typename(L, idx));
  return lua_tonumber(L, idx);
}

static double field_num(lua_State *L, int t, const char *key, double def, const char *op) {
  double v = def;
  int type = lua_getfield(L, t, key);
  if (type == LUA_TNUMBER) v = lua_tonumber(L, -1);
  else if (type != LUA_TNIL) luaL_error(L, "%s: field '%s' must be a number, got %s", op, key, lua_typename(L, type));
  lua_pop(L, 1);
  return v;
}

/* Random stream for argument idx (see the file comment). */
typedef struct {
  sere_rng rng;
  sere_generator *gen; /* advanced by finish_rng when not NULL */
} lua_rng;

static lua_rng check_rng(lua_State *L, int idx, const char *op) {
  lua_rng r = {{0}, NULL};
  if (lua_istable(L, idx)) {
    double f[4];
    const char *keys[4] = {"seed", "epoch", "sample", "crop"};
    for (int i = 0; i < 4; i++) {
      f[i] = field_num(L, idx, keys[i], i == 0 ? -1 : 0, op);
      if (f[i] < 0 || f[i] != (double)(int64_t)f[i])
        luaL_error(L, "%s: stream table needs a non-negative integer '%s'", op, keys[i]);
    }
    sere_rng_for_crop(&r.rng, (uint64_t)f[0], (uint64_t)f[1], (uint64_t)f[2], (uint32_t)f[3]);
    return r;
  }
  sere_generator *g = luaL_testudata(L, idx, GENERATOR_MT);
  if (!g)
    luaL_error(L, "%s: argument #%d: expected a sere.Generator or a {seed, epoch, sample, crop} table, got %s", op,
               idx, luaL_typename(L, idx));
  sere_rng_init(&r.rng, g->seed, UINT64_MAX, g->offset);
  r.gen = g;
  return r;
}

static void finish_rng(lua_rng *r) {
  if (r->gen) r->gen->offset = r->rng.next_block;
}

/* sere.augment_resize(img, box_or_nil, out_w, out_h[, denom]): with denom
 * d > 1, img holds an image decoded at 1/d of its size (sere.image_load with
 * a hint) and box is in full-resolution pixels (see sere_resize_bicubic). */
static int l_resize(lua_State *L) {
  lua_settop(L, 5);
  const char *op = "augment_resize";
  int denom = lua_isnil(L, 5) ? 1 : (int)check_int(L, 5, op, "denom", 1, 8);
  if (denom & (denom - 1)) return luaL_error(L, "%s: denom must be 1, 2, 4 or 8, got %d", op, denom);
  sere_image src = check_image(L, 1, op);
  sere_box box = {0, 0, src.w * denom, src.h * denom};
  if (!lua_isnil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    int *v[4] = {&box.x, &box.y, &box.w, &box.h};
    for (int i = 0; i < 4; i++) {
      lua_geti(L, 2, i + 1);
      *v[i] = (int)check_int(L, -1, op, "box entries {x, y, w, h}", 0, SERE_IMAGE_MAX_SIDE);
      lua_pop(L, 1);
    }
  }
  int ow = (int)check_int(L, 3, op, "out_w", 1, SERE_IMAGE_MAX_SIDE);
  int oh = (int)check_int(L, 4, op, "out_h", 1, SERE_IMAGE_MAX_SIDE);
  if (box.w < 1 || box.h < 1 || box.x + box.w > src.w * denom || box.y + box.h > src.h * denom)
    return luaL_error(L, "%s: box {x=%d, y=%d, w=%d, h=%d} is not inside the %dx%d (w x h) image", op, box.x, box.y,
                      box.w, box.h, src.w * denom, src.h * denom);
  sere_image out = push_image(L, ow, oh);
  sere_scratch ws = {0};
  sere_crop_source source = {src, denom, NULL};
  int rc = sere_resize_bicubic(&source, box, ow, oh, 0, &ws, out.px);
  sere_scratch_free(&ws);
  if (rc) return sere_lua_raise(L);
  return 1;
}

/* A copy of the image at 1 with an in-place op applied. */
static int copy_and_apply(lua_State *L, const char *op, void (*apply)(sere_image *)) {
  lua_settop(L, 1);
  sere_image out = push_copy(L, check_image(L, 1, op));
  apply(&out);
  return 1;
}

static int l_hflip(lua_State *L) { return copy_and_apply(L, "augment_hflip", sere_hflip); }
static int l_grayscale(lua_State *L) { return copy_and_apply(L, "augment_grayscale", sere_grayscale); }
static int l_solarize(lua_State *L) { return copy_and_apply(L, "augment_solarize", sere_solarize); }

static int l_blur(lua_State *L) {
  lua_settop(L, 2);
  sere_image src = check_image(L, 1, "augment_blur");
  double sigma = check_num(L, 2, "augment_blur", "sigma");
  if (!(sigma >= 0 && sigma <= 1e4)) return luaL_error(L, "augment_blur: sigma must be in [0, 1e4], got %f", sigma);
  sere_image out = push_copy(L, src);
  sere_scratch ws = {0};
  int rc = sere_gaussian_blur(&out, sigma, &ws);
  sere_scratch_free(&ws);
  if (rc) return sere_lua_raise(L);
  return 1;
}

static const char *const color_ops[] = {"brightness", "contrast", "saturation", "hue", NULL};

/* sere.augment_color(img, "brightness" | "contrast" | "saturation" | "hue", factor) */
static int l_color(lua_State *L) {
  lua_settop(L, 3);
  sere_image src = check_image(L, 1, "augment_color");
  int op = luaL_checkoption(L, 2, NULL, color_ops);
  double f = check_num(L, 3, "augment_color", "factor");
  sere_image out = push_copy(L, src);
  if (sere_color_adjust(&out, (sere_jitter_op)op, f)) return sere_lua_raise(L);
  return 1;
}

static void opt_triple(lua_State *L, int idx, const float def[3], float out[3], const char *what) {
  if (lua_isnoneornil(L, idx)) {
    memcpy(out, def, 3 * sizeof(float));
    return;
  }
  luaL_checktype(L, idx, LUA_TTABLE);
  for (int c = 0; c < 3; c++) {
    lua_geti(L, idx, c + 1);
    out[c] = (float)check_num(L, -1, "augment_normalize", what);
    lua_pop(L, 1);
  }
}

/* sere.augment_normalize(img[, mean, std[, out]]) -> f32 [3, h, w]; `out`,
 * when given, is a contiguous f32 [3, h, w] tensor (e.g. batch[i]) that
 * receives the result and is returned. */
static int l_normalize(lua_State *L) {
  lua_settop(L, 4);
  static const float imagenet_mean[3] = {0.485f, 0.456f, 0.406f}, imagenet_std[3] = {0.229f, 0.224f, 0.225f};
  const char *op = "augment_normalize";
  sere_tensor *dst = lua_isnoneornil(L, 4) ? NULL : sere_lua_check(L, 4, op);
  sere_image src = check_image(L, 1, op);
  float mean[3], std[3];
  opt_triple(L, 2, imagenet_mean, mean, "mean entries");
  opt_triple(L, 3, imagenet_std, std, "std entries");
  for (int c = 0; c < 3; c++)
    if (std[c] == 0) return luaL_error(L, "%s: std entries must be non-zero", op);
  int64_t shape[3] = {3, src.h, src.w};
  if (dst) {
    char a[96], b[96];
    if (dst->dtype != SERE_F32 || dst->ndim != 3 || dst->shape[0] != 3 || dst->shape[1] != src.h ||
        dst->shape[2] != src.w || !sere_is_contiguous(dst) || dst->storage->device != SERE_CPU)
      return luaL_error(L, "%s: out must be a contiguous CPU f32 tensor %s, got %s %s", op,
                        sere_shape_str_raw(3, shape, a, sizeof a), sere_dtype_name(dst->dtype),
                        sere_shape_str(dst, b, sizeof b));
    if (sere_check_inplace(dst, op)) return sere_lua_raise(L);
    sere_normalize_to_chw(&src, mean, std, sere_data(dst));
    sere_bump_version(dst);
    lua_pushvalue(L, 4);
    return 1;
  }
  sere_tensor *t = sere_tensor_new_uninit(SERE_F32, 3, shape);
  sere_lua_push(L, t);
  sere_normalize_to_chw(&src, mean, std, sere_data(t));
  return 1;
}

static void check_scale(lua_State *L, double lo, double hi, const char *op) {
  if (!(lo > 0 && lo <= hi && hi <= 1)) luaL_error(L, "%s: scale range must satisfy 0 < min <= max <= 1, got (%f, %f)", op, lo, hi);
}

/* sere.augment_sample_crop(w, h, scale_min, scale_max, rng) -> x, y, cw, ch */
static int l_sample_crop(lua_State *L) {
  const char *op = "augment_sample_crop";
  int w = (int)check_int(L, 1, op, "w", 1, SERE_IMAGE_MAX_SIDE), h = (int)check_int(L, 2, op, "h", 1, SERE_IMAGE_MAX_SIDE);
  double lo = check_num(L, 3, op, "scale_min"), hi = check_num(L, 4, op, "scale_max");
  check_scale(L, lo, hi, op);
  lua_rng r = check_rng(L, 5, op);
  sere_box b = sere_sample_crop_box(w, h, lo, hi, &r.rng);
  finish_rng(&r);
  lua_pushinteger(L, b.x);
  lua_pushinteger(L, b.y);
  lua_pushinteger(L, b.w);
  lua_pushinteger(L, b.h);
  return 4;
}

/* Recipe table -> struct; missing fields take the method's local-crop
 * values except scale and size, which are required. Shared with the
 * loader's bindings (lua_augment.h). */
sere_crop_recipe sere_lua_check_crop_recipe(lua_State *L, int idx, const char *op) {
  luaL_checktype(L, idx, LUA_TTABLE);
  sere_crop_recipe rc;
  double size = field_num(L, idx, "size", 0, op);
  if (size < 1 || size > 4096 || size != (int)size) luaL_error(L, "%s: recipe.size must be an integer in [1, 4096]", op);
  rc.size = (int)size;
  if (lua_getfield(L, idx, "scale") != LUA_TTABLE) luaL_error(L, "%s: recipe.scale must be a table {min, max}", op);
  lua_geti(L, -1, 1);
  lua_geti(L, -2, 2);
  rc.scale_min = check_num(L, -2, op, "recipe.scale[1]");
  rc.scale_max = check_num(L, -1, op, "recipe.scale[2]");
  lua_pop(L, 3);
  check_scale(L, rc.scale_min, rc.scale_max, op);
  rc.p_flip = field_num(L, idx, "p_flip", 0.5, op);
  rc.p_jitter = field_num(L, idx, "p_jitter", 0.8, op);
  rc.brightness = field_num(L, idx, "brightness", 0.4, op);
  rc.contrast = field_num(L, idx, "contrast", 0.4, op);
  rc.saturation = field_num(L, idx, "saturation", 0.2, op);
  rc.hue = field_num(L, idx, "hue", 0.1, op);
  rc.p_gray = field_num(L, idx, "p_gray", 0.2, op);
  rc.p_blur = field_num(L, idx, "p_blur", 0.5, op);
  rc.sigma_min = field_num(L, idx, "sigma_min", 0.1, op);
  rc.sigma_max = field_num(L, idx, "sigma_max", 2.0, op);
  rc.p_solarize = field_num(L, idx, "p_solarize", 0, op);
  if (!(rc.brightness >= 0 && rc.brightness <= 1 && rc.contrast >= 0 && rc.contrast <= 1 && rc.saturation >= 0 &&
        rc.saturation <= 1 && rc.hue >= 0 && rc.hue <= 0.5))
    luaL_error(L, "%s: jitter strengths must be in [0, 1] (hue [0, 0.5])", op);
  if (!(rc.sigma_min >= 0 && rc.sigma_min <= rc.sigma_max && rc.sigma_max <= 1e4))
    luaL_error(L, "%s: need 0 <= sigma_min <= sigma_max <= 1e4", op);
  return rc;
}

static const char *const jitter_names[4] = {"brightness", "contrast", "saturation", "hue"};

static void push_params(lua_State *L, const sere_crop_params *p) {
  lua_createtable(L, 0, 12);
  lua_createtable(L, 4, 0);
  int box[4] = {p->box.x, p->box.y, p->box.w, p->box.h};
  for (int i = 0; i < 4; i++) {
    lua_pushinteger(L, box[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "box");
  const char *flags[5] = {"flip", "jitter", "gray", "blur", "solarize"};
  int vals[5] = {p->flip, p->jitter, p->gray, p->blur, p->solarize};
  for (int i = 0; i < 5; i++) {
    lua_pushboolean(L, vals[i]);
    lua_setfield(L, -2, flags[i]);
  }
  for (int i = 0; i < 4; i++) {
    lua_pushnumber(L, p->factor[i]);
    lua_setfield(L, -2, jitter_names[i]);
  }
  lua_createtable(L, 4, 0);
  for (int i = 0; i < 4; i++) {
    lua_pushstring(L, jitter_names[p->order[i]]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "order");
  lua_pushnumber(L, p->sigma);
  lua_setfield(L, -2, "sigma");
}

/* sere.augment_sample_params(w, h, recipe, rng) -> params table */
static int l_sample_params(lua_State *L) {
  const char *op = "augment_sample_params";
  int w = (int)check_int(L, 1, op, "w", 1, SERE_IMAGE_MAX_SIDE), h = (int)check_int(L, 2, op, "h", 1, SERE_IMAGE_MAX_SIDE);
  sere_crop_recipe rc = sere_lua_check_crop_recipe(L, 3, op);
  lua_rng r = check_rng(L, 4, op);
  sere_crop_params p;
  sere_sample_crop_params(&rc, w, h, &r.rng, &p);
  finish_rng(&r);
  push_params(L, &p);
  return 1;
}

/* sere.augment_crop(img, recipe, rng) -> u8 [size, size, 3], params: draws
 * one crop's parameters and runs its whole pipeline in C. */
static int l_crop(lua_State *L) {
  lua_settop(L, 3);
  const char *op = "augment_crop";
  sere_image src = check_image(L, 1, op);
  sere_crop_recipe rc = sere_lua_check_crop_recipe(L, 2, op);
  lua_rng r = check_rng(L, 3, op);
  sere_crop_params p;
  sere_sample_crop_params(&rc, src.w, src.h, &r.rng, &p);
  finish_rng(&r);
  sere_image out = push_image(L, rc.size, rc.size);
  sere_scratch ws = {0};
  sere_crop_source source = {src, 1, NULL};
  int failed = sere_augment_crop(&source, &rc, &p, &ws, out.px);
  sere_scratch_free(&ws);
  if (failed) return sere_lua_raise(L);
  push_params(L, &p);
  return 2;
}

/* Ratio argument: a number, or {mean = m | {m...}, var = v | {v...}}. */
static double check_ratio(lua_State *L, int idx, sere_rng *r, const char *op) {
  if (lua_type(L, idx) == LUA_TNUMBER) return lua_tonumber(L, idx);
  if (!lua_istable(L, idx)) luaL_error(L, "%s: ratio must be a number or a {mean=, var=} table", op);
  double mean[16], var[16];
  int n[2];
  const char *keys[2] = {"mean", "var"};
  double *dst[2] = {mean, var};
  for (int k = 0; k < 2; k++) {
    int type = lua_getfield(L, idx, keys[k]);
    if (type == LUA_TNUMBER) {
      dst[k][0] = lua_tonumber(L, -1);
      n[k] = 1;
    } else if (type == LUA_TTABLE) {
      n[k] = (int)luaL_len(L, -1);
      if (n[k] < 1 || n[k] > 16) luaL_error(L, "%s: ratio.%s must list 1 to 16 numbers", op, keys[k]);
      for (int i = 0; i < n[k]; i++) {
        lua_geti(L, -1, i + 1);
        dst[k][i] = check_num(L, -1, op, "ratio entries");
        lua_pop(L, 1);
      }
    } else if (type == LUA_TNIL && k == 1) {
      n[1] = n[0];
      for (int i = 0; i < n[0]; i++) var[i] = 0;
    } else {
      luaL_error(L, "%s: ratio.%s must be a number or a list of numbers", op, keys[k]);
    }
    lua_pop(L, 1);
  }
  if (n[0] != n[1]) luaL_error(L, "%s: ratio.mean has %d entries but ratio.var has %d", op, n[0], n[1]);
  for (int i = 0; i < n[0]; i++)
    if (!(var[i] >= 0 && var[i] <= mean[i] && mean[i] + var[i] <= 1))
      luaL_error(L, "%s: ratio pair %d (mean %f, var %f) needs 0 <= var <= mean and mean + var <= 1", op, i + 1,
                 mean[i], var[i]);
  return sere_mask_ratio(n[0], mean, var, r);
}

/* sere.augment_block_mask(h, w, ratio, rng[, shape]) -> bool [h, w] */
static int l_block_mask(lua_State *L) {
  lua_settop(L, 5);
  const char *op = "augment_block_mask";
  int h = (int)check_int(L, 1, op, "h", 1, 4096), w = (int)check_int(L, 2, op, "w", 1, 4096);
  lua_rng r = check_rng(L, 4, op);
  static const char *const shapes[] = {"block", "rand", NULL};
  int shape = luaL_checkoption(L, 5, "block", shapes);
  double ratio = check_ratio(L, 3, &r.rng, op);
  if (!(ratio >= 0 && ratio <= 1)) return luaL_error(L, "%s: ratio must be in [0, 1], got %f", op, ratio);
  int64_t dims[2] = {h, w};
  sere_tensor *t = sere_tensor_new_uninit(SERE_BOOL, 2, dims);
  sere_lua_push(L, t);
  int rc = shape == 0 ? sere_block_mask(h, w, ratio, &r.rng, sere_data(t)) : sere_rand_mask(h, w, ratio, &r.rng, sere_data(t));
  finish_rng(&r);
  if (rc) return sere_lua_raise(L);
  lua_pushnumber(L, ratio);
  return 2;
}

/* A [P, 5] mapping tensor as a contiguous f32 copy on the stack. */
static sere_tensor *check_maps(lua_State *L, int idx, const char *op) {
  sere_tensor *t = sere_lua_check(L, idx, op);
  char buf[96];
  if (t->ndim != 2 || t->shape[1] != 5 || t->storage->device != SERE_CPU)
    luaL_error(L, "%s: argument #%d: expected CPU mappings [P, 5] (x, y, w, h, flip), got %s", op, idx,
               sere_shape_str(t, buf, sizeof buf));
  sere_tensor *c = sere_as_contiguous_dtype(t, SERE_F32);
  sere_lua_push(L, c);
  return c;
}

/* sere.augment_overlap_grids(maps_q, maps_k, S) -> two f32 [P, S, S, 2] */
static int l_overlap_grids(lua_State *L) {
  lua_settop(L, 3);
  const char *op = "augment_overlap_grids";
  sere_tensor *q = check_maps(L, 1, op), *k = check_maps(L, 2, op);
  int S = (int)check_int(L, 3, op, "S", 2, 1024);
  if (q->shape[0] != k->shape[0])
    return luaL_error(L, "%s: the mapping lists differ in length (%d vs %d)", op, (int)q->shape[0], (int)k->shape[0]);
  int64_t P = q->shape[0], shape[4] = {P, S, S, 2};
  sere_tensor *gq = sere_tensor_new_uninit(SERE_F32, 4, shape);
  sere_lua_push(L, gq);
  sere_tensor *gk = sere_tensor_new_uninit(SERE_F32, 4, shape);
  sere_lua_push(L, gk);
  const float *mq = sere_data(q), *mk = sere_data(k);
  for (int64_t p = 0; p < P; p++) {
    double a[5], b[5];
    for (int i = 0; i < 5; i++) {
      a[i] = mq[5 * p + i];
      b[i] = mk[5 * p + i];
    }
    if (!(a[2] > 0 && a[3] > 0 && b[2] > 0 && b[3] > 0))
      return luaL_error(L, "%s: mapping %d has a non-positive width or height", op, (int)p + 1);
    size_t off = (size_t)p * 2 * S * S;
    sere_overlap_grid(a, b, S, (float *)sere_data(gq) + off, (float *)sere_data(gk) + off);
  }
  return 2;
}

void sere_lua_open_augment(lua_State *L) {
  static const luaL_Reg functions[] = {{"augment_resize", l_resize},
                                       {"augment_hflip", l_hflip},
                                       {"augment_color", l_color},
                                       {"augment_grayscale", l_grayscale},
                                       {"augment_blur", l_blur},
                                       {"augment_solarize", l_solarize},
                                       {"augment_normalize", l_normalize},
                                       {"augment_sample_crop", l_sample_crop},
                                       {"augment_sample_params", l_sample_params},
                                       {"augment_crop", l_crop},
                                       {"augment_block_mask", l_block_mask},
                                       {"augment_overlap_grids", l_overlap_grids},
                                       {NULL, NULL}};
  sere_lua_register(L, NULL, functions);
}
