// activation.cu — GELU and ReLU on the GPU, forward and backward, one
// element a thread over contiguous f32 or bf16 arrays (ops/activation.c
// makes its operands contiguous first).
//
// GELU is x Phi(x) with CUDA's normcdff (Phi through erfcf, accurate in both
// tails, no cancellation for x << 0); its derivative Phi(x) + x pdf(x).
// NaN and infinite inputs give NaN gradients, as on the CPU. ReLU keeps NaN
// (x < 0 ? 0 : x) and passes the gradient where its output is positive.
#include <math.h>

#include "activation.h"
#include "cuda_common.cuh"

__device__ __forceinline__ float load_float(const void *p, int dtype, int64_t i) {
  return dtype == SERE_BF16 ? sere_bf16_load((const uint16_t *)p + i) : ((const float *)p)[i];
}

__device__ __forceinline__ void store_float(void *p, int dtype, int64_t i, float v) {
  if (dtype == SERE_BF16) ((uint16_t *)p)[i] = sere_bf16_round(v);
  else ((float *)p)[i] = v;
}

__device__ __forceinline__ float gelu(float x) { return x * normcdff(x); }

__device__ __forceinline__ float gelu_derivative(float x) {
  return normcdff(x) + x * (0.398942280401432678f * expf(-0.5f * x * x));  // 1 / sqrt(2 pi)
}

__global__ void activation_kernel(sere_activation act, int backward, const void *a, int a_dtype, const void *b,
                                  int b_dtype, void *out, int out_dtype, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float x = load_float(a, a_dtype, i), r;
    if (!backward) {
      r = act == SERE_ACT_GELU ? gelu(x) : x < 0.0f ? 0.0f : x;
    } else {
      float s = load_float(b, b_dtype, i);
      r = act == SERE_ACT_GELU ? x * gelu_derivative(s) : s > 0.0f ? x : 0.0f;
    }
    store_float(out, out_dtype, i, r);
  }
}

extern "C" int sere_cuda_activation(sere_activation act, int backward, const void *a, int a_dtype, const void *b,
                                    int b_dtype, void *out, int out_dtype, int64_t n) {
  if (n == 0) return 0;
  const int threads = 256;
  unsigned blocks = sere_blocks_for(n, threads);
  if (blocks > 65535u) blocks = 65535u;
  SERE_LAUNCH(activation_kernel, blocks, threads, 0, act, backward, a, a_dtype, b, b_dtype, out, out_dtype, n);
  return SERE_CHECK_LAUNCH(act == SERE_ACT_GELU ? "gelu (cuda)" : "relu (cuda)");
}
