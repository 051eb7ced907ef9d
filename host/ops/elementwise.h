/* elementwise.h — what the two files of the element-wise family share
 * (private to them): elementwise.c holds the driver, the dtype rules and
 * the binary/compare/logical/where ops; elementwise_unary.c the unary ops
 * and clamp. An op describes its kernel with a plan and runs it over
 * broadcast operands with sere_ew_run (see elementwise.c for how). */
#ifndef SERE_ELEMENTWISE_H
#define SERE_ELEMENTWISE_H

#include "../../kernels/elementwise.h" /* kernel kinds and op codes, shared with the GPU */
#include "ops.h"

#define SERE_EW_PAR_MIN 32768   /* elements below which an op runs on one thread */
#define SERE_EW_SHAPE_BUF 160

/* A kernel computes n elements of one row: out[i] = f(in[0][i], ...). Each
 * input has stride 1, or 0 when the plan allows it (bcast_ok). */
typedef struct sere_ew_plan sere_ew_plan;
typedef void (*sere_ew_kernel)(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n);
struct sere_ew_plan {
  sere_ew_kernel fn;
  sere_ew_kind kind; /* the same computation for the GPU (kernels/elementwise.h) */
  int op, nin;   /* op code understood by fn and kind; number of inputs (1..3) */
  int bcast_ok;  /* fn takes inputs of stride 0 */
  /* compute dtype (f32, i64 or bool) of the output, then of each input:
   * the driver converts operands of other dtypes through buffers */
  sere_dtype ct[SERE_EW_MAXOPS];
  float f0, f1;   /* parameters: axpy's alpha, clamp's bounds */
  int64_t i0, i1; /* the same for integer kernels */
};

/* out = plan(in...), every input broadcast to out's shape (checked by the
 * caller), on out's device (sere_ew_check_devices). 0, or -1 after sere_fail. */
int sere_ew_run(const sere_ew_plan *p, sere_tensor *out, sere_tensor *const *in);
/* The same into a new contiguous tensor of dtype dt and the given shape, on
 * the GPU when an input is there. */
sere_tensor *sere_ew_new(const sere_ew_plan *p, sere_dtype dt, int ndim, const int64_t *shape,
                         sere_tensor *const *in);

/* The device rule of the family: everything on one device, except that a
 * 0-dim CPU tensor that does not require grad (a scalar) joins a GPU op.
 * dst is the tensor written in place, or NULL. -1 with an error naming op. */
int sere_ew_check_devices(const char *op, const sere_tensor *dst, int n, sere_tensor *const *in);

/* f32 for float result dtypes, i64 for the others. */
sere_dtype sere_ew_compute_dtype(sere_dtype rt);
/* 0 when op is a code 0..last of its family, else -1 with an error. */
int sere_ew_check_op(const char *family, int op, int last);
/* Is s a whole number that fits an int64? */
int sere_ew_is_integral(double s);

/* Float output and an input that requires grad (in grad mode)? */
int sere_ew_wants_grad(const sere_tensor *out, int nin, sere_tensor *const *in);
/* New node for `out` with ints[0] = op, attached (owned by out); NULL on error. */
sere_node *sere_ew_attach(sere_tensor *out, const char *name, sere_backward_fn fn, int op, int nin,
                          sere_tensor *const *in);
/* Gradient of input i of n: plan p run over `in` at g's shape (g itself
 * when p is NULL), summed back to the input's shape, in its dtype. */
sere_tensor *sere_ew_input_grad(sere_node *n, int i, const sere_ew_plan *p, sere_tensor *g,
                                sere_tensor *const *in);

/* The checks of every in-place op writing a result of dtype rt into a:
 * autograd safety (when `autograd`), no memory repeated by stride 0, and
 * rt castable to a's dtype (no float into integer, nothing else into bool). */
int sere_ew_inplace_check(const char *op, sere_tensor *a, sere_dtype rt, int autograd);

#endif
