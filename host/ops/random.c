/* random.c — the counter-based generator (Philox4x32-10) and the random
 * fills built on it.
 *
 * Stream layout, which the CUDA kernels reproduce exactly: a generator is
 * (seed, offset). A fill of n elements uses Philox blocks offset,
 * offset+1, ..., offset+ceil(n/4)-1 (key = seed, 64-bit block number in the
 * low half of the counter) and then advances offset by ceil(n/4). Element i
 * of the tensor in row-major order takes word i%4 of block offset + i/4:
 *  - uniform: (word >> 8) * 2^-24, in [0, 1), scaled to [lo, hi) in double
 *    and rounded to f32 (then to bf16 for a bf16 tensor);
 *  - normal: Box-Muller on the word pairs (0,1) and (2,3) of the block:
 *    u1 = ((w0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (w1 >> 8) * 2^-24,
 *    z0 = sqrt(-2 ln u1) cos(2 pi u2), z1 = sqrt(-2 ln u1) sin(2 pi u2),
 *    then mean + std * z;
 *  - randint: lo + floor(word * (hi - lo) / 2^32) (range at most 2^32).
 * Results do not depend on the number of threads.
 *
 * Speed: blocks are generated BATCH at a time, word by word in arrays, so
 * that the Philox rounds vectorise (32x32 -> 64-bit products), and batches
 * run in parallel. Box-Muller runs in f32 with the vectorisable ln, sqrt
 * and cos/sin(2 pi u) of vecmath.h: against the same formulas in double,
 * over every u1 with 64 angles each (2^30 pairs), z is within 3.7 ulp
 * (mean 0.65), and mean + std * z adds one rounding. The CUDA kernels
 * (kernels/random.cu) use the same words for the same elements; uniform
 * and randint match bit for bit, normal matches the x86-64-v3/v4 builds of
 * normal_values bit for bit (the baseline build may differ by a few ulp). */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "vecmath.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/random.h"
#endif

#define BATCH 256           /* Philox blocks generated together: 1024 values */
#define PARALLEL_MIN 4096   /* blocks below which one thread does it all */

static sere_generator default_generator = {0, 0};

sere_generator *sere_default_generator(void) { return &default_generator; }

/* One of the ten rounds: the counter words c[0..3] under key (k0, k1). */
static inline void philox_round(uint32_t *c0, uint32_t *c1, uint32_t *c2, uint32_t *c3, uint32_t k0, uint32_t k1) {
  uint64_t p0 = (uint64_t)0xD2511F53u * *c0, p1 = (uint64_t)0xCD9E8D57u * *c2;
  uint32_t n0 = (uint32_t)(p1 >> 32) ^ *c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ *c3 ^ k1;
  *c0 = n0;
  *c1 = (uint32_t)p1;
  *c2 = n2;
  *c3 = (uint32_t)p0;
}

#define KEY_STEP0 0x9E3779B9u
#define KEY_STEP1 0xBB67AE85u

void sere_philox4x32(uint64_t seed, uint64_t counter_lo, uint64_t counter_hi, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
  uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++, k0 += KEY_STEP0, k1 += KEY_STEP1) philox_round(&c0, &c1, &c2, &c3, k0, k1);
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* w[j][b] = word j of block `first + b` (high counter half 0), b < BATCH. */
SERE_WIDE_SIMD static void philox_batch(uint64_t seed, uint64_t first, uint32_t w[4][BATCH]) {
  for (int b = 0; b < BATCH; b++) {
    uint64_t ctr = first + (uint64_t)b;
    w[0][b] = (uint32_t)ctr;
    w[1][b] = (uint32_t)(ctr >> 32);
    w[2][b] = w[3][b] = 0;
  }
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++, k0 += KEY_STEP0, k1 += KEY_STEP1)
    for (int b = 0; b < BATCH; b++) philox_round(&w[0][b], &w[1][b], &w[2][b], &w[3][b], k0, k1);
}

typedef enum { FILL_UNIFORM, FILL_NORMAL, FILL_RANDINT } fill_kind;

typedef struct {
  fill_kind kind;
  double a, b;    /* uniform: [lo, hi); normal: mean, std */
  int64_t lo;     /* randint: [lo, lo + range) */
  uint64_t range;
} fill_args;

/* The values of one batch: element 4 b + j from word j of block b. */
SERE_WIDE_SIMD static void uniform_values(const uint32_t w[4][BATCH], double lo, double hi, float *v) {
  for (int b = 0; b < BATCH; b++)
    for (int j = 0; j < 4; j++) v[4 * b + j] = (float)(lo + (hi - lo) * ((w[j][b] >> 8) * (1.0 / 16777216.0)));
}

/* Word by word first (z[j][b]), so that the loop over blocks vectorises. */
SERE_WIDE_SIMD static void normal_values(const uint32_t w[4][BATCH], float mean, float std, float *v) {
  float z[4][BATCH];
  for (int j = 0; j < 4; j += 2)
    for (int b = 0; b < BATCH; b++) {
      const float u1 = (float)((w[j][b] >> 8) + 1) * 0x1p-24f;
      const float r = sere_sqrt_core(-2.0f * sere_log_core(u1));
      float c, s;
      sere_cossin_2pi(w[j + 1][b] >> 8, &c, &s);
      z[j][b] = mean + std * (r * c);
      z[j + 1][b] = mean + std * (r * s);
    }
  for (int b = 0; b < BATCH; b++)
    for (int j = 0; j < 4; j++) v[4 * b + j] = z[j][b];
}

static void randint_values(const uint32_t w[4][BATCH], int64_t lo, uint64_t range, int64_t *v) {
  for (int b = 0; b < BATCH; b++)
    for (int j = 0; j < 4; j++) v[4 * b + j] = lo + (int64_t)(((uint64_t)w[j][b] * range) >> 32);
}

/* Elements [4 first, 4 first + n) of the fill (n <= 4 BATCH) into data,
 * contiguous of dtype dt: f32 or bf16, any dtype for randint. */
static void fill_batch(const fill_args *f, uint64_t seed, uint64_t block0, uint64_t first, void *data, sere_dtype dt,
                       int64_t n) {
  uint32_t w[4][BATCH];
  union {
    float f[4 * BATCH];
    int64_t i[4 * BATCH];
  } v;
  philox_batch(seed, block0 + first, w);
  int64_t e0 = (int64_t)first * 4;
  if (f->kind == FILL_RANDINT) {
    randint_values(w, f->lo, f->range, v.i);
    if (dt == SERE_I64) memcpy((int64_t *)data + e0, v.i, (size_t)n * sizeof *v.i);
    else for (int64_t i = 0; i < n; i++) sere_store_linear(data, dt, e0 + i, (double)v.i[i]);
    return;
  }
  if (f->kind == FILL_UNIFORM) uniform_values(w, f->a, f->b, v.f);
  else normal_values(w, (float)f->a, (float)f->b, v.f);
  if (dt == SERE_F32) memcpy((float *)data + e0, v.f, (size_t)n * sizeof *v.f);
  else for (int64_t i = 0; i < n; i++) ((uint16_t *)data)[e0 + i] = sere_f32_to_bf16(v.f[i]); /* bf16 */
}

#ifdef SERE_WITH_CUDA
/* The same fill by the GPU kernels into dst, contiguous on the GPU. */
static int cuda_fill(const fill_args *f, uint64_t seed, uint64_t offset, sere_tensor *dst) {
  switch (f->kind) {
    case FILL_UNIFORM: return sere_cuda_uniform(dst, f->a, f->b, seed, offset);
    case FILL_NORMAL: return sere_cuda_normal(dst, (float)f->a, (float)f->b, seed, offset);
    default: return sere_cuda_randint(dst, f->lo, f->range, seed, offset);
  }
}
#endif

/* Fills t (any strides: a strided target goes through a contiguous
 * temporary; either device) and advances the generator. */
static int random_fill(sere_tensor *t, const fill_args *f, sere_generator *g) {
  int64_t n = sere_numel(t);
  sere_tensor *dst = sere_is_contiguous(t) ? sere_tensor_retain(t) : sere_tensor_new_uninit_like(t, t->dtype);
  if (!dst) return -1;
  int64_t nblocks = (n + 3) / 4, nbatches = (nblocks + BATCH - 1) / BATCH;
  uint64_t base = g->offset, seed = g->seed;
  int rc = 0;
  if (sere_device_of(dst) == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    rc = cuda_fill(f, seed, base, dst);
#endif
  } else {
    void *data = sere_data(dst);
#pragma omp parallel for schedule(static) if (nblocks > PARALLEL_MIN)
    for (int64_t k = 0; k < nbatches; k++) {
      int64_t first = k * BATCH, left = n - first * 4;
      fill_batch(f, seed, base, (uint64_t)first, data, dst->dtype, left < 4 * BATCH ? left : 4 * BATCH);
    }
  }
  if (rc == 0) g->offset += (uint64_t)nblocks;
  if (rc == 0 && dst != t) rc = sere_copy_raw(t, dst);
  sere_tensor_release(dst);
  return rc;
}

int sere_uniform_(sere_tensor *t, double lo, double hi, sere_generator *g) {
  if (!sere_dtype_is_float(t->dtype)) {
    sere_fail("uniform_: needs a float tensor, got %s", sere_dtype_name(t->dtype));
    return -1;
  }
  return random_fill(t, &(fill_args){.kind = FILL_UNIFORM, .a = lo, .b = hi}, g);
}

int sere_normal_(sere_tensor *t, double mean, double std, sere_generator *g) {
  if (!sere_dtype_is_float(t->dtype)) {
    sere_fail("normal_: needs a float tensor, got %s", sere_dtype_name(t->dtype));
    return -1;
  }
  if (std < 0) { sere_fail("normal_: std must be >= 0, got %g", std); return -1; }
  return random_fill(t, &(fill_args){.kind = FILL_NORMAL, .a = mean, .b = std}, g);
}

int sere_randint_(sere_tensor *t, int64_t lo, int64_t hi, sere_generator *g) {
  if (hi <= lo) { sere_fail("randint: empty range [%lld, %lld)", (long long)lo, (long long)hi); return -1; }
  if ((uint64_t)hi - (uint64_t)lo > (1ull << 32)) {
    sere_fail("randint: range wider than 2^32 is not supported");
    return -1;
  }
  return random_fill(t, &(fill_args){.kind = FILL_RANDINT, .lo = lo, .range = (uint64_t)hi - (uint64_t)lo}, g);
}
