/* loader.c — one SERE multi-crop sample (decode, crops, masks, grids) and
 * the threaded loader that fills a bounded queue of whole batches. See
 * loader.h for the randomness, the bad-file policy and the batch layout.
 *
 * Threads. Workers claim samples one at a time, in the rank's order, as
 * long as the sample's batch is at most `depth` batches ahead of the one
 * the consumer waits for, and write straight into that batch's tensors
 * (one slot per queued batch). Tensors are only allocated and handed out
 * by the consumer (the Lua thread): when batch k is taken, the slot is
 * refilled with fresh tensors for batch k + depth before the workers may
 * claim its samples. Every sample writes disjoint bytes, so the result does
 * not depend on which worker made it. An epoch started at batch k simply
 * begins there: batches before k are never queued, their samples never
 * claimed. Each worker keeps its scratch memory (sere_sample_scratch) for
 * the whole epoch, so the image ops allocate nothing per crop.
 *
 * One sample: read the file, draw every crop's parameters from the header's
 * size, decode (at the DCT scale the boxes allow), transpose the image once
 * when the crop boxes together cover more than it (each resize then reads
 * its box's columns directly), run the crops, then masks and grids. */
#include "loader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image_decode.h"

/* ---- pipeline and batches ------------------------------------------------ */

static int check_recipe(const sere_crop_recipe *rc, const char *what, int i, int size) {
  const double probs[5] = {rc->p_flip, rc->p_jitter, rc->p_gray, rc->p_blur, rc->p_solarize};
  if (rc->size != size) {
    sere_fail("loader: %s crop %d has size %d but crop 1 has %d (crops of one kind share a size)", what, i + 1,
              rc->size, size);
    return -1;
  }
  if (!(rc->scale_min > 0 && rc->scale_min <= rc->scale_max)) {
    sere_fail("loader: %s crop %d: need 0 < scale min <= scale max, got (%g, %g)", what, i + 1, rc->scale_min,
              rc->scale_max);
    return -1;
  }
  for (int k = 0; k < 5; k++)
    if (!(probs[k] >= 0 && probs[k] <= 1)) {
      sere_fail("loader: %s crop %d: probabilities must be in [0, 1], got %g", what, i + 1, probs[k]);
      return -1;
    }
  if (!(rc->brightness >= 0 && rc->brightness <= 1 && rc->contrast >= 0 && rc->contrast <= 1 &&
        rc->saturation >= 0 && rc->saturation <= 1 && rc->hue >= 0 && rc->hue <= 0.5 && rc->sigma_min >= 0 &&
        rc->sigma_min <= rc->sigma_max && rc->sigma_max <= 1e4)) {
    sere_fail("loader: %s crop %d: jitter strengths must be in [0, 1] (hue [0, 0.5]) and 0 <= sigma min <= max",
              what, i + 1);
    return -1;
  }
  return 0;
}

int sere_pipeline_check(const sere_pipeline *p) {
  if (p->n_global < 1 || p->n_global > SERE_MAX_GLOBAL || p->n_local < 0 || p->n_local > SERE_MAX_LOCAL) {
    sere_fail("loader: need 1 to %d global crops and 0 to %d local crops, got %d and %d", SERE_MAX_GLOBAL,
              SERE_MAX_LOCAL, p->n_global, p->n_local);
    return -1;
  }
  int sg = p->global[0].size;
  if (sg < 1 || sg > 4096 || (p->n_local && (p->local[0].size < 1 || p->local[0].size > 4096))) {
    sere_fail("loader: crop sizes must be in [1, 4096]");
    return -1;
  }
  for (int i = 0; i < p->n_global; i++)
    if (check_recipe(&p->global[i], "global", i, sg)) return -1;
  for (int i = 0; i < p->n_local; i++)
    if (check_recipe(&p->local[i], "local", i, p->local[0].size)) return -1;
  if (p->patch < 1 || sg % p->patch) {
    sere_fail("loader: the patch size %d does not divide the global crop size %d", p->patch, sg);
    return -1;
  }
  if (p->overlap[0] < 2 || p->overlap[0] > 1024 || p->overlap[1] < 2 || p->overlap[1] > 1024 || p->lg_size < 2 ||
      p->lg_size > 1024) {
    sere_fail("loader: grid sides must be in [2, 1024], got overlap (%d, %d) and local/global %d", p->overlap[0],
              p->overlap[1], p->lg_size);
    return -1;
  }
  if (p->mask_n < 1 || p->mask_n > 16) {
    sere_fail("loader: need 1 to 16 mask ratio pairs, got %d", p->mask_n);
    return -1;
  }
  for (int i = 0; i < p->mask_n; i++)
    if (!(p->mask_var[i] >= 0 && p->mask_var[i] <= p->mask_mean[i] && p->mask_mean[i] + p->mask_var[i] <= 1)) {
      sere_fail("loader: mask ratio pair %d (mean %g, var %g) needs 0 <= var <= mean and mean + var <= 1", i + 1,
                p->mask_mean[i], p->mask_var[i]);
      return -1;
    }
  for (int c = 0; c < 3; c++)
    if (!(p->std[c] > 0)) {
      sere_fail("loader: the normalisation std must be positive");
      return -1;
    }
  return 0;
}

void sere_batch_free(sere_batch *bt) {
  sere_tensor **t[9] = {&bt->global,  &bt->local,     &bt->masks,    &bt->gg_rows, &bt->gg_cols,
                        &bt->lg_local, &bt->lg_global, &bt->mappings, &bt->labels};
  for (int i = 0; i < 9; i++) {
    if (*t[i]) sere_tensor_release(*t[i]);
    *t[i] = NULL;
  }
}

int sere_batch_alloc(sere_batch *bt, const sere_pipeline *p, int64_t size) {
  memset(bt, 0, sizeof *bt);
  bt->size = size;
  int64_t G = p->n_global, L = p->n_local, sg = p->global[0].size, sl = L ? p->local[0].size : 0;
  int64_t hp = sg / p->patch, S0 = p->overlap[0], S1 = p->overlap[1], Q = p->lg_size;
  int64_t s_global[4] = {G * size, 3, sg, sg}, s_local[4] = {L * size, 3, sl, sl}, s_masks[3] = {G * size, hp, hp};
  int64_t s_rows[4] = {G * size, S0, S0, 2}, s_cols[4] = {G * size, S1, S1, 2};
  int64_t s_lg[5] = {G * L, size, Q, Q, 2}, s_maps[3] = {G + L, size, 5}, s_labels[1] = {size};
  if (!(bt->global = sere_tensor_new_uninit(SERE_F32, 4, s_global)) ||
      !(bt->local = sere_tensor_new_uninit(SERE_F32, 4, s_local)) ||
      !(bt->masks = sere_tensor_new_uninit(SERE_BOOL, 3, s_masks)) ||
      !(bt->gg_rows = sere_tensor_new_uninit(SERE_F32, 4, s_rows)) ||
      !(bt->gg_cols = sere_tensor_new_uninit(SERE_F32, 4, s_cols)) ||
      !(bt->lg_local = sere_tensor_new_uninit(SERE_F32, 5, s_lg)) ||
      !(bt->lg_global = sere_tensor_new_uninit(SERE_F32, 5, s_lg)) ||
      !(bt->mappings = sere_tensor_new_uninit(SERE_F32, 3, s_maps)) ||
      !(bt->labels = sere_tensor_new_uninit(SERE_I64, 1, s_labels))) {
    sere_batch_free(bt);
    return -1;
  }
  return 0;
}

/* ---- bad files ------------------------------------------------------------ */

struct sere_badset {
  pthread_mutex_t mu;
  uint8_t *seen; /* [count] 1 once a file failed to decode */
  int64_t nbad;
};

sere_badset *sere_badset_new(int64_t count) {
  sere_badset *s = calloc(1, sizeof *s);
  if (s) s->seen = calloc((size_t)(count > 0 ? count : 1), 1);
  if (!s || !s->seen) {
    free(s);
    return sere_fail("loader: out of memory for the bad-file set of %lld files", (long long)count);
  }
  pthread_mutex_init(&s->mu, NULL);
  return s;
}

void sere_badset_free(sere_badset *s) {
  if (!s) return;
  pthread_mutex_destroy(&s->mu);
  free(s->seen);
  free(s);
}

int64_t sere_badset_count(sere_badset *s) {
  pthread_mutex_lock(&s->mu);
  int64_t n = s->nbad;
  pthread_mutex_unlock(&s->mu);
  return n;
}

static int badset_has(sere_badset *s, int64_t i) {
  pthread_mutex_lock(&s->mu);
  int v = s->seen[i];
  pthread_mutex_unlock(&s->mu);
  return v;
}

/* Records file i as bad; the first time, warns with the running count.
 * `why` names the file (the decoders' messages start with it). */
static void badset_add(sere_badset *s, int64_t i, const char *why) {
  pthread_mutex_lock(&s->mu);
  if (!s->seen[i]) {
    s->seen[i] = 1;
    s->nbad++;
    fprintf(stderr, "sere: warning: skipping unreadable image: %s; bad files so far: %lld\n", why, (long long)s->nbad);
  }
  pthread_mutex_unlock(&s->mu);
}

/* ---- one sample ----------------------------------------------------------- */

void sere_sample_scratch_free(sere_sample_scratch *ws) {
  sere_scratch_free(&ws->ops);
  sere_scratch_free(&ws->crops);
  sere_scratch_free(&ws->transposed);
}

static const sere_crop_recipe *crop_recipe(const sere_pipeline *p, int c) {
  return c < p->n_global ? &p->global[c] : &p->local[c - p->n_global];
}

/* The largest DCT scale denominator d (1, 2, 4, 8) for which every crop box
 * is at least d times its output size. */
static int crop_denom(const sere_pipeline *p, const sere_crop_params *cp) {
  int d = 8;
  for (int c = 0; c < p->n_global + p->n_local && d > 1; c++) {
    int size = crop_recipe(p, c)->size;
    while (d > 1 && (cp[c].box.w < d * size || cp[c].box.h < d * size)) d /= 2;
  }
  return d;
}

/* Reads and decodes file j for the crops of sample `index`: draws every
 * crop's parameters (cp) from the full-resolution size, then decodes at
 * the scale they allow. 0, or -1 with an error naming the file. */
static int decode_file(const sere_dataset *ds, int64_t j, int64_t index, uint64_t epoch, uint64_t seed,
                       const sere_pipeline *p, sere_image *img, int *denom, sere_crop_params *cp) {
  char path[4096];
  if (sere_dataset_path(ds, j, path, sizeof path) >= sizeof path) {
    sere_fail("%.500s...: path too long", sere_dataset_rel_path(ds, j));
    return -1;
  }
  uint8_t *data;
  size_t len;
  if (sere_file_read(path, &data, &len)) return -1;
  sere_image_format format;
  int w, h, rc = sere_image_probe(data, len, path, &format, &w, &h);
  if (rc == 0) {
    for (int c = 0; c < p->n_global + p->n_local; c++) {
      sere_rng r;
      sere_rng_for_crop(&r, seed, epoch, (uint64_t)index, (uint32_t)c);
      sere_sample_crop_params(crop_recipe(p, c), w, h, &r, &cp[c]);
    }
    int d = p->dct_scaling && format == SERE_IMAGE_JPEG ? crop_denom(p, cp) : 1;
    rc = sere_image_decode_scaled(data, len, path, d, img, denom);
  }
  free(data);
  return rc;
}

/* Decodes sample `index`, or the first decodable file after it (mod n),
 * whose index goes to *used. */
static int decode_sample(const sere_dataset *ds, int64_t index, uint64_t epoch, uint64_t seed, const sere_pipeline *p,
                         sere_badset *bad, sere_image *img, int *denom, sere_crop_params *cp, int64_t *used) {
  for (int64_t k = 0; k < ds->count; k++) {
    int64_t j = (index + k) % ds->count;
    if (badset_has(bad, j)) continue;
    if (decode_file(ds, j, index, epoch, seed, p, img, denom, cp) == 0) {
      *used = j;
      return 0;
    }
    badset_add(bad, j, sere_last_error());
  }
  sere_fail("loader: none of the %lld files of the dataset '%s' can be decoded", (long long)ds->count, ds->root);
  return -1;
}

static void write_masks(const sere_pipeline *p, uint64_t seed, uint64_t epoch, int64_t index, sere_batch *bt,
                        int64_t slot) {
  int G = p->n_global, hp = p->global[0].size / p->patch;
  for (int g = 0; g < G; g++) {
    sere_rng r;
    sere_rng_for_crop(&r, seed, epoch, (uint64_t)index, (uint32_t)(G + p->n_local + g));
    double ratio = (int64_t)epoch < p->mask_start_epoch ? 0 : sere_mask_ratio(p->mask_n, p->mask_mean, p->mask_var, &r);
    uint8_t *m = (uint8_t *)sere_data(bt->masks) + (g * bt->size + slot) * hp * hp;
    if (p->mask_rand) sere_rand_mask(hp, hp, ratio, &r, m);
    else sere_block_mask(hp, hp, ratio, &r, m);
  }
}

/* Global/global grids at side S into t [G*B, S, S, 2]: crop g >= 2 gets its
 * frame of the pair (crop 1, crop g), crop 1 its frame of the pair with the
 * last crop. `scratch` holds S*S*2 floats. */
static void write_gg(const double maps[][5], int G, int S, sere_tensor *t, int64_t B, int64_t slot, float *scratch) {
  size_t per = (size_t)S * S * 2;
  float *base = sere_data(t);
  if (G == 1) {
    for (size_t i = 0; i < per; i++) base[slot * per + i] = -2.0f;
    return;
  }
  for (int g = 1; g < G; g++)
    sere_overlap_grid(maps[0], maps[g], S, g == G - 1 ? base + slot * per : scratch, base + (g * B + slot) * per);
}

int sere_sample_make(const sere_dataset *ds, int64_t index, uint64_t epoch, uint64_t seed, const sere_pipeline *p,
                     sere_badset *bad, sere_sample_scratch *ws, sere_batch *bt, int64_t slot) {
  int G = p->n_global, L = p->n_local, sg = p->global[0].size, sl = L ? p->local[0].size : 0;
  int smax = p->overlap[0] > p->overlap[1] ? p->overlap[0] : p->overlap[1];
  size_t crop_bytes = (size_t)3 * (sg > sl ? sg : sl) * (sg > sl ? sg : sl);
  uint8_t *crop = sere_scratch_reserve(&ws->crops, crop_bytes + (size_t)smax * smax * 2 * sizeof(float), "loader");
  if (!crop) return -1;
  float *grid_scratch = (float *)(crop + (crop_bytes + 3) / 4 * 4);
  sere_image img = {0};
  sere_crop_params cp[SERE_MAX_GLOBAL + SERE_MAX_LOCAL];
  int denom;
  int64_t used, B = bt->size;
  if (decode_sample(ds, index, epoch, seed, p, bad, &img, &denom, cp, &used)) return -1;
  /* Every crop's resize reads its box transposed: when the boxes cover
   * more than the image, transpose the whole image once instead. */
  sere_crop_source src = {img, denom, NULL};
  double box_area = 0;
  for (int c = 0; c < G + L; c++) box_area += (double)cp[c].box.w * cp[c].box.h / ((double)denom * denom);
  if (box_area > (double)img.w * img.h && sere_crop_source_transpose(&src, &ws->transposed)) {
    sere_image_free(&img);
    return -1;
  }
  double maps[SERE_MAX_GLOBAL + SERE_MAX_LOCAL][5];
  float *mapping_out = sere_data(bt->mappings);
  for (int c = 0; c < G + L; c++) {
    const sere_crop_recipe *recipe = crop_recipe(p, c);
    if (sere_augment_crop(&src, recipe, &cp[c], &ws->ops, crop)) {
      sere_image_free(&img);
      return -1;
    }
    sere_image out = {recipe->size, recipe->size, crop};
    size_t plane = (size_t)3 * recipe->size * recipe->size;
    float *dst = c < G ? (float *)sere_data(bt->global) + (c * B + slot) * plane
                       : (float *)sere_data(bt->local) + ((c - G) * B + slot) * plane;
    sere_normalize_to_chw(&out, p->mean, p->std, dst);
    double m[5] = {cp[c].box.x, cp[c].box.y, cp[c].box.w, cp[c].box.h, cp[c].flip ? 1 : 0};
    for (int k = 0; k < 5; k++) {
      maps[c][k] = m[k];
      mapping_out[(c * B + slot) * 5 + k] = (float)m[k];
    }
  }
  sere_image_free(&img);
  write_masks(p, seed, epoch, index, bt, slot);
  write_gg(maps, G, p->overlap[0], bt->gg_rows, B, slot, grid_scratch);
  write_gg(maps, G, p->overlap[1], bt->gg_cols, B, slot, grid_scratch);
  size_t per = (size_t)p->lg_size * p->lg_size * 2;
  for (int g = 0; g < G; g++)
    for (int l = 0; l < L; l++) {
      size_t off = ((size_t)(g * L + l) * B + slot) * per;
      sere_overlap_grid(maps[G + l], maps[g], p->lg_size, (float *)sere_data(bt->lg_local) + off,
                        (float *)sere_data(bt->lg_global) + off);
    }
  ((int64_t *)sere_data(bt->labels))[slot] = ds->label[used] + 1;
  return 0;
}

/* ---- the threaded loader --------------------------------------------------- */

struct sere_loader {
  const sere_dataset *ds;
  sere_pipeline p;
  sere_loader_opts o;
  sere_badset *bad;
  pthread_mutex_t mu;
  pthread_cond_t ready, space; /* a sample finished / the consumer moved on */
  /* the running epoch */
  int running, nthreads, stop, failed;
  pthread_t *threads;
  uint64_t epoch;
  int64_t *idx, nsamples, nbatches;
  int64_t next_sample, consumed; /* next sample to claim, next batch to hand out */
  sere_batch *slots;             /* [depth], slot k % depth holds batch k */
  int64_t *done;                 /* [depth] samples finished per slot */
  char err[1024];
};

sere_loader *sere_loader_new(const sere_dataset *ds, const sere_pipeline *p, const sere_loader_opts *o) {
  if (sere_pipeline_check(p)) return NULL;
  if (ds->count < 1) return sere_fail("loader: the dataset '%s' has no images", ds->root);
  if (o->batch_size < 1 || o->threads < 1 || o->threads > 1024 || o->depth < 1 || o->depth > 64)
    return sere_fail("loader: need batch_size >= 1, threads in [1, 1024] and depth in [1, 64], got %lld, %d, %d",
                     (long long)o->batch_size, o->threads, o->depth);
  if (o->world_size < 1 || o->rank < 0 || o->rank >= o->world_size)
    return sere_fail("loader: rank %d is not in [0, world_size %d)", o->rank, o->world_size);
  sere_loader *ld = calloc(1, sizeof *ld);
  if (!ld) return sere_fail("loader: out of memory");
  ld->bad = sere_badset_new(ds->count);
  if (!ld->bad) {
    free(ld);
    return NULL;
  }
  ld->ds = ds;
  ld->p = *p;
  ld->o = *o;
  pthread_mutex_init(&ld->mu, NULL);
  pthread_cond_init(&ld->ready, NULL);
  pthread_cond_init(&ld->space, NULL);
  return ld;
}

void sere_loader_free(sere_loader *ld) {
  if (!ld) return;
  sere_loader_stop(ld);
  pthread_cond_destroy(&ld->ready);
  pthread_cond_destroy(&ld->space);
  pthread_mutex_destroy(&ld->mu);
  sere_badset_free(ld->bad);
  free(ld);
}

int64_t sere_loader_bad_count(const sere_loader *ld) { return sere_badset_count(ld->bad); }

int64_t sere_loader_indices(const sere_loader *ld, uint64_t epoch, int64_t *idx) {
  int64_t n = ld->ds->count, W = ld->o.world_size, per = (n + W - 1) / W;
  if (!idx) return per;
  int64_t *perm = malloc((size_t)n * sizeof *perm);
  if (!perm) {
    sere_fail("loader: out of memory for a permutation of %lld samples", (long long)n);
    return -1;
  }
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  if (ld->o.shuffle) {
    sere_rng r;
    sere_rng_for_crop(&r, ld->o.seed, epoch, ((uint64_t)1 << 40) - 1, 0);
    for (int64_t i = n - 1; i > 0; i--) {
      int64_t j = sere_rng_int(&r, 0, i), t = perm[i];
      perm[i] = perm[j];
      perm[j] = t;
    }
  }
  /* the permutation padded by repetition to per * W entries; every W-th */
  for (int64_t i = 0; i < per; i++) idx[i] = perm[(ld->o.rank + i * W) % n];
  free(perm);
  return per;
}

int64_t sere_loader_num_batches(const sere_loader *ld) {
  int64_t per = sere_loader_indices(ld, 0, NULL), B = ld->o.batch_size;
  return ld->o.drop_last ? per / B : (per + B - 1) / B;
}

static int64_t batch_size_of(const sere_loader *ld, int64_t k) {
  int64_t left = ld->nsamples - k * ld->o.batch_size;
  return left < ld->o.batch_size ? left : ld->o.batch_size;
}

static void *worker(void *arg) {
  sere_loader *ld = arg;
  int64_t B = ld->o.batch_size;
  sere_sample_scratch ws = {0};
  pthread_mutex_lock(&ld->mu);
  while (!ld->stop && ld->next_sample < ld->nsamples) {
    int64_t s = ld->next_sample, k = s / B;
    if (k >= ld->consumed + ld->o.depth) {
      pthread_cond_wait(&ld->space, &ld->mu);
      continue;
    }
    ld->next_sample++;
    sere_batch *bt = &ld->slots[k % ld->o.depth];
    pthread_mutex_unlock(&ld->mu);
    int rc = sere_sample_make(ld->ds, ld->idx[s], ld->epoch, ld->o.seed, &ld->p, ld->bad, &ws, bt, s - k * B);
    pthread_mutex_lock(&ld->mu);
    if (rc && !ld->failed) {
      ld->failed = ld->stop = 1;
      snprintf(ld->err, sizeof ld->err, "%s", sere_last_error());
      pthread_cond_broadcast(&ld->space);
    }
    ld->done[k % ld->o.depth]++;
    pthread_cond_broadcast(&ld->ready);
  }
  pthread_mutex_unlock(&ld->mu);
  sere_sample_scratch_free(&ws);
  return NULL;
}

void sere_loader_stop(sere_loader *ld) {
  if (!ld->running) return;
  pthread_mutex_lock(&ld->mu);
  ld->stop = 1;
  pthread_cond_broadcast(&ld->space);
  pthread_mutex_unlock(&ld->mu);
  for (int i = 0; i < ld->nthreads; i++) pthread_join(ld->threads[i], NULL);
  for (int i = 0; ld->slots && i < ld->o.depth; i++) sere_batch_free(&ld->slots[i]);
  free(ld->threads);
  free(ld->slots);
  free(ld->done);
  free(ld->idx);
  ld->threads = NULL;
  ld->slots = NULL;
  ld->done = NULL;
  ld->idx = NULL;
  ld->nthreads = 0;
  ld->running = 0;
}

int sere_loader_start(sere_loader *ld, uint64_t epoch, int64_t first_batch) {
  sere_loader_stop(ld);
  int64_t nbatches = sere_loader_num_batches(ld);
  if (first_batch < 0 || first_batch > nbatches) {
    sere_fail("loader: the first batch %lld is not in [0, %lld] (batches per epoch)", (long long)first_batch,
              (long long)nbatches);
    return -1;
  }
  int64_t per = sere_loader_indices(ld, epoch, NULL), depth = ld->o.depth;
  ld->idx = malloc((size_t)per * sizeof *ld->idx);
  ld->slots = calloc((size_t)depth, sizeof *ld->slots);
  ld->done = calloc((size_t)depth, sizeof *ld->done);
  ld->threads = calloc((size_t)ld->o.threads, sizeof *ld->threads);
  ld->running = 1; /* from here on, sere_loader_stop frees what was made */
  if (!ld->idx || !ld->slots || !ld->done || !ld->threads) {
    sere_loader_stop(ld);
    sere_fail("loader: out of memory starting epoch %llu", (unsigned long long)epoch);
    return -1;
  }
  if (sere_loader_indices(ld, epoch, ld->idx) < 0) {
    sere_loader_stop(ld);
    return -1;
  }
  ld->epoch = epoch;
  ld->nbatches = nbatches;
  ld->nsamples = ld->o.drop_last ? ld->nbatches * ld->o.batch_size : per;
  ld->consumed = first_batch;
  ld->next_sample = first_batch * ld->o.batch_size;
  ld->stop = ld->failed = 0;
  for (int64_t k = first_batch; k < first_batch + depth && k < ld->nbatches; k++)
    if (sere_batch_alloc(&ld->slots[k % depth], &ld->p, batch_size_of(ld, k))) {
      sere_loader_stop(ld);
      return -1;
    }
  for (int i = 0; i < ld->o.threads && i < ld->nsamples - ld->next_sample; i++) {
    if (pthread_create(&ld->threads[i], NULL, worker, ld)) break;
    ld->nthreads++;
  }
  if (ld->nsamples > ld->next_sample && ld->nthreads == 0) {
    sere_loader_stop(ld);
    sere_fail("loader: cannot start a worker thread");
    return -1;
  }
  return 0;
}

int sere_loader_next(sere_loader *ld, sere_batch *out) {
  memset(out, 0, sizeof *out);
  if (!ld->running) return 0;
  int64_t k = ld->consumed, depth = ld->o.depth;
  if (k >= ld->nbatches) {
    sere_loader_stop(ld);
    return 0;
  }
  sere_batch *slot = &ld->slots[k % depth];
  pthread_mutex_lock(&ld->mu);
  while (!ld->failed && ld->done[k % depth] < slot->size) pthread_cond_wait(&ld->ready, &ld->mu);
  int failed = ld->failed;
  pthread_mutex_unlock(&ld->mu);
  if (failed) {
    sere_loader_stop(ld);
    sere_fail("%s", ld->err);
    return -1;
  }
  *out = *slot;
  memset(slot, 0, sizeof *slot);
  if (k + depth < ld->nbatches && sere_batch_alloc(slot, &ld->p, batch_size_of(ld, k + depth))) {
    sere_batch_free(out);
    sere_loader_stop(ld);
    return -1;
  }
  pthread_mutex_lock(&ld->mu);
  ld->done[k % depth] = 0;
  ld->consumed = k + 1;
  pthread_cond_broadcast(&ld->space);
  pthread_mutex_unlock(&ld->mu);
  return 1;
}
