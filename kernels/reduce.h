/* reduce.h — the reduction plan shared by ops/reduce.c (which builds it and
 * runs it on the CPU) and the CUDA entry points of kernels/reduce.cu:
 * sums, means, variances and norms over any set of dims, their backward,
 * integer sums, and the top-1 selections behind max/min/argmax/argmin
 * (ops/topk.c). Plain C: reduce.c includes it in every build; the entry
 * points exist only when the build has CUDA (SERE_WITH_CUDA). They take
 * device pointers to contiguous data and return 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_REDUCE_H
#define SERE_KERNELS_REDUCE_H

#include <stdint.h>

#include "../host/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A reduction of a contiguous tensor as groups of merged dims: size-1 dims
 * dropped, neighbouring dims of the same kind (reduced or kept) merged.
 * Strides are in elements of the contiguous input. */
typedef struct sere_reduce_plan {
  int nkeep, nred; /* outer kept groups / outer reduced groups */
  int64_t ksize[SERE_MAX_DIMS], kstride[SERE_MAX_DIMS];
  int64_t rsize[SERE_MAX_DIMS], rstride[SERE_MAX_DIMS];
  int inner_reduced; /* innermost group reduced (rows) or kept (columns) */
  int64_t inner;     /* innermost group length; its stride is 1 */
  int64_t cols;      /* outputs per block: `inner` when kept, else 1 */
  int64_t nblocks;   /* outputs / cols */
  int64_t count;     /* elements reduced into each output */
} sere_reduce_plan;

/* What is accumulated per element. */
typedef enum {
  SERE_RED_X,      /* x            (sum, mean) */
  SERE_RED_SQDEV,  /* (x - c)^2    (var, std; c = the mean) */
  SERE_RED_ABS,    /* |x|          (1-norm) */
  SERE_RED_SQ,     /* x^2          (2-norm) */
  SERE_RED_POW,    /* |x|^p        (p-norm) */
  SERE_RED_MAXABS, /* max |x|      (inf-norm; combined by max, not +) */
  SERE_RED_EQ      /* |x| == c     (how many elements reach the inf-norm) */
} sere_reduce_map;

/* Applied to each output after dividing the accumulator by the divisor. */
typedef enum { SERE_POST_NONE, SERE_POST_SQRT, SERE_POST_ROOT_P } sere_reduce_post;

#ifdef SERE_WITH_CUDA
/* out[o] = post(acc[o] / divisor), acc[o] the double sum (or NaN-keeping
 * max) of map(x) over output o's elements; x contiguous f32. center: one
 * double per output (SQDEV, EQ), else NULL. Written to `out` in out_dtype
 * (f32 or bf16), or as doubles to out_double when that is not NULL. */
int sere_cuda_reduce(const sere_reduce_plan *p, const float *x, sere_reduce_map map, double pw,
                     const double *center, double divisor, sere_reduce_post post, void *out, sere_dtype out_dtype,
                     double *out_double);
/* Exact wrapping sum of contiguous i64 x into i64 out. */
int sere_cuda_sum_i64(const sere_reduce_plan *p, const int64_t *x, int64_t *out);
/* Per-output backward coefficient g * F'(acc) (f32 g and y, one per
 * output; ties: doubles, MAXABS only), as ops/reduce.c's grad_coefs. */
int sere_cuda_reduce_coefs(int64_t nout, sere_reduce_map map, int is_std, double div, double pw, const float *g,
                           const float *y, const double *ties, double *coef);
/* gx[i] = coef[o] * map'(x[i]) for every input element i (o its output);
 * x may be NULL for SERE_RED_X. */
int sere_cuda_reduce_grad(const sere_reduce_plan *p, int64_t n, sere_reduce_map map, double pw, const float *x,
                          const double *coef, const double *center, float *gx);
/* Top-1 of every output's elements (the plan of a one-dim reduction):
 * the largest (or smallest) by ops/topk.c's order (NaN above all, -0 ==
 * +0, the lowest index among equals). x: contiguous f32, or i64 for
 * integer dtypes (x_dtype); writes the index + base to `index` and the
 * value, converted to values_dtype, to `values`. */
int sere_cuda_select1(const sere_reduce_plan *p, const void *x, sere_dtype x_dtype, int largest, int64_t base,
                      void *values, sere_dtype values_dtype, int64_t *index);
/* topk backward: gx (zeroed, [outer, R, C]) at index - base along the dim
 * = g ([outer, k, C]); indices within a line are distinct. */
int sere_cuda_topk_scatter(const float *g, const int64_t *index, int64_t base, int64_t outer, int64_t k, int64_t R,
                           int64_t C, float *gx);
#endif

#ifdef __cplusplus
}
#endif
#endif
