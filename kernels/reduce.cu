// reduce.cu — reductions on the GPU (ops/reduce.c and ops/topk.c dispatch
// here for CUDA tensors): sums, means, variances, norms, integer sums and
// top-1 selections over any set of dims, driven by the plan of
// kernels/reduce.h, and the elementwise halves of their backward passes.
//
// One accumulation scheme serves every reduction, a "policy" saying what an
// element contributes, how two contributions combine and what is written
// per output:
//  - innermost group reduced (rows): a warp per output when the row is
//    short, else a block per output (256 threads striding over the row);
//  - innermost group kept (columns): 32 consecutive outputs per block
//    (coalesced across the lanes), 8 threads down the reduced elements of
//    each, summed in a fixed order through shared memory.
// When the outputs are too few to fill the GPU, each output's elements are
// cut into `splits` contiguous ranges, each block writes a partial result,
// and a second kernel combines the partials in split order. No atomics: the
// split depends only on the shape, so results are deterministic. Float
// sums accumulate in double (cheap on an H100, and it keeps long sums
// within the CPU's accuracy).
#include "cuda_common.cuh"
#include "cuda_device.h"
#include "reduce.h"
#include "reduce_block.cuh"

static const int row_threads = 256;   // block-per-row kernel
static const int warp_row_max = 1024; // rows up to this long get a warp each
static const int col_lanes = 32;      // outputs per column block
static const int col_depth = 8;       // threads down each column
static const int64_t fill_blocks = 1024;   // blocks wanted before splitting rows
static const int64_t row_split_min = 4096; // elements per block when a row is split
static const int64_t col_split_min = 64;   // reduced elements per block when columns are split

// Everything a launch needs, by value.
struct reduce_args {
  sere_reduce_plan p;
  const void *x;
  int x_dtype;
  int map;              // sere_reduce_map (float reductions)
  double pw;            // p of SERE_RED_POW and the root
  const double *center; // per output, or NULL
  double divisor;
  int post;             // sere_reduce_post
  void *out;            // typed outputs (out_dtype), or
  int out_dtype;
  double *out_double;   // per-output doubles
  int largest;          // selection: largest (1) or smallest (0)
  int64_t base;         // selection: added to indices
  int64_t *index;       // selection: the indices
  void *partial;        // splits > 1: [output][split] partial accumulators
  int64_t splits;
};

// ---- where elements live --------------------------------------------------

// Offset of the flat index `flat` over n groups of (size, stride).
__device__ __forceinline__ int64_t group_offset(int n, const int64_t *size, const int64_t *stride, int64_t flat) {
  if (n == 1) return flat * stride[0];
  int64_t off = 0;
  for (int g = n - 1; g >= 0; g--) {
    off += (flat % size[g]) * stride[g];
    flat /= size[g];
  }
  return off;
}

// Row mode: where row o starts (its kept groups).
__device__ __forceinline__ int64_t row_base(const sere_reduce_plan &p, int64_t o) {
  return p.nred == 0 ? o * p.inner : group_offset(p.nkeep, p.ksize, p.kstride, o);
}
// Row mode: element j of the row starting at base.
__device__ __forceinline__ int64_t row_element(const sere_reduce_plan &p, int64_t base, int64_t j) {
  if (p.nred == 0) return base + j;
  return base + group_offset(p.nred, p.rsize, p.rstride, j / p.inner) + j % p.inner;
}
// Element j of output o, either mode.
__device__ __forceinline__ int64_t element_offset(const sere_reduce_plan &p, int64_t o, int64_t j) {
  if (p.inner_reduced) return row_element(p, row_base(p, o), j);
  return group_offset(p.nkeep, p.ksize, p.kstride, o / p.cols) + group_offset(p.nred, p.rsize, p.rstride, j) +
         o % p.cols;
}
// The output that input element i (flat, contiguous) contributes to.
__device__ __forceinline__ int64_t output_of(const sere_reduce_plan &p, int64_t i) {
  int64_t o = 0;
  for (int g = 0; g < p.nkeep; g++) o = o * p.ksize[g] + (i / p.kstride[g]) % p.ksize[g];
  if (!p.inner_reduced) o = o * p.inner + i % p.inner;
  return o;
}

// ---- policies ---------------------------------------------------------------

__device__ __forceinline__ double map_element(int map, double x, double c, double pw) {
  switch (map) {
    case SERE_RED_X: return x;
    case SERE_RED_SQDEV: return (x - c) * (x - c);
    case SERE_RED_ABS: case SERE_RED_MAXABS: return fabs(x);
    case SERE_RED_SQ: return x * x;
    case SERE_RED_POW: return pow(fabs(x), pw);
    case SERE_RED_EQ: return fabs(x) == c;
  }
  return 0;
}

__device__ __forceinline__ double sign_of(double x) { return (double)((x > 0) - (x < 0)); }

__device__ __forceinline__ double map_derivative(int map, float x, double c, double pw) {
  switch (map) {
    case SERE_RED_X: return 1;
    case SERE_RED_SQDEV: return 2 * (x - c);
    case SERE_RED_ABS: return sign_of(x);
    case SERE_RED_SQ: return 2.0 * x;
    case SERE_RED_POW: return pw * sign_of(x) * pow(fabs((double)x), pw - 1);
    case SERE_RED_MAXABS: return fabs(x) == c ? sign_of(x) : 0;
    case SERE_RED_EQ: return 0;
  }
  return 0;
}

// Float reductions; MAP is the sere_reduce_map (a template argument so the
// hot modes get their own loops).
template <int MAP>
struct float_policy {
  typedef double acc;
  __device__ static acc empty() { return 0; }
  __device__ static acc element(const reduce_args &a, int64_t off, int64_t o, int64_t) {
    double c = (MAP == SERE_RED_SQDEV || MAP == SERE_RED_EQ) ? a.center[o] : 0;
    return map_element(MAP, ((const float *)a.x)[off], c, a.pw);
  }
  __device__ acc operator()(acc x, acc y) const { return MAP == SERE_RED_MAXABS ? sere_nanmax_op()(x, y) : x + y; }
  __device__ static void finish(const reduce_args &a, int64_t o, acc v) {
    v /= a.divisor;
    if (a.post == SERE_POST_SQRT) v = sqrt(v);
    else if (a.post == SERE_POST_ROOT_P) v = pow(v, 1 / a.pw);
    if (a.out_double) a.out_double[o] = v;
    else sere_store_any(a.out, a.out_dtype, o, v);
  }
};

// Integer sums wrap around like PyTorch's (unsigned arithmetic).
struct int_sum_policy {
  typedef unsigned long long acc;
  __device__ static acc empty() { return 0; }
  __device__ static acc element(const reduce_args &a, int64_t off, int64_t, int64_t) {
    return (acc)((const int64_t *)a.x)[off];
  }
  __device__ acc operator()(acc x, acc y) const { return x + y; }
  __device__ static void finish(const reduce_args &a, int64_t o, acc v) { ((int64_t *)a.out)[o] = (int64_t)v; }
};

// Top-1 selection: ops/topk.c's order key (integer order = the element
// order: -0 == +0, NaN above everything), flipped for the smallest.
__device__ __forceinline__ int64_t order_key(const reduce_args &a, int64_t off) {
  int64_t k;
  if (a.x_dtype == SERE_F32) {
    float v = ((const float *)a.x)[off];
    if (v != v) return INT64_MAX;
    int32_t b = __float_as_int(v);
    if (b == INT32_MIN) b = 0;
    k = b >= 0 ? b : b ^ INT32_MAX;
  } else {
    k = ((const int64_t *)a.x)[off];
  }
  return a.largest ? k : ~k;
}

struct select_policy {
  typedef sere_keyed acc;
  __device__ static acc empty() {
    acc e;
    e.key = INT64_MIN;
    e.idx = INT64_MAX;
    return e;
  }
  __device__ static acc element(const reduce_args &a, int64_t off, int64_t, int64_t j) {
    acc e;
    e.key = order_key(a, off);
    e.idx = j;
    return e;
  }
  __device__ acc operator()(acc x, acc y) const { return sere_better_op()(x, y); }
  __device__ static void finish(const reduce_args &a, int64_t o, acc v) {
    int64_t src = element_offset(a.p, o, v.idx);
    a.index[o] = v.idx + a.base;
    if (a.out_dtype == SERE_F32 && a.x_dtype == SERE_F32) ((float *)a.out)[o] = ((const float *)a.x)[src];
    else if (a.out_dtype == SERE_I64 && a.x_dtype == SERE_I64) ((int64_t *)a.out)[o] = ((const int64_t *)a.x)[src];
    else sere_store_any(a.out, a.out_dtype, o, sere_load_any(a.x, a.x_dtype, src));
  }
};

// ---- the kernels --------------------------------------------------------------

// Output o's result (splits == 1) or its partial for split s.
template <class R>
__device__ __forceinline__ void emit(const reduce_args &a, int64_t o, int64_t s, typename R::acc v) {
  if (a.splits == 1) R::finish(a, o, v);
  else ((typename R::acc *)a.partial)[o * a.splits + s] = v;
}

// Rows, one warp each (8 per block); never split.
template <class R>
__global__ void reduce_rows_warp(reduce_args a, int64_t nout) {
  const int lane = threadIdx.x & 31;
  int64_t o = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5);
  if (o >= nout) return; // whole warps leave together
  const int64_t base = row_base(a.p, o);
  typename R::acc v = R::empty();
  for (int64_t j = lane; j < a.p.count; j += 32) v = R()(v, R::element(a, row_element(a.p, base, j), o, j));
  v = sere_warp_reduce(v, R());
  if (lane == 0) emit<R>(a, o, 0, v);
}

// Rows, one block per (output, split).
template <class R>
__global__ void reduce_rows_block(reduce_args a) {
  __shared__ typename R::acc scratch[32];
  const int64_t o = blockIdx.x / a.splits, s = blockIdx.x % a.splits;
  const int64_t j0 = a.p.count * s / a.splits, j1 = a.p.count * (s + 1) / a.splits;
  const int64_t base = row_base(a.p, o);
  typename R::acc v = R::empty();
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x)
    v = R()(v, R::element(a, row_element(a.p, base, j), o, j));
  v = sere_block_reduce(v, scratch, R::empty(), R());
  if (threadIdx.x == 0) emit<R>(a, o, s, v);
}

// Columns: blockIdx.x = (kept block, tile of 32 outputs), blockIdx.y = split.
template <class R>
__global__ void reduce_cols(reduce_args a, int64_t tiles_per_block) {
  __shared__ typename R::acc cell[col_depth][col_lanes];
  const int64_t b = blockIdx.x / tiles_per_block;
  const int64_t c = blockIdx.x % tiles_per_block * col_lanes + threadIdx.x, s = blockIdx.y;
  const int64_t o = b * a.p.cols + c;
  typename R::acc v = R::empty();
  if (c < a.p.cols) {
    const int64_t base = group_offset(a.p.nkeep, a.p.ksize, a.p.kstride, b) + c;
    const int64_t j0 = a.p.count * s / a.splits, j1 = a.p.count * (s + 1) / a.splits;
    for (int64_t j = j0 + threadIdx.y; j < j1; j += col_depth)
      v = R()(v, R::element(a, base + group_offset(a.p.nred, a.p.rsize, a.p.rstride, j), o, j));
  }
  cell[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y != 0 || c >= a.p.cols) return;
  for (int k = 1; k < col_depth; k++) v = R()(v, cell[k][threadIdx.x]);
  emit<R>(a, o, s, v);
}

// The partials of each output, combined in split order.
template <class R>
__global__ void reduce_partials(reduce_args a, int64_t nout) {
  const typename R::acc *part = (const typename R::acc *)a.partial;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout; o += (int64_t)gridDim.x * blockDim.x) {
    typename R::acc v = R::empty();
    for (int64_t s = 0; s < a.splits; s++) v = R()(v, part[o * a.splits + s]);
    R::finish(a, o, v);
  }
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  v = v > hi ? hi : v;
  return v < lo ? lo : v;
}

static unsigned grid_cap(int64_t blocks) { return blocks > 65535 ? 65535u : (unsigned)(blocks < 1 ? 1 : blocks); }

// Picks the kernel and the split for a's plan and runs it.
template <class R>
static int run_reduction(reduce_args a, const char *what) {
  const sere_reduce_plan &p = a.p;
  const int64_t nout = p.nblocks * p.cols;
  if (nout == 0) return 0;
  a.splits = 1;
  int64_t tiles = 0;
  if (p.inner_reduced) {
    if (p.count > warp_row_max || nout < fill_blocks)
      a.splits = clamp64((fill_blocks + nout - 1) / nout, 1, p.count / row_split_min);
  } else {
    tiles = (p.cols + col_lanes - 1) / col_lanes;
    a.splits = clamp64((fill_blocks + p.nblocks * tiles - 1) / (p.nblocks * tiles), 1,
                       clamp64(p.count / col_split_min, 1, 65535));
  }
  size_t part_bytes = (size_t)(nout * a.splits) * sizeof(typename R::acc);
  if (a.splits > 1 && !(a.partial = sere_cuda_alloc(part_bytes, 0))) return -1;
  if (!p.inner_reduced)
    SERE_LAUNCH(reduce_cols<R>, dim3((unsigned)(p.nblocks * tiles), (unsigned)a.splits), dim3(col_lanes, col_depth), 0,
                a, tiles);
  else if (p.count <= warp_row_max && a.splits == 1)
    SERE_LAUNCH(reduce_rows_warp<R>, sere_blocks_for(nout, row_threads / 32), row_threads, 0, a, nout);
  else
    SERE_LAUNCH(reduce_rows_block<R>, (unsigned)(nout * a.splits), row_threads, 0, a);
  int rc = SERE_CHECK_LAUNCH(what);
  if (rc == 0 && a.splits > 1) {
    SERE_LAUNCH(reduce_partials<R>, grid_cap(sere_blocks_for(nout, 256)), 256, 0, a, nout);
    rc = SERE_CHECK_LAUNCH(what);
  }
  if (a.partial) sere_cuda_free(a.partial, part_bytes);
  return rc;
}

static reduce_args args_for(const sere_reduce_plan *p, const void *x, sere_dtype x_dtype) {
  reduce_args a;
  memset(&a, 0, sizeof a);
  a.p = *p;
  a.x = x;
  a.x_dtype = x_dtype;
  a.divisor = 1;
  return a;
}

extern "C" int sere_cuda_reduce(const sere_reduce_plan *p, const float *x, sere_reduce_map map, double pw,
                                const double *center, double divisor, sere_reduce_post post, void *out,
                                sere_dtype out_dtype, double *out_double) {
  reduce_args a = args_for(p, x, SERE_F32);
  a.map = map;
  a.pw = pw;
  a.center = center;
  a.divisor = divisor;
  a.post = post;
  a.out = out;
  a.out_dtype = out_dtype;
  a.out_double = out_double;
  switch (map) {
    case SERE_RED_X: return run_reduction<float_policy<SERE_RED_X> >(a, "sum (cuda)");
    case SERE_RED_SQDEV: return run_reduction<float_policy<SERE_RED_SQDEV> >(a, "var (cuda)");
    case SERE_RED_ABS: return run_reduction<float_policy<SERE_RED_ABS> >(a, "norm (cuda)");
    case SERE_RED_SQ: return run_reduction<float_policy<SERE_RED_SQ> >(a, "norm (cuda)");
    case SERE_RED_POW: return run_reduction<float_policy<SERE_RED_POW> >(a, "norm (cuda)");
    case SERE_RED_MAXABS: return run_reduction<float_policy<SERE_RED_MAXABS> >(a, "norm (cuda)");
    case SERE_RED_EQ: return run_reduction<float_policy<SERE_RED_EQ> >(a, "norm backward (cuda)");
  }
  sere_fail("reduce (cuda): unknown map %d", (int)map);
  return -1;
}

extern "C" int sere_cuda_sum_i64(const sere_reduce_plan *p, const int64_t *x, int64_t *out) {
  reduce_args a = args_for(p, x, SERE_I64);
  a.out = out;
  return run_reduction<int_sum_policy>(a, "sum (cuda)");
}

extern "C" int sere_cuda_select1(const sere_reduce_plan *p, const void *x, sere_dtype x_dtype, int largest,
                                 int64_t base, void *values, sere_dtype values_dtype, int64_t *index) {
  reduce_args a = args_for(p, x, x_dtype);
  a.largest = largest;
  a.base = base;
  a.out = values;
  a.out_dtype = values_dtype;
  a.index = index;
  return run_reduction<select_policy>(a, largest ? "max (cuda)" : "min (cuda)");
}

// ---- backward ---------------------------------------------------------------

// As ops/reduce.c's grad_coefs: g * F'(acc) per output.
__global__ void reduce_coefs_kernel(int64_t nout, int map, int is_std, double div, double pw, const float *g,
                                    const float *y, const double *ties, double *coef) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout; o += (int64_t)gridDim.x * blockDim.x) {
    double c = g[o];
    switch (map) {
      case SERE_RED_X: c = c / div; break;
      case SERE_RED_SQDEV: c = is_std ? c / (2 * div * y[o]) : c / div; break;
      case SERE_RED_SQ: c = y[o] != 0 ? c / (2 * y[o]) : 0; break;
      case SERE_RED_POW: c = y[o] != 0 ? c * pow((double)y[o], 1 - pw) / pw : 0; break;
      case SERE_RED_MAXABS: c = ties[o] > 0 ? c / ties[o] : 0; break;
      default: break;
    }
    coef[o] = c;
  }
}

extern "C" int sere_cuda_reduce_coefs(int64_t nout, sere_reduce_map map, int is_std, double div, double pw,
                                      const float *g, const float *y, const double *ties, double *coef) {
  if (nout == 0) return 0;
  SERE_LAUNCH(reduce_coefs_kernel, grid_cap(sere_blocks_for(nout, 256)), 256, 0, nout, (int)map, is_std, div, pw, g,
              y, ties, coef);
  return SERE_CHECK_LAUNCH("reduce backward (cuda)");
}

__global__ void reduce_grad_kernel(sere_reduce_plan p, int64_t n, int map, double pw, const float *x,
                                   const double *coef, const double *center, float *gx) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t o = output_of(p, i);
    double d = map == SERE_RED_X ? 1.0 : map_derivative(map, x[i], center ? center[o] : 0, pw);
    gx[i] = (float)(coef[o] * d);
  }
}

extern "C" int sere_cuda_reduce_grad(const sere_reduce_plan *p, int64_t n, sere_reduce_map map, double pw,
                                     const float *x, const double *coef, const double *center, float *gx) {
  if (n == 0) return 0;
  SERE_LAUNCH(reduce_grad_kernel, grid_cap(sere_blocks_for(n, 256)), 256, 0, *p, n, (int)map, pw, x, coef, center,
              gx);
  return SERE_CHECK_LAUNCH("reduce backward (cuda)");
}

__global__ void topk_scatter_kernel(const float *g, const int64_t *index, int64_t base, int64_t n, int64_t k,
                                    int64_t R, int64_t C, float *gx) {
  for (int64_t at = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; at < n; at += (int64_t)gridDim.x * blockDim.x) {
    int64_t o = at / (k * C), c = at % C;
    gx[(o * R + index[at] - base) * C + c] = g[at];
  }
}

extern "C" int sere_cuda_topk_scatter(const float *g, const int64_t *index, int64_t base, int64_t outer, int64_t k,
                                      int64_t R, int64_t C, float *gx) {
  int64_t n = outer * k * C;
  if (n == 0) return 0;
  SERE_LAUNCH(topk_scatter_kernel, grid_cap(sere_blocks_for(n, 256)), 256, 0, g, index, base, n, k, R, C, gx);
  return SERE_CHECK_LAUNCH("topk backward (cuda)");
}
