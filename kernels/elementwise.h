/* elementwise.h — the CUDA kernels of ops/elementwise.c and
 * ops/elementwise_unary.c. The host driver (sere_ew_run) broadcasts the
 * operands to the output's shape and merges dims exactly as for the CPU,
 * then hands the whole iteration to sere_cuda_ew_run, which computes every
 * element as the CPU kernels do: f32 (bf16 and other float dtypes
 * converted on load and rounded on store), integers exactly in i64, bool.
 *
 * Paths: a vectorised one (4 elements a thread, 16-byte f32 / 8-byte bf16
 * loads) when every compute dtype is f32, every operand is f32 or bf16,
 * the iteration is one dim with unit strides (stride 0 for a broadcast
 * scalar) and the pointers are aligned; otherwise one element a thread
 * over the merged dims with any strides and dtypes. */
#ifndef SERE_KERNELS_ELEMENTWISE_H
#define SERE_KERNELS_ELEMENTWISE_H

#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SERE_EW_MAXOPS 4 /* the output and up to three inputs */

/* What a kernel computes: the family, then an op code within it (the public
 * enums of ops.h, or the codes below). */
typedef enum {
  SERE_EWK_BINARY,       /* sere_binary_op or SERE_EWOP_AXPY; f32 or i64 */
  SERE_EWK_COMPARE,      /* sere_compare_op over f32 or i64 -> bool */
  SERE_EWK_LOGICAL,      /* 0 and, 1 or, 2 xor over bool */
  SERE_EWK_WHERE,        /* (bool cond, a, b) in f32 or i64 */
  SERE_EWK_BINARY_GRAD,  /* SERE_EWOP_GRAD_* over (g, a, b), f32 */
  SERE_EWK_UNARY,        /* sere_unary_op or SERE_EWOP_CLAMP; f32 or i64 */
  SERE_EWK_LOGICAL_NOT,  /* bool */
  SERE_EWK_UNARY_GRAD,   /* (g, saved input or output) by the unary op code, f32 */
} sere_ew_kind;

/* Op codes beyond the public enums. */
enum {
  SERE_EWOP_AXPY = 100,   /* binary: x + alpha * y (alpha: f0, or i0 for integers) */
  SERE_EWOP_GRAD_DIV_B,   /* (g, a, b): gradient of a / b for b */
  SERE_EWOP_GRAD_POW_BASE,/* gradient of a ^ b for a */
  SERE_EWOP_GRAD_POW_EXP, /* gradient of a ^ b for b */
  SERE_EWOP_GRAD_MAX,     /* gradient of maximum(a, b) for a */
  SERE_EWOP_GRAD_MIN,
  SERE_EWOP_CLAMP,        /* unary: clamp to [f0, f1] (integers: [i0, i1]) */
};

/* One element-wise launch: operand 0 is the output, 1..nin the inputs.
 * Element (j0, .., j_{ndim-1}) of operand k is at element offset
 * sum_d j_d * stride[k][d] from base[k] (stride 0 where broadcast). An
 * input with base NULL is a scalar from the host: every element is
 * scalar_f[k] (compute dtype f32) or scalar_i[k] (i64 and bool). */
typedef struct sere_ew_launch {
  int kind, op, nin;
  int ct[SERE_EW_MAXOPS];    /* compute dtype: SERE_F32, SERE_I64 or SERE_BOOL */
  int dtype[SERE_EW_MAXOPS]; /* storage dtype */
  void *base[SERE_EW_MAXOPS];
  float scalar_f[SERE_EW_MAXOPS];
  int64_t scalar_i[SERE_EW_MAXOPS];
  float f0, f1;   /* parameters: axpy's alpha, clamp's bounds */
  int64_t i0, i1; /* the same for integer kernels */
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int64_t stride[SERE_EW_MAXOPS][SERE_MAX_DIMS];
} sere_ew_launch;

/* Runs the launch on sere's stream. 0, or -1 after sere_fail. */
int sere_cuda_ew_run(const sere_ew_launch *l);

#ifdef __cplusplus
}
#endif
#endif
