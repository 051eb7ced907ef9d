/* interpolate.h — the CUDA path of sere_interpolate_bicubic
 * (host/ops/interpolate.c), implemented in kernels/interpolate.cu. Both
 * functions return 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_INTERPOLATE_H
#define SERE_KERNELS_INTERPOLATE_H

#include "../host/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y [B, C, floor(H*sy), floor(W*sx)] (contiguous, f32 or bf16) = bicubic
 * resampling of x [B, C, H, W] (f32 or bf16, any strides). */
int sere_cuda_interpolate_bicubic(const sere_tensor *x, sere_tensor *y, double sy, double sx);
/* gx [B, C, H, W] (contiguous, f32 or bf16) = the gradient with respect to
 * x of the forward above, given the output gradient g (any strides);
 * every element of gx is written. */
int sere_cuda_interpolate_bicubic_backward(const sere_tensor *g, sere_tensor *gx, double sy, double sx);

#ifdef __cplusplus
}
#endif
#endif
