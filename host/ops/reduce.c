/* reduce.c — reductions over any set of dims: sum, mean, var/std, p-norms,
 * sum_to (the reverse of broadcasting, used by every broadcasting backward),
 * and max/min/argmax/argmin, which are top-1 selections done by ops/topk.c.
 *
 * Every reduction reads a contiguous tensor (f32 for float inputs, i64 for
 * integer sums) through a `plan`: size-1 dims dropped and neighbouring dims
 * of the same kind (reduced or kept) merged. When the innermost group is
 * reduced, each output is a tight loop over contiguous rows; when it is
 * kept, whole rows are added into a vector of accumulators, so [N, C] ->
 * [C] streams memory. Float sums accumulate in double in 16 independent
 * lanes, combined pairwise at the end of a row: the compiler vectorises
 * them (a single accumulator would not vectorise without -ffast-math), 16
 * hide the latency of the adds (with 8, sums ran about 25% slower), and
 * double keeps long sums from drifting (2^25 ones sum to exactly 2^25). A
 * plain sum first adds 8 elements per lane in f32, as a tree of depth 3
 * (error at most 3 * 2^-24 of their absolute sum, so of sum |x_i| in all):
 * converting every element to double took a third of the time. The loops are compiled for AVX-512 and AVX2 too
 * (SERE_WIDE_SIMD). Work is cut into tasks from the shape alone, never
 * from the thread count, so results are bitwise identical whatever
 * OMP_NUM_THREADS is.
 *
 * Backward functions reuse the plan: for y = F(sum_i f(x_i)) the gradient
 * is g * F'(acc) * f'(x_i), one per-output coefficient times a per-element
 * derivative.
 *
 * CUDA tensors run the same plan (its type lives in kernels/reduce.h) in
 * kernels/reduce.cu: the values, the backward coefficients and gradients,
 * integer sums and sum_to; max/min go there through ops/topk.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/reduce.h"
#include "ops.h"
#include "vecmath.h"
#ifdef SERE_WITH_CUDA
#include "../cuda_device.h"
#endif

#define SHAPE_BUF 160
#define PARALLEL_MIN 32768   /* elements below which one thread does it all */
#define MIN_TASKS 64         /* enough tasks to balance any sensible thread count */
#define TASK_MIN_WORK 16384  /* elements per task when a reduction is split */
#define COL_CHUNK 1024       /* columns per task when columns are split */
#define LANES 16             /* independent partial sums of a row: enough to hide the add latency */

/* ---- plan: the reduction as groups of merged dims -------------------- */
typedef sere_reduce_plan plan; /* kernels/reduce.h: shared with the CUDA kernels */

static void plan_build(plan *p, int ndim, const int64_t *shape, uint32_t mask) {
  int64_t gsize[SERE_MAX_DIMS], gstride[SERE_MAX_DIMS];
  int gred[SERE_MAX_DIMS], ng = 0;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    int red = (int)(mask >> d) & 1;
    if (ng > 0 && gred[ng - 1] == red) {
      gsize[ng - 1] *= shape[d];
    } else {
      gsize[ng] = shape[d];
      gred[ng++] = red;
    }
  }
  int64_t s = 1;
  for (int g = ng - 1; g >= 0; g--) { gstride[g] = s; s *= gsize[g]; }
  memset(p, 0, sizeof *p);
  p->inner = p->cols = p->nblocks = p->count = 1;
  if (ng > 0) {
    p->inner_reduced = gred[ng - 1];
    p->inner = gsize[ng - 1];
    if (p->inner_reduced) p->count = p->inner;
    else p->cols = p->inner;
  }
  for (int g = 0; g < ng - 1; g++) {
    if (gred[g]) {
      p->rsize[p->nred] = gsize[g];
      p->rstride[p->nred++] = gstride[g];
      p->count *= gsize[g];
    } else {
      p->ksize[p->nkeep] = gsize[g];
      p->kstride[p->nkeep++] = gstride[g];
      p->nblocks *= gsize[g];
    }
  }
}

/* Multi-index over some groups, tracking the element offset it points at. */
typedef struct {
  int n;
  const int64_t *size, *stride;
  int64_t idx[SERE_MAX_DIMS], off;
} odometer;

static void odo_start(odometer *o, int n, const int64_t *size, const int64_t *stride, int64_t flat) {
  o->n = n;
  o->size = size;
  o->stride = stride;
  o->off = 0;
  for (int d = n - 1; d >= 0; d--) {
    o->idx[d] = flat % size[d];
    flat /= size[d];
    o->off += o->idx[d] * stride[d];
  }
}

static void odo_next(odometer *o) {
  for (int d = o->n - 1; d >= 0; d--) {
    o->off += o->stride[d];
    if (++o->idx[d] < o->size[d]) return;
    o->off -= o->stride[d] * o->size[d];
    o->idx[d] = 0;
  }
}

/* ---- per-element maps and their derivatives --------------------------- */
typedef sere_reduce_map map_mode; /* kernels/reduce.h */

static inline double combine(map_mode m, double a, double b) {
  if (m == SERE_RED_MAXABS) return (a != a || a >= b) ? a : b; /* NaN wins */
  return a + b;
}

static inline double sign_of(double x) { return (double)((x > 0) - (x < 0)); }

/* f(x); c points at the output's centre (read by SERE_RED_SQDEV and SERE_RED_EQ only). */
static inline double map_elem(map_mode m, double x, const double *c, double p) {
  switch (m) {
    case SERE_RED_X: return x;
    case SERE_RED_SQDEV: return (x - *c) * (x - *c);
    case SERE_RED_ABS: case SERE_RED_MAXABS: return fabs(x);
    case SERE_RED_SQ: return x * x;
    case SERE_RED_POW: return pow(fabs(x), p);
    case SERE_RED_EQ: return fabs(x) == *c;
  }
  return 0;
}

/* f'(x); x is read only by the modes that need it. */
static inline double dmap_elem(map_mode m, const float *x, const double *c, double p) {
  switch (m) {
    case SERE_RED_X: return 1;
    case SERE_RED_SQDEV: return 2 * (*x - *c);
    case SERE_RED_ABS: return sign_of(*x);
    case SERE_RED_SQ: return 2.0 * *x;
    case SERE_RED_POW: return p * sign_of(*x) * pow(fabs(*x), p - 1);
    case SERE_RED_MAXABS: return fabs(*x) == *c ? sign_of(*x) : 0;
    case SERE_RED_EQ: return 0;
  }
  return 0;
}

/* The loop bodies, inlined with a constant mode by the dispatchers below
 * so that each hot mode gets its own vectorised loop. */
static inline __attribute__((always_inline)) double row_kernel(map_mode m, const float *x, int64_t n,
                                                               const double *c, double p) {
  double lane[LANES] = {0}, s = 0;
  int64_t i = 0;
  /* 8 elements per lane go to double as one f32 sum (see the top of the
   * file). The tree is written highest offset first because GCC then
   * issues the loads in ascending address order; in the mirrored order it
   * read each 512-byte block downwards and the hardware prefetcher kept
   * up with half the bandwidth (a full sum took 2x as long). */
  if (m == SERE_RED_X)
    for (; i + 8 * LANES <= n; i += 8 * LANES)
      for (int k = 0; k < LANES; k++) {
        const float *y = x + i + k;
        lane[k] += ((y[7 * LANES] + y[6 * LANES]) + (y[5 * LANES] + y[4 * LANES])) +
                   ((y[3 * LANES] + y[2 * LANES]) + (y[LANES] + y[0]));
      }
  for (; i + LANES <= n; i += LANES)
    for (int k = 0; k < LANES; k++) lane[k] = combine(m, lane[k], map_elem(m, x[i + k], c, p));
  for (; i < n; i++) s = combine(m, s, map_elem(m, x[i], c, p));
  /* the lanes pairwise: a few vector steps, where a chain of 16 adds would cost as much as a short row */
  for (int w = LANES / 2; w > 0; w /= 2)
    for (int k = 0; k < w; k++) lane[k] = combine(m, lane[k], lane[k + w]);
  return combine(m, lane[0], s);
}

static inline __attribute__((always_inline)) void col_kernel(map_mode m, const float *x, int64_t n, double *acc,
                                                             const double *c, double p) {
  for (int64_t i = 0; i < n; i++) acc[i] = combine(m, acc[i], map_elem(m, x[i], c + i, p));
}

/* Backward: gx[i] = coef * f'(x[i]) along a row (one output) ... */
static inline __attribute__((always_inline)) void row_grad_kernel(map_mode m, const float *x, float *gx, int64_t n,
                                                                  double coef, const double *c, double p) {
  for (int64_t i = 0; i < n; i++) gx[i] = (float)(coef * dmap_elem(m, x + i, c, p));
}

/* ... or across a row of outputs. */
static inline __attribute__((always_inline)) void col_grad_kernel(map_mode m, const float *x, float *gx, int64_t n,
                                                                  const double *coef, const double *c, double p) {
  for (int64_t i = 0; i < n; i++) gx[i] = (float)(coef[i] * dmap_elem(m, x + i, c + i, p));
}

SERE_WIDE_SIMD static double row_dispatch(map_mode m, const float *x, int64_t n, const double *c, double p) {
  switch (m) {
    case SERE_RED_X: return row_kernel(SERE_RED_X, x, n, c, p);
    case SERE_RED_SQDEV: return row_kernel(SERE_RED_SQDEV, x, n, c, p);
    case SERE_RED_SQ: return row_kernel(SERE_RED_SQ, x, n, c, p);
    default: return row_kernel(m, x, n, c, p);
  }
}

SERE_WIDE_SIMD static void col_dispatch(map_mode m, const float *x, int64_t n, double *acc, const double *c, double p) {
  switch (m) {
    case SERE_RED_X: col_kernel(SERE_RED_X, x, n, acc, c, p); break;
    case SERE_RED_SQDEV: col_kernel(SERE_RED_SQDEV, x, n, acc, c, p); break;
    case SERE_RED_SQ: col_kernel(SERE_RED_SQ, x, n, acc, c, p); break;
    default: col_kernel(m, x, n, acc, c, p);
  }
}

SERE_WIDE_SIMD static void row_grad_dispatch(map_mode m, const float *x, float *gx, int64_t n, double coef,
                                             const double *c, double p) {
  switch (m) {
    case SERE_RED_SQ: row_grad_kernel(SERE_RED_SQ, x, gx, n, coef, c, p); break;
    case SERE_RED_SQDEV: row_grad_kernel(SERE_RED_SQDEV, x, gx, n, coef, c, p); break;
    default: row_grad_kernel(m, x, gx, n, coef, c, p);
  }
}

SERE_WIDE_SIMD static void col_grad_dispatch(map_mode m, const float *x, float *gx, int64_t n, const double *coef,
                              const double *c, double p) {
  switch (m) {
    case SERE_RED_SQ: col_grad_kernel(SERE_RED_SQ, x, gx, n, coef, c, p); break;
    case SERE_RED_SQDEV: col_grad_kernel(SERE_RED_SQDEV, x, gx, n, coef, c, p); break;
    default: col_grad_kernel(m, x, gx, n, coef, c, p);
  }
}

/* Integer sums wrap around like PyTorch's (unsigned arithmetic: no UB). */
static int64_t row_sum_i64(const int64_t *x, int64_t n) {
  uint64_t s = 0;
  for (int64_t i = 0; i < n; i++) s += (uint64_t)x[i];
  return (int64_t)s;
}

static void col_sum_i64(const int64_t *x, int64_t n, int64_t *acc) {
  for (int64_t i = 0; i < n; i++) acc[i] = (int64_t)((uint64_t)acc[i] + (uint64_t)x[i]);
}

/* ---- the driver -------------------------------------------------------- */
typedef struct {
  plan p;
  const void *x;        /* contiguous f32, or i64 when is_int */
  int is_int;           /* exact integer sum into int64 slots */
  map_mode mode;
  double pw;            /* p of SERE_RED_POW */
  const double *center; /* per output (SERE_RED_SQDEV, SERE_RED_EQ, SERE_RED_MAXABS backward) */
  float *grad;          /* backward: write gx here instead of accumulating */
  const double *coef;   /* backward: per-output coefficient */
} reduction;

/* n contiguous elements at `off`, all belonging to output `o`. */
static void row_segment(const reduction *r, int64_t off, int64_t n, int64_t o, void *acc) {
  const double *c = r->center ? r->center + o : NULL;
  if (r->grad) {
    row_grad_dispatch(r->mode, (const float *)r->x + off, r->grad + off, n, r->coef[o], c, r->pw);
  } else if (r->is_int) {
    int64_t *a = acc;
    a[0] = (int64_t)((uint64_t)a[0] + (uint64_t)row_sum_i64((const int64_t *)r->x + off, n));
  } else {
    double *a = acc;
    a[0] = combine(r->mode, a[0], row_dispatch(r->mode, (const float *)r->x + off, n, c, r->pw));
  }
}

/* Columns c0..c1 of one reduced row at `off`, belonging to outputs o + c. */
static void col_segment(const reduction *r, int64_t off, int64_t c0, int64_t c1, int64_t o, void *acc) {
  const double *c = r->center ? r->center + o + c0 : NULL;
  off += c0;
  if (r->grad) col_grad_dispatch(r->mode, (const float *)r->x + off, r->grad + off, c1 - c0, r->coef + o + c0, c, r->pw);
  else if (r->is_int) col_sum_i64((const int64_t *)r->x + off, c1 - c0, (int64_t *)acc + c0);
  else col_dispatch(r->mode, (const float *)r->x + off, c1 - c0, (double *)acc + c0, c, r->pw);
}

/* One task: blocks b0..b1, reduced elements j0..j1 (in the order of the
 * reduced dims), columns c0..c1. acc holds `cols` accumulators per block. */
static void run_task(const reduction *r, int64_t b0, int64_t b1, int64_t j0, int64_t j1, int64_t c0, int64_t c1,
                     char *acc) {
  const plan *p = &r->p;
  if (j0 >= j1 || b0 >= b1) return;
  odometer kept, red;
  odo_start(&kept, p->nkeep, p->ksize, p->kstride, b0);
  for (int64_t b = b0; b < b1; b++, odo_next(&kept)) {
    int64_t o = b * p->cols;
    void *a = acc ? acc + (size_t)((b - b0) * p->cols) * 8 : NULL;
    if (p->inner_reduced) {
      int64_t len = p->inner;
      odo_start(&red, p->nred, p->rsize, p->rstride, j0 / len);
      for (int64_t j = j0; j < j1;) {
        int64_t ji = j % len, n = len - ji < j1 - j ? len - ji : j1 - j;
        row_segment(r, kept.off + red.off + ji, n, o, a);
        j += n;
        odo_next(&red);
      }
    } else {
      odo_start(&red, p->nred, p->rsize, p->rstride, j0);
      for (int64_t j = j0; j < j1; j++) {
        col_segment(r, kept.off + red.off, c0, c1, o, a);
        odo_next(&red);
      }
    }
  }
}

/* lo wins when hi < lo. */
static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  v = v > hi ? hi : v;
  return v < lo ? lo : v;
}

/* Runs the reduction: fills `out` (nblocks * cols slots of 8 bytes, double
 * or int64) or, in backward mode, r->grad. Many blocks: each task takes a
 * range of them; few blocks: the columns and then the reduced elements are
 * split, the latter into per-task partial sums combined in a fixed order.
 * 0 ok, -1 out of memory. */
static int reduction_run(const reduction *r, void *out) {
  const plan *p = &r->p;
  int64_t nout = p->nblocks * p->cols, work = nout * p->count;
  int64_t csplit = 1, rsplit = 1, bchunk = 1;
  if (p->nblocks >= MIN_TASKS) {
    bchunk = clamp64(TASK_MIN_WORK / (p->cols * p->count + 1), 1, p->nblocks / MIN_TASKS);
  } else if (work >= PARALLEL_MIN) {
    if (!p->inner_reduced) csplit = clamp64((MIN_TASKS + p->nblocks - 1) / p->nblocks, 1, p->cols / COL_CHUNK);
    int64_t tasks = p->nblocks * csplit;
    rsplit = clamp64((MIN_TASKS + tasks - 1) / tasks, 1, work / tasks / TASK_MIN_WORK);
    rsplit = clamp64(rsplit, 1, p->count);
  }
  if (out) memset(out, 0, (size_t)nout * 8);
  char *partial = NULL;
  if (!r->grad && rsplit > 1) {
    partial = calloc((size_t)(nout * rsplit), 8);
    if (!partial) { sere_fail("reduction: out of memory for partial sums"); return -1; }
  }
  int64_t nb = (p->nblocks + bchunk - 1) / bchunk, ntasks = nb * rsplit * csplit;
#pragma omp parallel for schedule(static) if (work >= PARALLEL_MIN)
  for (int64_t t = 0; t < ntasks; t++) {
    int64_t b = t / (rsplit * csplit) * bchunk, s = t / csplit % rsplit, cs = t % csplit;
    int64_t b1 = b + bchunk < p->nblocks ? b + bchunk : p->nblocks;
    char *acc = NULL;
    if (partial) acc = partial + (size_t)((b * rsplit + s) * p->cols) * 8;
    else if (out) acc = (char *)out + (size_t)(b * p->cols) * 8;
    run_task(r, b, b1, p->count * s / rsplit, p->count * (s + 1) / rsplit, p->cols * cs / csplit,
             p->cols * (cs + 1) / csplit, acc);
  }
  if (partial) {
    for (int64_t b = 0; b < p->nblocks; b++)
      for (int64_t s = 0; s < rsplit; s++) {
        const char *src = partial + (size_t)((b * rsplit + s) * p->cols) * 8;
        if (r->is_int) {
          col_sum_i64((const int64_t *)src, p->cols, (int64_t *)out + b * p->cols);
          continue;
        }
        double *o = (double *)out + b * p->cols;
        for (int64_t c = 0; c < p->cols; c++) o[c] = combine(r->mode, o[c], ((const double *)src)[c]);
      }
    free(partial);
  }
  return 0;
}

/* Accumulates f(x) of the contiguous f32 tensor x over `mask`; returns the
 * nout accumulators (malloc'ed) and fills *p. */
static double *float_accumulate(const sere_tensor *x, uint32_t mask, map_mode mode, double pw, const double *center,
                                plan *p) {
  reduction r = {.x = sere_data(x), .mode = mode, .pw = pw, .center = center};
  plan_build(&r.p, x->ndim, x->shape, mask);
  *p = r.p;
  double *out = malloc((size_t)(r.p.nblocks * r.p.cols + 1) * sizeof *out);
  if (!out) return sere_fail("reduction: out of memory");
  if (reduction_run(&r, out)) { free(out); return NULL; }
  return out;
}

/* ---- argument checks and outputs -------------------------------------- */
/* Turns a dim list (ndims == 0: all dims) into a bit mask. */
static int dims_mask(const char *op, const sere_tensor *t, int ndims, const int *dims, uint32_t *mask) {
  *mask = 0;
  if (ndims == 0) {
    *mask = (1u << t->ndim) - 1;
    return 0;
  }
  for (int i = 0; i < ndims; i++) {
    int d;
    if (sere_wrap_dim(dims[i], t->ndim, op, &d)) return -1;
    if (*mask & (1u << d)) {
      sere_fail("%s: dim %d appears twice in the list of dims", op, d + 1);
      return -1;
    }
    *mask |= 1u << d;
  }
  if (t->ndim == 0) *mask = 0;
  return 0;
}

static int out_shape(const sere_tensor *t, uint32_t mask, int keepdim, int64_t *shape) {
  int n = 0;
  for (int d = 0; d < t->ndim; d++) {
    if (!(mask >> d & 1)) shape[n++] = t->shape[d];
    else if (keepdim) shape[n++] = 1;
  }
  return n;
}

static int check_float(const char *op, const sere_tensor *t) {
  if (sere_dtype_is_float(t->dtype)) return 0;
  char a[SHAPE_BUF];
  sere_fail("%s: expects a float tensor, got %s of shape %s; convert it first with :float()", op,
            sere_dtype_name(t->dtype), sere_shape_str(t, a, sizeof a));
  return -1;
}

/* A new tensor of dtype d holding the values v (one per element). */
static sere_tensor *tensor_from_doubles(const double *v, int ndim, const int64_t *shape, sere_dtype d) {
  sere_tensor *out = sere_tensor_new_uninit(d, ndim, shape);
  if (!out) return NULL;
  int64_t n = sere_numel(out);
  if (d == SERE_F32) {
    float *o = out->storage->data;
    for (int64_t i = 0; i < n; i++) o[i] = (float)v[i];
  } else {
    for (int64_t i = 0; i < n; i++) sere_store_linear(out->storage->data, d, i, v[i]);
  }
  return out;
}

/* ---- sum, mean, var, std, norm ---------------------------------------- */
typedef enum { RED_SUM, RED_MEAN, RED_VAR, RED_STD, RED_NORM } red_kind;
static const char *const red_names[] = {"sum", "mean", "var", "std", "norm"};

static map_mode norm_mode(double p) {
  return p == 1 ? SERE_RED_ABS : p == 2 ? SERE_RED_SQ : isinf(p) ? SERE_RED_MAXABS : SERE_RED_POW;
}

/* Forward values of a float reduction: acc finalised in place. x is
 * contiguous f32. Returns the malloc'ed values or NULL. */
static double *reduce_values(const sere_tensor *x, uint32_t mask, red_kind kind, double p, int correction, plan *pl) {
  map_mode mode = kind == RED_NORM ? norm_mode(p) : SERE_RED_X;
  double *v = float_accumulate(x, mask, mode, p, NULL, pl);
  if (!v) return NULL;
  int64_t nout = pl->nblocks * pl->cols;
  double n = (double)pl->count;
  if (kind == RED_MEAN || kind == RED_VAR || kind == RED_STD)
    for (int64_t i = 0; i < nout; i++) v[i] /= n;
  if (kind == RED_VAR || kind == RED_STD) {
    double *ss = float_accumulate(x, mask, SERE_RED_SQDEV, 0, v, pl);
    if (!ss) { free(v); return NULL; }
    double div = n - correction > 0 ? n - correction : 0;
    for (int64_t i = 0; i < nout; i++) v[i] = kind == RED_STD ? sqrt(ss[i] / div) : ss[i] / div;
    free(ss);
  }
  if (mode == SERE_RED_SQ) for (int64_t i = 0; i < nout; i++) v[i] = sqrt(v[i]);
  if (mode == SERE_RED_POW) for (int64_t i = 0; i < nout; i++) v[i] = pow(v[i], 1 / p);
  return v;
}

#ifdef SERE_WITH_CUDA
/* ---- the same on the GPU (kernels/reduce.cu) ------------------------- */
/* n doubles of device scratch: per-output centres, tie counts, coefficients. */
static double *cuda_doubles(int64_t n) { return sere_cuda_alloc((size_t)(n + 1) * sizeof(double), 0); }
static void cuda_doubles_free(double *p, int64_t n) {
  if (p) sere_cuda_free(p, (size_t)(n + 1) * sizeof(double));
}

/* reduce_values into `out`, a device tensor of the output's shape and
 * dtype; x is contiguous f32 on the device. */
static int cuda_reduce_values(const sere_tensor *x, uint32_t mask, red_kind kind, double p, int correction,
                              sere_tensor *out) {
  plan pl;
  plan_build(&pl, x->ndim, x->shape, mask);
  double n = (double)pl.count;
  if (kind == RED_VAR || kind == RED_STD) {
    int64_t nout = pl.nblocks * pl.cols;
    double *mean = cuda_doubles(nout), div = n - correction > 0 ? n - correction : 0;
    int rc = !mean ||
             sere_cuda_reduce(&pl, sere_data(x), SERE_RED_X, 0, NULL, n, SERE_POST_NONE, NULL, SERE_F32, mean) ||
             sere_cuda_reduce(&pl, sere_data(x), SERE_RED_SQDEV, 0, mean, div,
                              kind == RED_STD ? SERE_POST_SQRT : SERE_POST_NONE, sere_data(out), out->dtype, NULL);
    cuda_doubles_free(mean, nout);
    return rc ? -1 : 0;
  }
  map_mode mode = kind == RED_NORM ? norm_mode(p) : SERE_RED_X;
  sere_reduce_post post = mode == SERE_RED_SQ    ? SERE_POST_SQRT
                          : mode == SERE_RED_POW ? SERE_POST_ROOT_P
                                                 : SERE_POST_NONE;
  return sere_cuda_reduce(&pl, sere_data(x), mode, p, NULL, kind == RED_MEAN ? n : 1, post, sere_data(out),
                          out->dtype, NULL);
}

/* reduce_backward for mean, var, std and norm of a device tensor: the
 * per-output coefficients, then gx = coef * f'(x) in one pass. */
static int reduce_backward_cuda(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  uint32_t mask = (uint32_t)n->ints[0];
  red_kind kind = (red_kind)n->ints[1];
  double p = n->scalars[0];
  plan pl;
  plan_build(&pl, e->ndim, e->shape, mask);
  int64_t nout = pl.nblocks * pl.cols;
  double cnt = (double)pl.count, div = cnt - (double)n->ints[2] > 0 ? cnt - (double)n->ints[2] : 0;
  map_mode mode = kind == RED_MEAN ? SERE_RED_X : kind == RED_NORM ? norm_mode(p) : SERE_RED_SQDEV;
  sere_tensor *in = NULL, *y = NULL; /* saved input and output (all but mean) */
  if (kind != RED_MEAN && (!(in = sere_node_saved(n, 0)) || !(y = sere_node_saved(n, 1)))) return -1;
  sere_tensor *x = in ? sere_as_contiguous_dtype(in, SERE_F32) : NULL;
  sere_tensor *yf = y ? sere_as_contiguous_dtype(y, SERE_F32) : NULL, *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *gx = sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, e->ndim, e->shape);
  double *coef = cuda_doubles(nout), *center = NULL, *ties = NULL;
  int rc = -1;
  if ((in && !x) || (y && !yf) || !gf || !gx || !coef) goto done;
  if (mode == SERE_RED_SQDEV) { /* centre: the mean */
    if (!(center = cuda_doubles(nout)) ||
        sere_cuda_reduce(&pl, sere_data(x), SERE_RED_X, 0, NULL, cnt, SERE_POST_NONE, NULL, SERE_F32, center))
      goto done;
  } else if (mode == SERE_RED_MAXABS) { /* centre: the norm, exactly; ties share the gradient */
    if (!(center = cuda_doubles(nout)) || !(ties = cuda_doubles(nout)) ||
        sere_cuda_reduce(&pl, sere_data(x), SERE_RED_MAXABS, 0, NULL, 1, SERE_POST_NONE, NULL, SERE_F32, center) ||
        sere_cuda_reduce(&pl, sere_data(x), SERE_RED_EQ, 0, center, 1, SERE_POST_NONE, NULL, SERE_F32, ties))
      goto done;
  }
  if (sere_cuda_reduce_coefs(nout, mode, kind == RED_STD, kind == RED_MEAN ? cnt : div, p, sere_data(gf),
                             yf ? sere_data(yf) : NULL, ties, coef) ||
      sere_cuda_reduce_grad(&pl, sere_numel(gx), mode, p, x ? sere_data(x) : NULL, coef, center, sere_data(gx)))
    goto done;
  rc = (gi[0] = sere_grad_as(gx, e->dtype)) ? 0 : -1;
  gx = NULL;
done:
  cuda_doubles_free(coef, nout);
  cuda_doubles_free(center, nout);
  cuda_doubles_free(ties, nout);
  sere_tensor_release(gx);
  sere_tensor_release(gf);
  sere_tensor_release(yf);
  sere_tensor_release(x);
  return rc;
}
#endif

/* The output gradient g broadcast back over the reduced dims (a view). */
static sere_tensor *expand_grad(sere_tensor *g, const sere_edge *e, uint32_t mask) {
  int64_t keep[SERE_MAX_DIMS];
  for (int d = 0; d < e->ndim; d++) keep[d] = mask >> d & 1 ? 1 : e->shape[d];
  sere_tensor *k = sere_reshape(g, e->ndim, keep);
  if (!k) return NULL;
  sere_tensor *out = sere_expand(k, e->ndim, e->shape);
  sere_tensor_release(k);
  return out;
}

/* Per-output coefficient g * F'(acc) of the backward pass (see the top of
 * the file); x is the contiguous f32 input, yv the forward output. */
static double *grad_coefs(const sere_node *n, const sere_tensor *x, const float *gv, const float *yv, const plan *pl,
                          map_mode mode, double **center) {
  red_kind kind = (red_kind)n->ints[1];
  uint32_t mask = (uint32_t)n->ints[0];
  double p = n->scalars[0], cnt = (double)pl->count;
  double div = cnt - (double)n->ints[2] > 0 ? cnt - (double)n->ints[2] : 0;
  int64_t nout = pl->nblocks * pl->cols;
  plan unused;
  double *coef = malloc((size_t)(nout + 1) * sizeof *coef), *ties = NULL;
  *center = NULL;
  if (!coef) return sere_fail("%s backward: out of memory", n->name);
  if (mode == SERE_RED_SQDEV) { /* centre: the mean */
    if (!(*center = float_accumulate(x, mask, SERE_RED_X, 0, NULL, &unused))) goto fail;
    for (int64_t i = 0; i < nout; i++) (*center)[i] /= cnt;
  } else if (mode == SERE_RED_MAXABS) { /* centre: the norm; ties share the gradient */
    if (!(*center = malloc((size_t)(nout + 1) * sizeof **center))) goto fail;
    for (int64_t i = 0; i < nout; i++) (*center)[i] = yv[i];
    if (!(ties = float_accumulate(x, mask, SERE_RED_EQ, 0, *center, &unused))) goto fail;
  }
  for (int64_t i = 0; i < nout; i++) {
    double c = gv[i];
    switch (mode) {
      case SERE_RED_SQDEV: c = kind == RED_VAR ? c / div : c / (2 * div * yv[i]); break;
      case SERE_RED_SQ: c = yv[i] != 0 ? c / (2 * yv[i]) : 0; break;
      case SERE_RED_POW: c = yv[i] != 0 ? c * pow(yv[i], 1 - p) / p : 0; break;
      case SERE_RED_MAXABS: c = ties[i] > 0 ? c / ties[i] : 0; break;
      default: break;
    }
    coef[i] = c;
  }
  free(ties);
  return coef;
fail:
  free(coef);
  free(ties);
  free(*center);
  *center = NULL;
  return NULL;
}

/* mean: g / count broadcast over the reduced dims. */
static int mean_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  plan pl;
  plan_build(&pl, e->ndim, e->shape, (uint32_t)n->ints[0]);
  sere_tensor *ex = expand_grad(g, e, (uint32_t)n->ints[0]);
  sere_tensor *gx = ex ? sere_tensor_new_uninit(SERE_F32, e->ndim, e->shape) : NULL;
  if (gx && sere_copy_raw(gx, ex)) { sere_tensor_release(gx); gx = NULL; }
  sere_tensor_release(ex);
  if (!gx) return -1;
  float *v = gx->storage->data, scale = 1.0f / (float)pl.count;
  int64_t total = sere_numel(gx);
  for (int64_t i = 0; i < total; i++) v[i] *= scale;
  return (gi[0] = sere_grad_as(gx, e->dtype)) ? 0 : -1;
}

/* ints: mask, kind, correction; scalars: p. saved: input, output. */
static int reduce_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  uint32_t mask = (uint32_t)n->ints[0];
  red_kind kind = (red_kind)n->ints[1];
  if (kind == RED_SUM) {
    gi[0] = expand_grad(g, e, mask);
    return gi[0] ? 0 : -1;
  }
#ifdef SERE_WITH_CUDA
  if (sere_device_of(g) == SERE_CUDA) return reduce_backward_cuda(n, g, gi);
#endif
  if (kind == RED_MEAN) return mean_backward(n, g, gi);
  sere_tensor *in = sere_node_saved(n, 0), *y = sere_node_saved(n, 1);
  if (!in || !y) return -1;
  reduction r = {.mode = kind == RED_NORM ? norm_mode(n->scalars[0]) : SERE_RED_SQDEV, .pw = n->scalars[0]};
  plan_build(&r.p, e->ndim, e->shape, mask);
  sere_tensor *x = sere_as_contiguous_dtype(in, SERE_F32), *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *yf = sere_as_contiguous_dtype(y, SERE_F32);
  sere_tensor *gx = sere_tensor_new_uninit(SERE_F32, e->ndim, e->shape); /* every element is written */
  double *coef = NULL, *center = NULL;
  int rc = -1;
  if (x && gf && yf && gx && (coef = grad_coefs(n, x, sere_data(gf), sere_data(yf), &r.p, r.mode, &center))) {
    r.x = sere_data(x);
    r.grad = sere_data(gx);
    r.coef = coef;
    r.center = center;
    if (!reduction_run(&r, NULL)) {
      rc = (gi[0] = sere_grad_as(gx, e->dtype)) ? 0 : -1;
      gx = NULL;
    }
  }
  free(coef);
  free(center);
  sere_tensor_release(gx);
  sere_tensor_release(gf);
  sere_tensor_release(yf);
  sere_tensor_release(x);
  return rc;
}

static sere_tensor *float_reduction(red_kind kind, sere_tensor *t, int ndims, const int *dims, int keepdim,
                                    double p, int correction) {
  const char *op = red_names[kind];
  uint32_t mask;
  if (check_float(op, t) || dims_mask(op, t, ndims, dims, &mask)) return NULL;
  if (kind == RED_NORM && !(p > 0)) return sere_fail("norm: p must be > 0 (or inf), got %g", p);
  if ((kind == RED_VAR || kind == RED_STD) && correction < 0)
    return sere_fail("%s: correction must be >= 0, got %d", op, correction);
  int64_t shape[SERE_MAX_DIMS];
  int nd = out_shape(t, mask, keepdim, shape);
  sere_tensor *x = sere_as_contiguous_dtype(t, SERE_F32), *out = NULL;
  if (!x) return NULL;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(t) == SERE_CUDA) {
    out = sere_tensor_new_uninit_on(SERE_CUDA, t->dtype, nd, shape);
    if (out && cuda_reduce_values(x, mask, kind, p, correction, out)) {
      sere_tensor_release(out);
      out = NULL;
    }
  } else
#endif
  {
    plan pl;
    double *v = reduce_values(x, mask, kind, p, correction, &pl);
    if (v) out = tensor_from_doubles(v, nd, shape, t->dtype);
    free(v);
  }
  sere_tensor_release(x);
  if (!out || !sere_needs_grad(1, &t)) return out;
  sere_node *n = sere_node_new(op, reduce_backward, 1, &t);
  if (n) sere_attach(out, n);
  int saves = kind != RED_SUM && kind != RED_MEAN; /* the input and the output */
  if (!n || (saves && (sere_node_save(n, 0, t) || sere_node_save_output(n, 1, out)))) {
    sere_tensor_release(out);
    return NULL;
  }
  n->ints[0] = mask;
  n->ints[1] = kind;
  n->ints[2] = correction;
  n->scalars[0] = p;
  return out;
}

/* Exact integer sum: bool counts trues, everything returns i64. */
static sere_tensor *int_sum(sere_tensor *t, uint32_t mask, int keepdim) {
  int64_t shape[SERE_MAX_DIMS];
  int nd = out_shape(t, mask, keepdim, shape);
  sere_tensor *x = sere_as_contiguous_dtype(t, SERE_I64);
  sere_tensor *out = sere_tensor_new_uninit_on(sere_device_of(t), SERE_I64, nd, shape);
  if (!x || !out) goto fail;
  reduction r = {.x = sere_data(x), .is_int = 1};
  plan_build(&r.p, x->ndim, x->shape, mask);
#ifdef SERE_WITH_CUDA
  if (sere_device_of(t) == SERE_CUDA) {
    if (sere_cuda_sum_i64(&r.p, sere_data(x), sere_data(out))) goto fail;
  } else
#endif
  if (reduction_run(&r, out->storage->data)) goto fail;
  sere_tensor_release(x);
  return out;
fail:
  sere_tensor_release(x);
  sere_tensor_release(out);
  return NULL;
}

sere_tensor *sere_sum(sere_tensor *t, int ndims, const int *dims, int keepdim) {
  if (sere_dtype_is_float(t->dtype)) return float_reduction(RED_SUM, t, ndims, dims, keepdim, 0, 0);
  uint32_t mask;
  if (dims_mask("sum", t, ndims, dims, &mask)) return NULL;
  return int_sum(t, mask, keepdim);
}

sere_tensor *sere_mean(sere_tensor *t, int ndims, const int *dims, int keepdim) {
  return float_reduction(RED_MEAN, t, ndims, dims, keepdim, 0, 0);
}

sere_tensor *sere_var(sere_tensor *t, int ndims, const int *dims, int correction, int keepdim) {
  return float_reduction(RED_VAR, t, ndims, dims, keepdim, 0, correction);
}

sere_tensor *sere_std(sere_tensor *t, int ndims, const int *dims, int correction, int keepdim) {
  return float_reduction(RED_STD, t, ndims, dims, keepdim, 0, correction);
}

sere_tensor *sere_norm(sere_tensor *t, double p, int ndims, const int *dims, int keepdim) {
  return float_reduction(RED_NORM, t, ndims, dims, keepdim, p, 0);
}

/* Sums t down to `shape` (the reverse of broadcasting): dims that t has in
 * front are summed away, dims where shape has 1 are summed with keepdim.
 * Always returns a new contiguous tensor (t's float dtype, else f32), so a
 * backward function may write into it. No autograd is recorded. */
sere_tensor *sere_sum_to(sere_tensor *t, int ndim, const int64_t *shape) {
  int lead = t->ndim - ndim;
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (lead < 0) goto bad;
  uint32_t mask = (1u << lead) - 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] != t->shape[lead + i] && shape[i] != 1) goto bad;
    if (shape[i] == 1 && t->shape[lead + i] != 1) mask |= 1u << (lead + i);
  }
  sere_dtype d = sere_dtype_is_float(t->dtype) ? t->dtype : SERE_F32;
  if (mask == 0) {
    sere_tensor *out = sere_tensor_new_uninit_on(sere_device_of(t), d, ndim, shape);
    if (out && sere_copy_raw(out, t)) { sere_tensor_release(out); return NULL; }
    return out;
  }
  sere_tensor *x = sere_as_contiguous_dtype(t, SERE_F32);
  if (!x) return NULL;
  plan pl;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(t) == SERE_CUDA) {
    plan_build(&pl, x->ndim, x->shape, mask);
    sere_tensor *out = sere_tensor_new_uninit_on(SERE_CUDA, d, ndim, shape);
    if (out && sere_cuda_reduce(&pl, sere_data(x), SERE_RED_X, 0, NULL, 1, SERE_POST_NONE, sere_data(out), d, NULL)) {
      sere_tensor_release(out);
      out = NULL;
    }
    sere_tensor_release(x);
    return out;
  }
#endif
  double *v = float_accumulate(x, mask, SERE_RED_X, 0, NULL, &pl);
  sere_tensor_release(x);
  if (!v) return NULL;
  sere_tensor *out = tensor_from_doubles(v, ndim, shape, d);
  free(v);
  return out;
bad:
  return sere_fail("sum_to: cannot sum shape %s down to %s", sere_shape_str(t, a, sizeof a),
                   sere_shape_str_raw(ndim, shape, b, sizeof b));
}

/* ---- max, min, argmax, argmin: top-1 selections ------------------------ */
static int select_one(const char *op, sere_tensor *t, int dim, int keepdim, int largest, int64_t base,
                      sere_tensor **values, sere_tensor **indices) {
  char a[SHAPE_BUF];
  *values = *indices = NULL;
  sere_tensor *src = NULL, *v = NULL, *ix = NULL;
  int d = 0;
  int64_t shape[SERE_MAX_DIMS];
  int nd;
  if (dim == SERE_ALL_DIMS) {
    if (sere_numel(t) == 0) {
      sere_fail("%s: cannot reduce an empty tensor (shape %s)", op, sere_shape_str(t, a, sizeof a));
      return -1;
    }
    src = sere_reshape(t, 1, (int64_t[]){-1});
    nd = keepdim ? t->ndim : 0;
    for (int i = 0; i < nd; i++) shape[i] = 1;
  } else {
    if (sere_wrap_dim(dim, t->ndim, op, &d)) return -1;
    if (t->ndim > 0 && t->shape[d] == 0) {
      sere_fail("%s: cannot reduce dim %d of size 0 (shape %s)", op, d + 1, sere_shape_str(t, a, sizeof a));
      return -1;
    }
    src = sere_tensor_retain(t);
    nd = out_shape(t, 1u << d, keepdim, shape);
  }
  if (!src || sere_topk(src, 1, d, largest, 1, base, &v, &ix)) goto fail;
  *values = sere_reshape(v, nd, shape);
  *indices = sere_reshape(ix, nd, shape);
  if (!*values || !*indices) goto fail;
  sere_tensor_release(src);
  sere_tensor_release(v);
  sere_tensor_release(ix);
  return 0;
fail:
  sere_tensor_release(*values);
  sere_tensor_release(*indices);
  *values = *indices = NULL;
  sere_tensor_release(src);
  sere_tensor_release(v);
  sere_tensor_release(ix);
  return -1;
}

int sere_max_dim(sere_tensor *t, int dim, int keepdim, int64_t base, sere_tensor **values, sere_tensor **indices) {
  return select_one("max", t, dim, keepdim, 1, base, values, indices);
}

int sere_min_dim(sere_tensor *t, int dim, int keepdim, int64_t base, sere_tensor **values, sere_tensor **indices) {
  return select_one("min", t, dim, keepdim, 0, base, values, indices);
}

/* Indices only: the selection runs without recording a gradient. */
static sere_tensor *arg_select(const char *op, sere_tensor *t, int dim, int keepdim, int largest, int64_t base) {
  sere_tensor *v, *ix;
  int prev = sere_set_grad_enabled(0);
  int rc = select_one(op, t, dim, keepdim, largest, base, &v, &ix);
  sere_set_grad_enabled(prev);
  if (rc) return NULL;
  sere_tensor_release(v);
  return ix;
}

sere_tensor *sere_argmax(sere_tensor *t, int dim, int keepdim, int64_t base) {
  return arg_select("argmax", t, dim, keepdim, 1, base);
}

sere_tensor *sere_argmin(sere_tensor *t, int dim, int keepdim, int64_t base) {
  return arg_select("argmin", t, dim, keepdim, 0, base);
}
