/* random.h — the CUDA random fills of host/ops/random.c: Philox4x32-10
 * streams laid out exactly as on the CPU (see random.c's header), so a
 * generator gives the same numbers on either device. `dst` is a contiguous
 * GPU tensor; `offset` is the generator's block offset before the fill
 * (the caller advances it). Each returns 0 or -1 after sere_fail. */
#ifndef SERE_KERNELS_RANDOM_H
#define SERE_KERNELS_RANDOM_H

#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* U[lo, hi) into an f32 or bf16 tensor; bit-identical to the CPU. */
int sere_cuda_uniform(sere_tensor *dst, double lo, double hi, uint64_t seed, uint64_t offset);
/* N(mean, std^2) into an f32 or bf16 tensor; the CPU's Box-Muller, operation
 * for operation (bit-identical to its x86-64-v3/v4 code, see random.cu). */
int sere_cuda_normal(sere_tensor *dst, float mean, float std, uint64_t seed, uint64_t offset);
/* lo + [0, range) integers (range <= 2^32) into a tensor of any dtype. */
int sere_cuda_randint(sere_tensor *dst, int64_t lo, uint64_t range, uint64_t seed, uint64_t offset);

#ifdef __cplusplus
}
#endif
#endif
