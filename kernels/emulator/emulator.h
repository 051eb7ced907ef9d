// emulator.h — the CUDA emulator: sere's kernels (kernels/*.cu) compiled by
// the host C++ compiler and run on the CPU, so that the parity tests (CPU op
// against "GPU" op) execute the kernels' logic on machines without a GPU, in
// CI included, and under AddressSanitizer (our stand-in for
// compute-sanitizer's memcheck).
//
// Build: cmake -S . -B build-emu -DSERE_CUDA=EMULATE [-DSERE_SANITIZE=ON].
// The fake cuda_runtime.h and cublas_v2.h of this folder replace CUDA's; the
// program then behaves as if it had one GPU, "sere CUDA emulator (CPU)".
//
// How a launch runs (emulator.cpp). SERE_LAUNCH (kernels/cuda_common.cuh)
// hands sere_emu_launch a lambda that calls the kernel. The launch is
// checked like CUDA checks it, then the blocks run one after the other, in
// blockIdx order (x fastest); every thread of a block is a fiber with its
// own stack, and the fibers are resumed round-robin in thread order (x
// fastest; SERE_EMU_ORDER=reverse resumes them in reverse order, which
// shakes out missing barriers). A fiber runs until it returns or parks at a
// barrier: __syncthreads waits for every thread of the block that has not
// returned; a warp operation (__syncwarp, shuffles, votes) waits for every
// lane of its warp that is named in its mask and has not returned (a warp
// is 32 consecutive linear thread ids). A shuffle is: write my value, warp
// barrier, read the source lane's value, warp barrier. When no fiber can go
// on although some have not returned (a __syncthreads that not every thread
// reaches, a divergent warp operation), the launch is abandoned with a
// message on stderr and cudaErrorLaunchFailure; it never hangs.
//
// What kernel writers must know — where this is not a GPU:
// - Threads never run in parallel: between two barriers a thread runs
//   alone to the next one. Races between barriers therefore give the answer
//   of one particular order (thread order, or reversed), not random
//   garbage; run the tests with SERE_EMU_ORDER=reverse as well. Missing
//   __syncwarp between warp-synchronous shared-memory steps is not detected
//   unless the order changes the answer.
// - Atomics are plain read-modify-writes (nothing runs concurrently); their
//   result is exact and in thread order, so a kernel relying on a float
//   atomicAdd being deterministic passes here and not on the GPU.
// - __shared__ variables are `static`: one copy, shared by every block of
//   every launch (valid because one block runs at a time); they keep the
//   previous block's values instead of garbage, so reading unwritten static
//   shared memory goes unnoticed. Dynamic shared memory
//   (SERE_DYNAMIC_SHARED) is a fresh malloc of exactly the launch's size for
//   each block, filled with 0xFF bytes (NaN as floats), and ASan checks its
//   bounds. cudaMalloc'ed memory is filled with 0xFF bytes too.
// - The 48 KiB dynamic shared-memory limit applies to the dynamic part only
//   (static __shared__ is not counted), and cudaFuncSetAttribute(...,
//   cudaFuncAttributeMaxDynamicSharedMemorySize, n) raises it for every
//   kernel, not just the one named.
// - Warp masks are honoured for waiting but not checked: a lane that is not
//   in the mask of a shuffle it reads from gives its last written value.
// - Launches are synchronous, streams order nothing and events just take
//   the host time; a launch failure is not "sticky" for the whole process
//   as it is on a GPU (cudaGetLastError clears it).
// - Each thread has a 64 KiB stack (256 KiB under ASan) with a guard page:
//   big per-thread local arrays that fit in GPU registers/local memory may
//   overflow it (SIGSEGV in the guard page).
// - Launches must come from one host thread, and not from inside a kernel.
// - Speed: a context switch per barrier per thread; see test_emulator.cu for
//   measured costs. Fine for tests, not for training.
#ifndef SERE_EMU_EMULATOR_H
#define SERE_EMU_EMULATOR_H

#include "cuda_runtime.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

// ---- the launch -------------------------------------------------------------

// What a kernel may ask of the thread it runs in (the scheduler's own
// bookkeeping extends it in emulator.cpp).
struct sere_emu_fiber {
  uint3 thread_idx;
  int linear_id;  // x + y*blockDim.x + z*blockDim.x*blockDim.y
};

// The fiber now running (null on the host).
extern sere_emu_fiber *sere_emu_current_fiber;
extern uint3 sere_emu_block_idx;
extern dim3 sere_emu_block_dim, sere_emu_grid_dim;

// Checks the configuration (setting the last error and returning when it
// is invalid), then runs `invoke(closure)` once per thread of the grid.
void sere_emu_run(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*invoke)(const void *),
                  const void *closure);
template <class Kernel>
void sere_emu_launch(dim3 grid, dim3 block, size_t dynamic_shared_bytes, const Kernel &kernel) {
  sere_emu_run(grid, block, dynamic_shared_bytes, [](const void *k) { (*(const Kernel *)k)(); }, &kernel);
}
// This block's dynamic shared memory (SERE_DYNAMIC_SHARED).
void *sere_emu_dynamic_shared(void);
// Launches that ran (passed the checks) since the program started, cuBLAS
// calls included (on a GPU they launch kernels too): a test can tell that
// an op ran on the "GPU" and did not fall back to the host.
extern "C" uint64_t sere_emu_launch_count(void);
void sere_emu_count_launch(void);
// Records a runtime error as the last error (cudaGetLastError) and returns it.
cudaError_t sere_emu_set_error(cudaError_t error);
// Whether [p, p+bytes) lies inside one cudaMalloc'ed block.
bool sere_emu_in_device_memory(const void *p, size_t bytes);

// ---- CUDA's qualifiers ------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, so one static copy serves every block.
#define __shared__ static

// ---- built-in variables -----------------------------------------------------

static inline const uint3 &sere_emu_thread_idx(void) { return sere_emu_current_fiber->thread_idx; }
#define threadIdx (sere_emu_thread_idx())
#define blockIdx ((const uint3)sere_emu_block_idx)
#define blockDim ((const dim3)sere_emu_block_dim)
#define gridDim ((const dim3)sere_emu_grid_dim)
constexpr int warpSize = 32;

// ---- barriers and warp operations ---------------------------------------------

void __syncthreads(void);
int __syncthreads_count(int predicate);
int __syncthreads_and(int predicate);
int __syncthreads_or(int predicate);
void __syncwarp(unsigned mask = 0xffffffffu);
// The value offered by lane `src_lane` of my warp, every lane of `mask`
// offering its `mine` (the body of every shuffle); my own value when that
// lane does not exist.
uint64_t sere_emu_warp_exchange(unsigned mask, uint64_t mine, int src_lane);
unsigned __ballot_sync(unsigned mask, int predicate);
static inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
static inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == __ballot_sync(mask, 1);
}
unsigned __activemask(void);

static inline int sere_emu_lane(void) { return sere_emu_current_fiber->linear_id & 31; }

template <class T>
static inline T sere_emu_shuffle_from(unsigned mask, T v, int src_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof v);
  bits = sere_emu_warp_exchange(mask, bits, src_lane);
  memcpy(&v, &bits, sizeof v);
  return v;
}
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  int lane = sere_emu_lane();
  return sere_emu_shuffle_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int lane = sere_emu_lane();
  int src = (lane & (width - 1)) < (int)delta ? lane : lane - (int)delta;
  return sere_emu_shuffle_from(mask, v, src);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int lane = sere_emu_lane();
  int src = (lane & (width - 1)) + (int)delta >= width ? lane : lane + (int)delta;
  return sere_emu_shuffle_from(mask, v, src);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  int lane = sere_emu_lane();
  int src = lane ^ lane_mask;
  if (src >= (lane & ~(width - 1)) + width) src = lane;  // later groups: my own value
  return sere_emu_shuffle_from(mask, v, src);
}

// ---- atomics: threads never run concurrently, so plain updates ---------------

template <class T>
static inline T sere_emu_fetch_add(T *p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
static inline float atomicAdd(float *p, float v) { return sere_emu_fetch_add(p, v); }
static inline double atomicAdd(double *p, double v) { return sere_emu_fetch_add(p, v); }
static inline int atomicAdd(int *p, int v) { return (int)sere_emu_fetch_add((unsigned *)p, (unsigned)v); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return sere_emu_fetch_add(p, v); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  return sere_emu_fetch_add(p, v);
}
static inline int atomicSub(int *p, int v) { return (int)sere_emu_fetch_add((unsigned *)p, 0u - (unsigned)v); }
static inline unsigned atomicSub(unsigned *p, unsigned v) { return sere_emu_fetch_add(p, 0u - v); }
template <class T>
static inline T sere_emu_fetch_max(T *p, T v) {
  T old = *p;
  if (v > old) *p = v;
  return old;
}
template <class T>
static inline T sere_emu_fetch_min(T *p, T v) {
  T old = *p;
  if (v < old) *p = v;
  return old;
}
static inline int atomicMax(int *p, int v) { return sere_emu_fetch_max(p, v); }
static inline unsigned atomicMax(unsigned *p, unsigned v) { return sere_emu_fetch_max(p, v); }
static inline unsigned long long atomicMax(unsigned long long *p, unsigned long long v) {
  return sere_emu_fetch_max(p, v);
}
static inline int atomicMin(int *p, int v) { return sere_emu_fetch_min(p, v); }
static inline unsigned atomicMin(unsigned *p, unsigned v) { return sere_emu_fetch_min(p, v); }
static inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
  return sere_emu_fetch_min(p, v);
}
template <class T>
static inline T sere_emu_compare_swap(T *p, T expected, T desired) {
  T old = *p;
  if (old == expected) *p = desired;
  return old;
}
static inline int atomicCAS(int *p, int expected, int desired) { return sere_emu_compare_swap(p, expected, desired); }
static inline unsigned atomicCAS(unsigned *p, unsigned expected, unsigned desired) {
  return sere_emu_compare_swap(p, expected, desired);
}
static inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long expected,
                                           unsigned long long desired) {
  return sere_emu_compare_swap(p, expected, desired);
}
template <class T>
static inline T sere_emu_exchange(T *p, T v) {
  T old = *p;
  *p = v;
  return old;
}
static inline int atomicExch(int *p, int v) { return sere_emu_exchange(p, v); }
static inline unsigned atomicExch(unsigned *p, unsigned v) { return sere_emu_exchange(p, v); }
static inline unsigned long long atomicExch(unsigned long long *p, unsigned long long v) {
  return sere_emu_exchange(p, v);
}
static inline float atomicExch(float *p, float v) { return sere_emu_exchange(p, v); }
static inline int atomicOr(int *p, int v) { return sere_emu_exchange(p, *p | v); }
static inline unsigned atomicOr(unsigned *p, unsigned v) { return sere_emu_exchange(p, *p | v); }
static inline int atomicAnd(int *p, int v) { return sere_emu_exchange(p, *p & v); }
static inline unsigned atomicAnd(unsigned *p, unsigned v) { return sere_emu_exchange(p, *p & v); }
static inline void __threadfence(void) {}
static inline void __threadfence_block(void) {}

// ---- bit casts, bit counts, loads, clock ----------------------------------------

static inline int __float_as_int(float f) { int i; memcpy(&i, &f, sizeof i); return i; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, sizeof u); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, sizeof i); return i; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, sizeof d); return d; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
template <class T>
static inline T __ldg(const T *p) { return *p; }
long long clock64(void);  // nanoseconds of the host's monotonic clock

// ---- math intrinsics: the precise host function stands in for each ----------
// (__expf, __logf, __log2f, __exp10f, __sinf, __cosf, __tanf, __powf are
// glibc's own names for expf ... powf, declared by math.h.)

static inline float __fdividef(float x, float y) { return x / y; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
static inline float __fadd_rn(float x, float y) { return x + y; }
static inline float __fmul_rn(float x, float y) { return x * y; }
static inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }  // NaN -> 0
static inline float normcdff(float x) { return 0.5f * erfcf(-x * 0.70710678118654752f); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * 0.70710678118654752); }
float erfinvf(float x);
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline float __int2float_rn(int x) { return (float)x; }

// ---- min / max over the integer types and mixed int/unsigned as CUDA has them --

#define SERE_EMU_MIN_MAX(T)                                  \
  static inline T min(T a, T b) { return b < a ? b : a; } \
  static inline T max(T a, T b) { return a < b ? b : a; }
SERE_EMU_MIN_MAX(int)
SERE_EMU_MIN_MAX(unsigned)
SERE_EMU_MIN_MAX(long)
SERE_EMU_MIN_MAX(unsigned long)
SERE_EMU_MIN_MAX(long long)
SERE_EMU_MIN_MAX(unsigned long long)
#undef SERE_EMU_MIN_MAX
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }

#endif
