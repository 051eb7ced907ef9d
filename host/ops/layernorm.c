/* layernorm.c — layer normalisation over the last dim, fused forward and
 * backward, computed in f32.
 *
 * Forward, per row of D values, on the row shifted by its first value
 * (u = x - x[0]): the mean of u, then the biased variance as the mean of
 * (u - mean)^2 in a second sweep over the row while it is still in L1, then
 * y = (u - mean) * rstd * w + b. The shift keeps rows far from zero exact:
 * x - mean with the mean rounded to f32 would lose ulp(mean) against the
 * standard deviation, and E[x^2] - mean^2 far more. Only x and the per-row
 * shift, mean and rstd are kept for backward, never the normalised tensor.
 *
 * Backward, with xh = (u - mean) * rstd and gy = g * w:
 *   gx = rstd * (gy - mean(gy) - xh * mean(gy * xh))   per row
 *   gw = sum over rows of g * xh,   gb = sum over rows of g
 * gw and gb are summed per block of rows (a fixed split of the rows, so
 * the result does not depend on the number of threads), then the blocks
 * in order in double. A missing weight or bias is a row of ones or zeros.
 *
 * CUDA tensors run the same formulas in kernels/layernorm.cu on contiguous
 * f32 device copies (bf16 converted on the device like here). */
#include <math.h>
#include <stdlib.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/layernorm.h"
#endif

#define PARALLEL_MIN 32768
#define MAX_BLOCKS 64

/* stats: the row's shift, mean (of x - shift) and rstd. */
static void row_forward(const float *x, const float *w, const float *b, float *y, int64_t d, float eps,
                        float *stats) {
  const float x0 = x[0];
  float s = 0, v = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < d; j++) s += x[j] - x0;
  const float mean = s / (float)d;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < d; j++) v += (x[j] - x0 - mean) * (x[j] - x0 - mean);
  const float rstd = 1.0f / sqrtf(v / (float)d + eps);
  for (int64_t j = 0; j < d; j++) y[j] = (x[j] - x0 - mean) * rstd * w[j] + b[j];
  stats[0] = x0;
  stats[1] = mean;
  stats[2] = rstd;
}

/* gx (when non-NULL) for one row; adds the row's terms of gw / gb into
 * the block partial sums pw / pb (when non-NULL). */
static void row_backward(const float *g, const float *x, const float *w, const float *stats, int64_t d,
                         float *gx, float *pw, float *pb) {
  const float x0 = stats[0], mean = stats[1], rstd = stats[2];
  if (gx) {
    float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < d; j++) {
      float gy = g[j] * w[j];
      s1 += gy;
      s2 += gy * (x[j] - x0 - mean) * rstd;
    }
    const float m1 = s1 / (float)d, m2 = s2 / (float)d;
    for (int64_t j = 0; j < d; j++) gx[j] = rstd * (g[j] * w[j] - m1 - (x[j] - x0 - mean) * rstd * m2);
  }
  if (pw)
    for (int64_t j = 0; j < d; j++) pw[j] += g[j] * (x[j] - x0 - mean) * rstd;
  if (pb)
    for (int64_t j = 0; j < d; j++) pb[j] += g[j];
}

/* A row of d ones followed by a row of d zeros, standing in for a missing
 * weight / bias. */
static float *unit_rows(int64_t d) {
  float *u = calloc((size_t)(2 * d > 0 ? 2 * d : 1), sizeof *u);
  if (!u) return sere_fail("layer_norm: out of memory");
  for (int64_t j = 0; j < d; j++) u[j] = 1.0f;
  return u;
}

/* Sums the block partials [nblocks, d] in order into a new [d] tensor of dtype dt. */
static sere_tensor *sum_blocks(const float *part, int64_t nblocks, int64_t d, sere_dtype dt) {
  sere_tensor *t = sere_tensor_new_uninit(SERE_F32, 1, &d);
  if (!t) return NULL;
  float *o = sere_data(t);
  for (int64_t j = 0; j < d; j++) {
    double s = 0;
    for (int64_t k = 0; k < nblocks; k++) s += part[k * d + j];
    o[j] = (float)s;
  }
  sere_tensor *r = sere_as_contiguous_dtype(t, dt);
  sere_tensor_release(t);
  return r;
}

#ifdef SERE_WITH_CUDA
/* layer_norm_backward for CUDA tensors: the same gradients from
 * kernels/layernorm.cu, the weight / bias ones as [d] f32 on the device. */
static int layer_norm_backward_cuda(sere_node *n, sere_tensor *g, sere_tensor *x, sere_tensor *w, sere_tensor *stats,
                                    sere_tensor **gi) {
  const sere_edge *ex = &n->edges[0];
  const int64_t d = ex->shape[ex->ndim - 1], rows = d ? sere_numel_raw(ex->ndim, ex->shape) / d : 0;
  sere_device_type dev;
  if (sere_common_device("layer_norm backward", &dev, 2, (sere_tensor *[]){x, g})) return -1;
  const int need[3] = {sere_edge_needed(n, 0), sere_edge_needed(n, 1), sere_edge_needed(n, 2)};
  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32), *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *wf = w ? sere_as_contiguous_dtype(w, SERE_F32) : NULL, *out[3] = {NULL, NULL, NULL};
  int rc = -1;
  if (!xf || !gf || (w && !wf)) goto done;
  for (int i = 0; i < 3; i++)
    if (need[i] && !(out[i] = i == 0 ? sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, ex->ndim, ex->shape)
                                     : sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, 1, &d)))
      goto done;
  if (sere_cuda_layer_norm_backward(sere_data(gf), sere_data(xf), wf ? sere_data(wf) : NULL, sere_data(stats), rows, d,
                                    out[0] ? sere_data(out[0]) : NULL, out[1] ? sere_data(out[1]) : NULL,
                                    out[2] ? sere_data(out[2]) : NULL))
    goto done;
  for (int i = 0; i < 3; i++)
    if (need[i] && !(gi[i] = sere_as_contiguous_dtype(out[i], n->edges[i].dtype))) goto done;
  rc = 0;
done:
  sere_tensor_release(xf);
  sere_tensor_release(gf);
  sere_tensor_release(wf);
  for (int i = 0; i < 3; i++) sere_tensor_release(out[i]);
  return rc;
}
#endif

/* Inputs: x, weight, bias. saved: x, weight (when given), [rows, 3] f32
 * stats (shift, mean, rstd per row). ints[0]: has weight. */
static int layer_norm_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *ex = &n->edges[0];
  const int64_t d = ex->shape[ex->ndim - 1], rows = d ? sere_numel_raw(ex->ndim, ex->shape) / d : 0;
  sere_tensor *x = sere_node_saved(n, 0), *w = n->ints[0] ? sere_node_saved(n, 1) : NULL;
  sere_tensor *stats = sere_node_saved(n, 2);
  if (!x || !stats || (n->ints[0] && !w)) return -1;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(x) == SERE_CUDA) return layer_norm_backward_cuda(n, g, x, w, stats, gi);
#endif
  int need_x = sere_edge_needed(n, 0), need_w = sere_edge_needed(n, 1), need_b = sere_edge_needed(n, 2);
  int64_t nblocks = rows < MAX_BLOCKS ? rows : MAX_BLOCKS, per = nblocks ? (rows + nblocks - 1) / nblocks : 0;
  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32), *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *wf = w ? sere_as_contiguous_dtype(w, SERE_F32) : NULL;
  sere_tensor *gx = need_x ? sere_tensor_new_uninit(SERE_F32, ex->ndim, ex->shape) : NULL;
  float *units = w ? NULL : unit_rows(d);
  float *pw = need_w ? calloc((size_t)(nblocks * d + 1), sizeof *pw) : NULL;
  float *pb = need_b ? calloc((size_t)(nblocks * d + 1), sizeof *pb) : NULL;
  int rc = -1;
  if (!xf || !gf || (w && !wf) || (need_x && !gx) || (!w && !units) || (need_w && !pw) || (need_b && !pb)) {
    if ((need_w && !pw) || (need_b && !pb)) sere_fail("layer_norm backward: out of memory");
    goto done;
  }
  const float *xs = sere_data(xf), *gs = sere_data(gf), *ws = wf ? sere_data(wf) : units;
  const float *st = sere_data(stats);
  float *gxs = gx ? sere_data(gx) : NULL;
#pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_MIN)
  for (int64_t k = 0; k < nblocks; k++) {
    int64_t end = (k + 1) * per < rows ? (k + 1) * per : rows;
    for (int64_t r = k * per; r < end; r++)
      row_backward(gs + r * d, xs + r * d, ws, st + 3 * r, d, gxs ? gxs + r * d : NULL,
                   pw ? pw + k * d : NULL, pb ? pb + k * d : NULL);
  }
  if (need_x && !(gi[0] = sere_as_contiguous_dtype(gx, ex->dtype))) goto done;
  if (need_w && !(gi[1] = sum_blocks(pw, nblocks, d, n->edges[1].dtype))) goto done;
  if (need_b && !(gi[2] = sum_blocks(pb, nblocks, d, n->edges[2].dtype))) goto done;
  rc = 0;
done:
  sere_tensor_release(xf);
  sere_tensor_release(gf);
  sere_tensor_release(wf);
  sere_tensor_release(gx);
  free(units);
  free(pw);
  free(pb);
  return rc;
}

/* weight / bias: NULL or a float [d] tensor. */
static int check_affine(const char *what, const sere_tensor *t, const sere_tensor *x, int64_t d) {
  if (!t) return 0;
  char a[160], b[160];
  if (!sere_dtype_is_float(t->dtype)) {
    sere_fail("layer_norm: %s must be a float tensor, got %s", what, sere_dtype_name(t->dtype));
    return -1;
  }
  if (t->ndim != 1 || t->shape[0] != d) {
    sere_fail("layer_norm: %s of shape %s does not match the last dim of input %s (expected [%lld])", what,
              sere_shape_str(t, a, sizeof a), sere_shape_str(x, b, sizeof b), (long long)d);
    return -1;
  }
  return 0;
}

sere_tensor *sere_layer_norm(sere_tensor *x, sere_tensor *weight, sere_tensor *bias, double eps) {
  if (sere_autocast_widens(x)) { /* f32 under autocast (autocast.h) */
    sere_tensor *wide = sere_to_dtype(x, SERE_F32);
    sere_tensor *out = wide ? sere_layer_norm(wide, weight, bias, eps) : NULL;
    sere_tensor_release(wide);
    return out;
  }
  char a[160];
  if (!sere_dtype_is_float(x->dtype))
    return sere_fail("layer_norm: expects a float tensor, got %s of shape %s; convert it first with :float()",
                     sere_dtype_name(x->dtype), sere_shape_str(x, a, sizeof a));
  if (x->ndim == 0) return sere_fail("layer_norm: expects a tensor with at least 1 dim, got a 0-dim tensor");
  if (!(eps >= 0)) return sere_fail("layer_norm: eps must be >= 0, got %g", eps);
  const int64_t d = x->shape[x->ndim - 1], rows = d ? sere_numel(x) / d : 0;
  if (check_affine("weight", weight, x, d) || check_affine("bias", bias, x, d)) return NULL;
  sere_device_type dev;
  if (sere_common_device("layer_norm", &dev, 3, (sere_tensor *[]){x, weight, bias})) return NULL;

  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32);
  sere_tensor *wf = xf && weight ? sere_as_contiguous_dtype(weight, SERE_F32) : NULL;
  sere_tensor *bf = xf && bias ? sere_as_contiguous_dtype(bias, SERE_F32) : NULL;
  sere_tensor *y = sere_tensor_new_uninit_on(dev, SERE_F32, x->ndim, x->shape);
  sere_tensor *stats = sere_tensor_new_uninit_on(dev, SERE_F32, 2, (int64_t[]){rows, 3});
  float *units = (weight && bias) || dev == SERE_CUDA ? NULL : unit_rows(d);
  sere_tensor *out = NULL;
  if (!xf || (weight && !wf) || (bias && !bf) || !y || !stats) goto done;
  if (dev == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    if (sere_cuda_layer_norm_forward(sere_data(xf), wf ? sere_data(wf) : NULL, bf ? sere_data(bf) : NULL,
                                     sere_data(y), sere_data(stats), rows, d, (float)eps))
      goto done;
#endif
  } else {
    if (!(weight && bias) && !units) goto done;
    const float *xs = sere_data(xf), *ws = wf ? sere_data(wf) : units, *bs = bf ? sere_data(bf) : units + d;
    float *ys = sere_data(y), *st = sere_data(stats);
#pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) row_forward(xs + r * d, ws, bs, ys + r * d, d, (float)eps, st + 3 * r);
  }
  out = sere_as_contiguous_dtype(y, x->dtype);
  if (!out || !sere_needs_grad(3, (sere_tensor *[]){x, weight, bias})) goto done;
  sere_node *n = sere_node_new("layer_norm", layer_norm_backward, 3, (sere_tensor *[]){x, weight, bias});
  if (!n) {
    sere_tensor_release(out);
    out = NULL;
    goto done;
  }
  n->ints[0] = weight != NULL;
  sere_node_save(n, 0, x);
  if (weight) sere_node_save(n, 1, weight);
  sere_node_save(n, 2, stats);
  sere_attach(out, n);
done:
  sere_tensor_release(xf);
  sere_tensor_release(wf);
  sere_tensor_release(bf);
  sere_tensor_release(y);
  sere_tensor_release(stats);
  free(units);
  return out;
}
