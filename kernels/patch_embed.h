/* patch_embed.h — the data movement of the ViT patch embedding on the GPU
 * (kernels/patch_embed.cu); host/ops/patch_embed.c does the GEMMs through
 * kernels/matmul.h. Patches are p x p with stride p, so both directions are
 * gathers with no overlap. 0, or -1 after sere_fail. */
#ifndef SERE_KERNELS_PATCH_EMBED_H
#define SERE_KERNELS_PATCH_EMBED_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cols[M, K] = the patches of image x [B, C, H, W] (any strides, f32 or
 * bf16): row (b, i, j) holds patch (i, j) of image b in (c, ky, kx) order;
 * M = B*Hp*Wp, K = C*p*p. cols is contiguous f32, or bf16 when x is. */
int sere_cuda_im2col(const sere_tensor *x, int p, sere_tensor *cols);
/* The inverse: x [B, C, H, W] (contiguous f32) from cols [M, K] (contiguous
 * f32), zero where no patch lands (H or W not a multiple of p). */
int sere_cuda_col2im(const sere_tensor *cols, int p, sere_tensor *x);

#ifdef __cplusplus
}
#endif
#endif
