// soft_cross_entropy.cu — the iBOT / DINO loss on the GPU
// (ops/soft_cross_entropy.c dispatches here for CUDA tensors):
// loss = lse(s') - sum_k p_k s'_k with p = softmax(t'), s' = s / Ts,
// t' = (t - c) / Tt, per row, neither distribution ever written.
//
// Forward: one block per row, each thread streaming over its columns
// (stride blockDim, so every load is coalesced) with online maxima: when a
// max grows, the thread's running sums are rescaled. Each thread keeps
//   Zs = sum exp(s' - ms), Zt = sum exp(t' - mt), W = sum exp(t' - mt) (s' - r)
// in f32 with r a reference shared by the block (the largest s' among the
// first blockDim columns) so that large logits do not cancel; the block
// then merges the threads' sums at a common max, in double, and
// loss = (ms - r) + log Zs - W / Zt, as the CPU does per chunk.
//
// Backward recomputes both softmaxes from the saved (max, log-sum) pairs:
//   gs = g (exp((s' - ms) - ls) - exp((t' - mt) - lt)) / Ts,
// a 2-D grid (column chunks x rows), purely elementwise.
//
// s' and t' are computed with __fmul_rn so that the compiler cannot fuse
// the scaling into a later subtraction: both passes, and the CPU, then see
// the same rounded values.
#include "cuda_common.cuh"
#include "cuda_device.h"
#include "soft_cross_entropy.h"

// A max usable as the subtrahend of exp(x - m): -inf (nothing but -inf
// seen) becomes 0, so that exp(-inf - 0) = 0 instead of NaN.
__device__ __forceinline__ float safe_max(float m) { return m == -INFINITY ? 0.0f : m; }

// exp(m - top) for rescaling a sum taken at max m to the larger max top;
// 0 for an empty sum (m = -inf).
__device__ __forceinline__ float rescale(float m, float top) { return m == -INFINITY ? 0.0f : expf(m - top); }

__device__ __forceinline__ float student_logit(const float *s, int64_t j, float inv_ts) {
  return __fmul_rn(s[j], inv_ts);
}
__device__ __forceinline__ float teacher_logit(const float *t, const float *c, int64_t j, float inv_tt) {
  return __fmul_rn(t[j] - c[j], inv_tt);
}

__global__ void soft_ce_forward_rows(const float *s, const float *t, const float *c, int64_t rows, int64_t k,
                                     float inv_ts, float inv_tt, float *loss, float *stats) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float *sr = s + row * k, *tr = t + row * k;
    // the reference r: the largest finite-or-not s' among the first columns
    float first = threadIdx.x < k ? student_logit(sr, threadIdx.x, inv_ts) : -INFINITY;
    float r = sere_block_max(first, fscratch);
    if (!isfinite(r)) r = 0.0f;
    float ms = -INFINITY, mt = -INFINITY, zs = 0, zt = 0, w = 0;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
      const float sv = student_logit(sr, j, inv_ts), tv = teacher_logit(tr, c, j, inv_tt);
      if (sv > ms) {
        zs *= rescale(ms, sv);
        ms = sv;
      }
      if (tv > mt) {
        const float f = rescale(mt, tv);
        zt *= f;
        w *= f;
        mt = tv;
      }
      const float e = expf(tv - safe_max(mt));
      zs += expf(sv - safe_max(ms));
      zt += e;
      w += e * (sv - r);
    }
    // merge the threads' sums at the block's maxima
    const float top_s = sere_block_max(ms, fscratch), top_t = sere_block_max(mt, fscratch);
    const float fs = rescale(ms, safe_max(top_s)), ft = rescale(mt, safe_max(top_t));
    const double zs_all = sere_block_sum((double)zs * fs, dscratch);
    const double zt_all = sere_block_sum((double)zt * ft, dscratch);
    const double w_all = sere_block_sum((double)w * ft, dscratch);
    if (threadIdx.x == 0) {
      const float ls = logf((float)zs_all);
      float *st = stats + 4 * row;
      st[0] = safe_max(top_s);
      st[1] = ls;
      st[2] = safe_max(top_t);
      st[3] = logf((float)zt_all);
      loss[row] = k == 0 ? 0.0f : (float)(((double)top_s - r) + ls - w_all / zt_all);
    }
  }
}

__global__ void soft_ce_backward_elements(const float *s, const float *t, const float *c, const float *stats,
                                          const float *g, int64_t rows, int64_t k, float inv_ts, float inv_tt,
                                          float *gs) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const float *sr = s + row * k, *tr = t + row * k, *st = stats + 4 * row;
    const float a = g[row] * inv_ts, ms = st[0], ls = st[1], mt = st[2], lt = st[3];
    float *out = gs + row * k;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < k; j += (int64_t)gridDim.x * blockDim.x)
      out[j] = a * (expf((student_logit(sr, j, inv_ts) - ms) - ls) - expf((teacher_logit(tr, c, j, inv_tt) - mt) - lt));
  }
}

// Threads per row in the forward: a warp for short rows, up to 1024 for
// K = 65536 (64 columns per thread).
static int forward_threads(int64_t k) {
  int64_t want = (k + 63) / 64;
  if (want <= 32) return 32;
  if (want >= 1024) return 1024;
  return (int)((want + 31) / 32 * 32);
}

static const int backward_threads = 256;
static const int backward_columns_per_thread = 8;

extern "C" int sere_cuda_soft_cross_entropy_forward(const float *s, const float *t, const float *center, int64_t rows,
                                                    int64_t k, float inv_ts, float inv_tt, float *loss,
                                                    float *stats) {
  if (rows == 0) return 0;
  const unsigned grid = rows > 65535 ? 65535u : (unsigned)rows;
  SERE_LAUNCH(soft_ce_forward_rows, grid, forward_threads(k), 0, s, t, center, rows, k, inv_ts, inv_tt, loss, stats);
  return SERE_CHECK_LAUNCH("soft_cross_entropy (cuda)");
}

extern "C" int sere_cuda_soft_cross_entropy_backward(const float *s, const float *t, const float *center,
                                                     const float *stats, const float *g, int64_t rows, int64_t k,
                                                     float inv_ts, float inv_tt, float *gs) {
  if (rows == 0 || k == 0) return 0;
  const unsigned gx = sere_blocks_for(k, backward_threads * backward_columns_per_thread);
  const unsigned gy = rows > 65535 ? 65535u : (unsigned)rows;
  SERE_LAUNCH(soft_ce_backward_elements, dim3(gx, gy), backward_threads, 0, s, t, center, stats, g, rows, k, inv_ts,
              inv_tt, gs);
  return SERE_CHECK_LAUNCH("soft_cross_entropy backward (cuda)");
}
