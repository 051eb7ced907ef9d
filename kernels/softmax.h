/* softmax.h — CUDA entry points of ops/softmax.c: softmax and log_softmax
 * along one dim of a contiguous f32 tensor seen as [outer, n, inner]
 * around the dim, and their backward (from the saved output y). Device
 * pointers; 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_SOFTMAX_H
#define SERE_KERNELS_SOFTMAX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int sere_cuda_softmax(const float *x, float *y, int64_t outer, int64_t n, int64_t inner, int log);
/* softmax: gx = y * (g - sum(g * y)); log_softmax: gx = g - exp(y) * sum(g). */
int sere_cuda_softmax_backward(const float *g, const float *y, float *gx, int64_t outer, int64_t n, int64_t inner,
                               int log);

#ifdef __cplusplus
}
#endif
#endif
