/* activation.h — the CUDA kernels of ops/activation.c: GELU (exact, erf
 * form) and ReLU, forward and backward, over contiguous device arrays of
 * f32 or bf16 (computed in f32, rounded on store as on the CPU). */
#ifndef SERE_KERNELS_ACTIVATION_H
#define SERE_KERNELS_ACTIVATION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SERE_ACT_GELU, SERE_ACT_RELU } sere_activation;

/* Forward: out = f(a), b unused (NULL). Backward: out = f'(b) * a with a the
 * output gradient and b the saved tensor (GELU: the input; ReLU: the
 * output). Dtypes are SERE_F32 or SERE_BF16; n elements each. 0, or -1
 * after sere_fail. */
int sere_cuda_activation(sere_activation act, int backward, const void *a, int a_dtype, const void *b, int b_dtype,
                         void *out, int out_dtype, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
