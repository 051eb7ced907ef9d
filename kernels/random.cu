// random.cu — Philox4x32-10 random fills on the GPU, giving the numbers of
// host/ops/random.c for the same (seed, offset): element i of a fill takes
// word i % 4 of block offset + i / 4 (key = seed, block number in the low
// 64 bits of the counter). One thread makes one block, i.e. four elements.
//
// Uniform and randint are exact integer/double arithmetic, identical on
// both sides. Normal is the CPU's f32 Box-Muller (vecmath.h's log, sqrt and
// cos/sin(2 pi t) polynomials) written out with every fused multiply-add
// where GCC puts one in random.c's x86-64-v3/v4 clones (read from its
// -fdump-tree-widening_mul output) and every other product and sum pinned
// with __fmul_rn/__fadd_rn, so that nvcc fuses nothing else: the results
// match those clones bit for bit. (random.c's baseline x86-64 clone fuses
// nothing and may differ from them by a few ulp.) If vecmath.h's formulas
// change, this must follow.
#include "cuda_common.cuh"
#include "random.h"

static const int random_threads = 256;

static unsigned random_blocks(int64_t n) {
  unsigned b = sere_blocks_for(n, random_threads);
  return b > 65535u ? 65535u : b;
}

#define KEY_STEP0 0x9E3779B9u
#define KEY_STEP1 0xBB67AE85u

__device__ __forceinline__ void philox4x32(uint64_t seed, uint64_t block, uint32_t w[4]) {
  uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++, k0 += KEY_STEP0, k1 += KEY_STEP1) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = (uint32_t)p1;
    c2 = n2;
    c3 = (uint32_t)p0;
  }
  w[0] = c0; w[1] = c1; w[2] = c2; w[3] = c3;
}

// sqrt(-2 ln u1), u1 = ((w >> 8) + 1) 2^-24 in [2^-24, 1]: vecmath.h's
// sere_log_core (for normal positive u1) and sere_sqrt_core.
__device__ __forceinline__ float box_muller_radius(uint32_t w) {
  const float u1 = __fmul_rn((float)((w >> 8) + 1), 0x1p-24f);
  const uint32_t bits = __float_as_uint(u1) + (0x3f800000u - 0x3f3504f3u);
  const float e = (float)((int32_t)(bits >> 23) - 127);
  const float m = __uint_as_float((bits & 0x007fffffu) + 0x3f3504f3u);
  const float f = __fadd_rn(m, -1.0f), half_f = __fmul_rn(f, 0.5f);
  const float s = f / __fadd_rn(f, 2.0f), z = __fmul_rn(s, s);
  const float r = __fmul_rn(fmaf(fmaf(z, 2.987173796e-01f, 3.997754157e-01f), z, 6.666677594e-01f), z);
  const float tail = fmaf(fmaf(half_f, f, r), s, -__fmul_rn(e, 2.12194440e-4f));
  const float ln_u1 = fmaf(e, 0.693359375f, __fadd_rn(tail, fmaf(-half_f, f, f)));
  const float x = __fmul_rn(ln_u1, -2.0f), half_x = __fmul_rn(x, 0.5f);
  float y = __uint_as_float(0x5f375a86u - (__float_as_uint(x) >> 1));
  y = __fmul_rn(fmaf(-__fmul_rn(y, half_x), y, 1.5f), y);
  y = __fmul_rn(fmaf(-__fmul_rn(y, half_x), y, 1.5f), y);
  const float root = __fmul_rn(y, x);
  return x == 0.0f ? 0.0f : fmaf(fmaf(-root, root, x), __fmul_rn(y, 0.5f), root);
}

// cos and sin of 2 pi k 2^-24 for the angle word w (k = w >> 8):
// vecmath.h's sere_cossin_2pi.
__device__ __forceinline__ void box_muller_angle(uint32_t w, float *c, float *s) {
  const uint32_t k = w >> 8, j = (k + (1u << 21)) >> 22;
  const float t = __fmul_rn((float)((int32_t)k - (int32_t)(j << 22)), 0x1p-24f), z = __fmul_rn(t, t);
  const float sin_tail = fmaf(fmaf(fmaf(z, -7.544559479e+01f, 8.159376526e+01f), z, -4.134167099e+01f), z,
                              -1.748455600e-07f);
  const float sv = fmaf(t, 6.283185482e+00f, __fmul_rn(sin_tail, t));
  const float cv = fmaf(fmaf(fmaf(fmaf(z, 5.920278549e+01f, -8.544229889e+01f), z, 6.493930817e+01f), z,
                             -1.973920822e+01f), z, 1.0f);
  uint32_t cb = __float_as_uint(j & 1 ? sv : cv), sb = __float_as_uint(j & 1 ? cv : sv);
  cb ^= ((j + 1) & 2) << 30;  // cos is negative in quarters 1 and 2
  sb ^= (j & 2) << 30;        // sin in quarters 2 and 3
  *c = __uint_as_float(cb);
  *s = __uint_as_float(sb);
}

typedef enum { RANDOM_UNIFORM, RANDOM_NORMAL, RANDOM_RANDINT } random_kind;

struct random_params {
  double lo, span;        // uniform: lo + span * u
  float mean, std;        // normal
  int64_t int_lo;         // randint: int_lo + floor(w * range / 2^32)
  uint64_t range;
};

__device__ __forceinline__ void store_float(void *dst, int dtype, int64_t e, float v) {
  if (dtype == SERE_F32) ((float *)dst)[e] = v;
  else ((uint16_t *)dst)[e] = sere_bf16_round(v);
}

template <int kind>
__global__ void random_fill_kernel(void *dst, int dtype, int64_t n, random_params p, uint64_t seed, uint64_t offset) {
  int64_t nblocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < nblocks; b += (int64_t)gridDim.x * blockDim.x) {
    uint32_t w[4];
    philox4x32(seed, offset + (uint64_t)b, w);
    int64_t e0 = 4 * b, count = n - e0 < 4 ? n - e0 : 4;
    if (kind == RANDOM_UNIFORM) {
      for (int j = 0; j < count; j++)
        store_float(dst, dtype, e0 + j, (float)fma(p.span, (double)(w[j] >> 8) * (1.0 / 16777216.0), p.lo));
    } else if (kind == RANDOM_NORMAL) {
      float z[4];
      for (int j = 0; j < 4; j += 2) {
        float radius = box_muller_radius(w[j]), c, s;
        box_muller_angle(w[j + 1], &c, &s);
        z[j] = fmaf(__fmul_rn(radius, c), p.std, p.mean);
        z[j + 1] = fmaf(__fmul_rn(radius, s), p.std, p.mean);
      }
      for (int j = 0; j < count; j++) store_float(dst, dtype, e0 + j, z[j]);
    } else {
      for (int j = 0; j < count; j++) {
        int64_t v = p.int_lo + (int64_t)(((uint64_t)w[j] * p.range) >> 32);
        if (dtype == SERE_I64) ((int64_t *)dst)[e0 + j] = v;
        else sere_store_any(dst, dtype, e0 + j, (double)v);
      }
    }
  }
}

template <int kind>
static int random_fill(sere_tensor *dst, const random_params &p, uint64_t seed, uint64_t offset, const char *what) {
  int64_t n = sere_numel(dst);
  if (n == 0) return 0;
  SERE_LAUNCH(random_fill_kernel<kind>, random_blocks((n + 3) / 4), random_threads, 0, sere_data(dst),
              (int)dst->dtype, n, p, seed, offset);
  return SERE_CHECK_LAUNCH(what);
}

extern "C" int sere_cuda_uniform(sere_tensor *dst, double lo, double hi, uint64_t seed, uint64_t offset) {
  random_params p = {};
  p.lo = lo;
  p.span = hi - lo;
  return random_fill<RANDOM_UNIFORM>(dst, p, seed, offset, "uniform_ (cuda)");
}

extern "C" int sere_cuda_normal(sere_tensor *dst, float mean, float std, uint64_t seed, uint64_t offset) {
  random_params p = {};
  p.mean = mean;
  p.std = std;
  return random_fill<RANDOM_NORMAL>(dst, p, seed, offset, "normal_ (cuda)");
}

extern "C" int sere_cuda_randint(sere_tensor *dst, int64_t lo, uint64_t range, uint64_t seed, uint64_t offset) {
  random_params p = {};
  p.int_lo = lo;
  p.range = range;
  return random_fill<RANDOM_RANDINT>(dst, p, seed, offset, "randint (cuda)");
}
