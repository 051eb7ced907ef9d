// nccl.cu — the NCCL calls behind sere.dist's collectives on CUDA tensors
// (see nccl.h): the communicator, all-reduce / all-gather / broadcast on
// device pointers on sere_cuda_stream(), and the exit path (destroy after
// a clean run, abort after a failure). host/dist.c decides when to call
// these (MPI carries the unique id, the call-signature check and every CPU
// tensor). In the emulator build <nccl.h> is kernels/emulator/nccl.h, a
// fake NCCL over MPI, so this file runs unchanged in CI without a GPU.
// Without NCCL in the build this file is empty and dist.c stages CUDA
// tensors through host memory instead.
#ifdef SERE_WITH_NCCL
#include <nccl.h>  // NCCL's (or the emulator's fake)
#include <string.h>

#include "cuda_common.cuh"
#include "nccl.h"  // ours

static struct {
  ncclComm_t comm;
  int device;  // the GPU current when the communicator was made
  int rank, world;
} nccl = {NULL, -1, 0, 1};

// "<op>: <call> failed on rank 1 of 2: <NCCL's message> (<its detail>)"
static int nccl_failed(const char *op, const char *call, ncclResult_t r) {
  const char *detail = nccl.comm ? ncclGetLastError(nccl.comm) : ncclGetLastError(NULL);
  sere_fail("%s: %s failed on rank %d of %d: %s%s%s%s", op, call, nccl.rank, nccl.world, ncclGetErrorString(r),
            detail && *detail ? " (" : "", detail ? detail : "", detail && *detail ? ")" : "");
  return -1;
}

static ncclDataType_t nccl_type(sere_dtype dtype) {
  switch (dtype) {
    case SERE_F32: return ncclFloat32;
    case SERE_BF16: return ncclBfloat16;
    case SERE_I32: return ncclInt32;
    case SERE_I64: return ncclInt64;
    default: return ncclUint8;  // u8, and bool as 0/1 bytes
  }
}

// The communicator exists and the GPU it was made on is still current (a
// collective on another GPU would read the wrong memory).
static int usable(const char *op) {
  if (!nccl.comm) {
    sere_fail("%s: no NCCL communicator (dist.c makes it before the first collective on a CUDA tensor)", op);
    return -1;
  }
  int device = -1;
  if (sere_cuda_check(cudaGetDevice(&device), op)) return -1;
  if (device != nccl.device) {
    sere_fail("%s: the NCCL communicator of rank %d was made on GPU %d but GPU %d is current now: call "
              "sere.cuda.set_device before the first collective on a CUDA tensor, not after", op, nccl.rank,
              nccl.device + 1, device + 1);
    return -1;
  }
  return 0;
}

extern "C" int sere_nccl_unique_id(unsigned char id[SERE_NCCL_ID_BYTES]) {
  static_assert(sizeof(ncclUniqueId) == SERE_NCCL_ID_BYTES, "NCCL's unique id size");
  ncclUniqueId uid;
  ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess) return nccl_failed("dist", "ncclGetUniqueId", r);
  memcpy(id, &uid, sizeof uid);
  return 0;
}

extern "C" int sere_nccl_init(const unsigned char id[SERE_NCCL_ID_BYTES], int world, int rank, const char *op) {
  nccl.rank = rank;
  nccl.world = world;
  if (sere_cuda_check(cudaGetDevice(&nccl.device), op)) return -1;
  ncclUniqueId uid;
  memcpy(&uid, id, sizeof uid);
  ncclComm_t comm = NULL;
  ncclResult_t r = ncclCommInitRank(&comm, world, uid, rank);
  if (r != ncclSuccess) return nccl_failed(op, "ncclCommInitRank", r);
  nccl.comm = comm;
  return 0;
}

extern "C" int sere_nccl_ready(void) { return nccl.comm != NULL; }

extern "C" int sere_nccl_all_reduce(void *buf, int64_t count, sere_dtype dtype, sere_nccl_op red, const char *op) {
  if (usable(op)) return -1;
  ncclRedOp_t how = red == SERE_NCCL_SUM ? ncclSum : red == SERE_NCCL_AVG ? ncclAvg : ncclMax;
  ncclResult_t r = ncclAllReduce(buf, buf, (size_t)count, nccl_type(dtype), how, nccl.comm, sere_cuda_stream());
  return r == ncclSuccess ? 0 : nccl_failed(op, "ncclAllReduce", r);
}

extern "C" int sere_nccl_all_gather(const void *src, void *dst, int64_t count, sere_dtype dtype, const char *op) {
  if (usable(op)) return -1;
  ncclResult_t r = ncclAllGather(src, dst, (size_t)count, nccl_type(dtype), nccl.comm, sere_cuda_stream());
  return r == ncclSuccess ? 0 : nccl_failed(op, "ncclAllGather", r);
}

extern "C" int sere_nccl_broadcast(void *buf, int64_t count, sere_dtype dtype, int root, const char *op) {
  if (usable(op)) return -1;
  ncclResult_t r = ncclBroadcast(buf, buf, (size_t)count, nccl_type(dtype), root, nccl.comm, sere_cuda_stream());
  return r == ncclSuccess ? 0 : nccl_failed(op, "ncclBroadcast", r);
}

extern "C" void sere_nccl_close(int failed) {
  if (!nccl.comm) return;
  ncclComm_t comm = nccl.comm;
  nccl.comm = NULL;
  // A clean exit lets the queued collectives finish; a failed one (or a
  // stream that no longer syncs) must not wait for peers.
  if (!failed && cudaStreamSynchronize(sere_cuda_stream()) == cudaSuccess) {
    ncclCommDestroy(comm);
  } else {
    cudaGetLastError();
    ncclCommAbort(comm);
  }
}
#endif
