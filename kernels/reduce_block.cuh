// reduce_block.cuh — warp and block reductions over any value type with any
// combine rule, for the reduction family (reduce.cu, softmax.cu,
// normalize.cu): double sums, NaN-propagating maxima, (key, index) pairs
// of argmax, (max, sum) pairs of an online softmax. cuda_common.cuh's
// sere_block_sum/max cover the plain f32 cases.
//
// Reductions use xor butterflies, so every lane and every thread ends with
// the same, bitwise identical value (each step combines the same two
// operands on both sides; the combine rules here are commutative).
#ifndef SERE_REDUCE_BLOCK_CUH
#define SERE_REDUCE_BLOCK_CUH

#include "cuda_common.cuh"

// A (key, index) candidate of an arg-selection: the larger key wins, the
// lower index among equal keys (the CPU's rule in ops/topk.c).
struct sere_keyed {
  int64_t key, idx;
};
// A running (max, sum of exp(x - max)) of an online softmax.
struct sere_maxsum {
  float m, s;
};

__device__ __forceinline__ double sere_shfl_xor(double v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ float sere_shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m); }
__device__ __forceinline__ unsigned long long sere_shfl_xor(unsigned long long v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ sere_keyed sere_shfl_xor(sere_keyed v, int m) {
  sere_keyed r;
  r.key = (int64_t)__shfl_xor_sync(0xffffffffu, (long long)v.key, m);
  r.idx = (int64_t)__shfl_xor_sync(0xffffffffu, (long long)v.idx, m);
  return r;
}
__device__ __forceinline__ sere_maxsum sere_shfl_xor(sere_maxsum v, int m) {
  sere_maxsum r;
  r.m = __shfl_xor_sync(0xffffffffu, v.m, m);
  r.s = __shfl_xor_sync(0xffffffffu, v.s, m);
  return r;
}

struct sere_add_op {
  template <class T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
// max that keeps a NaN (the CPU's combine for the inf-norm).
struct sere_nanmax_op {
  __device__ __forceinline__ double operator()(double a, double b) const { return (a != a || a >= b) ? a : b; }
};
struct sere_better_op {
  __device__ __forceinline__ sere_keyed operator()(sere_keyed a, sere_keyed b) const {
    return (a.key > b.key || (a.key == b.key && a.idx < b.idx)) ? a : b;
  }
};
// Merges two online-softmax states; an empty state has m = -inf, s = 0.
// NaN in either max propagates (x - NaN is NaN, and so is the sum).
struct sere_maxsum_op {
  __device__ __forceinline__ sere_maxsum operator()(sere_maxsum a, sere_maxsum b) const {
    float m = fmaxf(a.m, b.m);
    if (a.m != a.m || b.m != b.m) m = a.m + b.m;
    sere_maxsum r;
    r.m = m;
    if (m == -INFINITY) { /* both empty: nothing to rescale (a NaN sum stays) */
      r.s = a.s + b.s;
      return r;
    }
    r.s = a.s * expf(a.m - m) + b.s * expf(b.m - m);
    return r;
  }
};

template <class T, class Op>
__device__ __forceinline__ T sere_warp_reduce(T v, Op op) {
  for (int m = 16; m > 0; m >>= 1) v = op(v, sere_shfl_xor(v, m));
  return v;
}

// Over the whole block (blockDim.x a multiple of 32, at most 1024, one
// dimension); every thread gets the result. `scratch` is 32 T of shared
// memory; `empty` is the identity of op. May be repeated with the same
// scratch.
template <class T, class Op>
__device__ __forceinline__ T sere_block_reduce(T v, T *scratch, T empty, Op op) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = sere_warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : empty;
  return sere_warp_reduce(v, op);
}

// The threads that share one row of a row-wise kernel: a warp (PER_WARP;
// blockDim.x / 32 rows per block) or the whole block (one row per block).
template <bool PER_WARP>
struct sere_row_group {
  int64_t row;
  int lane, lanes;
  __device__ sere_row_group() {
    lane = PER_WARP ? (threadIdx.x & 31) : threadIdx.x;
    lanes = PER_WARP ? 32 : blockDim.x;
    row = PER_WARP ? blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5) : blockIdx.x;
  }
  template <class T, class Op>
  __device__ T reduce(T v, T *scratch, T empty, Op op) const {
    return PER_WARP ? sere_warp_reduce(v, op) : sere_block_reduce(v, scratch, empty, op);
  }
};

#endif
