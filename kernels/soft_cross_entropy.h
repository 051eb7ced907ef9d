/* soft_cross_entropy.h — the CUDA kernels of ops/soft_cross_entropy.c: the
 * fused teacher-softmax / student-log-softmax cross-entropy per row of
 * contiguous f32 [rows, k] on the device, forward and backward, with the
 * CPU's per-row stats (max and log-sum of s' = s / Ts and of
 * t' = (t - c) / Tt). `center` is a [k] f32 vector (zeros without a
 * centre). Pointers are device memory. 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_SOFT_CROSS_ENTROPY_H
#define SERE_KERNELS_SOFT_CROSS_ENTROPY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* loss [rows] and stats [rows, 4]. */
int sere_cuda_soft_cross_entropy_forward(const float *s, const float *t, const float *center, int64_t rows, int64_t k,
                                         float inv_ts, float inv_tt, float *loss, float *stats);
/* gs [rows, k] = g[row] (softmax(s') - softmax(t')) / Ts from the forward's stats. */
int sere_cuda_soft_cross_entropy_backward(const float *s, const float *t, const float *center, const float *stats,
                                          const float *g, int64_t rows, int64_t k, float inv_ts, float inv_tt,
                                          float *gs);

#ifdef __cplusplus
}
#endif
#endif
