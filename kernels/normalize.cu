// normalize.cu — L2 normalisation on the GPU (ops/normalize.c dispatches
// here for CUDA tensors), forward and backward, over a contiguous f32
// tensor seen as [outer, len, inner] around the dim. Sums of squares and
// of g * x accumulate in double, as on the CPU.
//
// The last dim (inner == 1): a warp per line of up to 1024 elements (8
// lines per block), a block per longer line; one sweep for the sum, one
// for the output. Any other dim: one thread per (outer, column),
// coalesced across columns.
#include "cuda_common.cuh"
#include "normalize.h"
#include "reduce_block.cuh"

static const int warp_line_max = 1024;
static const int lines_per_block = 8;

// The gradient is gx = a g - b x per line (ops/normalize.c's grad_coefs).
__device__ __forceinline__ void grad_coefs(float norm, float eps, double gx_dot, float *a, float *b) {
  float d = norm > eps ? norm : eps;
  *a = 1.0f / d;
  *b = norm >= eps && norm > 0 ? (float)(gx_dot / ((double)d * d * norm)) : 0.0f;
}

// Forward (g == NULL: y and norms written) or backward (out = gx, norms
// read) of the lines of the last dim.
template <bool PER_WARP>
__global__ void normalize_rows(const float *x, const float *g, float *out, float *norms, int64_t lines, int64_t len,
                               float eps) {
  __shared__ double scratch[32];
  const sere_row_group<PER_WARP> grp;
  if (grp.row >= lines) return; // whole warps only
  const float *xr = x + grp.row * len;
  const float *gr = g ? g + grp.row * len : NULL;
  float *o = out + grp.row * len;
  double acc = 0;
  for (int64_t j = grp.lane; j < len; j += grp.lanes) acc += (double)xr[j] * (gr ? gr[j] : xr[j]);
  acc = grp.reduce(acc, scratch, 0.0, sere_add_op());
  if (g) {
    float a, b;
    grad_coefs(norms[grp.row], eps, acc, &a, &b);
    for (int64_t j = grp.lane; j < len; j += grp.lanes) o[j] = gr[j] * a - xr[j] * b;
  } else {
    const float n = (float)sqrt(acc), d = n > eps ? n : eps;
    for (int64_t j = grp.lane; j < len; j += grp.lanes) o[j] = xr[j] / d;
    if (grp.lane == 0) norms[grp.row] = n;
  }
}

// One thread per (outer, column) of [outer, len, inner]; same modes.
__global__ void normalize_cols(const float *x, const float *g, float *out, float *norms, int64_t outer, int64_t len,
                               int64_t inner, float eps) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < outer * inner;
       t += (int64_t)gridDim.x * blockDim.x) {
    const int64_t base = t / inner * len * inner + t % inner;
    double acc = 0;
    for (int64_t r = 0; r < len; r++) {
      const int64_t i = base + r * inner;
      acc += (double)x[i] * (g ? g[i] : x[i]);
    }
    if (g) {
      float a, b;
      grad_coefs(norms[t], eps, acc, &a, &b);
      for (int64_t r = 0; r < len; r++) {
        const int64_t i = base + r * inner;
        out[i] = g[i] * a - x[i] * b;
      }
    } else {
      const float n = (float)sqrt(acc), d = n > eps ? n : eps;
      for (int64_t r = 0; r < len; r++) out[base + r * inner] = x[base + r * inner] / d;
      norms[t] = n;
    }
  }
}

static int run(const float *x, const float *g, float *out, float *norms, int64_t outer, int64_t len, int64_t inner,
               float eps, const char *what) {
  if (outer * len * inner == 0) return 0;
  if (inner > 1) {
    unsigned blocks = sere_blocks_for(outer * inner, 256);
    SERE_LAUNCH(normalize_cols, blocks > 65535u ? 65535u : blocks, 256, 0, x, g, out, norms, outer, len, inner, eps);
  } else if (len <= warp_line_max) {
    SERE_LAUNCH(normalize_rows<true>, sere_blocks_for(outer, lines_per_block), lines_per_block * 32, 0, x, g, out,
                norms, outer, len, eps);
  } else {
    SERE_LAUNCH(normalize_rows<false>, (unsigned)outer, len >= 16384 ? 1024 : 256, 0, x, g, out, norms, outer, len,
                eps);
  }
  return SERE_CHECK_LAUNCH(what);
}

extern "C" int sere_cuda_l2_normalize(const float *x, float *y, float *norms, int64_t outer, int64_t len,
                                      int64_t inner, float eps) {
  return run(x, NULL, y, norms, outer, len, inner, eps, "normalize (cuda)");
}

extern "C" int sere_cuda_l2_normalize_backward(const float *g, const float *x, const float *norms, float *gx,
                                               int64_t outer, int64_t len, int64_t inner, float eps) {
  return run(x, g, gx, (float *)norms, outer, len, inner, eps, "normalize backward (cuda)");
}
