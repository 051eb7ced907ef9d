/* augment_params.c — the random side of the crop pipeline (method.md 5.2,
 * 5.3) and the overlap grids (5.6): the counter-based stream every crop
 * draws from (layout in augment.h), the RandomResizedCrop box, the
 * per-crop choices (flip, jitter factors and order, grayscale, blur sigma,
 * solarise), and the S x S grids of two crops' intersection. */
#include <math.h>

#include "augment.h"
#include "ops.h"

void sere_rng_init(sere_rng *r, uint64_t key, uint64_t counter_hi, uint64_t first_block) {
  r->key = key;
  r->counter_hi = counter_hi;
  r->next_block = first_block;
  r->used = 4;
}

void sere_rng_for_crop(sere_rng *r, uint64_t seed, uint64_t epoch, uint64_t sample, uint32_t crop) {
  uint64_t hi = (sample & ((1ull << 40) - 1)) | (epoch << 40);
  sere_rng_init(r, seed, hi, (uint64_t)crop << 32);
}

static uint32_t rng_word(sere_rng *r) {
  if (r->used == 4) {
    sere_philox4x32(r->key, r->next_block++, r->counter_hi, r->words);
    r->used = 0;
  }
  return r->words[r->used++];
}

double sere_rng_uniform(sere_rng *r) {
  uint64_t a = rng_word(r) >> 5, b = rng_word(r) >> 6; /* 27 + 26 bits */
  return (double)(a * 67108864u + b) * (1.0 / 9007199254740992.0);
}

double sere_rng_range(sere_rng *r, double lo, double hi) { return lo + (hi - lo) * sere_rng_uniform(r); }

int64_t sere_rng_int(sere_rng *r, int64_t lo, int64_t hi) {
  int64_t v = lo + (int64_t)floor(sere_rng_uniform(r) * (double)(hi - lo + 1));
  return v > hi ? hi : v;
}

sere_box sere_sample_crop_box(int img_w, int img_h, double scale_min, double scale_max, sere_rng *r) {
  const double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  double area = (double)img_w * img_h;
  for (int attempt = 0; attempt < 10; attempt++) {
    double target = area * sere_rng_range(r, scale_min, scale_max);
    double ar = exp(sere_rng_range(r, log(ratio_min), log(ratio_max)));
    /* nearbyint rounds half to even in the default rounding mode, like
     * Python's round(). */
    int w = (int)nearbyint(sqrt(target * ar)), h = (int)nearbyint(sqrt(target / ar));
    if (w > 0 && w <= img_w && h > 0 && h <= img_h) {
      int top = (int)sere_rng_int(r, 0, img_h - h);
      int left = (int)sere_rng_int(r, 0, img_w - w);
      return (sere_box){left, top, w, h};
    }
  }
  int w = img_w, h = img_h;
  double in_ratio = (double)img_w / img_h;
  if (in_ratio < ratio_min) h = (int)nearbyint(w / ratio_min);
  else if (in_ratio > ratio_max) w = (int)nearbyint(h * ratio_max);
  return (sere_box){(img_w - w) / 2, (img_h - h) / 2, w, h};
}

/* Bernoulli(p) with `u < p` (or `u <= p` when inclusive); no draw when the
 * outcome is certain. */
static int coin(sere_rng *r, double p, int inclusive) {
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  double u = sere_rng_uniform(r);
  return inclusive ? u <= p : u < p;
}

void sere_sample_crop_params(const sere_crop_recipe *rc, int img_w, int img_h, sere_rng *r, sere_crop_params *p) {
  p->box = sere_sample_crop_box(img_w, img_h, rc->scale_min, rc->scale_max, r);
  p->flip = coin(r, rc->p_flip, 0);
  /* torchvision's RandomApply skips when p < u, i.e. applies when u <= p. */
  p->jitter = coin(r, rc->p_jitter, 1);
  for (int i = 0; i < 4; i++) p->order[i] = i;
  p->factor[SERE_JITTER_BRIGHTNESS] = p->factor[SERE_JITTER_CONTRAST] = p->factor[SERE_JITTER_SATURATION] = 1;
  p->factor[SERE_JITTER_HUE] = 0;
  if (p->jitter) {
    for (int i = 3; i > 0; i--) { /* Fisher-Yates */
      int j = (int)sere_rng_int(r, 0, i);
      int t = p->order[i];
      p->order[i] = p->order[j];
      p->order[j] = t;
    }
    p->factor[SERE_JITTER_BRIGHTNESS] = sere_rng_range(r, 1 - rc->brightness, 1 + rc->brightness);
    p->factor[SERE_JITTER_CONTRAST] = sere_rng_range(r, 1 - rc->contrast, 1 + rc->contrast);
    p->factor[SERE_JITTER_SATURATION] = sere_rng_range(r, 1 - rc->saturation, 1 + rc->saturation);
    p->factor[SERE_JITTER_HUE] = sere_rng_range(r, -rc->hue, rc->hue);
  }
  p->gray = coin(r, rc->p_gray, 0);
  p->blur = coin(r, rc->p_blur, 1);
  p->sigma = p->blur ? sere_rng_range(r, rc->sigma_min, rc->sigma_max) : 0;
  p->solarize = coin(r, rc->p_solarize, 0);
}

void sere_overlap_grid(const double q[5], const double k[5], int S, float *gq, float *gk) {
  double x0 = fmax(q[0], k[0]), y0 = fmax(q[1], k[1]);
  double x1 = fmin(q[0] + q[2], k[0] + k[2]), y1 = fmin(q[1] + q[3], k[1] + k[3]);
  const double *m[2] = {q, k};
  float *g[2] = {gq, gk};
  for (int v = 0; v < 2; v++) {
    if (!(x0 < x1 && y0 < y1)) {
      for (int i = 0; i < 2 * S * S; i++) g[v][i] = -2;
      continue;
    }
    double a = (x0 - m[v][0]) / m[v][2], b = (y0 - m[v][1]) / m[v][3];
    double da = (x1 - x0) / m[v][2], db = (y1 - y0) / m[v][3];
    for (int i = 0; i < S; i++) {
      for (int j = 0; j < S; j++) {
        double u = a + j * da / (S - 1), t = b + i * db / (S - 1);
        if (m[v][4] != 0) u = 1 - u;
        g[v][2 * (i * S + j)] = (float)(2 * u - 1);
        g[v][2 * (i * S + j) + 1] = (float)(2 * t - 1);
      }
    }
  }
}
