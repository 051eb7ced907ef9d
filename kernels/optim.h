/* optim.h — CUDA twins of host/ops/optim.c (kernels/optim.cu): the fused
 * AdamW update, teacher EMA, per-tensor norms and scaling over lists of
 * contiguous f32 tensors, a few multi-tensor launches per call. Arguments
 * are checked by optim.c; 0 or -1 after sere_fail. */
#ifndef SERE_KERNELS_OPTIM_H
#define SERE_KERNELS_OPTIM_H

#include "../host/ops/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

int sere_cuda_adamw(int n, sere_tensor *const *params, sere_tensor *const *grads, sere_tensor *const *exp_avg,
                    sere_tensor *const *exp_avg_sq, const int64_t *steps, const sere_adamw_hparams *h);
int sere_cuda_ema(int n, sere_tensor *const *teacher, sere_tensor *const *student, double momentum);
int sere_cuda_norms(int n, sere_tensor *const *ts, double *out);
int sere_cuda_scale(int n, sere_tensor *const *ts, const double *factors);

#ifdef __cplusplus
}
#endif
#endif
