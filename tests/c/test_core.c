/* test_core.c — C unit tests of the tensor core below the Lua layer:
 * Philox4x32-10 known answers, bf16 rounding and NaN handling, storage and
 * tensor refcounts, view offsets and strides, sere_copy_raw between
 * overlapping views of one storage, the dtype promotion table, and the
 * errors of sere_wrap_dim. Prints "N passed, N failed"; exits 1 on failure. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "ops/ops.h"
#include "tensor.h"


static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Known-answer vectors of Random123's kat_vectors (Salmon et al., SC'11),
 * also recomputed with an independent implementation of the published
 * round function. Counter words are (c0, c1, c2, c3), key (k0, k1). */
static void test_philox(void) {
  static const struct {
    uint32_t ctr[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
    uint64_t seed = kat[i].key[0] | (uint64_t)kat[i].key[1] << 32;
    uint64_t lo = kat[i].ctr[0] | (uint64_t)kat[i].ctr[1] << 32;
    uint64_t hi = kat[i].ctr[2] | (uint64_t)kat[i].ctr[3] << 32;
    uint32_t out[4] = {0};
    sere_philox4x32(seed, lo, hi, out);
    CHECK(!memcmp(out, kat[i].out, sizeof out));
  }
}

/* The random fills follow the stream layout documented in random.c. */
static void test_random_stream(void) {
  sere_generator g = {1234, 5};
  sere_tensor *t = sere_tensor_new(SERE_F32, 1, (int64_t[]){6});
  CHECK(sere_uniform_(t, 0, 1, &g) == 0);
  CHECK(g.offset == 7);
  uint32_t w[4];
  sere_philox4x32(1234, 5, 0, w);
  CHECK(((float *)sere_data(t))[2] == (float)((w[2] >> 8) * (1.0 / 16777216.0)));
  sere_philox4x32(1234, 6, 0, w);
  CHECK(((float *)sere_data(t))[5] == (float)((w[1] >> 8) * (1.0 / 16777216.0)));
  sere_tensor_release(t);
}

static void test_bf16(void) {
  /* exact values and round to nearest, ties to even */
  CHECK(sere_f32_to_bf16(1.0f) == 0x3f80);
  CHECK(sere_f32_to_bf16(-2.0f) == 0xc000);
  CHECK(sere_f32_to_bf16(bits_f32(0x3f808000)) == 0x3f80); /* tie, 0x3f80 is even */
  CHECK(sere_f32_to_bf16(bits_f32(0x3f818000)) == 0x3f82); /* tie, rounds up to even */
  CHECK(sere_f32_to_bf16(bits_f32(0x3f808001)) == 0x3f81); /* above the tie */
  CHECK(sere_f32_to_bf16(bits_f32(0x3f807fff)) == 0x3f80); /* below the tie */
  CHECK(sere_f32_to_bf16(bits_f32(0xbf818000)) == 0xbf82); /* negative tie */
  /* signed zero, infinities, overflow to infinity */
  CHECK(sere_f32_to_bf16(-0.0f) == 0x8000);
  CHECK(sere_f32_to_bf16(INFINITY) == 0x7f80);
  CHECK(sere_f32_to_bf16(-INFINITY) == 0xff80);
  CHECK(sere_f32_to_bf16(bits_f32(0x7f7fffff)) == 0x7f80);
  /* NaN stays NaN, including payloads that plain rounding would carry into
   * the exponent or truncate to infinity */
  const uint32_t nans[] = {0x7fc00000, 0x7f800001, 0x7fffffff, 0xff800001, 0xffffffff};
  for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
    uint16_t h = sere_f32_to_bf16(bits_f32(nans[i]));
    CHECK((h & 0x7f80) == 0x7f80 && (h & 0x007f) != 0);
    CHECK((h & 0x8000) == ((nans[i] >> 16) & 0x8000));
    CHECK(isnan(sere_bf16_to_f32(h)));
  }
  /* bf16 -> f32 is exact */
  CHECK(sere_bf16_to_f32(0x3f81) == 1.0078125f);
  CHECK(f32_bits(sere_bf16_to_f32(0x8000)) == 0x80000000u);
  /* a tensor conversion rounds the same way */
  sere_tensor *f = sere_tensor_new(SERE_F32, 1, (int64_t[]){2});
  ((float *)sere_data(f))[0] = bits_f32(0x3f818000);
  ((float *)sere_data(f))[1] = NAN;
  sere_tensor *h = sere_as_contiguous_dtype(f, SERE_BF16);
  CHECK(h && h->dtype == SERE_BF16);
  CHECK(((uint16_t *)sere_data(h))[0] == 0x3f82);
  CHECK(isnan(sere_bf16_to_f32(((uint16_t *)sere_data(h))[1])));
  sere_tensor_release(h);
  sere_tensor_release(f);
}

static void test_refcounts_and_views(void) {
  size_t live0 = sere_storage_live_bytes();
  sere_tensor *t = sere_tensor_new(SERE_F32, 2, (int64_t[]){3, 4});
  CHECK(t && t->refcount == 1 && t->storage->refcount == 1);
  CHECK(sere_storage_live_bytes() == live0 + 48);
  CHECK(sere_is_contiguous(t) && t->stride[0] == 4 && t->stride[1] == 1);
  float *d = sere_data(t);
  for (int i = 0; i < 12; i++) d[i] = (float)i;

  sere_tensor *tr = sere_transpose(t, 0, 1);
  CHECK(tr && tr->storage == t->storage && t->storage->refcount == 2);
  CHECK(tr->shape[0] == 4 && tr->stride[0] == 1 && tr->stride[1] == 4 && !sere_is_contiguous(tr));

  /* narrow(dim 1, start 1, length 2) of the transpose = rows 1..2 of t^T */
  sere_tensor *nr = sere_narrow(tr, 0, 1, 2);
  CHECK(nr && nr->offset == 1 && nr->shape[0] == 2 && nr->shape[1] == 3);
  CHECK(t->storage->refcount == 3);
  /* select(dim 1, index 2) of that: elements t[2][1], t[2][2] */
  sere_tensor *sel = sere_select(nr, 1, 2);
  CHECK(sel && sel->ndim == 1 && sel->offset == 1 + 2 * 4 && sel->stride[0] == 1);
  int64_t idx[1] = {1};
  CHECK(sel && sere_get_elem(sel, idx) == 10.0);
  CHECK(sere_select(nr, 1, 3) == NULL && strstr(sere_last_error(), "select"));
  CHECK(sere_narrow(t, 1, 3, 2) == NULL && strstr(sere_last_error(), "narrow"));

  /* a view keeps the storage alive after the base tensor is released */
  sere_tensor_release(t);
  sere_tensor_release(tr);
  sere_tensor_release(nr);
  CHECK(sel->storage->refcount == 1);
  CHECK(sere_storage_live_bytes() == live0 + 48);
  CHECK(sere_get_elem(sel, idx) == 10.0);
  CHECK(sere_tensor_retain(sel) == sel && sel->refcount == 2);
  sere_tensor_release(sel);
  sere_tensor_release(sel);
  CHECK(sere_storage_live_bytes() == live0);
}

static sere_tensor *iota(int64_t n) {
  sere_tensor *t = sere_tensor_new(SERE_F32, 1, &n);
  for (int64_t i = 0; i < n; i++) ((float *)sere_data(t))[i] = (float)i;
  return t;
}

static void test_copy_overlapping(void) {
  /* shifting a window right by 2 within one storage behaves like memmove */
  sere_tensor *t = iota(10);
  sere_tensor *src = sere_narrow(t, 0, 0, 6), *dst = sere_narrow(t, 0, 2, 6);
  CHECK(sere_copy_raw(dst, src) == 0);
  const float shifted_right[10] = {0, 1, 0, 1, 2, 3, 4, 5, 8, 9};
  CHECK(!memcmp(sere_data(t), shifted_right, sizeof shifted_right));
  sere_tensor_release(src);
  sere_tensor_release(dst);
  sere_tensor_release(t);

  /* and shifting left */
  t = iota(10);
  src = sere_narrow(t, 0, 3, 7);
  dst = sere_narrow(t, 0, 0, 7);
  CHECK(sere_copy_raw(dst, src) == 0);
  const float shifted_left[10] = {3, 4, 5, 6, 7, 8, 9, 7, 8, 9};
  CHECK(!memcmp(sere_data(t), shifted_left, sizeof shifted_left));
  sere_tensor_release(src);
  sere_tensor_release(dst);
  sere_tensor_release(t);

  /* a matrix copied into its own transpose is transposed in place */
  t = iota(9);
  sere_tensor *m = sere_reshape(t, 2, (int64_t[]){3, 3});
  sere_tensor *mt = sere_transpose(m, 0, 1);
  CHECK(sere_copy_raw(m, mt) == 0);
  const float transposed[9] = {0, 3, 6, 1, 4, 7, 2, 5, 8};
  CHECK(!memcmp(sere_data(t), transposed, sizeof transposed));
  /* shape mismatch is an error naming both shapes */
  sere_tensor *row = sere_narrow(m, 0, 0, 1);
  CHECK(sere_copy_raw(row, m) == -1 && strstr(sere_last_error(), "[3, 3]") && strstr(sere_last_error(), "[1, 3]"));
  sere_tensor_release(row);
  sere_tensor_release(mt);
  sere_tensor_release(m);
  sere_tensor_release(t);
}

/* PyTorch's promotion for tensor-tensor ops over sere's dtypes. */
static void test_promotion(void) {
  const sere_dtype F = SERE_F32, H = SERE_BF16, I = SERE_I32, L = SERE_I64, U = SERE_U8, B = SERE_BOOL;
  const sere_dtype expect[SERE_NDTYPES][SERE_NDTYPES] = {
      /*          f32 bf16 i32 i64 u8 bool */
      [SERE_F32] = {F, F, F, F, F, F},
      [SERE_BF16] = {F, H, H, H, H, H},
      [SERE_I32] = {F, H, I, L, I, I},
      [SERE_I64] = {F, H, L, L, L, L},
      [SERE_U8] = {F, H, I, L, U, U},
      [SERE_BOOL] = {F, H, I, L, U, B},
  };
  for (int a = 0; a < SERE_NDTYPES; a++)
    for (int b = 0; b < SERE_NDTYPES; b++) {
      sere_dtype got = sere_promote((sere_dtype)a, (sere_dtype)b);
      if (got != expect[a][b])
        fprintf(stderr, "  promote(%s, %s) = %s, expected %s\n", sere_dtype_name(a), sere_dtype_name(b),
                sere_dtype_name(got), sere_dtype_name(expect[a][b]));
      CHECK(got == expect[a][b]);
    }
}

static void test_dtype_names(void) {
  sere_dtype d;
  for (int i = 0; i < SERE_NDTYPES; i++) CHECK(sere_dtype_from_name(sere_dtype_name(i), &d) == 0 && d == (sere_dtype)i);
  CHECK(sere_dtype_from_name("float32", &d) == 0 && d == SERE_F32);
  CHECK(sere_dtype_from_name("f64", &d) == -1);
  CHECK(sere_dtype_size(SERE_BF16) == 2 && sere_dtype_size(SERE_I64) == 8 && sere_dtype_size(SERE_BOOL) == 1);
}

static void test_wrap_dim(void) {
  int d = -7;
  CHECK(sere_wrap_dim(0, 3, "op", &d) == 0 && d == 0);
  CHECK(sere_wrap_dim(2, 3, "op", &d) == 0 && d == 2);
  CHECK(sere_wrap_dim(-1, 3, "op", &d) == 0 && d == 2);
  CHECK(sere_wrap_dim(-3, 3, "op", &d) == 0 && d == 0);
  /* a 0-dim tensor accepts dim 0 and -1, as in PyTorch */
  CHECK(sere_wrap_dim(0, 0, "op", &d) == 0 && d == 0);
  CHECK(sere_wrap_dim(-1, 0, "op", &d) == 0 && d == 0);
  d = 42;
  CHECK(sere_wrap_dim(3, 3, "softmax", &d) == -1 && d == 42);
  CHECK(strstr(sere_last_error(), "softmax") && strstr(sere_last_error(), "3 dims"));
  CHECK(sere_wrap_dim(-4, 3, "sum", &d) == -1 && strstr(sere_last_error(), "sum"));
  CHECK(sere_wrap_dim(1, 0, "mean", &d) == -1 && strstr(sere_last_error(), "mean"));
}

static void test_tensor_new_errors(void) {
  CHECK(sere_tensor_new(SERE_F32, 1, (int64_t[]){-2}) == NULL && strstr(sere_last_error(), "negative"));
  CHECK(sere_tensor_new(SERE_F32, SERE_MAX_DIMS + 1, (int64_t[SERE_MAX_DIMS + 1]){0}) == NULL);
  CHECK(sere_tensor_new(SERE_F32, 2, (int64_t[]){INT64_MAX / 2, 4}) == NULL && strstr(sere_last_error(), "too large"));
  sere_tensor *e = sere_tensor_new(SERE_I64, 2, (int64_t[]){0, 3});
  CHECK(e && sere_numel(e) == 0 && e->storage->refcount == 1);
  sere_tensor_release(e);
}

int main(void) {
  test_philox();
  test_random_stream();
  test_bf16();
  test_refcounts_and_views();
  test_copy_overlapping();
  test_promotion();
  test_dtype_names();
  test_wrap_dim();
  test_tensor_new_errors();
  return check_summary();
}
