// runtime.cpp — the host side of the emulated CUDA runtime: one device,
// "device" memory that is host memory counted against SERE_EMU_MEMORY_MB
// (default 4096) so out-of-memory paths can be tested, copies and memsets
// that check their device side lies inside one allocation, streams that
// order nothing (everything is synchronous), events that take the host
// time, and CUDA's last-error state. The launch itself: emulator.cpp.
#include "emulator.h"

#include <chrono>
#include <map>
#include <set>
#include <stdio.h>
#include <stdlib.h>

static const char DEVICE_NAME[] = "sere CUDA emulator (CPU)";
static const int MULTIPROCESSORS = 132;  // an H100 SXM
static const size_t SHARED_PER_BLOCK = 48 * 1024, SHARED_PER_BLOCK_OPTIN = 227 * 1024;

// ---- errors -------------------------------------------------------------------------

static cudaError_t last_error = cudaSuccess;

cudaError_t sere_emu_set_error(cudaError_t error) {
  if (error != cudaSuccess) last_error = error;
  return error;
}
cudaError_t cudaGetLastError(void) {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }

// A failed launch shows at the next synchronisation, as on a GPU.
static cudaError_t pending_launch_failure(void) {
  return last_error == cudaErrorLaunchFailure ? cudaErrorLaunchFailure : cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unrecognized error code";
}

const char *cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

// ---- the device ------------------------------------------------------------------------

static size_t total_memory(void);

cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return sere_emu_set_error(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
  if (!prop) return sere_emu_set_error(cudaErrorInvalidValue);
  if (device != 0) return sere_emu_set_error(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "%s", DEVICE_NAME);
  prop->totalGlobalMem = total_memory();
  prop->sharedMemPerBlock = SHARED_PER_BLOCK;
  prop->sharedMemPerBlockOptin = SHARED_PER_BLOCK_OPTIN;
  prop->sharedMemPerMultiprocessor = 228 * 1024;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024, prop->maxThreadsDim[1] = 1024, prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff, prop->maxGridSize[1] = 65535, prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = MULTIPROCESSORS;
  prop->major = 9;
  prop->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
  if (!value) return sere_emu_set_error(cudaErrorInvalidValue);
  if (device != 0) return sere_emu_set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)SHARED_PER_BLOCK; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = MULTIPROCESSORS; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)SHARED_PER_BLOCK_OPTIN; return cudaSuccess;
  }
  return sere_emu_set_error(cudaErrorInvalidValue);
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : sere_emu_set_error(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int *device) {
  if (!device) return sere_emu_set_error(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return pending_launch_failure(); }
cudaError_t cudaRuntimeGetVersion(int *version) {
  if (!version) return sere_emu_set_error(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *version) { return cudaRuntimeGetVersion(version); }

// ---- device memory ------------------------------------------------------------------------

// Never destroyed: memory still allocated at exit (a caching allocator's
// blocks) stays reachable for LeakSanitizer, as a GPU's memory simply goes
// away with the process.
static std::map<uintptr_t, size_t> &device_blocks = *new std::map<uintptr_t, size_t>;  // start -> bytes
static std::set<void *> &host_blocks = *new std::set<void *>;
static size_t device_bytes_used;

static size_t total_memory(void) {
  static size_t total;
  if (!total) {
    const char *env = getenv("SERE_EMU_MEMORY_MB");
    char *end = nullptr;
    unsigned long long mb = env ? strtoull(env, &end, 10) : 0;
    if (env && (end == env || *end || mb == 0)) {
      fprintf(stderr, "sere CUDA emulator: SERE_EMU_MEMORY_MB=%s is not a positive number; using 4096\n", env);
      mb = 0;
    }
    total = (size_t)(mb ? mb : 4096) << 20;
  }
  return total;
}

bool sere_emu_in_device_memory(const void *p, size_t bytes) {
  uintptr_t a = (uintptr_t)p;
  auto it = device_blocks.upper_bound(a);
  if (it == device_blocks.begin()) return false;
  --it;
  return a - it->first <= it->second && bytes <= it->second - (a - it->first);
}

cudaError_t cudaMalloc(void **ptr, size_t size) {
  if (!ptr) return sere_emu_set_error(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  if (size > total_memory() - device_bytes_used) return sere_emu_set_error(cudaErrorMemoryAllocation);
  void *p = nullptr;
  if (posix_memalign(&p, 256, size)) return sere_emu_set_error(cudaErrorMemoryAllocation);
  memset(p, 0xff, size);  // as fresh device memory holds garbage: NaN as floats
  device_blocks[(uintptr_t)p] = size;
  device_bytes_used += size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
  if (!ptr) return cudaSuccess;
  auto it = device_blocks.find((uintptr_t)ptr);
  if (it == device_blocks.end()) return sere_emu_set_error(cudaErrorInvalidValue);
  device_bytes_used -= it->second;
  device_blocks.erase(it);
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
  if (!free_bytes || !total_bytes) return sere_emu_set_error(cudaErrorInvalidValue);
  *total_bytes = total_memory();
  *free_bytes = *total_bytes - device_bytes_used;
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags) {
  if (!ptr) return sere_emu_set_error(cudaErrorInvalidValue);
  *ptr = malloc(size ? size : 1);
  if (!*ptr) return sere_emu_set_error(cudaErrorMemoryAllocation);
  host_blocks.insert(*ptr);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void **ptr, size_t size) { return cudaHostAlloc(ptr, size, cudaHostAllocDefault); }

cudaError_t cudaFreeHost(void *ptr) {
  if (!ptr) return cudaSuccess;
  if (!host_blocks.erase(ptr)) return sere_emu_set_error(cudaErrorInvalidValue);
  free(ptr);
  return cudaSuccess;
}

// ---- copies and fills ------------------------------------------------------------------------

// The device side of a copy must lie inside one allocation; saying which
// pointer is wrong helps more than CUDA's "invalid argument".
static bool device_side_ok(const char *what, const char *side, const void *p, size_t bytes) {
  if (sere_emu_in_device_memory(p, bytes)) return true;
  fprintf(stderr, "sere CUDA emulator: %s: %s %p (+%zu bytes) is not inside device memory\n", what, side, p,
          bytes);
  return false;
}

static cudaError_t check_copy(const char *what, void *dst, const void *src, size_t extent_dst,
                              size_t extent_src, cudaMemcpyKind kind) {
  if ((unsigned)kind > cudaMemcpyDefault) return sere_emu_set_error(cudaErrorInvalidMemcpyDirection);
  if (!dst || !src) return sere_emu_set_error(cudaErrorInvalidValue);
  bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_device && !device_side_ok(what, "destination", dst, extent_dst)) ||
      (src_device && !device_side_ok(what, "source", src, extent_src)))
    return sere_emu_set_error(cudaErrorInvalidValue);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  cudaError_t e = check_copy("cudaMemcpy", dst, src, count, count, kind);
  if (e != cudaSuccess) return e;
  memcpy(dst, src, count);
  return pending_launch_failure();
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}

cudaError_t cudaMemcpy2D(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                         cudaMemcpyKind kind) {
  if (width == 0 || height == 0) return cudaSuccess;
  if (width > dpitch || width > spitch) return sere_emu_set_error(cudaErrorInvalidValue);
  cudaError_t e = check_copy("cudaMemcpy2D", dst, src, dpitch * (height - 1) + width, spitch * (height - 1) + width,
                             kind);
  if (e != cudaSuccess) return e;
  for (size_t row = 0; row < height; row++) memcpy((char *)dst + row * dpitch, (const char *)src + row * spitch, width);
  return pending_launch_failure();
}
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind);
}

cudaError_t cudaMemset(void *ptr, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (!device_side_ok("cudaMemset", "destination", ptr, count)) return sere_emu_set_error(cudaErrorInvalidValue);
  memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t) {
  return cudaMemset(ptr, value, count);
}

// ---- streams and events --------------------------------------------------------------------------

struct CUstream_st {
  unsigned flags;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point when;
  bool recorded, timing;
};

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  if (!stream) return sere_emu_set_error(cudaErrorInvalidValue);
  *stream = new CUstream_st{flags};
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream) return sere_emu_set_error(cudaErrorInvalidResourceHandle);
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return pending_launch_failure(); }
cudaError_t cudaStreamQuery(cudaStream_t) { return pending_launch_failure(); }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned int) {
  return event ? cudaSuccess : sere_emu_set_error(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  if (!event) return sere_emu_set_error(cudaErrorInvalidValue);
  *event = new CUevent_st{{}, false, !(flags & cudaEventDisableTiming)};
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (!event) return sere_emu_set_error(cudaErrorInvalidResourceHandle);
  event->when = std::chrono::steady_clock::now();
  event->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return event ? pending_launch_failure() : sere_emu_set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  return event ? cudaSuccess : sere_emu_set_error(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return sere_emu_set_error(cudaErrorInvalidValue);
  if (!start || !end || !start->timing || !end->timing) return sere_emu_set_error(cudaErrorInvalidResourceHandle);
  if (!start->recorded || !end->recorded) return sere_emu_set_error(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!event) return sere_emu_set_error(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}
