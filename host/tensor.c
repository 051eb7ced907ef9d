/* tensor.c — storage and tensor lifetime, dtype tables, the error buffer,
 * strided copy with dtype conversion. Everything else builds on these. */
#include "tensor.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"
#ifdef SERE_WITH_CUDA
#include "cuda_device.h"
#endif

/* ---- errors ---------------------------------------------------------- */
static _Thread_local char error_buf[1024];

void *sere_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_buf, sizeof error_buf, fmt, ap);
  va_end(ap);
  return NULL;
}

const char *sere_last_error(void) { return error_buf[0] ? error_buf : "unknown error"; }

const char *sere_shape_str_raw(int ndim, const int64_t *shape, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

const char *sere_shape_str(const sere_tensor *t, char *buf, size_t n) {
  return sere_shape_str_raw(t->ndim, t->shape, buf, n);
}

/* ---- dtypes ---------------------------------------------------------- */
static const struct {
  const char *name;
  size_t size;
  int is_float;
} dtype_info[SERE_NDTYPES] = {
    [SERE_F32] = {"f32", 4, 1}, [SERE_BF16] = {"bf16", 2, 1}, [SERE_I32] = {"i32", 4, 0},
    [SERE_I64] = {"i64", 8, 0}, [SERE_U8] = {"u8", 1, 0},     [SERE_BOOL] = {"bool", 1, 0},
};

size_t sere_dtype_size(sere_dtype d) { return dtype_info[d].size; }
const char *sere_dtype_name(sere_dtype d) { return dtype_info[d].name; }
int sere_dtype_is_float(sere_dtype d) { return dtype_info[d].is_float; }

int sere_dtype_from_name(const char *name, sere_dtype *out) {
  static const struct { const char *alias; sere_dtype d; } aliases[] = {
      {"float32", SERE_F32}, {"float", SERE_F32},  {"bfloat16", SERE_BF16}, {"int32", SERE_I32},
      {"int", SERE_I32},     {"int64", SERE_I64},  {"long", SERE_I64},      {"uint8", SERE_U8},
      {"byte", SERE_U8},     {"boolean", SERE_BOOL},
  };
  for (int d = 0; d < SERE_NDTYPES; d++)
    if (!strcmp(name, dtype_info[d].name)) { *out = (sere_dtype)d; return 0; }
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (!strcmp(name, aliases[i].alias)) { *out = aliases[i].d; return 0; }
  return -1;
}

/* Promotion lattice as in PyTorch for tensor-tensor ops:
 * bool < u8 < i32 < i64 < bf16 < f32. */
sere_dtype sere_promote(sere_dtype a, sere_dtype b) {
  static const int rank[SERE_NDTYPES] = {
      [SERE_BOOL] = 0, [SERE_U8] = 1, [SERE_I32] = 2, [SERE_I64] = 3, [SERE_BF16] = 4, [SERE_F32] = 5};
  return rank[a] >= rank[b] ? a : b;
}

/* ---- storage --------------------------------------------------------- */
static atomic_size_t live_bytes;

size_t sere_storage_live_bytes(void) { return atomic_load(&live_bytes); }

static sere_storage *storage_alloc(size_t nbytes, sere_device_type dev, int zero) {
#ifndef SERE_WITH_CUDA
  if (dev != SERE_CPU) return sere_fail("cuda: this sere was built without CUDA");
#endif
  sere_storage *s = calloc(1, sizeof *s);
  if (!s) return sere_fail("out of memory allocating a storage header");
  if (dev == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    s->data = sere_cuda_alloc(nbytes, zero);
#endif
    if (!s->data) { free(s); return NULL; }
  } else {
    /* 64-byte alignment for vector loads. */
    size_t alloc = (nbytes + 63) & ~(size_t)63;
    if (alloc == 0) alloc = 64;
    s->data = aligned_alloc(64, alloc);
    if (!s->data) {
      free(s);
      return sere_fail("out of memory: cannot allocate %zu bytes (%.1f MiB) on cpu; %.1f MiB in use",
                       nbytes, nbytes / 1048576.0, sere_storage_live_bytes() / 1048576.0);
    }
    if (zero) memset(s->data, 0, alloc);
  }
  s->nbytes = nbytes;
  s->refcount = 1;
  s->device = dev;
  atomic_fetch_add(&live_bytes, nbytes);
  return s;
}

sere_storage *sere_storage_new(size_t nbytes, sere_device_type dev) { return storage_alloc(nbytes, dev, 1); }

void sere_storage_retain(sere_storage *s) { s->refcount++; }

void sere_storage_release(sere_storage *s) {
  if (!s || --s->refcount > 0) return;
  atomic_fetch_sub(&live_bytes, s->nbytes);
#ifdef SERE_WITH_CUDA
  if (s->device == SERE_CUDA) sere_cuda_free(s->data, s->nbytes);
  else
#endif
    free(s->data);
  free(s);
}

/* ---- tensors --------------------------------------------------------- */
int64_t sere_numel_raw(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

int64_t sere_numel(const sere_tensor *t) { return sere_numel_raw(t->ndim, t->shape); }

static sere_tensor *tensor_header(void) {
  sere_tensor *t = calloc(1, sizeof *t);
  if (!t) return sere_fail("out of memory allocating a tensor header");
  t->refcount = 1;
  return t;
}

static void set_contiguous_strides(sere_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    t->stride[i] = s;
    s *= t->shape[i];
  }
}

static sere_tensor *tensor_alloc(sere_dtype dtype, int ndim, const int64_t *shape, sere_device_type dev,
                                 int zero) {
  if (ndim < 0 || ndim > SERE_MAX_DIMS)
    return sere_fail("tensor: %d dims is more than the supported %d", ndim, SERE_MAX_DIMS);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return sere_fail("tensor: negative size %lld in dim %d", (long long)shape[i], i + 1);
    if (shape[i] && n > INT64_MAX / 16 / shape[i]) return sere_fail("tensor: shape too large");
    n *= shape[i];
  }
  sere_tensor *t = tensor_header();
  if (!t) return NULL;
  t->storage = storage_alloc((size_t)n * sere_dtype_size(dtype), dev, zero);
  if (!t->storage) { free(t); return NULL; }
  t->ndim = ndim;
  t->dtype = dtype;
  if (ndim) memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
  set_contiguous_strides(t);
  return t;
}

sere_tensor *sere_tensor_new(sere_dtype dtype, int ndim, const int64_t *shape) {
  return tensor_alloc(dtype, ndim, shape, SERE_CPU, 1);
}

sere_tensor *sere_tensor_new_uninit(sere_dtype dtype, int ndim, const int64_t *shape) {
  return tensor_alloc(dtype, ndim, shape, SERE_CPU, 0);
}

sere_tensor *sere_tensor_new_on(sere_device_type dev, sere_dtype dtype, int ndim, const int64_t *shape) {
  return tensor_alloc(dtype, ndim, shape, dev, 1);
}

sere_tensor *sere_tensor_new_uninit_on(sere_device_type dev, sere_dtype dtype, int ndim, const int64_t *shape) {
  return tensor_alloc(dtype, ndim, shape, dev, 0);
}

sere_tensor *sere_tensor_new_like(const sere_tensor *like, sere_dtype dtype) {
  return sere_tensor_new_on(sere_device_of(like), dtype, like->ndim, like->shape);
}

sere_tensor *sere_tensor_new_uninit_like(const sere_tensor *like, sere_dtype dtype) {
  return sere_tensor_new_uninit_on(sere_device_of(like), dtype, like->ndim, like->shape);
}

/* ---- devices --------------------------------------------------------- */
const char *sere_device_name(sere_device_type d) { return d == SERE_CUDA ? "cuda" : "cpu"; }

int sere_common_device(const char *op, sere_device_type *dev, int n, sere_tensor *const *ts) {
  const sere_tensor *first = NULL;
  for (int i = 0; i < n; i++) {
    if (!ts[i]) continue;
    if (!first) first = ts[i];
    else if (sere_device_of(ts[i]) != sere_device_of(first)) {
      sere_fail("%s: expected all tensors on one device, got %s and %s (move them with :to())", op,
                sere_device_name(sere_device_of(first)), sere_device_name(sere_device_of(ts[i])));
      return -1;
    }
  }
  *dev = first ? sere_device_of(first) : SERE_CPU;
  return 0;
}

int sere_require_cpu(const char *op, int n, sere_tensor *const *ts) {
  for (int i = 0; i < n; i++)
    if (ts[i] && sere_device_of(ts[i]) != SERE_CPU) {
      sere_fail("%s: not implemented for cuda tensors; move the input to the cpu with :cpu()", op);
      return -1;
    }
  return 0;
}

sere_tensor *sere_tensor_view_of(const sere_tensor *base, int ndim, const int64_t *shape,
                                 const int64_t *stride, int64_t offset) {
  sere_tensor *t = tensor_header();
  if (!t) return NULL;
  t->storage = base->storage;
  sere_storage_retain(t->storage);
  t->ndim = ndim;
  t->dtype = base->dtype;
  t->offset = offset;
  if (ndim) {
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    memcpy(t->stride, stride, sizeof(int64_t) * (size_t)ndim);
  }
  return t;
}

sere_tensor *sere_tensor_retain(sere_tensor *t) {
  if (t) t->refcount++;
  return t;
}

void sere_tensor_release(sere_tensor *t) {
  if (!t || --t->refcount > 0) return;
  sere_storage_release(t->storage);
  sere_tensor_release(t->grad);
  if (t->grad_fn) sere_node_release(t->grad_fn);
  free(t);
}

int sere_is_contiguous(const sere_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != s) return 0;
    s *= t->shape[i];
  }
  return 1;
}

int sere_same_shape(const sere_tensor *a, const sere_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

int sere_wrap_dim(int dim, int ndim, const char *op, int *out) {
  int n = ndim > 0 ? ndim : 1;
  int d = dim < 0 ? dim + n : dim;
  if (d < 0 || d >= n) {
    /* report the dim as the Lua caller wrote it: 1-based, or negative */
    sere_fail("%s: dim %d out of range for a tensor with %d dims (valid: 1 to %d, or -1 to -%d)", op,
              dim < 0 ? dim : dim + 1, ndim, n, n);
    return -1;
  }
  *out = d;
  return 0;
}

/* ---- element access -------------------------------------------------- */
double sere_load_linear(const void *base, sere_dtype d, int64_t i) {
  switch (d) {
    case SERE_F32: return ((const float *)base)[i];
    case SERE_BF16: return sere_bf16_to_f32(((const uint16_t *)base)[i]);
    case SERE_I32: return ((const int32_t *)base)[i];
    case SERE_I64: return (double)((const int64_t *)base)[i];
    case SERE_U8: return ((const uint8_t *)base)[i];
    case SERE_BOOL: return ((const uint8_t *)base)[i] != 0;
    default: return 0;
  }
}

void sere_store_linear(void *base, sere_dtype d, int64_t i, double v) {
  switch (d) {
    case SERE_F32: ((float *)base)[i] = (float)v; break;
    case SERE_BF16: ((uint16_t *)base)[i] = sere_f32_to_bf16((float)v); break;
    case SERE_I32: ((int32_t *)base)[i] = (int32_t)v; break;
    case SERE_I64: ((int64_t *)base)[i] = (int64_t)v; break;
    case SERE_U8: ((uint8_t *)base)[i] = (uint8_t)(int64_t)v; break;
    case SERE_BOOL: ((uint8_t *)base)[i] = v != 0; break;
    default: break;
  }
}

int sere_read_elem(const sere_tensor *t, const int64_t *index, void *out) {
  int64_t off = t->offset;
  for (int i = 0; i < t->ndim; i++) off += index[i] * t->stride[i];
  size_t es = sere_dtype_size(t->dtype);
  const char *p = (const char *)t->storage->data + off * (int64_t)es;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(t) == SERE_CUDA) return sere_cuda_download(out, p, es);
#endif
  memcpy(out, p, es);
  return 0;
}

double sere_get_elem(const sere_tensor *t, const int64_t *index) {
  unsigned char buf[8];
  if (sere_read_elem(t, index, buf)) return NAN;
  return sere_load_linear(buf, t->dtype, 0);
}

/* ---- copies ---------------------------------------------------------- */
/* Copies one row of n elements (src stride ss, dst stride ds) converting dtypes.
 * Same-dtype contiguous rows go through memcpy; f32<->bf16 have direct loops
 * because they are on the hot path of mixed precision. */
static void copy_row(void *dst, sere_dtype dd, int64_t ds, const void *src, sere_dtype sd, int64_t ss,
                     int64_t n) {
  if (dd == sd && ds == 1 && ss == 1) {
    memcpy(dst, src, (size_t)n * sere_dtype_size(dd));
    return;
  }
  if (dd == SERE_F32 && sd == SERE_F32) {
    float *d = dst; const float *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
  } else if (dd == SERE_BF16 && sd == SERE_F32) {
    uint16_t *d = dst; const float *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = sere_f32_to_bf16(s[i * ss]);
  } else if (dd == SERE_F32 && sd == SERE_BF16) {
    float *d = dst; const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = sere_bf16_to_f32(s[i * ss]);
  } else if (dd == SERE_I64 && sd == SERE_I64) {
    int64_t *d = dst; const int64_t *s = src;
    for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
  } else {
    for (int64_t i = 0; i < n; i++) sere_store_linear(dst, dd, i * ds, sere_load_linear(src, sd, i * ss));
  }
}

static int copy_with_device(sere_tensor *dst, const sere_tensor *src);

int sere_copy_raw(sere_tensor *dst, const sere_tensor *src) {
  if (!sere_same_shape(dst, src)) {
    char a[128], b[128];
    sere_fail("copy: shape %s cannot be copied into shape %s", sere_shape_str(src, a, sizeof a),
              sere_shape_str(dst, b, sizeof b));
    return -1;
  }
  int64_t n = sere_numel(dst);
  if (n == 0) return 0;
  if (sere_device_of(dst) != SERE_CPU || sere_device_of(src) != SERE_CPU) return copy_with_device(dst, src);
  /* Overlapping storage (e.g. copying a tensor into a transposed view of
   * itself) would read already-written values: go through a temporary. */
  if (dst->storage == src->storage) {
    sere_tensor *tmp = sere_tensor_new_uninit(src->dtype, src->ndim, src->shape);
    if (!tmp) return -1;
    if (sere_copy_raw(tmp, src) || sere_copy_raw(dst, tmp)) { sere_tensor_release(tmp); return -1; }
    sere_tensor_release(tmp);
    return 0;
  }
  int nd = dst->ndim;
  if (nd == 0) {
    copy_row(sere_data(dst), dst->dtype, 1, sere_data(src), src->dtype, 1, 1);
    return 0;
  }
  if (sere_is_contiguous(dst) && sere_is_contiguous(src)) {
    copy_row(sere_data(dst), dst->dtype, 1, sere_data(src), src->dtype, 1, n);
    return 0;
  }
  int64_t rows = n / dst->shape[nd - 1], len = dst->shape[nd - 1];
  int64_t index[SERE_MAX_DIMS] = {0};
  size_t des = sere_dtype_size(dst->dtype), ses = sere_dtype_size(src->dtype);
  for (int64_t r = 0; r < rows; r++) {
    int64_t doff = dst->offset, soff = src->offset;
    for (int i = 0; i < nd - 1; i++) {
      doff += index[i] * dst->stride[i];
      soff += index[i] * src->stride[i];
    }
    copy_row((char *)dst->storage->data + doff * (int64_t)des, dst->dtype, dst->stride[nd - 1],
             (const char *)src->storage->data + soff * (int64_t)ses, src->dtype, src->stride[nd - 1], len);
    sere_index_next(nd - 1, dst->shape, index);
  }
  return 0;
}

/* Copies where one side (or both) is on the GPU: device-to-device in a
 * kernel; across devices as one contiguous transfer in dst's dtype, with
 * the strided/converting part done on whichever side needs it. */
static int copy_with_device(sere_tensor *dst, const sere_tensor *src) {
#ifdef SERE_WITH_CUDA
  sere_device_type dd = sere_device_of(dst), sd = sere_device_of(src);
  if (dd == SERE_CUDA && sd == SERE_CUDA) {
    if (dst->storage != src->storage) return sere_cuda_copy(dst, src);
    sere_tensor *tmp = sere_tensor_new_uninit_like(src, src->dtype);
    int rc = !tmp || sere_cuda_copy(tmp, src) || sere_cuda_copy(dst, tmp) ? -1 : 0;
    sere_tensor_release(tmp);
    return rc;
  }
  /* Bring src to one contiguous block in dst's dtype on its own device. */
  sere_tensor *packed = sere_as_contiguous_dtype((sere_tensor *)src, dst->dtype);
  if (!packed) return -1;
  sere_tensor *landing = sere_is_contiguous(dst) ? sere_tensor_retain(dst)
                                                 : sere_tensor_new_uninit_on(dd, dst->dtype, dst->ndim, dst->shape);
  int rc = -1;
  if (landing) {
    size_t nbytes = (size_t)sere_numel(dst) * sere_dtype_size(dst->dtype);
    rc = dd == SERE_CUDA ? sere_cuda_upload(sere_data(landing), sere_data(packed), nbytes)
                         : sere_cuda_download(sere_data(landing), sere_data(packed), nbytes);
    if (rc == 0 && landing != dst) rc = sere_copy_raw(dst, landing);
    sere_tensor_release(landing);
  }
  sere_tensor_release(packed);
  return rc;
#else
  (void)dst; (void)src;
  sere_fail("cuda: this sere was built without CUDA");
  return -1;
#endif
}

sere_tensor *sere_as_contiguous_dtype(sere_tensor *t, sere_dtype d) {
  if (t->dtype == d && sere_is_contiguous(t)) return sere_tensor_retain(t);
  sere_tensor *out = sere_tensor_new_uninit_like(t, d);
  if (!out) return NULL;
  if (sere_copy_raw(out, t)) { sere_tensor_release(out); return NULL; }
  return out;
}

sere_tensor *sere_contiguous_raw(sere_tensor *t) { return sere_as_contiguous_dtype(t, t->dtype); }

sere_tensor *sere_contiguous_on(sere_tensor *t, sere_device_type dev) {
  if (sere_device_of(t) == dev && sere_is_contiguous(t)) return sere_tensor_retain(t);
  sere_tensor *out = sere_tensor_new_uninit_on(dev, t->dtype, t->ndim, t->shape);
  if (out && sere_copy_raw(out, t)) {
    sere_tensor_release(out);
    return NULL;
  }
  return out;
}

int sere_fill_raw(sere_tensor *t, double v) {
  int64_t n = sere_numel(t);
  if (n == 0) return 0;
#ifdef SERE_WITH_CUDA
  if (sere_device_of(t) == SERE_CUDA) return sere_cuda_fill(t, v);
#endif
  if (sere_is_contiguous(t)) {
    void *p = sere_data(t);
    if (t->dtype == SERE_F32) {
      float f = (float)v, *d = p;
      for (int64_t i = 0; i < n; i++) d[i] = f;
    } else {
      for (int64_t i = 0; i < n; i++) sere_store_linear(p, t->dtype, i, v);
    }
    return 0;
  }
  int64_t index[SERE_MAX_DIMS] = {0};
  do {
    int64_t off = t->offset;
    for (int i = 0; i < t->ndim; i++) off += index[i] * t->stride[i];
    sere_store_linear(t->storage->data, t->dtype, off, v);
  } while (sere_index_next(t->ndim, t->shape, index));
  return 0;
}
