/* matmul.h — matrix products on the GPU through cuBLAS (kernels/matmul.cu),
 * used by host/ops/matmul.c and host/ops/patch_embed.c.
 *
 * One call describes a batch of row-major products
 *   c[i] (+)= a[i] @ b[i],  a[i] n x k, b[i] k x m, c[i] n x m (f32),
 * entry i of each operand lying `stride` elements after entry i - 1 (a
 * stride of 0 repeats the operand). An operand is read in place when its
 * rows are at stride ld (trans 0) or its columns are at stride ld (trans 1):
 * a transposed view costs nothing. a and b are both f32 (exact f32
 * products, no TF32) or both bf16 (f32 accumulation). The batch entries'
 * c matrices must not overlap (cuBLAS runs them concurrently). */
#ifndef SERE_KERNELS_MATMUL_H
#define SERE_KERNELS_MATMUL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int n, k, m;
  const void *a, *b;
  float *c;
  int a_trans, b_trans;
  int lda, ldb, ldc;
  int batch;
  int64_t stride_a, stride_b, stride_c;
  int bf16;       /* a and b are bf16, else f32 */
  int accumulate; /* c += a @ b instead of c = a @ b */
} sere_cuda_gemm_args;

/* 0, or -1 after sere_fail. */
int sere_cuda_gemm(const sere_cuda_gemm_args *g);

#ifdef __cplusplus
}
#endif
#endif
