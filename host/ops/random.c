/* random.c — the counter-based generator (Philox4x32-10) and the random
 * fills built on it.
 *
 * Stream layout, which the CUDA kernels reproduce exactly: a generator is
 * (seed, offset). A fill of n elements uses Philox blocks offset,
 * offset+1, ..., offset+ceil(n/4)-1 (key = seed, 64-bit block number in the
 * low half of the counter) and then advances offset by ceil(n/4). Element i
 * of the tensor in row-major order takes word i%4 of block offset + i/4:
 *  - uniform: (word >> 8) * 2^-24, in [0, 1), scaled to [lo, hi);
 *  - normal: Box-Muller on the word pairs (0,1) and (2,3) of the block:
 *    u1 = ((w0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (w1 >> 8) * 2^-24,
 *    z0 = sqrt(-2 ln u1) cos(2 pi u2), z1 = sqrt(-2 ln u1) sin(2 pi u2);
 *  - randint: lo + floor(word * (hi - lo) / 2^32) (range at most 2^32).
 * Results do not depend on the number of threads. */
#include <math.h>

#include "ops.h"

static sere_generator default_generator = {0, 0};

sere_generator *sere_default_generator(void) { return &default_generator; }

static inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t *hi) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  return (uint32_t)p;
}

void sere_philox4x32(uint64_t seed, uint64_t counter_lo, uint64_t counter_hi, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)counter_lo, c1 = (uint32_t)(counter_lo >> 32);
  uint32_t c2 = (uint32_t)counter_hi, c3 = (uint32_t)(counter_hi >> 32);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo(0xD2511F53u, c0, &hi0);
    uint32_t lo1 = mulhilo(0xCD9E8D57u, c2, &hi1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

typedef enum { FILL_UNIFORM, FILL_NORMAL, FILL_RANDINT } fill_kind;

/* Generates into a contiguous f64 buffer-free path: values are produced per
 * element and stored with the tensor's dtype through a contiguous temporary
 * when the target is strided. */
static int random_fill(sere_tensor *t, fill_kind kind, double a, double b, sere_generator *g) {
  int64_t n = sere_numel(t);
  sere_tensor *dst = sere_is_contiguous(t) ? sere_tensor_retain(t) : sere_tensor_new(t->dtype, t->ndim, t->shape);
  if (!dst) return -1;
  int64_t nblocks = (n + 3) / 4;
  uint64_t base = g->offset;
  void *data = sere_data(dst);
  sere_dtype dt = dst->dtype;
  uint64_t range = (uint64_t)((int64_t)b - (int64_t)a);
#pragma omp parallel for schedule(static) if (nblocks > 4096)
  for (int64_t blk = 0; blk < nblocks; blk++) {
    uint32_t w[4];
    double v[4];
    sere_philox4x32(g->seed, base + (uint64_t)blk, 0, w);
    if (kind == FILL_UNIFORM) {
      for (int j = 0; j < 4; j++) v[j] = a + (b - a) * ((w[j] >> 8) * (1.0 / 16777216.0));
    } else if (kind == FILL_NORMAL) {
      for (int j = 0; j < 4; j += 2) {
        double u1 = ((w[j] >> 8) + 1) * (1.0 / 16777216.0), u2 = (w[j + 1] >> 8) * (1.0 / 16777216.0);
        double r = sqrt(-2.0 * log(u1));
        v[j] = a + b * r * cos(2 * M_PI * u2);
        v[j + 1] = a + b * r * sin(2 * M_PI * u2);
      }
    } else {
      for (int j = 0; j < 4; j++) v[j] = (double)((int64_t)a + (int64_t)(((uint64_t)w[j] * range) >> 32));
    }
    for (int j = 0; j < 4 && blk * 4 + j < n; j++) {
      if (dt == SERE_F32) ((float *)data)[blk * 4 + j] = (float)v[j];
      else sere_store_linear(data, dt, blk * 4 + j, v[j]);
    }
  }
  g->offset += (uint64_t)nblocks;
  int rc = dst == t ? 0 : sere_copy_raw(t, dst);
  sere_tensor_release(dst);
  return rc;
}

int sere_uniform_(sere_tensor *t, double lo, double hi, sere_generator *g) {
  if (!sere_dtype_is_float(t->dtype)) { sere_fail("uniform_: needs a float tensor, got %s", sere_dtype_name(t->dtype)); return -1; }
  return random_fill(t, FILL_UNIFORM, lo, hi, g);
}

int sere_normal_(sere_tensor *t, double mean, double std, sere_generator *g) {
  if (!sere_dtype_is_float(t->dtype)) { sere_fail("normal_: needs a float tensor, got %s", sere_dtype_name(t->dtype)); return -1; }
  if (std < 0) { sere_fail("normal_: std must be >= 0, got %g", std); return -1; }
  return random_fill(t, FILL_NORMAL, mean, std, g);
}

int sere_randint_(sere_tensor *t, int64_t lo, int64_t hi, sere_generator *g) {
  if (hi <= lo) { sere_fail("randint: empty range [%lld, %lld)", (long long)lo, (long long)hi); return -1; }
  if ((uint64_t)(hi - lo) > (1ull << 32)) { sere_fail("randint: range wider than 2^32 is not supported"); return -1; }
  return random_fill(t, FILL_RANDINT, (double)lo, (double)hi, g);
}
