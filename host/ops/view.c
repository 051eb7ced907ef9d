/* view.c — ops that reinterpret a tensor's shape/strides over the same
 * storage (reshape, transpose, permute, narrow, select, expand, squeeze,
 * unsqueeze, flatten), plus contiguous/clone/detach/dtype conversion/copy_,
 * and their backward functions. */
#include <math.h>
#include <string.h>

#include "ops.h"

#define SHAPE_BUF 160

/* Attaches node `name` with one input `t` to `out` when grad is needed;
 * on failure releases `out` and returns NULL. */
static sere_tensor *record1(sere_tensor *out, sere_tensor *t, const char *name, sere_backward_fn fn,
                            int nints, const int64_t *ints) {
  if (!out || !sere_needs_grad(1, &t)) return out;
  sere_node *n = sere_node_new(name, fn, 1, &t);
  if (!n) { sere_tensor_release(out); return NULL; }
  for (int i = 0; i < nints; i++) n->ints[i] = ints[i];
  sere_attach(out, n);
  return out;
}

/* Gradient of any op that only changed the shape: reshape back. */
static int reshape_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  gi[0] = sere_reshape(g, n->edges[0].ndim, n->edges[0].shape);
  return gi[0] ? 0 : -1;
}

/* Strides for viewing (shape, stride) as new_shape without copying, or -1.
 * Groups of old dims that are contiguous with each other can be split or
 * merged freely; a new dim may not straddle two such groups. */
static int view_strides(int nd, const int64_t *shape, const int64_t *stride, int nn, const int64_t *new_shape,
                        int64_t *new_stride) {
  if (sere_numel_raw(nd, shape) == 0 || nd == 0) {
    int64_t s = 1;
    for (int i = nn - 1; i >= 0; i--) { new_stride[i] = s; s *= new_shape[i] ? new_shape[i] : 1; }
    return 0;
  }
  int view_d = nn - 1;
  int64_t chunk_base = stride[nd - 1], tensor_numel = 1, view_numel = 1;
  for (int d = nd - 1; d >= 0; d--) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && stride[d - 1] != tensor_numel * chunk_base)) {
      while (view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d] == 1)) {
        new_stride[view_d] = view_numel * chunk_base;
        view_numel *= new_shape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return -1;
      if (d > 0) {
        chunk_base = stride[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  return view_d == -1 ? 0 : -1;
}

/* Resolves one -1 entry and checks the element count. */
static int infer_shape(const char *op, const sere_tensor *t, int ndim, const int64_t *in, int64_t *out) {
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (ndim > SERE_MAX_DIMS) { sere_fail("%s: %d dims is more than %d", op, ndim, SERE_MAX_DIMS); return -1; }
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < ndim; i++) {
    out[i] = in[i];
    if (in[i] == -1) {
      if (infer >= 0) { sere_fail("%s: only one size may be -1", op); return -1; }
      infer = i;
    } else if (in[i] < 0) {
      sere_fail("%s: invalid size %lld", op, (long long)in[i]);
      return -1;
    } else {
      known *= in[i];
    }
  }
  int64_t n = sere_numel(t);
  if (infer >= 0) {
    if (known == 0 || n % known) goto mismatch;
    out[infer] = n / known;
  } else if (known != n) {
    goto mismatch;
  }
  return 0;
mismatch:
  sere_fail("%s: shape %s is invalid for a tensor of shape %s (%lld elements)", op,
            sere_shape_str_raw(ndim, in, a, sizeof a), sere_shape_str(t, b, sizeof b), (long long)n);
  return -1;
}

static sere_tensor *view_impl(sere_tensor *t, int ndim, const int64_t *shape, int allow_copy, const char *op) {
  int64_t full[SERE_MAX_DIMS], stride[SERE_MAX_DIMS];
  if (infer_shape(op, t, ndim, shape, full)) return NULL;
  sere_tensor *out;
  if (view_strides(t->ndim, t->shape, t->stride, ndim, full, stride) == 0) {
    out = sere_tensor_view_of(t, ndim, full, stride, t->offset);
  } else if (allow_copy) {
    sere_tensor *c = sere_contiguous_raw(t);
    if (!c) return NULL;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) { stride[i] = s; s *= full[i]; }
    out = sere_tensor_view_of(c, ndim, full, stride, 0);
    sere_tensor_release(c);
  } else {
    char a[SHAPE_BUF], b[SHAPE_BUF];
    return sere_fail("view: the strides of a tensor of shape %s do not allow viewing it as %s; "
                     "use reshape (which copies) or call contiguous() first",
                     sere_shape_str(t, a, sizeof a), sere_shape_str_raw(ndim, full, b, sizeof b));
  }
  return record1(out, t, op, reshape_backward, 0, NULL);
}

sere_tensor *sere_reshape(sere_tensor *t, int ndim, const int64_t *shape) {
  return view_impl(t, ndim, shape, 1, "reshape");
}

sere_tensor *sere_view(sere_tensor *t, int ndim, const int64_t *shape) { return view_impl(t, ndim, shape, 0, "view"); }

sere_tensor *sere_flatten(sere_tensor *t, int start, int end) {
  int s, e;
  if (t->ndim == 0) return sere_reshape(t, 1, (int64_t[]){1});
  if (sere_wrap_dim(start, t->ndim, "flatten", &s) || sere_wrap_dim(end, t->ndim, "flatten", &e)) return NULL;
  if (s > e) return sere_fail("flatten: start dim %d comes after end dim %d", s + 1, e + 1);
  int64_t shape[SERE_MAX_DIMS];
  int n = 0;
  for (int i = 0; i < s; i++) shape[n++] = t->shape[i];
  int64_t m = 1;
  for (int i = s; i <= e; i++) m *= t->shape[i];
  shape[n++] = m;
  for (int i = e + 1; i < t->ndim; i++) shape[n++] = t->shape[i];
  return sere_reshape(t, n, shape);
}

static int permute_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  int inv[SERE_MAX_DIMS];
  for (int i = 0; i < g->ndim; i++) inv[n->ints[i]] = i;
  gi[0] = sere_permute(g, g->ndim, inv);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_permute(sere_tensor *t, int ndim, const int *perm) {
  if (ndim != t->ndim) {
    char a[SHAPE_BUF];
    return sere_fail("permute: %d dims given for a tensor of shape %s", ndim, sere_shape_str(t, a, sizeof a));
  }
  int seen[SERE_MAX_DIMS] = {0}, p[SERE_MAX_DIMS];
  int64_t shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS], ints[SERE_MAX_DIMS];
  for (int i = 0; i < ndim; i++) {
    if (sere_wrap_dim(perm[i], ndim, "permute", &p[i])) return NULL;
    if (seen[p[i]]++) return sere_fail("permute: dim %d appears twice", p[i] + 1);
    shape[i] = t->shape[p[i]];
    stride[i] = t->stride[p[i]];
    ints[i] = p[i];
  }
  return record1(sere_tensor_view_of(t, ndim, shape, stride, t->offset), t, "permute", permute_backward, ndim, ints);
}

sere_tensor *sere_transpose(sere_tensor *t, int d0, int d1) {
  int a, b;
  if (sere_wrap_dim(d0, t->ndim, "transpose", &a) || sere_wrap_dim(d1, t->ndim, "transpose", &b)) return NULL;
  if (t->ndim == 0) return sere_permute(t, 0, NULL);
  int perm[SERE_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) perm[i] = i;
  perm[a] = b;
  perm[b] = a;
  return sere_permute(t, t->ndim, perm);
}

/* Gradient of narrow/select: zeros of the input shape with g written into
 * the region the forward pass read. ints: dim, start, length, is_select. */
static int narrow_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  sere_edge *e = &n->edges[0];
  sere_tensor *z = sere_tensor_new_on(sere_device_of(g), g->dtype, e->ndim, e->shape);
  if (!z) return -1;
  sere_tensor *region = n->ints[3] ? sere_select(z, (int)n->ints[0], n->ints[1])
                                   : sere_narrow(z, (int)n->ints[0], n->ints[1], n->ints[2]);
  int rc = region ? sere_copy_raw(region, g) : -1;
  sere_tensor_release(region);
  if (rc) { sere_tensor_release(z); return -1; }
  gi[0] = z;
  return 0;
}

sere_tensor *sere_narrow(sere_tensor *t, int dim, int64_t start, int64_t length) {
  int d;
  char a[SHAPE_BUF];
  if (t->ndim == 0) return sere_fail("narrow: cannot narrow a 0-dim tensor");
  if (sere_wrap_dim(dim, t->ndim, "narrow", &d)) return NULL;
  if (start < 0) start += t->shape[d];
  if (start < 0 || length < 0 || start + length > t->shape[d])
    return sere_fail("narrow: start %lld, length %lld out of range for dim %d of size %lld (shape %s)",
                     (long long)start + 1, (long long)length, d + 1, (long long)t->shape[d],
                     sere_shape_str(t, a, sizeof a));
  int64_t shape[SERE_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[d] = length;
  sere_tensor *out = sere_tensor_view_of(t, t->ndim, shape, t->stride, t->offset + start * t->stride[d]);
  return record1(out, t, "narrow", narrow_backward, 4, (int64_t[]){d, start, length, 0});
}

sere_tensor *sere_select(sere_tensor *t, int dim, int64_t index) {
  int d;
  char a[SHAPE_BUF];
  if (t->ndim == 0) return sere_fail("select: cannot index a 0-dim tensor");
  if (sere_wrap_dim(dim, t->ndim, "select", &d)) return NULL;
  int64_t size = t->shape[d];
  if (index < -size || index >= size)
    return sere_fail("select: index %lld out of range for dim %d of size %lld (shape %s)",
                     (long long)(index < 0 ? index : index + 1), d + 1, (long long)size, sere_shape_str(t, a, sizeof a));
  if (index < 0) index += size;
  int64_t shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS];
  int n = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i == d) continue;
    shape[n] = t->shape[i];
    stride[n++] = t->stride[i];
  }
  sere_tensor *out = sere_tensor_view_of(t, n, shape, stride, t->offset + index * t->stride[d]);
  return record1(out, t, "select", narrow_backward, 4, (int64_t[]){d, index, 1, 1});
}

static int expand_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  gi[0] = sere_sum_to(g, n->edges[0].ndim, n->edges[0].shape);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_expand(sere_tensor *t, int ndim, const int64_t *shape) {
  char a[SHAPE_BUF], b[SHAPE_BUF];
  if (ndim < t->ndim || ndim > SERE_MAX_DIMS) goto bad;
  int64_t out_shape[SERE_MAX_DIMS], stride[SERE_MAX_DIMS];
  int lead = ndim - t->ndim;
  for (int i = 0; i < ndim; i++) {
    int j = i - lead;
    int64_t want = shape[i];
    if (j < 0) {
      if (want < 0) goto bad;
      out_shape[i] = want;
      stride[i] = 0;
    } else if (want == -1 || want == t->shape[j]) {
      out_shape[i] = t->shape[j];
      stride[i] = t->stride[j];
    } else if (t->shape[j] == 1 && want >= 0) {
      out_shape[i] = want;
      stride[i] = 0;
    } else {
      goto bad;
    }
  }
  return record1(sere_tensor_view_of(t, ndim, out_shape, stride, t->offset), t, "expand", expand_backward, 0, NULL);
bad:
  return sere_fail("expand: cannot expand a tensor of shape %s to %s (only size-1 dims can grow)",
                   sere_shape_str(t, a, sizeof a), sere_shape_str_raw(ndim, shape, b, sizeof b));
}

sere_tensor *sere_unsqueeze(sere_tensor *t, int dim) {
  int d;
  if (t->ndim >= SERE_MAX_DIMS) return sere_fail("unsqueeze: tensor already has %d dims", t->ndim);
  if (sere_wrap_dim(dim, t->ndim + 1, "unsqueeze", &d)) return NULL;
  int64_t shape[SERE_MAX_DIMS];
  int n = 0;
  for (int i = 0; i <= t->ndim; i++) {
    if (i == d) shape[n++] = 1;
    if (i < t->ndim) shape[n++] = t->shape[i];
  }
  return sere_reshape(t, n, shape);
}

sere_tensor *sere_squeeze(sere_tensor *t, int dim) {
  int64_t shape[SERE_MAX_DIMS];
  int n = 0, d = -1;
  if (dim != SERE_ALL_DIMS && t->ndim > 0 && sere_wrap_dim(dim, t->ndim, "squeeze", &d)) return NULL;
  for (int i = 0; i < t->ndim; i++) {
    int drop = t->shape[i] == 1 && (dim == SERE_ALL_DIMS || i == d);
    if (!drop) shape[n++] = t->shape[i];
  }
  return sere_reshape(t, n, shape);
}

static int identity_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  (void)n;
  gi[0] = sere_tensor_retain(g);
  return 0;
}

sere_tensor *sere_contiguous(sere_tensor *t) {
  if (sere_is_contiguous(t)) return sere_tensor_retain(t);
  return record1(sere_contiguous_raw(t), t, "contiguous", identity_backward, 0, NULL);
}

sere_tensor *sere_clone(sere_tensor *t) {
  sere_tensor *out = sere_tensor_new_uninit_like(t, t->dtype);
  if (out && sere_copy_raw(out, t)) { sere_tensor_release(out); return NULL; }
  return record1(out, t, "clone", identity_backward, 0, NULL);
}

static int to_dtype_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  gi[0] = sere_as_contiguous_dtype(g, n->edges[0].dtype);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_to_dtype(sere_tensor *t, sere_dtype d) {
  if (t->dtype == d) return sere_tensor_retain(t);
  sere_tensor *out = sere_tensor_new_uninit_like(t, d);
  if (out && sere_copy_raw(out, t)) { sere_tensor_release(out); return NULL; }
  if (!out || !sere_needs_grad(1, &t)) return out;
  if (!sere_dtype_is_float(d)) return out; /* integer results carry no gradient */
  return record1(out, t, "to_dtype", to_dtype_backward, 0, NULL);
}

static int to_device_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  gi[0] = sere_to_device(g, (sere_device_type)n->ints[0]);
  return gi[0] ? 0 : -1;
}

sere_tensor *sere_to_device(sere_tensor *t, sere_device_type dev) {
  if (sere_device_of(t) == dev) return sere_tensor_retain(t);
  sere_tensor *out = sere_contiguous_on(t, dev);
  int64_t from = sere_device_of(t);
  return record1(out, t, "to_device", to_device_backward, 1, &from);
}

sere_tensor *sere_detach(sere_tensor *t) { return sere_tensor_view_of(t, t->ndim, t->shape, t->stride, t->offset); }

int sere_copy_(sere_tensor *dst, sere_tensor *src) {
  if (sere_check_inplace(dst, "copy_")) return -1;
  if (sere_grad_enabled() && sere_tensor_requires_grad(src)) {
    sere_fail("copy_: the source requires grad and copy_ does not record a gradient; "
              "detach the source or copy inside sere.no_grad(fn)");
    return -1;
  }
  sere_tensor *e = sere_expand(src, dst->ndim, dst->shape);
  if (!e) {
    char a[SHAPE_BUF], b[SHAPE_BUF];
    sere_fail("copy_: source of shape %s does not broadcast to destination shape %s",
              sere_shape_str(src, a, sizeof a), sere_shape_str(dst, b, sizeof b));
    return -1;
  }
  int rc = sere_copy_raw(dst, e);
  sere_tensor_release(e);
  if (!rc) sere_bump_version(dst);
  return rc;
}

int sere_broadcast_shapes(const char *op, int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                          int64_t *out) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = i - (n - na), ib = i - (n - nb);
    int64_t sa = ia >= 0 ? a[ia] : 1, sb = ib >= 0 ? b[ib] : 1;
    if (sa != sb && sa != 1 && sb != 1) {
      char x[SHAPE_BUF], y[SHAPE_BUF];
      sere_fail("%s: shapes %s and %s do not broadcast (dim %d: %lld vs %lld)", op,
                sere_shape_str_raw(na, a, x, sizeof x), sere_shape_str_raw(nb, b, y, sizeof y), i + 1,
                (long long)sa, (long long)sb);
      return -1;
    }
    out[i] = sa == 1 ? sb : sa;
  }
  *nout = n;
  return 0;
}
