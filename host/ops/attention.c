/* attention.c — fused scaled-dot-product attention, softmax(q k^T * scale) v
 * over the last two dims, and its backward.
 *
 * Each (leading dims...) matrix is a "head". Its query rows are processed
 * in blocks of bq rows (a whole ViT head is one block): S = scale * Q_b K^T
 * (BLAS), a stable softmax per row that keeps the row's log-sum-exp, then
 * O_b = P V. Only one bq x Tk block of scores exists at a time (per
 * thread, sized to stay in L2), and the probabilities are never saved:
 * backward recomputes them block by block as P = exp(S - lse) and
 *   dV += P^T dO_b,  dP = dO_b V^T,  dS = P * (dP - sum(P dP) / sum(P)),
 *   dQ_b = scale * dS K,  dK += scale * dS^T Q_b
 * (per row sums; see softmax_grad_row for why not FlashAttention's
 * rowsum(dO * O): the output itself is not needed).
 *
 * Threads: the heads run in parallel under OpenMP (forward: heads x
 * blocks), each GEMM on its calling thread. OpenBLAS's pthreads build would
 * otherwise start its own threads for every GEMM above 2^18 multiply-adds
 * and the two pools would fight (5x slower), so it is set to one thread for
 * the parallel loop and restored after. With fewer tasks than threads (one
 * long head) the tasks run in turn and OpenBLAS threads each GEMM.
 * The exp-heavy row loops are compiled for AVX-512 and AVX2 as well as the
 * baseline x86-64 (SERE_WIDE_SIMD): with SSE2 alone they took longer than
 * the products.
 *
 * Operands are read in place whenever BLAS can (f32 with unit column
 * stride), so q, k and v sliced out of one [B, T, 3, h, d] qkv tensor cost
 * no copy. bf16 is computed in f32 and the result returned as bf16.
 * Under autocast (autocast.h) f32 operands are cast to bf16 first.
 *
 * Tensors on the GPU go to the fused kernels of kernels/attention.cu,
 * which read the same strided views in place. Their backward uses
 * FlashAttention's delta = rowsum(dO * O), so the CUDA path also saves the
 * output. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "autocast.h"
#include "ops.h"
#include "vecmath.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/attention.h"
#endif

#define SHAPE_BUF 160
#define BLOCK_FLOATS (1 << 16) /* one block of scores: 256 KiB */
#define PARALLEL_MIN (1 << 18) /* multiply-adds below which one thread does it all */

/* One attention problem: every operand's first element, leading-dim
 * strides and row stride (columns have stride 1), all in elements. */
typedef struct {
  const float *data;
  int64_t bs[SERE_MAX_DIMS];
  int ld;
} mat;

typedef struct {
  int nb;                      /* leading dims */
  int64_t lead[SERE_MAX_DIMS]; /* their sizes */
  int64_t heads, tq, tk, d, dv;
  float scale;
  int bq;
} problem;

/* m over t [lead..., rows, cols], which readable() has vetted. */
static void set_mat(mat *m, const sere_tensor *t, int nb) {
  m->data = sere_data(t);
  for (int i = 0; i < nb; i++) m->bs[i] = t->stride[i];
  int64_t ld = t->shape[nb] > 1 ? t->stride[nb] : t->shape[nb + 1];
  m->ld = ld < 1 ? 1 : (int)ld;
}

/* The first element of head h (flat index over the leading dims) in m. */
static const float *head_ptr(const mat *m, const problem *p, int64_t h) {
  int64_t off = 0;
  for (int i = p->nb - 1; i >= 0; i--) {
    off += h % p->lead[i] * m->bs[i];
    h /= p->lead[i];
  }
  return m->data + off;
}

/* t itself (retained) when BLAS can read its matrices in place as f32,
 * else a contiguous f32 copy. */
static sere_tensor *readable(sere_tensor *t) {
  int r = t->ndim - 2;
  int64_t rows = t->shape[r], cols = t->shape[r + 1], rs = t->stride[r];
  int ok = t->dtype == SERE_F32 && (t->stride[r + 1] == 1 || cols <= 1) &&
           (rows <= 1 || (rs >= cols && rs >= 1 && rs <= INT_MAX));
  return ok ? sere_tensor_retain(t) : sere_as_contiguous_dtype(t, SERE_F32);
}

static float row_max(const float *x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}

/* x = softmax(x) in place; returns the log-sum-exp of the row. */
SERE_WIDE_SIMD static float softmax_row(float *x, int64_t n) {
  float m = row_max(x, n), s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; i++) {
    x[i] = sere_exp_core(x[i] - m);
    s += x[i];
  }
  float inv = 1.0f / s;
  for (int64_t i = 0; i < n; i++) x[i] *= inv;
  return m + logf(s);
}

/* x = exp(x - lse): the probabilities again from the saved statistic. */
SERE_WIDE_SIMD static void exp_row(float *x, int64_t n, float lse) {
#pragma omp simd
  for (int64_t i = 0; i < n; i++) x[i] = sere_exp_core(x[i] - lse);
}

/* dP -> dS = P * (dP - D) in place, D = sum(P dP) / sum(P). sum(P) is 1
 * but for rounding (P comes from exp(S - lse), lse rounded to f32), and
 * dividing by it keeps sum(dS) = 0, the softmax gradient's invariant:
 * FlashAttention's D = rowsum(dO * O) leaks that rounding into every
 * score's gradient (measured: twice PyTorch's f32 error on dq at T = 197). */
SERE_WIDE_SIMD static void softmax_grad_row(float *dp, const float *prob, int64_t n) {
  double dot = 0, sum = 0;
#pragma omp simd reduction(+ : dot, sum)
  for (int64_t i = 0; i < n; i++) {
    dot += (double)prob[i] * dp[i];
    sum += prob[i];
  }
  float d = (float)(dot / sum);
#pragma omp simd
  for (int64_t i = 0; i < n; i++) dp[i] = prob[i] * (dp[i] - d);
}

static void sgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                  int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Rows [i0, i0 + b) of head h: out and lse rows, s is b x tk scratch. */
static void forward_block(const problem *p, const mat *q, const mat *k, const mat *v, float *out, float *lse, int64_t h,
                          int64_t i0, int64_t b, float *s) {
  const float *qh = head_ptr(q, p, h) + i0 * q->ld, *kh = head_ptr(k, p, h), *vh = head_ptr(v, p, h);
  float *oh = out + (h * p->tq + i0) * p->dv, *lh = lse + h * p->tq + i0;
  sgemm(CblasNoTrans, CblasTrans, b, p->tk, p->d, p->scale, qh, q->ld, kh, k->ld, 0.0f, s, (int)p->tk);
  for (int64_t r = 0; r < b; r++) lh[r] = softmax_row(s + r * p->tk, p->tk);
  sgemm(CblasNoTrans, CblasNoTrans, b, p->dv, p->tk, 1.0f, s, (int)p->tk, vh, v->ld, 0.0f, oh, (int)p->dv);
}

/* Runs f over every task (heads x query blocks in forward, heads in
 * backward) with a per-thread scratch of `scratch` floats; -1 if a
 * scratch allocation failed. */
typedef void (*task_fn)(const problem *p, const void *ctx, int64_t task, float *scratch);

static int run_tasks(const problem *p, int64_t ntasks, size_t scratch, task_fn f, const void *ctx) {
  int failed = 0, threads = omp_get_max_threads(), blas_threads = openblas_get_num_threads();
  int par = threads > 1 && ntasks >= threads && p->heads * p->tq * p->tk * (p->d + p->dv) >= PARALLEL_MIN;
  if (par) openblas_set_num_threads(1);
#pragma omp parallel if (par)
  {
    float *buf = malloc(scratch * sizeof(float) + 1);
    if (!buf) {
#pragma omp atomic write
      failed = 1;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntasks; t++)
      if (buf) f(p, ctx, t, buf);
    free(buf);
  }
  if (par) openblas_set_num_threads(blas_threads);
  if (failed) sere_fail("attention: out of memory for %zu bytes of scratch", scratch * sizeof(float));
  return failed ? -1 : 0;
}

typedef struct {
  mat q, k, v;
  float *out, *lse;
} fwd_ctx;

static void forward_task(const problem *p, const void *ctx, int64_t t, float *s) {
  const fwd_ctx *c = ctx;
  int64_t nblocks = (p->tq + p->bq - 1) / p->bq, h = t / nblocks, i0 = t % nblocks * p->bq;
  int64_t b = p->tq - i0 < p->bq ? p->tq - i0 : p->bq;
  forward_block(p, &c->q, &c->k, &c->v, c->out, c->lse, h, i0, b, s);
}

typedef struct {
  mat q, k, v, dout;
  const float *lse;
  float *dq, *dk, *dv; /* contiguous; NULL when not needed */
} bwd_ctx;

/* One head: query blocks in order, as dK and dV accumulate over them. */
static void backward_task(const problem *p, const void *ctx, int64_t h, float *scratch) {
  const bwd_ctx *c = ctx;
  const float *qh = head_ptr(&c->q, p, h), *kh = head_ptr(&c->k, p, h), *vh = head_ptr(&c->v, p, h);
  const float *gh = head_ptr(&c->dout, p, h), *lh = c->lse + h * p->tq;
  float *dq = c->dq ? c->dq + h * p->tq * p->d : NULL, *dk = c->dk ? c->dk + h * p->tk * p->d : NULL;
  float *dv = c->dv ? c->dv + h * p->tk * p->dv : NULL;
  int tk = (int)p->tk, ldq = c->q.ld, ldk = c->k.ld, ldv = c->v.ld, ldg = c->dout.ld;
  float *prob = scratch, *ds = scratch + (int64_t)p->bq * p->tk;
  for (int64_t i0 = 0; i0 < p->tq; i0 += p->bq) {
    int64_t b = p->tq - i0 < p->bq ? p->tq - i0 : p->bq;
    const float *qb = qh + i0 * ldq, *gb = gh + i0 * ldg;
    float beta = i0 ? 1.0f : 0.0f;
    sgemm(CblasNoTrans, CblasTrans, b, p->tk, p->d, p->scale, qb, ldq, kh, ldk, 0.0f, prob, tk);
    for (int64_t r = 0; r < b; r++) exp_row(prob + r * p->tk, p->tk, lh[i0 + r]);
    if (dv) sgemm(CblasTrans, CblasNoTrans, p->tk, p->dv, b, 1.0f, prob, tk, gb, ldg, beta, dv, (int)p->dv);
    if (!dq && !dk) continue;
    sgemm(CblasNoTrans, CblasTrans, b, p->tk, p->dv, 1.0f, gb, ldg, vh, ldv, 0.0f, ds, tk);
    for (int64_t r = 0; r < b; r++) softmax_grad_row(ds + r * p->tk, prob + r * p->tk, p->tk);
    if (dq)
      sgemm(CblasNoTrans, CblasNoTrans, b, p->d, p->tk, p->scale, ds, tk, kh, ldk, 0.0f, dq + i0 * p->d, (int)p->d);
    if (dk) sgemm(CblasTrans, CblasNoTrans, p->tk, p->d, b, p->scale, ds, tk, qb, ldq, beta, dk, (int)p->d);
  }
}

/* A new contiguous f32 gradient of the shape of input i (zero-filled when
 * the kernel will not write it: an empty attention), or NULL if unneeded. */
static sere_tensor *grad_buffer(sere_node *n, int i, int empty, int *rc) {
  if (!sere_edge_needed(n, i)) return NULL;
  const sere_edge *e = &n->edges[i];
  sere_tensor *t =
      empty ? sere_tensor_new(SERE_F32, e->ndim, e->shape) : sere_tensor_new_uninit(SERE_F32, e->ndim, e->shape);
  if (!t) *rc = -1;
  return t;
}

static void describe(problem *p, const sere_tensor *q, const sere_tensor *k, const sere_tensor *v, double scale) {
  p->nb = q->ndim - 2;
  p->heads = 1;
  for (int i = 0; i < p->nb; i++) p->heads *= p->lead[i] = q->shape[i];
  p->tq = q->shape[p->nb];
  p->d = q->shape[p->nb + 1];
  p->tk = k->shape[p->nb];
  p->dv = v->shape[p->nb + 1];
  p->scale = (float)scale;
  int64_t bq = p->tk ? BLOCK_FLOATS / p->tk : p->tq;
  p->bq = bq < 1 ? 1 : bq > p->tq ? (int)p->tq : (int)bq;
}

#ifdef SERE_WITH_CUDA
/* t itself (retained) when the kernels can read it in place (dtype d,
 * columns of stride 1), else a contiguous copy in dtype d. */
static sere_tensor *kernel_readable(sere_tensor *t, sere_dtype d) {
  int c = t->ndim - 1;
  int ok = t->dtype == d && (t->stride[c] == 1 || t->shape[c] <= 1);
  return ok ? sere_tensor_retain(t) : sere_as_contiguous_dtype(t, d);
}

/* The forward on the GPU: the output in q's dtype and *lse_out. */
static sere_tensor *cuda_forward(sere_tensor *q, sere_tensor *k, sere_tensor *v, const problem *p,
                                 const int64_t *oshape, sere_tensor **lse_out) {
  sere_tensor *in[3] = {NULL}, *src[3] = {q, k, v}, *out = NULL, *lse = NULL;
  int rc = -1, empty = p->tk == 0; /* softmax over no keys: the output is 0 */
  for (int i = 0; i < 3; i++)
    if (!(in[i] = kernel_readable(src[i], q->dtype))) goto done;
  out = empty ? sere_tensor_new_on(SERE_CUDA, q->dtype, q->ndim, oshape)
              : sere_tensor_new_uninit_on(SERE_CUDA, q->dtype, q->ndim, oshape);
  lse = out ? sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, q->ndim - 1, q->shape) : NULL;
  if (!lse) goto done;
  if (empty)
    rc = sere_fill_raw(lse, -INFINITY);
  else
    rc = p->heads && p->tq ? sere_cuda_attention_forward(in[0], in[1], in[2], p->scale, out, lse) : 0;
done:
  for (int i = 0; i < 3; i++) sere_tensor_release(in[i]);
  if (rc) {
    sere_tensor_release(out);
    sere_tensor_release(lse);
    return NULL;
  }
  *lse_out = lse;
  return out;
}

/* attention_backward on the GPU; saved[4] is the output. */
static int cuda_backward(sere_node *n, sere_tensor *g, sere_tensor **saved, sere_tensor **gi) {
  sere_tensor *out = sere_node_saved(n, 4);
  sere_device_type dev;
  if (!out || sere_common_device("attention backward", &dev, 2, (sere_tensor *[]){saved[0], g})) return -1;
  problem p;
  describe(&p, saved[0], saved[1], saved[2], n->scalars[0]);
  sere_dtype dt = saved[0]->dtype;
  int empty = p.tq == 0 || p.tk == 0, rc = -1;
  sere_tensor *in[5] = {NULL}, *grads[3] = {NULL}, *delta = NULL; /* q, k, v, dO, out */
  for (int i = 0; i < 5; i++)
    if (!(in[i] = kernel_readable(i < 3 ? saved[i] : i == 3 ? g : out, dt))) goto done;
  for (int i = 0; i < 3; i++) {
    const sere_edge *e = &n->edges[i];
    if (!sere_edge_needed(n, i)) continue;
    grads[i] = empty ? sere_tensor_new_on(SERE_CUDA, dt, e->ndim, e->shape)
                     : sere_tensor_new_uninit_on(SERE_CUDA, dt, e->ndim, e->shape);
    if (!grads[i]) goto done;
  }
  if (!empty && p.heads) {
    int64_t rows = p.heads * p.tq;
    if ((grads[0] || grads[1]) && !(delta = sere_tensor_new_uninit_on(SERE_CUDA, SERE_F32, 1, &rows))) goto done;
    if (sere_cuda_attention_backward(in[0], in[1], in[2], in[3], in[4], saved[3], p.scale, delta, grads[0], grads[1],
                                     grads[2]))
      goto done;
  }
  for (int i = 0; i < 3; i++)
    if (grads[i] && !(gi[i] = sere_as_contiguous_dtype(grads[i], n->edges[i].dtype))) goto done;
  rc = 0;
done:
  for (int i = 0; i < 5; i++) sere_tensor_release(in[i]);
  for (int i = 0; i < 3; i++) sere_tensor_release(grads[i]);
  sere_tensor_release(delta);
  return rc;
}
#endif

/* saved: q, k, v, lse [..., Tq] f32, and on the GPU the output; scalars[0] = scale. */
static int attention_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  sere_tensor *saved[4];
  for (int i = 0; i < 4; i++)
    if (!(saved[i] = sere_node_saved(n, i))) return -1;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(saved[0]) == SERE_CUDA) return cuda_backward(n, g, saved, gi);
#endif
  problem p;
  describe(&p, saved[0], saved[1], saved[2], n->scalars[0]);
  int empty = p.tq == 0 || p.tk == 0, rc = 0;
  sere_tensor *in[4] = {NULL}, *grads[3]; /* q, k, v, dO */
  for (int i = 0; i < 4 && !rc; i++)
    if (!(in[i] = readable(i < 3 ? saved[i] : g))) rc = -1;
  for (int i = 0; i < 3; i++) grads[i] = rc ? NULL : grad_buffer(n, i, empty, &rc);
  if (!rc && !empty && p.heads) {
    bwd_ctx c = {.lse = sere_data(saved[3])};
    set_mat(&c.q, in[0], p.nb);
    set_mat(&c.k, in[1], p.nb);
    set_mat(&c.v, in[2], p.nb);
    set_mat(&c.dout, in[3], p.nb);
    c.dq = grads[0] ? grads[0]->storage->data : NULL;
    c.dk = grads[1] ? grads[1]->storage->data : NULL;
    c.dv = grads[2] ? grads[2]->storage->data : NULL;
    rc = run_tasks(&p, p.heads, (size_t)(2 * p.bq * p.tk), backward_task, &c);
  }
  for (int i = 0; i < 3; i++) {
    if (!rc && grads[i] && !(gi[i] = sere_as_contiguous_dtype(grads[i], n->edges[i].dtype))) rc = -1;
    sere_tensor_release(grads[i]);
  }
  for (int i = 0; i < 4; i++) sere_tensor_release(in[i]);
  return rc;
}

static sere_tensor *check_inputs(sere_tensor *q, sere_tensor *k, sere_tensor *v) {
  char a[SHAPE_BUF], b[SHAPE_BUF], c[SHAPE_BUF];
  sere_shape_str(q, a, sizeof a);
  sere_shape_str(k, b, sizeof b);
  sere_shape_str(v, c, sizeof c);
  if (!sere_dtype_is_float(q->dtype) || q->dtype != k->dtype || q->dtype != v->dtype)
    return sere_fail("attention: q, k and v must be float tensors of one dtype, got %s %s, %s %s and %s %s",
                     sere_dtype_name(q->dtype), a, sere_dtype_name(k->dtype), b, sere_dtype_name(v->dtype), c);
  if (q->ndim < 2 || k->ndim != q->ndim || v->ndim != q->ndim)
    return sere_fail(
        "attention: q, k and v must have the same number of dims (at least 2: [..., T, d]), "
        "got shapes %s, %s and %s",
        a, b, c);
  int r = q->ndim - 2;
  for (int i = 0; i < r; i++)
    if (k->shape[i] != q->shape[i] || v->shape[i] != q->shape[i])
      return sere_fail("attention: the leading dims of q %s, k %s and v %s must be equal (dim %d)", a, b, c, i + 1);
  if (k->shape[r + 1] != q->shape[r + 1])
    return sere_fail("attention: q %s and k %s must have the same last dim (head width)", a, b);
  if (v->shape[r] != k->shape[r])
    return sere_fail("attention: k %s and v %s must have the same number of keys (dim %d)", b, c, r + 1);
  for (int i = r; i < r + 2; i++)
    if (q->shape[i] > INT_MAX || k->shape[i] > INT_MAX || v->shape[i] > INT_MAX)
      return sere_fail("attention: sizes of q %s, k %s or v %s exceed 2^31 - 1", a, b, c);
  return q;
}

/* The forward on the CPU: the output in q's dtype and *lse_out. */
static sere_tensor *cpu_forward(sere_tensor *q, sere_tensor *k, sere_tensor *v, const problem *p,
                                const int64_t *oshape, sere_tensor **lse_out) {
  int empty = p->tk == 0; /* softmax over no keys: the output is 0 */
  sere_tensor *in[3] = {readable(q), NULL, NULL};
  in[1] = in[0] ? readable(k) : NULL;
  in[2] = in[1] ? readable(v) : NULL;
  sere_tensor *out = NULL, *lse = NULL;
  if (in[2]) {
    out = empty ? sere_tensor_new(SERE_F32, q->ndim, oshape) : sere_tensor_new_uninit(SERE_F32, q->ndim, oshape);
    lse = out ? sere_tensor_new_uninit(SERE_F32, q->ndim - 1, q->shape) : NULL;
  }
  int rc = lse ? 0 : -1;
  if (!rc && empty) {
    sere_fill_raw(lse, -INFINITY);
  } else if (!rc && p->heads && p->tq) {
    fwd_ctx c = {.out = out->storage->data, .lse = lse->storage->data};
    set_mat(&c.q, in[0], p->nb);
    set_mat(&c.k, in[1], p->nb);
    set_mat(&c.v, in[2], p->nb);
    rc = run_tasks(p, p->heads * ((p->tq + p->bq - 1) / p->bq), (size_t)(p->bq * p->tk), forward_task, &c);
  }
  for (int i = 0; i < 3; i++) sere_tensor_release(in[i]);
  sere_tensor *res = rc ? NULL : sere_as_contiguous_dtype(out, q->dtype);
  sere_tensor_release(out);
  if (res)
    *lse_out = lse;
  else
    sere_tensor_release(lse);
  return res;
}

sere_tensor *sere_attention(sere_tensor *q, sere_tensor *k, sere_tensor *v, double scale) {
  sere_tensor *inputs[3] = {q, k, v}, *cast[3];
  if (sere_autocast_lowers(3, inputs)) { /* bf16 copies of f32 operands (autocast.h) */
    if (sere_autocast_operands(3, inputs, cast)) return NULL;
    sere_tensor *out = sere_attention(cast[0], cast[1], cast[2], scale);
    sere_autocast_release(3, cast);
    return out;
  }
  sere_device_type dev;
  if (sere_common_device("attention", &dev, 3, inputs) || !check_inputs(q, k, v)) return NULL;
  if (!isfinite(scale)) return sere_fail("attention: scale must be finite, got %g", scale);
  problem p;
  describe(&p, q, k, v, scale);
  int64_t oshape[SERE_MAX_DIMS];
  memcpy(oshape, q->shape, sizeof oshape);
  oshape[p.nb + 1] = p.dv;
  sere_tensor *res = NULL, *lse = NULL;
  if (dev == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    if (p.d > SERE_CUDA_ATTENTION_MAX_WIDTH || p.dv > SERE_CUDA_ATTENTION_MAX_WIDTH)
      return sere_fail("attention: CUDA kernels take head widths up to %d, got q/k width %lld and v width %lld",
                       SERE_CUDA_ATTENTION_MAX_WIDTH, (long long)p.d, (long long)p.dv);
    res = cuda_forward(q, k, v, &p, oshape, &lse);
#endif
  } else {
    res = cpu_forward(q, k, v, &p, oshape, &lse);
  }
  if (!res || !sere_needs_grad(3, inputs)) {
    sere_tensor_release(lse);
    return res;
  }
  sere_node *n = sere_node_new("attention", attention_backward, 3, inputs);
  if (!n || sere_node_save(n, 0, q) || sere_node_save(n, 1, k) || sere_node_save(n, 2, v) ||
      sere_node_save(n, 3, lse) || (dev == SERE_CUDA && sere_node_save_output(n, 4, res))) {
    if (n) sere_node_release(n);
    sere_tensor_release(lse);
    sere_tensor_release(res);
    return NULL;
  }
  n->scalars[0] = scale;
  sere_tensor_release(lse);
  sere_attach(res, n);
  return res;
}
