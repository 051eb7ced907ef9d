// copy.cu — copies on and between devices: strided device-to-device copies
// with dtype conversion (the CUDA twin of tensor.c's sere_copy_raw), fills,
// and contiguous host<->device transfers, all on sere's stream.
//
// Same-dtype copies move raw elements (exact for every dtype, i64
// included); converting copies go through double like the CPU's generic
// path, with f32 <-> bf16 rounding to nearest even exactly as on the CPU.
#include "cuda_common.cuh"
#include "cuda_device.h"

template <typename T>
__global__ void copy_same_dtype(T *dst, sere_layout dl, const T *src, sere_layout sl, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    dst[sere_layout_offset(dl, i)] = src[sere_layout_offset(sl, i)];
}

__global__ void copy_converting(void *dst, int dd, sere_layout dl, const void *src, int sd, sere_layout sl,
                                int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    sere_store_any(dst, dd, sere_layout_offset(dl, i), sere_load_any(src, sd, sere_layout_offset(sl, i)));
}

__global__ void fill_any(void *dst, int dd, sere_layout dl, double v, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    sere_store_any(dst, dd, sere_layout_offset(dl, i), v);
}

static const int copy_threads = 256;

// Grid-stride loops: cap the grid, every thread walks the rest.
static unsigned copy_blocks(int64_t n) {
  unsigned b = sere_blocks_for(n, copy_threads);
  return b > 65535u ? 65535u : b;
}

extern "C" int sere_cuda_copy(sere_tensor *dst, const sere_tensor *src) {
  int64_t n = sere_numel(dst);
  if (n == 0) return 0;
  sere_layout dl = sere_layout_of(dst), sl = sere_layout_of(src);
  void *d = dst->storage->data;
  const void *s = src->storage->data;
  if (dst->dtype == src->dtype && sere_is_contiguous(dst) && sere_is_contiguous(src))
    return sere_cuda_check(cudaMemcpyAsync(sere_data(dst), sere_data(src), (size_t)n * sere_dtype_size(dst->dtype),
                                           cudaMemcpyDeviceToDevice, sere_cuda_stream()),
                           "copy (cuda)");
  if (dst->dtype == src->dtype) {
    switch (sere_dtype_size(dst->dtype)) {
      case 1: SERE_LAUNCH(copy_same_dtype<uint8_t>, copy_blocks(n), copy_threads, 0, (uint8_t *)d, dl, (const uint8_t *)s, sl, n); break;
      case 2: SERE_LAUNCH(copy_same_dtype<uint16_t>, copy_blocks(n), copy_threads, 0, (uint16_t *)d, dl, (const uint16_t *)s, sl, n); break;
      case 4: SERE_LAUNCH(copy_same_dtype<uint32_t>, copy_blocks(n), copy_threads, 0, (uint32_t *)d, dl, (const uint32_t *)s, sl, n); break;
      default: SERE_LAUNCH(copy_same_dtype<uint64_t>, copy_blocks(n), copy_threads, 0, (uint64_t *)d, dl, (const uint64_t *)s, sl, n); break;
    }
  } else {
    SERE_LAUNCH(copy_converting, copy_blocks(n), copy_threads, 0, d, (int)dst->dtype, dl, s, (int)src->dtype, sl, n);
  }
  return SERE_CHECK_LAUNCH("copy (cuda)");
}

extern "C" int sere_cuda_fill(sere_tensor *t, double v) {
  int64_t n = sere_numel(t);
  if (n == 0) return 0;
  SERE_LAUNCH(fill_any, copy_blocks(n), copy_threads, 0, t->storage->data, (int)t->dtype, sere_layout_of(t), v, n);
  return SERE_CHECK_LAUNCH("fill (cuda)");
}

extern "C" int sere_cuda_upload(void *dst_device, const void *src_host, size_t nbytes) {
  if (nbytes == 0) return 0;
  // Synchronous with respect to the host buffer: the caller may free it next.
  cudaStream_t s = sere_cuda_stream();
  if (sere_cuda_check(cudaMemcpyAsync(dst_device, src_host, nbytes, cudaMemcpyHostToDevice, s), "copy to cuda"))
    return -1;
  return sere_cuda_check(cudaStreamSynchronize(s), "copy to cuda");
}

extern "C" int sere_cuda_download(void *dst_host, const void *src_device, size_t nbytes) {
  if (nbytes == 0) return 0;
  cudaStream_t s = sere_cuda_stream();
  if (sere_cuda_check(cudaMemcpyAsync(dst_host, src_device, nbytes, cudaMemcpyDeviceToHost, s), "copy to cpu"))
    return -1;
  return sere_cuda_check(cudaStreamSynchronize(s), "copy to cpu");
}
