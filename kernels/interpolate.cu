// interpolate.cu — bicubic resampling of [B, C, H, W] maps on the GPU: the
// CUDA path of sere_interpolate_bicubic (host/ops/interpolate.c), forward
// and backward, with the CPU op's semantics: PyTorch's bicubic with
// align_corners=False, A = -0.75, taps clamped to the border, and the scale
// factors themselves mapping coordinates (output index j reads
// src = (j + 0.5) / s - 0.5, with 1 / s rounded to f32).
//
// src is computed with explicitly rounded f32 operations (__fmul_rn,
// __fadd_rn, which nvcc never fuses into an FMA) exactly as the CPU writes
// it, so floor(src), and with it every tap index, is the CPU's. Each sum
// below is also accumulated in the CPU's order.
//
// Forward: one thread per output element; each of its four row taps
// combines four column taps (the CPU's horizontal pass), and the four row
// values are then mixed (its vertical pass).
//
// Backward: a gather, one thread per input element. The outputs whose
// clamped taps reach input row h are those whose floor(src) lies in
// [h - 2, h + 1]. That holds for the border rows too, whose clamped taps
// come from floor(src) <= 1 (row 0) and floor(src) >= H - 3 (row H - 1):
// -0.5 <= src < H - 0.5 (the last output's src is at most
// (floor(H s) - 0.5) / s - 0.5), so -1 <= floor(src) <= H - 1 and for
// h = 0 and h = H - 1 those sets equal [h - 2, h + 1] anyway. floor(src)
// never decreases with the output index, so the outputs form one
// contiguous range, found by binary search on the same tap function, and
// likewise for columns. The thread then sums weight x gradient over that
// rectangle in the order of the CPU's transposed passes. A gather rather
// than an atomicAdd scatter because every element of the gradient is then
// written exactly once (no zero fill, and a bf16 gradient is stored
// directly rather than staged in f32), the result is deterministic, and the
// border elements, which receive from many outputs when upsampling, do not
// serialise on contended atomics. The cost is about 16 multiply-adds per
// output element, as in the forward.
#include "cuda_common.cuh"
#include "interpolate.h"

static const int bicubic_threads = 256;

// floor(src) of output index j: the CPU's src = scale * (j + 0.5) - 0.5 in f32.
__device__ __forceinline__ float source_floor(int64_t j, float scale, float *frac) {
  float src = __fadd_rn(__fmul_rn(scale, __fadd_rn((float)j, 0.5f)), -0.5f);
  float f = floorf(src);
  if (frac) *frac = src - f;
  return f;
}

// The first (unclamped) tap of output index j and the four tap weights.
__device__ __forceinline__ int64_t cubic_taps(int64_t j, float scale, float w[4]) {
  const float A = -0.75f;
  float u;
  float f = source_floor(j, scale, &u);
  float t0 = u + 1, t3 = 2 - u, t2 = 1 - u;
  w[0] = ((A * t0 - 5 * A) * t0 + 8 * A) * t0 - 4 * A;
  w[1] = ((A + 2) * u - (A + 3)) * u * u + 1;
  w[2] = ((A + 2) * t2 - (A + 3)) * t2 * t2 + 1;
  w[3] = ((A * t3 - 5 * A) * t3 + 8 * A) * t3 - 4 * A;
  return (int64_t)f - 1;
}

__device__ __forceinline__ int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : i >= n ? n - 1 : i; }

__global__ void bicubic_forward(const void *x, int x_dtype, sere_layout xl, void *y, int y_dtype, int64_t C, int64_t H,
                                int64_t W, int64_t Ho, int64_t Wo, float scale_y, float scale_x, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t j = i % Wo, r = i / Wo % Ho, plane = i / (Wo * Ho);
    int64_t base = xl.offset + plane / C * xl.stride[0] + plane % C * xl.stride[1];
    float wy[4], wx[4];
    int64_t fy = cubic_taps(r, scale_y, wy), fx = cubic_taps(j, scale_x, wx), col[4];
    for (int k = 0; k < 4; k++) col[k] = clamp_index(fx + k, W) * xl.stride[3];
    float rows[4];
    for (int k = 0; k < 4; k++) {
      int64_t row = base + clamp_index(fy + k, H) * xl.stride[2];
      float v = (float)sere_load_any(x, x_dtype, row + col[0]) * wx[0];
      v += (float)sere_load_any(x, x_dtype, row + col[1]) * wx[1];
      v += (float)sere_load_any(x, x_dtype, row + col[2]) * wx[2];
      v += (float)sere_load_any(x, x_dtype, row + col[3]) * wx[3];
      rows[k] = v;
    }
    sere_store_any(y, y_dtype, i, rows[0] * wy[0] + rows[1] * wy[1] + rows[2] * wy[2] + rows[3] * wy[3]);
  }
}

// The first output index whose floor(src) is >= bound (n if none).
__device__ int64_t first_at_least(float bound, int64_t n, float scale) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    int64_t mid = lo + (hi - lo) / 2;
    if (source_floor(mid, scale, NULL) >= bound)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// The outputs [*first, *last] among n whose clamped taps include input
// index h (empty when *first > *last).
__device__ void outputs_reaching(int64_t h, int64_t n, float scale, int64_t *first, int64_t *last) {
  *first = first_at_least((float)(h - 2), n, scale);
  *last = first_at_least((float)(h + 2), n, scale) - 1;
}

__global__ void bicubic_backward(const void *g, int g_dtype, sere_layout gl, void *gx, int gx_dtype, int64_t C,
                                 int64_t H, int64_t W, int64_t Ho, int64_t Wo, float scale_y, float scale_x,
                                 int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t w = i % W, h = i / W % H, plane = i / (W * H);
    int64_t base = gl.offset + plane / C * gl.stride[0] + plane % C * gl.stride[1];
    int64_t r0, r1, j0, j1;
    outputs_reaching(h, Ho, scale_y, &r0, &r1);
    outputs_reaching(w, Wo, scale_x, &j0, &j1);
    float acc = 0;
    for (int64_t j = j0; j <= j1; j++) {
      float wx[4];
      int64_t fx = cubic_taps(j, scale_x, wx);
      float column = 0;  // the CPU's tmp[h][j]: column j of the vertical pass, at row h
      int have_column = 0;
      for (int l = 0; l < 4; l++) {
        if (clamp_index(fx + l, W) != w) continue;
        if (!have_column) {
          for (int64_t r = r0; r <= r1; r++) {
            float wy[4];
            int64_t fy = cubic_taps(r, scale_y, wy);
            for (int k = 0; k < 4; k++)
              if (clamp_index(fy + k, H) == h)
                column += wy[k] * (float)sere_load_any(g, g_dtype, base + r * gl.stride[2] + j * gl.stride[3]);
          }
          have_column = 1;
        }
        acc += wx[l] * column;
      }
    }
    sere_store_any(gx, gx_dtype, i, acc);
  }
}

static unsigned bicubic_blocks(int64_t n) {
  unsigned b = sere_blocks_for(n, bicubic_threads);
  return b > 65535u ? 65535u : b;
}

extern "C" int sere_cuda_interpolate_bicubic(const sere_tensor *x, sere_tensor *y, double sy, double sx) {
  int64_t n = sere_numel(y);
  if (n == 0) return 0;
  SERE_LAUNCH(bicubic_forward, bicubic_blocks(n), bicubic_threads, 0, (const void *)x->storage->data, (int)x->dtype,
              sere_layout_of(x), sere_data(y), (int)y->dtype, x->shape[1], x->shape[2], x->shape[3], y->shape[2],
              y->shape[3], (float)(1.0 / sy), (float)(1.0 / sx), n);
  return SERE_CHECK_LAUNCH("interpolate_bicubic (cuda)");
}

extern "C" int sere_cuda_interpolate_bicubic_backward(const sere_tensor *g, sere_tensor *gx, double sy, double sx) {
  int64_t n = sere_numel(gx);
  if (n == 0) return 0;
  SERE_LAUNCH(bicubic_backward, bicubic_blocks(n), bicubic_threads, 0, (const void *)g->storage->data, (int)g->dtype,
              sere_layout_of(g), sere_data(gx), (int)gx->dtype, gx->shape[1], gx->shape[2], gx->shape[3], g->shape[2],
              g->shape[3], (float)(1.0 / sy), (float)(1.0 / sx), n);
  return SERE_CHECK_LAUNCH("interpolate_bicubic backward (cuda)");
}
