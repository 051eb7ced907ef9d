// index.cu — the CUDA side of host/ops/index.c: bounds-checked index
// reading, cat, index_select, the gather / scatter-add walk, and the
// compaction (count, prefix sum, pack) behind masked_select and nonzero.
//
// Copies move raw elements (templated on the element size), so every dtype
// is exact. Scatter-adds use atomics: exact for integers, but float sums at
// a repeated index come out in an unspecified order (last-bit differences
// from run to run; the CPU adds in row-major order). 1- and 2-byte dtypes
// (bf16, u8, bool) update their element through a compare-and-swap on the
// aligned 32-bit word that holds it, with the CPU's per-add rounding.
#include "cuda_common.cuh"
#include "cuda_device.h"
#include "index.h"

static const int index_threads = 256;

// Grid-stride loops: cap the grid, every thread walks the rest.
static unsigned index_blocks(int64_t n) {
  unsigned b = sere_blocks_for(n, index_threads);
  return b > 65535u ? 65535u : b;
}

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

// Runs `body` with T the unsigned integer type of element size `es`.
#define BY_ELEMENT_SIZE(es, T, ...)            \
  switch (es) {                                \
    case 1: { typedef uint8_t T; __VA_ARGS__; } break;  \
    case 2: { typedef uint16_t T; __VA_ARGS__; } break; \
    case 4: { typedef uint32_t T; __VA_ARGS__; } break; \
    default: { typedef uint64_t T; __VA_ARGS__; } break; \
  }

// ---- index reading ----------------------------------------------------------

__global__ void read_indices_kernel(int64_t *idx, const void *index, int is64, sere_layout l, int64_t base,
                                    int64_t size, unsigned long long *first_bad, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t off = sere_layout_offset(l, i);
    int64_t v = is64 ? ((const int64_t *)index)[off] : ((const int32_t *)index)[off];
    if (v < base || v - base >= size) {
      atomicMin(first_bad, (unsigned long long)i);
      v = base;  // keep the array usable; the caller reports the error
    }
    idx[i] = v - base;
  }
}

extern "C" int sere_cuda_read_indices(const sere_tensor *index, int64_t base, int64_t size, sere_tensor *idx,
                                      int64_t *bad_pos) {
  int64_t n = sere_numel(index);
  if (n == 0) return 0;
  unsigned long long first = ~0ull, *first_bad = (unsigned long long *)sere_cuda_alloc(sizeof first, 0);
  if (!first_bad) return -1;
  int rc = -1;
  if (!sere_cuda_check(cudaMemsetAsync(first_bad, 0xff, sizeof first, sere_cuda_stream()), "read indices (cuda)")) {
    SERE_LAUNCH(read_indices_kernel, index_blocks(n), index_threads, 0, (int64_t *)sere_data(idx),
                index->storage->data, index->dtype == SERE_I64, sere_layout_of(index), base, size, first_bad, n);
    if (!SERE_CHECK_LAUNCH("read indices (cuda)") && !sere_cuda_download(&first, first_bad, sizeof first))
      rc = first == ~0ull ? 0 : 1;
  }
  sere_cuda_free(first_bad, sizeof first);
  *bad_pos = (int64_t)first;
  return rc;
}

// ---- cat ----------------------------------------------------------------------

// Element i of t (row-major) is row i / tblock, column i % tblock of out's
// (outer, oblock) rows, from dst = out's start position.
template <typename T>
__global__ void cat_copy_kernel(T *dst, int64_t tblock, int64_t oblock, const T *src, sere_layout sl, int contiguous,
                                int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t o = i / tblock;
    dst[o * oblock + (i - o * tblock)] = src[contiguous ? sl.offset + i : sere_layout_offset(sl, i)];
  }
}

extern "C" int sere_cuda_cat_copy(sere_tensor *out, const sere_tensor *t, int dim, int64_t start) {
  int64_t n = sere_numel(t), inner = 1;
  if (n == 0) return 0;
  for (int i = dim + 1; i < out->ndim; i++) inner *= out->shape[i];
  // A different dtype converts first (the device copy kernel), then moves as raw elements.
  sere_tensor *src = t->dtype == out->dtype ? sere_tensor_retain((sere_tensor *)t)
                                            : sere_as_contiguous_dtype((sere_tensor *)t, out->dtype);
  if (!src) return -1;
  int64_t tblock = src->shape[dim] * inner, oblock = out->shape[dim] * inner;
  sere_layout sl = sere_layout_of(src);
  int contiguous = sere_is_contiguous(src);
  char *dst = (char *)sere_data(out) + (size_t)(start * inner) * sere_dtype_size(out->dtype);
  BY_ELEMENT_SIZE(sere_dtype_size(out->dtype), T,
                  SERE_LAUNCH(cat_copy_kernel<T>, index_blocks(n), index_threads, 0, (T *)dst, tblock, oblock,
                              (const T *)src->storage->data, sl, contiguous, n));
  sere_tensor_release(src);
  return SERE_CHECK_LAUNCH("cat (cuda)");
}

// ---- index_select ---------------------------------------------------------------

template <typename T>
__global__ void index_select_kernel(T *out, const T *src, const int64_t *idx, int64_t nidx, int64_t size,
                                    int64_t inner, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t r = i / inner, q = i - r * inner, o = r / nidx, j = r - o * nidx;
    out[i] = src[(o * size + idx[j]) * inner + q];
  }
}

__global__ void index_select_backward_kernel(float *z, const float *g, const int64_t *idx, int64_t nidx,
                                             int64_t size, int64_t inner, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t r = i / inner, q = i - r * inner, o = r / nidx, j = r - o * nidx;
    atomicAdd(&z[(o * size + idx[j]) * inner + q], g[i]);
  }
}

static int64_t inner_of(const sere_tensor *t, int dim) {
  int64_t n = 1;
  for (int i = dim + 1; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

extern "C" int sere_cuda_index_select(sere_tensor *out, const sere_tensor *src, int dim, const sere_tensor *idx) {
  int64_t n = sere_numel(out);
  if (n == 0) return 0;
  int64_t nidx = sere_numel(idx), size = src->shape[dim], inner = inner_of(src, dim);
  const int64_t *ip = (const int64_t *)sere_data(idx);
  BY_ELEMENT_SIZE(sere_dtype_size(out->dtype), T,
                  SERE_LAUNCH(index_select_kernel<T>, index_blocks(n), index_threads, 0, (T *)sere_data(out),
                              (const T *)sere_data(src), ip, nidx, size, inner, n));
  return SERE_CHECK_LAUNCH("index_select (cuda)");
}

extern "C" int sere_cuda_index_select_backward(sere_tensor *z, const sere_tensor *g, int dim, const sere_tensor *idx) {
  int64_t n = sere_numel(g);
  if (n == 0) return 0;
  SERE_LAUNCH(index_select_backward_kernel, index_blocks(n), index_threads, 0, (float *)sere_data(z),
              (const float *)sere_data(g), (const int64_t *)sere_data(idx), sere_numel(idx), z->shape[dim],
              inner_of(z, dim), n);
  return SERE_CHECK_LAUNCH("index_select backward (cuda)");
}

// ---- gather / scatter-add --------------------------------------------------------

// The two sides of the walk over the index's shape: y at position p, and x
// at p with dim's coordinate taken from the index (x.stride[dim] is zeroed
// and applied to idx[p] through x_dim_stride).
struct walk_layouts {
  sere_layout x, y;
  int64_t x_dim_stride;
};

static walk_layouts walk_of(int ndim, const int64_t *shape, int dim, const sere_tensor *x, const sere_tensor *y) {
  walk_layouts w;
  w.x.ndim = w.y.ndim = ndim;
  w.x.offset = x->offset;
  w.y.offset = y->offset;
  for (int k = 0; k < ndim; k++) {
    w.x.shape[k] = w.y.shape[k] = shape[k];
    w.x.stride[k] = k == dim ? 0 : x->stride[k];
    w.y.stride[k] = y->stride[k];
  }
  w.x_dim_stride = x->stride[dim];
  return w;
}

template <typename T>
__global__ void gather_kernel(T *y, const T *x, walk_layouts w, const int64_t *idx, int64_t n) {
  GRID_STRIDE(i, n) y[sere_layout_offset(w.y, i)] = x[sere_layout_offset(w.x, i) + idx[i] * w.x_dim_stride];
}

// base[off] += v for a 1- or 2-byte dtype: a compare-and-swap loop on the
// aligned little-endian 32-bit word holding the element, rounding as the
// CPU's sere_store_linear does.
__device__ void atomic_add_narrow(void *base, int dtype, int64_t off, double v) {
  int es = dtype == SERE_BF16 ? 2 : 1;
  uintptr_t addr = (uintptr_t)base + (uintptr_t)(off * es);
  unsigned int *word = (unsigned int *)(addr & ~(uintptr_t)3);
  int shift = (int)(addr & 3) * 8;
  unsigned int mask = (es == 2 ? 0xffffu : 0xffu) << shift, old = *word, assumed;
  do {
    assumed = old;
    uint64_t elem = (assumed & mask) >> shift, sum = 0;  // 8 bytes: any dtype fits (little-endian)
    sere_store_any(&sum, dtype, 0, sere_load_any(&elem, dtype, 0) + v);
    old = atomicCAS(word, assumed, (assumed & ~mask) | ((unsigned int)sum << shift));
  } while (old != assumed);
}

__global__ void scatter_add_kernel(void *x, int dtype, const void *y, walk_layouts w, const int64_t *idx, int64_t n) {
  GRID_STRIDE(i, n) {
    int64_t xo = sere_layout_offset(w.x, i) + idx[i] * w.x_dim_stride, yo = sere_layout_offset(w.y, i);
    switch (dtype) {
      case SERE_F32: atomicAdd((float *)x + xo, ((const float *)y)[yo]); break;
      case SERE_I32: atomicAdd((int *)x + xo, ((const int *)y)[yo]); break;
      case SERE_I64:  // wrapping, like the CPU
        atomicAdd((unsigned long long *)x + xo, (unsigned long long)((const int64_t *)y)[yo]);
        break;
      default: atomic_add_narrow(x, dtype, xo, sere_load_any(y, dtype, yo)); break;
    }
  }
}

extern "C" int sere_cuda_gather_walk(int ndim, const int64_t *shape, int dim, const sere_tensor *idx,
                                     const sere_tensor *x, sere_tensor *y) {
  int64_t n = sere_numel_raw(ndim, shape);
  if (n == 0) return 0;
  walk_layouts w = walk_of(ndim, shape, dim, x, y);
  const int64_t *ip = (const int64_t *)sere_data(idx);
  BY_ELEMENT_SIZE(sere_dtype_size(x->dtype), T,
                  SERE_LAUNCH(gather_kernel<T>, index_blocks(n), index_threads, 0, (T *)y->storage->data,
                              (const T *)x->storage->data, w, ip, n));
  return SERE_CHECK_LAUNCH("gather (cuda)");
}

extern "C" int sere_cuda_scatter_add_walk(int ndim, const int64_t *shape, int dim, const sere_tensor *idx,
                                          sere_tensor *x, const sere_tensor *y) {
  int64_t n = sere_numel_raw(ndim, shape);
  if (n == 0) return 0;
  SERE_LAUNCH(scatter_add_kernel, index_blocks(n), index_threads, 0, x->storage->data, (int)x->dtype,
              y->storage->data, walk_of(ndim, shape, dim, x, y), (const int64_t *)sere_data(idx), n);
  return SERE_CHECK_LAUNCH("scatter_add (cuda)");
}

// ---- compaction: masked_select, nonzero -------------------------------------------
//
// Three passes over chunks of scan_chunk elements, one block each: count
// the true elements of each chunk; scan the counts (one block) into each
// chunk's first output position and the total; then each block ranks its
// true elements tile by tile (ballot + popc within a warp, warp counts in
// shared memory) and writes them to their positions. Row-major order is
// kept, so results equal the CPU's exactly.

static const int scan_threads = 256, scan_tiles = 16, scan_chunk = scan_threads * scan_tiles;
static const int offsets_threads = 1024;

// The elements tested: true where the value is non-zero (NaN counts).
struct predicate {
  const void *data;
  int dtype;
  sere_layout l;
};

__device__ __forceinline__ bool is_true(const predicate &p, int64_t i) {
  return sere_load_any(p.data, p.dtype, sere_layout_offset(p.l, i)) != 0;
}

__global__ void count_true_kernel(predicate p, int64_t n, int64_t *counts) {
  __shared__ int warp_counts[32];
  int64_t start = (int64_t)blockIdx.x * scan_chunk;
  int c = 0;
  for (int k = 0; k < scan_tiles; k++) {
    int64_t i = start + (int64_t)k * blockDim.x + threadIdx.x;
    if (i < n) c += is_true(p, i);
  }
  for (int m = 16; m > 0; m >>= 1) c += __shfl_xor_sync(0xffffffffu, c, m);
  if ((threadIdx.x & 31) == 0) warp_counts[threadIdx.x >> 5] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t total = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) total += warp_counts[w];
    counts[blockIdx.x] = total;
  }
}

__device__ __forceinline__ int64_t warp_inclusive_scan(int64_t v) {
  int lane = threadIdx.x & 31;
  for (int d = 1; d < 32; d <<= 1) {
    int64_t u = __shfl_up_sync(0xffffffffu, v, d);
    if (lane >= d) v += u;
  }
  return v;
}

// v[0..n) = its exclusive prefix sum, *total = the sum; one block.
__global__ void exclusive_scan_kernel(int64_t *v, int64_t n, int64_t *total) {
  __shared__ int64_t warp_sums[32];
  __shared__ int64_t carry;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t first = 0; first < n; first += blockDim.x) {
    int64_t i = first + threadIdx.x, x = i < n ? v[i] : 0, s = warp_inclusive_scan(x);
    if (lane == 31) warp_sums[warp] = s;
    __syncthreads();
    if (warp == 0) warp_sums[lane] = warp_inclusive_scan(lane < nwarps ? warp_sums[lane] : 0);
    __syncthreads();
    int64_t before = carry + (warp > 0 ? warp_sums[warp - 1] : 0) + s - x;
    if (i < n) v[i] = before;
    __syncthreads();  // every thread has read carry
    if (threadIdx.x == blockDim.x - 1) carry = before + x;
    __syncthreads();
  }
  if (threadIdx.x == 0) *total = carry;
}

typedef enum { PACK_ELEMENTS, UNPACK_F32, PACK_COORDS } pack_mode;

// What happens to the true element at flat position i, ranked `pos`.
struct pack_args {
  int mode;
  void *out;
  const void *in;
  sere_layout in_l;  // PACK_ELEMENTS: the source; PACK_COORDS: the shape
  int element_size;
  int64_t base;      // PACK_COORDS: added to every coordinate
};

__device__ void pack_one(const pack_args &a, int64_t i, int64_t pos) {
  if (a.mode == UNPACK_F32) {
    ((float *)a.out)[i] = ((const float *)a.in)[pos];
  } else if (a.mode == PACK_COORDS) {
    int64_t *o = (int64_t *)a.out + pos * a.in_l.ndim;
    for (int d = a.in_l.ndim - 1; d >= 0; d--) {
      o[d] = i % a.in_l.shape[d] + a.base;
      i /= a.in_l.shape[d];
    }
  } else {
    int64_t from = sere_layout_offset(a.in_l, i);
    switch (a.element_size) {
      case 1: ((uint8_t *)a.out)[pos] = ((const uint8_t *)a.in)[from]; break;
      case 2: ((uint16_t *)a.out)[pos] = ((const uint16_t *)a.in)[from]; break;
      case 4: ((uint32_t *)a.out)[pos] = ((const uint32_t *)a.in)[from]; break;
      default: ((uint64_t *)a.out)[pos] = ((const uint64_t *)a.in)[from]; break;
    }
  }
}

__global__ void pack_kernel(predicate p, int64_t n, const int64_t *offsets, pack_args a) {
  __shared__ int warp_counts[32];
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  int64_t start = (int64_t)blockIdx.x * scan_chunk, running = offsets[blockIdx.x];
  for (int k = 0; k < scan_tiles && start + (int64_t)k * blockDim.x < n; k++) {  // uniform over the block
    int64_t i = start + (int64_t)k * blockDim.x + threadIdx.x;
    bool t = i < n && is_true(p, i);
    unsigned ballot = __ballot_sync(0xffffffffu, t);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int64_t pos = running + __popc(ballot & ((1u << lane) - 1u));
    int tile_total = 0;
    for (int w = 0; w < nwarps; w++) {
      if (w < warp) pos += warp_counts[w];
      tile_total += warp_counts[w];
    }
    if (t) pack_one(a, i, pos);
    running += tile_total;
    __syncthreads();  // warp_counts is rewritten by the next tile
  }
}

// Passes 1 and 2: device memory with each chunk's first output position
// (free with free_offsets); *count (when asked) the number of true
// elements, read back to the host.
static int64_t *chunk_offsets(const predicate &p, int64_t n, int64_t *count) {
  int64_t chunks = (n + scan_chunk - 1) / scan_chunk;
  int64_t *offsets = (int64_t *)sere_cuda_alloc(sizeof(int64_t) * (size_t)(chunks + 1), 0);
  if (!offsets) return NULL;
  SERE_LAUNCH(count_true_kernel, (unsigned)chunks, scan_threads, 0, p, n, offsets);
  int rc = SERE_CHECK_LAUNCH("mask count (cuda)");
  if (!rc) {
    SERE_LAUNCH(exclusive_scan_kernel, 1, offsets_threads, 0, offsets, chunks, offsets + chunks);
    rc = SERE_CHECK_LAUNCH("mask prefix sum (cuda)");
  }
  if (!rc && count) rc = sere_cuda_download(count, offsets + chunks, sizeof *count);
  if (rc) {
    sere_cuda_free(offsets, sizeof(int64_t) * (size_t)(chunks + 1));
    return NULL;
  }
  return offsets;
}

static void free_offsets(int64_t *offsets, int64_t n) {
  sere_cuda_free(offsets, sizeof(int64_t) * (size_t)((n + scan_chunk - 1) / scan_chunk + 1));
}

static int pack(const predicate &p, int64_t n, const int64_t *offsets, const pack_args &a) {
  SERE_LAUNCH(pack_kernel, (unsigned)((n + scan_chunk - 1) / scan_chunk), scan_threads, 0, p, n, offsets, a);
  return SERE_CHECK_LAUNCH("mask pack (cuda)");
}

static predicate predicate_of(const sere_tensor *t) {
  predicate p;
  p.data = t->storage->data;
  p.dtype = (int)t->dtype;
  p.l = sere_layout_of(t);
  return p;
}

// Counts, allocates *out of shape (count, width) or (count) when width < 0,
// and packs.
static int compact(const sere_tensor *pred, pack_args a, sere_dtype dtype, int width, sere_tensor **out) {
  int64_t n = sere_numel(pred), count = 0;
  predicate p = predicate_of(pred);
  int64_t *offsets = n ? chunk_offsets(p, n, &count) : NULL;
  if (n && !offsets) return -1;
  int64_t shape[2] = {count, width};
  *out = sere_tensor_new_uninit_on(SERE_CUDA, dtype, width < 0 ? 1 : 2, shape);
  int rc = *out ? 0 : -1;
  if (!rc && count) {
    a.out = sere_data(*out);
    rc = pack(p, n, offsets, a);
  }
  if (offsets) free_offsets(offsets, n);
  if (rc) {
    sere_tensor_release(*out);
    *out = NULL;
  }
  return rc;
}

extern "C" int sere_cuda_masked_select(const sere_tensor *t, const sere_tensor *mask, sere_tensor **out) {
  pack_args a = {};
  a.mode = PACK_ELEMENTS;
  a.in = t->storage->data;
  a.in_l = sere_layout_of(t);
  a.element_size = (int)sere_dtype_size(t->dtype);
  return compact(mask, a, t->dtype, -1, out);
}

extern "C" int sere_cuda_nonzero(const sere_tensor *t, int64_t base, sere_tensor **out) {
  pack_args a = {};
  a.mode = PACK_COORDS;
  a.in_l = sere_layout_of(t);
  a.base = base;
  return compact(t, a, SERE_I64, t->ndim, out);
}

extern "C" int sere_cuda_masked_unpack(sere_tensor *z, const sere_tensor *mask, const sere_tensor *g) {
  int64_t n = sere_numel(mask);
  if (n == 0) return 0;
  predicate p = predicate_of(mask);
  int64_t *offsets = chunk_offsets(p, n, NULL);
  if (!offsets) return -1;
  pack_args a = {};
  a.mode = UNPACK_F32;
  a.out = sere_data(z);
  a.in = sere_data(g);
  int rc = pack(p, n, offsets, a);
  free_offsets(offsets, n);
  return rc;
}
