/* optim.c — the optimiser's element-wise work fused over lists of tensors:
 * the AdamW update (method 8.1), the teacher EMA (8.8), per-tensor L2 norms
 * and scaling (gradient clipping, 8.5). One call covers every parameter;
 * on CUDA one call is a few multi-tensor launches instead of ~10 kernels per
 * parameter.
 *
 * The AdamW arithmetic follows torch.optim.AdamW (foreach=False) operation
 * by operation in f32: p *= 1 - lr*wd; m = b1*m + (1-b1)*g;
 * v = b2*v + (1-b2)*g*g; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
 * The CUDA kernels (kernels/optim.cu) evaluate the same expressions. Norms
 * accumulate squares in double. Every tensor must be a contiguous f32
 * tensor (parameters, their gradients and optimiser state are). */
#include <math.h>

#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/optim.h"
#endif

/* All tensors of all lists: f32, contiguous, on one device, lists[k][i]
 * of equal shapes across k. */
static int check_lists(const char *op, int n, int nlists, sere_tensor *const *const *lists, sere_device_type *dev) {
  *dev = SERE_CPU;
  for (int i = 0; i < n; i++)
    for (int k = 0; k < nlists; k++) {
      const sere_tensor *t = lists[k][i];
      if (!t) {
        sere_fail("%s: tensor %d of list %d is missing", op, i + 1, k + 1);
        return -1;
      }
      if (t->dtype != SERE_F32 || !sere_is_contiguous(t)) {
        sere_fail("%s: tensor %d of list %d must be a contiguous f32 tensor (got %s%s)", op, i + 1, k + 1,
                  sere_dtype_name(t->dtype), sere_is_contiguous(t) ? "" : ", strided");
        return -1;
      }
      if (i == 0 && k == 0) *dev = sere_device_of(t);
      else if (sere_device_of(t) != *dev) {
        sere_fail("%s: all tensors must be on one device (found %s and %s)", op, sere_device_name(*dev),
                  sere_device_name(sere_device_of(t)));
        return -1;
      }
      if (k > 0 && !sere_same_shape(t, lists[0][i])) {
        char a[128], b[128];
        sere_fail("%s: tensor %d has shape %s in list %d but %s in list 1", op, i + 1, sere_shape_str(t, a, sizeof a),
                  k + 1, sere_shape_str(lists[0][i], b, sizeof b));
        return -1;
      }
    }
  return 0;
}

static void bump_all(int n, sere_tensor *const *ts) {
  for (int i = 0; i < n; i++) sere_bump_version(ts[i]);
}

int sere_adamw_step_(int n, sere_tensor *const *params, sere_tensor *const *grads, sere_tensor *const *exp_avg,
                     sere_tensor *const *exp_avg_sq, const int64_t *steps, const sere_adamw_hparams *h) {
  sere_tensor *const *lists[4] = {params, grads, exp_avg, exp_avg_sq};
  sere_device_type dev;
  if (check_lists("adamw_step_", n, 4, lists, &dev)) return -1;
  for (int i = 0; i < n; i++)
    if (steps[i] < 1) {
      sere_fail("adamw_step_: step count %lld of tensor %d must be >= 1", (long long)steps[i], i + 1);
      return -1;
    }
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) {
    int rc = sere_cuda_adamw(n, params, grads, exp_avg, exp_avg_sq, steps, h);
    if (rc == 0) bump_all(n, params);
    return rc;
  }
#endif
  const float decay = (float)(1.0 - h->lr * h->weight_decay), b1 = (float)h->beta1, b2 = (float)h->beta2;
  const float one_minus_b1 = (float)(1.0 - h->beta1), one_minus_b2 = (float)(1.0 - h->beta2);
  const float eps = (float)h->eps;
  const int decays = h->lr * h->weight_decay != 0;
  for (int i = 0; i < n; i++) {
    double bc1 = 1.0 - pow(h->beta1, (double)steps[i]), bc2 = 1.0 - pow(h->beta2, (double)steps[i]);
    const float step_size = (float)(h->lr / bc1), sqrt_bc2 = (float)sqrt(bc2);
    float *p = sere_data(params[i]), *m = sere_data(exp_avg[i]), *v = sere_data(exp_avg_sq[i]);
    const float *g = sere_data(grads[i]);
    int64_t len = sere_numel(params[i]);
#pragma omp parallel for simd if (len > 65536) schedule(static)
    for (int64_t j = 0; j < len; j++) {
      float pj = decays ? p[j] * decay : p[j];
      float mj = b1 * m[j] + one_minus_b1 * g[j];
      float vj = b2 * v[j] + one_minus_b2 * (g[j] * g[j]);
      m[j] = mj;
      v[j] = vj;
      p[j] = pj - step_size * (mj / (sqrtf(vj) / sqrt_bc2 + eps));
    }
  }
  bump_all(n, params);
  return 0;
}

int sere_ema_(int n, sere_tensor *const *teacher, sere_tensor *const *student, double momentum) {
  sere_tensor *const *lists[2] = {teacher, student};
  sere_device_type dev;
  if (check_lists("ema_", n, 2, lists, &dev)) return -1;
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) {
    int rc = sere_cuda_ema(n, teacher, student, momentum);
    if (rc == 0) bump_all(n, teacher);
    return rc;
  }
#endif
  const float m = (float)momentum, one_minus_m = (float)(1.0 - momentum);
  for (int i = 0; i < n; i++) {
    float *t = sere_data(teacher[i]);
    const float *s = sere_data(student[i]);
    int64_t len = sere_numel(teacher[i]);
#pragma omp parallel for simd if (len > 65536) schedule(static)
    for (int64_t j = 0; j < len; j++) t[j] = m * t[j] + one_minus_m * s[j];
  }
  bump_all(n, teacher);
  return 0;
}

int sere_norms(int n, sere_tensor *const *ts, double *out) {
  sere_tensor *const *lists[1] = {ts};
  sere_device_type dev;
  if (check_lists("norms", n, 1, lists, &dev)) return -1;
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) return sere_cuda_norms(n, ts, out);
#endif
  for (int i = 0; i < n; i++) {
    const float *x = sere_data(ts[i]);
    int64_t len = sere_numel(ts[i]);
    double sum = 0;
#pragma omp parallel for reduction(+ : sum) if (len > 65536) schedule(static)
    for (int64_t j = 0; j < len; j++) sum += (double)x[j] * x[j];
    out[i] = sqrt(sum);
  }
  return 0;
}

int sere_scale_(int n, sere_tensor *const *ts, const double *factors) {
  sere_tensor *const *lists[1] = {ts};
  sere_device_type dev;
  if (check_lists("scale_", n, 1, lists, &dev)) return -1;
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) {
    int rc = sere_cuda_scale(n, ts, factors);
    if (rc == 0) bump_all(n, ts);
    return rc;
  }
#endif
  for (int i = 0; i < n; i++) {
    if (factors[i] == 1.0) continue;
    float *x = sere_data(ts[i]), f = (float)factors[i];
    int64_t len = sere_numel(ts[i]);
#pragma omp parallel for simd if (len > 65536) schedule(static)
    for (int64_t j = 0; j < len; j++) x[j] *= f;
  }
  bump_all(n, ts);
  return 0;
}
