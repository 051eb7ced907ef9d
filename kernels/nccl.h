/* nccl.h — the NCCL communicator of this process and the collectives on
 * device memory that host/dist.c runs for CUDA tensors (kernels/nccl.cu).
 * Compiled in only when the build has NCCL (SERE_WITH_NCCL: nvcc with
 * libnccl and MPI, or the emulator build with MPI, whose fake NCCL in
 * kernels/emulator/ carries the data over MPI).
 *
 * One communicator per process, spanning every rank, on the GPU that was
 * current when it was made. Collectives are issued on sere_cuda_stream()
 * and return once enqueued, ordered after the kernels that produced their
 * input and before those that read their output. Functions returning int
 * give 0, or -1 after sere_fail with a message naming `op` (the sere.dist
 * function, e.g. "dist.all_reduce"), the NCCL call and the rank. */
#ifndef SERE_KERNELS_NCCL_H
#define SERE_KERNELS_NCCL_H

#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SERE_NCCL_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

typedef enum { SERE_NCCL_SUM = 0, SERE_NCCL_AVG, SERE_NCCL_MAX } sere_nccl_op;

/* A fresh unique id (rank 0 makes it; every rank passes it to init). */
int sere_nccl_unique_id(unsigned char id[SERE_NCCL_ID_BYTES]);
/* Makes the communicator of `world` ranks on the current GPU; collective:
 * every rank calls it with the same id. */
int sere_nccl_init(const unsigned char id[SERE_NCCL_ID_BYTES], int world, int rank, const char *op);
int sere_nccl_ready(void);
/* In place on `count` elements of dtype at buf. bool reduces as u8 (its
 * max is the logical or). */
int sere_nccl_all_reduce(void *buf, int64_t count, sere_dtype dtype, sere_nccl_op red, const char *op);
/* dst (world * count elements) = every rank's src (count), in rank order. */
int sere_nccl_all_gather(const void *src, void *dst, int64_t count, sere_dtype dtype, const char *op);
/* In place: buf takes root's count elements. */
int sere_nccl_broadcast(void *buf, int64_t count, sere_dtype dtype, int root, const char *op);
/* Ends the communicator at exit: after a clean run it waits for the work
 * queued on the stream and destroys it; otherwise (failed = 1) it aborts
 * it without waiting, so a rank that failed never blocks on peers stuck in
 * a collective it will not join. Idempotent. */
void sere_nccl_close(int failed);

#ifdef __cplusplus
}
#endif
#endif
