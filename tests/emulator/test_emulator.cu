// test_emulator.cu — tests of the CUDA emulator (kernels/emulator/), built
// only with -DSERE_CUDA=EMULATE: kernels written as for nvcc (SERE_LAUNCH,
// SERE_DYNAMIC_SHARED) checked against host loops. Block sums over shared
// memory and __syncthreads, warp shuffles and votes, atomics across blocks,
// dynamic shared memory and its NaN poison, 2-D/3-D indexing, a missing
// barrier giving a wrong answer in both thread orders, a divergent barrier
// failing the launch instead of hanging, launch-configuration and
// out-of-memory errors, memory accounting, cuBLAS GEMMs (transposes, leading
// dimensions, bf16, batches) against a naive loop, erfinvf. Prints the time
// of a 1000-block launch. "N passed, N failed"; exit 1 on failure.
#include <chrono>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string>
#include <vector>

#include <cublas_v2.h>

#include "check.h"
#include "cuda_common.cuh"

// ---- helpers -------------------------------------------------------------------

template <class T>
static T *to_device(const std::vector<T> &host) {
  T *d = nullptr;
  if (cudaMalloc((void **)&d, host.size() * sizeof(T)) != cudaSuccess) abort();
  cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
template <class T>
static std::vector<T> to_host(const T *d, size_t n) {
  std::vector<T> host(n);
  cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return host;
}
static std::vector<float> random_floats(size_t n, unsigned seed) {
  std::vector<float> v(n);
  srand(seed);
  for (float &x : v) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
  return v;
}

// ---- block sums: shared memory and __syncthreads ---------------------------------

// out[b] = sum of x[i] over the i that block b's threads visit (grid-stride).
__global__ void block_sum_kernel(const float *x, int n, float *out) {
  __shared__ float scratch[32];
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  v = sere_block_sum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

static void test_block_sum(void) {
  const int sizes[] = {1, 77, 1001, 5003};
  const int threads[] = {32, 96, 256, 1024};
  for (int n : sizes)
    for (int t : threads) {
      int blocks = 3;
      std::vector<float> x = random_floats(n, (unsigned)n);
      float *dx = to_device(x), *dout = to_device(std::vector<float>(blocks, NAN));
      uint64_t launches = sere_emu_launch_count();
      SERE_LAUNCH(block_sum_kernel, blocks, t, 0, dx, n, dout);
      CHECK(cudaGetLastError() == cudaSuccess);
      CHECK(sere_emu_launch_count() == launches + 1);
      std::vector<float> out = to_host(dout, blocks);
      for (int b = 0; b < blocks; b++) {
        double expected = 0;
        for (int i = 0; i < n; i++)
          if (i / t % blocks == b) expected += x[i];
        CHECK(fabs(out[b] - expected) < 1e-4 * (1 + fabs(expected)));
      }
      cudaFree(dx);
      cudaFree(dout);
    }
}

// ---- warps: shuffles and votes ------------------------------------------------------

// Per thread (72 threads: two full warps and a partial one of 8 lanes).
__global__ void shuffle_kernel(float *xor5, float *down3, float *up2, float *idx7, float *xor_w8, int *int_down1,
                               double *double_idx, unsigned *ballot, int *any_all) {
  int t = threadIdx.x;
  float v = 1.5f * t;
  xor5[t] = __shfl_xor_sync(0xffffffffu, v, 5);
  down3[t] = __shfl_down_sync(0xffffffffu, v, 3);
  up2[t] = __shfl_up_sync(0xffffffffu, v, 2);
  idx7[t] = __shfl_sync(0xffffffffu, v, 7);
  xor_w8[t] = __shfl_xor_sync(0xffffffffu, v, 9, 8);  // 9 leaves the group of 8: own value for lane^9 >= group end
  int_down1[t] = __shfl_down_sync(0xffffffffu, -t, 1);
  double_idx[t] = __shfl_sync(0xffffffffu, 0.25 * t, 31 - (t & 31));
  ballot[t] = __ballot_sync(0xffffffffu, t % 3 == 0);
  any_all[t] = __any_sync(0xffffffffu, t == 40) + 2 * __all_sync(0xffffffffu, t < 64);
}

static void test_shuffles(void) {
  const int n = 72;
  float *f[5];
  for (float *&p : f) p = to_device(std::vector<float>(n, NAN));
  int *int_down1 = to_device(std::vector<int>(n, 0)), *any_all = to_device(std::vector<int>(n, -1));
  double *double_idx = to_device(std::vector<double>(n, NAN));
  unsigned *ballot = to_device(std::vector<unsigned>(n, 0));
  SERE_LAUNCH(shuffle_kernel, 1, n, 0, f[0], f[1], f[2], f[3], f[4], int_down1, double_idx, ballot, any_all);
  CHECK(cudaGetLastError() == cudaSuccess);
  std::vector<float> xor5 = to_host(f[0], n), down3 = to_host(f[1], n), up2 = to_host(f[2], n),
                     idx7 = to_host(f[3], n), xor_w8 = to_host(f[4], n);
  std::vector<int> id1 = to_host(int_down1, n), aa = to_host(any_all, n);
  std::vector<double> didx = to_host(double_idx, n);
  std::vector<unsigned> bal = to_host(ballot, n);
  int bad = 0;
  for (int t = 0; t < n; t++) {
    int lane = t & 31, base = t - lane, lanes = n - base < 32 ? n - base : 32;
    auto value = [&](int src_lane) { return src_lane < lanes ? 1.5f * (base + src_lane) : 1.5f * t; };
    bad += xor5[t] != value(lane ^ 5);
    bad += down3[t] != (lane + 3 < 32 ? value(lane + 3) : 1.5f * t);
    bad += up2[t] != (lane >= 2 ? value(lane - 2) : 1.5f * t);
    bad += idx7[t] != value(7);
    int group_end = (lane & ~7) + 8;
    bad += xor_w8[t] != ((lane ^ 9) >= group_end ? 1.5f * t : value(lane ^ 9));
    bad += id1[t] != (lane + 1 < 32 && lane + 1 < lanes ? -(t + 1) : -t);
    bad += didx[t] != (31 - lane < lanes ? 0.25 * (base + 31 - lane) : 0.25 * t);
    unsigned expected_ballot = 0;
    for (int l = 0; l < lanes; l++) expected_ballot |= (unsigned)((base + l) % 3 == 0) << l;
    bad += bal[t] != expected_ballot;
    int expected_any = base == 32, expected_all = base + lanes <= 64;
    bad += aa[t] != expected_any + 2 * expected_all;
  }
  CHECK(bad == 0);
  for (float *p : f) cudaFree(p);
  cudaFree(int_down1);
  cudaFree(any_all);
  cudaFree(double_idx);
  cudaFree(ballot);
}

// ---- atomics across blocks -------------------------------------------------------------

__global__ void atomics_kernel(float *fsum, int *isum, int *imax, unsigned long long *usum, double *dsum) {
  int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 0.5f);
  atomicAdd(isum, g);
  atomicMax(imax, (g * 7919) % 1000);
  atomicAdd(usum, 1ull << 33);
  atomicAdd(dsum, 0.25);
}

static void test_atomics(void) {
  const int blocks = 37, threads = 96, n = blocks * threads;
  float *fsum = to_device(std::vector<float>{0.0f});
  int *isum = to_device(std::vector<int>{0}), *imax = to_device(std::vector<int>{-1});
  unsigned long long *usum = to_device(std::vector<unsigned long long>{0});
  double *dsum = to_device(std::vector<double>{0});
  SERE_LAUNCH(atomics_kernel, blocks, threads, 0, fsum, isum, imax, usum, dsum);
  CHECK(to_host(fsum, 1)[0] == 0.5f * n);
  CHECK(to_host(isum, 1)[0] == n * (n - 1) / 2);
  int expected_max = 0;
  for (int g = 0; g < n; g++) expected_max = max(expected_max, (g * 7919) % 1000);
  CHECK(to_host(imax, 1)[0] == expected_max);
  CHECK(to_host(usum, 1)[0] == (unsigned long long)n << 33);
  CHECK(to_host(dsum, 1)[0] == 0.25 * n);
  cudaFree(fsum);
  cudaFree(isum);
  cudaFree(imax);
  cudaFree(usum);
  cudaFree(dsum);
}

// ---- dynamic shared memory ----------------------------------------------------------------

// Reverses each block's chunk through dynamic shared memory; `unwritten`
// gets the bits of the one slot past what the block writes (the poison).
__global__ void reverse_kernel(const float *x, float *y, unsigned *unwritten) {
  SERE_DYNAMIC_SHARED(float, buf);
  int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  buf[t] = x[base + t];
  __syncthreads();
  y[base + t] = buf[blockDim.x - 1 - t];
  if (t == 0) unwritten[blockIdx.x] = __float_as_uint(buf[blockDim.x]);
}

static void test_dynamic_shared(void) {
  const int blocks = 4, threads = 160;
  std::vector<float> x = random_floats(blocks * threads, 7);
  float *dx = to_device(x), *dy = to_device(std::vector<float>(x.size(), NAN));
  unsigned *unwritten = to_device(std::vector<unsigned>(blocks, 0));
  SERE_LAUNCH(reverse_kernel, blocks, threads, (threads + 1) * sizeof(float), dx, dy, unwritten);
  CHECK(cudaGetLastError() == cudaSuccess);
  std::vector<float> y = to_host(dy, x.size());
  int bad = 0;
  for (int b = 0; b < blocks; b++)
    for (int t = 0; t < threads; t++) bad += y[b * threads + t] != x[b * threads + threads - 1 - t];
  CHECK(bad == 0);
  std::vector<unsigned> poison = to_host(unwritten, blocks);
  for (unsigned bits : poison) CHECK(bits == 0xffffffffu);
  cudaFree(dx);
  cudaFree(dy);
  cudaFree(unwritten);
}

// ---- 2-D / 3-D grids and blocks ----------------------------------------------------------

__global__ void index_kernel(int *out) {
  int bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  int tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int code = threadIdx.x | threadIdx.y << 4 | threadIdx.z << 8 | blockIdx.x << 12 | blockIdx.y << 16 |
             blockIdx.z << 20;
  out[bx * blockDim.x * blockDim.y * blockDim.z + tx] = code;
}

static void test_indexing(void) {
  dim3 grid(3, 2, 2), block(4, 3, 2);
  int n = 3 * 2 * 2 * 4 * 3 * 2;
  int *out = to_device(std::vector<int>(n, -1));
  SERE_LAUNCH(index_kernel, grid, block, 0, out);
  std::vector<int> got = to_host(out, n);
  int bad = 0, i = 0;
  for (unsigned bz = 0; bz < 2; bz++)
    for (unsigned by = 0; by < 2; by++)
      for (unsigned bx = 0; bx < 3; bx++)
        for (unsigned tz = 0; tz < 2; tz++)
          for (unsigned ty = 0; ty < 3; ty++)
            for (unsigned tx = 0; tx < 4; tx++)
              bad += got[i++] != (int)(tx | ty << 4 | tz << 8 | bx << 12 | by << 16 | bz << 20);
  CHECK(bad == 0);
  cudaFree(out);
}

// ---- races and divergent barriers ----------------------------------------------------------

// Each thread reads its right neighbour's value from shared memory, with
// or without the barrier that makes it safe.
__global__ void neighbour_kernel(float *out, int with_barrier) {
  SERE_DYNAMIC_SHARED(float, s);
  int t = threadIdx.x;
  s[t] = (float)t;
  if (with_barrier) __syncthreads();
  out[t] = s[(t + 1) % blockDim.x];
}

static bool neighbours_right(int with_barrier, const char *order) {
  const int n = 64;
  const char *outer = getenv("SERE_EMU_ORDER");
  std::string saved = outer ? outer : "";
  setenv("SERE_EMU_ORDER", order, 1);
  float *out = to_device(std::vector<float>(n, NAN));
  SERE_LAUNCH(neighbour_kernel, 1, n, n * sizeof(float), out, with_barrier);
  if (outer) setenv("SERE_EMU_ORDER", saved.c_str(), 1);
  else unsetenv("SERE_EMU_ORDER");
  std::vector<float> got = to_host(out, n);
  cudaFree(out);
  for (int t = 0; t < n; t++)
    if (got[t] != (float)((t + 1) % n)) return false;
  return true;
}

static void test_race_exposed(void) {
  CHECK(neighbours_right(1, "forward"));
  CHECK(neighbours_right(1, "reverse"));
  CHECK(!neighbours_right(0, "forward"));
  CHECK(!neighbours_right(0, "reverse"));
}

// Half of each warp waits at __syncthreads while the other half waits for
// it in a shuffle: nothing can go on.
__global__ void divergent_kernel(float *out) {
  float v = (float)threadIdx.x;
  if ((threadIdx.x & 31) < 16) __syncthreads();
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1);
}

// Threads that returned no longer count at a barrier (as on sm_70+).
__global__ void early_exit_kernel(float *out) {
  if (threadIdx.x >= 40) return;
  out[threadIdx.x] = 1.0f;
  __syncthreads();
  float right = out[(threadIdx.x + 1) % 40];
  __syncthreads();
  out[threadIdx.x] += right;
}

static void test_divergent_barrier(void) {
  float *out = to_device(std::vector<float>(64, 0.0f));
  fprintf(stderr, "(a launch-abandoned message is expected next)\n");
  SERE_LAUNCH(divergent_kernel, 2, 64, 0, out);
  CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
  CHECK(cudaGetLastError() == cudaSuccess);
  SERE_LAUNCH(early_exit_kernel, 1, 64, 0, out);
  CHECK(cudaGetLastError() == cudaSuccess);
  std::vector<float> got = to_host(out, 40);
  int bad = 0;
  for (float v : got) bad += v != 2.0f;
  CHECK(bad == 0);
  cudaFree(out);
}

// ---- launch configuration --------------------------------------------------------------------

__global__ void mark_kernel(int *flag) { *flag = 1; }

static bool launch_rejected(dim3 grid, dim3 block, size_t smem, int *flag) {
  cudaMemset(flag, 0, sizeof(int));
  uint64_t launches = sere_emu_launch_count();
  SERE_LAUNCH(mark_kernel, grid, block, smem, flag);
  bool rejected = cudaGetLastError() == cudaErrorInvalidConfiguration;
  return rejected && to_host(flag, 1)[0] == 0 && sere_emu_launch_count() == launches;
}

static void test_launch_configuration(void) {
  int *flag = to_device(std::vector<int>{0});
  CHECK(launch_rejected(1, 2048, 0, flag));
  CHECK(launch_rejected(1, dim3(32, 32, 2), 0, flag));
  CHECK(launch_rejected(0, 32, 0, flag));
  CHECK(launch_rejected(dim3(1, 70000), 32, 0, flag));
  CHECK(launch_rejected(1, 32, 64 * 1024, flag));
  CHECK(cudaFuncSetAttribute(mark_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) ==
        cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CHECK(cudaFuncSetAttribute(mark_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess);
  CHECK(!launch_rejected(1, 32, 64 * 1024, flag));
  CHECK(to_host(flag, 1)[0] == 1);
  CHECK(cudaGetLastError() == cudaSuccess);
  cudaFree(flag);
}

// ---- memory --------------------------------------------------------------------------------------

static void test_memory(void) {
  size_t free0, total;
  CHECK(cudaMemGetInfo(&free0, &total) == cudaSuccess);
  CHECK(total == (size_t)64 << 20);
  void *a = nullptr, *b = nullptr;
  CHECK(cudaMalloc(&a, 10 << 20) == cudaSuccess && a);
  size_t free1;
  cudaMemGetInfo(&free1, &total);
  CHECK(free1 == free0 - (10 << 20));
  CHECK(cudaMalloc(&b, free1 + 1) == cudaErrorMemoryAllocation && !b);
  CHECK(cudaPeekAtLastError() == cudaErrorMemoryAllocation);
  CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(cudaMalloc(&b, free1) == cudaSuccess);
  CHECK(cudaFree(b) == cudaSuccess);
  CHECK(cudaFree(a) == cudaSuccess);
  cudaMemGetInfo(&free1, &total);
  CHECK(free1 == free0);
  // The device side of a copy must be device memory, and in bounds.
  float host[4] = {1, 2, 3, 4};
  float *d = to_device(std::vector<float>(4, 0.0f));
  fprintf(stderr, "(two not-inside-device-memory messages are expected next)\n");
  CHECK(cudaMemcpy(host, d, sizeof host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d + 1, host, sizeof host, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(d, host, sizeof host, cudaMemcpyHostToDevice) == cudaSuccess);
  CHECK(cudaFree(host) == cudaErrorInvalidValue);
  cudaGetLastError();
  cudaFree(d);
  void *pinned = nullptr;
  CHECK(cudaMallocHost(&pinned, 100) == cudaSuccess && pinned);
  CHECK(cudaFreeHost(pinned) == cudaSuccess);
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
  CHECK(!strcmp(prop.name, "sere CUDA emulator (CPU)") && prop.major == 9 && prop.warpSize == 32);
}

// ---- cuBLAS ------------------------------------------------------------------------------------

static float bf16_value(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

// C = alpha op(A) op(B) + beta C on the host, column-major, in double.
static void naive_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const std::vector<float> &A, int lda,
                       const std::vector<float> &B, int ldb, float beta, std::vector<float> &C, int ldc) {
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double s = 0;
      for (int p = 0; p < k; p++) s += (double)A[ta ? i * lda + p : p * lda + i] * B[tb ? p * ldb + j : j * ldb + p];
      float &c = C[(size_t)j * ldc + i];
      c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * c));
    }
}

// One batched GEMM with the given transposes and types, padded leading
// dimensions and strides, against the naive loop on the same (rounded)
// values.
static bool gemm_matches(cublasHandle_t handle, bool ta, bool tb, cudaDataType type, float beta, int batch) {
  const int m = 5, n = 7, k = 9;
  int a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
  int lda = a_rows + 2, ldb = b_rows + 1, ldc = m + 3;
  long long sa = (long long)lda * a_cols + 5, sb = (long long)ldb * b_cols + 3, sc = (long long)ldc * n + 1;
  bool bf16 = type == CUDA_R_16BF;
  std::vector<float> A = random_floats(sa * batch, 1), B = random_floats(sb * batch, 2),
                     C = random_floats(sc * batch, 3);
  if (beta == 0.0f)
    for (float &c : C) c = NAN;  // not read when beta is 0
  std::vector<uint16_t> A16(A.size()), B16(B.size()), C16(C.size());
  if (bf16) {
    for (size_t i = 0; i < A.size(); i++) A16[i] = sere_bf16_round(A[i]), A[i] = bf16_value(A16[i]);
    for (size_t i = 0; i < B.size(); i++) B16[i] = sere_bf16_round(B[i]), B[i] = bf16_value(B16[i]);
    for (size_t i = 0; i < C.size(); i++) C16[i] = sere_bf16_round(C[i]), C[i] = bf16_value(C16[i]);
  }
  void *dA = bf16 ? (void *)to_device(A16) : (void *)to_device(A);
  void *dB = bf16 ? (void *)to_device(B16) : (void *)to_device(B);
  void *dC = bf16 ? (void *)to_device(C16) : (void *)to_device(C);
  float alpha = 1.5f;
  cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  uint64_t launches = sere_emu_launch_count();
  cublasStatus_t status =
      batch == 1 ? cublasGemmEx(handle, opa, opb, m, n, k, &alpha, dA, type, lda, dB, type, ldb, &beta, dC, type, ldc,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
                 : cublasGemmStridedBatchedEx(handle, opa, opb, m, n, k, &alpha, dA, type, lda, sa, dB, type, ldb, sb,
                                              &beta, dC, type, ldc, sc, batch, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT);
  std::vector<float> got(C.size());
  if (bf16) {
    std::vector<uint16_t> g = to_host((uint16_t *)dC, C.size());
    for (size_t i = 0; i < g.size(); i++) got[i] = bf16_value(g[i]);
  } else {
    got = to_host((float *)dC, C.size());
  }
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
  if (status != CUBLAS_STATUS_SUCCESS || sere_emu_launch_count() != launches + 1) return false;
  std::vector<float> expected = C;
  for (int b = 0; b < batch; b++) {
    std::vector<float> a(A.begin() + b * sa, A.begin() + (b + 1) * sa), bb(B.begin() + b * sb, B.begin() + (b + 1) * sb),
        c(expected.begin() + b * sc, expected.begin() + (b + 1) * sc);
    naive_gemm(ta, tb, m, n, k, alpha, a, lda, bb, ldb, beta, c, ldc);
    std::copy(c.begin(), c.end(), expected.begin() + b * sc);
  }
  // f32: summation order only; bf16 output: one rounding (2^-8 relative).
  double tolerance = bf16 ? 1.0 / 128 : 1e-5;
  for (size_t i = 0; i < got.size(); i++) {
    bool outside_c = (long long)(i % sc) >= (long long)ldc * (n - 1) + m || (long long)(i % sc) % ldc >= m;
    if (outside_c ? !(got[i] == C[i] || (isnan(got[i]) && isnan(C[i])))  // padding untouched
                  : !(fabs(got[i] - expected[i]) <= tolerance * (1 + fabs(expected[i]))))
      return false;
  }
  return true;
}

static void test_cublas(void) {
  cublasHandle_t handle;
  CHECK(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  CHECK(cublasSetStream(handle, sere_cuda_stream()) == CUBLAS_STATUS_SUCCESS);
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (cudaDataType type : {CUDA_R_32F, CUDA_R_16BF})
        for (float beta : {0.0f, 0.5f})
          for (int batch : {1, 3}) {
            bool ok = gemm_matches(handle, ta, tb, type, beta, batch);
            if (!ok) fprintf(stderr, "gemm ta=%d tb=%d type=%d beta=%g batch=%d\n", ta, tb, type, beta, batch);
            CHECK(ok);
          }
  float one = 1.0f, x[4] = {0};
  float *d = to_device(std::vector<float>(4, 0.0f));
  CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, d, 1, d, 2, &one, d, 2) ==
        CUBLAS_STATUS_INVALID_VALUE);  // lda < m
  fprintf(stderr, "(a not-inside-device-memory message is expected next)\n");
  CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, x, 2, d, 2, &one, d, 2) ==
        CUBLAS_STATUS_EXECUTION_FAILED);  // a host pointer
  CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, d, CUDA_R_16F, 2, d, CUDA_R_16F, 2, &one, d,
                     CUDA_R_16F, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED);
  cudaFree(d);
  CHECK(cublasDestroy(handle) == CUBLAS_STATUS_SUCCESS);
}

// ---- device math ---------------------------------------------------------------------------------

static void test_math(void) {
  int bad = 0;
  for (float x = -0.999f; x < 1.0f; x += 0.001f) bad += fabsf(erff(erfinvf(x)) - x) > 2e-7f;
  CHECK(bad == 0);
  CHECK(isinf(erfinvf(1.0f)) && erfinvf(-1.0f) < 0 && isnan(erfinvf(1.5f)));
  CHECK(fabsf(normcdff(1.0f) - 0.8413447f) < 1e-6f);
  CHECK(__popc(0xf0f0u) == 8 && __clz(1) == 31 && __clz(0) == 32 && __ffs(8) == 4 && __brev(1u) == 0x80000000u);
  CHECK(__saturatef(-1.0f) == 0.0f && __saturatef(2.0f) == 1.0f && __saturatef(NAN) == 0.0f);
  CHECK(min(3, 5u) == 3u && max(-1.0f, 2.0f) == 2.0f && min((int64_t)-5, (int64_t)2) == -5);
}

// ---- speed (printed, not checked) ------------------------------------------------------------------

__global__ void two_barriers_kernel(float *out) {
  __shared__ float s[256];
  s[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  float v = s[255 - threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = v;
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

static void report_speed(void) {
  float *out = to_device(std::vector<float>(1000, 0.0f));
  auto start = std::chrono::steady_clock::now();
  SERE_LAUNCH(two_barriers_kernel, 1000, 256, 0, out);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  CHECK(to_host(out, 1000)[999] == 255.0f);
  printf("speed: 1000 blocks x 256 threads, 2 __syncthreads: %.1f ms (%.0f ns per thread)\n", ms,
         ms * 1e6 / (1000.0 * 256));
  cudaFree(out);
}

// `test_emulator overflow`: a kernel reads one element past its buffer; the
// ASan build must stop it with a heap-buffer-overflow report (ctest
// c.test_emulator_memcheck), as compute-sanitizer's memcheck would.
__global__ void overflow_kernel(const float *x, int n, float *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[0] += x[i];  // the bug: <= instead of <
}

static int run_overflow(void) {
  float *x = to_device(std::vector<float>(100, 1.0f)), *out = to_device(std::vector<float>(1, 0.0f));
  SERE_LAUNCH(overflow_kernel, 1, 128, 0, x, 100, out);
  printf("overflow_kernel was not stopped\n");
  return 1;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "overflow")) return run_overflow();
  setenv("SERE_EMU_MEMORY_MB", "64", 1);  // read at the first memory call
  test_memory();
  test_block_sum();
  test_shuffles();
  test_atomics();
  test_dynamic_shared();
  test_indexing();
  test_race_exposed();
  test_divergent_barrier();
  test_cublas();
  test_math();
  report_speed();
  test_launch_configuration();  // last: it raises the shared-memory limit for good
  return check_summary();
}
