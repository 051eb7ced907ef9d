/* tensor.h — the tensor core: dtypes, refcounted storage, strided tensors,
 * views, copies and dtype conversion, plus the error convention every C op
 * follows.
 *
 * Conventions (the whole C core follows them):
 *  - The core never touches Lua. A function that can fail returns NULL (or
 *    -1) after calling sere_fail(), which records a message in a
 *    thread-local buffer; the Lua binding layer turns it into a Lua error.
 *    A failing function frees everything it allocated before returning.
 *  - Dims and indices are 0-based here; the Lua layer is 1-based and
 *    converts at the boundary (index tensors carry an explicit `base`).
 *  - A function returning `sere_tensor *` returns a NEW reference that the
 *    caller owns; arguments are borrowed unless the name says `steal`.
 *  - bf16 is stored as the top 16 bits of an f32 and computed in f32.
 */
#ifndef SERE_TENSOR_H
#define SERE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SERE_MAX_DIMS 8

typedef enum {
  SERE_F32 = 0,
  SERE_BF16,
  SERE_I32,
  SERE_I64,
  SERE_U8,
  SERE_BOOL,
  SERE_NDTYPES
} sere_dtype;

typedef enum { SERE_CPU = 0, SERE_CUDA = 1 } sere_device_type;

typedef struct sere_storage {
  void *data;
  size_t nbytes;
  int refcount;
  sere_device_type device;
  int device_index;
  /* Bumped by every in-place write; autograd compares it with the value
   * recorded when a tensor was saved for backward. */
  uint32_t version;
} sere_storage;

struct sere_node;

typedef struct sere_tensor {
  int refcount;
  sere_storage *storage;
  int64_t offset; /* in elements */
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int64_t stride[SERE_MAX_DIMS]; /* in elements */
  sere_dtype dtype;
  /* autograd */
  int requires_grad;          /* leaf flag, or "has a grad_fn" for non-leaves */
  struct sere_tensor *grad;   /* accumulated gradient of a leaf (owned) */
  struct sere_node *grad_fn;  /* node that produced this tensor (owned ref) */
} sere_tensor;

/* ---- errors ---------------------------------------------------------- */
/* Records a printf-style message; always returns NULL for `return sere_fail(...)`. */
void *sere_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *sere_last_error(void);
/* Formats a shape as "[2, 3]" into buf (for messages); returns buf. */
const char *sere_shape_str(const sere_tensor *t, char *buf, size_t n);
/* Same for a raw shape array. */
const char *sere_shape_str_raw(int ndim, const int64_t *shape, char *buf, size_t n);

/* ---- dtypes ---------------------------------------------------------- */
size_t sere_dtype_size(sere_dtype d);
const char *sere_dtype_name(sere_dtype d);
int sere_dtype_from_name(const char *name, sere_dtype *out); /* 0 ok, -1 unknown */
int sere_dtype_is_float(sere_dtype d);
/* PyTorch-style promotion of two tensor dtypes. */
sere_dtype sere_promote(sere_dtype a, sere_dtype b);

static inline float sere_bf16_to_f32(uint16_t h) {
  union { uint32_t u; float f; } v;
  v.u = (uint32_t)h << 16;
  return v.f;
}
/* Round to nearest even; NaN stays NaN. */
static inline uint16_t sere_f32_to_bf16(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
  return (uint16_t)((v.u + rounding) >> 16);
}

/* ---- lifetime -------------------------------------------------------- */
sere_storage *sere_storage_new(size_t nbytes, sere_device_type dev); /* zeroed memory */
void sere_storage_retain(sere_storage *s);
void sere_storage_release(sere_storage *s);
/* Total bytes held by live CPU storages (to pace Lua's collector). */
size_t sere_storage_live_bytes(void);

/* New contiguous tensor; memory is zero-filled. */
sere_tensor *sere_tensor_new(sere_dtype dtype, int ndim, const int64_t *shape);
/* Same without zero-filling: only for outputs that an op overwrites entirely. */
sere_tensor *sere_tensor_new_uninit(sere_dtype dtype, int ndim, const int64_t *shape);
/* The same on a device (SERE_CPU or SERE_CUDA). */
sere_tensor *sere_tensor_new_on(sere_device_type dev, sere_dtype dtype, int ndim, const int64_t *shape);
sere_tensor *sere_tensor_new_uninit_on(sere_device_type dev, sere_dtype dtype, int ndim, const int64_t *shape);
/* New contiguous tensor with the shape and device of `like`. */
sere_tensor *sere_tensor_new_like(const sere_tensor *like, sere_dtype dtype);
sere_tensor *sere_tensor_new_uninit_like(const sere_tensor *like, sere_dtype dtype);
/* New tensor header over an existing storage (a view); retains storage. */
sere_tensor *sere_tensor_view_of(const sere_tensor *base, int ndim, const int64_t *shape,
                                 const int64_t *stride, int64_t offset);
sere_tensor *sere_tensor_retain(sere_tensor *t);
void sere_tensor_release(sere_tensor *t);

/* ---- devices --------------------------------------------------------- */
static inline sere_device_type sere_device_of(const sere_tensor *t) { return t->storage->device; }
const char *sere_device_name(sere_device_type d);
/* The device of the non-NULL tensors among ts[0..n); -1 with an error
 * naming `op` if they are on different devices. */
int sere_common_device(const char *op, sere_device_type *dev, int n, sere_tensor *const *ts);
/* -1 with an error naming `op` if any non-NULL tensor is not on the CPU:
 * the guard of ops that have no CUDA implementation. */
int sere_require_cpu(const char *op, int n, sere_tensor *const *ts);

/* ---- queries --------------------------------------------------------- */
int64_t sere_numel(const sere_tensor *t);
int64_t sere_numel_raw(int ndim, const int64_t *shape);
int sere_is_contiguous(const sere_tensor *t);
int sere_same_shape(const sere_tensor *a, const sere_tensor *b);
/* Normalises a possibly negative 0-based dim against ndim (PyTorch rule). */
int sere_wrap_dim(int dim, int ndim, const char *op, int *out);
static inline void *sere_data(const sere_tensor *t) {
  return (char *)t->storage->data + (size_t)t->offset * sere_dtype_size(t->dtype);
}
/* Compute-type element access for generic (slow) paths; on a GPU tensor
 * each call is a transfer (NaN if it failed). */
double sere_get_elem(const sere_tensor *t, const int64_t *index);
/* Copies the bytes of one element (any device) to `out` (8 bytes suffice). */
int sere_read_elem(const sere_tensor *t, const int64_t *index, void *out);
double sere_load_linear(const void *base, sere_dtype d, int64_t i);
void sere_store_linear(void *base, sere_dtype d, int64_t i, double v);

/* ---- copies and conversion (no autograd) ----------------------------- */
/* dst[...] = src[...] with dtype conversion; shapes must match exactly. */
int sere_copy_raw(sere_tensor *dst, const sere_tensor *src);
/* Returns `t` retained if already contiguous, else a contiguous copy. */
sere_tensor *sere_contiguous_raw(sere_tensor *t);
/* Returns `t` retained if already contiguous on `dev`, else a contiguous copy there. */
sere_tensor *sere_contiguous_on(sere_tensor *t, sere_device_type dev);
/* Returns `t` retained if already dtype `d` and contiguous, else a contiguous converted copy. */
sere_tensor *sere_as_contiguous_dtype(sere_tensor *t, sere_dtype d);
int sere_fill_raw(sere_tensor *t, double v);

/* Strided N-d index iteration: advance `index` (size ndim) in row-major
 * order; returns 0 when the iteration wrapped around. */
static inline int sere_index_next(int ndim, const int64_t *shape, int64_t *index) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++index[d] < shape[d]) return 1;
    index[d] = 0;
  }
  return 0;
}

#ifdef __cplusplus
}
#endif
#endif
