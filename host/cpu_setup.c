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
 *  - OpenMP threads that spin while waiting (libgomp's default) are a
 *    disaster whenever the cores are shared with anything else (OpenBLAS's
 *    own threads, a second process, a busy CI machine): every barrier then
 *    waits for a scheduler time slice, and a ViT-S forward on 96-pixel
 *    crops measured 9x slower. OMP_WAIT_POLICY=passive makes idle threads
 *    sleep; it is set (and read by libgomp at load time, hence the same
 *    re-execution) unless the user chose a policy.
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
  int changed = 0;
  if (!getenv("OPENBLAS_CORETYPE")) {
    const char *core = better_blas_core();
    if (core) changed |= setenv("OPENBLAS_CORETYPE", core, 1) == 0;
  }
  if (!getenv("OMP_WAIT_POLICY")) changed |= setenv("OMP_WAIT_POLICY", "passive", 1) == 0;
  if (changed) execv("/proc/self/exe", argv); /* on failure: carry on with the current settings */
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}
