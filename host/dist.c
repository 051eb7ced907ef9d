/* dist.c — data-parallel processes (see dist.h): launcher detection and
 * start-up, exit through MPI_Finalize or MPI_Abort, and the collectives:
 * MPI for CPU tensors, NCCL for CUDA tensors (kernels/nccl.cu).
 *
 * Every collective first all-gathers a small signature of the call (op,
 * root, dtype, device, shape) over MPI and compares the ranks', so a call
 * that differs between ranks is an error naming both sides instead of a
 * hang or a silent mix of unrelated buffers. (The SyncBatchNorm hook skips
 * this: its sizes come from the model, identical on every rank.)
 *
 * The NCCL communicator is made on the first collective on a CUDA tensor,
 * not at start-up: by then the program has picked its GPU
 * (sere.cuda.set_device, which train.lua calls after sere_dist_init), and
 * a run that never puts a tensor on a GPU never starts NCCL. Rank 0 makes
 * the unique id, MPI_Bcast carries it, every rank joins with
 * ncclCommInitRank. At exit the communicator is destroyed (status 0) or
 * aborted (any other status) before MPI is finalised or aborted, so a rank
 * that fails does not wait for peers stuck in an NCCL collective, and
 * MPI_Abort then stops them. A build with CUDA but without NCCL (no
 * libnccl, or the emulator without MPI) stages CUDA tensors through host
 * memory over MPI instead, and says so once.
 *
 * Without MPI at build time (SERE_WITH_MPI undefined), or when no launcher
 * started the process, the world is one rank and a collective only
 * validates its arguments: the same errors everywhere, and the same
 * results (a reduction over one rank is the identity). Under a launcher
 * the collectives run even with one rank (`mpirun -np 1`), so that the
 * whole MPI / NCCL path can be checked against a run without one. */
#include "dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"

#ifdef SERE_WITH_MPI
#include <mpi.h>
#endif
#ifdef SERE_WITH_NCCL
#include "../kernels/nccl.h"
#endif

static struct {
  int initialised; /* MPI_Init done (started by a launcher) */
  int rank, world, local_rank;
} dist = {0, 0, 1, 0};

int sere_dist_rank(void) { return dist.rank; }
int sere_dist_world_size(void) { return dist.world; }
int sere_dist_local_rank(void) { return dist.local_rank; }
int sere_dist_is_distributed(void) { return dist.initialised; }

static const char *const OP_NAMES[] = {"sum", "avg", "max"};

/* ---- launcher detection ------------------------------------------------- */
/* The number of processes an MPI launcher announced in the environment:
 * > 0, 0 for a launcher that does not say (PMIx alone), -1 for none; *var
 * names the variable that told. Slurm's srun counts only with more than
 * one task. */
static int launcher_size(const char **var) {
  static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    const char *v = getenv(sizes[i]);
    if (v && atoi(v) > 0) {
      *var = sizes[i];
      return atoi(v);
    }
  }
  const char *slurm = getenv("SLURM_STEP_NUM_TASKS");
  if (slurm && atoi(slurm) > 1) {
    *var = "SLURM_STEP_NUM_TASKS";
    return atoi(slurm);
  }
  if (getenv("PMIX_RANK")) {
    *var = "PMIX_RANK";
    return 0;
  }
  return -1;
}

/* ---- the MPI transport ---------------------------------------------------- */
#ifdef SERE_WITH_MPI
/* An MPI error as a sere error naming the op, the MPI call and the rank. */
static int mpi_failed(const char *op, const char *call, int code) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error code %d", code);
  sere_fail("%s: %s failed on rank %d of %d: %s", op, call, dist.rank, dist.world, msg);
  return -1;
}

/* A zero exit status finalises MPI; any other ends the whole job, so the
 * other ranks do not wait forever for this one. */
static void exit_through_mpi(int status, void *unused) {
  (void)unused;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (status == 0) {
    MPI_Finalize();
    return;
  }
  fflush(stdout);
  fprintf(stderr, "sere (rank %d of %d): exit status %d: stopping every rank (MPI_Abort)\n", dist.rank, dist.world,
          status);
  fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, status);
}

static int start_mpi(const char *var, int announced) {
  int provided = 0;
  /* FUNNELED: the loader's worker threads never call MPI, only this one. */
  int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) return mpi_failed("dist", "MPI_Init_thread", rc);
  dist.initialised = 1;
  on_exit(exit_through_mpi, NULL);
  /* errors come back as codes, reported with the op and the rank */
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &dist.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &dist.world);
  MPI_Comm node;
  rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, dist.rank, MPI_INFO_NULL, &node);
  if (rc != MPI_SUCCESS) return mpi_failed("dist", "MPI_Comm_split_type", rc);
  MPI_Comm_rank(node, &dist.local_rank);
  MPI_Comm_free(&node);
  if (announced > 0 && announced != dist.world) {
    sere_fail("dist: the launcher started %d processes (%s) but MPI sees a world of %d, so each would train "
              "alone: under Slurm run srun with --mpi=pmix (or pmi2); otherwise use the mpirun of the MPI sere "
              "was built with", announced, var, dist.world);
    return -1;
  }
  return 0;
}

/* The signature of a call: extra (op or root), dtype, device, ndim, shape. */
enum { SIG_LEN = 4 + SERE_MAX_DIMS };

static void signature(const sere_tensor *t, int64_t extra, int64_t *sig) {
  memset(sig, 0, sizeof(int64_t) * SIG_LEN);
  sig[0] = extra;
  sig[1] = t->dtype;
  sig[2] = sere_device_of(t);
  sig[3] = t->ndim;
  for (int d = 0; d < t->ndim; d++) sig[4 + d] = t->shape[d];
}

/* "f32 [4, 3] (\"sum\")", "u8 [2] on cuda (root 1)", "i64 [5]" */
static const char *describe_signature(const int64_t *sig, const char *extra, char *buf, size_t n) {
  char shape[160], what[200];
  int64_t dims[SERE_MAX_DIMS];
  int ndim = sig[3] >= 0 && sig[3] <= SERE_MAX_DIMS ? (int)sig[3] : 0;
  for (int d = 0; d < ndim; d++) dims[d] = sig[4 + d];
  sere_shape_str_raw(ndim, dims, shape, sizeof shape);
  const char *dtype = sig[1] >= 0 && sig[1] < SERE_NDTYPES ? sere_dtype_name((sere_dtype)sig[1]) : "?";
  snprintf(what, sizeof what, "%s %s%s", dtype, shape, sig[2] == SERE_CUDA ? " on cuda" : "");
  if (!strcmp(extra, "op"))
    snprintf(buf, n, "%s (\"%s\")", what, sig[0] >= 0 && sig[0] <= SERE_DIST_MAX ? OP_NAMES[sig[0]] : "?");
  else if (!strcmp(extra, "root"))
    snprintf(buf, n, "%s (root %lld)", what, (long long)sig[0]);
  else
    snprintf(buf, n, "%s", what);
  return buf;
}

/* All-gathers the call's signature; the error names the first rank whose
 * call differs from rank 0's. Every rank sees the same mismatch, so all
 * fail together. extra_name: "op", "root" or "" (what sig[0] means). */
static int same_call_everywhere(const char *op, const sere_tensor *t, int64_t extra, const char *extra_name) {
  int64_t mine[SIG_LEN];
  signature(t, extra, mine);
  int64_t *all = malloc(sizeof(int64_t) * SIG_LEN * (size_t)dist.world);
  if (!all) {
    sere_fail("%s: out of memory", op);
    return -1;
  }
  int rc = MPI_Allgather(mine, SIG_LEN, MPI_INT64_T, all, SIG_LEN, MPI_INT64_T, MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) {
    free(all);
    return mpi_failed(op, "MPI_Allgather", rc);
  }
  for (int r = 1; r < dist.world; r++) {
    const int64_t *theirs = all + (size_t)r * SIG_LEN;
    if (memcmp(all, theirs, sizeof mine)) {
      char a[256], b[256];
      sere_fail("%s: the ranks disagree: rank 0 passed %s, rank %d passed %s", op,
                describe_signature(all, extra_name, a, sizeof a), r, describe_signature(theirs, extra_name, b, sizeof b));
      free(all);
      return -1;
    }
  }
  free(all);
  return 0;
}

/* MPI counts are ints: large buffers go in pieces of this many elements. */
#define MPI_CHUNK ((int64_t)1 << 30)

static int allreduce_raw(const char *op, void *buf, int64_t n, MPI_Datatype type, size_t elsize, MPI_Op mop) {
  for (int64_t at = 0; at < n; at += MPI_CHUNK) {
    int count = (int)(n - at < MPI_CHUNK ? n - at : MPI_CHUNK);
    int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + (size_t)at * elsize, count, type, mop, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_failed(op, "MPI_Allreduce", rc);
  }
  return 0;
}

static int transport_barrier(void) {
  int rc = MPI_Barrier(MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? 0 : mpi_failed("dist.barrier", "MPI_Barrier", rc);
}

#ifdef SERE_WITH_NCCL
static void close_nccl(int status, void *unused) {
  (void)unused;
  if (status != 0) fprintf(stderr, "sere (rank %d of %d): aborting the NCCL communicator\n", dist.rank, dist.world);
  sere_nccl_close(status != 0);
}

/* The communicator, made by the first collective on a CUDA tensor (every
 * rank is in that call: the signature check has passed). Rank 0's unique
 * id travels with a flag saying whether it could make one, so the other
 * ranks fail with it instead of joining a communicator that never forms. */
static int nccl_communicator(const char *op) {
  if (sere_nccl_ready()) return 0;
  unsigned char msg[SERE_NCCL_ID_BYTES + 1] = {0};
  if (dist.rank == 0) msg[SERE_NCCL_ID_BYTES] = sere_nccl_unique_id(msg) == 0;
  int rc = MPI_Bcast(msg, (int)sizeof msg, MPI_BYTE, 0, MPI_COMM_WORLD);
  if (rc != MPI_SUCCESS) return mpi_failed(op, "MPI_Bcast", rc);
  if (!msg[SERE_NCCL_ID_BYTES]) {
    if (dist.rank != 0) sere_fail("%s: rank 0 could not make an NCCL unique id (see its message)", op);
    return -1;
  }
  if (sere_nccl_init(msg, dist.world, dist.rank, op)) return -1;
  /* registered after CUDA started and after exit_through_mpi, so it runs
   * before both: NCCL goes before the CUDA runtime and MPI it relies on */
  on_exit(close_nccl, NULL);
  return 0;
}
#endif

/* In place over the ranks. CPU: f32 / i32 / i64 / u8 (bool as 0/1 bytes,
 * whose max is the logical or), avg as the sum divided here. CUDA (NCCL):
 * the same dtypes, avg by NCCL. */
static int transport_all_reduce(sere_tensor *t, sere_dist_op op) {
#ifdef SERE_WITH_NCCL
  if (sere_device_of(t) == SERE_CUDA) {
    static const sere_nccl_op how[] = {SERE_NCCL_SUM, SERE_NCCL_AVG, SERE_NCCL_MAX};
    return nccl_communicator("dist.all_reduce") ||
           sere_nccl_all_reduce(sere_data(t), sere_numel(t), t->dtype, how[op], "dist.all_reduce") ? -1 : 0;
  }
#endif
  MPI_Datatype type = t->dtype == SERE_F32 ? MPI_FLOAT : t->dtype == SERE_I32 ? MPI_INT32_T
                    : t->dtype == SERE_I64 ? MPI_INT64_T : MPI_UINT8_T;
  if (allreduce_raw("dist.all_reduce", sere_data(t), sere_numel(t), type, sere_dtype_size(t->dtype),
                    op == SERE_DIST_MAX ? MPI_MAX : MPI_SUM))
    return -1;
  if (op == SERE_DIST_AVG) {
    float *x = sere_data(t);
    for (int64_t i = 0, n = sere_numel(t); i < n; i++) x[i] /= (float)dist.world;
  }
  return 0;
}

/* dst (on t's device) = every rank's contiguous src, in rank order */
static int transport_all_gather(const sere_tensor *t, const void *src, void *dst) {
#ifdef SERE_WITH_NCCL
  if (sere_device_of(t) == SERE_CUDA)
    return nccl_communicator("dist.all_gather") ||
           sere_nccl_all_gather(src, dst, sere_numel(t), t->dtype, "dist.all_gather") ? -1 : 0;
#endif
  size_t bytes = (size_t)sere_numel(t) * sere_dtype_size(t->dtype);
  if (bytes > INT_MAX) {
    sere_fail("dist.all_gather: %zu bytes per rank is more than one MPI call carries; gather it in pieces", bytes);
    return -1;
  }
  int rc = MPI_Allgather(src, (int)bytes, MPI_BYTE, dst, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? 0 : mpi_failed("dist.all_gather", "MPI_Allgather", rc);
}

static int transport_broadcast(sere_tensor *t, int root) {
#ifdef SERE_WITH_NCCL
  if (sere_device_of(t) == SERE_CUDA)
    return nccl_communicator("dist.broadcast") ||
           sere_nccl_broadcast(sere_data(t), sere_numel(t), t->dtype, root, "dist.broadcast") ? -1 : 0;
#endif
  size_t bytes = (size_t)sere_numel(t) * sere_dtype_size(t->dtype);
  for (size_t at = 0; at < bytes; at += (size_t)MPI_CHUNK) {
    int count = (int)(bytes - at < (size_t)MPI_CHUNK ? bytes - at : (size_t)MPI_CHUNK);
    int rc = MPI_Bcast((char *)sere_data(t) + at, count, MPI_BYTE, root, MPI_COMM_WORLD);
    if (rc != MPI_SUCCESS) return mpi_failed("dist.broadcast", "MPI_Bcast", rc);
  }
  return 0;
}

static int bn_allreduce_sum(double *buf, int64_t n, void *ctx) {
  (void)ctx;
  return allreduce_raw("batch_norm (sync)", buf, n, MPI_DOUBLE, sizeof *buf, MPI_SUM);
}
static const sere_bn_sync bn_sync_hook = {bn_allreduce_sum, NULL};
#define BN_SYNC_HOOK (&bn_sync_hook)

#else /* no MPI: a world of one, where nothing is ever exchanged */
static int same_call_everywhere(const char *op, const sere_tensor *t, int64_t extra, const char *extra_name) {
  return 0;
}
static int transport_barrier(void) { return 0; }
static int transport_all_reduce(sere_tensor *t, sere_dist_op op) { return 0; }
static int transport_all_gather(const sere_tensor *t, const void *src, void *dst) { return 0; }
static int transport_broadcast(sere_tensor *t, int root) { return 0; }
#define BN_SYNC_HOOK NULL
#endif

int sere_dist_init(void) {
  const char *var = NULL;
  int announced = launcher_size(&var);
  if (announced < 0) return 0;
#ifdef SERE_WITH_MPI
  return start_mpi(var, announced);
#else
  if (announced == 1) return 0;
  sere_fail("dist: started by an MPI launcher (%s=%s) but this sere was built without MPI: install libopenmpi-dev "
            "(tools/install-deps.sh) and rebuild, or run it without the launcher", var, getenv(var));
  return -1;
#endif
}

/* ---- argument checks ---------------------------------------------------- */
static int check_contiguous(const sere_tensor *t, const char *op) {
  char s[160];
  if (!sere_is_contiguous(t)) {
    sere_fail("%s: works in place on a contiguous tensor; got a non-contiguous %s tensor of shape %s "
              "(pass t:contiguous() and copy the result back into t)", op, sere_dtype_name(t->dtype),
              sere_shape_str(t, s, sizeof s));
    return -1;
  }
  return 0;
}

static int check_reduce_dtype(const sere_tensor *t, sere_dist_op op) {
  char s[160];
  if (op == SERE_DIST_AVG && !sere_dtype_is_float(t->dtype)) {
    sere_fail("dist.all_reduce: \"avg\" needs a float tensor (f32 or bf16), got %s of shape %s (use \"sum\")",
              sere_dtype_name(t->dtype), sere_shape_str(t, s, sizeof s));
    return -1;
  }
  if (t->dtype == SERE_BOOL && op != SERE_DIST_MAX) {
    sere_fail("dist.all_reduce: a bool tensor supports only \"max\" (logical or), got \"%s\" (shape %s)",
              OP_NAMES[op], sere_shape_str(t, s, sizeof s));
    return -1;
  }
  return 0;
}

#ifndef SERE_WITH_NCCL
/* ---- CUDA tensors without NCCL: staged through host memory -------------- */
/* A host copy of a GPU tensor (NULL after sere_fail), and the one-time
 * notice that this is the slow path. */
static sere_tensor *host_copy(sere_tensor *t) {
  static int told;
  if (!told && dist.rank == 0)
    fprintf(stderr, "sere: this build has no NCCL: collectives on CUDA tensors go through host memory over MPI "
                    "(slower; build with the CUDA toolkit's libnccl and MPI for NCCL)\n");
  told = 1;
  return sere_contiguous_on(t, SERE_CPU);
}

/* Runs an in-place collective on the host copy of a GPU tensor and copies
 * the result back. */
static int through_host(sere_tensor *t, int (*collective)(sere_tensor *, int), int arg) {
  sere_tensor *h = host_copy(t);
  int rc = !h || collective(h, arg) || sere_copy_raw(t, h) ? -1 : 0;
  sere_tensor_release(h);
  if (rc == 0) sere_bump_version(t);
  return rc;
}

static int all_reduce_op(sere_tensor *t, int op) { return sere_dist_all_reduce(t, (sere_dist_op)op); }
static int broadcast_op(sere_tensor *t, int root) { return sere_dist_broadcast(t, root); }

static sere_tensor *all_gather_through_host(sere_tensor *t) {
  sere_tensor *h = host_copy(t), *gathered = h ? sere_dist_all_gather(h) : NULL;
  sere_tensor *out = gathered ? sere_contiguous_on(gathered, SERE_CUDA) : NULL;
  sere_tensor_release(h);
  sere_tensor_release(gathered);
  return out;
}
#endif

/* ---- collectives -------------------------------------------------------- */
int sere_dist_barrier(void) { return dist.initialised ? transport_barrier() : 0; }

int sere_dist_all_reduce(sere_tensor *t, sere_dist_op op) {
  if ((int)op < 0 || op > SERE_DIST_MAX) {
    sere_fail("dist.all_reduce: unknown op %d", (int)op);
    return -1;
  }
  if (check_contiguous(t, "dist.all_reduce") || check_reduce_dtype(t, op)) return -1;
  if (!dist.initialised) return 0; /* one process: sum, avg and max are the identity */
#ifndef SERE_WITH_NCCL
  if (sere_device_of(t) != SERE_CPU) return through_host(t, all_reduce_op, (int)op);
#endif
  if (same_call_everywhere("dist.all_reduce", t, op, "op")) return -1;
  /* bf16 is reduced in an f32 copy and rounded once, not at every rank */
  sere_tensor *work = t->dtype == SERE_BF16 ? sere_as_contiguous_dtype(t, SERE_F32) : sere_tensor_retain(t);
  if (!work) return -1;
  int rc = transport_all_reduce(work, op);
  if (!rc && work != t) rc = sere_copy_raw(t, work);
  sere_tensor_release(work);
  if (rc) return -1;
  sere_bump_version(t);
  return 0;
}

sere_tensor *sere_dist_all_gather(sere_tensor *t) {
#ifndef SERE_WITH_NCCL
  if (dist.initialised && sere_device_of(t) != SERE_CPU) return all_gather_through_host(t);
#endif
  if (dist.initialised && same_call_everywhere("dist.all_gather", t, 0, "")) return NULL;
  int64_t shape[SERE_MAX_DIMS];
  int ndim = t->ndim ? t->ndim : 1;
  shape[0] = (t->ndim ? t->shape[0] : 1) * dist.world;
  for (int d = 1; d < t->ndim; d++) shape[d] = t->shape[d];
  sere_tensor *out = sere_tensor_new_uninit_on(sere_device_of(t), t->dtype, ndim, shape);
  if (!out) return NULL;
  int rc;
  if (dist.initialised) {
    sere_tensor *src = sere_contiguous_raw(t);
    rc = src ? transport_all_gather(t, sere_data(src), sere_data(out)) : -1;
    sere_tensor_release(src);
  } else { /* one process: out is t, with a 0-dim t as [1] */
    sere_tensor *mine = sere_view(out, t->ndim, t->shape);
    rc = mine ? sere_copy_raw(mine, t) : -1;
    sere_tensor_release(mine);
  }
  if (rc) {
    sere_tensor_release(out);
    return NULL;
  }
  return out;
}

int sere_dist_broadcast(sere_tensor *t, int root) {
  if (root < 0 || root >= dist.world) {
    sere_fail("dist.broadcast: root %d is not a rank of this world of %d (ranks are 0 .. %d)", root, dist.world,
              dist.world - 1);
    return -1;
  }
  if (check_contiguous(t, "dist.broadcast")) return -1;
  if (!dist.initialised) return 0;
#ifndef SERE_WITH_NCCL
  if (sere_device_of(t) != SERE_CPU) return through_host(t, broadcast_op, root);
#endif
  if (same_call_everywhere("dist.broadcast", t, root, "root") || transport_broadcast(t, root)) return -1;
  sere_bump_version(t);
  return 0;
}

const sere_bn_sync *sere_dist_bn_sync(void) { return dist.initialised ? BN_SYNC_HOOK : NULL; }

const char *sere_dist_cuda_transport(void) {
#if defined(SERE_WITH_NCCL)
  return "nccl";
#elif defined(SERE_WITH_MPI)
  return "host";
#else
  return "none";
#endif
}
