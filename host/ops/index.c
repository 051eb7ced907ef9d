/* index.c — joining (cat, stack), selection through index tensors
 * (index_select, gather, scatter_add), masked_select and nonzero, with
 * their backward functions.
 *
 * Index tensors are i64 or i32 and hold indices in the caller's `base` (1
 * from Lua). They are read once into a 0-based int64 array with every value
 * bounds-checked before the output is allocated; the array is kept in the
 * autograd node (n->extra) for the backward pass. cat copies whole
 * contiguous blocks with memcpy; index_select copies whole rows.
 *
 * On the GPU (kernels/index.cu) the indices are read and checked by a
 * kernel into a contiguous i64 device tensor, saved in the node's slot 0;
 * an out-of-range index is reported after the kernel, with the CPU's
 * message. Scatter-adds there use atomics (float sums at repeated indices
 * in an unspecified order).
 */
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/index.h"
#endif

#define SHAPE_BUF 160

/* A view of t broadcast to `shape` (no autograd). */
static sere_tensor *expand_raw(const sere_tensor *t, int ndim, const int64_t *shape) {
  int64_t stride[SERE_MAX_DIMS];
  for (int i = 0; i < ndim; i++) {
    int j = i - (ndim - t->ndim);
    stride[i] = j >= 0 && t->shape[j] == shape[i] ? t->stride[j] : 0;
  }
  return sere_tensor_view_of(t, ndim, shape, stride, t->offset);
}

static int64_t inner_size(const sere_tensor *t, int dim) {
  int64_t n = 1;
  for (int i = dim + 1; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

static void index_range_error(const char *op, int64_t v, int64_t base, int64_t size, int dim) {
  if (size == 0) sere_fail("%s: index %lld is out of range: dim %d has size 0", op, (long long)v, dim + 1);
  else sere_fail("%s: index %lld is out of range for dim %d of size %lld (valid: %lld to %lld)", op, (long long)v,
                 dim + 1, (long long)size, (long long)base, (long long)(base + size - 1));
}

/* 0-based indices read from an index tensor: a host array for a CPU index,
 * a contiguous i64 tensor for a GPU one. */
typedef struct {
  int64_t *host;
  sere_tensor *device;
} indices;

/* Reads an i64/i32 index tensor into 0-based indices (row major), checking
 * each against [0, size) of dim `dim`. */
static int read_indices(indices *ix, const char *op, const sere_tensor *index, int64_t base, int64_t size, int dim) {
  ix->host = NULL;
  ix->device = NULL;
  if (index->dtype != SERE_I64 && index->dtype != SERE_I32) {
    sere_fail("%s: index must be an i64 or i32 tensor, got %s", op, sere_dtype_name(index->dtype));
    return -1;
  }
  int64_t n = sere_numel(index), pos[SERE_MAX_DIMS] = {0};
#ifdef SERE_WITH_CUDA
  if (sere_device_of(index) == SERE_CUDA) {
    int64_t bad;
    sere_tensor *idx = sere_tensor_new_uninit_on(SERE_CUDA, SERE_I64, 1, &n);
    int rc = idx ? sere_cuda_read_indices(index, base, size, idx, &bad) : -1;
    if (rc == 0) { ix->device = idx; return 0; }
    sere_tensor_release(idx);
    if (rc == 1) { /* fetch the offending value for the message */
      for (int d = index->ndim - 1; d >= 0; d--) {
        pos[d] = bad % index->shape[d];
        bad /= index->shape[d];
      }
      int64_t v = (int64_t)sere_get_elem(index, pos);
      index_range_error(op, v, base, size, dim);
    }
    return -1;
  }
#endif
  int64_t *idx = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
  if (!idx) { sere_fail("%s: out of memory reading %lld indices", op, (long long)n); return -1; }
  for (int64_t i = 0; i < n; i++) {
    int64_t off = index->offset;
    for (int d = 0; d < index->ndim; d++) off += pos[d] * index->stride[d];
    int64_t v = index->dtype == SERE_I64 ? ((const int64_t *)index->storage->data)[off]
                                          : ((const int32_t *)index->storage->data)[off];
    if (v < base || v - base >= size) {
      free(idx);
      index_range_error(op, v, base, size, dim);
      return -1;
    }
    idx[i] = v - base;
    sere_index_next(index->ndim, index->shape, pos);
  }
  ix->host = idx;
  return 0;
}

static void indices_release(indices *ix) {
  free(ix->host);
  sere_tensor_release(ix->device);
}

/* Hands the indices over to the node for its backward: the host array as
 * n->extra, the device tensor as saved slot 0. */
static void indices_keep(sere_node *n, indices *ix) {
  if (ix->device) sere_node_save(n, 0, ix->device);
  else n->extra = ix->host;
  ix->host = NULL;
  indices_release(ix);
}

/* The indices a node kept, or -1 with an error. */
static int node_indices(sere_node *n, indices *ix) {
  ix->host = n->extra;
  ix->device = ix->host ? NULL : sere_node_saved(n, 0);
  return ix->host || ix->device ? 0 : -1;
}

/* ---- cat / stack ----------------------------------------------------- */
/* Like PyTorch, an empty 1-D tensor may join tensors of any shape: it is
 * skipped when the result (of ndim out_ndim) is not 1-D. */
static int cat_skips(const sere_tensor *t, int out_ndim) { return t->ndim == 1 && t->shape[0] == 0 && out_ndim != 1; }

/* Output shape and dtype of cat, or -1 with an error. The first tensor
 * that is not an empty 1-D one sets the shape. */
static int cat_check(int n, sere_tensor *const *ts, int dim, int *d, int *ndim, int64_t *shape, sere_dtype *dtype) {
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (n < 1) { sere_fail("cat: expected at least one tensor"); return -1; }
  int r = 0;
  while (r < n - 1 && ts[r]->ndim == 1 && ts[r]->shape[0] == 0) r++;
  const sere_tensor *ref = ts[r];
  if (ref->ndim == 0) { sere_fail("cat: tensor %d is 0-dim and cannot be concatenated", r + 1); return -1; }
  if (sere_wrap_dim(dim, ref->ndim, "cat", d)) return -1;
  *ndim = ref->ndim;
  memcpy(shape, ref->shape, sizeof(int64_t) * (size_t)ref->ndim);
  shape[*d] = 0;
  *dtype = ts[0]->dtype;
  for (int i = 0; i < n; i++) {
    const sere_tensor *t = ts[i];
    *dtype = sere_promote(*dtype, t->dtype);
    if (cat_skips(t, ref->ndim)) continue;
    int ok = t->ndim == ref->ndim;
    for (int j = 0; ok && j < t->ndim; j++) ok = j == *d || t->shape[j] == ref->shape[j];
    if (!ok) {
      sere_fail("cat: tensor %d has shape %s but tensor %d has shape %s; sizes must match except in dim %d", i + 1,
                sere_shape_str(t, a, sizeof a), r + 1, sere_shape_str(ref, b, sizeof b), *d + 1);
      return -1;
    }
    shape[*d] += t->shape[*d];
  }
  return 0;
}

/* The part of out that starts at `start` along dim with `length` (a view). */
static sere_tensor *slab(const sere_tensor *out, int dim, int64_t start, int64_t length) {
  int64_t shape[SERE_MAX_DIMS];
  memcpy(shape, out->shape, sizeof shape);
  shape[dim] = length;
  return sere_tensor_view_of(out, out->ndim, shape, out->stride, out->offset + start * out->stride[dim]);
}

/* Copies t into out at `start` along dim: a memcpy per block when t is
 * contiguous with out's dtype, else a strided converting copy. */
static int cat_copy(sere_tensor *out, const sere_tensor *t, int dim, int64_t start) {
#ifdef SERE_WITH_CUDA
  if (sere_device_of(out) == SERE_CUDA) return sere_cuda_cat_copy(out, t, dim, start);
#endif
  int64_t outer = 1, inner = inner_size(out, dim);
  for (int i = 0; i < dim; i++) outer *= out->shape[i];
  if (t->dtype == out->dtype && sere_is_contiguous(t)) {
    size_t es = sere_dtype_size(t->dtype);
    int64_t tblock = t->shape[dim] * inner, oblock = out->shape[dim] * inner;
    char *dst = (char *)sere_data(out) + (size_t)(start * inner) * es;
    const char *src = sere_data(t);
#pragma omp parallel for if (outer > 1 && outer * tblock > (1 << 18))
    for (int64_t o = 0; o < outer; o++)
      memcpy(dst + (size_t)(o * oblock) * es, src + (size_t)(o * tblock) * es, (size_t)tblock * es);
    return 0;
  }
  sere_tensor *region = slab(out, dim, start, t->shape[dim]);
  int rc = region ? sere_copy_raw(region, t) : -1;
  sere_tensor_release(region);
  return rc;
}

/* Each input's gradient is the slice of g it was copied to. */
static int cat_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  int dim = (int)n->ints[0];
  int64_t start = 0;
  for (int i = 0; i < n->ninputs; i++) {
    const sere_edge *e = &n->edges[i];
    int skipped = e->ndim != g->ndim;
    int64_t len = skipped ? 0 : e->shape[dim];
    if (sere_edge_needed(n, i)) {
      gi[i] = skipped ? sere_tensor_new_on(sere_device_of(g), e->dtype, 1, e->shape)
                      : sere_grad_as(sere_narrow(g, dim, start, len), e->dtype);
      if (!gi[i]) return -1;
    }
    start += len;
  }
  return 0;
}

/* Records the cat node of `out`, made from ts along dim. */
static int cat_record(sere_tensor *out, int n, sere_tensor *const *ts, int dim) {
  sere_node *node = sere_node_new("cat", cat_backward, n, ts);
  if (!node) return -1;
  node->ints[0] = dim;
  sere_attach(out, node);
  return 0;
}

sere_tensor *sere_cat(int n, sere_tensor *const *ts, int dim) {
  int d, ndim;
  int64_t shape[SERE_MAX_DIMS];
  sere_dtype dtype;
  sere_device_type dev;
  if (sere_common_device("cat", &dev, n, ts) || cat_check(n, ts, dim, &d, &ndim, shape, &dtype)) return NULL;
  sere_tensor *out = sere_tensor_new_uninit_on(dev, dtype, ndim, shape); /* the inputs tile it */
  if (!out) return NULL;
  int64_t start = 0;
  for (int i = 0; i < n; i++) {
    if (cat_skips(ts[i], ndim)) continue;
    if (cat_copy(out, ts[i], d, start)) { sere_tensor_release(out); return NULL; }
    start += ts[i]->shape[d];
  }
  if (sere_needs_grad(n, ts) && cat_record(out, n, ts, d)) { sere_tensor_release(out); return NULL; }
  return out;
}

/* stack = cat of the inputs with a new size-1 dim; autograd comes from
 * unsqueeze and cat. */
sere_tensor *sere_stack(int n, sere_tensor *const *ts, int dim) {
  char a[SHAPE_BUF], b[SHAPE_BUF];
  int d;
  sere_device_type dev;
  if (n < 1) return sere_fail("stack: expected at least one tensor");
  if (sere_common_device("stack", &dev, n, ts)) return NULL;
  for (int i = 1; i < n; i++)
    if (!sere_same_shape(ts[i], ts[0]))
      return sere_fail("stack: tensor %d has shape %s but tensor 1 has shape %s; all must have the same shape", i + 1,
                       sere_shape_str(ts[i], a, sizeof a), sere_shape_str(ts[0], b, sizeof b));
  if (ts[0]->ndim >= SERE_MAX_DIMS) return sere_fail("stack: tensors already have %d dims", ts[0]->ndim);
  if (sere_wrap_dim(dim, ts[0]->ndim + 1, "stack", &d)) return NULL;
  sere_tensor **u = calloc((size_t)n, sizeof *u);
  if (!u) return sere_fail("stack: out of memory");
  sere_tensor *out = NULL;
  int i = 0;
  while (i < n && (u[i] = sere_unsqueeze(ts[i], d))) i++;
  if (i == n) out = sere_cat(n, u, d);
  for (i = 0; i < n; i++) sere_tensor_release(u[i]);
  free(u);
  return out;
}

/* ---- index_select ------------------------------------------------------ */
/* Adds each row block of g (outer x nidx x inner) into row idx[j] of z
 * (outer x size x inner); repeated indices accumulate. */
static int index_select_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  int dim = (int)n->ints[0];
  int64_t nidx = n->ints[1], size = e->shape[dim], outer = 1, inner = 1;
  indices ix;
  if (node_indices(n, &ix)) return -1;
  const int64_t *idx = ix.host;
  for (int i = 0; i < dim; i++) outer *= e->shape[i];
  for (int i = dim + 1; i < e->ndim; i++) inner *= e->shape[i];
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *z = gf ? sere_tensor_new_on(sere_device_of(g), SERE_F32, e->ndim, e->shape) : NULL;
  if (!z) { sere_tensor_release(gf); return -1; }
  int rc = 0;
  if (ix.device) {
#ifdef SERE_WITH_CUDA
    rc = sere_cuda_index_select_backward(z, gf, dim, ix.device);
#endif
  } else {
    const float *src = sere_data(gf);
    float *dst = z->storage->data;
#pragma omp parallel for if (outer > 1 && outer * nidx * inner > (1 << 15))
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j = 0; j < nidx; j++) {
        float *row = dst + (o * size + idx[j]) * inner;
        const float *s = src + (o * nidx + j) * inner;
        for (int64_t q = 0; q < inner; q++) row[q] += s[q];
      }
  }
  sere_tensor_release(gf);
  if (rc) { sere_tensor_release(z); return -1; }
  gi[0] = sere_grad_as(z, e->dtype);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_index_select(sere_tensor *t, int dim, sere_tensor *index, int64_t base) {
  char a[SHAPE_BUF];
  int d;
  sere_device_type dev;
  indices ix;
  if (sere_common_device("index_select", &dev, 2, (sere_tensor *[]){t, index})) return NULL;
  if (t->ndim == 0) return sere_fail("index_select: cannot index a 0-dim tensor");
  if (index->ndim > 1)
    return sere_fail("index_select: index must be 1-D, got shape %s", sere_shape_str(index, a, sizeof a));
  if (sere_wrap_dim(dim, t->ndim, "index_select", &d)) return NULL;
  if (read_indices(&ix, "index_select", index, base, t->shape[d], d)) return NULL;
  int64_t nidx = sere_numel(index), shape[SERE_MAX_DIMS], outer = 1, inner = inner_size(t, d), size = t->shape[d];
  memcpy(shape, t->shape, sizeof shape);
  shape[d] = nidx;
  for (int i = 0; i < d; i++) outer *= t->shape[i];
  sere_tensor *tc = sere_contiguous_raw(t);
  sere_tensor *out = tc ? sere_tensor_new_uninit_on(dev, t->dtype, t->ndim, shape) : NULL;
  if (!out) { sere_tensor_release(tc); indices_release(&ix); return NULL; }
  int rc = 0;
  if (ix.device) {
#ifdef SERE_WITH_CUDA
    rc = sere_cuda_index_select(out, tc, d, ix.device);
#endif
  } else {
    const int64_t *idx = ix.host;
    size_t row = (size_t)inner * sere_dtype_size(t->dtype);
    const char *src = sere_data(tc);
    char *dst = out->storage->data;
#pragma omp parallel for if (outer * nidx * inner > (1 << 16))
    for (int64_t r = 0; r < outer * nidx; r++)
      memcpy(dst + (size_t)r * row, src + (size_t)((r / nidx) * size + idx[r % nidx]) * row, row);
  }
  sere_tensor_release(tc);
  if (rc) { indices_release(&ix); sere_tensor_release(out); return NULL; }
  if (!sere_needs_grad(1, &t)) { indices_release(&ix); return out; }
  sere_node *n = sere_node_new("index_select", index_select_backward, 1, &t);
  if (!n) { indices_release(&ix); sere_tensor_release(out); return NULL; }
  n->ints[0] = d;
  n->ints[1] = nidx;
  indices_keep(n, &ix);
  sere_attach(out, n);
  return out;
}

/* ---- gather / scatter_add ---------------------------------------------- */
typedef enum { WALK_GATHER, WALK_SCATTER_ADD } walk_mode;

/* For every position p of an index of shape (ndim, shape) holding the
 * 0-based values idx (row-major), with q = p except q[dim] = idx[p]:
 *   WALK_GATHER:      y[p] = x[q]
 *   WALK_SCATTER_ADD: x[q] += y[p]
 * x and y are element pointers with strides; both have dtype d. */
static void walk(walk_mode mode, sere_dtype d, int ndim, const int64_t *shape, int dim, const int64_t *idx, char *x,
                 const int64_t *xs, char *y, const int64_t *ys) {
  int64_t n = sere_numel_raw(ndim, shape), pos[SERE_MAX_DIMS] = {0};
  size_t es = sere_dtype_size(d);
  for (int64_t i = 0; i < n; i++) {
    int64_t xo = 0, yo = 0;
    for (int k = 0; k < ndim; k++) {
      xo += (k == dim ? idx[i] : pos[k]) * xs[k];
      yo += pos[k] * ys[k];
    }
    if (mode == WALK_GATHER) {
      memcpy(y + yo * (int64_t)es, x + xo * (int64_t)es, es);
    } else if (d == SERE_I64) { /* exact, wrapping like PyTorch */
      int64_t *xp = (int64_t *)x + xo;
      *xp = (int64_t)((uint64_t)*xp + (uint64_t)((const int64_t *)y)[yo]);
    } else {
      sere_store_linear(x, d, xo, sere_load_linear(x, d, xo) + sere_load_linear(y, d, yo));
    }
    sere_index_next(ndim, shape, pos);
  }
}

/* walk() over the tensors x and y (one dtype), on their device. */
static int walk_tensors(walk_mode mode, int ndim, const int64_t *shape, int dim, const indices *ix, sere_tensor *x,
                        sere_tensor *y) {
#ifdef SERE_WITH_CUDA
  if (ix->device)
    return mode == WALK_GATHER ? sere_cuda_gather_walk(ndim, shape, dim, ix->device, x, y)
                               : sere_cuda_scatter_add_walk(ndim, shape, dim, ix->device, x, y);
#endif
  walk(mode, x->dtype, ndim, shape, dim, ix->host, sere_data(x), x->stride, sere_data(y), y->stride);
  return 0;
}

/* Checks the shapes of gather/scatter_add: same ndim, and the index no
 * larger than `t` outside dim (nor than `src`, if given, in any dim). */
static int check_index_shape(const char *op, const sere_tensor *t, int dim, const sere_tensor *index,
                             const sere_tensor *src, int *d) {
  char a[SHAPE_BUF], b[SHAPE_BUF], c[SHAPE_BUF];
  if (t->ndim == 0) { sere_fail("%s: cannot index a 0-dim tensor", op); return -1; }
  if (sere_wrap_dim(dim, t->ndim, op, d)) return -1;
  int ok = index->ndim == t->ndim && (!src || src->ndim == t->ndim);
  for (int i = 0; ok && i < t->ndim; i++)
    ok = (i == *d || index->shape[i] <= t->shape[i]) && (!src || index->shape[i] <= src->shape[i]);
  if (ok) return 0;
  if (src)
    sere_fail("%s: index of shape %s does not fit tensor %s and src %s in dim %d (same number of dims; index no "
              "larger than src, nor than the tensor outside dim %d)", op, sere_shape_str(index, a, sizeof a),
              sere_shape_str(t, b, sizeof b), sere_shape_str(src, c, sizeof c), *d + 1, *d + 1);
  else
    sere_fail("%s: index of shape %s does not fit a tensor of shape %s in dim %d (same number of dims; index no "
              "larger outside dim %d)", op, sere_shape_str(index, a, sizeof a), sere_shape_str(t, b, sizeof b),
              *d + 1, *d + 1);
  return -1;
}

/* Gathers g (index-shaped) back: zeros of the input shape plus g added at
 * the gathered positions. */
static int gather_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  indices ix;
  if (node_indices(n, &ix)) return -1;
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *z = gf ? sere_tensor_new_on(sere_device_of(g), SERE_F32, e->ndim, e->shape) : NULL;
  if (!z) { sere_tensor_release(gf); return -1; }
  int rc = walk_tensors(WALK_SCATTER_ADD, gf->ndim, gf->shape, (int)n->ints[0], &ix, z, gf);
  sere_tensor_release(gf);
  if (rc) { sere_tensor_release(z); return -1; }
  gi[0] = sere_grad_as(z, e->dtype);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_gather(sere_tensor *t, int dim, sere_tensor *index, int64_t base) {
  int d;
  sere_device_type dev;
  indices ix;
  if (sere_common_device("gather", &dev, 2, (sere_tensor *[]){t, index})) return NULL;
  if (check_index_shape("gather", t, dim, index, NULL, &d)) return NULL;
  if (read_indices(&ix, "gather", index, base, t->shape[d], d)) return NULL;
  sere_tensor *out = sere_tensor_new_uninit_on(dev, t->dtype, index->ndim, index->shape);
  if (!out || walk_tensors(WALK_GATHER, index->ndim, index->shape, d, &ix, t, out)) {
    indices_release(&ix);
    sere_tensor_release(out);
    return NULL;
  }
  if (!sere_needs_grad(1, &t)) { indices_release(&ix); return out; }
  sere_node *n = sere_node_new("gather", gather_backward, 1, &t);
  if (!n) { indices_release(&ix); sere_tensor_release(out); return NULL; }
  n->ints[0] = d;
  indices_keep(n, &ix);
  sere_attach(out, n);
  return out;
}

/* d/dt is g; d/dsrc is g gathered at the index positions (zero where src
 * was larger than the index). ints: dim, then the index shape. */
static int scatter_add_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  int dim = (int)n->ints[0], ndim = n->edges[0].ndim;
  const int64_t *ishape = n->ints + 1;
  if (sere_edge_needed(n, 0) && !(gi[0] = sere_grad_as(sere_tensor_retain(g), n->edges[0].dtype))) return -1;
  if (!sere_edge_needed(n, 1)) return 0;
  const sere_edge *e = &n->edges[1];
  indices ix;
  if (node_indices(n, &ix)) return -1;
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *z = gf ? sere_tensor_new_on(sere_device_of(g), SERE_F32, e->ndim, e->shape) : NULL;
  if (!z) { sere_tensor_release(gf); return -1; }
  int rc = walk_tensors(WALK_GATHER, ndim, ishape, dim, &ix, gf, z);
  sere_tensor_release(gf);
  if (rc) { sere_tensor_release(z); return -1; }
  gi[1] = sere_grad_as(z, e->dtype);
  return gi[1] ? 0 : -1;
}

sere_tensor *sere_scatter_add(sere_tensor *t, int dim, sere_tensor *index, sere_tensor *src, int64_t base) {
  int d;
  sere_device_type dev;
  indices ix;
  if (sere_common_device("scatter_add", &dev, 3, (sere_tensor *[]){t, index, src})) return NULL;
  if (src->dtype != t->dtype)
    return sere_fail("scatter_add: src has dtype %s but the tensor has dtype %s; convert one first",
                     sere_dtype_name(src->dtype), sere_dtype_name(t->dtype));
  if (check_index_shape("scatter_add", t, dim, index, src, &d)) return NULL;
  if (read_indices(&ix, "scatter_add", index, base, t->shape[d], d)) return NULL;
  sere_tensor *out = sere_tensor_new_uninit_like(t, t->dtype);
  if (!out || sere_copy_raw(out, t) || walk_tensors(WALK_SCATTER_ADD, index->ndim, index->shape, d, &ix, out, src)) {
    indices_release(&ix);
    sere_tensor_release(out);
    return NULL;
  }
  if (!sere_needs_grad(2, (sere_tensor *[]){t, src})) { indices_release(&ix); return out; }
  sere_node *n = sere_node_new("scatter_add", scatter_add_backward, 2, (sere_tensor *[]){t, src});
  if (!n) { indices_release(&ix); sere_tensor_release(out); return NULL; }
  n->ints[0] = d;
  memcpy(n->ints + 1, index->shape, sizeof(int64_t) * (size_t)index->ndim);
  indices_keep(n, &ix);
  sere_attach(out, n);
  return out;
}

/* ---- masked_select / nonzero ------------------------------------------- */
typedef enum { MASK_COUNT, MASK_PACK, MASK_UNPACK } mask_mode;

/* Walks t and mask (views of the same shape) in row-major order; the j-th
 * position where mask is true pairs with packed[j]: PACK copies t into
 * packed, UNPACK copies packed into t. Returns the number of true positions. */
static int64_t mask_walk(mask_mode mode, const sere_tensor *mask, sere_tensor *t, char *packed) {
  int64_t n = sere_numel(mask), pos[SERE_MAX_DIMS] = {0}, j = 0;
  size_t es = t ? sere_dtype_size(t->dtype) : 0;
  const uint8_t *m = mask->storage->data;
  for (int64_t i = 0; i < n; i++) {
    int64_t mo = mask->offset, to = t ? t->offset : 0;
    for (int k = 0; k < mask->ndim; k++) {
      mo += pos[k] * mask->stride[k];
      if (t) to += pos[k] * t->stride[k];
    }
    if (m[mo]) {
      char *te = t ? (char *)t->storage->data + to * (int64_t)es : NULL;
      if (mode == MASK_PACK) memcpy(packed + j * (int64_t)es, te, es);
      else if (mode == MASK_UNPACK) memcpy(te, packed + j * (int64_t)es, es);
      j++;
    }
    sere_index_next(mask->ndim, mask->shape, pos);
  }
  return j;
}

/* Scatters g back to the masked positions of the broadcast shape, then sums
 * down to the input shape when the input was broadcast. */
static int masked_select_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  sere_tensor *mask = sere_node_saved(n, 0);
  if (!mask) return -1;
  int nd;
  int64_t shape[SERE_MAX_DIMS];
  if (sere_broadcast_shapes("masked_select", e->ndim, e->shape, mask->ndim, mask->shape, &nd, shape)) return -1;
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32);
  sere_tensor *z = gf ? sere_tensor_new_on(sere_device_of(g), SERE_F32, nd, shape) : NULL;
  sere_tensor *me = z ? expand_raw(mask, nd, shape) : NULL;
  int rc = me ? 0 : -1;
  if (me && sere_device_of(me) == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    rc = sere_cuda_masked_unpack(z, me, gf);
#endif
  } else if (me) {
    mask_walk(MASK_UNPACK, me, z, sere_data(gf));
  }
  sere_tensor_release(gf);
  sere_tensor_release(me);
  if (rc) { sere_tensor_release(z); return -1; }
  sere_tensor *r = z;
  if (nd != e->ndim || memcmp(shape, e->shape, sizeof(int64_t) * (size_t)nd)) { /* t was broadcast */
    r = sere_sum_to(z, e->ndim, e->shape);
    sere_tensor_release(z);
  }
  gi[0] = sere_grad_as(r, e->dtype);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_masked_select(sere_tensor *t, sere_tensor *mask) {
  int nd;
  int64_t shape[SERE_MAX_DIMS];
  sere_device_type dev;
  if (sere_common_device("masked_select", &dev, 2, (sere_tensor *[]){t, mask})) return NULL;
  if (mask->dtype != SERE_BOOL)
    return sere_fail("masked_select: mask must be a bool tensor, got %s", sere_dtype_name(mask->dtype));
  if (sere_broadcast_shapes("masked_select", t->ndim, t->shape, mask->ndim, mask->shape, &nd, shape)) return NULL;
  sere_tensor *te = expand_raw(t, nd, shape), *me = te ? expand_raw(mask, nd, shape) : NULL;
  sere_tensor *out = NULL;
  if (me && dev == SERE_CUDA) {
#ifdef SERE_WITH_CUDA
    sere_cuda_masked_select(te, me, &out);
#endif
  } else if (me) {
    int64_t count = mask_walk(MASK_COUNT, me, NULL, NULL);
    out = sere_tensor_new_uninit(t->dtype, 1, &count);
    if (out) mask_walk(MASK_PACK, me, te, out->storage->data);
  }
  sere_tensor_release(te);
  sere_tensor_release(me);
  if (!out || !sere_needs_grad(1, &t)) return out;
  sere_node *n = sere_node_new("masked_select", masked_select_backward, 1, &t);
  if (!n) { sere_tensor_release(out); return NULL; }
  sere_node_save(n, 0, mask);
  sere_attach(out, n);
  return out;
}

sere_tensor *sere_nonzero(sere_tensor *t, int64_t base) {
#ifdef SERE_WITH_CUDA
  if (sere_device_of(t) == SERE_CUDA) {
    sere_tensor *out = NULL;
    sere_cuda_nonzero(t, base, &out);
    return out;
  }
#endif
  int64_t n = sere_numel(t), count = 0, pos[SERE_MAX_DIMS] = {0};
  for (int64_t i = 0; i < n; i++) {
    count += sere_get_elem(t, pos) != 0;
    sere_index_next(t->ndim, t->shape, pos);
  }
  sere_tensor *out = sere_tensor_new_uninit(SERE_I64, 2, (int64_t[]){count, t->ndim});
  if (!out) return NULL;
  int64_t *o = out->storage->data;
  for (int64_t i = 0; i < n; i++) {
    if (sere_get_elem(t, pos) != 0)
      for (int k = 0; k < t->ndim; k++) *o++ = pos[k] + base;
    sere_index_next(t->ndim, t->shape, pos);
  }
  return out;
}
