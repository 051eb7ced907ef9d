/* elementwise.c — element-wise math (placeholder: only gradient accumulation so far). */
#include "ops.h"

int sere_accumulate_into(sere_tensor *acc, sere_tensor *g) {
  if (!sere_same_shape(acc, g)) {
    char a[128], b[128];
    sere_fail("accumulate: gradient of shape %s for an accumulator of shape %s", sere_shape_str(g, a, sizeof a),
              sere_shape_str(acc, b, sizeof b));
    return -1;
  }
  int64_t index[SERE_MAX_DIMS] = {0};
  if (sere_numel(acc) == 0) return 0;
  do {
    int64_t o = acc->offset;
    for (int i = 0; i < acc->ndim; i++) o += index[i] * acc->stride[i];
    double v = sere_load_linear(acc->storage->data, acc->dtype, o) + sere_get_elem(g, index);
    sere_store_linear(acc->storage->data, acc->dtype, o, v);
  } while (sere_index_next(acc->ndim, acc->shape, index));
  sere_bump_version(acc);
  return 0;
}
