// attention.cu — fused scaled-dot-product attention on the GPU,
// softmax(q k^T * scale) v over the last two dims, forward and backward in
// the manner of FlashAttention-2, on CUDA cores in f32 (the CPU op in
// host/ops/attention.c is the reference, and tensor-core TF32 would not
// meet its f32 parity bounds).
//
// Layout of the work. A row of width d (or dv) is split over G threads, 16
// columns each, G in {1, 2, 4, 8, 16} (d = 64: 4 threads); dot products are
// summed over the G lanes by shuffles, which leaves the same total in every
// lane. A block owns up to 128 / G rows of one head and streams the other
// side's rows through shared memory in tiles of TILE rows (zero-padded to
// the tile and to 16 * G columns, so padding adds nothing to a dot
// product). Each thread's columns are interleaved in float4 steps (columns
// 4 * (lane + G * i) + 0..3) so the G lanes of a row read consecutive
// float4s of a shared row: no bank conflicts, and every row group of the
// warp reads the same row (a broadcast).
//
//   forward   one block per (head, query rows): K/V tiles, online softmax
//             (running max m and sum l, rescaled once per 8 keys); writes
//             out and lse = m + log(l).
//   dq        one block per (head, query rows): delta = rowsum(dO * O)
//             first, then K/V tiles: P = exp(scale q k - lse),
//             dS = P (dO v - delta), dq = scale * sum dS k.
//   dk, dv    one block per (head, key rows): Q/dO tiles (with lse and
//             delta), dv = sum P dO, dk = scale * sum dS q.
// Each gradient element is summed by one thread in a fixed order: the
// backward is deterministic (no atomics), at the price of recomputing the
// scores in both backward kernels.
//
// Operands are read in place through their strides (columns must have
// stride 1; the host makes other views contiguous), so q, k and v sliced
// from one [B, T, 3, h, d] qkv tensor cost no copy. bf16 is loaded into
// f32 and rounded once on store, as on the CPU.
#include "attention.h"
#include "cuda_common.cuh"

namespace {

constexpr int CHUNK = 16;        // columns per thread
constexpr int SUB = 8;           // rows of a tile scored together
constexpr int DQ_SUB = 4;        // the same in the dq kernel (which keeps those rows in registers)
constexpr int MAX_THREADS = 128;  // per block
constexpr int MIN_BLOCKS = 4;     // per SM: caps registers at 128 per thread
constexpr int TILE_FLOATS = 4096; // one tile: 16 KiB of shared memory

// Rows per tile for a padded width of 16 * G: 64 rows, fewer past d = 64.
template <int G>
struct geometry {
  static constexpr int width = CHUNK * G;
  static constexpr int tile = 64 * width <= TILE_FLOATS ? 64 : TILE_FLOATS / width;
  static_assert(tile % SUB == 0, "a tile is whole groups of SUB rows");
};

struct __align__(16) vec4 {
  float x, y, z, w;
};

// One operand: its first element, the strides of its leading dims and of
// its rows (columns have stride 1), in elements.
template <typename T>
struct operand {
  const T *data;
  int64_t lead_stride[SERE_MAX_DIMS];
  int64_t row_stride;
};

struct dims {
  int nb;                      // leading dims
  int64_t lead[SERE_MAX_DIMS]; // their sizes
  int tq, tk, d, dv;
  float scale;
};

__device__ __forceinline__ float load_elem(const float *p) { return *p; }
__device__ __forceinline__ float load_elem(const uint16_t *p) { return sere_bf16_load(p); }
__device__ __forceinline__ void store_elem(float *p, float v) { *p = v; }
__device__ __forceinline__ void store_elem(uint16_t *p, float v) { *p = sere_bf16_round(v); }

// Head h's first row in o (h is the flat index over the leading dims).
template <typename T>
__device__ __forceinline__ const T *head_rows(const operand<T> &o, const dims &p, int64_t h) {
  int64_t off = 0;
#pragma unroll
  for (int i = SERE_MAX_DIMS - 1; i >= 0; i--)  // unrolled: no local copy of the arrays
    if (i < p.nb) {
      off += h % p.lead[i] * o.lead_stride[i];
      h /= p.lead[i];
    }
  return o.data + off;
}

// Column e of this thread's 16 (lane = its index among the row's G threads).
template <int G>
__device__ __forceinline__ int column(int lane, int e) {
  return 4 * (lane + G * (e >> 2)) + (e & 3);
}

template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int m = G / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// This thread's columns of a global row (zero past `width`).
template <typename T, int G>
__device__ __forceinline__ void load_row(float (&x)[CHUNK], const T *row, int width, int lane) {
#pragma unroll
  for (int e = 0; e < CHUNK; e++) {
    int c = column<G>(lane, e);
    x[e] = c < width ? load_elem(row + c) : 0.0f;
  }
}

template <typename T, int G>
__device__ __forceinline__ void store_row(T *row, const float (&x)[CHUNK], float factor, int width, int lane) {
#pragma unroll
  for (int e = 0; e < CHUNK; e++) {
    int c = column<G>(lane, e);
    if (c < width) store_elem(row + c, x[e] * factor);
  }
}

// Rows [row0, row0 + tile) of a [rows, width] matrix into a tile of
// geometry<G>::width columns, zeros outside the matrix. The whole block
// takes part.
template <typename T, int G>
__device__ __forceinline__ void load_tile(float *tile, const T *base, int64_t row_stride, int row0, int rows,
                                          int width) {
  constexpr int W = geometry<G>::width, N = geometry<G>::tile * W;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    int r = row0 + i / W, c = i % W;
    tile[i] = r < rows && c < width ? load_elem(base + r * row_stride + c) : 0.0f;
  }
}

// This thread's share of x . row (row: one tile row in shared memory).
template <int G>
__device__ __forceinline__ float partial_dot(const float (&x)[CHUNK], const float *row, int lane) {
  const vec4 *r4 = (const vec4 *)row;
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < CHUNK / 4; i++) {
    vec4 t = r4[lane + G * i];
    s = fmaf(x[4 * i], t.x, s);
    s = fmaf(x[4 * i + 1], t.y, s);
    s = fmaf(x[4 * i + 2], t.z, s);
    s = fmaf(x[4 * i + 3], t.w, s);
  }
  return s;
}

// The scores and the gradient products of the backward kernels, N tile
// rows at a time: s[u] = x . xs[u] and dp[u] = y . ys[u] (rows W apart in
// shared memory), each summed over the row's thread group.
template <int G, int N, int W>
__device__ __forceinline__ void dot_pairs(float (&s)[N], float (&dp)[N], const float (&x)[CHUNK], const float *xs,
                                          const float (&y)[CHUNK], const float *ys, int lane) {
#pragma unroll
  for (int u = 0; u < N; u++) {
    s[u] = partial_dot<G>(x, xs + u * W, lane);
    dp[u] = partial_dot<G>(y, ys + u * W, lane);
  }
#pragma unroll
  for (int u = 0; u < N; u++) {
    s[u] = group_sum<G>(s[u]);
    dp[u] = group_sum<G>(dp[u]);
  }
}

// acc += a * row over this thread's columns.
template <int G>
__device__ __forceinline__ void add_scaled(float (&acc)[CHUNK], float a, const float *row, int lane) {
  const vec4 *r4 = (const vec4 *)row;
#pragma unroll
  for (int i = 0; i < CHUNK / 4; i++) {
    vec4 t = r4[lane + G * i];
    acc[4 * i] = fmaf(a, t.x, acc[4 * i]);
    acc[4 * i + 1] = fmaf(a, t.y, acc[4 * i + 1]);
    acc[4 * i + 2] = fmaf(a, t.z, acc[4 * i + 2]);
    acc[4 * i + 3] = fmaf(a, t.w, acc[4 * i + 3]);
  }
}

// Which row of which head this thread works on: rows per block =
// blockDim.x / G, blocks per head = ceil(n / that). Threads past the last
// row work on the last row (their warps' shuffles need them) and store
// nothing.
struct row_task {
  int64_t head;
  int row, lane;
  bool stores;
  __device__ __forceinline__ int clamped(int n) const { return row < n ? row : n - 1; }
};
template <int G>
__device__ __forceinline__ row_task row_of_thread(int n) {
  int rows = blockDim.x / G, blocks = (n + rows - 1) / rows;
  row_task t;
  t.head = blockIdx.x / blocks;
  t.row = (int)(blockIdx.x % blocks) * rows + threadIdx.x / G;
  t.lane = threadIdx.x % G;
  t.stores = t.row < n;
  return t;
}

template <typename T, int G>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS)
    attention_forward_kernel(operand<T> q, operand<T> k, operand<T> v, dims p, T *out, float *lse) {
  constexpr int W = geometry<G>::width, TILE = geometry<G>::tile;
  SERE_DYNAMIC_SHARED(float, smem);
  float *ks = smem, *vs = smem + TILE * W;
  row_task t = row_of_thread<G>(p.tq);
  const T *kh = head_rows(k, p, t.head), *vh = head_rows(v, p, t.head);
  float qr[CHUNK], o[CHUNK] = {}, m = -INFINITY, l = 0.0f;
  load_row<T, G>(qr, head_rows(q, p, t.head) + t.clamped(p.tq) * q.row_stride, p.d, t.lane);
  for (int j0 = 0; j0 < p.tk; j0 += TILE) {
    int n = min(TILE, p.tk - j0);
    __syncthreads();
    load_tile<T, G>(ks, kh, k.row_stride, j0, p.tk, p.d);
    load_tile<T, G>(vs, vh, v.row_stride, j0, p.tk, p.dv);
    __syncthreads();
    for (int jj = 0; jj < n; jj += SUB) {
      float s[SUB], top = m;
#pragma unroll
      for (int u = 0; u < SUB; u++) s[u] = partial_dot<G>(qr, ks + (jj + u) * W, t.lane);
#pragma unroll
      for (int u = 0; u < SUB; u++) {
        s[u] = group_sum<G>(s[u]) * p.scale;
        if (jj + u >= n) s[u] = -INFINITY;
        top = fmaxf(top, s[u]);
      }
      // The first group has a real key, so top is finite from here on.
      float rescale = expf(m - top);
      l *= rescale;
#pragma unroll
      for (int e = 0; e < CHUNK; e++) o[e] *= rescale;
#pragma unroll
      for (int u = 0; u < SUB; u++) {
        float pu = expf(s[u] - top);
        l += pu;
        add_scaled<G>(o, pu, vs + (jj + u) * W, t.lane);
      }
      m = top;
    }
  }
  if (!t.stores) return;
  int64_t at = t.head * p.tq + t.row;
  store_row<T, G>(out + at * p.dv, o, 1.0f / l, p.dv, t.lane);
  if (t.lane == 0) lse[at] = m + logf(l);
}

template <typename T, int G>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS)
    attention_dq_kernel(operand<T> q, operand<T> k, operand<T> v, operand<T> dout, const T *out, const float *lse,
                        dims p, float *delta, T *dq) {
  constexpr int W = geometry<G>::width, TILE = geometry<G>::tile;
  SERE_DYNAMIC_SHARED(float, smem);
  float *ks = smem, *vs = smem + TILE * W;
  row_task t = row_of_thread<G>(p.tq);
  int r = t.clamped(p.tq);
  int64_t at = t.head * p.tq + r;
  float qr[CHUNK], gr[CHUNK], acc[CHUNK];
  load_row<T, G>(qr, head_rows(q, p, t.head) + r * q.row_stride, p.d, t.lane);
  load_row<T, G>(gr, head_rows(dout, p, t.head) + r * dout.row_stride, p.dv, t.lane);
  load_row<T, G>(acc, out + at * p.dv, p.dv, t.lane);
  float dsum = 0.0f;
#pragma unroll
  for (int e = 0; e < CHUNK; e++) dsum = fmaf(gr[e], acc[e], dsum);
  dsum = group_sum<G>(dsum);
  if (t.stores && t.lane == 0) delta[at] = dsum;
  if (!dq) return;  // the same for the whole grid: delta for dk only
  const float row_lse = lse[at];
  const T *kh = head_rows(k, p, t.head), *vh = head_rows(v, p, t.head);
#pragma unroll
  for (int e = 0; e < CHUNK; e++) acc[e] = 0.0f;
  for (int j0 = 0; j0 < p.tk; j0 += TILE) {
    int n = min(TILE, p.tk - j0);
    __syncthreads();
    load_tile<T, G>(ks, kh, k.row_stride, j0, p.tk, p.d);
    load_tile<T, G>(vs, vh, v.row_stride, j0, p.tk, p.dv);
    __syncthreads();
    for (int jj = 0; jj < n; jj += DQ_SUB) {
      float s[DQ_SUB], dp[DQ_SUB];
      dot_pairs<G, DQ_SUB, W>(s, dp, qr, ks + jj * W, gr, vs + jj * W, t.lane);
#pragma unroll
      for (int u = 0; u < DQ_SUB; u++) {
        float ds = jj + u < n ? expf(s[u] * p.scale - row_lse) * (dp[u] - dsum) : 0.0f;
        add_scaled<G>(acc, ds, ks + (jj + u) * W, t.lane);
      }
    }
  }
  if (t.stores) store_row<T, G>(dq + at * p.d, acc, p.scale, p.d, t.lane);
}

template <typename T, int G>
__global__ void __launch_bounds__(MAX_THREADS, MIN_BLOCKS)
    attention_dkdv_kernel(operand<T> q, operand<T> k, operand<T> v, operand<T> dout, const float *lse,
                          const float *delta, dims p, T *dk, T *dv) {
  constexpr int W = geometry<G>::width, TILE = geometry<G>::tile;
  SERE_DYNAMIC_SHARED(float, smem);
  float *qs = smem, *gs = smem + TILE * W, *lses = gs + TILE * W, *deltas = lses + TILE;
  row_task t = row_of_thread<G>(p.tk);
  int r = t.clamped(p.tk);
  float kr[CHUNK], vr[CHUNK], dka[CHUNK] = {}, dva[CHUNK] = {};
  load_row<T, G>(kr, head_rows(k, p, t.head) + r * k.row_stride, p.d, t.lane);
  load_row<T, G>(vr, head_rows(v, p, t.head) + r * v.row_stride, p.dv, t.lane);
  const T *qh = head_rows(q, p, t.head), *gh = head_rows(dout, p, t.head);
  const float *lh = lse + t.head * p.tq, *dh = delta ? delta + t.head * p.tq : nullptr;
  for (int i0 = 0; i0 < p.tq; i0 += TILE) {
    int n = min(TILE, p.tq - i0);
    __syncthreads();
    load_tile<T, G>(qs, qh, q.row_stride, i0, p.tq, p.d);
    load_tile<T, G>(gs, gh, dout.row_stride, i0, p.tq, p.dv);
    // Padding rows get lse = inf: probability 0.
    for (int i = threadIdx.x; i < TILE; i += blockDim.x) {
      lses[i] = i < n ? lh[i0 + i] : INFINITY;
      deltas[i] = i < n && dh ? dh[i0 + i] : 0.0f;
    }
    __syncthreads();
    for (int ii = 0; ii < n; ii += SUB) {
      float s[SUB], dp[SUB];
      dot_pairs<G, SUB, W>(s, dp, kr, qs + ii * W, vr, gs + ii * W, t.lane);
#pragma unroll
      for (int u = 0; u < SUB; u++) {
        float pu = expf(s[u] * p.scale - lses[ii + u]);
        add_scaled<G>(dva, pu, gs + (ii + u) * W, t.lane);
        add_scaled<G>(dka, pu * (dp[u] - deltas[ii + u]), qs + (ii + u) * W, t.lane);
      }
    }
  }
  if (!t.stores) return;
  int64_t at = t.head * p.tk + t.row;
  if (dk) store_row<T, G>(dk + at * p.d, dka, p.scale, p.d, t.lane);
  if (dv) store_row<T, G>(dv + at * p.dv, dva, 1.0f, p.dv, t.lane);
}

// ---- host side ----------------------------------------------------------

template <typename T>
operand<T> operand_of(const sere_tensor *t, int nb) {
  operand<T> o = {};
  o.data = (const T *)sere_data(t);
  for (int i = 0; i < nb; i++) o.lead_stride[i] = t->stride[i];
  o.row_stride = t->stride[nb];
  return o;
}

dims dims_of(const sere_tensor *q, const sere_tensor *k, const sere_tensor *v, float scale) {
  dims p = {};
  p.nb = q->ndim - 2;
  for (int i = 0; i < p.nb; i++) p.lead[i] = q->shape[i];
  p.tq = (int)q->shape[p.nb];
  p.d = (int)q->shape[p.nb + 1];
  p.tk = (int)k->shape[p.nb];
  p.dv = (int)v->shape[p.nb + 1];
  p.scale = scale;
  return p;
}

int64_t heads_of(const dims &p) {
  int64_t h = 1;
  for (int i = 0; i < p.nb; i++) h *= p.lead[i];
  return h;
}

// Threads per row: 16 columns each, a power of two.
int threads_per_row(const dims &p) {
  int width = p.d > p.dv ? p.d : p.dv, g = 1;
  while (g * CHUNK < width) g *= 2;
  return g;
}

// Blocks of `rows` rows per head of n rows: as few threads as cover n rows,
// at least a warp, at most MAX_THREADS.
struct launch {
  unsigned blocks;
  int threads;
};
launch launch_for(int G, int n, int64_t heads) {
  int rows = MAX_THREADS / G;
  while (rows / 2 >= n && rows / 2 * G >= 32) rows /= 2;
  launch l;
  l.threads = rows * G;
  l.blocks = (unsigned)(heads * ((n + rows - 1) / rows));
  return l;
}

// Everything one call needs; NULL pointers for gradients not wanted.
struct call {
  const sere_tensor *q, *k, *v, *dout, *out, *lse;
  float scale;
  sere_tensor *delta, *dq, *dk, *dv;
};

template <typename T>
T *data_or_null(sere_tensor *t) {
  return t ? (T *)sere_data(t) : nullptr;
}

template <typename T, int G>
struct forward_op {
  static int run(const call &c) {
    dims p = dims_of(c.q, c.k, c.v, c.scale);
    launch l = launch_for(G, p.tq, heads_of(p));
    size_t smem = 2 * geometry<G>::tile * geometry<G>::width * sizeof(float);
    SERE_LAUNCH((attention_forward_kernel<T, G>), l.blocks, l.threads, smem, operand_of<T>(c.q, p.nb),
                operand_of<T>(c.k, p.nb), operand_of<T>(c.v, p.nb), p, (T *)sere_data(c.out),
                (float *)sere_data(c.lse));
    return SERE_CHECK_LAUNCH("attention forward (cuda)");
  }
};

template <typename T, int G>
struct backward_op {
  static int run(const call &c) {
    dims p = dims_of(c.q, c.k, c.v, c.scale);
    int64_t heads = heads_of(p);
    operand<T> q = operand_of<T>(c.q, p.nb), k = operand_of<T>(c.k, p.nb), v = operand_of<T>(c.v, p.nb),
               dout = operand_of<T>(c.dout, p.nb);
    const float *lse = (const float *)sere_data(c.lse);
    float *delta = data_or_null<float>(c.delta);
    size_t tile_bytes = geometry<G>::tile * geometry<G>::width * sizeof(float);
    if (c.dq || c.dk) {
      launch l = launch_for(G, p.tq, heads);
      SERE_LAUNCH((attention_dq_kernel<T, G>), l.blocks, l.threads, 2 * tile_bytes, q, k, v, dout,
                  (const T *)sere_data(c.out), lse, p, delta, data_or_null<T>(c.dq));
      if (SERE_CHECK_LAUNCH("attention backward dq (cuda)")) return -1;
    }
    if (c.dk || c.dv) {
      launch l = launch_for(G, p.tk, heads);
      size_t smem = 2 * tile_bytes + 2 * geometry<G>::tile * sizeof(float);
      SERE_LAUNCH((attention_dkdv_kernel<T, G>), l.blocks, l.threads, smem, q, k, v, dout, lse,
                  c.dk ? (const float *)delta : nullptr, p, data_or_null<T>(c.dk), data_or_null<T>(c.dv));
      if (SERE_CHECK_LAUNCH("attention backward dk/dv (cuda)")) return -1;
    }
    return 0;
  }
};

// Op<T, G>::run(c) for the call's dtype and row width.
template <template <typename, int> class Op, typename T>
int by_width(const call &c, int G) {
  switch (G) {
    case 1: return Op<T, 1>::run(c);
    case 2: return Op<T, 2>::run(c);
    case 4: return Op<T, 4>::run(c);
    case 8: return Op<T, 8>::run(c);
    default: return Op<T, 16>::run(c);
  }
}

template <template <typename, int> class Op>
int dispatch(const call &c, const char *what) {
  dims p = dims_of(c.q, c.k, c.v, c.scale);
  if (p.d > SERE_CUDA_ATTENTION_MAX_WIDTH || p.dv > SERE_CUDA_ATTENTION_MAX_WIDTH) {
    sere_fail("%s: head widths up to %d are supported, got d = %d and dv = %d", what, SERE_CUDA_ATTENTION_MAX_WIDTH,
              p.d, p.dv);
    return -1;
  }
  int G = threads_per_row(p);
  return c.q->dtype == SERE_BF16 ? by_width<Op, uint16_t>(c, G) : by_width<Op, float>(c, G);
}

}  // namespace

extern "C" int sere_cuda_attention_forward(const sere_tensor *q, const sere_tensor *k, const sere_tensor *v,
                                           float scale, sere_tensor *out, sere_tensor *lse) {
  call c = {};
  c.q = q, c.k = k, c.v = v, c.out = out, c.lse = lse, c.scale = scale;
  return dispatch<forward_op>(c, "attention (cuda)");
}

extern "C" int sere_cuda_attention_backward(const sere_tensor *q, const sere_tensor *k, const sere_tensor *v,
                                            const sere_tensor *dout, const sere_tensor *out, const sere_tensor *lse,
                                            float scale, sere_tensor *delta, sere_tensor *dq, sere_tensor *dk,
                                            sere_tensor *dv) {
  call c = {};
  c.q = q, c.k = k, c.v = v, c.dout = dout, c.out = out, c.lse = lse, c.scale = scale;
  c.delta = delta, c.dq = dq, c.dk = dk, c.dv = dv;
  return dispatch<backward_op>(c, "attention backward (cuda)");
}
