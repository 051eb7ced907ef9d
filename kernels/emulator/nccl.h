// nccl.h — a fake NCCL for the emulator build (SERE_CUDA=EMULATE with MPI):
// NCCL's names, types, enum values and signatures for the part sere uses
// (kernels/nccl.cu), implemented in nccl.cpp over MPI between the
// processes of an `mpirun`. Device memory is host memory in the emulator,
// so a collective on "device" pointers is an MPI collective on them; the
// code path of host/dist.c for CUDA tensors (communicator from a unique id
// broadcast over MPI, collectives on device pointers, abort at a failure)
// then runs in CI on machines without a GPU.
//
// Where it is stricter or different than NCCL:
// - Every buffer must lie inside one cudaMalloc'ed block (a host pointer
//   is ncclInvalidArgument, where NCCL would fault), and the communicator
//   must span MPI_COMM_WORLD with ranks equal to the MPI ranks.
// - ncclCommInitRank compares the unique id across ranks: ranks that were
//   not all given rank 0's id fail with ncclInvalidUsage instead of
//   hanging.
// - Only the types and ops sere uses: u8, i32, i64, f32, bf16 (reduced in
//   f32 and rounded once); sum, avg (the sum divided by the rank count,
//   integer division for integers), max.
// - Calls block until done (MPI is synchronous); streams order nothing and
//   a group (ncclGroupStart/End) only checks its nesting.
// ncclGetLastError tells why the last call failed.
#ifndef SERE_EMU_NCCL_H
#define SERE_EMU_NCCL_H

#include <stddef.h>

#include "cuda_runtime.h"

#define NCCL_MAJOR 2
#define NCCL_MINOR 28
#define NCCL_UNIQUE_ID_BYTES 128

typedef struct ncclComm *ncclComm_t;
typedef struct {
  char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclFloat32 = 7,
  ncclFloat64 = 8,
  ncclBfloat16 = 9
} ncclDataType_t;

extern "C" {
ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
const char *ncclGetErrorString(ncclResult_t result);
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);
}

#endif
