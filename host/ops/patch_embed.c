/* patch_embed.c — the ViT patch embedding (method.md 2.2): a convolution
 * whose kernel equals its stride (p x p, no padding), as im2col + one GEMM.
 *
 * The image [B, C, H, W] is unfolded into the patch matrix P [B*Hp*Wp, K]
 * (K = C*p*p, columns in (c, ky, kx) order, so weight [D, C, p, p] is the
 * row-major matrix W [D, K]) and Y = P W^T + b is one cblas_sgemm into a
 * [B, Hp, Wp, D] buffer. The result is that buffer seen as [B, D, Hp, Wp]
 * (channels-last strides, like PyTorch's channels_last format): the ViT
 * flattens it to [B, D, N] and transposes to [B, N, D], which is then
 * contiguous again without a copy.
 *
 * Backward: dW = dY^T P with P rebuilt from the saved image (never kept),
 * db = column sums of dY, and dX = col2im(dY W) only when x requires grad.
 * Patches do not overlap, so im2col and col2im are permuting copies; rows
 * and columns beyond Hp*p, Wp*p (H, W not multiples of p) get zero gradient.
 *
 * CUDA tensors take the same steps with gather kernels for im2col and
 * col2im (kernels/patch_embed.cu) and cuBLAS for the GEMMs; the forward
 * GEMM runs in bf16 (f32 accumulation) when x and weight are both bf16,
 * everything else in f32 as on the CPU. Under autocast (autocast.h) the
 * f32 operands, bias included, are cast to bf16 first, as PyTorch does
 * for a convolution.
 */
#include <cblas.h>
#include <limits.h>
#include <string.h>

#include "autocast.h"
#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/matmul.h"
#include "../../kernels/patch_embed.h"
#endif

#define SHAPE_BUF 160
#define PARALLEL_MIN 32768

typedef struct {
  int64_t B, C, H, W, p, Hp, Wp, D;
} pe_dims;

/* Moves patches between the image x [B, C, H, W] and the patch matrix cols
 * [B*Hp*Wp, C*p*p] (both contiguous f32): unfolds x into cols when
 * `to_cols`, else folds cols back into x (which must be zero wherever no
 * patch lands). Each task is one row of patches. */
static void im2col(const pe_dims *d, float *x, float *cols, int to_cols) {
  int64_t p = d->p, K = d->C * p * p, rows = d->B * d->Hp;
#pragma omp parallel for schedule(static) if (rows * d->Wp * K > PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    int64_t b = r / d->Hp, i = r % d->Hp;
    for (int64_t c = 0; c < d->C; c++)
      for (int64_t ky = 0; ky < p; ky++) {
        float *img = x + ((b * d->C + c) * d->H + i * p + ky) * d->W;
        float *col = cols + r * d->Wp * K + (c * p + ky) * p;
        for (int64_t j = 0; j < d->Wp; j++) {
          if (to_cols) memcpy(col + j * K, img + j * p, (size_t)p * sizeof(float));
          else memcpy(img + j * p, col + j * K, (size_t)p * sizeof(float));
        }
      }
  }
}

/* The patch matrix of image x, as a new [M, K] tensor of dtype cd on x's
 * device (cd is f32, or bf16 for a bf16 x on the GPU). */
static sere_tensor *patches_of(const pe_dims *d, sere_tensor *x, sere_dtype cd) {
  int64_t shape[2] = {d->B * d->Hp * d->Wp, d->C * d->p * d->p};
  sere_tensor *cols = sere_tensor_new_uninit_on(sere_device_of(x), cd, 2, shape);
  if (!cols) return NULL;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(x) == SERE_CUDA) {
    if (!sere_cuda_im2col(x, (int)d->p, cols)) return cols;
    sere_tensor_release(cols);
    return NULL;
  }
#endif
  sere_tensor *xf = sere_as_contiguous_dtype(x, SERE_F32);
  if (xf) im2col(d, sere_data(xf), sere_data(cols), 1);
  else {
    sere_tensor_release(cols);
    cols = NULL;
  }
  sere_tensor_release(xf);
  return cols;
}

/* The image gradient [B, C, H, W] (f32, on dcols' device) of the patch
 * matrix gradient dcols [M, K]; zero where no patch lands. */
static sere_tensor *image_of(const pe_dims *d, sere_tensor *dcols, const int64_t *xshape) {
  sere_device_type dev = sere_device_of(dcols);
  int covered = d->Hp * d->p == d->H && d->Wp * d->p == d->W;
  sere_tensor *dx = dev == SERE_CUDA || covered ? sere_tensor_new_uninit_on(dev, SERE_F32, 4, xshape)
                                                : sere_tensor_new(SERE_F32, 4, xshape);
  if (!dx) return NULL;
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) {
    if (!sere_cuda_col2im(dcols, (int)d->p, dx)) return dx;
    sere_tensor_release(dx);
    return NULL;
  }
#endif
  im2col(d, sere_data(dx), sere_data(dcols), 0);
  return dx;
}

/* c = op(a) @ op(b) (or += with `accumulate`) for contiguous row-major
 * a [M, K] ([K, M] when ta), b [K, N] ([N, K] when tb) and f32 c [M, N],
 * on their device; a and b are f32, or both bf16 on the GPU. */
static int gemm(int M, int N, int K, sere_tensor *a, int ta, sere_tensor *b, int tb, sere_tensor *c,
                int accumulate) {
  int lda = ta ? M : K, ldb = tb ? K : N;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(c) == SERE_CUDA) {
    sere_cuda_gemm_args g = {.n = M, .k = K, .m = N, .a = sere_data(a), .b = sere_data(b), .c = sere_data(c),
                             .a_trans = ta, .b_trans = tb, .lda = lda, .ldb = ldb, .ldc = N, .batch = 1,
                             .bf16 = a->dtype == SERE_BF16, .accumulate = accumulate};
    return sere_cuda_gemm(&g);
  }
#endif
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f,
              sere_data(a), lda, sere_data(b), ldb, accumulate ? 1.0f : 0.0f, sere_data(c), N);
  return 0;
}

static int check_args(sere_tensor *x, sere_tensor *w, sere_tensor *bias, int p, pe_dims *d) {
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (x->ndim != 4 || !sere_dtype_is_float(x->dtype)) {
    sere_fail("patch_embed: x must be a float [B, C, H, W] tensor, got %s of shape %s", sere_dtype_name(x->dtype),
              sere_shape_str(x, a, sizeof a));
    return -1;
  }
  if (p < 1) { sere_fail("patch_embed: patch size must be positive, got %d", p); return -1; }
  if (w->ndim != 4 || !sere_dtype_is_float(w->dtype) || w->shape[1] != x->shape[1] || w->shape[2] != p ||
      w->shape[3] != p || w->shape[0] < 1 || x->shape[1] < 1) {
    sere_fail("patch_embed: weight must be a float [D, %lld, %d, %d] tensor (D >= 1) for x of shape %s and patch "
              "size %d, got %s of shape %s", (long long)x->shape[1], p, p, sere_shape_str(x, a, sizeof a), p,
              sere_dtype_name(w->dtype), sere_shape_str(w, b, sizeof b));
    return -1;
  }
  if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0] || !sere_dtype_is_float(bias->dtype))) {
    sere_fail("patch_embed: bias must be a float [%lld] tensor for weight of shape %s, got %s of shape %s",
              (long long)w->shape[0], sere_shape_str(w, a, sizeof a), sere_dtype_name(bias->dtype),
              sere_shape_str(bias, b, sizeof b));
    return -1;
  }
  *d = (pe_dims){x->shape[0], x->shape[1], x->shape[2], x->shape[3], p, x->shape[2] / p, x->shape[3] / p, w->shape[0]};
  if (d->Hp < 1 || d->Wp < 1) {
    sere_fail("patch_embed: image of shape %s is smaller than the patch size %d", sere_shape_str(x, a, sizeof a), p);
    return -1;
  }
  if (d->B * d->Hp * d->Wp > INT_MAX || d->C * p * p > INT_MAX || d->D > INT_MAX) {
    sere_fail("patch_embed: x of shape %s with weight %s is too large for one BLAS call",
              sere_shape_str(x, a, sizeof a), sere_shape_str(w, b, sizeof b));
    return -1;
  }
  return 0;
}

static pe_dims dims_of_node(const sere_node *n) {
  const int64_t *xs = n->edges[0].shape;
  int64_t p = n->ints[0];
  return (pe_dims){xs[0], xs[1], xs[2], xs[3], p, xs[2] / p, xs[3] / p, n->edges[1].shape[0]};
}

/* Converts a f32 result to `dtype` (a no-op for f32) into gi; releases t. */
static int emit(sere_tensor *t, sere_dtype dtype, sere_tensor **gi) {
  *gi = t ? sere_as_contiguous_dtype(t, dtype) : NULL;
  sere_tensor_release(t);
  return *gi ? 0 : -1;
}

/* saved: 0 x (when weight needs grad), 1 weight (when x needs grad). */
static int patch_embed_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  pe_dims d = dims_of_node(n);
  sere_device_type dev = sere_device_of(g);
  int M = (int)(d.B * d.Hp * d.Wp), K = (int)(d.C * d.p * d.p), D = (int)d.D;
  /* dY as the row-major [M, D] matrix: [B, D, Hp, Wp] -> [B, Hp, Wp, D]. */
  sere_tensor *gp = sere_permute(g, 4, (int[]){0, 2, 3, 1});
  sere_tensor *gm = gp ? sere_as_contiguous_dtype(gp, SERE_F32) : NULL;
  sere_tensor_release(gp);
  if (!gm) return -1;
  int rc = 0;
  if (sere_edge_needed(n, 1)) {
    sere_tensor *x = sere_node_saved(n, 0);
    sere_tensor *cols = x ? patches_of(&d, x, SERE_F32) : NULL;
    sere_tensor *dw = cols ? sere_tensor_new_on(dev, SERE_F32, 4, n->edges[1].shape) : NULL;
    if (dw && M > 0 && gemm(D, K, M, gm, 1, cols, 0, dw, 0)) {
      sere_tensor_release(dw);
      dw = NULL;
    }
    sere_tensor_release(cols);
    rc |= emit(dw, n->edges[1].dtype, &gi[1]);
  }
  if (!rc && n->ninputs > 2 && sere_edge_needed(n, 2))
    rc |= emit(sere_sum(gm, 3, (int[]){0, 1, 2}, 0), n->edges[2].dtype, &gi[2]);
  if (!rc && sere_edge_needed(n, 0)) {
    sere_tensor *w = sere_node_saved(n, 1);
    sere_tensor *wf = w ? sere_as_contiguous_dtype(w, SERE_F32) : NULL;
    sere_tensor *dcols = wf ? sere_tensor_new_uninit_on(dev, SERE_F32, 2, (int64_t[]){M, K}) : NULL;
    sere_tensor *dx = dcols && (M == 0 || !gemm(M, K, D, gm, 0, wf, 0, dcols, 0))
                          ? image_of(&d, dcols, n->edges[0].shape) : NULL;
    sere_tensor_release(wf);
    sere_tensor_release(dcols);
    rc |= emit(dx, n->edges[0].dtype, &gi[0]);
  }
  sere_tensor_release(gm);
  return rc;
}

/* Records the node; saves only what each needed gradient reads. */
static sere_tensor *record(sere_tensor *out, sere_tensor *x, sere_tensor *weight, sere_tensor *bias, int p) {
  sere_tensor *in[3] = {x, weight, bias};
  if (!sere_needs_grad(3, in)) return out;
  sere_node *n = sere_node_new("patch_embed", patch_embed_backward, bias ? 3 : 2, in);
  if (!n || (sere_edge_needed(n, 1) && sere_node_save(n, 0, x)) ||
      (sere_edge_needed(n, 0) && sere_node_save(n, 1, weight))) {
    if (n) sere_node_release(n);
    sere_tensor_release(out);
    return NULL;
  }
  n->ints[0] = p;
  sere_attach(out, n);
  return out;
}

/* Sets every row of the f32 [M, D] matrix y to the f32 bias (or zeros). */
static int bias_rows(sere_tensor *y, sere_tensor *bf, int64_t M, int64_t D) {
  if (sere_device_of(y) == SERE_CUDA) {
    if (!bf) return sere_fill_raw(y, 0);
    sere_tensor *rows = sere_tensor_view_of(bf, 2, (int64_t[]){M, D}, (int64_t[]){0, 1}, bf->offset);
    sere_tensor *y2 = rows ? sere_tensor_view_of(y, 2, (int64_t[]){M, D}, (int64_t[]){D, 1}, y->offset) : NULL;
    int rc = y2 ? sere_copy_raw(y2, rows) : -1;
    sere_tensor_release(rows);
    sere_tensor_release(y2);
    return rc;
  }
  float *yd = sere_data(y);
  const float *bd = bf ? sere_data(bf) : NULL;
#pragma omp parallel for schedule(static) if (M * D > PARALLEL_MIN)
  for (int64_t r = 0; r < M; r++) {
    if (bd) memcpy(yd + r * D, bd, (size_t)D * sizeof(float));
    else memset(yd + r * D, 0, (size_t)D * sizeof(float));
  }
  return 0;
}

sere_tensor *sere_patch_embed(sere_tensor *x, sere_tensor *weight, sere_tensor *bias, int p) {
  sere_tensor *inputs[3] = {x, weight, bias}, *cast[3];
  if (sere_autocast_lowers(3, inputs)) { /* bf16 copies of f32 operands (autocast.h) */
    if (sere_autocast_operands(3, inputs, cast)) return NULL;
    sere_tensor *out = sere_patch_embed(cast[0], cast[1], cast[2], p);
    sere_autocast_release(3, cast);
    return out;
  }
  pe_dims d;
  sere_device_type dev;
  if (sere_common_device("patch_embed", &dev, 3, inputs)) return NULL;
  if (check_args(x, weight, bias, p, &d)) return NULL;
  sere_dtype odt = sere_promote(x->dtype, weight->dtype);
  if (bias) odt = sere_promote(odt, bias->dtype);
  /* the GEMM's operand dtype: bf16 straight to cuBLAS, else f32 */
  sere_dtype cd = dev == SERE_CUDA && x->dtype == SERE_BF16 && weight->dtype == SERE_BF16 ? SERE_BF16 : SERE_F32;
  int M = (int)(d.B * d.Hp * d.Wp), K = (int)(d.C * p * p), D = (int)d.D;
  sere_tensor *wc = sere_as_contiguous_dtype(weight, cd);
  sere_tensor *bf = wc && bias ? sere_as_contiguous_dtype(bias, SERE_F32) : NULL;
  sere_tensor *cols = wc && (bf || !bias) ? patches_of(&d, x, cd) : NULL;
  sere_tensor *y = cols ? sere_tensor_new_uninit_on(dev, SERE_F32, 4, (int64_t[]){d.B, d.Hp, d.Wp, d.D}) : NULL;
  sere_tensor *out = NULL;
  /* Y starts as the bias rows; the GEMM accumulates P W^T onto them. */
  if (y && !bias_rows(y, bf, M, D) && (M == 0 || !gemm(M, D, K, cols, 0, wc, 1, y, 1))) {
    sere_tensor *yo = sere_as_contiguous_dtype(y, odt);
    if (yo) {
      int64_t shape[4] = {d.B, d.D, d.Hp, d.Wp}, stride[4] = {d.Hp * d.Wp * d.D, 1, d.Wp * d.D, d.D};
      out = sere_tensor_view_of(yo, 4, shape, stride, 0);
    }
    sere_tensor_release(yo);
  }
  sere_tensor_release(wc);
  sere_tensor_release(bf);
  sere_tensor_release(cols);
  sere_tensor_release(y);
  return out ? record(out, x, weight, bias, p) : NULL;
}
