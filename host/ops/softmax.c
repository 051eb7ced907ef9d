/* softmax.c — softmax and log_softmax along one dim, and their backward.
 *
 * Computed in f32 (bf16 in, bf16 out), numerically stable by subtracting
 * the max. The tensor is seen as [outer, n, inner] around the dim. When
 * inner == 1 (the last dim, the common case) each row is processed on its
 * own; otherwise a slab of columns [n, <= COLS] is processed with per-column
 * max/sum vectors, so every loop still runs over contiguous memory.
 *
 * exp is sere_exp_core (vecmath.h): libm's expf does not vectorise without
 * -ffast-math, and softmax is mostly exp. Sums accumulate in double (rows:
 * `omp simd` reductions). Every loop is compiled for AVX-512 and AVX2 too
 * (SERE_WIDE_SIMD): with SSE2 alone softmax took twice PyTorch's time.
 *
 * Backward needs only the saved output y:
 *   softmax:      gx = y * (g - sum(g * y))
 *   log_softmax:  gx = g - exp(y) * sum(g)
 *
 * CUDA tensors run the same lines in kernels/softmax.cu.                    */
#include <math.h>

#include "autocast.h"
#include "ops.h"
#include "vecmath.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/softmax.h"
#endif

#define PARALLEL_MIN 32768
#define COLS 256 /* columns per slab in the strided path */

/* NaN needs no care here: it propagates through exp and the sum. */
SERE_WIDE_SIMD static float row_max(const float *x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

/* e = exp(x - m); returns sum(e), accumulated in double. */
SERE_WIDE_SIMD static float row_exp_sum(const float *x, float *e, int64_t n, float m) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    e[i] = sere_exp_core(x[i] - m);
    s += e[i];
  }
  return (float)s;
}

/* sum(a * b), or sum(a) when b is NULL. */
SERE_WIDE_SIMD static float row_dot(const float *a, const float *b, int64_t n) {
  double s = 0;
  if (b) {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  } else {
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i];
  }
  return (float)s;
}

SERE_WIDE_SIMD static void softmax_row(const float *x, float *y, int64_t n, int log) {
  float m = row_max(x, n);
  if (log) {
    /* (x - m) is exact near the max; x - (m + log s) would round at |x|'s scale. */
    float ls = logf(row_exp_sum(x, y, n, m)); /* y as scratch */
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) - ls;
  } else {
    float inv = 1.0f / row_exp_sum(x, y, n, m);
    for (int64_t i = 0; i < n; i++) y[i] *= inv;
  }
}

SERE_WIDE_SIMD static void softmax_row_backward(const float *g, const float *y, float *gx, int64_t n, int log) {
  if (log) {
    float s = row_dot(g, NULL, n);
    for (int64_t i = 0; i < n; i++) gx[i] = g[i] - sere_exp_core(y[i]) * s;
  } else {
    float s = row_dot(g, y, n);
    for (int64_t i = 0; i < n; i++) gx[i] = y[i] * (g[i] - s);
  }
}

/* Columns of one [n, stride] slab: w columns starting at x (and y). */
SERE_WIDE_SIMD static void softmax_cols(const float *x, float *y, int64_t n, int64_t stride, int64_t w, int log) {
  float m[COLS], k[COLS];
  double s[COLS];
  for (int64_t c = 0; c < w; c++) { m[c] = -INFINITY; s[c] = 0; }
  for (int64_t r = 0; r < n; r++) {
    const float *xr = x + r * stride;
    for (int64_t c = 0; c < w; c++) m[c] = xr[c] > m[c] ? xr[c] : m[c];
  }
  for (int64_t r = 0; r < n; r++) {
    const float *xr = x + r * stride;
    float *yr = y + r * stride;
    for (int64_t c = 0; c < w; c++) {
      float e = sere_exp_core(xr[c] - m[c]);
      yr[c] = e;
      s[c] += e;
    }
  }
  for (int64_t c = 0; c < w; c++) k[c] = log ? logf((float)s[c]) : (float)(1.0 / s[c]);
  for (int64_t r = 0; r < n; r++) {
    const float *xr = x + r * stride;
    float *yr = y + r * stride;
    if (log) for (int64_t c = 0; c < w; c++) yr[c] = (xr[c] - m[c]) - k[c];
    else for (int64_t c = 0; c < w; c++) yr[c] *= k[c];
  }
}

SERE_WIDE_SIMD static void softmax_cols_backward(const float *g, const float *y, float *gx, int64_t n, int64_t stride,
                                                 int64_t w, int log) {
  double s[COLS];
  for (int64_t c = 0; c < w; c++) s[c] = 0;
  for (int64_t r = 0; r < n; r++) {
    const float *gr = g + r * stride, *yr = y + r * stride;
    if (log) for (int64_t c = 0; c < w; c++) s[c] += gr[c];
    else for (int64_t c = 0; c < w; c++) s[c] += gr[c] * yr[c];
  }
  for (int64_t r = 0; r < n; r++) {
    const float *gr = g + r * stride, *yr = y + r * stride;
    float *gxr = gx + r * stride;
    if (log) for (int64_t c = 0; c < w; c++) gxr[c] = gr[c] - sere_exp_core(yr[c]) * (float)s[c];
    else for (int64_t c = 0; c < w; c++) gxr[c] = yr[c] * (gr[c] - (float)s[c]);
  }
}

/* A tensor of `shape` as [outer, n, inner] around dim d. */
static void line_geometry(int ndim, const int64_t *shape, int d, int64_t *outer, int64_t *n, int64_t *inner) {
  *n = ndim ? shape[d] : 1;
  *outer = *inner = 1;
  for (int i = 0; i < d; i++) *outer *= shape[i];
  for (int i = d + 1; i < ndim; i++) *inner *= shape[i];
}

/* Runs the forward (a = x, out = y; b unused) or the backward (a = g,
 * b = y, out = gx) over every line of a contiguous f32 tensor of `shape`
 * along dim d, on the tensors' device. 0 or -1. */
static int run_lines(int ndim, const int64_t *shape, int d, const float *a, const float *b, float *out, int log,
                     int backward, sere_device_type dev) {
  int64_t n, inner, outer;
  line_geometry(ndim, shape, d, &outer, &n, &inner);
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA)
    return backward ? sere_cuda_softmax_backward(a, b, out, outer, n, inner, log)
                    : sere_cuda_softmax(a, out, outer, n, inner, log);
#endif
  (void)dev;
  int64_t slabs = (inner + COLS - 1) / COLS, ntasks = outer * slabs;
  int par = outer * n * inner >= PARALLEL_MIN;
  if (n == 0) return 0;
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < ntasks; t++) {
    int64_t o = t / slabs, c0 = t % slabs * COLS, w = inner - c0 < COLS ? inner - c0 : COLS;
    int64_t off = o * n * inner + c0;
    if (inner == 1) {
      if (backward) softmax_row_backward(a + off, b + off, out + off, n, log);
      else softmax_row(a + off, out + off, n, log);
    } else {
      if (backward) softmax_cols_backward(a + off, b + off, out + off, n, inner, w, log);
      else softmax_cols(a + off, out + off, n, inner, w, log);
    }
  }
  return 0;
}

/* ints: dim, log. saved: the output (a detached alias). */
static int softmax_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  sere_tensor *y = sere_node_saved(n, 0);
  if (!y) return -1;
  sere_tensor *yf = sere_as_contiguous_dtype(y, SERE_F32), *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *gx = yf && gf ? sere_tensor_new_uninit_like(yf, SERE_F32) : NULL;
  if (gx && run_lines(e->ndim, e->shape, (int)n->ints[0], sere_data(gf), sere_data(yf), sere_data(gx), (int)n->ints[1],
                      1, sere_device_of(gx))) {
    sere_tensor_release(gx);
    gx = NULL;
  }
  sere_tensor_release(yf);
  sere_tensor_release(gf);
  return (gi[0] = sere_grad_as(gx, e->dtype)) ? 0 : -1;
}

static sere_tensor *softmax_impl(sere_tensor *t, int dim, int log) {
  if (sere_autocast_widens(t)) { /* f32 under autocast (autocast.h) */
    sere_tensor *wide = sere_to_dtype(t, SERE_F32);
    sere_tensor *out = wide ? softmax_impl(wide, dim, log) : NULL;
    sere_tensor_release(wide);
    return out;
  }
  const char *op = log ? "log_softmax" : "softmax";
  int d;
  char a[160];
  if (!sere_dtype_is_float(t->dtype))
    return sere_fail("%s: expects a float tensor, got %s of shape %s; convert it first with :float()", op,
                     sere_dtype_name(t->dtype), sere_shape_str(t, a, sizeof a));
  if (sere_wrap_dim(dim, t->ndim, op, &d)) return NULL;
  sere_tensor *x = sere_as_contiguous_dtype(t, SERE_F32);
  sere_tensor *y = x ? sere_tensor_new_uninit_like(t, SERE_F32) : NULL;
  int rc = y ? run_lines(t->ndim, t->shape, d, sere_data(x), NULL, sere_data(y), log, 0, sere_device_of(t)) : -1;
  sere_tensor_release(x);
  sere_tensor *out = rc ? NULL : sere_as_contiguous_dtype(y, t->dtype);
  sere_tensor_release(y);
  if (!out || !sere_needs_grad(1, &t)) return out;
  sere_node *n = sere_node_new(op, softmax_backward, 1, &t);
  if (n) sere_attach(out, n);
  if (!n || sere_node_save_output(n, 0, out)) {
    sere_tensor_release(out);
    return NULL;
  }
  n->ints[0] = d;
  n->ints[1] = log;
  return out;
}

sere_tensor *sere_softmax(sere_tensor *t, int dim) { return softmax_impl(t, dim, 0); }
sere_tensor *sere_log_softmax(sere_tensor *t, int dim) { return softmax_impl(t, dim, 1); }
