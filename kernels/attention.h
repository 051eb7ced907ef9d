/* attention.h — the CUDA kernels of the fused attention op
 * (kernels/attention.cu), called from host/ops/attention.c for tensors on
 * the GPU. q [..., Tq, d], k [..., Tk, d], v [..., Tk, dv] and the upstream
 * gradient may be strided views with unit column stride, all of one dtype
 * (f32 or bf16; computed in f32). Outputs are new contiguous tensors of
 * that dtype on the GPU; lse and delta are f32 [..., Tq]. Each returns 0,
 * or -1 after sere_fail. */
#ifndef SERE_KERNELS_ATTENTION_H
#define SERE_KERNELS_ATTENTION_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The widest d and dv the kernels take (one row is split over at most 16
 * threads of 16 columns each). */
#define SERE_CUDA_ATTENTION_MAX_WIDTH 256

/* out = softmax(q k^T * scale) v and lse = the log-sum-exp of every score
 * row; needs Tq, Tk >= 1. */
int sere_cuda_attention_forward(const sere_tensor *q, const sere_tensor *k, const sere_tensor *v, float scale,
                                sere_tensor *out, sere_tensor *lse);

/* The gradients for upstream gradient dout, given the forward's out and
 * lse: dq, dk and dv (each NULL when not wanted); delta is scratch for
 * rowsum(dout * out), needed when dq or dk is wanted. Needs Tq, Tk >= 1. */
int sere_cuda_attention_backward(const sere_tensor *q, const sere_tensor *k, const sere_tensor *v,
                                 const sere_tensor *dout, const sere_tensor *out, const sere_tensor *lse, float scale,
                                 sere_tensor *delta, sere_tensor *dq, sere_tensor *dk, sere_tensor *dv);

#ifdef __cplusplus
}
#endif
#endif
