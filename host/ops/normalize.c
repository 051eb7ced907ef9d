/* normalize.c — L2 normalisation along one dim, PyTorch's F.normalize with
 * p = 2: y = x / max(||x||, eps), computed in f32 with the sums of squares
 * in double (no overflow, no loss on long lines).
 *
 * Backward, with n = ||x|| and d = max(n, eps), per line:
 *   gx = g / d - x * sum(g * x) / (d^2 n)   when n >= eps
 *   gx = g / eps                             when n < eps
 * (below eps the denominator is a constant; at n == eps the clamp passes
 * the gradient of the norm, as torch's clamp_min does). Both are
 * gx = a g - b x with per-line a and b. Saved: x and the per-line norms.
 *
 * The tensor is seen as [outer, len, inner] around the dim. The last dim
 * (inner == 1) runs row by row; otherwise slabs of up to COLS columns keep
 * per-column sums, so every loop still runs over contiguous memory. CUDA
 * tensors run the same lines in kernels/normalize.cu. */
#include <math.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/normalize.h"
#endif

#define PARALLEL_MIN 32768
#define COLS 256

/* The per-line a and b of the gradient, from the norm and sum(g * x). */
static inline void grad_coefs(float norm, float eps, double gx_dot, float *a, float *b) {
  float d = norm > eps ? norm : eps;
  *a = 1.0f / d;
  *b = norm >= eps && norm > 0 ? (float)(gx_dot / ((double)d * d * norm)) : 0.0f;
}

static void row_forward(const float *x, float *y, float *norm, int64_t len, float eps) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; i++) s += (double)x[i] * x[i];
  float n = (float)sqrt(s), d = n > eps ? n : eps;
  for (int64_t i = 0; i < len; i++) y[i] = x[i] / d;
  *norm = n;
}

static void row_backward(const float *g, const float *x, float *gx, float norm, int64_t len, float eps) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < len; i++) s += (double)g[i] * x[i];
  float a, b;
  grad_coefs(norm, eps, s, &a, &b);
  for (int64_t i = 0; i < len; i++) gx[i] = g[i] * a - x[i] * b;
}

/* w columns of a [len, stride] slab. */
static void cols_forward(const float *x, float *y, float *norms, int64_t len, int64_t stride, int64_t w, float eps) {
  double s[COLS];
  float d[COLS];
  for (int64_t c = 0; c < w; c++) s[c] = 0;
  for (int64_t r = 0; r < len; r++) {
    const float *xr = x + r * stride;
    for (int64_t c = 0; c < w; c++) s[c] += (double)xr[c] * xr[c];
  }
  for (int64_t c = 0; c < w; c++) {
    norms[c] = (float)sqrt(s[c]);
    d[c] = norms[c] > eps ? norms[c] : eps;
  }
  for (int64_t r = 0; r < len; r++)
    for (int64_t c = 0; c < w; c++) y[r * stride + c] = x[r * stride + c] / d[c];
}

static void cols_backward(const float *g, const float *x, float *gx, const float *norms, int64_t len,
                          int64_t stride, int64_t w, float eps) {
  double s[COLS];
  float a[COLS], b[COLS];
  for (int64_t c = 0; c < w; c++) s[c] = 0;
  for (int64_t r = 0; r < len; r++) {
    const float *gr = g + r * stride, *xr = x + r * stride;
    for (int64_t c = 0; c < w; c++) s[c] += (double)gr[c] * xr[c];
  }
  for (int64_t c = 0; c < w; c++) grad_coefs(norms[c], eps, s[c], &a[c], &b[c]);
  for (int64_t r = 0; r < len; r++)
    for (int64_t c = 0; c < w; c++) {
      int64_t i = r * stride + c;
      gx[i] = g[i] * a[c] - x[i] * b[c];
    }
}

/* Forward (g == NULL: out = y, norms written) or backward (out = gx, norms
 * read) over every line of a contiguous tensor of `shape` along dim d, on
 * the tensors' device. 0 or -1. */
static int run_lines(int ndim, const int64_t *shape, int d, const float *x, const float *g, float *out,
                     float *norms, float eps, sere_device_type dev) {
  int64_t len = ndim ? shape[d] : 1, inner = 1, outer = 1;
  for (int i = 0; i < d; i++) outer *= shape[i];
  for (int i = d + 1; i < ndim; i++) inner *= shape[i];
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA)
    return g ? sere_cuda_l2_normalize_backward(g, x, norms, out, outer, len, inner, eps)
             : sere_cuda_l2_normalize(x, out, norms, outer, len, inner, eps);
#endif
  (void)dev;
  int64_t slabs = (inner + COLS - 1) / COLS, ntasks = outer * slabs;
  if (len == 0) return 0; /* nothing to normalise; norms of empty lines are never read */
#pragma omp parallel for schedule(static) if (outer * len * inner >= PARALLEL_MIN)
  for (int64_t t = 0; t < ntasks; t++) {
    int64_t o = t / slabs, c0 = t % slabs * COLS, w = inner - c0 < COLS ? inner - c0 : COLS;
    int64_t off = o * len * inner + c0, line = o * inner + c0;
    if (inner == 1) {
      if (g) row_backward(g + off, x + off, out + off, norms[line], len, eps);
      else row_forward(x + off, out + off, &norms[line], len, eps);
    } else {
      if (g) cols_backward(g + off, x + off, out + off, norms + line, len, inner, w, eps);
      else cols_forward(x + off, out + off, norms + line, len, inner, w, eps);
    }
  }
  return 0;
}

/* ints[0]: dim; scalars[0]: eps. saved: x, the [lines] f32 norms. */
static int l2_normalize_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  sere_tensor *x = sere_node_saved(n, 0), *norms = sere_node_saved(n, 1);
  if (!x || !norms) return -1;
  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32), *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *gx = xf && gf ? sere_tensor_new_uninit_like(xf, SERE_F32) : NULL;
  if (gx && run_lines(e->ndim, e->shape, (int)n->ints[0], sere_data(xf), sere_data(gf), sere_data(gx),
                      sere_data(norms), (float)n->scalars[0], sere_device_of(gx))) {
    sere_tensor_release(gx);
    gx = NULL;
  }
  sere_tensor_release(xf);
  sere_tensor_release(gf);
  return (gi[0] = sere_grad_as(gx, e->dtype)) ? 0 : -1;
}

sere_tensor *sere_l2_normalize(sere_tensor *x, int dim, double eps) {
  if (sere_autocast_widens(x)) { /* f32 under autocast (autocast.h) */
    sere_tensor *wide = sere_to_dtype(x, SERE_F32);
    sere_tensor *out = wide ? sere_l2_normalize(wide, dim, eps) : NULL;
    sere_tensor_release(wide);
    return out;
  }
  char a[160];
  int d;
  if (!sere_dtype_is_float(x->dtype))
    return sere_fail("normalize: expects a float tensor, got %s of shape %s; convert it first with :float()",
                     sere_dtype_name(x->dtype), sere_shape_str(x, a, sizeof a));
  if (!(eps >= 0)) return sere_fail("normalize: eps must be >= 0, got %g", eps);
  if (sere_wrap_dim(dim, x->ndim, "normalize", &d)) return NULL;
  int64_t len = x->ndim ? x->shape[d] : 1, lines = len ? sere_numel(x) / len : 0;
  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32);
  sere_tensor *y = sere_tensor_new_uninit_like(x, SERE_F32);
  sere_tensor *norms = sere_tensor_new_uninit_on(sere_device_of(x), SERE_F32, 1, &lines);
  sere_tensor *out = NULL;
  if (xf && y && norms &&
      !run_lines(x->ndim, x->shape, d, sere_data(xf), NULL, sere_data(y), sere_data(norms), (float)eps,
                 sere_device_of(x)))
    out = sere_as_contiguous_dtype(y, x->dtype);
  if (out && sere_needs_grad(1, &x)) {
    sere_node *n = sere_node_new("normalize", l2_normalize_backward, 1, &x);
    if (n) {
      n->ints[0] = d;
      n->scalars[0] = eps;
      sere_node_save(n, 0, x);
      sere_node_save(n, 1, norms);
      sere_attach(out, n);
    } else {
      sere_tensor_release(out);
      out = NULL;
    }
  }
  sere_tensor_release(xf);
  sere_tensor_release(y);
  sere_tensor_release(norms);
  return out;
}
