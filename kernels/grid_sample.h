/* grid_sample.h — the CUDA path of sere_grid_sample (host/ops/grid_sample.c),
 * implemented in kernels/grid_sample.cu. Both functions return 0, or -1
 * after sere_fail. */
#ifndef SERE_KERNELS_GRID_SAMPLE_H
#define SERE_KERNELS_GRID_SAMPLE_H

#include "../host/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out [B, C, Ho, Wo] (contiguous, f32 or bf16) = bilinear samples of input
 * [B, C, H, W] at the points of grid [B, Ho, Wo, 2] (both f32 or bf16, any
 * strides). */
int sere_cuda_grid_sample(const sere_tensor *input, const sere_tensor *grid, sere_tensor *out);
/* The gradients of the forward above given the output gradient g (any
 * strides): gin [B, C, H, W] and ggrid [B, Ho, Wo, 2], each contiguous (f32
 * or bf16) and fully written, or NULL when not wanted; `input` is needed
 * only for ggrid (else it may be NULL). */
int sere_cuda_grid_sample_backward(const sere_tensor *g, const sere_tensor *grid, const sere_tensor *input,
                                   sere_tensor *gin, sere_tensor *ggrid);

#ifdef __cplusplus
}
#endif
#endif
