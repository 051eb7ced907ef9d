/* layernorm.h — the CUDA kernels of ops/layernorm.c: the fused layer-norm
 * forward and backward over contiguous f32 rows [rows, d] on the device.
 * The formulas, the per-row stats (shift, mean, rstd) and the
 * deterministic block split of the weight / bias gradients are the CPU's
 * (see layernorm.c). Pointers are device memory; a NULL weight is a row of
 * ones and a NULL bias a row of zeros. 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_LAYERNORM_H
#define SERE_KERNELS_LAYERNORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y = (x - shift - mean) * rstd * w + b per row; stats [rows, 3]. */
int sere_cuda_layer_norm_forward(const float *x, const float *w, const float *b, float *y, float *stats,
                                 int64_t rows, int64_t d, float eps);
/* gx [rows, d] when non-NULL; gw / gb [d] (f32, device) when non-NULL,
 * summed per fixed block of rows and then over the blocks in order. */
int sere_cuda_layer_norm_backward(const float *g, const float *x, const float *w, const float *stats, int64_t rows,
                                  int64_t d, float *gx, float *gw, float *gb);

#ifdef __cplusplus
}
#endif
#endif
