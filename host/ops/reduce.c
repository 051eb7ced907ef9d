/* reduce.c — reductions over dims (placeholder: only sum_to so far). */
#include "ops.h"

/* Sums t down to `shape` (the reverse of broadcasting): dims that t has in
 * front are summed away, dims where shape has 1 are summed with keepdim. */
sere_tensor *sere_sum_to(sere_tensor *t, int ndim, const int64_t *shape) {
  int lead = t->ndim - ndim;
  char a[128], b[128];
  if (lead < 0) goto bad;
  for (int i = 0; i < ndim; i++)
    if (shape[i] != t->shape[lead + i] && shape[i] != 1) goto bad;
  sere_dtype d = sere_dtype_is_float(t->dtype) ? t->dtype : SERE_F32;
  sere_tensor *acc = sere_tensor_new(SERE_F32, ndim, shape);
  if (!acc) return NULL;
  float *out = acc->storage->data;
  int64_t index[SERE_MAX_DIMS] = {0};
  if (sere_numel(t) > 0) do {
    int64_t o = 0;
    for (int i = 0; i < ndim; i++) o += (shape[i] == 1 ? 0 : index[lead + i]) * acc->stride[i];
    out[o] += (float)sere_get_elem(t, index);
  } while (sere_index_next(t->ndim, t->shape, index));
  if (d == SERE_F32) return acc;
  sere_tensor *r = sere_as_contiguous_dtype(acc, d);
  sere_tensor_release(acc);
  return r;
bad:
  return sere_fail("sum_to: cannot sum shape %s down to %s", sere_shape_str(t, a, sizeof a),
                   sere_shape_str_raw(ndim, shape, b, sizeof b));
}
