// cublas.cpp — cuBLAS's GEMMs for the emulator build, on OpenBLAS:
// column-major, op(A) m×k times op(B) k×n into C m×n with leading
// dimensions as cuBLAS documents them. bf16 operands are widened into f32
// scratch; a bf16 C is widened (only when beta is not 0: like cuBLAS, C is
// not read then, so NaN garbage in it does not leak through), computed in
// f32 and rounded back to nearest even. Each operand must lie inside one
// device allocation, which catches host pointers and wrong leading
// dimensions outside the ASan build.
#include "cublas_v2.h"

#include <cblas.h>
#include <stdio.h>
#include <vector>

struct cublasContext {
  cudaStream_t stream;
  cublasMath_t math_mode;
};

cublasStatus_t cublasCreate(cublasHandle_t *handle) {
  if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext{nullptr, CUBLAS_DEFAULT_MATH};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t handle) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *, size_t) {
  return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char *cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
  }
  return "unknown error";
}

// ---- GEMM ---------------------------------------------------------------------------

static size_t element_bytes(cudaDataType type) { return type == CUDA_R_32F ? 4 : 2; }

static float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static uint16_t f32_to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// A rows×cols column-major matrix with leading dimension ld.
struct operand {
  const void *data;
  cudaDataType type;
  int rows, cols, ld;
  size_t bytes() const {
    return rows && cols ? ((size_t)ld * (cols - 1) + rows) * element_bytes(type) : 0;
  }
};

// The operand as f32: itself, or widened into `scratch` (leading dimension `rows`).
static const float *as_f32(const operand &x, std::vector<float> &scratch, int *ld) {
  if (x.type == CUDA_R_32F) {
    *ld = x.ld;
    return (const float *)x.data;
  }
  scratch.resize((size_t)x.rows * x.cols);
  for (int j = 0; j < x.cols; j++)
    for (int i = 0; i < x.rows; i++)
      scratch[(size_t)j * x.rows + i] = bf16_to_f32(((const uint16_t *)x.data)[(size_t)j * x.ld + i]);
  *ld = x.rows > 0 ? x.rows : 1;
  return scratch.data();
}

static bool on_device(const char *what, const char *name, const operand &x) {
  if (x.bytes() == 0 || sere_emu_in_device_memory(x.data, x.bytes())) return true;
  fprintf(stderr, "sere CUDA emulator: %s: %s (%d×%d, ld %d at %p) is not inside device memory\n", what, name,
          x.rows, x.cols, x.ld, x.data);
  return false;
}

struct gemm_shape {
  cublasOperation_t transa, transb;
  int m, n, k;
  cudaDataType a_type, b_type, c_type;
  int lda, ldb, ldc;
};

static bool supported(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }
static bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

static cublasStatus_t check_shape(const gemm_shape &s, const void *alpha, const void *beta) {
  if (!supported(s.a_type) || !supported(s.b_type) || !supported(s.c_type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!valid_op(s.transa) || !valid_op(s.transb) || s.m < 0 || s.n < 0 || s.k < 0 || !alpha || !beta)
    return CUBLAS_STATUS_INVALID_VALUE;
  int a_rows = s.transa == CUBLAS_OP_N ? s.m : s.k, b_rows = s.transb == CUBLAS_OP_N ? s.k : s.n;
  if (s.lda < (a_rows > 1 ? a_rows : 1) || s.ldb < (b_rows > 1 ? b_rows : 1) || s.ldc < (s.m > 1 ? s.m : 1))
    return CUBLAS_STATUS_INVALID_VALUE;
  return CUBLAS_STATUS_SUCCESS;
}

static operand operand_a(const gemm_shape &s, const void *A) {
  bool n = s.transa == CUBLAS_OP_N;
  return operand{A, s.a_type, n ? s.m : s.k, n ? s.k : s.m, s.lda};
}
static operand operand_b(const gemm_shape &s, const void *B) {
  bool n = s.transb == CUBLAS_OP_N;
  return operand{B, s.b_type, n ? s.k : s.n, n ? s.n : s.k, s.ldb};
}

// One product, its shape already checked.
static void gemm(const gemm_shape &s, float alpha, const void *A, const void *B, float beta, void *C) {
  if (s.m == 0 || s.n == 0) return;
  std::vector<float> c_scratch;
  float *c = (float *)C;
  int ldc = s.ldc;
  if (s.c_type == CUDA_R_16BF) {
    c_scratch.assign((size_t)s.m * s.n, 0.0f);
    if (beta != 0.0f)
      for (int j = 0; j < s.n; j++)
        for (int i = 0; i < s.m; i++)
          c_scratch[(size_t)j * s.m + i] = bf16_to_f32(((const uint16_t *)C)[(size_t)j * s.ldc + i]);
    c = c_scratch.data();
    ldc = s.m;
  }
  if (s.k == 0) {  // C = beta C, without reading C when beta is 0
    for (int j = 0; j < s.n; j++)
      for (int i = 0; i < s.m; i++) {
        float *ci = &c[(size_t)j * ldc + i];
        *ci = beta == 0.0f ? 0.0f : beta * *ci;
      }
  } else {
    std::vector<float> a_scratch, b_scratch;
    int lda, ldb;
    const float *a = as_f32(operand_a(s, A), a_scratch, &lda);
    const float *b = as_f32(operand_b(s, B), b_scratch, &ldb);
    cblas_sgemm(CblasColMajor, s.transa == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                s.transb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, s.m, s.n, s.k, alpha, a, lda, b, ldb, beta, c,
                ldc);
  }
  if (s.c_type == CUDA_R_16BF)
    for (int j = 0; j < s.n; j++)
      for (int i = 0; i < s.m; i++)
        ((uint16_t *)C)[(size_t)j * s.ldc + i] = f32_to_bf16(c_scratch[(size_t)j * s.m + i]);
}

static cublasStatus_t gemm_batched(const char *what, cublasHandle_t handle, const gemm_shape &s, const void *alpha,
                                   const void *A, long long stride_a, const void *B, long long stride_b,
                                   const void *beta, void *C, long long stride_c, int batch) {
  if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
  cublasStatus_t status = check_shape(s, alpha, beta);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  size_t ea = element_bytes(s.a_type), eb = element_bytes(s.b_type), ec = element_bytes(s.c_type);
  for (int i = 0; i < batch; i++) {
    const operand c{(const char *)C + i * stride_c * ec, s.c_type, s.m, s.n, s.ldc};
    if ((s.k > 0 && (!on_device(what, "A", operand_a(s, (const char *)A + i * stride_a * ea)) ||
                     !on_device(what, "B", operand_b(s, (const char *)B + i * stride_b * eb)))) ||
        !on_device(what, "C", c))
      return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  sere_emu_count_launch();
  for (int i = 0; i < batch; i++)
    gemm(s, *(const float *)alpha, (const char *)A + i * stride_a * ea, (const char *)B + i * stride_b * eb,
         *(const float *)beta, (char *)C + i * stride_c * ec);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                          int lda, long long strideA, const void *B, cudaDataType Btype, int ldb,
                                          long long strideB, const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          long long strideC, int batchCount, cublasComputeType_t computeType,
                                          cublasGemmAlgo_t algo) {
  const gemm_shape s{transa, transb, m, n, k, Atype, Btype, Ctype, lda, ldb, ldc};
  return gemm_batched("cublasGemmStridedBatchedEx", handle, s, alpha, A, strideA, B, strideB, beta, C, strideC,
                      batchCount);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  const gemm_shape s{transa, transb, m, n, k, Atype, Btype, Ctype, lda, ldb, ldc};
  return gemm_batched("cublasGemmEx", handle, s, alpha, A, 0, B, 0, beta, C, 0, 1);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float *alpha, const float *A, int lda,
                                         long long strideA, const float *B, int ldb, long long strideB,
                                         const float *beta, float *C, int ldc, long long strideC, int batchCount) {
  const gemm_shape s{transa, transb, m, n, k, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, lda, ldb, ldc};
  return gemm_batched("cublasSgemmStridedBatched", handle, s, alpha, A, strideA, B, strideB, beta, C, strideC,
                      batchCount);
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc) {
  const gemm_shape s{transa, transb, m, n, k, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, lda, ldb, ldc};
  return gemm_batched("cublasSgemm", handle, s, alpha, A, 0, B, 0, beta, C, 0, 1);
}
