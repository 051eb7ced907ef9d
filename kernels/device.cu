// device.cu — CUDA device queries behind sere.cuda: count, name, memory,
// synchronisation, and the stream sere's work is issued on. Errors come
// back as messages, never as aborts, so a machine without a GPU (or without
// a driver) just reports zero devices.
#include <stdio.h>

#include "cuda_common.cuh"
#include "cuda_device.h"

// One stream for all of sere's work (kernels, copies, cuBLAS, NCCL), created
// on first use; ordering within it replaces most explicit synchronisation.
extern "C" cudaStream_t sere_cuda_stream(void) {
  static cudaStream_t stream;
  static int created;
  if (!created) {
    if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
      cudaGetLastError();
      stream = 0;
    }
    created = 1;
  }
  return stream;
}

static int report(cudaError_t e, const char *what, char *err, size_t errn) {
  if (e == cudaSuccess) return 0;
  snprintf(err, errn, "%s: %s", what, cudaGetErrorString(e));
  cudaGetLastError();  // clear the sticky-free error state
  return -1;
}

extern "C" int sere_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

extern "C" int sere_cuda_device_name(int device, char *name, size_t n, char *err, size_t errn) {
  cudaDeviceProp prop;
  if (report(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties", err, errn)) return -1;
  snprintf(name, n, "%s", prop.name);
  return 0;
}

extern "C" int sere_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes, char *err, size_t errn) {
  if (report(cudaSetDevice(device), "cudaSetDevice", err, errn)) return -1;
  return report(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo", err, errn);
}

extern "C" int sere_cuda_synchronize(char *err, size_t errn) {
  return report(cudaDeviceSynchronize(), "cudaDeviceSynchronize", err, errn);
}

extern "C" int sere_cuda_runtime_version(void) {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

extern "C" int sere_cuda_set_device(int device) {
  return sere_cuda_check(cudaSetDevice(device), "cuda: set_device");
}
