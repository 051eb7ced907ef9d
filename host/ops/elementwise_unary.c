/* elementwise_unary.c — unary element-wise functions (neg, exp, log, tanh,
 * sigmoid, round, logical_not, ...) and clamp, their in-place versions and
 * backward functions, run by the driver of elementwise.c (elementwise.h).
 *
 * Ops that keep integers (neg, abs, sign, square, floor, ceil, round, and
 * clamp with whole bounds) compute exactly in i64; the others turn integer
 * tensors into f32. A gradient that needs the op's output (exp, tanh,
 * sigmoid, ...) saves a detached view of it (sere_node_save_output).
 * On the GPU every op here is one launch of kernels/elementwise.cu.
 *
 * exp, log, tanh, sigmoid, sin, cos and erf use the vectorisable functions
 * of vecmath.h (accuracies stated there), and the f32 kernels are compiled
 * for AVX-512 and AVX2 too (SERE_WIDE_SIMD): libm's expf/tanhf/logf keep a
 * loop scalar, tanh alone was 5x slower than PyTorch's. */
#include <math.h>
#include <stdio.h>

#include "elementwise.h"
#include "vecmath.h"

static const char *const unary_names[] = {
    "neg",     "exp",        "log",    "sqrt",  "rsqrt", "abs",   "sign",  "sin",   "cos",   "tanh",
    "sigmoid", "reciprocal", "square", "floor", "ceil",  "round", "log1p", "expm1", "erf",   "logical_not"};

/* What the gradient of each op reads. */
enum { GRAD_NONE, GRAD_NEG, GRAD_ZERO, GRAD_INPUT, GRAD_OUTPUT };
static const unsigned char grad_kind[] = {
    [SERE_NEG] = GRAD_NEG,        [SERE_EXP] = GRAD_OUTPUT,     [SERE_LOG] = GRAD_INPUT,
    [SERE_SQRT] = GRAD_OUTPUT,    [SERE_RSQRT] = GRAD_OUTPUT,   [SERE_ABS] = GRAD_INPUT,
    [SERE_SIGN] = GRAD_ZERO,      [SERE_SIN] = GRAD_INPUT,      [SERE_COS] = GRAD_INPUT,
    [SERE_TANH] = GRAD_OUTPUT,    [SERE_SIGMOID] = GRAD_OUTPUT, [SERE_RECIPROCAL] = GRAD_OUTPUT,
    [SERE_SQUARE] = GRAD_INPUT,   [SERE_FLOOR] = GRAD_ZERO,     [SERE_CEIL] = GRAD_ZERO,
    [SERE_ROUND] = GRAD_ZERO,     [SERE_LOG1P] = GRAD_INPUT,    [SERE_EXPM1] = GRAD_OUTPUT,
    [SERE_ERF] = GRAD_INPUT,      [SERE_LOGICAL_NOT] = GRAD_NONE};

static int kind_of(int op) { return op == SERE_EWOP_CLAMP ? GRAD_INPUT : grad_kind[op]; }

/* ---- kernels (every input has stride 1) ------------------------------- */
#define MAP1(T, expr)                                                                        \
  do {                                                                                       \
    const T *xs = in[0];                                                                     \
    for (int64_t i = 0; i < n; i++) { const T x = xs[i]; o[i] = (expr); }                   \
  } while (0)

#define ZIP2(T, expr)                                                                        \
  do {                                                                                       \
    const T *xs = in[0], *ys = in[1];                                                        \
    for (int64_t i = 0; i < n; i++) { const T x = xs[i], y = ys[i]; o[i] = (expr); }         \
  } while (0)

/* min(max(x, lo), hi) as PyTorch: NaN stays NaN, and lo > hi gives hi. */
static inline float clampf(float x, float lo, float hi) {
  float t = x < lo ? lo : x;
  return t > hi ? hi : t;
}

static inline int64_t clampi(int64_t x, int64_t lo, int64_t hi) {
  int64_t t = x < lo ? lo : x;
  return t > hi ? hi : t;
}

SERE_WIDE_SIMD static void k_unary_f32(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st,
                                       int64_t n) {
  float *o = out;
  const float lo = p->f0, hi = p->f1;
  switch (p->op) {
    case SERE_NEG: MAP1(float, -x); break;
    case SERE_EXP: sere_exp_row(o, in[0], n); break;
    case SERE_LOG: MAP1(float, sere_log_core(x)); break;
    case SERE_SQRT: MAP1(float, sqrtf(x)); break;
    case SERE_RSQRT: MAP1(float, 1.0f / sqrtf(x)); break;
    case SERE_ABS: MAP1(float, fabsf(x)); break;
    case SERE_SIGN: MAP1(float, (float)((x > 0) - (x < 0))); break;
    case SERE_SIN: case SERE_COS: sere_sin_row(o, in[0], n, p->op == SERE_COS); break;
    case SERE_TANH: MAP1(float, sere_tanh_core(x)); break;
    case SERE_SIGMOID: MAP1(float, 1.0f / (1.0f + sere_exp_core(-x))); break;
    case SERE_RECIPROCAL: MAP1(float, 1.0f / x); break;
    case SERE_SQUARE: MAP1(float, x * x); break;
    case SERE_FLOOR: MAP1(float, floorf(x)); break;
    case SERE_CEIL: MAP1(float, ceilf(x)); break;
    case SERE_ROUND: MAP1(float, nearbyintf(x)); break; /* half to even: the default rounding mode */
    case SERE_LOG1P: MAP1(float, log1pf(x)); break;
    case SERE_EXPM1: MAP1(float, expm1f(x)); break;
    case SERE_ERF: MAP1(float, sere_erf_core(x)); break;
    case SERE_EWOP_CLAMP: MAP1(float, clampf(x, lo, hi)); break;
  }
}

/* Negation wraps around through uint64_t like the binary integer ops. */
static void k_unary_i64(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  int64_t *o = out;
  const int64_t lo = p->i0, hi = p->i1;
  switch (p->op) {
    case SERE_NEG: MAP1(int64_t, (int64_t)(0 - (uint64_t)x)); break;
    case SERE_ABS: MAP1(int64_t, x < 0 ? (int64_t)(0 - (uint64_t)x) : x); break;
    case SERE_SIGN: MAP1(int64_t, (x > 0) - (x < 0)); break;
    case SERE_SQUARE: MAP1(int64_t, (int64_t)((uint64_t)x * (uint64_t)x)); break;
    case SERE_EWOP_CLAMP: MAP1(int64_t, clampi(x, lo, hi)); break;
    default: MAP1(int64_t, x); break; /* floor, ceil, round of an integer */
  }
}

static void k_logical_not(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  uint8_t *o = out;
  MAP1(uint8_t, !x);
}

/* Gradients: x is the output gradient, y the saved input or output. */
SERE_WIDE_SIMD static void k_unary_grad(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st,
                                        int64_t n) {
  float *o = out;
  const float lo = p->f0, hi = p->f1;
  switch (p->op) {
    case SERE_EXP: ZIP2(float, x * y); break;
    case SERE_LOG: ZIP2(float, x / y); break;
    case SERE_SQRT: ZIP2(float, 0.5f * x / y); break;
    case SERE_RSQRT: ZIP2(float, -0.5f * x * y * y * y); break;
    case SERE_ABS: ZIP2(float, y > 0 ? x : y < 0 ? -x : 0.0f); break;
    case SERE_SIN: case SERE_COS: { /* x cos y, -x sin y; o is never an input (a new tensor or a buffer) */
      const float *xs = in[0], sign = p->op == SERE_SIN ? 1.0f : -1.0f;
      sere_sin_row(o, in[1], n, p->op == SERE_SIN);
      for (int64_t i = 0; i < n; i++) o[i] *= sign * xs[i];
      break;
    }
    case SERE_TANH: ZIP2(float, x * (1.0f - y * y)); break;
    case SERE_SIGMOID: ZIP2(float, x * y * (1.0f - y)); break;
    case SERE_RECIPROCAL: ZIP2(float, -x * y * y); break;
    case SERE_SQUARE: ZIP2(float, 2.0f * x * y); break;
    case SERE_LOG1P: ZIP2(float, x / (1.0f + y)); break;
    case SERE_EXPM1: ZIP2(float, x * (y + 1.0f)); break;
    case SERE_ERF: ZIP2(float, 1.12837917f * x * sere_exp_core(-y * y)); break; /* 2 / sqrt(pi) */
    case SERE_EWOP_CLAMP: ZIP2(float, y >= lo && y <= hi ? x : 0.0f); break;
  }
}

/* ---- dtypes and plans ------------------------------------------------- */
static sere_dtype unary_result_type(int op, sere_dtype d) {
  if (op == SERE_LOGICAL_NOT) return SERE_BOOL;
  int keeps_integers = op == SERE_NEG || op == SERE_ABS || op == SERE_SIGN || op == SERE_SQUARE ||
                       op == SERE_FLOOR || op == SERE_CEIL || op == SERE_ROUND;
  return sere_dtype_is_float(d) || keeps_integers ? d : SERE_F32;
}

static sere_ew_plan unary_plan(int op, sere_dtype rt) {
  if (op == SERE_LOGICAL_NOT)
    return (sere_ew_plan){.fn = k_logical_not, .kind = SERE_EWK_LOGICAL_NOT, .op = op, .nin = 1,
                          .ct = {SERE_BOOL, SERE_BOOL}};
  sere_dtype ct = sere_ew_compute_dtype(rt);
  return (sere_ew_plan){.fn = ct == SERE_F32 ? k_unary_f32 : k_unary_i64, .kind = SERE_EWK_UNARY, .op = op,
                        .nin = 1, .ct = {ct, ct}};
}

static int check_unary(sere_unary_op op, const sere_tensor *a) {
  if (sere_ew_check_op("unary", op, SERE_LOGICAL_NOT)) return -1;
  if (op == SERE_NEG && a->dtype == SERE_BOOL) {
    sere_fail("neg: negating a bool tensor is not supported; use logical_not");
    return -1;
  }
  return 0;
}

/* ---- autograd --------------------------------------------------------- */
static int unary_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  int op = (int)n->ints[0], kind = kind_of(op);
  const sere_edge *e = &n->edges[0];
  if (kind == GRAD_ZERO) {
    gi[0] = sere_tensor_new_on(sere_device_of(g), e->dtype, e->ndim, e->shape);
  } else if (kind == GRAD_NEG) {
    sere_ew_plan p = unary_plan(SERE_NEG, SERE_F32);
    gi[0] = sere_ew_input_grad(n, 0, &p, g, &g);
  } else {
    sere_tensor *saved = sere_node_saved(n, 0);
    if (!saved) return -1;
    sere_ew_plan p = {.fn = k_unary_grad, .kind = SERE_EWK_UNARY_GRAD, .op = op, .nin = 2,
                      .ct = {SERE_F32, SERE_F32, SERE_F32},
                      .f0 = (float)n->scalars[0], .f1 = (float)n->scalars[1]};
    gi[0] = sere_ew_input_grad(n, 0, &p, g, (sere_tensor *[]){g, saved});
  }
  return gi[0] ? 0 : -1;
}

/* Records the node of unary op `op` (or clamp, with its bounds) on out. */
static sere_tensor *record(sere_tensor *out, sere_tensor *a, int op, const char *name, float lo, float hi) {
  if (!out || !sere_ew_wants_grad(out, 1, &a)) return out;
  int kind = kind_of(op);
  sere_node *n = sere_ew_attach(out, name, unary_backward, op, 1, &a);
  if (!n || (kind == GRAD_INPUT && sere_node_save(n, 0, a)) ||
      (kind == GRAD_OUTPUT && sere_node_save_output(n, 0, out))) {
    sere_tensor_release(out);
    return NULL;
  }
  n->scalars[0] = lo;
  n->scalars[1] = hi;
  return out;
}

/* ---- unary ops -------------------------------------------------------- */
sere_tensor *sere_unary(sere_unary_op op, sere_tensor *a) {
  if (check_unary(op, a)) return NULL;
  sere_dtype rt = unary_result_type(op, a->dtype);
  sere_ew_plan p = unary_plan(op, rt);
  return record(sere_ew_new(&p, rt, a->ndim, a->shape, &a), a, op, unary_names[op], 0, 0);
}

int sere_unary_(sere_unary_op op, sere_tensor *a) {
  if (check_unary(op, a)) return -1;
  char name[32];
  snprintf(name, sizeof name, "%s_", unary_names[op]);
  sere_dtype rt = unary_result_type(op, a->dtype);
  if (sere_ew_inplace_check(name, a, rt, 1)) return -1;
  sere_ew_plan p = unary_plan(op, rt);
  int rc = sere_ew_run(&p, a, &a);
  sere_bump_version(a);
  return rc;
}

/* ---- clamp ------------------------------------------------------------ */
/* Result dtype and plan of clamp: an integer tensor stays integer unless a
 * bound is fractional; a NAN bound is no bound. */
static int clamp_setup(const char *name, const sere_tensor *a, double lo, double hi, sere_dtype *rt,
                       sere_ew_plan *p) {
  if (a->dtype == SERE_BOOL) {
    sere_fail("%s: not supported for bool tensors", name);
    return -1;
  }
  int whole = (isnan(lo) || sere_ew_is_integral(lo)) && (isnan(hi) || sere_ew_is_integral(hi));
  *rt = sere_dtype_is_float(a->dtype) || whole ? a->dtype : SERE_F32;
  *p = unary_plan(SERE_EWOP_CLAMP, *rt);
  p->f0 = isnan(lo) ? -INFINITY : (float)lo;
  p->f1 = isnan(hi) ? INFINITY : (float)hi;
  if (p->ct[0] == SERE_I64) {
    p->i0 = isnan(lo) ? INT64_MIN : (int64_t)lo;
    p->i1 = isnan(hi) ? INT64_MAX : (int64_t)hi;
  }
  return 0;
}

sere_tensor *sere_clamp(sere_tensor *a, double lo, double hi) {
  sere_dtype rt;
  sere_ew_plan p;
  if (clamp_setup("clamp", a, lo, hi, &rt, &p)) return NULL;
  return record(sere_ew_new(&p, rt, a->ndim, a->shape, &a), a, SERE_EWOP_CLAMP, "clamp", p.f0, p.f1);
}

int sere_clamp_(sere_tensor *a, double lo, double hi) {
  sere_dtype rt;
  sere_ew_plan p;
  if (clamp_setup("clamp_", a, lo, hi, &rt, &p) || sere_ew_inplace_check("clamp_", a, rt, 1)) return -1;
  int rc = sere_ew_run(&p, a, &a);
  sere_bump_version(a);
  return rc;
}
