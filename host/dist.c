/* dist.c — data-parallel processes over MPI (see dist.h): launcher
 * detection and start-up, exit through MPI_Finalize or MPI_Abort, and the
 * collectives on CPU tensors.
 *
 * Every collective first all-gathers a small signature of the call (op,
 * root, dtype, shape) and compares the ranks', so a call that differs
 * between ranks is an error naming both sides instead of a hang or a
 * silent mix of unrelated buffers. (The SyncBatchNorm hook skips this: its
 * sizes come from the model, identical on every rank.)
 *
 * Without MPI at build time (SERE_WITH_MPI undefined), or when no launcher
 * started the process, the world is one rank and a collective only
 * validates its arguments: the same errors everywhere, and the same
 * results (a reduction over one rank is the identity). */
#include "dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd.h"

#ifdef SERE_WITH_MPI
#include <mpi.h>
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

/* The signature of a call: extra (op or root), dtype, ndim, shape. */
enum { SIG_LEN = 3 + SERE_MAX_DIMS };

static void signature(const sere_tensor *t, int64_t extra, int64_t *sig) {
  memset(sig, 0, sizeof(int64_t) * SIG_LEN);
  sig[0] = extra;
  sig[1] = t->dtype;
  sig[2] = t->ndim;
  for (int d = 0; d < t->ndim; d++) sig[3 + d] = t->shape[d];
}

/* "f32 [4, 3] (\"sum\")", "u8 [2] (root 1)", "i64 [5]" */
static const char *describe_signature(const int64_t *sig, const char *extra, char *buf, size_t n) {
  char shape[160];
  int64_t dims[SERE_MAX_DIMS];
  int ndim = sig[2] >= 0 && sig[2] <= SERE_MAX_DIMS ? (int)sig[2] : 0;
  for (int d = 0; d < ndim; d++) dims[d] = sig[3 + d];
  sere_shape_str_raw(ndim, dims, shape, sizeof shape);
  const char *dtype = sig[1] >= 0 && sig[1] < SERE_NDTYPES ? sere_dtype_name((sere_dtype)sig[1]) : "?";
  if (!strcmp(extra, "op"))
    snprintf(buf, n, "%s %s (\"%s\")", dtype, shape, sig[0] >= 0 && sig[0] <= SERE_DIST_MAX ? OP_NAMES[sig[0]] : "?");
  else if (!strcmp(extra, "root"))
    snprintf(buf, n, "%s %s (root %lld)", dtype, shape, (long long)sig[0]);
  else
    snprintf(buf, n, "%s %s", dtype, shape);
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

/* f32 / i32 / i64 / u8 (bool as 0/1 bytes, whose max is the logical or) */
static int transport_all_reduce(sere_tensor *t, sere_dist_op op) {
  if (same_call_everywhere("dist.all_reduce", t, op, "op")) return -1;
  MPI_Datatype type = t->dtype == SERE_F32 ? MPI_FLOAT : t->dtype == SERE_I32 ? MPI_INT32_T
                    : t->dtype == SERE_I64 ? MPI_INT64_T : MPI_UINT8_T;
  return allreduce_raw("dist.all_reduce", sere_data(t), sere_numel(t), type, sere_dtype_size(t->dtype),
                       op == SERE_DIST_MAX ? MPI_MAX : MPI_SUM);
}

static int transport_all_gather(const sere_tensor *t, const void *src, void *dst, size_t bytes) {
  if (same_call_everywhere("dist.all_gather", t, 0, "")) return -1;
  if (bytes > INT_MAX) {
    sere_fail("dist.all_gather: %zu bytes per rank is more than one MPI call carries; gather it in pieces", bytes);
    return -1;
  }
  int rc = MPI_Allgather(src, (int)bytes, MPI_BYTE, dst, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? 0 : mpi_failed("dist.all_gather", "MPI_Allgather", rc);
}

static int transport_broadcast(sere_tensor *t, int root) {
  if (same_call_everywhere("dist.broadcast", t, root, "root")) return -1;
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
static int transport_barrier(void) { return 0; }
static int transport_all_reduce(sere_tensor *t, sere_dist_op op) { return 0; }
static int transport_all_gather(const sere_tensor *t, const void *src, void *dst, size_t bytes) { return 0; }
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
/* A host copy of a GPU tensor (NULL after sere_fail). Collectives on CUDA
 * tensors stage through host memory over MPI; NCCL will replace this. */
static sere_tensor *host_copy(const sere_tensor *t) {
  sere_tensor *h = sere_tensor_new_uninit(t->dtype, t->ndim, t->shape);
  if (h && sere_copy_raw(h, t)) {
    sere_tensor_release(h);
    return NULL;
  }
  return h;
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

/* ---- collectives -------------------------------------------------------- */
int sere_dist_barrier(void) { return dist.world > 1 ? transport_barrier() : 0; }

static int all_reduce_op(sere_tensor *t, int op) { return sere_dist_all_reduce(t, (sere_dist_op)op); }
static int broadcast_op(sere_tensor *t, int root) { return sere_dist_broadcast(t, root); }

int sere_dist_all_reduce(sere_tensor *t, sere_dist_op op) {
  if ((int)op < 0 || op > SERE_DIST_MAX) {
    sere_fail("dist.all_reduce: unknown op %d", (int)op);
    return -1;
  }
  if (check_contiguous(t, "dist.all_reduce") || check_reduce_dtype(t, op)) return -1;
  if (dist.world == 1) return 0; /* one rank: sum, avg and max are the identity */
  if (sere_device_of(t) != SERE_CPU) return through_host(t, all_reduce_op, (int)op);
  /* bf16 is reduced in an f32 copy and rounded once, not at every rank */
  sere_tensor *work = t->dtype == SERE_BF16 ? sere_as_contiguous_dtype(t, SERE_F32) : sere_tensor_retain(t);
  if (!work) return -1;
  int rc = transport_all_reduce(work, op);
  if (!rc && op == SERE_DIST_AVG) {
    float *x = sere_data(work);
    for (int64_t i = 0, n = sere_numel(work); i < n; i++) x[i] /= (float)dist.world;
  }
  if (!rc && work != t) rc = sere_copy_raw(t, work);
  sere_tensor_release(work);
  if (rc) return -1;
  sere_bump_version(t);
  return 0;
}

sere_tensor *sere_dist_all_gather(sere_tensor *t) {
  if (sere_device_of(t) != SERE_CPU) {
    sere_tensor *h = host_copy(t), *gathered = h ? sere_dist_all_gather(h) : NULL;
    sere_tensor *out = gathered ? sere_tensor_new_uninit_on(sere_device_of(t), gathered->dtype, gathered->ndim,
                                                            gathered->shape)
                                : NULL;
    if (out && sere_copy_raw(out, gathered)) {
      sere_tensor_release(out);
      out = NULL;
    }
    sere_tensor_release(h);
    sere_tensor_release(gathered);
    return out;
  }
  int64_t shape[SERE_MAX_DIMS];
  int ndim = t->ndim ? t->ndim : 1;
  shape[0] = (t->ndim ? t->shape[0] : 1) * dist.world;
  for (int d = 1; d < t->ndim; d++) shape[d] = t->shape[d];
  size_t bytes = (size_t)sere_numel(t) * sere_dtype_size(t->dtype);
  sere_tensor *src = sere_contiguous_raw(t), *out = src ? sere_tensor_new_uninit(t->dtype, ndim, shape) : NULL;
  int rc = out ? 0 : -1;
  if (!rc && dist.world == 1) memcpy(sere_data(out), sere_data(src), bytes);
  if (!rc && dist.world > 1) rc = transport_all_gather(t, sere_data(src), sere_data(out), bytes);
  sere_tensor_release(src);
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
  if (dist.world == 1) return 0;
  if (sere_device_of(t) != SERE_CPU) return through_host(t, broadcast_op, root);
  if (transport_broadcast(t, root)) return -1;
  sere_bump_version(t);
  return 0;
}

const sere_bn_sync *sere_dist_bn_sync(void) { return dist.world > 1 ? BN_SYNC_HOOK : NULL; }
