// softmax.cu — softmax and log_softmax on the GPU (ops/softmax.c
// dispatches here for CUDA tensors), forward and backward, over a
// contiguous f32 tensor seen as [outer, n, inner] around the dim.
//
// The last dim (inner == 1) is fused per row: one sweep keeps an online
// (max, sum of exp(x - max)) per thread (the sum is rescaled when the max
// grows), the states are merged across the row's threads, and a second
// sweep writes the row (its reads mostly hit the cache). A row of up to
// 1024 elements gets a warp (8 rows per block: attention rows of 37 or
// 197), a longer one a block (1024 threads for the iBOT head's 65536). Any
// other dim: one thread per (outer, column), coalesced across columns.
// Backward sums accumulate in double, as on the CPU.
#include "cuda_common.cuh"
#include "reduce_block.cuh"
#include "softmax.h"

static const int warp_row_max = 1024;
static const int rows_per_block = 8; // warp rows: 256 threads

// One element into an online state. An element that is +inf contributes
// NaN as exp(inf - inf) does on the CPU; -inf contributes nothing (even to
// an empty state, where exp(-inf - -inf) would be NaN).
__device__ __forceinline__ sere_maxsum softmax_push(sere_maxsum st, float x) {
  if (x > st.m) {
    st.s = st.s * expf(st.m - x) + ((x - x) + 1.0f);
    st.m = x;
  } else if (x != -INFINITY) {
    st.s += expf(x - st.m);
  }
  return st;
}

template <bool PER_WARP>
__global__ void softmax_rows(const float *x, float *y, int64_t rows, int64_t n, int log) {
  __shared__ sere_maxsum scratch[32];
  const sere_row_group<PER_WARP> grp;
  if (grp.row >= rows) return; // only whole warps leave (PER_WARP); a block row always exists
  const float *xr = x + grp.row * n;
  float *yr = y + grp.row * n;
  const sere_maxsum empty = {-INFINITY, 0.0f};
  sere_maxsum st = empty;
  for (int64_t j = grp.lane; j < n; j += grp.lanes) st = softmax_push(st, xr[j]);
  st = grp.reduce(st, scratch, empty, sere_maxsum_op());
  if (log) {
    // (x - m) is exact near the max; x - (m + log s) would round at |x|'s scale.
    const float ls = logf(st.s);
    for (int64_t j = grp.lane; j < n; j += grp.lanes) yr[j] = (xr[j] - st.m) - ls;
  } else {
    const float inv = 1.0f / st.s;
    for (int64_t j = grp.lane; j < n; j += grp.lanes) yr[j] = expf(xr[j] - st.m) * inv;
  }
}

template <bool PER_WARP>
__global__ void softmax_rows_backward(const float *g, const float *y, float *gx, int64_t rows, int64_t n, int log) {
  __shared__ double scratch[32];
  const sere_row_group<PER_WARP> grp;
  if (grp.row >= rows) return;
  const float *gr = g + grp.row * n, *yr = y + grp.row * n;
  float *gxr = gx + grp.row * n;
  double acc = 0;
  for (int64_t j = grp.lane; j < n; j += grp.lanes) acc += log ? gr[j] : gr[j] * yr[j];
  const float s = (float)grp.reduce(acc, scratch, 0.0, sere_add_op());
  if (log)
    for (int64_t j = grp.lane; j < n; j += grp.lanes) gxr[j] = gr[j] - expf(yr[j]) * s;
  else
    for (int64_t j = grp.lane; j < n; j += grp.lanes) gxr[j] = yr[j] * (gr[j] - s);
}

// One thread per (outer, column) of [outer, n, inner].
__global__ void softmax_cols(const float *x, float *y, int64_t outer, int64_t n, int64_t inner, int log) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < outer * inner;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t base = t / inner * n * inner + t % inner;
    sere_maxsum st = {-INFINITY, 0.0f};
    for (int64_t r = 0; r < n; r++) st = softmax_push(st, x[base + r * inner]);
    const float k = log ? logf(st.s) : 1.0f / st.s;
    for (int64_t r = 0; r < n; r++) {
      const int64_t i = base + r * inner;
      y[i] = log ? (x[i] - st.m) - k : expf(x[i] - st.m) * k;
    }
  }
}

__global__ void softmax_cols_backward(const float *g, const float *y, float *gx, int64_t outer, int64_t n,
                                      int64_t inner, int log) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < outer * inner;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t base = t / inner * n * inner + t % inner;
    double acc = 0;
    for (int64_t r = 0; r < n; r++) {
      const int64_t i = base + r * inner;
      acc += log ? g[i] : g[i] * y[i];
    }
    const float s = (float)acc;
    for (int64_t r = 0; r < n; r++) {
      const int64_t i = base + r * inner;
      gx[i] = log ? g[i] - expf(y[i]) * s : y[i] * (g[i] - s);
    }
  }
}

static unsigned capped_blocks(int64_t work, int threads) {
  unsigned b = sere_blocks_for(work, threads);
  return b > 65535u ? 65535u : b;
}

// Threads of a block-per-row launch: enough to keep ~16 elements each.
static int row_threads(int64_t n) { return n >= 16384 ? 1024 : n >= 4096 ? 512 : 256; }

extern "C" int sere_cuda_softmax(const float *x, float *y, int64_t outer, int64_t n, int64_t inner, int log) {
  if (outer * n * inner == 0) return 0;
  if (inner > 1)
    SERE_LAUNCH(softmax_cols, capped_blocks(outer * inner, 256), 256, 0, x, y, outer, n, inner, log);
  else if (n <= warp_row_max)
    SERE_LAUNCH(softmax_rows<true>, sere_blocks_for(outer, rows_per_block), rows_per_block * 32, 0, x, y, outer, n,
                log);
  else
    SERE_LAUNCH(softmax_rows<false>, (unsigned)outer, row_threads(n), 0, x, y, outer, n, log);
  return SERE_CHECK_LAUNCH(log ? "log_softmax (cuda)" : "softmax (cuda)");
}

extern "C" int sere_cuda_softmax_backward(const float *g, const float *y, float *gx, int64_t outer, int64_t n,
                                          int64_t inner, int log) {
  if (outer * n * inner == 0) return 0;
  if (inner > 1)
    SERE_LAUNCH(softmax_cols_backward, capped_blocks(outer * inner, 256), 256, 0, g, y, gx, outer, n, inner, log);
  else if (n <= warp_row_max)
    SERE_LAUNCH(softmax_rows_backward<true>, sere_blocks_for(outer, rows_per_block), rows_per_block * 32, 0, g, y, gx,
                outer, n, log);
  else
    SERE_LAUNCH(softmax_rows_backward<false>, (unsigned)outer, row_threads(n), 0, g, y, gx, outer, n, log);
  return SERE_CHECK_LAUNCH(log ? "log_softmax backward (cuda)" : "softmax backward (cuda)");
}
