/* loader.h — SERE's multi-crop samples and the threaded batch loader
 * (method.md 5.1, 5.6-5.8): a sample decodes one file of a dataset, runs
 * every crop of a pipeline, draws the global crops' masks and computes the
 * overlap grids; the loader has worker threads fill a bounded queue of
 * whole batches in the layout lua/sere/objective.lua consumes.
 *
 * Randomness. Crop c of a sample (globals first, then locals) uses the
 * Philox stream sere_rng_for_crop(seed, epoch, sample index, c); the mask
 * of global crop g uses the stream of crop index G + L + g. The epoch's
 * permutation is a Fisher-Yates shuffle (i = n-1 down to 1, swap i with
 * sere_rng_int(0, i)) on the stream of (seed, epoch, sample 2^40 - 1,
 * crop 0), a sample index no dataset reaches. Nothing depends on the
 * thread or on the rank that draws it, so batches are byte-identical for
 * any thread count, and an epoch started mid-way (sere_loader_start's
 * first_batch) hands out exactly the batches the whole epoch would from
 * there on.
 *
 * DCT-domain scaling. A sample draws every crop's parameters from the
 * full-resolution size in the JPEG header before decoding; when every crop
 * box is at least d times its output size in both directions (d = 2, 4 or
 * 8, the largest that fits), the JPEG is decoded at 1/d of its size
 * (TurboJPEG's DCT scaling) and the boxes are read from the small image
 * (sere_resize_bicubic with denom d). The random draws, the boxes and the
 * mappings are those of a full-size decode; the pixels differ slightly
 * (TurboJPEG's reduced IDCT is not Pillow's decode plus bicubic
 * antialiasing). sere_pipeline.dct_scaling = 0 turns it off: every image
 * is then decoded at full size and the crops are Pillow's byte for byte.
 *
 * Bad files. A sample whose file fails to decode is replaced by sample
 * (index + k) mod n for the smallest k >= 1 that decodes (its label goes
 * with it; the crops still use the original index's streams). Each bad
 * file is reported once on stderr with a running count of bad files, and
 * remembered so it is not decoded again.
 *
 * Batch layout (B samples, G global crops of side Sg, L locals of side Sl,
 * hp = Sg / patch, gg grid sides S0, S1, local/global side Q):
 *   global   f32  [G*B, 3, Sg, Sg]      row g*B + b (crop-major)
 *   local    f32  [L*B, 3, Sl, Sl]      row l*B + b
 *   masks    bool [G*B, hp, hp]         row g*B + b
 *   gg_rows  f32  [G*B, S0, S0, 2]      global crop g's own frame of the
 *   gg_cols  f32  [G*B, S1, S1, 2]        pair (crop 1, crop g); crop 1 is
 *                                         paired with the last global crop
 *   lg_local f32  [G*L, B, Q, Q, 2]     pair (local l, global g) at index
 *   lg_global f32 [G*L, B, Q, Q, 2]       g*L + l, in each crop's frame
 *   mappings f32  [G+L, B, 5]           (x, y, w, h, flip) in source pixels
 *   labels   i64  [B]                   dataset label + 1 (0: unlabelled)
 * With a single global crop the gg grids are -2 everywhere. */
#ifndef SERE_LOADER_H
#define SERE_LOADER_H

#include <stdint.h>

#include "dataset.h"
#include "ops/augment.h"
#include "tensor.h"

#define SERE_MAX_GLOBAL 8
#define SERE_MAX_LOCAL 64

typedef struct sere_pipeline {
  int n_global, n_local;
  sere_crop_recipe global[SERE_MAX_GLOBAL]; /* all of one size */
  sere_crop_recipe local[SERE_MAX_LOCAL];   /* all of one size */
  int overlap[2];        /* gg grid sides S0, S1 (>= 2) */
  int lg_size;           /* local/global grid side (6) */
  int patch;             /* mask cell side in pixels; divides the global size */
  int mask_n;            /* (mean, var) ratio pairs, 1..16 */
  double mask_mean[16], mask_var[16];
  int mask_rand;         /* 0: block masks, 1: "rand" masks */
  int mask_start_epoch;  /* epochs below it get empty masks */
  float mean[3], std[3]; /* normalisation */
  int dct_scaling;       /* 1: decode JPEGs at 1/d when every crop allows (above) */
} sere_pipeline;

/* 0, or -1 with an error naming the first inconsistent field. */
int sere_pipeline_check(const sere_pipeline *p);

/* One batch's tensors (owned references; NULL when not allocated). */
typedef struct sere_batch {
  int64_t size;
  sere_tensor *global, *local, *masks, *gg_rows, *gg_cols, *lg_local, *lg_global, *mappings, *labels;
} sere_batch;

/* Allocates the tensors of a batch of `size` samples; 0 or -1. */
int sere_batch_alloc(sere_batch *bt, const sere_pipeline *p, int64_t size);
void sere_batch_free(sere_batch *bt);

/* The set of files known to be bad, shared by the threads of a loader. */
typedef struct sere_badset sere_badset;
sere_badset *sere_badset_new(int64_t count);
void sere_badset_free(sere_badset *s);
int64_t sere_badset_count(sere_badset *s);

/* Memory that one thread reuses from sample to sample: zero-initialise,
 * then sere_sample_scratch_free when done. */
typedef struct sere_sample_scratch {
  sere_scratch ops;        /* the image ops' */
  sere_scratch crops;      /* one crop's pixels and a grid */
  sere_scratch transposed; /* the decoded image, transposed */
} sere_sample_scratch;
void sere_sample_scratch_free(sere_sample_scratch *ws);

/* Makes sample `index` of `ds` for (seed, epoch) and writes it into slot
 * `slot` of `bt`, recording bad files in `bad` (a set for ds->count files).
 * 0, or -1 with an error (e.g. no file of the dataset decodes). */
int sere_sample_make(const sere_dataset *ds, int64_t index, uint64_t epoch, uint64_t seed, const sere_pipeline *p,
                     sere_badset *bad, sere_sample_scratch *ws, sere_batch *bt, int64_t slot);

/* ---- the threaded loader ------------------------------------------------ */
typedef struct sere_loader_opts {
  int64_t batch_size;
  int threads;      /* worker threads, >= 1 */
  int depth;        /* batches in the queue, >= 1 */
  uint64_t seed;
  int rank, world_size;
  int drop_last;
  int shuffle;
} sere_loader_opts;

typedef struct sere_loader sere_loader;

/* `ds` is borrowed and must outlive the loader. NULL with an error. */
sere_loader *sere_loader_new(const sere_dataset *ds, const sere_pipeline *p, const sere_loader_opts *o);
/* Stops and joins the workers of a running epoch, then frees. */
void sere_loader_free(sere_loader *ld);

/* This rank's sample indices for an epoch (the distributed sampler):
 * writes ceil(n / world) entries into idx (NULL: only counts) and returns
 * their number. */
int64_t sere_loader_indices(const sere_loader *ld, uint64_t epoch, int64_t *idx);
/* Batches per epoch for this rank. */
int64_t sere_loader_num_batches(const sere_loader *ld);
int64_t sere_loader_bad_count(const sere_loader *ld);

/* Starts an epoch (abandoning a running one) at batch `first_batch`
 * (0-based, 0 .. num_batches): the batches handed out are those of the
 * whole epoch from that one on, byte for byte, and the samples of the
 * batches before it are never made. 0 or -1. */
int sere_loader_start(sere_loader *ld, uint64_t epoch, int64_t first_batch);
/* Waits for the next batch of the epoch and moves its tensors into `out`.
 * Returns 1 with a batch, 0 at the end of the epoch (workers joined), -1
 * with an error (the epoch is then stopped). */
int sere_loader_next(sere_loader *ld, sere_batch *out);
/* Stops and joins the workers of the running epoch, if any. */
void sere_loader_stop(sere_loader *ld);

#endif
