/* normalize.h — CUDA entry points of ops/normalize.c: L2 normalisation
 * along one dim of a contiguous f32 tensor seen as [outer, len, inner],
 * y = x / max(||x||, eps), writing the per-line norms ([outer * inner] f32)
 * for the backward. Device pointers; 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_NORMALIZE_H
#define SERE_KERNELS_NORMALIZE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int sere_cuda_l2_normalize(const float *x, float *y, float *norms, int64_t outer, int64_t len, int64_t inner,
                           float eps);
int sere_cuda_l2_normalize_backward(const float *g, const float *x, const float *norms, float *gx, int64_t outer,
                                    int64_t len, int64_t inner, float eps);

#ifdef __cplusplus
}
#endif
#endif
