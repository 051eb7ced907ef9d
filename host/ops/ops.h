/* ops.h — every tensor op of the C core, grouped by the file that owns it.
 *
 * All functions follow tensor.h's conventions: borrowed arguments, a new
 * reference returned (or NULL / -1 after sere_fail with a message naming the
 * op and the shapes), 0-based dims where negative dims count from the end.
 * Differentiable ops record themselves on the tape (autograd.h) when grad
 * mode is on and an input requires grad. In-place ops (trailing `_`) refuse
 * to write into a tensor that requires grad while grad mode is on, and bump
 * the storage version so saved tensors detect the change.
 */
#ifndef SERE_OPS_H
#define SERE_OPS_H

#include "../autograd.h"
#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ops/view.c: views sharing storage, copies, dtype conversion ------ */
sere_tensor *sere_reshape(sere_tensor *t, int ndim, const int64_t *shape); /* one -1 allowed; copies if needed */
sere_tensor *sere_view(sere_tensor *t, int ndim, const int64_t *shape);    /* never copies; error if impossible */
sere_tensor *sere_transpose(sere_tensor *t, int d0, int d1);
sere_tensor *sere_permute(sere_tensor *t, int ndim, const int *perm);
sere_tensor *sere_narrow(sere_tensor *t, int dim, int64_t start, int64_t length);
sere_tensor *sere_select(sere_tensor *t, int dim, int64_t index);
sere_tensor *sere_expand(sere_tensor *t, int ndim, const int64_t *shape); /* -1 keeps a size */
sere_tensor *sere_unsqueeze(sere_tensor *t, int dim);
sere_tensor *sere_squeeze(sere_tensor *t, int dim); /* dim == SERE_ALL_DIMS squeezes every size-1 dim */
sere_tensor *sere_flatten(sere_tensor *t, int start_dim, int end_dim);
sere_tensor *sere_contiguous(sere_tensor *t); /* differentiable; returns t itself (retained) if contiguous */
sere_tensor *sere_clone(sere_tensor *t);
sere_tensor *sere_to_dtype(sere_tensor *t, sere_dtype d); /* differentiable between float dtypes */
sere_tensor *sere_to_device(sere_tensor *t, sere_device_type dev); /* differentiable copy to another device */
sere_tensor *sere_detach(sere_tensor *t);                 /* shares storage, no grad_fn */
int sere_copy_(sere_tensor *dst, sere_tensor *src);       /* src broadcast to dst's shape */
#define SERE_ALL_DIMS (-1000)

/* Broadcasts two shapes (NumPy rules). 0 ok; -1 with an error naming `op`. */
int sere_broadcast_shapes(const char *op, int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                          int64_t *out);

/* ---- ops/elementwise.c: element-wise math with broadcasting ----------- */
typedef enum { SERE_ADD, SERE_SUB, SERE_MUL, SERE_DIV, SERE_POW, SERE_MAXIMUM, SERE_MINIMUM } sere_binary_op;
typedef enum { SERE_EQ, SERE_NE, SERE_LT, SERE_LE, SERE_GT, SERE_GE } sere_compare_op;
typedef enum {
  SERE_NEG, SERE_EXP, SERE_LOG, SERE_SQRT, SERE_RSQRT, SERE_ABS, SERE_SIGN, SERE_SIN, SERE_COS,
  SERE_TANH, SERE_SIGMOID, SERE_RECIPROCAL, SERE_SQUARE, SERE_FLOOR, SERE_CEIL, SERE_ROUND, SERE_LOG1P,
  SERE_EXPM1, SERE_ERF, SERE_LOGICAL_NOT
} sere_unary_op;
sere_tensor *sere_binary(sere_binary_op op, sere_tensor *a, sere_tensor *b);
/* a op s, or s op a when `scalar_first` (for 2 - t, 2 / t, 2 ^ t). */
sere_tensor *sere_binary_scalar(sere_binary_op op, sere_tensor *a, double s, int scalar_first);
sere_tensor *sere_unary(sere_unary_op op, sere_tensor *a);
sere_tensor *sere_compare(sere_compare_op op, sere_tensor *a, sere_tensor *b); /* -> bool */
sere_tensor *sere_compare_scalar(sere_compare_op op, sere_tensor *a, double s);
sere_tensor *sere_logical(int op_and_or_xor, sere_tensor *a, sere_tensor *b);    /* 0 and, 1 or, 2 xor */
sere_tensor *sere_clamp(sere_tensor *a, double lo, double hi); /* NAN bound = no bound */
sere_tensor *sere_where(sere_tensor *cond, sere_tensor *a, sere_tensor *b);
sere_tensor *sere_masked_fill(sere_tensor *a, sere_tensor *mask, double v);
/* In place: a op= b (b broadcast to a), a op= s, a = v where mask. */
int sere_binary_(sere_binary_op op, sere_tensor *a, sere_tensor *b);
int sere_binary_scalar_(sere_binary_op op, sere_tensor *a, double s);
int sere_unary_(sere_unary_op op, sere_tensor *a);
int sere_clamp_(sere_tensor *a, double lo, double hi);
int sere_masked_fill_(sere_tensor *a, sere_tensor *mask, double v);
int sere_fill_(sere_tensor *a, double v);
/* y += alpha * x, in place, no autograd check (optimizers, grad accumulation). */
int sere_axpy_(sere_tensor *y, double alpha, sere_tensor *x);
/* acc += g for gradient accumulation (shapes equal; any strides/dtypes). */
int sere_accumulate_into(sere_tensor *acc, sere_tensor *g);

/* ---- ops/reduce.c: reductions over dims ------------------------------- */
/* ndims == 0 reduces over all dims. */
sere_tensor *sere_sum(sere_tensor *t, int ndims, const int *dims, int keepdim);
sere_tensor *sere_mean(sere_tensor *t, int ndims, const int *dims, int keepdim);
sere_tensor *sere_var(sere_tensor *t, int ndims, const int *dims, int correction, int keepdim);
sere_tensor *sere_std(sere_tensor *t, int ndims, const int *dims, int correction, int keepdim);
sere_tensor *sere_norm(sere_tensor *t, double p, int ndims, const int *dims, int keepdim);
/* max/min over one dim: values (differentiable) and i64 indices + base; dim
 * == SERE_ALL_DIMS reduces everything (indices then index the flattened tensor). */
int sere_max_dim(sere_tensor *t, int dim, int keepdim, int64_t base, sere_tensor **values, sere_tensor **indices);
int sere_min_dim(sere_tensor *t, int dim, int keepdim, int64_t base, sere_tensor **values, sere_tensor **indices);
sere_tensor *sere_argmax(sere_tensor *t, int dim, int keepdim, int64_t base);
sere_tensor *sere_argmin(sere_tensor *t, int dim, int keepdim, int64_t base);
/* Sums `t` down to `shape` (reverse of broadcasting); used by backward functions. */
sere_tensor *sere_sum_to(sere_tensor *t, int ndim, const int64_t *shape);

/* ---- ops/softmax.c ---------------------------------------------------- */
sere_tensor *sere_softmax(sere_tensor *t, int dim);
sere_tensor *sere_log_softmax(sere_tensor *t, int dim);

/* ---- ops/topk.c ------------------------------------------------------- */
int sere_topk(sere_tensor *t, int64_t k, int dim, int largest, int sorted, int64_t base, sere_tensor **values,
              sere_tensor **indices);

/* ---- ops/matmul.c: matrix products through BLAS ----------------------- */
/* PyTorch matmul semantics (1-D promotion, batch broadcasting). */
sere_tensor *sere_matmul(sere_tensor *a, sere_tensor *b);
sere_tensor *sere_bmm(sere_tensor *a, sere_tensor *b); /* strictly [B,n,k] x [B,k,m] */

/* ---- ops/index.c: joining, splitting, indexing ------------------------ */
sere_tensor *sere_cat(int n, sere_tensor *const *ts, int dim);
sere_tensor *sere_stack(int n, sere_tensor *const *ts, int dim);
/* Index tensors are integer tensors holding base-`base` indices. */
sere_tensor *sere_index_select(sere_tensor *t, int dim, sere_tensor *index, int64_t base);
sere_tensor *sere_gather(sere_tensor *t, int dim, sere_tensor *index, int64_t base);
sere_tensor *sere_scatter_add(sere_tensor *t, int dim, sere_tensor *index, sere_tensor *src, int64_t base);
sere_tensor *sere_masked_select(sere_tensor *t, sere_tensor *mask); /* 1-D result */
sere_tensor *sere_nonzero(sere_tensor *t, int64_t base);           /* [n, ndim] i64 */

/* ---- ops/random.c + ops/creation.c ------------------------------------ */
/* Counter-based Philox4x32-10 stream: (seed, offset). Each call consumes
 * counters and advances offset, so the same (seed, offset) reproduces the
 * same numbers on every backend (see random.c for the exact layout). */
typedef struct sere_generator {
  uint64_t seed;
  uint64_t offset; /* in 128-bit Philox blocks */
} sere_generator;
sere_generator *sere_default_generator(void);
void sere_philox4x32(uint64_t seed, uint64_t counter_lo, uint64_t counter_hi, uint32_t out[4]);
int sere_uniform_(sere_tensor *t, double lo, double hi, sere_generator *g);
int sere_normal_(sere_tensor *t, double mean, double std, sere_generator *g);
int sere_randint_(sere_tensor *t, int64_t lo, int64_t hi, sere_generator *g); /* [lo, hi) */
sere_tensor *sere_arange(double start, double end, double step, sere_dtype d);
sere_tensor *sere_linspace(double start, double end, int64_t steps, sere_dtype d);
sere_tensor *sere_eye(int64_t n, int64_t m, sere_dtype d);
sere_tensor *sere_full(int ndim, const int64_t *shape, double v, sere_dtype d);

/* ==== model and loss ops (issue 3); float inputs, computed in f32 ====== */

/* ---- ops/layernorm.c -------------------------------------------------- */
/* Normalises over the last dim: (x - mean) / sqrt(var + eps) * weight + bias
 * (biased variance; weight, bias [D] or NULL). Saves x's per-row mean and
 * rstd, not the normalised tensor. */
sere_tensor *sere_layer_norm(sere_tensor *x, sere_tensor *weight, sere_tensor *bias, double eps);

/* ---- ops/activation.c ------------------------------------------------- */
sere_tensor *sere_gelu(sere_tensor *x); /* exact: x * 0.5 * (1 + erf(x / sqrt(2))) */
sere_tensor *sere_relu(sere_tensor *x);

/* ---- ops/normalize.c -------------------------------------------------- */
/* x / max(||x||_2, eps) along dim (PyTorch's F.normalize with p = 2). */
sere_tensor *sere_l2_normalize(sere_tensor *x, int dim, double eps);

/* ---- ops/batchnorm.c -------------------------------------------------- */
/* Sums per-channel statistics across processes (SyncBatchNorm): called in
 * forward with [sum(x), sum(x^2), count] per channel and in backward with
 * [sum(g), sum(g * xhat)] per channel; must sum `buf` (n doubles) over all
 * ranks in place. NULL means a single process. */
typedef struct sere_bn_sync {
  int (*allreduce_sum)(double *buf, int64_t n, void *ctx);
  void *ctx;
} sere_bn_sync;
/* x [B, C, ...]. Training: normalise with the batch mean and biased
 * variance (over B and all spatial positions), and when running_mean /
 * running_var are given update them in place with `momentum` (unbiased
 * variance for running_var). Eval: normalise with the running statistics.
 * weight / bias [C] or NULL. */
sere_tensor *sere_batch_norm(sere_tensor *x, sere_tensor *weight, sere_tensor *bias, sere_tensor *running_mean,
                             sere_tensor *running_var, int training, double momentum, double eps,
                             const sere_bn_sync *sync);

/* ---- ops/attention.c -------------------------------------------------- */
/* softmax(q k^T * scale) v over the last two dims, q [..., Tq, d], k and v
 * [..., Tk, d] / [..., Tk, dv] with equal leading dims. One op: saves q, k,
 * v and the per-row log-sum-exp; never keeps the Tq x Tk probabilities for
 * backward (they are recomputed). */
sere_tensor *sere_attention(sere_tensor *q, sere_tensor *k, sere_tensor *v, double scale);

/* ---- ops/patch_embed.c ------------------------------------------------ */
/* Convolution with kernel == stride == p, no padding, as im2col + GEMM:
 * x [B, C, H, W], weight [D, C, p, p], bias [D] or NULL
 * -> [B, D, floor(H / p), floor(W / p)]. */
sere_tensor *sere_patch_embed(sere_tensor *x, sere_tensor *weight, sere_tensor *bias, int p);

/* ---- ops/interpolate.c ------------------------------------------------ */
/* PyTorch's interpolate(mode='bicubic', align_corners=False,
 * scale_factor=(sy, sx)) with the scale factors used for the coordinate
 * map: x [B, C, H, W] -> [B, C, floor(H * sy), floor(W * sx)]; cubic
 * kernel A = -0.75, taps clamped to the border, no antialiasing. */
sere_tensor *sere_interpolate_bicubic(sere_tensor *x, double sy, double sx);

/* ---- ops/grid_sample.c ------------------------------------------------ */
/* PyTorch's grid_sample(mode='bilinear', padding_mode='zeros',
 * align_corners=False): input [B, C, H, W], grid [B, Ho, Wo, 2] holding
 * (x, y) in [-1, 1] -> [B, C, Ho, Wo]. Differentiable in input and grid. */
sere_tensor *sere_grid_sample(sere_tensor *input, sere_tensor *grid);

/* ---- ops/soft_cross_entropy.c ----------------------------------------- */
/* Per row over the last dim:
 *   loss = -sum_k softmax((teacher - center) / teacher_temp)_k
 *                 * log_softmax(student / student_temp)_k
 * in one pass, without materialising either distribution. student and
 * teacher [..., K] (same shape), center broadcastable to [K] or NULL.
 * Returns [...] (one value per row). The gradient flows to the student
 * only; the teacher side is treated as a constant. */
sere_tensor *sere_soft_cross_entropy(sere_tensor *student, sere_tensor *teacher, sere_tensor *center,
                                     double student_temp, double teacher_temp);

/* ---- ops/optim.c: the optimiser's updates fused over lists of tensors -- */
/* Every tensor: contiguous f32, all on one device; list k's tensor i has
 * the shape of params[i]. In place, outside autograd (like sere_axpy_). */
typedef struct sere_adamw_hparams {
  double lr, weight_decay, beta1, beta2, eps;
} sere_adamw_hparams;
/* One AdamW update of every params[i] with grads[i]; steps[i] (>= 1) is
 * that tensor's step count including this update (bias corrections). */
int sere_adamw_step_(int n, sere_tensor *const *params, sere_tensor *const *grads, sere_tensor *const *exp_avg,
                     sere_tensor *const *exp_avg_sq, const int64_t *steps, const sere_adamw_hparams *h);
/* teacher[i] = m * teacher[i] + (1 - m) * student[i]. */
int sere_ema_(int n, sere_tensor *const *teacher, sere_tensor *const *student, double momentum);
/* out[i] = ||ts[i]||_2 (squares summed in double). */
int sere_norms(int n, sere_tensor *const *ts, double *out);
/* ts[i] *= factors[i]. */
int sere_scale_(int n, sere_tensor *const *ts, const double *factors);

#ifdef __cplusplus
}
#endif
#endif
