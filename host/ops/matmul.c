/* matmul.c — matrix products: PyTorch's matmul (1-D operands promoted to
 * matrices, batch dims broadcast) and bmm, with their backward.
 *
 * f32 goes to cblas_sgemm without copying operands: a matrix with strides
 * (ld, 1) is passed as NoTrans and one with strides (1, ld) as Trans, so a
 * transposed view (x:matmul(W:t()), as nn.Linear does) costs nothing. Batch
 * dims are walked by pointer arithmetic, a broadcast batch dim being stride
 * 0 and never materialised. When the strides allow, the batch is folded
 * into one large GEMM: into the rows when only A is batched (x[B,T,C] @ W),
 * into the inner dim when the batch is summed away (the weight gradient).
 * The backward functions reuse the same kernel and sum over broadcast batch
 * dims by accumulating into an output whose batch stride is 0, so no
 * batched intermediate is ever reduced afterwards.
 * bf16 is computed in f32; integer dtypes use an exact int64 triple loop.
 * Under autocast (autocast.h) f32 operands are cast to bf16 first.
 *
 * CUDA tensors go to cuBLAS (kernels/matmul.cu) through the same problem
 * description: the batch dims left after folding are merged where the
 * strides allow, and the innermost one becomes one strided-batched GEMM
 * (stride 0 for a broadcast operand); entries that accumulate into a shared
 * output run as one GEMM each, in order. Two bf16 operands are multiplied
 * as bf16 with f32 accumulation; integer products have no CUDA path.
 */
#include <cblas.h>
#include <limits.h>
#include <string.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/matmul.h"
#endif

#define SHAPE_BUF 160

/* One operand of a batched product: first element, matrix strides (rows,
 * cols) and strides over the iteration batch, all in elements. */
typedef struct {
  char *data;
  int64_t rs, cs;
  int64_t bs[SERE_MAX_DIMS];
} mm_arg;

/* c[i] (+)= a[i] @ b[i] for every batch index i; a is n x k, b is k x m. */
typedef struct {
  sere_dtype ad; /* of a and b: SERE_F32, SERE_I64, or SERE_BF16 on cuda; c is i64 or f32 to match */
  sere_device_type dev;
  int nb;
  int64_t batch[SERE_MAX_DIMS];
  int64_t n, k, m;
  mm_arg a, b, c;
  int accumulate; /* some c matrix is the target of several batch entries */
} mm_problem;

/* How BLAS can read a rows x cols matrix with strides (rs, cs): row-major
 * (NoTrans, ld = rs) or column-major (Trans, ld = cs). A size-1 dim may have
 * any stride. Returns 0 when neither works and the matrix must be copied. */
static int blas_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, CBLAS_TRANSPOSE *tr, int *ld) {
  int64_t l;
  if ((cs == 1 || cols == 1) && (rows == 1 || rs >= cols)) {
    *tr = CblasNoTrans;
    l = rows == 1 ? cols : rs;
  } else if ((rs == 1 || rows == 1) && (cols == 1 || cs >= rows)) {
    *tr = CblasTrans;
    l = cols == 1 ? rows : cs;
  } else {
    return 0;
  }
  if (l > INT_MAX) return 0;
  *ld = l < 1 ? 1 : (int)l;
  return 1;
}

/* Can the batch dims (outermost first) merge with a matrix dim of `size`
 * and `stride` into one dim of size prod(batch) * size? */
static int batch_merges(const mm_problem *p, const int64_t *bs, int64_t size, int64_t stride) {
  int64_t expect = size * stride;
  for (int i = p->nb - 1; i >= 0; i--) {
    if (bs[i] != expect) return 0;
    expect *= p->batch[i];
  }
  return 1;
}

static int layouts_ok(const mm_problem *p) {
  CBLAS_TRANSPOSE t;
  int ld;
  return blas_layout(p->n, p->k, p->a.rs, p->a.cs, &t, &ld) && blas_layout(p->k, p->m, p->b.rs, p->b.cs, &t, &ld) &&
         p->c.cs == 1 && p->c.rs >= p->m;
}

/* Turns a batched problem into a single GEMM when the strides allow it. */
static void fold_batch(mm_problem *p) {
  if (p->nb == 0) return;
  int64_t total = sere_numel_raw(p->nb, p->batch);
  int b_shared = 1, c_shared = 1;
  for (int i = 0; i < p->nb; i++) {
    b_shared &= p->b.bs[i] == 0;
    c_shared &= p->c.bs[i] == 0;
  }
  mm_problem q = *p;
  q.nb = 0;
  if (b_shared && p->n * total <= INT_MAX && batch_merges(p, p->a.bs, p->n, p->a.rs) &&
      batch_merges(p, p->c.bs, p->n, p->c.rs)) {
    q.n = p->n * total; /* the rows of all batch entries stacked */
  } else if (c_shared && p->k * total <= INT_MAX && batch_merges(p, p->a.bs, p->k, p->a.cs) &&
             batch_merges(p, p->b.bs, p->k, p->b.rs)) {
    q.k = p->k * total; /* the sum over the batch becomes part of the inner product */
    q.accumulate = 0;
  } else {
    return;
  }
  if (p->ad == SERE_I64 || layouts_ok(&q)) *p = q;
}

static void sgemm_one(const mm_problem *p, const float *a, const float *b, float *c) {
  CBLAS_TRANSPOSE ta = CblasNoTrans, tb = CblasNoTrans;
  int lda = 1, ldb = 1; /* layouts were checked when the problem was built */
  blas_layout(p->n, p->k, p->a.rs, p->a.cs, &ta, &lda);
  blas_layout(p->k, p->m, p->b.rs, p->b.cs, &tb, &ldb);
  cblas_sgemm(CblasRowMajor, ta, tb, (int)p->n, (int)p->m, (int)p->k, 1.0f, a, lda, b, ldb,
              p->accumulate ? 1.0f : 0.0f, c, (int)p->c.rs);
}

/* Exact integer product; unsigned arithmetic so overflow wraps (as in
 * PyTorch) instead of being undefined. */
static void igemm_one(const mm_problem *p, const int64_t *a, const int64_t *b, int64_t *c) {
  int64_t n = p->n, k = p->k, m = p->m;
  int64_t ars = p->a.rs, acs = p->a.cs, brs = p->b.rs, bcs = p->b.cs, crs = p->c.rs, ccs = p->c.cs;
#pragma omp parallel for if (n * k * m > (1 << 16))
  for (int64_t i = 0; i < n; i++) {
    uint64_t *ci = (uint64_t *)c + i * crs;
    for (int64_t q = 0; q < k; q++) {
      uint64_t av = (uint64_t)a[i * ars + q * acs];
      const int64_t *bq = b + q * brs;
      for (int64_t j = 0; j < m; j++) ci[j * ccs] += av * (uint64_t)bq[j * bcs];
    }
  }
}

/* Element offsets of batch entry i (flat, over p->batch) in a, b and c. */
static void entry_offsets(const mm_problem *p, int64_t i, int64_t *oa, int64_t *ob, int64_t *oc) {
  *oa = *ob = *oc = 0;
  for (int d = p->nb - 1; d >= 0; d--) {
    int64_t j = i % p->batch[d];
    i /= p->batch[d];
    *oa += j * p->a.bs[d];
    *ob += j * p->b.bs[d];
    *oc += j * p->c.bs[d];
  }
}

/* Runs one batch entry on the CPU. */
static void mm_entry(const mm_problem *p, int64_t i) {
  int64_t oa, ob, oc;
  entry_offsets(p, i, &oa, &ob, &oc);
  int64_t es = (int64_t)sere_dtype_size(p->ad);
  char *a = p->a.data + oa * es, *b = p->b.data + ob * es, *c = p->c.data + oc * es;
  if (p->ad == SERE_F32) sgemm_one(p, (const float *)a, (const float *)b, (float *)c);
  else igemm_one(p, (const int64_t *)a, (const int64_t *)b, (int64_t *)c);
}

#ifdef SERE_WITH_CUDA
/* Merges adjacent batch dims that a, b and c all walk as one. */
static void merge_batch_dims(mm_problem *p) {
  int kept = 0;
  for (int i = 0; i < p->nb; i++) {
    int o = kept - 1;
    if (kept > 0 && p->a.bs[o] == p->a.bs[i] * p->batch[i] && p->b.bs[o] == p->b.bs[i] * p->batch[i] &&
        p->c.bs[o] == p->c.bs[i] * p->batch[i] && p->batch[o] * p->batch[i] <= INT_MAX) {
      p->batch[o] *= p->batch[i];
      p->a.bs[o] = p->a.bs[i];
      p->b.bs[o] = p->b.bs[i];
      p->c.bs[o] = p->c.bs[i];
    } else {
      p->batch[kept] = p->batch[i];
      p->a.bs[kept] = p->a.bs[i];
      p->b.bs[kept] = p->b.bs[i];
      p->c.bs[kept] = p->c.bs[i];
      kept++;
    }
  }
  p->nb = kept;
}

/* The problem as cuBLAS calls: the innermost batch dim in each call, unless
 * entries accumulate into a shared c (concurrent entries would race), then
 * one entry per call. */
static int cuda_run(mm_problem *p) {
  merge_batch_dims(p);
  int last = p->nb - 1;
  int64_t count = sere_numel_raw(p->nb, p->batch), inner = p->accumulate || p->nb == 0 ? 1 : p->batch[last];
  CBLAS_TRANSPOSE ta = CblasNoTrans, tb = CblasNoTrans;
  sere_cuda_gemm_args g = {.n = (int)p->n, .k = (int)p->k, .m = (int)p->m, .ldc = (int)p->c.rs, .batch = (int)inner,
                           .bf16 = p->ad == SERE_BF16, .accumulate = p->accumulate};
  blas_layout(p->n, p->k, p->a.rs, p->a.cs, &ta, &g.lda);
  blas_layout(p->k, p->m, p->b.rs, p->b.cs, &tb, &g.ldb);
  g.a_trans = ta == CblasTrans;
  g.b_trans = tb == CblasTrans;
  if (inner > 1) {
    g.stride_a = p->a.bs[last];
    g.stride_b = p->b.bs[last];
    g.stride_c = p->c.bs[last];
  }
  int64_t es = (int64_t)sere_dtype_size(p->ad);
  for (int64_t i = 0; i < count; i += inner) {
    int64_t oa, ob, oc;
    entry_offsets(p, i, &oa, &ob, &oc);
    g.a = p->a.data + oa * es;
    g.b = p->b.data + ob * es;
    g.c = (float *)p->c.data + oc;
    if (sere_cuda_gemm(&g)) return -1;
  }
  return 0;
}
#endif

/* OpenBLAS runs a GEMM of at most this many multiply-adds on the calling
 * thread only, so such small products (attention heads) can run in
 * parallel over the batch without fighting its thread pool. */
#define SMALL_GEMM (1 << 18)

static int mm_run(mm_problem *p) {
  if (p->n == 0 || p->m == 0 || p->k == 0) return 0; /* the zero-filled output is the answer */
  fold_batch(p);
#ifdef SERE_WITH_CUDA
  if (p->dev == SERE_CUDA) return cuda_run(p);
#endif
  int64_t count = sere_numel_raw(p->nb, p->batch);
  /* entries accumulating into a shared output must run one after another */
  int parallel = !p->accumulate && count > 1 && p->n * p->m * p->k <= SMALL_GEMM;
#pragma omp parallel for if (parallel)
  for (int64_t i = 0; i < count; i++) mm_entry(p, i);
  return 0;
}

/* The dtype a and b are multiplied in: i64 for integers, else f32, except
 * that two bf16 operands on the GPU go to cuBLAS as they are. */
static sere_dtype operand_dtype(const sere_tensor *a, const sere_tensor *b, int integer) {
  if (integer) return SERE_I64;
  if (sere_device_of(a) == SERE_CUDA && a->dtype == SERE_BF16 && b->dtype == SERE_BF16) return SERE_BF16;
  return SERE_F32;
}

/* `t` in the operand dtype, in a layout the kernel reads directly; copied
 * only when the dtype differs or (floats) BLAS cannot read its matrices. */
static sere_tensor *operand(sere_tensor *t, sere_dtype cd) {
  if (t->dtype != cd) return sere_as_contiguous_dtype(t, cd);
  CBLAS_TRANSPOSE tr;
  int ld, r = t->ndim - 2;
  if (cd != SERE_I64 && !blas_layout(t->shape[r], t->shape[r + 1], t->stride[r], t->stride[r + 1], &tr, &ld))
    return sere_contiguous_raw(t);
  return sere_tensor_retain(t);
}

/* Describes matrix operand t ([..., rows, cols]) over the iteration batch:
 * missing or size-1 batch dims get stride 0. */
static void set_arg(mm_arg *x, const sere_tensor *t, const mm_problem *p) {
  int tb = t->ndim - 2;
  x->data = sere_data(t);
  x->rs = t->stride[tb];
  x->cs = t->stride[tb + 1];
  for (int i = 0; i < p->nb; i++) {
    int j = i - (p->nb - tb);
    x->bs[i] = j >= 0 && t->shape[j] != 1 ? t->stride[j] : 0;
  }
}

/* a @ b for a [..., n, k] and b [..., k, m] (at least 2-D, on one device,
 * batch dims broadcast, shapes already checked), summed down to the batch
 * shape `ob` (nob dims, right-aligned to the broadcast batch; a 1 there
 * sums that dim away). Returns a new contiguous [ob..., n, m] tensor on
 * their device: i64 when `integer`, else f32. */
static sere_tensor *product(sere_tensor *a, sere_tensor *b, int nob, const int64_t *ob, int integer) {
  sere_dtype cd = operand_dtype(a, b, integer);
  mm_problem p = {.ad = cd, .dev = sere_device_of(a)};
  int64_t batch[SERE_MAX_DIMS], shape[SERE_MAX_DIMS];
  int nb;
  if (sere_broadcast_shapes("matmul", a->ndim - 2, a->shape, b->ndim - 2, b->shape, &nb, batch)) return NULL;
  p.n = a->shape[a->ndim - 2];
  p.k = a->shape[a->ndim - 1];
  p.m = b->shape[b->ndim - 1];
  memcpy(shape, ob, sizeof(int64_t) * (size_t)nob);
  shape[nob] = p.n;
  shape[nob + 1] = p.m;
  sere_tensor *ca = operand(a, cd);
  sere_tensor *cb = ca ? operand(b, cd) : NULL;
  sere_tensor *c = cb ? sere_tensor_new_uninit_on(p.dev, integer ? SERE_I64 : SERE_F32, nob + 2, shape) : NULL;
  if (c) {
    p.nb = nb;
    memcpy(p.batch, batch, sizeof batch);
    set_arg(&p.a, ca, &p);
    set_arg(&p.b, cb, &p);
    set_arg(&p.c, c, &p);
    /* drop size-1 batch dims: they index nothing */
    int kept = 0;
    for (int i = 0; i < nb; i++) {
      if (batch[i] == 1) continue;
      p.batch[kept] = batch[i];
      p.a.bs[kept] = p.a.bs[i];
      p.b.bs[kept] = p.b.bs[i];
      p.c.bs[kept] = p.c.bs[i];
      if (p.c.bs[kept] == 0) p.accumulate = 1;
      kept++;
    }
    p.nb = kept;
    /* GEMMs overwrite c (beta = 0) unless entries accumulate or k is 0;
     * the integer kernel always accumulates */
    if (((p.accumulate || p.k == 0 || integer) && sere_fill_raw(c, 0)) || mm_run(&p)) {
      sere_tensor_release(c);
      c = NULL;
    }
  }
  sere_tensor_release(ca);
  sere_tensor_release(cb);
  return c;
}

/* A 1-D operand as a matrix: [k] -> [1, k] on the left, [k, 1] on the right. */
static sere_tensor *as_matrix(sere_tensor *t, int left) {
  if (t->ndim != 1) return sere_tensor_retain(t);
  int64_t k = t->shape[0], s = t->stride[0];
  int64_t shape[2] = {left ? 1 : k, left ? k : 1}, stride[2] = {left ? 1 : s, left ? s : 1};
  return sere_tensor_view_of(t, 2, shape, stride, t->offset);
}

/* The same storage with the last two dims swapped (no autograd). */
static sere_tensor *transpose_last(const sere_tensor *t) {
  int64_t shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS];
  int r = t->ndim - 2;
  memcpy(shape, t->shape, sizeof shape);
  memcpy(stride, t->stride, sizeof stride);
  shape[r] = t->shape[r + 1];
  shape[r + 1] = t->shape[r];
  stride[r] = t->stride[r + 1];
  stride[r + 1] = t->stride[r];
  return sere_tensor_view_of(t, t->ndim, shape, stride, t->offset);
}

/* Converts contiguous `c` to dtype d and views it as `shape`; releases c. */
static sere_tensor *finish(sere_tensor *c, sere_dtype d, int ndim, const int64_t *shape) {
  if (!c) return NULL;
  sere_tensor *conv = sere_as_contiguous_dtype(c, d);
  sere_tensor_release(c);
  if (!conv) return NULL;
  int64_t stride[SERE_MAX_DIMS], s = 1;
  for (int i = ndim - 1; i >= 0; i--) { stride[i] = s; s *= shape[i]; }
  sere_tensor *out = sere_tensor_view_of(conv, ndim, shape, stride, conv->offset);
  sere_tensor_release(conv);
  return out;
}

/* d(loss)/dA = dC B^T and d(loss)/dB = A^T dC, each summed over the batch
 * dims its input was broadcast along, and reshaped back to the input. */
static int matmul_backward(sere_node *nd, sere_tensor *g, sere_tensor **gi) {
  sere_tensor *a = sere_node_saved(nd, 0), *b = sere_node_saved(nd, 1);
  if (!a || !b) return -1;
  /* g as [batch..., n, m]: put back the dims the 1-D promotions removed */
  int64_t shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS];
  int nd_g = g->ndim;
  memcpy(shape, g->shape, sizeof shape);
  memcpy(stride, g->stride, sizeof stride);
  if (b->ndim == 1) { /* append m = 1 */
    shape[nd_g] = 1;
    stride[nd_g++] = 1;
  }
  if (a->ndim == 1) { /* insert n = 1 before m */
    shape[nd_g] = shape[nd_g - 1];
    stride[nd_g] = stride[nd_g - 1];
    shape[nd_g - 1] = 1;
    stride[nd_g - 1] = 1;
    nd_g++;
  }
  sere_tensor *G = sere_tensor_view_of(g, nd_g, shape, stride, g->offset);
  sere_tensor *A = as_matrix(a, 1), *B = as_matrix(b, 0);
  sere_tensor *At = A ? transpose_last(A) : NULL, *Bt = B ? transpose_last(B) : NULL;
  int rc = G && At && Bt ? 0 : -1;
  if (!rc && sere_edge_needed(nd, 0)) {
    gi[0] = finish(product(G, Bt, A->ndim - 2, A->shape, 0), nd->edges[0].dtype, a->ndim, a->shape);
    if (!gi[0]) rc = -1;
  }
  if (!rc && sere_edge_needed(nd, 1)) {
    gi[1] = finish(product(At, G, B->ndim - 2, B->shape, 0), nd->edges[1].dtype, b->ndim, b->shape);
    if (!gi[1]) rc = -1;
  }
  sere_tensor_release(G);
  sere_tensor_release(A);
  sere_tensor_release(B);
  sere_tensor_release(At);
  sere_tensor_release(Bt);
  return rc;
}

static sere_tensor *matmul_impl(const char *op, sere_tensor *a, sere_tensor *b) {
  char x[SHAPE_BUF], y[SHAPE_BUF];
  sere_device_type dev;
  if (sere_common_device(op, &dev, 2, (sere_tensor *[]){a, b})) return NULL;
  sere_shape_str(a, x, sizeof x);
  sere_shape_str(b, y, sizeof y);
  if (a->ndim == 0 || b->ndim == 0)
    return sere_fail("%s: both arguments need at least 1 dim, got shapes %s and %s", op, x, y);
  int64_t ka = a->shape[a->ndim - 1], kb = b->shape[b->ndim == 1 ? 0 : b->ndim - 2];
  if (ka != kb)
    return sere_fail("%s: shapes %s and %s cannot be multiplied (inner dims %lld and %lld differ)", op, x, y,
                     (long long)ka, (long long)kb);
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] > INT_MAX) return sere_fail("%s: dims of %s exceed 2^31 - 1", op, x);
  for (int i = 0; i < b->ndim; i++)
    if (b->shape[i] > INT_MAX) return sere_fail("%s: dims of %s exceed 2^31 - 1", op, y);
  int na = a->ndim > 2 ? a->ndim - 2 : 0, nb = b->ndim > 2 ? b->ndim - 2 : 0, nbatch;
  int64_t shape[SERE_MAX_DIMS];
  if (sere_broadcast_shapes(op, na, a->shape, nb, b->shape, &nbatch, shape)) {
    return sere_fail("%s: the batch dims of shapes %s and %s do not broadcast", op, x, y);
  }
  sere_dtype d = sere_promote(a->dtype, b->dtype);
  if (dev == SERE_CUDA && !sere_dtype_is_float(d))
    return sere_fail("%s: integer products are not implemented for cuda tensors (dtypes %s and %s)", op,
                     sere_dtype_name(a->dtype), sere_dtype_name(b->dtype));
  sere_tensor *A = as_matrix(a, 1), *B = A ? as_matrix(b, 0) : NULL;
  sere_tensor *c = B ? product(A, B, nbatch, shape, !sere_dtype_is_float(d)) : NULL;
  sere_tensor_release(A);
  sere_tensor_release(B);
  /* the result drops the dims that the 1-D promotions added */
  int nout = nbatch;
  if (a->ndim > 1) shape[nout++] = a->shape[a->ndim - 2];
  if (b->ndim > 1) shape[nout++] = b->shape[b->ndim - 1];
  sere_tensor *out = finish(c, d, nout, shape);
  if (!out || !sere_needs_grad(2, (sere_tensor *[]){a, b})) return out;
  sere_node *n = sere_node_new(op, matmul_backward, 2, (sere_tensor *[]){a, b});
  if (!n) { sere_tensor_release(out); return NULL; }
  sere_node_save(n, 0, a);
  sere_node_save(n, 1, b);
  sere_attach(out, n);
  return out;
}

/* matmul_impl, on bf16 copies of f32 operands under autocast (autocast.h). */
static sere_tensor *matmul_entry(const char *op, sere_tensor *a, sere_tensor *b) {
  sere_tensor *in[2] = {a, b}, *cast[2];
  if (!sere_autocast_lowers(2, in)) return matmul_impl(op, a, b);
  if (sere_autocast_operands(2, in, cast)) return NULL;
  sere_tensor *out = matmul_impl(op, cast[0], cast[1]);
  sere_autocast_release(2, cast);
  return out;
}

sere_tensor *sere_matmul(sere_tensor *a, sere_tensor *b) { return matmul_entry("matmul", a, b); }

sere_tensor *sere_bmm(sere_tensor *a, sere_tensor *b) {
  char x[SHAPE_BUF], y[SHAPE_BUF];
  if (a->ndim != 3 || b->ndim != 3 || a->shape[0] != b->shape[0])
    return sere_fail("bmm: expects [B, n, k] and [B, k, m] with the same B, got shapes %s and %s",
                     sere_shape_str(a, x, sizeof x), sere_shape_str(b, y, sizeof y));
  return matmul_entry("bmm", a, b);
}
