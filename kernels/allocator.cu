// allocator.cu — the caching allocator behind every CUDA storage.
//
// cudaMalloc and cudaFree synchronise the device and cost tens of
// microseconds, so a training step must not call them. Freed blocks go to a
// free list keyed by their rounded size and the next request of that size
// takes one back; after the first step of a fixed-shape loop every request
// is served from the lists. Sizes are rounded up (to 512 bytes below 1 MiB,
// to an eighth of their power of two above) so nearby sizes share a bucket,
// wasting at most 12.5%.
//
// All of sere's device work runs on one stream (sere_cuda_stream), so a
// block freed by the host can be handed out again at once: any kernel that
// still uses it was queued earlier on the same stream and runs first. Work
// on another stream (an overlapping NCCL stream) must record an event and
// hold its tensors until then.
//
// When cudaMalloc fails the cache is released and the request retried; if
// it still fails the error says what was requested and what is in use.
#include <map>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_device.h"

namespace {

// rounded size -> cached blocks. Never destroyed: cached blocks stay
// reachable until the process ends (no exit-time destructor racing the
// CUDA runtime's teardown; leak checkers see them as held, not lost).
std::map<size_t, std::vector<void *>> &free_blocks = *new std::map<size_t, std::vector<void *>>;
size_t allocated_bytes, reserved_bytes, peak_allocated_bytes;
uint64_t device_mallocs, device_frees;
bool poison_new_memory;

size_t rounded_size(size_t n) {
  if (n == 0) n = 1;
  if (n < (1u << 20)) return (n + 511) & ~(size_t)511;
  size_t p = 1;
  while (p < n) p <<= 1;
  size_t step = p >> 3;
  return (n + step - 1) / step * step;
}

void release_cache() {
  for (auto &bucket : free_blocks)
    for (void *p : bucket.second) {
      cudaFree(p);
      reserved_bytes -= bucket.first;
      device_frees++;
    }
  free_blocks.clear();
}

}  // namespace

extern "C" void *sere_cuda_alloc(size_t nbytes, int zero) {
  static int devices = -1;
  if (devices < 0) devices = sere_cuda_device_count();
  if (devices == 0) {
    sere_fail("cuda: no CUDA device is available on this machine");
    return NULL;
  }
  size_t size = rounded_size(nbytes);
  void *p = NULL;
  auto it = free_blocks.find(size);
  if (it != free_blocks.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
  } else {
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cache();
      e = cudaMalloc(&p, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      cudaGetLastError();
      sere_fail("cuda: out of memory: cannot allocate %.1f MiB; sere holds %.1f MiB in tensors and "
                "%.1f MiB reserved, the device has %.1f MiB free of %.1f MiB (%s)",
                nbytes / 1048576.0, allocated_bytes / 1048576.0, reserved_bytes / 1048576.0,
                free_b / 1048576.0, total_b / 1048576.0, cudaGetErrorString(e));
      return NULL;
    }
    reserved_bytes += size;
    device_mallocs++;
  }
  allocated_bytes += size;
  if (allocated_bytes > peak_allocated_bytes) peak_allocated_bytes = allocated_bytes;
  cudaError_t e = cudaSuccess;
  if (zero) e = cudaMemsetAsync(p, 0, nbytes, sere_cuda_stream());
  else if (poison_new_memory) e = cudaMemsetAsync(p, 0xff, size, sere_cuda_stream());
  if (sere_cuda_check(e, "cuda: clearing new memory")) {
    sere_cuda_free(p, nbytes);
    return NULL;
  }
  return p;
}

extern "C" void sere_cuda_free(void *p, size_t nbytes) {
  if (!p) return;
  size_t size = rounded_size(nbytes);
  allocated_bytes -= size;
  free_blocks[size].push_back(p);
}

extern "C" void sere_cuda_memory_stats(sere_cuda_memory *m) {
  m->allocated = allocated_bytes;
  m->reserved = reserved_bytes;
  m->peak_allocated = peak_allocated_bytes;
  m->device_mallocs = device_mallocs;
  m->device_frees = device_frees;
}

extern "C" void sere_cuda_reset_peak(void) { peak_allocated_bytes = allocated_bytes; }

extern "C" int sere_cuda_empty_cache(void) {
  if (sere_cuda_check(cudaStreamSynchronize(sere_cuda_stream()), "cuda: empty_cache")) return -1;
  release_cache();
  return 0;
}

extern "C" void sere_cuda_set_poison(int on) { poison_new_memory = on != 0; }
