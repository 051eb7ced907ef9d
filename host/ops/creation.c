/* creation.c — tensors made from scratch: full, arange, linspace, eye. */
#include <math.h>

#include "ops.h"

sere_tensor *sere_full(int ndim, const int64_t *shape, double v, sere_dtype d) {
  sere_tensor *t = sere_tensor_new(d, ndim, shape);
  if (t && v != 0) sere_fill_raw(t, v);
  return t;
}

/* [start, end) in steps; the count is ceil((end - start) / step) as in PyTorch. */
sere_tensor *sere_arange(double start, double end, double step, sere_dtype d) {
  if (step == 0) return sere_fail("arange: step must not be zero");
  double count = ceil((end - start) / step);
  if (!(count >= 0)) count = 0;
  if (count > 1e12) return sere_fail("arange: %g elements is too many", count);
  int64_t n = (int64_t)count;
  sere_tensor *t = sere_tensor_new(d, 1, &n);
  if (!t) return NULL;
  for (int64_t i = 0; i < n; i++) sere_store_linear(t->storage->data, d, i, start + (double)i * step);
  return t;
}

sere_tensor *sere_linspace(double start, double end, int64_t steps, sere_dtype d) {
  if (steps < 0) return sere_fail("linspace: steps must be >= 0, got %lld", (long long)steps);
  sere_tensor *t = sere_tensor_new(d, 1, &steps);
  if (!t) return NULL;
  double step = steps > 1 ? (end - start) / (double)(steps - 1) : 0;
  /* Fill the two halves from their own ends, like PyTorch, so the last value is exactly `end`. */
  int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; i++) {
    double v = i < half ? start + step * (double)i : end - step * (double)(steps - 1 - i);
    sere_store_linear(t->storage->data, d, i, v);
  }
  return t;
}

sere_tensor *sere_eye(int64_t n, int64_t m, sere_dtype d) {
  if (n < 0 || m < 0) return sere_fail("eye: sizes must be >= 0, got %lld x %lld", (long long)n, (long long)m);
  sere_tensor *t = sere_tensor_new(d, 2, (int64_t[]){n, m});
  if (!t) return NULL;
  for (int64_t i = 0; i < n && i < m; i++) sere_store_linear(t->storage->data, d, i * m + i, 1);
  return t;
}
