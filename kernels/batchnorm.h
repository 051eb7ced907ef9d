/* batchnorm.h — the CUDA kernels of ops/batchnorm.c. x is contiguous f32
 * [outer, C, inner] on the device (as on the CPU: [B, C, H W], or
 * channels last [B H W, C, 1]); per-channel sums are doubles on the
 * device, taken per fixed block of `outer` and added in order (no float
 * atomics: deterministic). The per-channel formulas are those of
 * batchnorm.c. Pointers are device memory. 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_BATCHNORM_H
#define SERE_KERNELS_BATCHNORM_H

#include <stdint.h>

#include "../host/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per channel c: s1[c] = sum(a), s2[c] = sum(a^2), or with b:
 * s2[c] = sum(a (b - m[c])). */
int sere_cuda_bn_channel_sums(const float *a, const float *b, const float *m, int64_t outer, int64_t nc,
                              int64_t inner, double *s1, double *s2);
/* Per channel c: out = k1 (a - m) + k3, or with b: out = k1 a + k2 (b - m) + k3;
 * a NULL m or k3 is zeros. */
int sere_cuda_bn_channel_affine(float *out, const float *a, const float *b, const float *m, const float *k1,
                                const float *k2, const float *k3, int64_t outer, int64_t nc, int64_t inner);
/* The forward's per-channel coefficients. Training: from s = [sum x; sum
 * x^2] ([2 C] doubles) over `count` values per channel, and when
 * running_mean is non-NULL the running statistics (any float dtype and
 * stride, on the device) updated with `momentum` and the unbiased variance.
 * Eval (s NULL): from running_mean / running_var. w / b: [C] f32 or NULL.
 * Out: mean, invstd, k1 = w invstd, k3 = b ([C] f32 each). */
int sere_cuda_bn_forward_coefficients(const double *s, double count, sere_tensor *running_mean,
                                      sere_tensor *running_var, const float *w, const float *b, int64_t nc,
                                      double momentum, double eps, float *mean, float *invstd, float *k1, float *k3);
/* Backward, step 1: s = [sum g; sum g (x - mean)] ([2 C] doubles), the
 * second scaled in place to sum(g xh) by invstd; gw = sum(g xh) and
 * gb = sum(g) as f32 when non-NULL. */
int sere_cuda_bn_gradient_sums(double *s, const float *invstd, int64_t nc, float *gw, float *gb);
/* Backward, step 2: the input gradient's coefficients from r = [sum g; sum
 * g xh] over all ranks: training k1 = w invstd, k2 = -k1 invstd r2 / count,
 * k3 = -k1 r1 / count; eval (r NULL) k1 = w invstd, k2 = k3 = 0. */
int sere_cuda_bn_input_coefficients(const double *r, const float *w, const float *invstd, double count, int64_t nc,
                                    float *k1, float *k2, float *k3);

#ifdef __cplusplus
}
#endif
#endif
