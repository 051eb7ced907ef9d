/* dist.h — data-parallel processes (method.md section 9): start-up under
 * an MPI launcher, rank / world size / local rank, the collectives
 * (all-reduce, all-gather, broadcast, barrier) plus the SyncBatchNorm hook
 * of ops/batchnorm.c. MPI carries CPU tensors; NCCL carries CUDA tensors
 * (kernels/nccl.cu, on sere's stream) when the build has it, otherwise
 * they are staged through host memory over MPI.
 *
 * A process started alone is rank 0 of 1 and never initialises MPI (a
 * user without an MPI runtime needs none); every collective is then the
 * identity. Under a launcher the collectives run even with one process
 * (mpirun -np 1 exercises MPI and NCCL). Only the thread that called sere_dist_init (the Lua thread)
 * may call these functions. Functions that can fail return -1 / NULL after
 * sere_fail(), as everywhere in the C core. Ranks are 0-based, as in
 * torch.distributed and MPI. */
#ifndef SERE_DIST_H
#define SERE_DIST_H

#include "ops/ops.h"
#include "tensor.h"

typedef enum { SERE_DIST_SUM = 0, SERE_DIST_AVG, SERE_DIST_MAX } sere_dist_op;

/* Looks for an MPI launcher in the environment (mpirun / mpiexec of Open MPI
 * or MPICH, Slurm's srun); when one started this process, initialises MPI
 * and learns the rank, world size and local rank. From then on the process
 * exits through MPI: a zero exit status finalises MPI, any other aborts the
 * whole job (MPI_Abort), so a rank that fails stops every rank instead of
 * leaving them waiting in a collective. Call once, before any other
 * function here. Returns 0, or -1 (e.g. a launcher with several processes
 * but a sere built without MPI). */
int sere_dist_init(void);

int sere_dist_rank(void);
int sere_dist_world_size(void);
/* The rank among the processes of this machine (picks the GPU). */
int sere_dist_local_rank(void);
/* 1 when MPI is in use (started by a launcher, even with one process). */
int sere_dist_is_distributed(void);
/* "rank 1 of 4" for messages; "" when not distributed. */
const char *sere_dist_describe(void);

int sere_dist_barrier(void);
/* In place over all ranks: sum, average (float dtypes) or maximum. t must
 * be a contiguous tensor of the same dtype, device and shape on every rank.
 * f32, i32, i64, u8 reduce natively; bf16 is reduced in f32 and rounded
 * once; bool supports only MAX (logical or). */
int sere_dist_all_reduce(sere_tensor *t, sere_dist_op op);
/* New tensor: every rank's t (same dtype and shape everywhere) concatenated
 * in rank order along dim 0; a 0-dim t gives shape [world_size]. */
sere_tensor *sere_dist_all_gather(sere_tensor *t);
/* In place: t takes root's values on every rank (contiguous tensor). */
int sere_dist_broadcast(sere_tensor *t, int root);

/* The SyncBatchNorm hook (sums the per-channel statistics over all ranks,
 * as host doubles over MPI), or NULL when not distributed. */
const sere_bn_sync *sere_dist_bn_sync(void);
/* How collectives on CUDA tensors travel in this build: "nccl", "host"
 * (staged through host memory over MPI: no NCCL) or "none" (no MPI). */
const char *sere_dist_cuda_transport(void);

#endif
