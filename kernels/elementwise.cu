// elementwise.cu — the element-wise family on the GPU: binary arithmetic,
// comparisons, logical ops, where, unary functions, clamp and the gradients
// of these, for every launch that ops/elementwise.c's driver describes
// (kernels/elementwise.h). Each element is computed by the same formula as
// the CPU kernel of the same op code (elementwise.c, elementwise_unary.c),
// with CUDA's correctly rounded or few-ulp math (expf, logf, erff, powf; no
// fast intrinsics), so results agree with the CPU's to a few ulps.
//
// Two kernels:
//  - ew_vec4: every compute dtype f32, operands f32 or bf16, one merged dim
//    with unit strides (inputs may be broadcast scalars): 4 elements a
//    thread with one 16-byte (f32) or 8-byte (bf16) access per operand.
//    The hot training ops (add, mul, axpy, gradient accumulation, unary
//    functions and their gradients, bf16 <-> f32 mixes) take this path.
//  - ew_generic: anything else, one element a thread, any strides (over the
//    dims the driver merged) and dtypes, loads and stores converting like
//    the CPU's staging buffers; 32-bit index arithmetic when it fits.
// Both walk the elements with grid-stride loops. Operands may alias (an
// in-place op reads and writes the same element in one thread), so no
// pointer is __restrict__.
#include <math.h>

#include "cuda_common.cuh"
#include "elementwise.h"
#include "ops/ops.h"

// ---- loads and stores in the compute dtypes ----------------------------------
// As the CPU's load_block / store_block: f32 and bf16 directly, other dtypes
// through double; integers exact in i64; bool is "!= 0".
__device__ __forceinline__ float load_f32(const void *base, int dtype, int64_t i) {
  if (dtype == SERE_F32) return ((const float *)base)[i];
  if (dtype == SERE_BF16) return sere_bf16_load((const uint16_t *)base + i);
  return (float)sere_load_any(base, dtype, i);
}

__device__ __forceinline__ int64_t load_i64(const void *base, int dtype, int64_t i) {
  switch (dtype) {
    case SERE_I64: return ((const int64_t *)base)[i];
    case SERE_I32: return ((const int32_t *)base)[i];
    case SERE_U8: return ((const uint8_t *)base)[i];
    case SERE_BOOL: return ((const uint8_t *)base)[i] != 0;
    default: return (int64_t)sere_load_any(base, dtype, i);
  }
}

__device__ __forceinline__ int64_t load_bool(const void *base, int dtype, int64_t i) {
  if (dtype == SERE_BOOL || dtype == SERE_U8) return ((const uint8_t *)base)[i] != 0;
  return sere_load_any(base, dtype, i) != 0;
}

__device__ __forceinline__ void store_f32(void *base, int dtype, int64_t i, float v) {
  if (dtype == SERE_F32) ((float *)base)[i] = v;
  else if (dtype == SERE_BF16) ((uint16_t *)base)[i] = sere_bf16_round(v);
  else sere_store_any(base, dtype, i, v);
}

__device__ __forceinline__ void store_i64(void *base, int dtype, int64_t i, int64_t v) {
  switch (dtype) {
    case SERE_I64: ((int64_t *)base)[i] = v; break;
    case SERE_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case SERE_U8: ((uint8_t *)base)[i] = (uint8_t)v; break;
    case SERE_BOOL: ((uint8_t *)base)[i] = v != 0; break;
    default: sere_store_any(base, dtype, i, (double)v); break;
  }
}

// ---- the formulas ---------------------------------------------------------------
// Integer arithmetic wraps around through uint64_t, as on the CPU.
__device__ __forceinline__ int64_t wrap_add(int64_t x, int64_t y) { return (int64_t)((uint64_t)x + (uint64_t)y); }
__device__ __forceinline__ int64_t wrap_mul(int64_t x, int64_t y) { return (int64_t)((uint64_t)x * (uint64_t)y); }

__device__ __forceinline__ int64_t ipow(int64_t x, int64_t y) {
  if (y < 0) return x == 1 ? 1 : x == -1 ? (y & 1 ? -1 : 1) : 0;
  uint64_t r = 1, b = (uint64_t)x;
  for (; y; y >>= 1, b *= b)
    if (y & 1) r *= b;
  return (int64_t)r;
}

// min(max(x, lo), hi) as PyTorch: NaN stays NaN, and lo > hi gives hi.
template <typename T>
__device__ __forceinline__ T clamp_to(T x, T lo, T hi) {
  T t = x < lo ? lo : x;
  return t > hi ? hi : t;
}

__device__ __forceinline__ float binary_f32(int op, float x, float y, float alpha) {
  switch (op) {
    case SERE_ADD: return x + y;
    case SERE_SUB: return x - y;
    case SERE_MUL: return x * y;
    case SERE_DIV: return x / y;
    case SERE_POW: return y == 2.0f ? x * x : powf(x, y);
    // a NaN on either side propagates, as in PyTorch
    case SERE_MAXIMUM: return x > y || x != x ? x : y;
    case SERE_MINIMUM: return x < y || x != x ? x : y;
    // rounded product then sum, never fused: the CPU's result bit for bit
    case SERE_EWOP_AXPY: return __fadd_rn(x, __fmul_rn(alpha, y));
    default: return 0.0f;
  }
}

// Gradients of binary ops: g the output gradient, (a, b) the operands.
__device__ __forceinline__ float binary_grad(int op, float g, float a, float b) {
  switch (op) {
    case SERE_EWOP_GRAD_DIV_B: return -g * a / (b * b);
    case SERE_EWOP_GRAD_POW_BASE: return b == 0.0f ? 0.0f : g * b * powf(a, b - 1.0f);
    case SERE_EWOP_GRAD_POW_EXP: return a == 0.0f && b >= 0.0f ? 0.0f : g * powf(a, b) * logf(a);
    // ties split the gradient half and half, like PyTorch
    case SERE_EWOP_GRAD_MAX: return a > b ? g : a == b ? 0.5f * g : 0.0f;
    case SERE_EWOP_GRAD_MIN: return a < b ? g : a == b ? 0.5f * g : 0.0f;
    default: return 0.0f;
  }
}

__device__ __forceinline__ float unary_f32(int op, float x, float lo, float hi) {
  switch (op) {
    case SERE_NEG: return -x;
    case SERE_EXP: return expf(x);
    case SERE_LOG: return logf(x);
    case SERE_SQRT: return sqrtf(x);
    case SERE_RSQRT: return 1.0f / sqrtf(x);
    case SERE_ABS: return fabsf(x);
    case SERE_SIGN: return (float)((x > 0) - (x < 0));
    case SERE_SIN: return sinf(x);
    case SERE_COS: return cosf(x);
    case SERE_TANH: return tanhf(x);
    case SERE_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case SERE_RECIPROCAL: return 1.0f / x;
    case SERE_SQUARE: return x * x;
    case SERE_FLOOR: return floorf(x);
    case SERE_CEIL: return ceilf(x);
    case SERE_ROUND: return rintf(x);  // half to even
    case SERE_LOG1P: return log1pf(x);
    case SERE_EXPM1: return expm1f(x);
    case SERE_ERF: return erff(x);
    case SERE_EWOP_CLAMP: return clamp_to(x, lo, hi);
    default: return 0.0f;
  }
}

// Gradients of unary ops: g the output gradient, y the saved input or output.
__device__ __forceinline__ float unary_grad(int op, float g, float y, float lo, float hi) {
  switch (op) {
    case SERE_EXP: return g * y;
    case SERE_LOG: return g / y;
    case SERE_SQRT: return 0.5f * g / y;
    case SERE_RSQRT: return -0.5f * g * y * y * y;
    case SERE_ABS: return y > 0 ? g : y < 0 ? -g : 0.0f;
    case SERE_SIN: return cosf(y) * g;
    case SERE_COS: return -sinf(y) * g;
    case SERE_TANH: return g * (1.0f - y * y);
    case SERE_SIGMOID: return g * y * (1.0f - y);
    case SERE_RECIPROCAL: return -g * y * y;
    case SERE_SQUARE: return 2.0f * g * y;
    case SERE_LOG1P: return g / (1.0f + y);
    case SERE_EXPM1: return g * (y + 1.0f);
    case SERE_ERF: return 1.12837917f * g * expf(-y * y);  // 2 / sqrt(pi)
    case SERE_EWOP_CLAMP: return y >= lo && y <= hi ? g : 0.0f;
    default: return 0.0f;
  }
}

// The kinds whose every operand computes in f32 (the ones ew_vec4 takes).
__device__ __forceinline__ float apply_f32(const sere_ew_launch &l, float x, float y, float z) {
  switch (l.kind) {
    case SERE_EWK_BINARY: return binary_f32(l.op, x, y, l.f0);
    case SERE_EWK_BINARY_GRAD: return binary_grad(l.op, x, y, z);
    case SERE_EWK_UNARY: return unary_f32(l.op, x, l.f0, l.f1);
    default: return unary_grad(l.op, x, y, l.f0, l.f1);  // SERE_EWK_UNARY_GRAD
  }
}

template <typename T>
__device__ __forceinline__ int64_t compare(int op, T x, T y) {
  switch (op) {
    case SERE_EQ: return x == y;
    case SERE_NE: return x != y;
    case SERE_LT: return x < y;
    case SERE_LE: return x <= y;
    case SERE_GT: return x > y;
    default: return x >= y;  // SERE_GE
  }
}

__device__ __forceinline__ int64_t binary_i64(int op, int64_t x, int64_t y, int64_t alpha) {
  switch (op) {
    case SERE_ADD: return wrap_add(x, y);
    case SERE_SUB: return (int64_t)((uint64_t)x - (uint64_t)y);
    case SERE_MUL: return wrap_mul(x, y);
    case SERE_POW: return ipow(x, y);
    case SERE_MAXIMUM: return x > y ? x : y;
    case SERE_MINIMUM: return x < y ? x : y;
    case SERE_EWOP_AXPY: return wrap_add(x, wrap_mul(alpha, y));
    default: return 0;
  }
}

__device__ __forceinline__ int64_t unary_i64(int op, int64_t x, int64_t lo, int64_t hi) {
  switch (op) {
    case SERE_NEG: return (int64_t)(0 - (uint64_t)x);
    case SERE_ABS: return x < 0 ? (int64_t)(0 - (uint64_t)x) : x;
    case SERE_SIGN: return (x > 0) - (x < 0);
    case SERE_SQUARE: return wrap_mul(x, x);
    case SERE_EWOP_CLAMP: return clamp_to(x, lo, hi);
    default: return x;  // floor, ceil, round of an integer
  }
}

// Result of a kind whose output computes in i64 or bool; the inputs as
// loaded (f for f32 compute dtypes, i for the others).
__device__ __forceinline__ int64_t apply_int(const sere_ew_launch &l, const float *f, const int64_t *i) {
  switch (l.kind) {
    case SERE_EWK_BINARY: return binary_i64(l.op, i[0], i[1], l.i0);
    case SERE_EWK_UNARY: return unary_i64(l.op, i[0], l.i0, l.i1);
    case SERE_EWK_COMPARE: return l.ct[1] == SERE_F32 ? compare(l.op, f[0], f[1]) : compare(l.op, i[0], i[1]);
    case SERE_EWK_LOGICAL: return l.op == 0 ? i[0] && i[1] : l.op == 1 ? i[0] || i[1] : !i[0] != !i[1];
    case SERE_EWK_LOGICAL_NOT: return !i[0];
    default: return i[0] ? i[1] : i[2];  // SERE_EWK_WHERE
  }
}

// ---- the generic kernel: any strides and dtypes -------------------------------
// Element offsets of every operand for flat index idx (I: int32_t when the
// element count allows, for cheaper division). Loops over operands have a
// fixed trip count so that the arrays stay in registers.
template <typename I>
__device__ __forceinline__ void offsets_of(const sere_ew_launch &l, I idx, int64_t *off) {
  if (l.ndim == 1) {
#pragma unroll
    for (int k = 0; k < SERE_EW_MAXOPS; k++) off[k] = (int64_t)idx * l.stride[k][0];
    return;
  }
#pragma unroll
  for (int k = 0; k < SERE_EW_MAXOPS; k++) off[k] = 0;
  for (int d = l.ndim - 1; d >= 0; d--) {
    I n = (I)l.shape[d], j = idx % n;
    idx /= n;
#pragma unroll
    for (int k = 0; k < SERE_EW_MAXOPS; k++) off[k] += (int64_t)j * l.stride[k][d];
  }
}

template <typename I>
__global__ void ew_generic(sere_ew_launch l, I n) {
  for (I idx = blockIdx.x * (I)blockDim.x + threadIdx.x; idx < n; idx += (I)(gridDim.x * blockDim.x)) {
    int64_t off[SERE_EW_MAXOPS];
    offsets_of(l, idx, off);
    float f[SERE_EW_MAXOPS - 1] = {0.0f, 0.0f, 0.0f};
    int64_t iv[SERE_EW_MAXOPS - 1] = {0, 0, 0};
#pragma unroll
    for (int k = 1; k < SERE_EW_MAXOPS; k++) {
      if (k > l.nin) break;
      const void *b = l.base[k];
      if (l.ct[k] == SERE_F32) f[k - 1] = b ? load_f32(b, l.dtype[k], off[k]) : l.scalar_f[k];
      else if (l.ct[k] == SERE_I64) iv[k - 1] = b ? load_i64(b, l.dtype[k], off[k]) : l.scalar_i[k];
      else iv[k - 1] = b ? load_bool(b, l.dtype[k], off[k]) : l.scalar_i[k];
    }
    if (l.ct[0] == SERE_F32) {
      float r = l.kind == SERE_EWK_WHERE ? (iv[0] ? f[1] : f[2]) : apply_f32(l, f[0], f[1], f[2]);
      store_f32(l.base[0], l.dtype[0], off[0], r);
    } else {
      int64_t r = apply_int(l, f, iv);
      store_i64(l.base[0], l.dtype[0], off[0], l.ct[0] == SERE_BOOL ? r != 0 : r);
    }
  }
}

// ---- the vectorised kernel: f32 / bf16, unit stride or broadcast scalar --------
struct __align__(16) f32x4 { float v[4]; };
struct __align__(8) bf16x4 { uint16_t v[4]; };

// Elements 4g..4g+3 of input k (stride 1, or 0 for a broadcast scalar).
__device__ __forceinline__ void load4(const sere_ew_launch &l, int k, int64_t g, float *v) {
  const void *b = l.base[k];
  if (!b || l.stride[k][0] == 0) {
    float s = b ? load_f32(b, l.dtype[k], 0) : l.scalar_f[k];
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = s;
  } else if (l.dtype[k] == SERE_F32) {
    f32x4 q = ((const f32x4 *)b)[g];
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = q.v[j];
  } else {
    bf16x4 q = ((const bf16x4 *)b)[g];
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = sere_bf16_load(&q.v[j]);
  }
}

__device__ __forceinline__ void store4(const sere_ew_launch &l, int64_t g, const float *v) {
  if (l.dtype[0] == SERE_F32) {
    f32x4 q;
#pragma unroll
    for (int j = 0; j < 4; j++) q.v[j] = v[j];
    ((f32x4 *)l.base[0])[g] = q;
  } else {
    bf16x4 q;
#pragma unroll
    for (int j = 0; j < 4; j++) q.v[j] = sere_bf16_round(v[j]);
    ((bf16x4 *)l.base[0])[g] = q;
  }
}

// One element of the same launch (the n % 4 tail).
__device__ __forceinline__ float load1(const sere_ew_launch &l, int k, int64_t i) {
  const void *b = l.base[k];
  return b ? load_f32(b, l.dtype[k], i * l.stride[k][0]) : l.scalar_f[k];
}

__global__ void ew_vec4(sere_ew_launch l, int64_t n) {
  int64_t groups = n / 4, tid = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  for (int64_t g = tid; g < groups; g += (int64_t)gridDim.x * blockDim.x) {
    float x[4], y[4] = {0, 0, 0, 0}, z[4] = {0, 0, 0, 0}, r[4];
    load4(l, 1, g, x);
    if (l.nin > 1) load4(l, 2, g, y);
    if (l.nin > 2) load4(l, 3, g, z);
#pragma unroll
    for (int j = 0; j < 4; j++) r[j] = apply_f32(l, x[j], y[j], z[j]);
    store4(l, g, r);
  }
  int64_t i = groups * 4 + tid;
  if (i < n) {
    float x = load1(l, 1, i), y = l.nin > 1 ? load1(l, 2, i) : 0.0f, z = l.nin > 2 ? load1(l, 3, i) : 0.0f;
    store_f32(l.base[0], l.dtype[0], i, apply_f32(l, x, y, z));
  }
}

// ---- the host side ------------------------------------------------------------
static const int ew_threads = 256;

static unsigned ew_blocks(int64_t work) {
  unsigned b = sere_blocks_for(work, ew_threads);
  return b > 65535u ? 65535u : b;
}

static bool is_f32_kind(const sere_ew_launch *l) {
  for (int k = 0; k <= l->nin; k++)
    if (l->ct[k] != SERE_F32) return false;
  return l->kind != SERE_EWK_WHERE;
}

// Can ew_vec4 run it: one dim, f32 / bf16 operands at unit stride (inputs
// may have stride 0), aligned for the 4-element accesses.
static bool vectorisable(const sere_ew_launch *l) {
  if (l->ndim != 1 || !is_f32_kind(l)) return false;
  for (int k = 0; k <= l->nin; k++) {
    int64_t st = l->stride[k][0];
    if (l->dtype[k] != SERE_F32 && l->dtype[k] != SERE_BF16) return false;
    if (!l->base[k] || (k > 0 && st == 0)) continue;
    size_t align = l->dtype[k] == SERE_F32 ? 16 : 8;
    if (st != 1 || (uintptr_t)l->base[k] % align) return false;
  }
  return true;
}

extern "C" int sere_cuda_ew_run(const sere_ew_launch *l) {
  int64_t n = 1;
  for (int d = 0; d < l->ndim; d++) n *= l->shape[d];
  if (n == 0) return 0;
  if (vectorisable(l)) {
    SERE_LAUNCH(ew_vec4, ew_blocks((n + 3) / 4), ew_threads, 0, *l, n);
  } else if (n <= INT32_MAX / 2) {  // the grid-stride step cannot overflow 32 bits
    SERE_LAUNCH(ew_generic<int32_t>, ew_blocks(n), ew_threads, 0, *l, (int32_t)n);
  } else {
    SERE_LAUNCH(ew_generic<int64_t>, ew_blocks(n), ew_threads, 0, *l, n);
  }
  return SERE_CHECK_LAUNCH("element-wise op (cuda)");
}
