/* elementwise.c — element-wise math with NumPy broadcasting and PyTorch
 * type promotion: binary arithmetic, comparisons, logical ops, where and
 * masked_fill, their in-place variants, axpy_ and gradient accumulation,
 * with backward functions. Unary functions and clamp are in
 * elementwise_unary.c; elementwise.h is what the two share.
 *
 * One driver runs every op (sere_ew_run). Operand strides are broadcast to
 * the output shape, dims that every operand steps over contiguously are
 * merged, and the flattened iteration space is cut into chunks (run in
 * parallel above SERE_EW_PAR_MIN elements) of rows along the innermost dim.
 * A row goes straight to the op's kernel when every operand already has the
 * kernel's compute dtype (f32, i64 or bool) and unit stride (binary kernels
 * also take stride 0: a scalar, or a column broadcast along a row);
 * otherwise it is staged through small buffers that convert dtypes and
 * gather strided elements. Kernels are plain loops, one per op and stride
 * pattern, that the compiler vectorises; bf16 is computed in f32, integers
 * exactly in i64.
 *
 * On the GPU the same driver broadcasts and merges the dims, and the whole
 * iteration becomes one launch of kernels/elementwise.cu, which computes
 * each op code with the CPU kernel's formula. A 0-dim CPU tensor (every
 * scalar operand, a Lua number) may join GPU tensors: its value travels
 * with the launch (sere_ew_check_devices). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "elementwise.h"

#define CHUNK 16384 /* elements per parallel work item */
#define BLOCK 256   /* elements per staging buffer */
#define INT64_SAFE 9.2e18 /* doubles smaller in magnitude convert to int64_t safely */

/* ---- dtype rules ----------------------------------------------------- */
static int category(sere_dtype d) { return d == SERE_BOOL ? 0 : sere_dtype_is_float(d) ? 2 : 1; }

/* PyTorch's result type of two tensors: a 0-dim tensor decides the dtype
 * only when its category (bool < integer < float) is higher than that of
 * the tensor with dims, so bf16 tensor * f32 0-dim tensor stays bf16. */
static sere_dtype result_type(const sere_tensor *a, const sere_tensor *b) {
  if ((a->ndim == 0) == (b->ndim == 0)) return sere_promote(a->dtype, b->dtype);
  const sere_tensor *dim = a->ndim ? a : b, *zero = a->ndim ? b : a;
  return category(zero->dtype) > category(dim->dtype) ? zero->dtype : dim->dtype;
}

int sere_ew_is_integral(double s) { return s == floor(s) && fabs(s) < INT64_SAFE; }

/* PyTorch's rule for a Python number: a float tensor keeps its dtype, an
 * integer tensor too unless the number is fractional; bool becomes i64. */
static sere_dtype scalar_result_type(sere_dtype d, double s) {
  if (sere_dtype_is_float(d)) return d;
  if (!sere_ew_is_integral(s)) return SERE_F32;
  return d == SERE_BOOL ? SERE_I64 : d;
}

int sere_ew_check_op(const char *family, int op, int last) {
  if (op >= 0 && op <= last) return 0;
  sere_fail("%s: unknown op %d", family, op);
  return -1;
}

sere_dtype sere_ew_compute_dtype(sere_dtype rt) { return sere_dtype_is_float(rt) ? SERE_F32 : SERE_I64; }

static int can_cast(sere_dtype from, sere_dtype to) {
  if (sere_dtype_is_float(from) && !sere_dtype_is_float(to)) return 0;
  return from == SERE_BOOL || to != SERE_BOOL;
}

static sere_dtype binary_result_type(sere_binary_op op, sere_dtype rt) {
  return op == SERE_DIV && !sere_dtype_is_float(rt) ? SERE_F32 : rt; /* true division */
}

static sere_tensor *scalar_tensor(const char *op, sere_dtype ct, double s) {
  if (ct == SERE_I64 && !(fabs(s) < INT64_SAFE)) return sere_fail("%s: %g does not fit an integer tensor", op, s);
  sere_tensor *t = sere_tensor_new_uninit(ct, 0, NULL);
  if (t) sere_fill_raw(t, s);
  return t;
}

/* ---- kernels --------------------------------------------------------- */
/* o[i] = expr for one row; x and y are the two inputs' elements. Each input
 * has stride 1 or 0, and each pattern gets its own loop. */
#define MAP2(T, expr)                                                                        \
  do {                                                                                       \
    const T *xs = in[0], *ys = in[1];                                                        \
    if (st[0] && st[1]) {                                                                    \
      for (int64_t i = 0; i < n; i++) { const T x = xs[i], y = ys[i]; o[i] = (expr); }       \
    } else if (st[0]) {                                                                      \
      const T y = ys[0];                                                                     \
      for (int64_t i = 0; i < n; i++) { const T x = xs[i]; o[i] = (expr); }                  \
    } else if (st[1]) {                                                                      \
      const T x = xs[0];                                                                     \
      for (int64_t i = 0; i < n; i++) { const T y = ys[i]; o[i] = (expr); }                 \
    } else {                                                                                 \
      const T x = xs[0], y = ys[0];                                                          \
      for (int64_t i = 0; i < n; i++) o[i] = (expr);                                         \
    }                                                                                        \
  } while (0)

/* Same for three inputs of stride 1 (the driver stages broadcasts). */
#define ZIP3(T, expr)                                                                        \
  do {                                                                                       \
    const T *xs = in[0], *ys = in[1], *zs = in[2];                                           \
    for (int64_t i = 0; i < n; i++) { const T x = xs[i], y = ys[i], z = zs[i]; o[i] = (expr); } \
  } while (0)

static void k_binary_f32(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  float *o = out;
  const float alpha = p->f0;
  switch (p->op) {
    case SERE_ADD: MAP2(float, x + y); break;
    case SERE_SUB: MAP2(float, x - y); break;
    case SERE_MUL: MAP2(float, x * y); break;
    case SERE_DIV: MAP2(float, x / y); break;
    case SERE_POW:
      if (st[0] && !st[1] && *(const float *)in[1] == 2.0f) {
        const float *xs = in[0];
        for (int64_t i = 0; i < n; i++) o[i] = xs[i] * xs[i];
      } else {
        MAP2(float, powf(x, y));
      }
      break;
    /* a NaN on either side propagates, as in PyTorch */
    case SERE_MAXIMUM: MAP2(float, x > y || x != x ? x : y); break;
    case SERE_MINIMUM: MAP2(float, x < y || x != x ? x : y); break;
    case SERE_EWOP_AXPY: MAP2(float, x + alpha * y); break;
  }
}

/* Integer arithmetic wraps around on overflow like PyTorch's; it goes
 * through uint64_t, where C defines the wrap-around. */
static int64_t ipow(int64_t x, int64_t y) {
  if (y < 0) return x == 1 ? 1 : x == -1 ? (y & 1 ? -1 : 1) : 0;
  uint64_t r = 1, b = (uint64_t)x;
  for (; y; y >>= 1, b *= b)
    if (y & 1) r *= b;
  return (int64_t)r;
}

static void k_binary_i64(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  int64_t *o = out;
  const uint64_t alpha = (uint64_t)p->i0;
  switch (p->op) {
    case SERE_ADD: MAP2(int64_t, (int64_t)((uint64_t)x + (uint64_t)y)); break;
    case SERE_SUB: MAP2(int64_t, (int64_t)((uint64_t)x - (uint64_t)y)); break;
    case SERE_MUL: MAP2(int64_t, (int64_t)((uint64_t)x * (uint64_t)y)); break;
    case SERE_POW: MAP2(int64_t, ipow(x, y)); break;
    case SERE_MAXIMUM: MAP2(int64_t, x > y ? x : y); break;
    case SERE_MINIMUM: MAP2(int64_t, x < y ? x : y); break;
    case SERE_EWOP_AXPY: MAP2(int64_t, (int64_t)((uint64_t)x + alpha * (uint64_t)y)); break;
  }
}

#define COMPARE_CASES(T)                             \
  switch (p->op) {                                   \
    case SERE_EQ: MAP2(T, x == y); break;            \
    case SERE_NE: MAP2(T, x != y); break;            \
    case SERE_LT: MAP2(T, x < y); break;             \
    case SERE_LE: MAP2(T, x <= y); break;            \
    case SERE_GT: MAP2(T, x > y); break;             \
    case SERE_GE: MAP2(T, x >= y); break;            \
  }

static void k_compare(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  uint8_t *o = out;
  if (p->ct[1] == SERE_F32) {
    COMPARE_CASES(float)
  } else {
    COMPARE_CASES(int64_t)
  }
}

static void k_logical(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  uint8_t *o = out;
  switch (p->op) {
    case 0: MAP2(uint8_t, x && y); break;
    case 1: MAP2(uint8_t, x || y); break;
    case 2: MAP2(uint8_t, !x != !y); break;
  }
}

static void k_where(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  const uint8_t *c = in[0];
  if (p->ct[0] == SERE_F32) {
    float *o = out;
    const float *a = in[1], *b = in[2];
    for (int64_t i = 0; i < n; i++) o[i] = c[i] ? a[i] : b[i];
  } else {
    int64_t *o = out;
    const int64_t *a = in[1], *b = in[2];
    for (int64_t i = 0; i < n; i++) o[i] = c[i] ? a[i] : b[i];
  }
}

/* Gradients of binary ops: x is the output gradient, (y, z) the operands. */
static void k_binary_grad(const sere_ew_plan *p, void *out, void *const *in, const int64_t *st, int64_t n) {
  float *o = out;
  switch (p->op) {
    case SERE_EWOP_GRAD_DIV_B: ZIP3(float, -x * y / (z * z)); break;
    case SERE_EWOP_GRAD_POW_BASE: ZIP3(float, z == 0.0f ? 0.0f : x * z * powf(y, z - 1.0f)); break;
    case SERE_EWOP_GRAD_POW_EXP: ZIP3(float, y == 0.0f && z >= 0.0f ? 0.0f : x * powf(y, z) * logf(y)); break;
    /* ties split the gradient half and half, like PyTorch */
    case SERE_EWOP_GRAD_MAX: ZIP3(float, y > z ? x : y == z ? 0.5f * x : 0.0f); break;
    case SERE_EWOP_GRAD_MIN: ZIP3(float, y < z ? x : y == z ? 0.5f * x : 0.0f); break;
  }
}

/* ---- staging: dtype conversion and strided gathers -------------------- */
/* Reads n elements of dtype d (stride st, which may be 0 to repeat one)
 * into buf as compute dtype ct. */
static void load_block(void *buf, sere_dtype ct, const char *src, sere_dtype d, int64_t st, int64_t n) {
  if (ct == SERE_F32) {
    float *o = buf;
    if (d == SERE_F32) for (int64_t i = 0; i < n; i++) o[i] = ((const float *)src)[i * st];
    else if (d == SERE_BF16) for (int64_t i = 0; i < n; i++) o[i] = sere_bf16_to_f32(((const uint16_t *)src)[i * st]);
    else for (int64_t i = 0; i < n; i++) o[i] = (float)sere_load_linear(src, d, i * st);
  } else if (ct == SERE_I64) {
    int64_t *o = buf;
    if (d == SERE_I64) for (int64_t i = 0; i < n; i++) o[i] = ((const int64_t *)src)[i * st];
    else if (d == SERE_I32) for (int64_t i = 0; i < n; i++) o[i] = ((const int32_t *)src)[i * st];
    else if (d == SERE_U8) for (int64_t i = 0; i < n; i++) o[i] = ((const uint8_t *)src)[i * st];
    else if (d == SERE_BOOL) for (int64_t i = 0; i < n; i++) o[i] = src[i * st] != 0;
    else for (int64_t i = 0; i < n; i++) o[i] = (int64_t)sere_load_linear(src, d, i * st);
  } else {
    uint8_t *o = buf;
    if (d == SERE_BOOL || d == SERE_U8) for (int64_t i = 0; i < n; i++) o[i] = src[i * st] != 0;
    else for (int64_t i = 0; i < n; i++) o[i] = sere_load_linear(src, d, i * st) != 0;
  }
}

static void store_block(char *dst, sere_dtype d, int64_t st, const void *buf, sere_dtype ct, int64_t n) {
  if (ct == SERE_F32) {
    const float *s = buf;
    if (d == SERE_F32) for (int64_t i = 0; i < n; i++) ((float *)dst)[i * st] = s[i];
    else if (d == SERE_BF16) for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i * st] = sere_f32_to_bf16(s[i]);
    else for (int64_t i = 0; i < n; i++) sere_store_linear(dst, d, i * st, s[i]);
  } else if (ct == SERE_I64) {
    const int64_t *s = buf;
    if (d == SERE_I64) for (int64_t i = 0; i < n; i++) ((int64_t *)dst)[i * st] = s[i];
    else if (d == SERE_I32) for (int64_t i = 0; i < n; i++) ((int32_t *)dst)[i * st] = (int32_t)s[i];
    else if (d == SERE_U8) for (int64_t i = 0; i < n; i++) ((uint8_t *)dst)[i * st] = (uint8_t)s[i];
    else if (d == SERE_BOOL) for (int64_t i = 0; i < n; i++) dst[i * st] = s[i] != 0;
    else for (int64_t i = 0; i < n; i++) sere_store_linear(dst, d, i * st, (double)s[i]);
  } else {
    const uint8_t *s = buf;
    if (d == SERE_BOOL || d == SERE_U8) for (int64_t i = 0; i < n; i++) dst[i * st] = (char)s[i];
    else for (int64_t i = 0; i < n; i++) sere_store_linear(dst, d, i * st, s[i]);
  }
}

/* ---- the driver ------------------------------------------------------ */
typedef struct {
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int64_t stride[SERE_EW_MAXOPS][SERE_MAX_DIMS]; /* in elements; 0 where broadcast */
  char *base[SERE_EW_MAXOPS];
  sere_dtype dtype[SERE_EW_MAXOPS];
  int64_t esize[SERE_EW_MAXOPS];
} ew_iter;

/* One row of n elements: ptr[0] is the output, st[k] the row strides. */
static void ew_row(const sere_ew_plan *p, const ew_iter *it, char *const *ptr, const int64_t *st, int64_t n) {
  int nops = p->nin + 1, direct[SERE_EW_MAXOPS], all = 1;
  void *in[SERE_EW_MAXOPS - 1];
  int64_t s[SERE_EW_MAXOPS - 1];
  for (int k = 0; k < nops; k++) {
    int unit = st[k] == 1 || (k > 0 && st[k] == 0 && p->bcast_ok);
    direct[k] = unit && it->dtype[k] == p->ct[k];
    all &= direct[k];
  }
  if (all) {
    for (int k = 1; k < nops; k++) { in[k - 1] = ptr[k]; s[k - 1] = st[k]; }
    p->fn(p, ptr[0], in, s, n);
    return;
  }
  union {
    float f[BLOCK];
    int64_t i[BLOCK];
    uint8_t u[BLOCK];
  } buf[SERE_EW_MAXOPS];
  for (int64_t i = 0; i < n; i += BLOCK) {
    int64_t m = n - i < BLOCK ? n - i : BLOCK;
    for (int k = 1; k < nops; k++) {
      char *src = ptr[k] + i * st[k] * it->esize[k];
      if (direct[k]) {
        in[k - 1] = src;
        s[k - 1] = st[k];
      } else {
        load_block(&buf[k], p->ct[k], src, it->dtype[k], st[k], m);
        in[k - 1] = &buf[k];
        s[k - 1] = 1;
      }
    }
    char *dst = ptr[0] + i * st[0] * it->esize[0];
    p->fn(p, direct[0] ? (void *)dst : &buf[0], in, s, m);
    if (!direct[0]) store_block(dst, it->dtype[0], st[0], &buf[0], p->ct[0], m);
  }
}

/* Elements [start, end) of the flattened iteration, row piece by row piece. */
static void ew_range(const sere_ew_plan *p, const ew_iter *it, int64_t start, int64_t end) {
  int nd = it->ndim, nops = p->nin + 1;
  int64_t idx[SERE_MAX_DIMS], st[SERE_EW_MAXOPS], r = start;
  for (int d = nd - 1; d >= 0; d--) {
    idx[d] = r % it->shape[d];
    r /= it->shape[d];
  }
  for (int k = 0; k < nops; k++) st[k] = it->stride[k][nd - 1];
  while (start < end) {
    int64_t len = it->shape[nd - 1] - idx[nd - 1];
    if (len > end - start) len = end - start;
    char *ptr[SERE_EW_MAXOPS];
    for (int k = 0; k < nops; k++) {
      int64_t off = 0;
      for (int d = 0; d < nd; d++) off += idx[d] * it->stride[k][d];
      ptr[k] = it->base[k] + off * it->esize[k];
    }
    ew_row(p, it, ptr, st, len);
    start += len;
    idx[nd - 1] += len - 1;
    sere_index_next(nd, it->shape, idx);
  }
}

#ifdef SERE_WITH_CUDA
/* The iteration as one GPU launch. Inputs on the CPU are 0-dim scalars
 * (sere_ew_check_devices lets no other CPU tensor in): their value goes
 * with the launch, converted to the compute dtype as load_block does. */
static int ew_run_cuda(const sere_ew_plan *p, const ew_iter *it, sere_tensor *const *in) {
  sere_ew_launch l = {.kind = p->kind, .op = p->op, .nin = p->nin, .f0 = p->f0, .f1 = p->f1, .i0 = p->i0,
                      .i1 = p->i1, .ndim = it->ndim};
  memcpy(l.shape, it->shape, sizeof l.shape);
  for (int k = 0; k <= p->nin; k++) {
    memcpy(l.stride[k], it->stride[k], sizeof l.stride[k]);
    l.ct[k] = p->ct[k];
    l.dtype[k] = it->dtype[k];
    l.base[k] = it->base[k];
    if (k == 0 || sere_device_of(in[k - 1]) == SERE_CUDA) continue;
    union {
      float f;
      int64_t i;
      uint8_t u;
    } v;
    load_block(&v, p->ct[k], it->base[k], it->dtype[k], 0, 1);
    l.base[k] = NULL;
    l.scalar_f[k] = p->ct[k] == SERE_F32 ? v.f : 0.0f;
    l.scalar_i[k] = p->ct[k] == SERE_I64 ? v.i : p->ct[k] == SERE_BOOL ? v.u : 0;
  }
  return sere_cuda_ew_run(&l);
}
#endif

int sere_ew_run(const sere_ew_plan *p, sere_tensor *out, sere_tensor *const *in) {
  int64_t total = sere_numel(out);
  if (total == 0) return 0;
  /* the public entries checked already, naming the op; this keeps device
   * memory from ever being dereferenced on the host */
  if (sere_ew_check_devices("element-wise op", out, p->nin, in)) return -1;
  int nops = p->nin + 1, nd = out->ndim;
  int64_t st[SERE_EW_MAXOPS][SERE_MAX_DIMS];
  ew_iter it;
  for (int k = 0; k < nops; k++) {
    const sere_tensor *t = k ? in[k - 1] : out;
    int lead = nd - t->ndim;
    for (int d = 0; d < nd; d++) {
      int j = d - lead;
      st[k][d] = j < 0 || t->shape[j] == 1 ? 0 : t->stride[j];
    }
    it.base[k] = sere_data(t);
    it.dtype[k] = t->dtype;
    it.esize[k] = (int64_t)sere_dtype_size(t->dtype);
  }
  /* Drop size-1 dims; merge a dim into the one before it when every operand
   * steps over it contiguously (a broadcast dim merges with a broadcast one). */
  it.ndim = 0;
  for (int d = 0; d < nd; d++) {
    if (out->shape[d] == 1) continue;
    int last = it.ndim - 1, merge = it.ndim > 0;
    for (int k = 0; k < nops && merge; k++) merge = it.stride[k][last] == st[k][d] * out->shape[d];
    if (merge) {
      it.shape[last] *= out->shape[d];
    } else {
      last = it.ndim++;
      it.shape[last] = out->shape[d];
    }
    for (int k = 0; k < nops; k++) it.stride[k][last] = st[k][d];
  }
  if (it.ndim == 0) {
    it.ndim = 1;
    it.shape[0] = 1;
    for (int k = 0; k < nops; k++) it.stride[k][0] = 1;
  }
#ifdef SERE_WITH_CUDA
  if (sere_device_of(out) == SERE_CUDA) return ew_run_cuda(p, &it, in);
#endif
  int64_t nchunks = total > SERE_EW_PAR_MIN ? (total + CHUNK - 1) / CHUNK : 1;
  int64_t chunk = nchunks > 1 ? CHUNK : total;
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; c++) {
    int64_t end = (c + 1) * chunk;
    ew_range(p, &it, c * chunk, end < total ? end : total);
  }
  return 0;
}

sere_tensor *sere_ew_new(const sere_ew_plan *p, sere_dtype dt, int ndim, const int64_t *shape,
                         sere_tensor *const *in) {
  sere_device_type dev = SERE_CPU;
  for (int k = 0; k < p->nin; k++)
    if (sere_device_of(in[k]) == SERE_CUDA) dev = SERE_CUDA;
  sere_tensor *out = sere_tensor_new_uninit_on(dev, dt, ndim, shape); /* the run writes every element */
  if (out && sere_ew_run(p, out, in)) {
    sere_tensor_release(out);
    return NULL;
  }
  return out;
}

int sere_ew_check_devices(const char *op, const sere_tensor *dst, int n, sere_tensor *const *in) {
  sere_device_type dev = dst ? sere_device_of(dst) : SERE_CPU;
  for (int k = 0; k < n && !dst; k++)
    if (sere_device_of(in[k]) == SERE_CUDA) dev = SERE_CUDA;
  for (int k = 0; k < n; k++) {
    sere_device_type d = sere_device_of(in[k]);
    int scalar = d == SERE_CPU && in[k]->ndim == 0 && !sere_tensor_requires_grad(in[k]);
    if (d == dev || (dev == SERE_CUDA && scalar)) continue;
    sere_fail("%s: expected all tensors on one device, got %s and %s (move them with :to(); only a 0-dim cpu "
              "tensor that does not require grad may join cuda tensors, as a scalar)", op, sere_device_name(dev),
              sere_device_name(d));
    return -1;
  }
  return 0;
}

/* ew_new over the broadcast shape of a and b. */
static sere_tensor *ew_new2(const char *op, const sere_ew_plan *p, sere_dtype dt, sere_tensor *a, sere_tensor *b) {
  int nd;
  int64_t shape[SERE_MAX_DIMS];
  sere_tensor *in[2] = {a, b};
  if (sere_ew_check_devices(op, NULL, 2, in) ||
      sere_broadcast_shapes(op, a->ndim, a->shape, b->ndim, b->shape, &nd, shape))
    return NULL;
  return sere_ew_new(p, dt, nd, shape, in);
}

/* ---- autograd helpers ------------------------------------------------ */
int sere_ew_wants_grad(const sere_tensor *out, int nin, sere_tensor *const *in) {
  return sere_dtype_is_float(out->dtype) && sere_needs_grad(nin, in);
}

sere_node *sere_ew_attach(sere_tensor *out, const char *name, sere_backward_fn fn, int op, int nin,
                          sere_tensor *const *in) {
  sere_node *n = sere_node_new(name, fn, nin, in);
  if (!n) return NULL;
  n->ints[0] = op;
  sere_attach(out, n);
  return n;
}

sere_tensor *sere_ew_input_grad(sere_node *n, int i, const sere_ew_plan *p, sere_tensor *g,
                                sere_tensor *const *in) {
  const sere_edge *e = &n->edges[i];
  int same = e->ndim == g->ndim && !memcmp(e->shape, g->shape, sizeof(int64_t) * (size_t)g->ndim);
  sere_tensor *r = p ? sere_ew_new(p, same ? e->dtype : SERE_F32, g->ndim, g->shape, in) : sere_tensor_retain(g);
  if (r && !same) {
    sere_tensor *s = sere_sum_to(r, e->ndim, e->shape);
    sere_tensor_release(r);
    r = s;
  }
  if (r && r->dtype != e->dtype) {
    sere_tensor *c = sere_as_contiguous_dtype(r, e->dtype);
    sere_tensor_release(r);
    r = c;
  }
  return r;
}

/* ---- binary arithmetic ----------------------------------------------- */
static const char *const binary_names[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};

static sere_ew_plan binary_plan(int op, sere_dtype rt) {
  sere_dtype ct = sere_ew_compute_dtype(rt);
  return (sere_ew_plan){.fn = ct == SERE_F32 ? k_binary_f32 : k_binary_i64, .kind = SERE_EWK_BINARY, .op = op,
                        .nin = 2, .bcast_ok = 1, .ct = {ct, ct, ct}};
}

static sere_ew_plan grad_plan(int op) {
  return (sere_ew_plan){.fn = k_binary_grad, .kind = SERE_EWK_BINARY_GRAD, .op = op, .nin = 3,
                        .ct = {SERE_F32, SERE_F32, SERE_F32, SERE_F32}};
}

/* add passes g through (negated for sub's b); the others run a kernel over
 * (g, operands). sere_ew_input_grad sums each back to its input's shape. */
static int binary_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  int op = (int)n->ints[0];
  sere_tensor *a = NULL, *b = NULL;
  if (n->saved[0] && !(a = sere_node_saved(n, 0))) return -1;
  if (n->saved[1] && !(b = sere_node_saved(n, 1))) return -1;
  for (int i = 0; i < 2; i++) {
    if (!sere_edge_needed(n, i)) continue;
    if (op == SERE_ADD || op == SERE_SUB) {
      sere_tensor *r = op == SERE_SUB && i ? sere_unary(SERE_NEG, g) : sere_tensor_retain(g);
      gi[i] = r ? sere_ew_input_grad(n, i, NULL, r, NULL) : NULL;
      sere_tensor_release(r);
    } else {
      sere_ew_plan p;
      sere_tensor *in[3] = {g, a, b};
      if (op == SERE_MUL || (op == SERE_DIV && !i)) { /* g * b, g * a, g / b */
        p = binary_plan(op, SERE_F32);
        in[1] = i ? a : b;
      } else if (op == SERE_DIV) {
        p = grad_plan(SERE_EWOP_GRAD_DIV_B);
      } else if (op == SERE_POW) {
        p = grad_plan(i ? SERE_EWOP_GRAD_POW_EXP : SERE_EWOP_GRAD_POW_BASE);
      } else { /* maximum, minimum: b's gradient is a's with the operands swapped */
        p = grad_plan(op == SERE_MAXIMUM ? SERE_EWOP_GRAD_MAX : SERE_EWOP_GRAD_MIN);
        in[1] = i ? b : a;
        in[2] = i ? a : b;
      }
      gi[i] = sere_ew_input_grad(n, i, &p, g, in);
    }
    if (!gi[i]) return -1;
  }
  return 0;
}

static sere_tensor *binary_impl(sere_binary_op op, sere_tensor *a, sere_tensor *b, sere_dtype rt) {
  if (op == SERE_SUB && rt == SERE_BOOL)
    return sere_fail("sub: subtracting bool tensors is not supported; use logical_xor");
  sere_ew_plan p = binary_plan(op, rt);
  sere_tensor *in[2] = {a, b};
  sere_tensor *out = ew_new2(binary_names[op], &p, rt, a, b);
  if (!out || !sere_ew_wants_grad(out, 2, in)) return out;
  /* mul needs each operand only for the other's gradient; add/sub need none */
  int ga = sere_tensor_requires_grad(a), gb = sere_tensor_requires_grad(b);
  int save_a = op == SERE_MUL || op == SERE_DIV ? gb : op > SERE_DIV;
  int save_b = op == SERE_MUL ? ga : op >= SERE_DIV;
  sere_node *n = sere_ew_attach(out, binary_names[op], binary_backward, op, 2, in);
  if (!n || (save_a && sere_node_save(n, 0, a)) || (save_b && sere_node_save(n, 1, b))) {
    sere_tensor_release(out);
    return NULL;
  }
  return out;
}

sere_tensor *sere_binary(sere_binary_op op, sere_tensor *a, sere_tensor *b) {
  if (sere_ew_check_op("binary", op, SERE_MINIMUM)) return NULL;
  return binary_impl(op, a, b, binary_result_type(op, result_type(a, b)));
}

/* Result dtype of `a op s`, or an error for int ^ negative int. */
static int scalar_op_type(sere_binary_op op, const sere_tensor *a, double s, int scalar_first, sere_dtype *rt) {
  *rt = binary_result_type(op, scalar_result_type(a->dtype, s));
  if (op == SERE_POW && !scalar_first && !sere_dtype_is_float(*rt) && s < 0) {
    sere_fail("pow: an integer tensor (%s) cannot be raised to a negative integer power (%g); convert it to "
              "float first", sere_dtype_name(a->dtype), s);
    return -1;
  }
  return 0;
}

sere_tensor *sere_binary_scalar(sere_binary_op op, sere_tensor *a, double s, int scalar_first) {
  sere_dtype rt;
  if (sere_ew_check_op("binary", op, SERE_MINIMUM) || scalar_op_type(op, a, s, scalar_first, &rt)) return NULL;
  sere_tensor *st = scalar_tensor(binary_names[op], sere_ew_compute_dtype(rt), s);
  if (!st) return NULL;
  sere_tensor *out = scalar_first ? binary_impl(op, st, a, rt) : binary_impl(op, a, st, rt);
  sere_tensor_release(st);
  return out;
}

/* ---- comparisons and logical ops ------------------------------------- */
static const char *const compare_names[] = {"eq", "ne", "lt", "le", "gt", "ge"};

static sere_tensor *compare_impl(sere_compare_op op, sere_tensor *a, sere_tensor *b, sere_dtype rt) {
  sere_dtype ct = sere_ew_compute_dtype(rt);
  sere_ew_plan p = {.fn = k_compare, .kind = SERE_EWK_COMPARE, .op = op, .nin = 2, .bcast_ok = 1,
                    .ct = {SERE_BOOL, ct, ct}};
  return ew_new2(compare_names[op], &p, SERE_BOOL, a, b);
}

sere_tensor *sere_compare(sere_compare_op op, sere_tensor *a, sere_tensor *b) {
  if (sere_ew_check_op("compare", op, SERE_GE)) return NULL;
  return compare_impl(op, a, b, result_type(a, b));
}

sere_tensor *sere_compare_scalar(sere_compare_op op, sere_tensor *a, double s) {
  if (sere_ew_check_op("compare", op, SERE_GE)) return NULL;
  sere_dtype rt = scalar_result_type(a->dtype, s);
  sere_tensor *st = scalar_tensor(compare_names[op], sere_ew_compute_dtype(rt), s);
  if (!st) return NULL;
  sere_tensor *out = compare_impl(op, a, st, rt);
  sere_tensor_release(st);
  return out;
}

sere_tensor *sere_logical(int op, sere_tensor *a, sere_tensor *b) {
  static const char *const names[] = {"logical_and", "logical_or", "logical_xor"};
  if (sere_ew_check_op("logical", op, 2)) return NULL;
  sere_ew_plan p = {.fn = k_logical, .kind = SERE_EWK_LOGICAL, .op = op, .nin = 2, .bcast_ok = 1,
                    .ct = {SERE_BOOL, SERE_BOOL, SERE_BOOL}};
  return ew_new2(names[op], &p, SERE_BOOL, a, b);
}

/* ---- where and masked_fill ------------------------------------------- */
static sere_ew_plan where_plan(sere_dtype rt) {
  sere_dtype ct = sere_ew_compute_dtype(rt);
  return (sere_ew_plan){.fn = k_where, .kind = SERE_EWK_WHERE, .op = 0, .nin = 3, .ct = {ct, SERE_BOOL, ct, ct}};
}

static int check_mask(const char *op, const sere_tensor *m, const char *what) {
  if (m->dtype == SERE_BOOL) return 0;
  char s[SERE_EW_SHAPE_BUF];
  sere_fail("%s: the %s must be a bool tensor, got %s of shape %s (make one with a comparison such as "
            "t:ne(0), or with :bool())", op, what, sere_dtype_name(m->dtype), sere_shape_str(m, s, sizeof s));
  return -1;
}

/* Is b's shape broadcastable to exactly a's shape? Error naming op if not. */
static int check_broadcasts_to(const char *op, const sere_tensor *b, const sere_tensor *a) {
  int nd;
  int64_t shape[SERE_MAX_DIMS];
  if (!sere_broadcast_shapes(op, b->ndim, b->shape, a->ndim, a->shape, &nd, shape) && nd == a->ndim &&
      !memcmp(shape, a->shape, sizeof(int64_t) * (size_t)nd))
    return 0;
  char x[SERE_EW_SHAPE_BUF], y[SERE_EW_SHAPE_BUF];
  sere_fail("%s: operand of shape %s does not broadcast to shape %s", op, sere_shape_str(b, x, sizeof x),
            sere_shape_str(a, y, sizeof y));
  return -1;
}

/* where: input 0 is the condition and 1, 2 the branches; masked_fill: input
 * 0 is the tensor. Saved 0 is the condition (mask) either way. */
static int where_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  sere_tensor *cond = sere_node_saved(n, 0);
  if (!cond) return -1;
  sere_tensor *zero = sere_tensor_new(SERE_F32, 0, NULL);
  if (!zero) return -1;
  sere_ew_plan p = where_plan(SERE_F32);
  int rc = 0;
  for (int i = 0; i < n->ninputs && !rc; i++) {
    if (!sere_edge_needed(n, i)) continue;
    int where_true = n->ninputs == 3 && i == 1;
    sere_tensor *in[3] = {cond, where_true ? g : zero, where_true ? zero : g};
    if (!(gi[i] = sere_ew_input_grad(n, i, &p, g, in))) rc = -1;
  }
  sere_tensor_release(zero);
  return rc;
}

sere_tensor *sere_where(sere_tensor *cond, sere_tensor *a, sere_tensor *b) {
  int nab, nd;
  int64_t ab[SERE_MAX_DIMS], shape[SERE_MAX_DIMS];
  sere_tensor *in[3] = {cond, a, b};
  if (check_mask("where", cond, "condition") || sere_ew_check_devices("where", NULL, 3, in) ||
      sere_broadcast_shapes("where", a->ndim, a->shape, b->ndim, b->shape, &nab, ab) ||
      sere_broadcast_shapes("where", cond->ndim, cond->shape, nab, ab, &nd, shape))
    return NULL;
  sere_dtype rt = result_type(a, b);
  sere_ew_plan p = where_plan(rt);
  sere_tensor *out = sere_ew_new(&p, rt, nd, shape, in);
  if (!out || !sere_ew_wants_grad(out, 3, in)) return out;
  sere_node *n = sere_ew_attach(out, "where", where_backward, 0, 3, in);
  if (!n || sere_node_save(n, 0, cond)) {
    sere_tensor_release(out);
    return NULL;
  }
  return out;
}

sere_tensor *sere_masked_fill(sere_tensor *a, sere_tensor *mask, double v) {
  if (check_mask("masked_fill", mask, "mask") ||
      sere_ew_check_devices("masked_fill", NULL, 2, (sere_tensor *[]){a, mask}) ||
      check_broadcasts_to("masked_fill", mask, a))
    return NULL;
  sere_tensor *val = scalar_tensor("masked_fill", sere_ew_compute_dtype(a->dtype), v);
  if (!val) return NULL;
  sere_ew_plan p = where_plan(a->dtype);
  sere_tensor *out = sere_ew_new(&p, a->dtype, a->ndim, a->shape, (sere_tensor *[]){mask, val, a});
  sere_tensor_release(val);
  if (!out || !sere_ew_wants_grad(out, 1, &a)) return out;
  sere_node *n = sere_ew_attach(out, "masked_fill", where_backward, 0, 1, &a);
  if (!n || sere_node_save(n, 0, mask)) {
    sere_tensor_release(out);
    return NULL;
  }
  return out;
}

/* ---- in place -------------------------------------------------------- */
int sere_ew_inplace_check(const char *op, sere_tensor *a, sere_dtype rt, int autograd) {
  char s[SERE_EW_SHAPE_BUF];
  if (autograd && sere_check_inplace(a, op)) return -1;
  for (int d = 0; d < a->ndim; d++) {
    if (a->stride[d] == 0 && a->shape[d] > 1) {
      sere_fail("%s: cannot write in place into an expanded tensor (shape %s repeats memory along dim %d); "
                "clone it first", op, sere_shape_str(a, s, sizeof s), d + 1);
      return -1;
    }
  }
  if (!can_cast(rt, a->dtype)) {
    sere_fail("%s: the result has dtype %s, which cannot be written in place into a %s tensor of shape %s", op,
              sere_dtype_name(rt), sere_dtype_name(a->dtype), sere_shape_str(a, s, sizeof s));
    return -1;
  }
  return 0;
}

/* Operand b of an in-place op on a: it must be on a's device (or a scalar)
 * and broadcast to a's shape, and it is copied when it shares memory with a
 * in another layout (the op would otherwise read elements it has already
 * overwritten). New reference. */
static sere_tensor *inplace_operand(const char *op, sere_tensor *a, sere_tensor *b, int autograd) {
  if (sere_ew_check_devices(op, a, 1, &b) || check_broadcasts_to(op, b, a)) return NULL;
  if (autograd && sere_grad_enabled() && sere_tensor_requires_grad(b))
    return sere_fail("%s: the operand requires grad, and in-place ops record no gradient; use the "
                     "out-of-place op, or do it inside sere.no_grad(fn)", op);
  size_t dims = sizeof(int64_t) * (size_t)a->ndim;
  if (b->storage != a->storage || (b->offset == a->offset && b->ndim == a->ndim &&
                                   !memcmp(b->shape, a->shape, dims) && !memcmp(b->stride, a->stride, dims)))
    return sere_tensor_retain(b);
  sere_tensor *c = sere_tensor_new_uninit_like(b, b->dtype);
  if (c && sere_copy_raw(c, b)) {
    sere_tensor_release(c);
    return NULL;
  }
  return c;
}

/* a = a op b by plan p, which computes in dtype rt. */
static int binary_into(const char *op, const sere_ew_plan *p, sere_dtype rt, sere_tensor *a, sere_tensor *b,
                       int autograd) {
  if (sere_ew_inplace_check(op, a, rt, autograd)) return -1;
  sere_tensor *bb = inplace_operand(op, a, b, autograd);
  if (!bb) return -1;
  int rc = sere_ew_run(p, a, (sere_tensor *[]){a, bb});
  sere_tensor_release(bb);
  sere_bump_version(a);
  return rc;
}

int sere_binary_(sere_binary_op op, sere_tensor *a, sere_tensor *b) {
  if (sere_ew_check_op("binary", op, SERE_MINIMUM)) return -1;
  char name[32];
  snprintf(name, sizeof name, "%s_", binary_names[op]);
  sere_dtype rt = binary_result_type(op, result_type(a, b));
  if (op == SERE_SUB && rt == SERE_BOOL) {
    sere_fail("sub_: subtracting bool tensors is not supported; use logical_xor");
    return -1;
  }
  sere_ew_plan p = binary_plan(op, rt);
  return binary_into(name, &p, rt, a, b, 1);
}

int sere_binary_scalar_(sere_binary_op op, sere_tensor *a, double s) {
  sere_dtype rt;
  if (sere_ew_check_op("binary", op, SERE_MINIMUM) || scalar_op_type(op, a, s, 0, &rt)) return -1;
  char name[32];
  snprintf(name, sizeof name, "%s_", binary_names[op]);
  sere_tensor *st = scalar_tensor(name, sere_ew_compute_dtype(rt), s);
  if (!st) return -1;
  sere_ew_plan p = binary_plan(op, rt);
  int rc = binary_into(name, &p, rt, a, st, 1);
  sere_tensor_release(st);
  return rc;
}

int sere_masked_fill_(sere_tensor *a, sere_tensor *mask, double v) {
  if (check_mask("masked_fill_", mask, "mask") || sere_ew_inplace_check("masked_fill_", a, a->dtype, 1)) return -1;
  sere_tensor *m = inplace_operand("masked_fill_", a, mask, 1);
  sere_tensor *val = m ? scalar_tensor("masked_fill_", sere_ew_compute_dtype(a->dtype), v) : NULL;
  int rc = -1;
  if (val) {
    sere_ew_plan p = where_plan(a->dtype);
    rc = sere_ew_run(&p, a, (sere_tensor *[]){m, val, a});
    sere_bump_version(a);
  }
  sere_tensor_release(m);
  sere_tensor_release(val);
  return rc;
}

int sere_fill_(sere_tensor *a, double v) {
  if (sere_check_inplace(a, "fill_")) return -1;
  if (!sere_dtype_is_float(a->dtype) && !(fabs(v) < INT64_SAFE)) {
    sere_fail("fill_: %g does not fit a %s tensor", v, sere_dtype_name(a->dtype));
    return -1;
  }
  int rc = sere_fill_raw(a, v);
  sere_bump_version(a);
  return rc;
}

int sere_axpy_(sere_tensor *y, double alpha, sere_tensor *x) {
  sere_dtype rt = sere_promote(y->dtype, x->dtype);
  if (!sere_dtype_is_float(rt) && !sere_ew_is_integral(alpha)) rt = SERE_F32;
  sere_ew_plan p = binary_plan(SERE_EWOP_AXPY, rt);
  p.f0 = (float)alpha;
  if (p.ct[0] == SERE_I64) p.i0 = (int64_t)alpha;
  return binary_into("axpy_", &p, rt, y, x, 0);
}

int sere_accumulate_into(sere_tensor *acc, sere_tensor *g) {
  if (!sere_same_shape(acc, g)) {
    char a[SERE_EW_SHAPE_BUF], b[SERE_EW_SHAPE_BUF];
    sere_fail("accumulate: gradient of shape %s for an accumulator of shape %s", sere_shape_str(g, a, sizeof a),
              sere_shape_str(acc, b, sizeof b));
    return -1;
  }
  return sere_axpy_(acc, 1.0, g);
}
