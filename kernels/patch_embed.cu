// patch_embed.cu — im2col and col2im for the patch embedding (see
// patch_embed.h): one block per output row, its threads along the row, so
// writes are coalesced and reads come in runs of p contiguous pixels.
#include "cuda_common.cuh"
#include "patch_embed.h"

__device__ __forceinline__ float as_f32(float v) { return v; }
__device__ __forceinline__ float as_f32(uint16_t v) { return sere_bf16_load(&v); }

// Grid-stride over rows (patches b, i, j), threads over the K = C*p*p
// columns. cols has x's dtype, or is f32 (`widen`) for a bf16 x.
template <typename In>
__global__ void im2col_kernel(const In *x, sere_layout xl, int p, int hp, int wp, void *cols, int widen, int64_t rows,
                              int k) {
  int pp = p * p;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t b = r / ((int64_t)hp * wp);
    int i = (int)(r / wp % hp), j = (int)(r % wp);
    const In *img = x + xl.offset + b * xl.stride[0];
    for (int col = threadIdx.x; col < k; col += blockDim.x) {
      int c = col / pp, ky = col % pp / p, kx = col % p;
      In v = img[c * xl.stride[1] + (int64_t)(i * p + ky) * xl.stride[2] + (int64_t)(j * p + kx) * xl.stride[3]];
      if (widen) ((float *)cols)[r * k + col] = as_f32(v);
      else ((In *)cols)[r * k + col] = v;
    }
  }
}

// Grid-stride over image rows (b, c, y), threads over the W pixels.
__global__ void col2im_kernel(const float *cols, int p, int hp, int wp, int64_t channels, int64_t h, int64_t w,
                              float *x, int64_t rows) {
  int64_t k = channels * p * p;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t y = r % h, c = r / h % channels, b = r / (h * channels);
    int i = (int)(y / p), ky = (int)(y % p);
    const float *src = cols + (b * hp + i) * wp * k + (c * p + ky) * p;
    for (int64_t xx = threadIdx.x; xx < w; xx += blockDim.x) {
      int j = (int)(xx / p);
      x[r * w + xx] = i < hp && j < wp ? src[j * k + xx % p] : 0.0f;
    }
  }
}

// A block of `n` threads rounded to whole warps, at most 256.
static int threads_for(int64_t n) { return n >= 256 ? 256 : (int)((n + 31) / 32 * 32); }
static unsigned rows_grid(int64_t rows) { return rows > (1 << 20) ? (1u << 20) : (unsigned)rows; }

extern "C" int sere_cuda_im2col(const sere_tensor *x, int p, sere_tensor *cols) {
  int64_t rows = cols->shape[0], k = cols->shape[1];
  if (rows == 0) return 0;
  int hp = (int)(x->shape[2] / p), wp = (int)(x->shape[3] / p);
  sere_layout xl = sere_layout_of(x);
  const void *xd = x->storage->data;
  void *cd = sere_data(cols);
  unsigned grid = rows_grid(rows);
  int threads = threads_for(k);
  int widen = cols->dtype != x->dtype;
  if (x->dtype == SERE_F32)
    SERE_LAUNCH(im2col_kernel<float>, grid, threads, 0, (const float *)xd, xl, p, hp, wp, cd, widen, rows, (int)k);
  else
    SERE_LAUNCH(im2col_kernel<uint16_t>, grid, threads, 0, (const uint16_t *)xd, xl, p, hp, wp, cd, widen, rows, (int)k);
  return SERE_CHECK_LAUNCH("patch_embed: im2col (cuda)");
}

extern "C" int sere_cuda_col2im(const sere_tensor *cols, int p, sere_tensor *x) {
  int64_t channels = x->shape[1], h = x->shape[2], w = x->shape[3], rows = x->shape[0] * channels * h;
  if (rows == 0 || w == 0) return 0;
  int hp = (int)(h / p), wp = (int)(w / p);
  SERE_LAUNCH(col2im_kernel, rows_grid(rows), threads_for(w), 0, (const float *)sere_data(cols), p, hp, wp, channels, h,
              w, (float *)sere_data(x), rows);
  return SERE_CHECK_LAUNCH("patch_embed: col2im (cuda)");
}
