// matmul.cu — sere's matrix products on cuBLAS (see matmul.h for the call).
//
// cuBLAS is column-major and sere row-major. A row-major n x m matrix with
// rows at stride ld is, read column-major, its m x n transpose with the same
// ld, so c = a @ b is computed as c^T = b^T a^T: cuBLAS gets (m, n, k) with b
// as its first operand and a as its second, and an operand sere stores
// transposed (columns at stride ld) becomes CUBLAS_OP_T with that ld.
//
// One handle for the process, created on first use, bound to
// sere_cuda_stream() and given its own workspace, so cuBLAS never allocates
// behind the caching allocator's back or runs on another stream. Products
// use CUBLAS_COMPUTE_32F: exact f32 for f32 operands (no TF32 yet), f32
// accumulation for bf16 ones (tensor cores).
#include "cuda_common.cuh"
#include "matmul.h"

#include <cublas_v2.h>

// What NVIDIA recommends for Hopper; held for the life of the process.
static const size_t workspace_bytes = 32u << 20;

static cublasHandle_t shared_handle(void) {
  static cublasHandle_t handle;
  static void *workspace;
  if (handle) return handle;
  cublasHandle_t h;
  cublasStatus_t s = cublasCreate(&h);
  if (s != CUBLAS_STATUS_SUCCESS) {
    sere_fail("cuBLAS: cannot create a handle: %s", cublasGetStatusString(s));
    return NULL;
  }
  if (sere_cuda_check(cudaMalloc(&workspace, workspace_bytes), "cuBLAS: workspace")) {
    cublasDestroy(h);
    return NULL;
  }
  if ((s = cublasSetStream(h, sere_cuda_stream())) != CUBLAS_STATUS_SUCCESS ||
      (s = cublasSetWorkspace(h, workspace, workspace_bytes)) != CUBLAS_STATUS_SUCCESS ||
      (s = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
    sere_fail("cuBLAS: cannot set up the handle: %s", cublasGetStatusString(s));
    cublasDestroy(h);
    cudaFree(workspace);
    workspace = NULL;
    return NULL;
  }
  handle = h;
  return handle;
}

extern "C" int sere_cuda_gemm(const sere_cuda_gemm_args *g) {
  if (g->n == 0 || g->m == 0 || g->batch == 0) return 0;
  cublasHandle_t h = shared_handle();
  if (!h) return -1;
  const float alpha = 1.0f, beta = g->accumulate ? 1.0f : 0.0f;
  cudaDataType ab_type = g->bf16 ? CUDA_R_16BF : CUDA_R_32F;
  cublasOperation_t op_b = g->b_trans ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = g->a_trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasStatus_t s;
  if (g->batch == 1)
    s = cublasGemmEx(h, op_b, op_a, g->m, g->n, g->k, &alpha, g->b, ab_type, g->ldb, g->a, ab_type, g->lda, &beta,
                     g->c, CUDA_R_32F, g->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  else
    s = cublasGemmStridedBatchedEx(h, op_b, op_a, g->m, g->n, g->k, &alpha, g->b, ab_type, g->ldb, g->stride_b, g->a,
                                   ab_type, g->lda, g->stride_a, &beta, g->c, CUDA_R_32F, g->ldc, g->stride_c,
                                   g->batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) {
    sere_fail("cuBLAS GEMM [%d, %d] @ [%d, %d] (%s, batch %d, ld %d/%d/%d): %s", g->n, g->k, g->k, g->m,
              g->bf16 ? "bf16" : "f32", g->batch, g->lda, g->ldb, g->ldc, cublasGetStatusString(s));
    return -1;
  }
  return SERE_CHECK_LAUNCH("cuBLAS GEMM");
}
