// optim.cu — the optimiser's fused updates on the GPU (CUDA twin of
// host/ops/optim.c): AdamW, teacher EMA, per-tensor norms and scaling.
//
// Multi-tensor launches: one launch covers many tensors. The host cuts
// every tensor into chunks of MT_CHUNK elements and gives each block one
// chunk; the block -> (tensor, chunk) map and the tensors' pointers travel
// in the kernel's parameter struct (under the 4 KiB parameter limit), so a
// ViT-S optimiser step is a handful of launches rather than ~10 per
// parameter tensor. The arithmetic is written exactly as in optim.c.
// Norms are deterministic: each block writes its partial sum of squares
// (double) and the host adds a tensor's partials in order.
#include <math.h>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_device.h"
#include "optim.h"

namespace {

const int MT_MAX_TENSORS = 24;
const int MT_MAX_BLOCKS = 320;
const int64_t MT_CHUNK = 32768;
const int MT_THREADS = 256;

struct mt_args {
  float *ptr[4][MT_MAX_TENSORS];
  int64_t numel[MT_MAX_TENSORS];
  float scalar[2][MT_MAX_TENSORS];
  unsigned char block_tensor[MT_MAX_BLOCKS];
  int block_chunk[MT_MAX_BLOCKS];
};

__device__ __forceinline__ void chunk_range(const mt_args &a, int *t, int64_t *start, int64_t *end) {
  *t = a.block_tensor[blockIdx.x];
  *start = (int64_t)a.block_chunk[blockIdx.x] * MT_CHUNK;
  *end = *start + MT_CHUNK < a.numel[*t] ? *start + MT_CHUNK : a.numel[*t];
}

__global__ void adamw_kernel(mt_args a, int decays, float decay, float b1, float one_minus_b1, float b2,
                             float one_minus_b2, float eps) {
  int t;
  int64_t start, end;
  chunk_range(a, &t, &start, &end);
  float *p = a.ptr[0][t], *g = a.ptr[1][t], *m = a.ptr[2][t], *v = a.ptr[3][t];
  float step_size = a.scalar[0][t], sqrt_bc2 = a.scalar[1][t];
  for (int64_t j = start + threadIdx.x; j < end; j += blockDim.x) {
    float gj = g[j];
    float pj = decays ? p[j] * decay : p[j];
    float mj = b1 * m[j] + one_minus_b1 * gj;
    float vj = b2 * v[j] + one_minus_b2 * (gj * gj);
    m[j] = mj;
    v[j] = vj;
    p[j] = pj - step_size * (mj / (sqrtf(vj) / sqrt_bc2 + eps));
  }
}

__global__ void ema_kernel(mt_args a, float m, float one_minus_m) {
  int t;
  int64_t start, end;
  chunk_range(a, &t, &start, &end);
  float *teacher = a.ptr[0][t];
  const float *student = a.ptr[1][t];
  for (int64_t j = start + threadIdx.x; j < end; j += blockDim.x) teacher[j] = m * teacher[j] + one_minus_m * student[j];
}

__global__ void scale_kernel(mt_args a) {
  int t;
  int64_t start, end;
  chunk_range(a, &t, &start, &end);
  float *x = a.ptr[0][t], f = a.scalar[0][t];
  for (int64_t j = start + threadIdx.x; j < end; j += blockDim.x) x[j] *= f;
}

// partial[first_block + blockIdx.x] = sum of squares of the block's chunk.
__global__ void sum_squares_kernel(mt_args a, double *partial) {
  __shared__ double warp_sums[MT_THREADS / 32];
  int t;
  int64_t start, end;
  chunk_range(a, &t, &start, &end);
  const float *x = a.ptr[0][t];
  double s = 0;
  for (int64_t j = start + threadIdx.x; j < end; j += blockDim.x) s += (double)x[j] * x[j];
  for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < MT_THREADS / 32; w++) total += warp_sums[w];
    partial[blockIdx.x] = total;
  }
}

// Walks the lists' tensors chunk by chunk, filling mt_args; `set_scalars`
// (tensor index, slot) fills per-tensor scalars, `launch` (args, blocks,
// index of the launch's first block overall) runs one kernel. Returns 0 or
// the first failing launch's -1.
template <typename SetScalars, typename Launch>
int multi_tensor_apply(int n, int nlists, sere_tensor *const *const *lists, SetScalars set_scalars, Launch launch) {
  mt_args a;
  int tensors = 0, blocks = 0;
  int64_t blocks_before = 0;
  for (int i = 0; i < n; i++) {
    int64_t len = sere_numel(lists[0][i]);
    if (len == 0) continue;
    int64_t chunks = (len + MT_CHUNK - 1) / MT_CHUNK;
    for (int64_t c = 0; c < chunks; c++) {
      if (c == 0 || blocks == 0) {
        // (re)register tensor i in this launch's slots
        if (tensors == MT_MAX_TENSORS) {
          if (launch(a, blocks, blocks_before)) return -1;
          blocks_before += blocks;
          tensors = blocks = 0;
        }
        for (int k = 0; k < nlists; k++) a.ptr[k][tensors] = (float *)sere_data(lists[k][i]);
        a.numel[tensors] = len;
        set_scalars(i, tensors, a);
        tensors++;
      }
      a.block_tensor[blocks] = (unsigned char)(tensors - 1);
      a.block_chunk[blocks] = (int)c;
      blocks++;
      if (blocks == MT_MAX_BLOCKS) {
        if (launch(a, blocks, blocks_before)) return -1;
        blocks_before += blocks;
        tensors = blocks = 0;
      }
    }
  }
  if (blocks > 0 && launch(a, blocks, blocks_before)) return -1;
  return 0;
}

}  // namespace

extern "C" int sere_cuda_adamw(int n, sere_tensor *const *params, sere_tensor *const *grads,
                               sere_tensor *const *exp_avg, sere_tensor *const *exp_avg_sq, const int64_t *steps,
                               const sere_adamw_hparams *h) {
  sere_tensor *const *lists[4] = {params, grads, exp_avg, exp_avg_sq};
  const int decays = h->lr * h->weight_decay != 0;
  const float decay = (float)(1.0 - h->lr * h->weight_decay);
  auto scalars = [&](int i, int slot, mt_args &a) {
    double bc1 = 1.0 - pow(h->beta1, (double)steps[i]), bc2 = 1.0 - pow(h->beta2, (double)steps[i]);
    a.scalar[0][slot] = (float)(h->lr / bc1);
    a.scalar[1][slot] = (float)sqrt(bc2);
  };
  auto launch = [&](const mt_args &a, int blocks, int64_t) {
    SERE_LAUNCH(adamw_kernel, blocks, MT_THREADS, 0, a, decays, decay, (float)h->beta1, (float)(1.0 - h->beta1),
                (float)h->beta2, (float)(1.0 - h->beta2), (float)h->eps);
    return SERE_CHECK_LAUNCH("adamw_step_ (cuda)");
  };
  return multi_tensor_apply(n, 4, lists, scalars, launch);
}

extern "C" int sere_cuda_ema(int n, sere_tensor *const *teacher, sere_tensor *const *student, double momentum) {
  sere_tensor *const *lists[2] = {teacher, student};
  auto scalars = [](int, int, mt_args &) {};
  auto launch = [&](const mt_args &a, int blocks, int64_t) {
    SERE_LAUNCH(ema_kernel, blocks, MT_THREADS, 0, a, (float)momentum, (float)(1.0 - momentum));
    return SERE_CHECK_LAUNCH("ema_ (cuda)");
  };
  return multi_tensor_apply(n, 2, lists, scalars, launch);
}

extern "C" int sere_cuda_scale(int n, sere_tensor *const *ts, const double *factors) {
  sere_tensor *const *lists[1] = {ts};
  auto scalars = [&](int i, int slot, mt_args &a) { a.scalar[0][slot] = (float)factors[i]; };
  auto launch = [&](const mt_args &a, int blocks, int64_t) {
    SERE_LAUNCH(scale_kernel, blocks, MT_THREADS, 0, a);
    return SERE_CHECK_LAUNCH("scale_ (cuda)");
  };
  return multi_tensor_apply(n, 1, lists, scalars, launch);
}

extern "C" int sere_cuda_norms(int n, sere_tensor *const *ts, double *out) {
  int64_t total_blocks = 0;
  for (int i = 0; i < n; i++) total_blocks += (sere_numel(ts[i]) + MT_CHUNK - 1) / MT_CHUNK;
  for (int i = 0; i < n; i++) out[i] = 0;
  if (total_blocks == 0) return 0;
  size_t bytes = (size_t)total_blocks * sizeof(double);
  double *partial = (double *)sere_cuda_alloc(bytes, 0);
  if (!partial) return -1;
  sere_tensor *const *lists[1] = {ts};
  auto scalars = [](int, int, mt_args &) {};
  auto launch = [&](const mt_args &a, int blocks, int64_t first) {
    SERE_LAUNCH(sum_squares_kernel, blocks, MT_THREADS, 0, a, partial + first);
    return SERE_CHECK_LAUNCH("norms (cuda)");
  };
  std::vector<double> host((size_t)total_blocks);
  int rc = multi_tensor_apply(n, 1, lists, scalars, launch);
  if (rc == 0) rc = sere_cuda_download(host.data(), partial, bytes);
  sere_cuda_free(partial, bytes);
  if (rc) return -1;
  int64_t b = 0;
  for (int i = 0; i < n; i++) {
    int64_t chunks = (sere_numel(ts[i]) + MT_CHUNK - 1) / MT_CHUNK;
    double s = 0;
    for (int64_t c = 0; c < chunks; c++) s += host[(size_t)(b + c)];
    b += chunks;
    out[i] = sqrt(s);
  }
  return 0;
}
