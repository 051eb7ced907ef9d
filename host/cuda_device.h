/* cuda_device.h — device queries implemented in kernels/device.cu. Only
 * declared when the build has CUDA (SERE_WITH_CUDA); lua_cuda.c reports
 * "not available" otherwise. */
#ifndef SERE_CUDA_DEVICE_H
#define SERE_CUDA_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable GPUs; 0 when there is no driver or no device. */
int sere_cuda_device_count(void);
/* 0 ok, -1 error (message via sere_fail-like buffer `err`). */
int sere_cuda_device_name(int device, char *name, size_t n, char *err, size_t errn);
int sere_cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes, char *err, size_t errn);
int sere_cuda_synchronize(char *err, size_t errn);
/* Runtime version as major*1000 + minor*10 (CUDA's encoding). */
int sere_cuda_runtime_version(void);

#ifdef __cplusplus
}
#endif
#endif
