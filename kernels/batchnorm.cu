// batchnorm.cu — batch norm on the GPU (ops/batchnorm.c dispatches here
// for CUDA tensors): per-channel sums, the per-channel coefficients and the
// per-channel affine map over contiguous f32 [outer, C, inner].
//
// Per-channel sums, without atomics and independent of the hardware:
// `outer` is cut into a fixed number of blocks (a function of the shape
// only), each block's partial sums go to a [blocks, C] buffer of doubles,
// and a second kernel adds the blocks of each channel in order.
//  - inner == 1 ([B, C], channels last): one CUDA block per block of rows,
//    a thread per channel, so each row is read coalesced;
//  - inner > 1 ([B, C, H W]): one CUDA block per (block of rows, channel),
//    the threads over the block's (row, position) pairs, reduced in double.
// The per-channel coefficient kernels run one thread per channel; the
// formulas are batchnorm.c's (mean and biased variance from the double
// sums, running statistics with the unbiased variance).
#include "batchnorm.h"
#include "cuda_common.cuh"
#include "cuda_device.h"

static const int channel_threads = 256;
static const int max_outer_blocks = 256;
// Values per CUDA block at least, when inner > 1 (fewer, larger blocks).
static const int64_t plane_block_values = 4096;

// inner == 1: block k sums rows [k per, (k + 1) per) of [outer, nc] per channel.
__global__ void bn_partials_rows(const float *a, const float *b, const float *m, int64_t outer, int64_t nc,
                                 int64_t per, double *p1, double *p2) {
  const int64_t k = blockIdx.x, start = k * per, end = start + per < outer ? start + per : outer;
  for (int64_t c = threadIdx.x; c < nc; c += blockDim.x) {
    const float mc = b ? m[c] : 0.0f;
    double t1 = 0, t2 = 0;
    for (int64_t o = start; o < end; o++) {
      const float v = a[o * nc + c];
      t1 += v;
      t2 += (double)v * (b ? b[o * nc + c] - mc : v);
    }
    p1[k * nc + c] = t1;
    p2[k * nc + c] = t2;
  }
}

// inner > 1: block (k, c) sums channel c over rows [k per, (k + 1) per).
__global__ void bn_partials_planes(const float *a, const float *b, const float *m, int64_t outer, int64_t nc,
                                   int64_t inner, int64_t per, double *p1, double *p2) {
  __shared__ double scratch[32];
  const int64_t k = blockIdx.x, start = k * per, end = start + per < outer ? start + per : outer;
  for (int64_t c = blockIdx.y; c < nc; c += gridDim.y) {
    const float mc = b ? m[c] : 0.0f;
    double t1 = 0, t2 = 0;
    const int64_t n = (end - start) * inner;
    for (int64_t idx = threadIdx.x; idx < n; idx += blockDim.x) {
      const int64_t at = ((start + idx / inner) * nc + c) * inner + idx % inner;
      const float v = a[at];
      t1 += v;
      t2 += (double)v * (b ? b[at] - mc : v);
    }
    t1 = sere_block_sum(t1, scratch);
    t2 = sere_block_sum(t2, scratch);
    if (threadIdx.x == 0) {
      p1[k * nc + c] = t1;
      p2[k * nc + c] = t2;
    }
  }
}

// s1[c] = sum over k of p1[k, c] in order; the same for s2.
__global__ void bn_sum_partials(const double *p1, const double *p2, int64_t nblocks, int64_t nc, double *s1,
                                double *s2) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < nc; c += (int64_t)gridDim.x * blockDim.x) {
    double t1 = 0, t2 = 0;
    for (int64_t k = 0; k < nblocks; k++) {
      t1 += p1[k * nc + c];
      t2 += p2[k * nc + c];
    }
    s1[c] = t1;
    s2[c] = t2;
  }
}

// [rows, cols] with the channel of element (row, col) given by inner:
// inner == 1 is rows = outer, cols = nc (channel = col); otherwise rows =
// outer nc planes of cols = inner (channel = row % nc).
__global__ void bn_affine(float *out, const float *a, const float *b, const float *m, const float *k1,
                          const float *k2, const float *k3, int64_t rows, int64_t cols, int64_t nc, int64_t inner) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    for (int64_t col = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; col < cols;
         col += (int64_t)gridDim.x * blockDim.x) {
      const int64_t c = inner == 1 ? col : row % nc, at = row * cols + col;
      const float mc = m ? m[c] : 0.0f, shift = k3 ? k3[c] : 0.0f;
      out[at] = b ? k1[c] * a[at] + k2[c] * (b[at] - mc) + shift : k1[c] * (a[at] - mc) + shift;
    }
  }
}

// A [C] running statistic as a kernel sees it: any float dtype, any stride.
struct channel_vector {
  void *data;
  int dtype;
  int64_t offset, stride;
};
static channel_vector channel_vector_of(const sere_tensor *t) {
  channel_vector v = {NULL, SERE_F32, 0, 0};
  if (t) {
    v.data = t->storage->data;
    v.dtype = (int)t->dtype;
    v.offset = t->offset;
    v.stride = t->stride[0];
  }
  return v;
}
__device__ __forceinline__ double channel_load(const channel_vector &v, int64_t c) {
  return sere_load_any(v.data, v.dtype, v.offset + c * v.stride);
}
__device__ __forceinline__ void channel_store(const channel_vector &v, int64_t c, double x) {
  sere_store_any(v.data, v.dtype, v.offset + c * v.stride, x);
}

__global__ void bn_forward_coefficients(const double *s, double count, channel_vector rm, channel_vector rv,
                                        const float *w, const float *b, int64_t nc, double momentum, double eps,
                                        float *mean, float *invstd, float *k1, float *k3) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < nc; c += (int64_t)gridDim.x * blockDim.x) {
    double mu, var;
    if (s) {
      mu = s[c] / count;
      var = s[nc + c] / count - mu * mu;
      var = var > 0 ? var : 0;
      if (rm.data) {
        const double om = channel_load(rm, c), ov = channel_load(rv, c);
        channel_store(rm, c, om + momentum * (mu - om));
        channel_store(rv, c, ov + momentum * (var * (count / (count - 1)) - ov));
      }
    } else {
      mu = channel_load(rm, c);
      var = channel_load(rv, c);
    }
    const double is = 1.0 / sqrt(var + eps);
    mean[c] = (float)mu;
    invstd[c] = (float)is;
    k1[c] = (float)((w ? (double)w[c] : 1.0) * is);
    k3[c] = b ? b[c] : 0.0f;
  }
}

__global__ void bn_gradient_sums(double *s, const float *invstd, int64_t nc, float *gw, float *gb) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < nc; c += (int64_t)gridDim.x * blockDim.x) {
    s[nc + c] *= invstd[c];
    if (gw) gw[c] = (float)s[nc + c];
    if (gb) gb[c] = (float)s[c];
  }
}

__global__ void bn_input_coefficients(const double *r, const float *w, const float *invstd, double count, int64_t nc,
                                      float *k1, float *k2, float *k3) {
  for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < nc; c += (int64_t)gridDim.x * blockDim.x) {
    const double a = (w ? (double)w[c] : 1.0) * invstd[c];
    k1[c] = (float)a;
    k2[c] = r ? (float)(-a * invstd[c] * r[nc + c] / count) : 0.0f;
    k3[c] = r ? (float)(-a * r[c] / count) : 0.0f;
  }
}

static unsigned channel_grid(int64_t nc) {
  unsigned g = sere_blocks_for(nc, channel_threads);
  return g > 65535u ? 65535u : g;
}

extern "C" int sere_cuda_bn_channel_sums(const float *a, const float *b, const float *m, int64_t outer, int64_t nc,
                                         int64_t inner, double *s1, double *s2) {
  if (nc == 0) return 0;
  int64_t nblocks = inner == 1 ? max_outer_blocks : outer * inner / plane_block_values;
  if (nblocks > max_outer_blocks) nblocks = max_outer_blocks;
  if (nblocks > outer) nblocks = outer;
  if (nblocks < 1) nblocks = 1;
  const int64_t per = (outer + nblocks - 1) / nblocks;
  const size_t nbytes = (size_t)(2 * nblocks * nc) * sizeof(double);
  double *part = (double *)sere_cuda_alloc(nbytes, 0);
  if (!part) return -1;
  double *p1 = part, *p2 = part + nblocks * nc;
  if (inner == 1)
    SERE_LAUNCH(bn_partials_rows, (unsigned)nblocks, channel_threads, 0, a, b, m, outer, nc, per, p1, p2);
  else
    SERE_LAUNCH(bn_partials_planes, dim3((unsigned)nblocks, nc > 65535 ? 65535u : (unsigned)nc), channel_threads, 0,
                a, b, m, outer, nc, inner, per, p1, p2);
  int rc = SERE_CHECK_LAUNCH("batch_norm (cuda)");
  if (!rc) {
    SERE_LAUNCH(bn_sum_partials, channel_grid(nc), channel_threads, 0, p1, p2, nblocks, nc, s1, s2);
    rc = SERE_CHECK_LAUNCH("batch_norm (cuda)");
  }
  sere_cuda_free(part, nbytes);
  return rc;
}

extern "C" int sere_cuda_bn_channel_affine(float *out, const float *a, const float *b, const float *m,
                                           const float *k1, const float *k2, const float *k3, int64_t outer,
                                           int64_t nc, int64_t inner) {
  const int64_t rows = inner == 1 ? outer : outer * nc, cols = inner == 1 ? nc : inner;
  if (rows == 0 || cols == 0) return 0;
  const unsigned gx = sere_blocks_for(cols, channel_threads), gy = rows > 65535 ? 65535u : (unsigned)rows;
  SERE_LAUNCH(bn_affine, dim3(gx, gy), channel_threads, 0, out, a, b, m, k1, k2, k3, rows, cols, nc, inner);
  return SERE_CHECK_LAUNCH("batch_norm (cuda)");
}

extern "C" int sere_cuda_bn_forward_coefficients(const double *s, double count, sere_tensor *running_mean,
                                                 sere_tensor *running_var, const float *w, const float *b, int64_t nc,
                                                 double momentum, double eps, float *mean, float *invstd, float *k1,
                                                 float *k3) {
  if (nc == 0) return 0;
  SERE_LAUNCH(bn_forward_coefficients, channel_grid(nc), channel_threads, 0, s, count, channel_vector_of(running_mean),
              channel_vector_of(running_var), w, b, nc, momentum, eps, mean, invstd, k1, k3);
  return SERE_CHECK_LAUNCH("batch_norm (cuda)");
}

extern "C" int sere_cuda_bn_gradient_sums(double *s, const float *invstd, int64_t nc, float *gw, float *gb) {
  if (nc == 0) return 0;
  SERE_LAUNCH(bn_gradient_sums, channel_grid(nc), channel_threads, 0, s, invstd, nc, gw, gb);
  return SERE_CHECK_LAUNCH("batch_norm backward (cuda)");
}

extern "C" int sere_cuda_bn_input_coefficients(const double *r, const float *w, const float *invstd, double count,
                                               int64_t nc, float *k1, float *k2, float *k3) {
  if (nc == 0) return 0;
  SERE_LAUNCH(bn_input_coefficients, channel_grid(nc), channel_threads, 0, r, w, invstd, count, nc, k1, k2, k3);
  return SERE_CHECK_LAUNCH("batch_norm backward (cuda)");
}
