/* interpolate.c — bicubic resampling of [B, C, H, W] maps by scale factors,
 * as PyTorch's interpolate(mode='bicubic', align_corners=False,
 * scale_factor=(sy, sx)) with recompute_scale_factor unset; the ViT
 * resamples its positional-embedding grid this way (method.md 2.4).
 *
 * Output size floor(in * s). Output index j reads the source coordinate
 * src = (j + 0.5) / s - 0.5 (the scale factor itself maps coordinates, not
 * in / out), with taps floor(src) - 1 .. floor(src) + 2 clamped to the
 * border, the cubic convolution kernel with A = -0.75, no antialiasing.
 * Like PyTorch, 1 / s is rounded to f32 and src and the tap weights are
 * computed in f32, so the two agree to rounding.
 *
 * The op is separable and linear. Per [H, W] plane a horizontal pass turns
 * each input row into an output-width row (tmp [H, Wo]); a vertical pass
 * then mixes four tmp rows per output row, a loop over whole rows that the
 * compiler vectorises. The backward runs the transposed passes (scatter-adds
 * of the same weights) and saves nothing but the scale factors.
 *
 * Tensors on the GPU run kernels/interpolate.cu instead (same semantics;
 * the backward there is a gather, one thread per input element).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/interpolate.h"
#endif

#define SHAPE_BUF 160
#define PARALLEL_MIN 32768

/* Four clamped taps and their weights for every output index of one axis. */
typedef struct {
  int64_t *idx; /* [out][4] */
  float *w;     /* [out][4] */
} taps;

/* PyTorch's cubic_convolution1 (|t| <= 1) and cubic_convolution2 (1 < |t| < 2). */
static float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
static float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

static void make_taps(int64_t in, int64_t out, double s, taps *t) {
  const float A = -0.75f, scale = (float)(1.0 / s);
  for (int64_t j = 0; j < out; j++) {
    float src = scale * ((float)j + 0.5f) - 0.5f;
    float f = floorf(src), u = src - f;
    float *w = t->w + 4 * j;
    w[0] = cubic2(u + 1, A);
    w[1] = cubic1(u, A);
    w[2] = cubic1(1 - u, A);
    w[3] = cubic2(2 - u, A);
    for (int k = 0; k < 4; k++) {
      int64_t i = (int64_t)f - 1 + k;
      t->idx[4 * j + k] = i < 0 ? 0 : i >= in ? in - 1 : i;
    }
  }
}

typedef struct {
  int64_t planes, H, W, Ho, Wo;
  taps ty, tx;
} bicubic;

static void plane_forward(const bicubic *b, const float *x, float *y, float *tmp) {
  for (int64_t h = 0; h < b->H; h++) {
    const float *xr = x + h * b->W;
    float *tr = tmp + h * b->Wo;
    for (int64_t j = 0; j < b->Wo; j++) {
      const int64_t *i = b->tx.idx + 4 * j;
      const float *w = b->tx.w + 4 * j;
      float v = xr[i[0]] * w[0];
      v += xr[i[1]] * w[1];
      v += xr[i[2]] * w[2];
      v += xr[i[3]] * w[3];
      tr[j] = v;
    }
  }
  for (int64_t r = 0; r < b->Ho; r++) {
    const int64_t *i = b->ty.idx + 4 * r;
    const float *w = b->ty.w + 4 * r;
    const float *t0 = tmp + i[0] * b->Wo, *t1 = tmp + i[1] * b->Wo, *t2 = tmp + i[2] * b->Wo, *t3 = tmp + i[3] * b->Wo;
    float *yr = y + r * b->Wo;
    for (int64_t j = 0; j < b->Wo; j++) yr[j] = t0[j] * w[0] + t1[j] * w[1] + t2[j] * w[2] + t3[j] * w[3];
  }
}

/* The transpose of plane_forward: gx (zeroed) += A^T g. */
static void plane_backward(const bicubic *b, const float *g, float *gx, float *tmp) {
  memset(tmp, 0, (size_t)(b->H * b->Wo) * sizeof(float));
  for (int64_t r = 0; r < b->Ho; r++) {
    const float *gr = g + r * b->Wo;
    for (int k = 0; k < 4; k++) {
      float *tr = tmp + b->ty.idx[4 * r + k] * b->Wo, w = b->ty.w[4 * r + k];
      for (int64_t j = 0; j < b->Wo; j++) tr[j] += w * gr[j];
    }
  }
  for (int64_t h = 0; h < b->H; h++) {
    const float *tr = tmp + h * b->Wo;
    float *xr = gx + h * b->W;
    for (int64_t j = 0; j < b->Wo; j++)
      for (int k = 0; k < 4; k++) xr[b->tx.idx[4 * j + k]] += b->tx.w[4 * j + k] * tr[j];
  }
}

/* Runs every plane of src into dst (forward, or backward into a zeroed
 * dst). Each thread has its own [H, Wo] scratch plane. */
static int run(int64_t B, int64_t C, int64_t H, int64_t W, double sy, double sx, const float *src, float *dst,
               int backward) {
  bicubic b = {B * C, H, W, (int64_t)floor((double)H * sy), (int64_t)floor((double)W * sx), {0}, {0}};
  int nt = omp_get_max_threads();
  int64_t ntaps = 4 * (b.Ho + b.Wo);
  int64_t *idx = malloc((size_t)ntaps * sizeof *idx);
  float *w = malloc((size_t)ntaps * sizeof *w);
  float *scratch = malloc((size_t)(nt * H * b.Wo) * sizeof *scratch);
  if (!idx || !w || !scratch) {
    free(idx);
    free(w);
    free(scratch);
    sere_fail("interpolate_bicubic: out of memory");
    return -1;
  }
  b.ty = (taps){idx, w};
  b.tx = (taps){idx + 4 * b.Ho, w + 4 * b.Ho};
  make_taps(H, b.Ho, sy, &b.ty);
  make_taps(W, b.Wo, sx, &b.tx);
  int64_t in_plane = H * W, out_plane = b.Ho * b.Wo;
#pragma omp parallel for schedule(static) if (b.planes * (in_plane + out_plane) > PARALLEL_MIN)
  for (int64_t q = 0; q < b.planes; q++) {
    float *tmp = scratch + (int64_t)omp_get_thread_num() * H * b.Wo;
    if (backward) plane_backward(&b, src + q * out_plane, dst + q * in_plane, tmp);
    else plane_forward(&b, src + q * in_plane, dst + q * out_plane, tmp);
  }
  free(idx);
  free(w);
  free(scratch);
  return 0;
}

/* scalars: sy, sx. */
static int interpolate_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
#ifdef SERE_WITH_CUDA
  if (sere_device_of(g) == SERE_CUDA) {
    gi[0] = sere_tensor_new_uninit_on(SERE_CUDA, e->dtype, 4, e->shape);
    return gi[0] ? sere_cuda_interpolate_bicubic_backward(g, gi[0], n->scalars[0], n->scalars[1]) : -1;
  }
#endif
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *gx = gf ? sere_tensor_new(SERE_F32, 4, e->shape) : NULL;
  int rc = -1;
  if (gx && !run(e->shape[0], e->shape[1], e->shape[2], e->shape[3], n->scalars[0], n->scalars[1], sere_data(gf),
                 sere_data(gx), 1)) {
    gi[0] = sere_as_contiguous_dtype(gx, e->dtype);
    rc = gi[0] ? 0 : -1;
  }
  sere_tensor_release(gf);
  sere_tensor_release(gx);
  return rc;
}

/* The forward on x's device: y [B, C, Ho, Wo] in x's dtype. */
static sere_tensor *resample(sere_tensor *x, const int64_t shape[4], double sy, double sx) {
#ifdef SERE_WITH_CUDA
  if (sere_device_of(x) == SERE_CUDA) {
    sere_tensor *y = sere_tensor_new_uninit_on(SERE_CUDA, x->dtype, 4, shape);
    if (y && sere_cuda_interpolate_bicubic(x, y, sy, sx)) {
      sere_tensor_release(y);
      return NULL;
    }
    return y;
  }
#endif
  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32);
  sere_tensor *y = xf ? sere_tensor_new_uninit(SERE_F32, 4, shape) : NULL;
  sere_tensor *out = NULL;
  if (y && !run(shape[0], shape[1], x->shape[2], x->shape[3], sy, sx, sere_data(xf), sere_data(y), 0))
    out = sere_as_contiguous_dtype(y, x->dtype);
  sere_tensor_release(xf);
  sere_tensor_release(y);
  return out;
}

sere_tensor *sere_interpolate_bicubic(sere_tensor *x, double sy, double sx) {
  if (sere_autocast_widens(x)) { /* f32 under autocast (autocast.h) */
    sere_tensor *wide = sere_to_dtype(x, SERE_F32);
    sere_tensor *out = wide ? sere_interpolate_bicubic(wide, sy, sx) : NULL;
    sere_tensor_release(wide);
    return out;
  }
  char a[SHAPE_BUF];
  if (x->ndim != 4 || !sere_dtype_is_float(x->dtype))
    return sere_fail("interpolate_bicubic: x must be a float [B, C, H, W] tensor, got %s of shape %s",
                     sere_dtype_name(x->dtype), sere_shape_str(x, a, sizeof a));
  if (!(sy > 0) || !(sx > 0) || isinf(sy) || isinf(sx))
    return sere_fail("interpolate_bicubic: scale factors must be positive and finite, got (%g, %g)", sy, sx);
  double ho = floor((double)x->shape[2] * sy), wo = floor((double)x->shape[3] * sx);
  if (ho < 1 || wo < 1 || ho * wo > 1e12)
    return sere_fail("interpolate_bicubic: scale factors (%g, %g) give a %.0f x %.0f output for x of shape %s", sy,
                     sx, ho, wo, sere_shape_str(x, a, sizeof a));
  int64_t shape[4] = {x->shape[0], x->shape[1], (int64_t)ho, (int64_t)wo};
  sere_tensor *out = resample(x, shape, sy, sx);
  if (!out || !sere_needs_grad(1, &x)) return out;
  sere_node *n = sere_node_new("interpolate_bicubic", interpolate_backward, 1, &x);
  if (!n) {
    sere_tensor_release(out);
    return NULL;
  }
  n->scalars[0] = sy;
  n->scalars[1] = sx;
  sere_attach(out, n);
  return out;
}
