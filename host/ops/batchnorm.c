/* batchnorm.c — batch normalisation over the channels (dim 2) of
 * [B, C, ...]: training mode (batch statistics; running statistics updated
 * in place) and eval mode (running statistics), with an optional hook that
 * sums the per-channel statistics over processes (SyncBatchNorm).
 * Computed in f32 with per-channel sums in double.
 *
 * Layouts. x is processed as contiguous memory [outer, C, inner]: a
 * contiguous [B, C, H, W] tensor is outer = B, inner = H W; a channels-last
 * one (dim 2 has stride 1 and the other dims are contiguous around it, as
 * the SERE heads' [B, N, D] tokens viewed as [B, D, Hp, Wp]) is outer =
 * B H W, inner = 1, and its output and gradient keep that layout. Any
 * other strides (or bf16) go through a contiguous f32 copy.
 *
 * Forward: per channel s1 = sum(x), s2 = sum(x^2) and the count n (summed
 * over ranks by the hook), mean = s1 / n, var = s2 / n - mean^2 (double
 * sums: the cancellation costs ~1e-16 mean^2 / var), then
 * y = (x - mean) * invstd * w + b. running_mean += m (mean - running_mean),
 * running_var += m (var n / (n - 1) - running_var).
 * Backward in training mode, with xh = (x - mean) * invstd:
 *   gx = w invstd (g - sum(g) / n - xh sum(g xh) / n)
 *   gw = sum(g xh), gb = sum(g)
 * where the hook sums [sum(g), sum(g xh)] over ranks for gx only; gw and gb
 * stay per rank (data parallelism sums parameter gradients itself). The
 * hook's buffer holds one block of C values per statistic: the C sums, the
 * C sums of squares, the C counts (backward: the C sums of g, then of
 * g xh). Eval
 * mode: gx = w invstd g. Partial sums are taken per fixed block of `outer`
 * and added in order, so results do not depend on the number of threads.
 *
 * CUDA tensors run the same passes in kernels/batchnorm.cu, the per-channel
 * sums and coefficients staying on the device. The sync hook takes host
 * memory, so with a hook the few per-channel sums ([3 C] forward, [2 C]
 * backward) are copied to the host, all-reduced there and copied back: a
 * stream synchronisation per call that an NCCL all-reduce on the device
 * will replace. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/batchnorm.h"
#include "cuda_device.h"
#endif

#define PARALLEL_MIN 32768
#define MAX_BLOCKS 64
#define SHAPE_BUF 160

/* ---- layouts ------------------------------------------------------------ */
/* Dim 2 has stride 1 and the others, taken in order with it last, are
 * contiguous: permuting the channels to the end gives a contiguous tensor. */
static int is_channels_last(const sere_tensor *x) {
  if (x->ndim < 3 || sere_is_contiguous(x)) return 0;
  int64_t expect = x->shape[1];
  if (x->shape[1] != 1 && x->stride[1] != 1) return 0;
  for (int i = x->ndim - 1; i >= 0; i--) {
    if (i == 1) continue;
    if (x->shape[i] != 1 && x->stride[i] != expect) return 0;
    expect *= x->shape[i];
  }
  return 1;
}

/* t (x, or a tensor of x's shape) as contiguous f32 memory in the layout:
 * [B, C, ...] or, channels last, [B, ..., C]. */
static sere_tensor *to_layout(sere_tensor *t, int channels_last) {
  if (!channels_last) return sere_as_contiguous_dtype(t, SERE_F32);
  int64_t shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS];
  for (int i = 0, j = 0; i < t->ndim; i++) {
    if (i == 1) continue;
    shape[j] = t->shape[i];
    stride[j++] = t->stride[i];
  }
  shape[t->ndim - 1] = t->shape[1];
  stride[t->ndim - 1] = t->stride[1];
  sere_tensor *p = sere_tensor_view_of(t, t->ndim, shape, stride, t->offset);
  sere_tensor *r = p ? sere_as_contiguous_dtype(p, SERE_F32) : NULL;
  sere_tensor_release(p);
  return r;
}

/* A new f32 tensor of x's shape on dev whose memory is in the layout. */
static sere_tensor *new_in_layout(const sere_tensor *x, int channels_last, sere_device_type dev) {
  int64_t shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS], s = 1;
  if (!channels_last) return sere_tensor_new_uninit_on(dev, SERE_F32, x->ndim, x->shape);
  for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
  stride[1] = 1;
  s = x->shape[1];
  for (int i = x->ndim - 1; i >= 0; i--) {
    if (i == 1) continue;
    stride[i] = s;
    s *= x->shape[i];
  }
  sere_tensor *buf = sere_tensor_new_uninit_on(dev, SERE_F32, 1, &s);
  sere_tensor *t = buf ? sere_tensor_view_of(buf, x->ndim, shape, stride, 0) : NULL;
  sere_tensor_release(buf);
  return t;
}

/* The [outer, C, inner] sizes of x in the layout. */
static void layout_sizes(const sere_tensor *x, int channels_last, int64_t *outer, int64_t *inner) {
  int64_t rest = 1;
  for (int i = 2; i < x->ndim; i++) rest *= x->shape[i];
  *outer = x->shape[0] * (channels_last ? rest : 1);
  *inner = channels_last ? 1 : rest;
}

/* ---- kernels over [outer, C, inner] --------------------------------------- */
/* Per-channel s1 = sum(a) and s2 = sum(a^2), or with b: s2 = sum(a (b - m)). */
static int channel_sums(const float *a, const float *b, const float *m, int64_t outer, int64_t nc, int64_t inner,
                        double *s1, double *s2) {
  int64_t nblocks = outer < MAX_BLOCKS ? outer : MAX_BLOCKS, per = nblocks ? (outer + nblocks - 1) / nblocks : 0;
  double *part = calloc((size_t)(2 * nblocks * nc + 1), sizeof *part);
  if (!part) {
    sere_fail("batch_norm: out of memory");
    return -1;
  }
#pragma omp parallel for schedule(static) if (outer * nc * inner >= PARALLEL_MIN)
  for (int64_t k = 0; k < nblocks; k++) {
    double *p1 = part + 2 * k * nc, *p2 = p1 + nc;
    int64_t end = (k + 1) * per < outer ? (k + 1) * per : outer;
    for (int64_t o = k * per; o < end; o++) {
      const float *ao = a + o * nc * inner, *bo = b ? b + o * nc * inner : NULL;
      if (inner == 1 && !b) {
        for (int64_t c = 0; c < nc; c++) {
          p1[c] += ao[c];
          p2[c] += (double)ao[c] * ao[c];
        }
      } else if (inner == 1) {
        for (int64_t c = 0; c < nc; c++) {
          p1[c] += ao[c];
          p2[c] += (double)ao[c] * (bo[c] - m[c]);
        }
      } else {
        for (int64_t c = 0; c < nc; c++) {
          const float *ac = ao + c * inner, *bc = b ? bo + c * inner : ac;
          const float mc = b ? m[c] : 0.0f;
          double t1 = 0, t2 = 0;
#pragma omp simd reduction(+ : t1, t2)
          for (int64_t i = 0; i < inner; i++) {
            t1 += ac[i];
            t2 += (double)ac[i] * (bc[i] - mc);
          }
          p1[c] += t1;
          p2[c] += t2;
        }
      }
    }
  }
  for (int64_t c = 0; c < nc; c++) {
    double t1 = 0, t2 = 0;
    for (int64_t k = 0; k < nblocks; k++) {
      t1 += part[2 * k * nc + c];
      t2 += part[(2 * k + 1) * nc + c];
    }
    s1[c] = t1;
    s2[c] = t2;
  }
  free(part);
  return 0;
}

/* Per channel c: out = k1 (a - m) + k3, or with b: out = k1 a + k2 (b - m) + k3. */
static void channel_affine(float *out, const float *a, const float *b, const float *m, const float *k1,
                           const float *k2, const float *k3, int64_t outer, int64_t nc, int64_t inner) {
  int par = outer * nc * inner >= PARALLEL_MIN;
  if (inner == 1) {
#pragma omp parallel for schedule(static) if (par)
    for (int64_t o = 0; o < outer; o++) {
      const float *ao = a + o * nc, *bo = b ? b + o * nc : NULL;
      float *y = out + o * nc;
      if (b)
        for (int64_t c = 0; c < nc; c++) y[c] = k1[c] * ao[c] + k2[c] * (bo[c] - m[c]) + k3[c];
      else
        for (int64_t c = 0; c < nc; c++) y[c] = k1[c] * (ao[c] - m[c]) + k3[c];
    }
    return;
  }
#pragma omp parallel for schedule(static) if (par)
  for (int64_t t = 0; t < outer * nc; t++) {
    const int64_t c = t % nc;
    const float *ac = a + t * inner, *bc = b ? b + t * inner : NULL;
    const float f1 = k1[c], f2 = b ? k2[c] : 0.0f, f3 = k3[c], mc = m[c];
    float *y = out + t * inner;
    if (b)
      for (int64_t i = 0; i < inner; i++) y[i] = f1 * ac[i] + f2 * (bc[i] - mc) + f3;
    else
      for (int64_t i = 0; i < inner; i++) y[i] = f1 * (ac[i] - mc) + f3;
  }
}

/* Training needs more than one value per channel (count: over all ranks). */
static int check_count(const sere_tensor *x, double count, const sere_bn_sync *sync) {
  char a[SHAPE_BUF];
  if (x->shape[1] == 0 || count > 1) return 0;
  sere_fail("batch_norm: expected more than 1 value per channel when training, got input of shape %s "
            "(%.0f values per channel%s)", sere_shape_str(x, a, sizeof a), count, sync ? " over all ranks" : "");
  return -1;
}

static const char *const FORWARD_SYNC_FAILED = "batch_norm: the sync all-reduce of the batch statistics failed";
static const char *const BACKWARD_SYNC_FAILED = "batch_norm backward: the sync all-reduce of the gradient sums failed";

/* ---- CUDA ----------------------------------------------------------------- */
#ifdef SERE_WITH_CUDA
/* The hook's all-reduce of per-channel sums that live on the device: the
 * n_dev doubles at dev go to host[0..n_dev), the hook sums host[0..n)
 * over ranks (the caller fills the rest, e.g. the counts), and
 * host[0..n_dev) comes back to dev. */
static int allreduce_through_host(const sere_bn_sync *sync, double *dev, double *host, int64_t n_dev, int64_t n,
                                  const char *failed) {
  size_t nbytes = sizeof *host * (size_t)n_dev;
  if (sere_cuda_download(host, dev, nbytes)) return -1;
  if (sync->allreduce_sum(host, n, sync->ctx)) {
    sere_fail("%s", failed);
    return -1;
  }
  return sere_cuda_upload(dev, host, nbytes);
}

/* Forward of CUDA tensors: fills stats ([2, C]: mean; invstd) and y from
 * xf, and in training mode updates the running statistics; *count: the
 * values per channel over all ranks. */
static int batch_norm_forward_cuda(const sere_tensor *x, sere_tensor *xf, sere_tensor *wf, sere_tensor *bf,
                                   sere_tensor *rm, sere_tensor *rv, int training, double momentum, double eps,
                                   const sere_bn_sync *sync, int64_t outer, int64_t inner, sere_tensor *stats,
                                   sere_tensor *y, double *count) {
  const int64_t nc = x->shape[1];
  const size_t sbytes = sizeof(double) * (size_t)(2 * nc + 1), kbytes = sizeof(float) * (size_t)(2 * nc + 1);
  double *s = training ? sere_cuda_alloc(sbytes, 0) : NULL, *host = NULL;
  float *k = sere_cuda_alloc(kbytes, 0);
  int rc = -1;
  if ((training && !s) || !k) goto done;
  *count = (double)(outer * inner);
  if (training) {
    if (sere_cuda_bn_channel_sums(sere_data(xf), NULL, NULL, outer, nc, inner, s, s + nc)) goto done;
    if (sync && nc) {
      if (!(host = malloc(sizeof *host * (size_t)(3 * nc)))) {
        sere_fail("batch_norm: out of memory");
        goto done;
      }
      for (int64_t c = 0; c < nc; c++) host[2 * nc + c] = *count;
      if (allreduce_through_host(sync, s, host, 2 * nc, 3 * nc, FORWARD_SYNC_FAILED)) goto done;
      *count = host[2 * nc];
    }
    if (check_count(x, *count, sync)) goto done;
  }
  float *mean = sere_data(stats), *invstd = mean + nc;
  /* s is NULL in eval mode: the coefficients come from the running statistics */
  if (sere_cuda_bn_forward_coefficients(s, *count, rm, rv, wf ? sere_data(wf) : NULL, bf ? sere_data(bf) : NULL, nc,
                                        momentum, eps, mean, invstd, k, k + nc) ||
      sere_cuda_bn_channel_affine(sere_data(y), sere_data(xf), NULL, mean, k, NULL, k + nc, outer, nc, inner))
    goto done;
  if (training && rm) {
    sere_bump_version(rm);
    sere_bump_version(rv);
  }
  rc = 0;
done:
  if (s) sere_cuda_free(s, sbytes);
  if (k) sere_cuda_free(k, kbytes);
  free(host);
  return rc;
}

/* Backward of CUDA tensors (see batch_norm_backward). */
static int batch_norm_backward_cuda(sere_node *n, sere_tensor *g, sere_tensor *x, sere_tensor *w, sere_tensor *stats,
                                    sere_tensor **gi) {
  const sere_edge *ex = &n->edges[0];
  const int training = (int)n->ints[0], cl = (int)n->ints[2];
  const sere_bn_sync *sync = n->extra;
  const int need_x = sere_edge_needed(n, 0), need_w = sere_edge_needed(n, 1), need_b = sere_edge_needed(n, 2);
  const int64_t nc = x->shape[1];
  int64_t outer, inner;
  sere_device_type dev;
  if (sere_common_device("batch_norm backward", &dev, 2, (sere_tensor *[]){x, g})) return -1;
  layout_sizes(x, cl, &outer, &inner);
  const size_t sbytes = sizeof(double) * (size_t)(2 * nc + 1), kbytes = sizeof(float) * (size_t)(3 * nc + 1);
  sere_tensor *xf = to_layout(x, cl), *gf = to_layout(g, cl), *wf = w ? sere_as_contiguous_dtype(w, SERE_F32) : NULL;
  sere_tensor *gx = need_x ? new_in_layout(x, cl, SERE_CUDA) : NULL;
  sere_tensor *gw = need_w ? sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, 1, &nc) : NULL;
  sere_tensor *gb = need_b ? sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, 1, &nc) : NULL;
  double *s = sere_cuda_alloc(sbytes, 0), *host = NULL;
  float *k = sere_cuda_alloc(kbytes, 0);
  int rc = -1;
  if (!xf || !gf || (w && !wf) || (need_x && !gx) || (need_w && !gw) || (need_b && !gb) || !s || !k) goto done;
  const float *mean = sere_data(stats), *invstd = mean + nc, *ws = wf ? sere_data(wf) : NULL;
  if ((need_w || need_b || (need_x && training)) &&
      (sere_cuda_bn_channel_sums(sere_data(gf), sere_data(xf), mean, outer, nc, inner, s, s + nc) ||
       sere_cuda_bn_gradient_sums(s, invstd, nc, gw ? sere_data(gw) : NULL, gb ? sere_data(gb) : NULL)))
    goto done;
  if (need_x) {
    if (training && sync && nc) {
      /* s becomes the sums over all ranks (gw and gb keep this rank's) */
      if (!(host = malloc(sizeof *host * (size_t)(2 * nc)))) {
        sere_fail("batch_norm backward: out of memory");
        goto done;
      }
      if (allreduce_through_host(sync, s, host, 2 * nc, 2 * nc, BACKWARD_SYNC_FAILED)) goto done;
    }
    if (sere_cuda_bn_input_coefficients(training ? s : NULL, ws, invstd, n->scalars[0], nc, k, k + nc, k + 2 * nc) ||
        sere_cuda_bn_channel_affine(sere_data(gx), sere_data(gf), training ? sere_data(xf) : NULL,
                                    training ? mean : NULL, k, k + nc, training ? k + 2 * nc : NULL, outer, nc,
                                    inner))
      goto done;
    /* an f32 gradient keeps the layout (channels last stays so) */
    gi[0] = ex->dtype == SERE_F32 ? sere_tensor_retain(gx) : sere_as_contiguous_dtype(gx, ex->dtype);
    if (!gi[0]) goto done;
  }
  if (need_w && !(gi[1] = sere_as_contiguous_dtype(gw, n->edges[1].dtype))) goto done;
  if (need_b && !(gi[2] = sere_as_contiguous_dtype(gb, n->edges[2].dtype))) goto done;
  rc = 0;
done:
  sere_tensor_release(xf);
  sere_tensor_release(gf);
  sere_tensor_release(wf);
  sere_tensor_release(gx);
  sere_tensor_release(gw);
  sere_tensor_release(gb);
  if (s) sere_cuda_free(s, sbytes);
  if (k) sere_cuda_free(k, kbytes);
  free(host);
  return rc;
}
#endif

/* ---- autograd ------------------------------------------------------------- */
/* [nc] f32 tensor from doubles, in dtype d. */
static sere_tensor *channel_tensor(const double *v, int64_t nc, sere_dtype d) {
  sere_tensor *t = sere_tensor_new_uninit(SERE_F32, 1, &nc);
  if (!t) return NULL;
  float *o = sere_data(t);
  for (int64_t c = 0; c < nc; c++) o[c] = (float)v[c];
  sere_tensor *r = sere_as_contiguous_dtype(t, d);
  sere_tensor_release(t);
  return r;
}

static double weight_at(const float *w, int64_t c) { return w ? w[c] : 1.0; }

/* Inputs: x, weight, bias. saved: x, weight (when given), [2, C] f32 stats
 * (mean; invstd). ints: training, has weight, channels last. scalars[0]:
 * the count per channel over all ranks. extra: the sync hook or NULL. */
static int batch_norm_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *ex = &n->edges[0];
  const int training = (int)n->ints[0], cl = (int)n->ints[2];
  const sere_bn_sync *sync = n->extra;
  sere_tensor *x = sere_node_saved(n, 0), *w = n->ints[1] ? sere_node_saved(n, 1) : NULL;
  sere_tensor *stats = sere_node_saved(n, 2);
  if (!x || !stats || (n->ints[1] && !w)) return -1;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(x) == SERE_CUDA) return batch_norm_backward_cuda(n, g, x, w, stats, gi);
#endif
  const int need_x = sere_edge_needed(n, 0), need_w = sere_edge_needed(n, 1), need_b = sere_edge_needed(n, 2);
  const int64_t nc = x->shape[1];
  int64_t outer, inner;
  layout_sizes(x, cl, &outer, &inner);
  sere_tensor *xf = to_layout(x, cl), *gf = to_layout(g, cl), *wf = w ? sere_as_contiguous_dtype(w, SERE_F32) : NULL;
  sere_tensor *gx = need_x ? new_in_layout(x, cl, SERE_CPU) : NULL;
  double *s = calloc((size_t)(4 * nc + 1), sizeof *s); /* s1, s2, then the all-reduced pair */
  float *k = calloc((size_t)(4 * nc + 1), sizeof *k);  /* k1, k2, k3, zeros */
  int rc = -1;
  if (!s || !k) sere_fail("batch_norm backward: out of memory");
  if (!xf || !gf || (w && !wf) || (need_x && !gx) || !s || !k) goto done;
  const float *mean = sere_data(stats), *invstd = mean + nc, *ws = wf ? sere_data(wf) : NULL;
  double *s1 = s, *s2 = s + nc, *r = s + 2 * nc;
  if ((need_w || need_b || (need_x && training)) &&
      channel_sums(sere_data(gf), sere_data(xf), mean, outer, nc, inner, s1, s2))
    goto done;
  for (int64_t c = 0; c < nc; c++) s2[c] *= invstd[c]; /* sum(g * xh) */
  if (need_x) {
    float *k1 = k, *k2 = k + nc, *k3 = k + 2 * nc, *zeros = k + 3 * nc;
    if (training) {
      memcpy(r, s, sizeof *s * (size_t)(2 * nc));
      if (sync && sync->allreduce_sum(r, 2 * nc, sync->ctx)) {
        sere_fail("%s", BACKWARD_SYNC_FAILED);
        goto done;
      }
      const double cnt = n->scalars[0];
      for (int64_t c = 0; c < nc; c++) {
        double a = weight_at(ws, c) * invstd[c];
        k1[c] = (float)a;
        k2[c] = (float)(-a * invstd[c] * r[nc + c] / cnt);
        k3[c] = (float)(-a * r[c] / cnt);
      }
      channel_affine(sere_data(gx), sere_data(gf), sere_data(xf), mean, k1, k2, k3, outer, nc, inner);
    } else {
      for (int64_t c = 0; c < nc; c++) k1[c] = (float)(weight_at(ws, c) * invstd[c]);
      channel_affine(sere_data(gx), sere_data(gf), NULL, zeros, k1, NULL, zeros, outer, nc, inner);
    }
    /* an f32 gradient keeps the layout (channels last stays so) */
    gi[0] = ex->dtype == SERE_F32 ? sere_tensor_retain(gx) : sere_as_contiguous_dtype(gx, ex->dtype);
    if (!gi[0]) goto done;
  }
  if (need_w && !(gi[1] = channel_tensor(s2, nc, n->edges[1].dtype))) goto done;
  if (need_b && !(gi[2] = channel_tensor(s1, nc, n->edges[2].dtype))) goto done;
  rc = 0;
done:
  sere_tensor_release(xf);
  sere_tensor_release(gf);
  sere_tensor_release(wf);
  sere_tensor_release(gx);
  free(s);
  free(k);
  return rc;
}

/* ---- forward -------------------------------------------------------------- */
static int check_channel_tensor(const char *what, const sere_tensor *t, const sere_tensor *x) {
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (!t) return 0;
  if (!sere_dtype_is_float(t->dtype)) {
    sere_fail("batch_norm: %s must be a float tensor, got %s", what, sere_dtype_name(t->dtype));
    return -1;
  }
  if (t->ndim != 1 || t->shape[0] != x->shape[1]) {
    sere_fail("batch_norm: %s of shape %s does not match the %lld channels (dim 2) of input %s", what,
              sere_shape_str(t, a, sizeof a), (long long)x->shape[1], sere_shape_str(x, b, sizeof b));
    return -1;
  }
  return 0;
}

static int check_args(const sere_tensor *x, const sere_tensor *w, const sere_tensor *b, const sere_tensor *rm,
                      const sere_tensor *rv, int training, double eps) {
  char a[SHAPE_BUF];
  if (!sere_dtype_is_float(x->dtype)) {
    sere_fail("batch_norm: expects a float tensor, got %s of shape %s; convert it first with :float()",
              sere_dtype_name(x->dtype), sere_shape_str(x, a, sizeof a));
    return -1;
  }
  if (x->ndim < 2) {
    sere_fail("batch_norm: expects an input [B, C, ...] with at least 2 dims, got shape %s",
              sere_shape_str(x, a, sizeof a));
    return -1;
  }
  if (!(eps >= 0)) {
    sere_fail("batch_norm: eps must be >= 0, got %g", eps);
    return -1;
  }
  if (!rm != !rv) {
    sere_fail("batch_norm: give both running_mean and running_var, or neither");
    return -1;
  }
  if (!training && !rm) {
    sere_fail("batch_norm: eval mode (training = false) needs running_mean and running_var");
    return -1;
  }
  if (check_channel_tensor("weight", w, x) || check_channel_tensor("bias", b, x) ||
      check_channel_tensor("running_mean", rm, x) || check_channel_tensor("running_var", rv, x))
    return -1;
  if (training && rm && (sere_check_inplace(rm, "batch_norm (running_mean)") ||
                         sere_check_inplace(rv, "batch_norm (running_var)")))
    return -1;
  return 0;
}

/* Batch statistics: mean and biased var per channel (as doubles in s,
 * overwritten: s[0..C) mean, s[C..2C) var) and the count per channel. */
static int batch_stats(const sere_tensor *x, const float *xs, int64_t outer, int64_t inner, const sere_bn_sync *sync,
                       double *s, double *count) {
  const int64_t nc = x->shape[1];
  double *s1 = s, *s2 = s + nc, *cnt = s + 2 * nc;
  if (channel_sums(xs, NULL, NULL, outer, nc, inner, s1, s2)) return -1;
  for (int64_t c = 0; c < nc; c++) cnt[c] = (double)(outer * inner);
  if (sync && sync->allreduce_sum(s, 3 * nc, sync->ctx)) {
    sere_fail("%s", FORWARD_SYNC_FAILED);
    return -1;
  }
  *count = nc ? cnt[0] : 0;
  if (check_count(x, *count, sync)) return -1;
  for (int64_t c = 0; c < nc; c++) {
    double mean = s1[c] / cnt[c], var = s2[c] / cnt[c] - mean * mean;
    s1[c] = mean;
    s2[c] = var > 0 ? var : 0;
  }
  return 0;
}

/* t[c] += m (v[c] - t[c]) for a running statistic of any float dtype and stride. */
static void update_running(sere_tensor *t, const double *v, double m, double scale) {
  void *base = sere_data(t);
  for (int64_t c = 0; c < t->shape[0]; c++) {
    int64_t i = c * t->stride[0];
    double old = sere_load_linear(base, t->dtype, i);
    sere_store_linear(base, t->dtype, i, old + m * (v[c] * scale - old));
  }
  sere_bump_version(t);
}

static double load_at(const sere_tensor *t, int64_t c) {
  return sere_load_linear(sere_data(t), t->dtype, c * t->stride[0]);
}

sere_tensor *sere_batch_norm(sere_tensor *x, sere_tensor *weight, sere_tensor *bias, sere_tensor *running_mean,
                             sere_tensor *running_var, int training, double momentum, double eps,
                             const sere_bn_sync *sync) {
  if (sere_autocast_widens(x)) { /* f32 under autocast (autocast.h) */
    sere_tensor *wide = sere_to_dtype(x, SERE_F32);
    sere_tensor *out = wide ? sere_batch_norm(wide, weight, bias, running_mean, running_var, training, momentum, eps, sync) : NULL;
    sere_tensor_release(wide);
    return out;
  }
  if (check_args(x, weight, bias, running_mean, running_var, training, eps)) return NULL;
  sere_device_type dev;
  if (sere_common_device("batch_norm", &dev, 5, (sere_tensor *[]){x, weight, bias, running_mean, running_var}))
    return NULL;
  const int64_t nc = x->shape[1];
  const int cl = is_channels_last(x);
  int64_t outer, inner;
  layout_sizes(x, cl, &outer, &inner);
  sere_tensor *xf = to_layout(x, cl), *wf = weight ? sere_as_contiguous_dtype(weight, SERE_F32) : NULL;
  sere_tensor *bf = bias ? sere_as_contiguous_dtype(bias, SERE_F32) : NULL;
  sere_tensor *stats = sere_tensor_new_uninit_on(dev, SERE_F32, 2, (int64_t[]){2, nc});
  sere_tensor *y = new_in_layout(x, cl, dev), *out = NULL;
  double *s = calloc((size_t)(3 * nc + 1), sizeof *s), count = 0;
  float *k = calloc((size_t)(2 * nc + 1), sizeof *k);
  if (!s || !k) sere_fail("batch_norm: out of memory");
  if (!xf || (weight && !wf) || (bias && !bf) || !stats || !y || !s || !k) goto done;
  if (dev == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    if (batch_norm_forward_cuda(x, xf, wf, bf, running_mean, running_var, training, momentum, eps, sync, outer, inner,
                                stats, y, &count))
      goto done;
#endif
  } else {
    if (training) {
      if (batch_stats(x, sere_data(xf), outer, inner, sync, s, &count)) goto done;
    } else {
      for (int64_t c = 0; c < nc; c++) {
        s[c] = load_at(running_mean, c);
        s[nc + c] = load_at(running_var, c);
      }
    }
    float *mean = sere_data(stats), *invstd = mean + nc, *k1 = k, *k3 = k + nc;
    const float *ws = wf ? sere_data(wf) : NULL, *bs = bf ? sere_data(bf) : NULL;
    for (int64_t c = 0; c < nc; c++) {
      double is = 1.0 / sqrt(s[nc + c] + eps);
      mean[c] = (float)s[c];
      invstd[c] = (float)is;
      k1[c] = (float)(weight_at(ws, c) * is);
      k3[c] = bs ? bs[c] : 0.0f;
    }
    channel_affine(sere_data(y), sere_data(xf), NULL, mean, k1, NULL, k3, outer, nc, inner);
  }
  out = x->dtype == SERE_F32 ? sere_tensor_retain(y) : sere_as_contiguous_dtype(y, x->dtype);
  if (!out) goto done;
  if (sere_needs_grad(3, (sere_tensor *[]){x, weight, bias})) {
    sere_node *n = sere_node_new("batch_norm", batch_norm_backward, 3, (sere_tensor *[]){x, weight, bias});
    sere_bn_sync *copy = n && training && sync ? malloc(sizeof *copy) : NULL;
    if (!n || (training && sync && !copy)) {
      if (n) sere_node_release(n);
      sere_tensor_release(out);
      out = sere_fail("batch_norm: out of memory recording the autograd node");
      goto done;
    }
    if (copy) *copy = *sync;
    n->extra = copy;
    n->ints[0] = training != 0;
    n->ints[1] = weight != NULL;
    n->ints[2] = cl;
    n->scalars[0] = count;
    sere_node_save(n, 0, x);
    if (weight) sere_node_save(n, 1, weight);
    sere_node_save(n, 2, stats);
    sere_attach(out, n);
  }
  if (training && running_mean && dev == SERE_CPU) {
    update_running(running_mean, s, momentum, 1.0);
    update_running(running_var, s + nc, momentum, count / (count - 1));
  }
done:
  sere_tensor_release(xf);
  sere_tensor_release(wf);
  sere_tensor_release(bf);
  sere_tensor_release(stats);
  sere_tensor_release(y);
  free(s);
  free(k);
  return out;
}
