/* augment.h — the image augmentations of method.md section 5 on 8-bit RGB
 * images (sere_image), their random parameters, the block masks (5.7) and
 * the overlap grids (5.6). Everything here is plain C with no Lua and no
 * tensors, so the loader threads can call it directly.
 *
 * Every image op reproduces Pillow 9.4 / torchvision 0.14 byte for byte
 * (tests/reference/augment_ref.py writes the references). Image ops write
 * into a caller-allocated output and return 0, or -1 after sere_fail().
 *
 * Random numbers come from a sere_rng: Philox4x32-10 (sere_philox4x32) used
 * as a counter-based stream. One crop's stream is
 *     key = seed, counter = (block | crop << 32, sample | epoch << 40)
 * i.e. the low 64-bit half of the counter holds the block number (bits
 * 0-31) and the crop index within the sample (bits 32-63), the high half
 * the sample index (bits 0-39) and the epoch (bits 40-63). A crop's numbers
 * therefore depend only on (seed, epoch, sample index, crop index), never
 * on the thread or rank that draws them. Each uniform uses two 32-bit words
 * (53 bits), so one Philox block yields two uniforms. */
#ifndef SERE_AUGMENT_H
#define SERE_AUGMENT_H

#include <stdint.h>

#include "../image.h"

/* ---- random stream (augment_params.c) ------------------------------- */
typedef struct sere_rng {
  uint64_t key, counter_hi, next_block;
  uint32_t words[4];
  int used; /* words of `words` already handed out (4 = none left) */
} sere_rng;

void sere_rng_init(sere_rng *r, uint64_t key, uint64_t counter_hi, uint64_t first_block);
/* The stream of crop `crop` of sample `sample` in `epoch` (layout above). */
void sere_rng_for_crop(sere_rng *r, uint64_t seed, uint64_t epoch, uint64_t sample, uint32_t crop);
/* Uniform in [0, 1) with 53 random bits. */
double sere_rng_uniform(sere_rng *r);
/* Uniform in [lo, hi). */
double sere_rng_range(sere_rng *r, double lo, double hi);
/* Uniform integer in [lo, hi], both ends included (Python's randint). */
int64_t sere_rng_int(sere_rng *r, int64_t lo, int64_t hi);

/* ---- per-crop random parameters (augment_params.c) ------------------- */
typedef struct sere_box {
  int x, y, w, h; /* left, top, width, height in source pixels */
} sere_box;

/* RandomResizedCrop box of 5.2 (aspect range 3/4..4/3, 10 attempts, then
 * the centred fallback). */
sere_box sere_sample_crop_box(int img_w, int img_h, double scale_min, double scale_max, sere_rng *r);

/* The random choices of one crop's pipeline (5.2, 5.3). */
typedef struct sere_crop_recipe {
  int size;                        /* output side (224, 96) */
  double scale_min, scale_max;     /* crop area fraction range */
  double p_flip, p_jitter, p_gray, p_blur, p_solarize;
  double brightness, contrast, saturation, hue; /* jitter strengths */
  double sigma_min, sigma_max;     /* blur sigma range */
} sere_crop_recipe;

typedef enum { SERE_JITTER_BRIGHTNESS, SERE_JITTER_CONTRAST, SERE_JITTER_SATURATION, SERE_JITTER_HUE } sere_jitter_op;

typedef struct sere_crop_params {
  sere_box box;
  int flip, jitter, gray, blur, solarize;
  double factor[4];   /* jitter factor per sere_jitter_op */
  int order[4];       /* jitter ops in the order they are applied */
  double sigma;
} sere_crop_params;

/* Draws every random choice of one crop, in this order: box, flip, jitter
 * (applied?, permutation, brightness, contrast, saturation, hue), grayscale,
 * blur (sigma drawn only when applied), solarise. A draw is made only for a
 * probability strictly between 0 and 1 (blur: p < 1, since u <= 1 always
 * passes), so p = 0 and p = 1 consume no numbers. */
void sere_sample_crop_params(const sere_crop_recipe *rc, int img_w, int img_h, sere_rng *r, sere_crop_params *p);

/* Reusable scratch memory for the image ops below, so that a loader thread
 * allocates once rather than per crop: zero-initialise it, pass it to any
 * number of calls (one thread at a time), then sere_scratch_free. */
typedef struct sere_scratch {
  void *buf;
  size_t cap;
} sere_scratch;
/* At least `bytes` bytes, 64-byte aligned; the contents are not kept
 * across calls. NULL after sere_fail (naming `op`) when out of memory. */
void *sere_scratch_reserve(sere_scratch *s, size_t bytes, const char *op);
void sere_scratch_free(sere_scratch *s);

/* The image that crops are cut from: `img` holds a W x H image at 1/denom
 * of its size, ceil(W/denom) x ceil(H/denom) (denom = 1: the image itself;
 * > 1: a JPEG decoded with DCT scaling, where pixel i covers
 * full-resolution pixels [d*i, d*i + d)). `transposed`, when not NULL,
 * holds img transposed (img.w rows of 3 * img.h bytes, then 64 readable
 * bytes): made once by sere_crop_source_transpose, it saves every crop's
 * resize the transposition of its box. */
typedef struct sere_crop_source {
  sere_image img;
  int denom;
  const uint8_t *transposed;
} sere_crop_source;

/* Sets s->transposed to a transpose of s->img in `ws`; 0 or -1. */
int sere_crop_source_transpose(sere_crop_source *s, sere_scratch *ws);

/* Runs one crop's whole pipeline: resize the box to rc->size squared, then
 * flip, jitter, grayscale, blur and solarise as `p` says; p->box is in
 * full-resolution pixels. `out` must hold 3 * size * size bytes. */
int sere_augment_crop(const sere_crop_source *src, const sere_crop_recipe *rc, const sere_crop_params *p,
                      sere_scratch *ws, uint8_t *out);

/* Overlap sampling grids of 5.6 for mappings (x, y, w, h, flip): writes
 * S*S*2 floats into each of gq and gk ((x, y) per point, -2 everywhere if
 * the crops do not overlap). S >= 2. */
void sere_overlap_grid(const double map_q[5], const double map_k[5], int S, float *gq, float *gk);

/* ---- geometry and colour (augment.c, augment_color.c) ---------------- */
/* Bicubic antialiased resize of `box` (full-resolution pixels) of `src` to
 * out_w x out_h, written to `out` (3*out_w*out_h bytes), mirrored
 * left-right when `flip`. With src->denom = 1 this is Pillow's resize of
 * the cropped image (5.4), byte for byte. With denom = d > 1 it reads the
 * fractional box [x/d, (x+w)/d) x [y/d, (y+h)/d) of the small image with
 * the same filter, taps clamped to the pixels that box touches. */
int sere_resize_bicubic(const sere_crop_source *src, sere_box box, int out_w, int out_h, int flip, sere_scratch *ws,
                        uint8_t *out);
void sere_hflip(sere_image *img);                      /* in place */
/* Gaussian blur as Pillow's 3-pass extended box blur (5.5), in place. */
int sere_gaussian_blur(sere_image *img, double sigma, sere_scratch *ws);
void sere_solarize(sere_image *img);                   /* in place, threshold 128 */
void sere_grayscale(sere_image *img);                  /* in place, 3 equal channels */
/* Colour jitter operation `op` with factor f, in place. */
int sere_color_adjust(sere_image *img, sere_jitter_op op, double f);
/* u8 HWC -> f32 CHW: (v / 255 - mean[c]) / std[c] in f32, torchvision's
 * ToTensor + Normalize. `out` holds 3 planes of w*h floats. */
void sere_normalize_to_chw(const sere_image *img, const float mean[3], const float std[3], float *out);

/* ---- masks (masks.c) -------------------------------------------------- */
/* Mask ratio of 5.7: one candidate per (mean[i], var[i]) pair, U(m-v, m+v)
 * when v > 0 else m; then one candidate picked uniformly (no draw if n = 1).
 * n is 1..16 (returns 0 otherwise; the Lua binding checks it). */
double sere_mask_ratio(int n, const double *mean, const double *var, sere_rng *r);
/* Block-wise mask of h x w cells (row-major bytes 0/1) with target ratio. */
int sere_block_mask(int h, int w, double ratio, sere_rng *r, uint8_t *mask);
/* floor(ratio * h * w) cells chosen uniformly ("rand" shape). */
int sere_rand_mask(int h, int w, double ratio, sere_rng *r, uint8_t *mask);

#endif
