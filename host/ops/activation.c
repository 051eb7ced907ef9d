/* activation.c — GELU (exact, erf form) and ReLU, with their backward.
 *
 * GELU is x * Phi(x), Phi the standard normal CDF. It is one of the hottest
 * ops of a ViT (the MLP's [tokens, 4 D] activations) and libm's erff does
 * not vectorise, so Phi has its own branch-free form here. With a = |x|:
 *
 *   Phi(-a) = erfc(a / sqrt 2) / 2 = exp(-a^2 / 2) * R(a / sqrt 2) / 2,
 *   Phi(a)  = 1 - Phi(-a),
 *
 * R(t) = erfc(t) exp(t^2) is sere_erfcx of vecmath.h, a (4, 5) rational
 * (relative error 5e-9) evaluated in double. exp(-a^2 / 2) runs in f32 on an exact split of a^2 (ah has its
 * low 12 mantissa bits cleared, so ah^2 is exact and a^2 = ah^2 +
 * al (a + ah)). Measured against double-precision erfc on 2^24 points of
 * [-13.3, 13.3]: GELU within 3 ulp, its derivative within 3 ulp where
 * |gelu'| >= 0.01 and within 2e-9 elsewhere (around its zero at -0.75).
 * Below -13.2 the result would be a denormal: gelu is -0 there. (PyTorch's
 * vectorised erf is off by hundreds of ulp for x < -1.)
 *
 * The two GELU loops are compiled for AVX-512 and AVX2 + FMA too, picked
 * when the program loads (SERE_WIDE_SIMD): GELU is bound by arithmetic, not
 * memory, and the wider vectors make it 2.8 times faster than SSE2 alone.
 *
 * ReLU saves its output (y > 0 exactly where x > 0), GELU its input.
 * CUDA tensors run kernels/activation.cu (f32 or bf16 in and out, no
 * conversion passes). */
#include <math.h>
#include <string.h>

#include "../../kernels/activation.h" /* sere_activation; the kernels when built with CUDA */
#include "ops.h"
#include "vecmath.h"

#define PARALLEL_MIN 32768
#define BLOCK 8192
#define GELU_LIM 13.2f /* beyond, Phi(-|x|) is below f32's smallest normal */

/* e^(hi + lo) for hi in [-87.2, 0] and |lo| <= 2^-10 |hi|, within 1.2 ulp:
 * sere_exp_core (vecmath.h) with the argument in two parts. hi = n ln2 + r
 * (hi - n * C1 is exact because C1 has 9 bits), lo joins the small reduced
 * argument r, and 2^n goes into the exponent bits (normal for n >= -126,
 * where sere_exp_core's 2 * 2^(n-1) would not be). */
static inline float exp_split(float hi, float lo) {
  float nb = hi * 1.44269504f + 12582912.0f;
  float n = nb - 12582912.0f;
  float r = hi - n * 0.693359375f;
  float p = sere_exp_poly(r + n * 2.12194440e-4f + lo);
  uint32_t bits;
  memcpy(&bits, &nb, sizeof bits); /* n + 0x4B400000 */
  bits = (bits - 0x4B400000u + 127u) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* For a = min(|x|, GELU_LIM): R(a / sqrt 2) (in double) and
 * *ex = exp(-a^2 / 2) in f32, or 0 beyond GELU_LIM (where Phi(-|x|) and
 * the density are below f32's smallest normal). */
static inline double normal_tail(float x, float *a_out, float *ex_out) {
  const float ax = fabsf(x);
  /* NaN -> GELU_LIM: no NaN reaches the exponent bits */
  const float a = sere_select_f32(ax < GELU_LIM, ax, GELU_LIM);
  uint32_t bits;
  memcpy(&bits, &a, sizeof bits);
  bits &= 0xfffff000u;
  float ah;
  memcpy(&ah, &bits, sizeof ah);
  const float al = a - ah;
  const float ex = exp_split(-0.5f * ah * ah, -0.5f * al * (a + ah));
  *a_out = a;
  *ex_out = sere_select_f32(ax <= GELU_LIM, ex, 0.0f);
  return sere_erfcx(a * 0.70710678118654752);
}

/* Kernels over one block: forward out = f(a), backward out = f'(b) * a
 * with a the output gradient and b the saved tensor.
 * gelu(x) = x Phi(x) with Phi(-a) = ex h, h = R / 2; for x < 0 the product
 * runs as (x ex) h so that it stays accurate where Phi(x) is a denormal. */
SERE_WIDE_SIMD static void gelu_forward(const float *restrict x, const float *restrict unused, float *restrict y,
                                  int64_t n) {
  (void)unused;
  for (int64_t i = 0; i < n; i++) {
    float a, ex;
    const float h = 0.5f * (float)normal_tail(x[i], &a, &ex);
    y[i] = sere_select_f32(x[i] < 0.0f, (x[i] * ex) * h, x[i] * (1.0f - ex * h));
  }
}

/* gelu'(x) = Phi(x) + x pdf(x) = ex k for x < 0 and 1 - ex k for x > 0,
 * k = R / 2 - a / sqrt(2 pi). Phi and x pdf cancel near x = -0.75; inside
 * k they cancel in double, on R's own digits. 0 * x brings back NaN for
 * NaN and infinite x. */
SERE_WIDE_SIMD static void gelu_backward(const float *restrict g, const float *restrict x, float *restrict gx,
                                   int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float a, ex;
    const double r = normal_tail(x[i], &a, &ex);
    const float d = ex * (float)(0.5 * r - 0.39894228040143268 * a);
    gx[i] = g[i] * (sere_select_f32(x[i] < 0.0f, d, 1.0f - d) + 0.0f * x[i]);
  }
}

/* x < 0 ? 0 : x keeps NaN, like torch.relu. */
static void relu_forward(const float *restrict x, const float *restrict unused, float *restrict y, int64_t n) {
  (void)unused;
  for (int64_t i = 0; i < n; i++) y[i] = sere_select_f32(x[i] < 0.0f, 0.0f, x[i]);
}

static void relu_backward(const float *restrict g, const float *restrict y, float *restrict gx, int64_t n) {
  for (int64_t i = 0; i < n; i++) gx[i] = sere_select_f32(y[i] > 0.0f, g[i], 0.0f);
}

typedef void (*act_kernel)(const float *restrict, const float *restrict, float *restrict, int64_t);

/* Indexed by sere_activation (kernels/activation.h). */
static const struct {
  const char *name;
  act_kernel forward, backward;
  int saves_output; /* else the input */
} acts[] = {{"gelu", gelu_forward, gelu_backward, 0}, {"relu", relu_forward, relu_backward, 1}};

static void run(act_kernel fn, const float *a, const float *b, float *out, int64_t n) {
  int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
  for (int64_t j = 0; j < nblocks; j++) {
    int64_t lo = j * BLOCK, m = n - lo < BLOCK ? n - lo : BLOCK;
    fn(a + lo, b ? b + lo : NULL, out + lo, m);
  }
}

#ifdef SERE_WITH_CUDA
/* t contiguous in f32 or bf16, as the kernels take it (new reference). */
static sere_tensor *cuda_operand(sere_tensor *t) {
  return sere_as_contiguous_dtype(t, t->dtype == SERE_BF16 ? SERE_BF16 : SERE_F32);
}

static sere_tensor *map_cuda(sere_activation which, int backward, sere_tensor *a, sere_tensor *b, sere_dtype d) {
  sere_tensor *ac = cuda_operand(a);
  sere_tensor *bc = b && ac ? cuda_operand(b) : NULL;
  sere_tensor *out = ac && (bc || !b) ? sere_tensor_new_uninit_like(a, d) : NULL;
  if (out && sere_cuda_activation(which, backward, sere_data(ac), ac->dtype, bc ? sere_data(bc) : NULL,
                                  bc ? (int)bc->dtype : SERE_F32, sere_data(out), d, sere_numel(a))) {
    sere_tensor_release(out);
    out = NULL;
  }
  sere_tensor_release(ac);
  sere_tensor_release(bc);
  return out;
}
#endif

/* Activation `which` (backward: its gradient) over a (and b) in dtype d:
 * computed in f32, converted to d. */
static sere_tensor *map(sere_activation which, int backward, sere_tensor *a, sere_tensor *b, sere_dtype d) {
#ifdef SERE_WITH_CUDA
  if (sere_device_of(a) == SERE_CUDA) return map_cuda(which, backward, a, b, d);
#endif
  act_kernel fn = backward ? acts[which].backward : acts[which].forward;
  sere_tensor *af = sere_as_contiguous_dtype(a, SERE_F32);
  sere_tensor *bf = b && af ? sere_as_contiguous_dtype(b, SERE_F32) : NULL;
  sere_tensor *out = af && (bf || !b) ? sere_tensor_new_uninit(SERE_F32, a->ndim, a->shape) : NULL;
  if (out) run(fn, sere_data(af), bf ? sere_data(bf) : NULL, sere_data(out), sere_numel(a));
  sere_tensor_release(af);
  sere_tensor_release(bf);
  return sere_grad_as(out, d);
}

/* ints[0]: which activation. saved[0]: the input or a detached output. */
static int act_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  sere_tensor *s = sere_node_saved(n, 0);
  if (!s) return -1;
  gi[0] = map((sere_activation)n->ints[0], 1, g, s, n->edges[0].dtype);
  return gi[0] ? 0 : -1;
}

static sere_tensor *activation(sere_tensor *x, sere_activation which) {
  const char *name = acts[which].name;
  if (!sere_dtype_is_float(x->dtype)) {
    char s[160];
    return sere_fail("%s: expects a float tensor, got %s of shape %s; convert it first with :float()", name,
                     sere_dtype_name(x->dtype), sere_shape_str(x, s, sizeof s));
  }
  sere_tensor *out = map(which, 0, x, NULL, x->dtype);
  if (!out || !sere_needs_grad(1, &x)) return out;
  sere_node *n = sere_node_new(name, act_backward, 1, &x);
  if (n) sere_attach(out, n);
  if (!n || (acts[which].saves_output ? sere_node_save_output(n, 0, out) : sere_node_save(n, 0, x))) {
    sere_tensor_release(out);
    return NULL;
  }
  n->ints[0] = which;
  return out;
}

sere_tensor *sere_gelu(sere_tensor *x) { return activation(x, SERE_ACT_GELU); }
sere_tensor *sere_relu(sere_tensor *x) { return activation(x, SERE_ACT_RELU); }
