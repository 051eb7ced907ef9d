// cuda_common.cuh — what every kernel file includes: the launch macro, the
// stream all work goes to, error reporting into sere_fail, bf16 loads and
// stores, and block/warp reductions.
//
// Kernels are written once and built two ways: by nvcc for the GPU, and by
// the host C++ compiler against kernels/emulator/ (SERE_CUDA=EMULATE), which
// runs every thread of a block as a fiber so the parity tests execute the
// kernels' logic on machines without a GPU. Two things therefore go through
// macros instead of CUDA syntax: launches (SERE_LAUNCH) and dynamic shared
// memory (SERE_DYNAMIC_SHARED).
#ifndef SERE_CUDA_COMMON_CUH
#define SERE_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "tensor.h"

// The stream every sere kernel, copy and cuBLAS call is issued on.
extern "C" cudaStream_t sere_cuda_stream(void);

#ifdef SERE_CUDA_EMULATED
#define SERE_LAUNCH(kernel, grid, block, smem, ...) \
  sere_emu_launch(dim3(grid), dim3(block), (size_t)(smem), [=]() { kernel(__VA_ARGS__); })
#define SERE_DYNAMIC_SHARED(type, name) type *name = (type *)sere_emu_dynamic_shared()
#else
#define SERE_LAUNCH(kernel, grid, block, smem, ...) \
  kernel<<<(grid), (block), (smem), sere_cuda_stream()>>>(__VA_ARGS__)
#define SERE_DYNAMIC_SHARED(type, name) \
  extern __shared__ __align__(16) unsigned char sere_dynamic_shared_bytes[]; \
  type *name = (type *)sere_dynamic_shared_bytes
#endif

// After a launch or a runtime call: 0, or -1 with "<what>: <CUDA's message>"
// recorded by sere_fail.
static inline int sere_cuda_check(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  cudaGetLastError();
  sere_fail("%s: %s", what, cudaGetErrorString(e));
  return -1;
}
#define SERE_CHECK_LAUNCH(what) sere_cuda_check(cudaGetLastError(), what)

static inline unsigned sere_blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : b);
}

// bf16 is stored as the top half of an f32 (as on the CPU, tensor.h).
__device__ __forceinline__ float sere_bf16_load(const uint16_t *p) {
  return __uint_as_float((uint32_t)(*p) << 16);
}
__device__ __forceinline__ uint16_t sere_bf16_round(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Any element of any dtype, through double, exactly as tensor.c's
// sere_load_linear / sere_store_linear do on the CPU.
__device__ __forceinline__ double sere_load_any(const void *base, int dtype, int64_t i) {
  switch (dtype) {
    case SERE_F32: return ((const float *)base)[i];
    case SERE_BF16: return sere_bf16_load((const uint16_t *)base + i);
    case SERE_I32: return ((const int32_t *)base)[i];
    case SERE_I64: return (double)((const int64_t *)base)[i];
    case SERE_U8: return ((const uint8_t *)base)[i];
    case SERE_BOOL: return ((const uint8_t *)base)[i] != 0;
    default: return 0;
  }
}
__device__ __forceinline__ void sere_store_any(void *base, int dtype, int64_t i, double v) {
  switch (dtype) {
    case SERE_F32: ((float *)base)[i] = (float)v; break;
    case SERE_BF16: ((uint16_t *)base)[i] = sere_bf16_round((float)v); break;
    case SERE_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case SERE_I64: ((int64_t *)base)[i] = (int64_t)v; break;
    case SERE_U8: ((uint8_t *)base)[i] = (uint8_t)(int64_t)v; break;
    case SERE_BOOL: ((uint8_t *)base)[i] = v != 0; break;
    default: break;
  }
}

// A tensor's strided layout passed to a kernel by value: element i of the
// row-major iteration lives at element offset sere_layout_offset(l, i) from
// the storage's base pointer.
struct sere_layout {
  int ndim;
  int64_t offset;
  int64_t shape[SERE_MAX_DIMS];
  int64_t stride[SERE_MAX_DIMS];
};
static inline sere_layout sere_layout_of(const sere_tensor *t) {
  sere_layout l;
  l.ndim = t->ndim;
  l.offset = t->offset;
  for (int d = 0; d < t->ndim; d++) {
    l.shape[d] = t->shape[d];
    l.stride[d] = t->stride[d];
  }
  return l;
}
__device__ __forceinline__ int64_t sere_layout_offset(const sere_layout &l, int64_t i) {
  int64_t off = l.offset;
  for (int d = l.ndim - 1; d >= 0; d--) {
    int64_t n = l.shape[d];
    off += (i % n) * l.stride[d];
    i /= n;
  }
  return off;
}

// (float or double)
template <typename T>
__device__ __forceinline__ T sere_warp_sum(T v) {
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}
__device__ __forceinline__ float sere_warp_max(float v) {
  for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024) in float
// or double; every thread gets the total. `scratch` is 32 values of shared
// memory; the call may be repeated with the same scratch.
template <typename T>
__device__ __forceinline__ T sere_block_sum(T v, T *scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = sere_warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : (T)0;
  return sere_warp_sum(v);
}
__device__ __forceinline__ float sere_block_max(float v, float *scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = sere_warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
  return sere_warp_max(v);
}

#endif
