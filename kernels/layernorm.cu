// layernorm.cu — layer norm over the last dim on the GPU (ops/layernorm.c
// dispatches here for CUDA tensors): the fused forward and backward over
// contiguous f32 rows [rows, d].
//
// Forward and the input gradient: one warp per row (eight rows per block),
// the lanes striding over the row, so a row of d = 64 .. 1024 is a few
// coalesced sweeps that stay in L1 between the passes. The row is shifted
// by its first value as on the CPU (u = x - x0), mean and biased variance
// in two sweeps, and (shift, mean, rstd) saved per row.
//
// The weight and bias gradients sum over rows without atomics: a first
// kernel sums a fixed block of rows per CUDA block (one thread per column,
// coalesced across the row), a second adds the block partials of each
// column in order, in double. The split depends only on the shape, so the
// result is deterministic.
#include "cuda_common.cuh"
#include "cuda_device.h"
#include "layernorm.h"

static const int rows_per_block = 8;  // one warp each
static const int max_row_blocks = 256;

// A missing weight is 1, a missing bias 0.
__device__ __forceinline__ float weight_or_one(const float *w, int64_t j) { return w ? w[j] : 1.0f; }

__global__ void layer_norm_forward_rows(const float *x, const float *w, const float *b, float *y, float *stats,
                                        int64_t rows, int64_t d, float eps) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * (int64_t)rows_per_block + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * rows_per_block) {
    const float *xr = x + r * d;
    const float x0 = xr[0];
    float s = 0, v = 0;
    for (int64_t j = lane; j < d; j += 32) s += xr[j] - x0;
    const float mean = sere_warp_sum(s) / (float)d;
    for (int64_t j = lane; j < d; j += 32) {
      float u = xr[j] - x0 - mean;
      v += u * u;
    }
    const float rstd = 1.0f / sqrtf(sere_warp_sum(v) / (float)d + eps);
    float *yr = y + r * d;
    for (int64_t j = lane; j < d; j += 32) yr[j] = (xr[j] - x0 - mean) * rstd * weight_or_one(w, j) + (b ? b[j] : 0.0f);
    if (lane == 0) {
      stats[3 * r] = x0;
      stats[3 * r + 1] = mean;
      stats[3 * r + 2] = rstd;
    }
  }
}

// gx = rstd (g w - mean(g w) - xh mean(g w xh)) per row.
__global__ void layer_norm_backward_rows(const float *g, const float *x, const float *w, const float *stats,
                                         int64_t rows, int64_t d, float *gx) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * (int64_t)rows_per_block + (threadIdx.x >> 5); r < rows;
       r += (int64_t)gridDim.x * rows_per_block) {
    const float *gr = g + r * d, *xr = x + r * d;
    const float x0 = stats[3 * r], mean = stats[3 * r + 1], rstd = stats[3 * r + 2];
    float s1 = 0, s2 = 0;
    for (int64_t j = lane; j < d; j += 32) {
      float gy = gr[j] * weight_or_one(w, j);
      s1 += gy;
      s2 += gy * (xr[j] - x0 - mean) * rstd;
    }
    const float m1 = sere_warp_sum(s1) / (float)d, m2 = sere_warp_sum(s2) / (float)d;
    float *gxr = gx + r * d;
    for (int64_t j = lane; j < d; j += 32)
      gxr[j] = rstd * (gr[j] * weight_or_one(w, j) - m1 - (xr[j] - x0 - mean) * rstd * m2);
  }
}

// Block k sums rows [k per, (k + 1) per) per column: pw[k, j] = sum g xh,
// pb[k, j] = sum g (either may be NULL).
__global__ void layer_norm_affine_partials(const float *g, const float *x, const float *stats, int64_t rows,
                                           int64_t d, int64_t per, float *pw, float *pb) {
  const int64_t k = blockIdx.x, start = k * per, end = start + per < rows ? start + per : rows;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float sw = 0, sb = 0;
    for (int64_t r = start; r < end; r++) {
      const float gv = g[r * d + j];
      sw += gv * (x[r * d + j] - stats[3 * r] - stats[3 * r + 1]) * stats[3 * r + 2];
      sb += gv;
    }
    if (pw) pw[k * d + j] = sw;
    if (pb) pb[k * d + j] = sb;
  }
}

// out[j] = sum over k of part[k, j], in block order, in double.
__global__ void layer_norm_sum_partials(const float *part, int64_t nblocks, int64_t d, float *out) {
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < d; j += (int64_t)gridDim.x * blockDim.x) {
    double s = 0;
    for (int64_t k = 0; k < nblocks; k++) s += part[k * d + j];
    out[j] = (float)s;
  }
}

static unsigned row_grid(int64_t rows) {
  unsigned b = sere_blocks_for(rows, rows_per_block);
  return b > 65535u ? 65535u : b;
}

// Threads for a block that walks the d columns: a multiple of 32, at most 256.
static int column_threads(int64_t d) { return d >= 256 ? 256 : (int)((d + 31) / 32 * 32); }

extern "C" int sere_cuda_layer_norm_forward(const float *x, const float *w, const float *b, float *y, float *stats,
                                            int64_t rows, int64_t d, float eps) {
  if (rows == 0 || d == 0) return 0;
  SERE_LAUNCH(layer_norm_forward_rows, row_grid(rows), 32 * rows_per_block, 0, x, w, b, y, stats, rows, d, eps);
  return SERE_CHECK_LAUNCH("layer_norm (cuda)");
}

extern "C" int sere_cuda_layer_norm_backward(const float *g, const float *x, const float *w, const float *stats,
                                             int64_t rows, int64_t d, float *gx, float *gw, float *gb) {
  if (d == 0) return 0;
  if (gx && rows) {
    SERE_LAUNCH(layer_norm_backward_rows, row_grid(rows), 32 * rows_per_block, 0, g, x, w, stats, rows, d, gx);
    if (SERE_CHECK_LAUNCH("layer_norm backward (cuda)")) return -1;
  }
  if (!gw && !gb) return 0;
  const int64_t nblocks = rows < max_row_blocks ? (rows ? rows : 1) : max_row_blocks;
  const int64_t per = (rows + nblocks - 1) / nblocks;
  const size_t nbytes = (size_t)(2 * nblocks * d) * sizeof(float);
  float *part = (float *)sere_cuda_alloc(nbytes, 0);
  if (!part) return -1;
  float *pw = part, *pb = part + nblocks * d;
  const int threads = column_threads(d);
  SERE_LAUNCH(layer_norm_affine_partials, (unsigned)nblocks, threads, 0, g, x, stats, rows, d, per, gw ? pw : NULL,
              gb ? pb : NULL);
  int rc = SERE_CHECK_LAUNCH("layer_norm backward (cuda)");
  const unsigned grid = sere_blocks_for(d, threads);
  if (!rc && gw) {
    SERE_LAUNCH(layer_norm_sum_partials, grid, threads, 0, pw, nblocks, d, gw);
    rc = SERE_CHECK_LAUNCH("layer_norm backward (cuda)");
  }
  if (!rc && gb) {
    SERE_LAUNCH(layer_norm_sum_partials, grid, threads, 0, pb, nblocks, d, gb);
    rc = SERE_CHECK_LAUNCH("layer_norm backward (cuda)");
  }
  sere_cuda_free(part, nbytes);
  return rc;
}
