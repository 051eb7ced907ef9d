/* cuda_device.h — the CUDA runtime as the tensor core sees it: device
 * queries and the stream (kernels/device.cu), the caching allocator
 * (kernels/allocator.cu), and copies, fills and dtype conversion between
 * and on devices (kernels/copy.cu). Only compiled in when the build has
 * CUDA (SERE_WITH_CUDA); without it no tensor can be on a GPU and
 * lua_cuda.c reports "not available". Functions returning int give 0 or -1
 * after sere_fail. */
#ifndef SERE_CUDA_DEVICE_H
#define SERE_CUDA_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- kernels/device.cu ---- */
/* Number of usable GPUs; 0 when there is no driver or no device. */
int sere_cuda_device_count(void);
int sere_cuda_device_name(int device, char *name, size_t n, char *err, size_t errn);
int sere_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes, char *err, size_t errn);
int sere_cuda_synchronize(char *err, size_t errn);
/* Makes `device` (0-based) this process's GPU; call before any allocation. */
int sere_cuda_set_device(int device);
/* Runtime version as major*1000 + minor*10 (CUDA's encoding). */
int sere_cuda_runtime_version(void);

/* ---- kernels/allocator.cu ---- */
typedef struct sere_cuda_memory {
  size_t allocated;       /* bytes held by live tensors (rounded sizes) */
  size_t reserved;        /* bytes obtained from cudaMalloc, live or cached */
  size_t peak_allocated;  /* high-water mark of `allocated` */
  uint64_t device_mallocs, device_frees; /* cudaMalloc / cudaFree calls so far */
} sere_cuda_memory;
/* NULL after sere_fail on out-of-memory. `zero` clears the memory; else it
 * is left as it was, or filled with 0xff bytes (NaN) in poison mode. */
void *sere_cuda_alloc(size_t nbytes, int zero);
void sere_cuda_free(void *p, size_t nbytes);
void sere_cuda_memory_stats(sere_cuda_memory *m);
void sere_cuda_reset_peak(void);
int sere_cuda_empty_cache(void);
void sere_cuda_set_poison(int on);

/* ---- kernels/copy.cu ---- */
/* dst = src element by element with dtype conversion; both on the GPU, same
 * shape, any strides (the storages must not overlap). */
int sere_cuda_copy(sere_tensor *dst, const sere_tensor *src);
/* Contiguous bytes between host and device, ordered on sere's stream; the
 * device-to-host direction waits for the data. */
int sere_cuda_upload(void *dst_device, const void *src_host, size_t nbytes);
int sere_cuda_download(void *dst_host, const void *src_device, size_t nbytes);
/* Every element of t (any strides) = v, converted to t's dtype. */
int sere_cuda_fill(sere_tensor *t, double v);

#ifdef __cplusplus
}
#endif
#endif
