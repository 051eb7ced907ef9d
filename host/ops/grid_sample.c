/* grid_sample.c — bilinear sampling of [B, C, H, W] maps at the points of a
 * [B, Ho, Wo, 2] grid of (x, y) in [-1, 1], as PyTorch's grid_sample(mode=
 * 'bilinear', padding_mode='zeros', align_corners=False) (method.md 6.2);
 * SERE aligns its relations with it (method.md 6.3).
 *
 * A point maps to px = (x + 1) * W / 2 - 0.5 (written as PyTorch's CPU
 * kernel computes it, in f32) and its value is
 *   (1-ax)(1-ay) F[y0, x0] + ax(1-ay) F[y0, x0+1] + (1-ax)ay F[y0+1, x0] + ax ay F[y0+1, x0+1]
 * where a corner outside the map contributes 0 to the value and to both
 * gradients; the -2 fill of a non-overlapping pair samples exactly 0.
 *
 * Each plane is copied into a buffer with a zero border two pixels wide and
 * every corner index is clamped into it, so all four corners are plain
 * loads (a corner outside the map reads a true zero, as PyTorch's masked
 * loads do) and the inner loops have no branches. The corners and weights
 * of an image's points are computed once and reused for all its channels,
 * so a map with many channels (the N rows of a relation viewed as
 * channels) costs four loads and four multiply-adds per output. Forward
 * tasks are (image, chunk of channels); the input gradient is a scatter-add
 * per channel into the bordered buffer, so backward tasks are the same,
 * except that the grid gradient sums over all channels of an image, and
 * then a task is one whole image. Tasks are cut from the shape alone, so
 * results do not depend on the thread count.
 *
 * Tensors on the GPU run kernels/grid_sample.cu instead (same semantics).
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/grid_sample.h"
#endif

#define SHAPE_BUF 160
#define PARALLEL_MIN 32768
#define CHAN_CHUNK 64 /* channels per task */
#define BORDER 2      /* zero border: a clamped corner pair always lands inside it */

typedef struct {
  int64_t B, C, H, W, P; /* P = Ho * Wo grid points per image */
  float *in; /* read only */
  const float *grid, *gout;
  float *out, *gin, *ggrid;
} gs_args;

/* One thread's working memory. */
typedef struct {
  float *pad, *gpad; /* [H + 4, W + 4] bordered copies of a plane and of its gradient */
  int64_t *off;      /* [P] nw corner of each point in the bordered plane */
  float *w;          /* [4][P] weights of the nw, ne, sw, se corners */
  float *ax, *ay;    /* [P] distances from the west / north corners */
  float *gx, *gy;    /* [P] grid gradient sums */
} scratch;

static void find_corners(const gs_args *a, const float *grid, scratch *s) {
  int64_t P = a->P, pw = a->W + 2 * BORDER;
  float hx = 0.5f * (float)a->W, hy = 0.5f * (float)a->H;
  for (int64_t q = 0; q < P; q++) {
    float px = (grid[2 * q] + 1) * hx - 0.5f, py = (grid[2 * q + 1] + 1) * hy - 0.5f;
    float fx = floorf(px), fy = floorf(py);
    float ax = px - fx, ay = py - fy;
    s->ax[q] = ax;
    s->ay[q] = ay;
    s->w[q] = (1 - ay) * (1 - ax);
    s->w[P + q] = (1 - ay) * ax;
    s->w[2 * P + q] = ay * (1 - ax);
    s->w[3 * P + q] = ay * ax;
    /* Clamped into [-2, size] before the integer conversion: far-away (the
     * -2 fill), infinite or NaN coordinates then read only the border. */
    int64_t x0 = (int64_t)(fx > -2.f ? (fx < (float)a->W ? fx : (float)a->W) : -2.f);
    int64_t y0 = (int64_t)(fy > -2.f ? (fy < (float)a->H ? fy : (float)a->H) : -2.f);
    s->off[q] = (y0 + BORDER) * pw + x0 + BORDER;
  }
}

/* Copies plane F into the interior of the bordered buffer (or, when
 * `back`, the interior of the buffer into F). */
static void pad_copy(const gs_args *a, float *F, float *pad, int back) {
  int64_t pw = a->W + 2 * BORDER;
  for (int64_t y = 0; y < a->H; y++) {
    float *row = pad + (y + BORDER) * pw + BORDER;
    if (back) memcpy(F + y * a->W, row, (size_t)a->W * sizeof(float));
    else memcpy(row, F + y * a->W, (size_t)a->W * sizeof(float));
  }
}

/* Forward for channels [c0, c1) of image b. */
static void forward_task(const gs_args *a, int64_t b, int64_t c0, int64_t c1, scratch *s) {
  int64_t P = a->P, pw = a->W + 2 * BORDER;
  const float *w0 = s->w, *w1 = s->w + P, *w2 = s->w + 2 * P, *w3 = s->w + 3 * P;
  find_corners(a, a->grid + b * P * 2, s);
  for (int64_t ch = c0; ch < c1; ch++) {
    pad_copy(a, a->in + (b * a->C + ch) * a->H * a->W, s->pad, 0);
    float *o = a->out + (b * a->C + ch) * P;
    for (int64_t q = 0; q < P; q++) {
      const float *c = s->pad + s->off[q];
      o[q] = c[0] * w0[q] + c[1] * w1[q] + c[pw] * w2[q] + c[pw + 1] * w3[q];
    }
  }
}

/* Backward for channels [c0, c1) of image b: writes those planes of gin
 * when given; when ggrid is given [c0, c1) is every channel and the grid
 * gradient of the image is written. */
static void backward_task(const gs_args *a, int64_t b, int64_t c0, int64_t c1, scratch *s) {
  int64_t P = a->P, pw = a->W + 2 * BORDER, padn = (a->H + 2 * BORDER) * pw;
  const float *w0 = s->w, *w1 = s->w + P, *w2 = s->w + 2 * P, *w3 = s->w + 3 * P;
  find_corners(a, a->grid + b * P * 2, s);
  if (a->ggrid) {
    memset(s->gx, 0, (size_t)P * sizeof(float));
    memset(s->gy, 0, (size_t)P * sizeof(float));
  }
  for (int64_t ch = c0; ch < c1; ch++) {
    int64_t plane = (b * a->C + ch) * a->H * a->W;
    const float *g = a->gout + (b * a->C + ch) * P;
    if (a->gin) {
      memset(s->gpad, 0, (size_t)padn * sizeof(float));
      for (int64_t q = 0; q < P; q++) {
        float *c = s->gpad + s->off[q];
        c[0] += w0[q] * g[q];
        c[1] += w1[q] * g[q];
        c[pw] += w2[q] * g[q];
        c[pw + 1] += w3[q] * g[q];
      }
      pad_copy(a, a->gin + plane, s->gpad, 1);
    }
    if (a->ggrid) {
      pad_copy(a, a->in + plane, s->pad, 0);
      for (int64_t q = 0; q < P; q++) {
        const float *c = s->pad + s->off[q];
        float nw = c[0], ne = c[1], sw = c[pw], se = c[pw + 1], ax = s->ax[q], ay = s->ay[q];
        s->gx[q] += ((ne - nw) * (1 - ay) + (se - sw) * ay) * g[q];
        s->gy[q] += ((sw - nw) * (1 - ax) + (se - ne) * ax) * g[q];
      }
    }
  }
  if (a->ggrid) {
    float *gg = a->ggrid + b * P * 2;
    for (int64_t q = 0; q < P; q++) {
      gg[2 * q] = s->gx[q] * (0.5f * (float)a->W);
      gg[2 * q + 1] = s->gy[q] * (0.5f * (float)a->H);
    }
  }
}

/* Runs forward or backward over tasks (image, chunk of `chunk` channels),
 * each thread with its own scratch (borders zeroed once by calloc). */
static int run(const gs_args *a, int64_t chunk, int backward) {
  int64_t nchunks = (a->C + chunk - 1) / chunk, ntasks = a->B * nchunks;
  int64_t padn = (a->H + 2 * BORDER) * (a->W + 2 * BORDER), nfloat = 2 * padn + 8 * a->P;
  int nt = omp_get_max_threads();
  float *fbuf = calloc((size_t)(nt * nfloat), sizeof(float));
  int64_t *obuf = malloc((size_t)(nt * a->P + 1) * sizeof(int64_t));
  if (!fbuf || !obuf) {
    free(fbuf);
    free(obuf);
    sere_fail("grid_sample: out of memory");
    return -1;
  }
#pragma omp parallel for schedule(static) if (a->B * a->C * a->P > PARALLEL_MIN && ntasks > 1)
  for (int64_t t = 0; t < ntasks; t++) {
    int id = omp_get_thread_num();
    float *f = fbuf + id * nfloat;
    scratch s = {f, f + padn, obuf + id * a->P, f + 2 * padn, f + 2 * padn + 4 * a->P, f + 2 * padn + 5 * a->P,
                 f + 2 * padn + 6 * a->P, f + 2 * padn + 7 * a->P};
    int64_t b = t / nchunks, c0 = t % nchunks * chunk, c1 = c0 + chunk < a->C ? c0 + chunk : a->C;
    if (backward) backward_task(a, b, c0, c1, &s);
    else forward_task(a, b, c0, c1, &s);
  }
  free(fbuf);
  free(obuf);
  return 0;
}

/* saved: 0 input (when the grid needs grad), 1 grid. */
static int grid_sample_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *ei = &n->edges[0], *eg = &n->edges[1];
  int need_in = sere_edge_needed(n, 0), need_grid = sere_edge_needed(n, 1);
  sere_tensor *grid = sere_node_saved(n, 1), *input = need_grid ? sere_node_saved(n, 0) : NULL;
  if (!grid || (need_grid && !input)) return -1;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(grid) == SERE_CUDA) {
    if (need_in && !(gi[0] = sere_tensor_new_uninit_on(SERE_CUDA, ei->dtype, 4, ei->shape))) return -1;
    if (need_grid && !(gi[1] = sere_tensor_new_uninit_on(SERE_CUDA, eg->dtype, 4, eg->shape))) return -1;
    return sere_cuda_grid_sample_backward(g, grid, input, gi[0], gi[1]);
  }
#endif
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32), *gridf = sere_as_contiguous_dtype(grid, SERE_F32);
  sere_tensor *inf = input ? sere_as_contiguous_dtype(input, SERE_F32) : NULL;
  sere_tensor *gin = need_in ? sere_tensor_new_uninit(SERE_F32, 4, ei->shape) : NULL;
  /* zeroed: an image without channels has a zero grid gradient and no task */
  sere_tensor *ggrid = need_grid ? sere_tensor_new(SERE_F32, 4, eg->shape) : NULL;
  int rc = -1;
  if (gf && gridf && (inf || !need_grid) && (gin || !need_in) && (ggrid || !need_grid)) {
    gs_args a = {ei->shape[0], ei->shape[1], ei->shape[2], ei->shape[3], eg->shape[1] * eg->shape[2],
                 inf ? sere_data(inf) : NULL, sere_data(gridf), sere_data(gf),
                 NULL, gin ? sere_data(gin) : NULL, ggrid ? sere_data(ggrid) : NULL};
    rc = run(&a, need_grid && a.C > 0 ? a.C : CHAN_CHUNK, 1);
    if (!rc && need_in) rc |= (gi[0] = sere_as_contiguous_dtype(gin, ei->dtype)) ? 0 : -1;
    if (!rc && need_grid) rc |= (gi[1] = sere_as_contiguous_dtype(ggrid, eg->dtype)) ? 0 : -1;
  }
  sere_tensor_release(gf);
  sere_tensor_release(gridf);
  sere_tensor_release(inf);
  sere_tensor_release(gin);
  sere_tensor_release(ggrid);
  return rc;
}

/* The forward on `dev`: [B, C, Ho, Wo] in the input's dtype. */
static sere_tensor *sample(sere_tensor *input, sere_tensor *grid, sere_device_type dev) {
  int64_t shape[4] = {input->shape[0], input->shape[1], grid->shape[1], grid->shape[2]};
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) {
    sere_tensor *y = sere_tensor_new_uninit_on(SERE_CUDA, input->dtype, 4, shape);
    if (y && sere_cuda_grid_sample(input, grid, y)) {
      sere_tensor_release(y);
      return NULL;
    }
    return y;
  }
#endif
  sere_tensor *inf = sere_as_contiguous_dtype(input, SERE_F32);
  sere_tensor *gridf = inf ? sere_as_contiguous_dtype(grid, SERE_F32) : NULL;
  sere_tensor *y = gridf ? sere_tensor_new_uninit(SERE_F32, 4, shape) : NULL;
  sere_tensor *out = NULL;
  if (y) {
    gs_args args = {shape[0], shape[1], input->shape[2], input->shape[3], shape[2] * shape[3],
                    sere_data(inf), sere_data(gridf), NULL, sere_data(y), NULL, NULL};
    if (!run(&args, CHAN_CHUNK, 0)) out = sere_as_contiguous_dtype(y, input->dtype);
  }
  sere_tensor_release(inf);
  sere_tensor_release(gridf);
  sere_tensor_release(y);
  return out;
}

sere_tensor *sere_grid_sample(sere_tensor *input, sere_tensor *grid) {
  if (sere_autocast_widens(input)) { /* f32 under autocast (autocast.h) */
    sere_tensor *wide = sere_to_dtype(input, SERE_F32);
    sere_tensor *out = wide ? sere_grid_sample(wide, grid) : NULL;
    sere_tensor_release(wide);
    return out;
  }
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (input->ndim != 4 || !sere_dtype_is_float(input->dtype))
    return sere_fail("grid_sample: input must be a float [B, C, H, W] tensor, got %s of shape %s",
                     sere_dtype_name(input->dtype), sere_shape_str(input, a, sizeof a));
  if (grid->ndim != 4 || grid->shape[3] != 2 || grid->shape[0] != input->shape[0] ||
      !sere_dtype_is_float(grid->dtype))
    return sere_fail("grid_sample: grid must be a float [%lld, Ho, Wo, 2] tensor for input of shape %s, got %s of "
                     "shape %s", (long long)input->shape[0], sere_shape_str(input, a, sizeof a),
                     sere_dtype_name(grid->dtype), sere_shape_str(grid, b, sizeof b));
  if (input->shape[2] == 0 || input->shape[3] == 0)
    return sere_fail("grid_sample: input of shape %s has an empty map", sere_shape_str(input, a, sizeof a));
  sere_tensor *in2[2] = {input, grid};
  sere_device_type dev;
  if (sere_common_device("grid_sample", &dev, 2, in2)) return NULL;
  sere_tensor *out = sample(input, grid, dev);
  if (!out || !sere_needs_grad(2, in2)) return out;
  sere_node *n = sere_node_new("grid_sample", grid_sample_backward, 2, in2);
  if (!n || (sere_edge_needed(n, 1) && sere_node_save(n, 0, input)) || sere_node_save(n, 1, grid)) {
    if (n) sere_node_release(n);
    sere_tensor_release(out);
    return NULL;
  }
  sere_attach(out, n);
  return out;
}
