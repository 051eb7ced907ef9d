// nccl.cpp — the fake NCCL of the emulator build, over MPI (see nccl.h in
// this folder for what it does and where it differs from NCCL). Built only
// with MPI (SERE_WITH_NCCL); host/dist.c has initialised MPI before any
// call reaches here.
#ifdef SERE_WITH_NCCL
#include "nccl.h"

#include <limits.h>
// MPI's C API only (Open MPI and MPICH would pull in their C++ bindings)
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <vector>

#include "tensor.h"

struct ncclComm {
  MPI_Comm mpi;
  int rank, nranks;
};

// The first bytes of every id this fake makes: an id that lacks them was
// never made by ncclGetUniqueId (e.g. a rank that was not sent rank 0's).
static const char ID_MAGIC[] = "sere-fake-nccl";

static char last_error[512];
static int group_depth;

// Records why the call fails (ncclGetLastError) and returns `result`.
__attribute__((format(printf, 2, 3))) static ncclResult_t fail(ncclResult_t result, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return result;
}

static ncclResult_t mpi_failed(const char *call, int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error code %d", code);
  return fail(ncclSystemError, "fake NCCL: %s: %s", call, msg);
}

static size_t type_size(ncclDataType_t t) {
  switch (t) {
    case ncclUint8: return 1;
    case ncclBfloat16: return 2;
    case ncclInt32: case ncclFloat32: return 4;
    case ncclInt64: return 8;
    default: return 0;  // not a type sere uses
  }
}

// The checks every collective makes: a live communicator, a supported
// type, buffers inside device memory.
static ncclResult_t check(const char *call, ncclComm_t comm, ncclDataType_t t, const void *buf, size_t count) {
  if (!comm) return fail(ncclInvalidArgument, "fake NCCL: %s: the communicator is NULL", call);
  size_t size = type_size(t);
  if (!size) return fail(ncclInvalidArgument, "fake NCCL: %s: data type %d is not one sere uses", call, (int)t);
  if (count && !sere_emu_in_device_memory(buf, count * size))
    return fail(ncclInvalidArgument, "fake NCCL: %s: %p (+%zu bytes) is not inside device memory", call, buf,
                count * size);
  return ncclSuccess;
}

extern "C" ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  if (!id) return fail(ncclInvalidArgument, "fake NCCL: ncclGetUniqueId: NULL id");
  memset(id, 0, sizeof *id);
  memcpy(id->internal, ID_MAGIC, sizeof ID_MAGIC);
  uint64_t salt[2] = {(uint64_t)getpid(), (uint64_t)time(NULL)};
  memcpy(id->internal + sizeof ID_MAGIC, salt, sizeof salt);
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
  int initialised = 0, world = 0, me = -1;
  MPI_Initialized(&initialised);
  if (!initialised) return fail(ncclInvalidUsage, "fake NCCL: ncclCommInitRank: MPI is not initialised");
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  if (!comm || nranks != world || rank != me)
    return fail(ncclInvalidArgument, "fake NCCL: ncclCommInitRank: rank %d of %d, but MPI says rank %d of %d", rank,
                nranks, me, world);
  MPI_Comm mpi;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &mpi);
  if (rc != MPI_SUCCESS) return mpi_failed("MPI_Comm_dup", rc);
  MPI_Comm_set_errhandler(mpi, MPI_ERRORS_RETURN);
  std::vector<char> ids((size_t)world * sizeof id);
  rc = MPI_Allgather(&id, (int)sizeof id, MPI_BYTE, ids.data(), (int)sizeof id, MPI_BYTE, mpi);
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&mpi);
    return mpi_failed("MPI_Allgather", rc);
  }
  for (int r = 0; r < world; r++) {
    const char *theirs = ids.data() + (size_t)r * sizeof id;
    if (memcmp(theirs, ID_MAGIC, sizeof ID_MAGIC) || memcmp(theirs, ids.data(), sizeof id)) {
      MPI_Comm_free(&mpi);
      return fail(ncclInvalidUsage, "fake NCCL: ncclCommInitRank: rank %d passed a unique id that is not rank 0's "
                  "ncclGetUniqueId", r);
    }
  }
  *comm = new ncclComm{mpi, rank, nranks};
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return fail(ncclInvalidArgument, "fake NCCL: ncclCommDestroy: the communicator is NULL");
  MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

// No MPI call: the peers may be stuck in a collective this rank will not
// join, and MPI_Abort follows.
extern "C" ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

extern "C" const char *ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

extern "C" const char *ncclGetLastError(ncclComm_t comm) { return last_error; }

// MPI counts are ints: big buffers go in pieces.
static const size_t MPI_PIECE = (size_t)1 << 30;

static ncclResult_t allreduce_pieces(void *buf, size_t count, MPI_Datatype type, size_t size, MPI_Op op,
                                     MPI_Comm mpi) {
  for (size_t at = 0; at < count; at += MPI_PIECE) {
    int n = (int)(count - at < MPI_PIECE ? count - at : MPI_PIECE);
    int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + at * size, n, type, op, mpi);
    if (rc != MPI_SUCCESS) return mpi_failed("MPI_Allreduce", rc);
  }
  return ncclSuccess;
}

template <class T>
static void divide(T *x, size_t count, int by) {
  for (size_t i = 0; i < count; i++) x[i] /= (T)by;
}

extern "C" ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                                      ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  ncclResult_t r = check("ncclAllReduce", comm, type, recv, count);
  if (r == ncclSuccess) r = check("ncclAllReduce", comm, type, send, count);
  if (r != ncclSuccess) return r;
  if (op != ncclSum && op != ncclAvg && op != ncclMax)
    return fail(ncclInvalidArgument, "fake NCCL: ncclAllReduce: reduction %d is not one sere uses", (int)op);
  if (send != recv) memcpy(recv, send, count * type_size(type));
  MPI_Op mop = op == ncclMax ? MPI_MAX : MPI_SUM;
  if (type == ncclBfloat16) {  // in f32, rounded once
    std::vector<float> f(count);
    uint16_t *h = (uint16_t *)recv;
    for (size_t i = 0; i < count; i++) f[i] = sere_bf16_to_f32(h[i]);
    r = allreduce_pieces(f.data(), count, MPI_FLOAT, sizeof(float), mop, comm->mpi);
    if (r == ncclSuccess && op == ncclAvg) divide(f.data(), count, comm->nranks);
    for (size_t i = 0; r == ncclSuccess && i < count; i++) h[i] = sere_f32_to_bf16(f[i]);
    return r;
  }
  MPI_Datatype mt = type == ncclFloat32 ? MPI_FLOAT : type == ncclInt32 ? MPI_INT32_T
                  : type == ncclInt64 ? MPI_INT64_T : MPI_UINT8_T;
  r = allreduce_pieces(recv, count, mt, type_size(type), mop, comm->mpi);
  if (r != ncclSuccess || op != ncclAvg) return r;
  switch (type) {
    case ncclFloat32: divide((float *)recv, count, comm->nranks); break;
    case ncclInt32: divide((int32_t *)recv, count, comm->nranks); break;
    case ncclInt64: divide((int64_t *)recv, count, comm->nranks); break;
    default: divide((uint8_t *)recv, count, comm->nranks); break;
  }
  return ncclSuccess;
}

extern "C" ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type,
                                      ncclComm_t comm, cudaStream_t stream) {
  ncclResult_t r = check("ncclAllGather", comm, type, send, sendcount);
  if (r == ncclSuccess) r = check("ncclAllGather", comm, type, recv, sendcount * (size_t)comm->nranks);
  if (r != ncclSuccess) return r;
  size_t bytes = sendcount * type_size(type);
  if (bytes > INT_MAX) return fail(ncclInvalidArgument, "fake NCCL: ncclAllGather: %zu bytes per rank", bytes);
  const void *src = send == (char *)recv + (size_t)comm->rank * bytes ? MPI_IN_PLACE : send;
  int rc = MPI_Allgather(src, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, comm->mpi);
  return rc == MPI_SUCCESS ? ncclSuccess : mpi_failed("MPI_Allgather", rc);
}

extern "C" ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root,
                                      ncclComm_t comm, cudaStream_t stream) {
  ncclResult_t r = check("ncclBroadcast", comm, type, recv, count);
  if (r != ncclSuccess) return r;
  if (root < 0 || root >= comm->nranks)
    return fail(ncclInvalidArgument, "fake NCCL: ncclBroadcast: root %d of %d ranks", root, comm->nranks);
  size_t bytes = count * type_size(type);
  if (comm->rank == root) {
    r = check("ncclBroadcast", comm, type, send, count);
    if (r != ncclSuccess) return r;
    if (send != recv) memcpy(recv, send, bytes);
  }
  for (size_t at = 0; at < bytes; at += MPI_PIECE) {
    int n = (int)(bytes - at < MPI_PIECE ? bytes - at : MPI_PIECE);
    int rc = MPI_Bcast((char *)recv + at, n, MPI_BYTE, root, comm->mpi);
    if (rc != MPI_SUCCESS) return mpi_failed("MPI_Bcast", rc);
  }
  return ncclSuccess;
}

extern "C" ncclResult_t ncclGroupStart(void) {
  group_depth++;
  return ncclSuccess;
}

extern "C" ncclResult_t ncclGroupEnd(void) {
  if (group_depth == 0) return fail(ncclInvalidUsage, "fake NCCL: ncclGroupEnd without ncclGroupStart");
  group_depth--;
  return ncclSuccess;
}
#endif
