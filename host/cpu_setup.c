/* cpu_setup.c — process-wide settings for fast CPU math, applied once at
 * the start of main():
 *
 *  - OpenBLAS picks its GEMM kernels from the CPU model when the library
 *    loads. On CPUs it does not recognise (virtual machines reporting a
 *    generic "Intel Xeon Processor" model are common) it falls back to its
 *    oldest SSE3 kernels ("Prescott"), about 9x slower than the AVX-512
 *    ones on the same machine. The choice is made before main() runs, so
 *    when that happened on a CPU that has AVX2/AVX-512 we set
 *    OPENBLAS_CORETYPE and re-execute the program once. A user's own
 *    OPENBLAS_CORETYPE is always respected.
 *  - glibc serves large allocations with mmap and unmaps them on free, so
 *    every new activation tensor page-faults its memory in again. A high
 *    mmap threshold keeps freed blocks in the heap for reuse. */
#include "cpu_setup.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *openblas_get_corename(void);

static const char *better_blas_core(void) {
  const char *core = openblas_get_corename();
  if (!core || strcmp(core, "Prescott") != 0) return NULL;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "SkylakeX";
  if (__builtin_cpu_supports("avx2")) return "Haswell";
  return NULL;
}

void sere_cpu_setup(char **argv) {
  if (!getenv("OPENBLAS_CORETYPE")) {
    const char *core = better_blas_core();
    if (core && setenv("OPENBLAS_CORETYPE", core, 1) == 0) {
      execv("/proc/self/exe", argv);
      unsetenv("OPENBLAS_CORETYPE"); /* exec failed: carry on with the slow kernels */
    }
  }
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}
