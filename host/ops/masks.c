/* masks.c — the masked-image-modelling masks of method.md 5.7: the
 * per-crop mask ratio (candidates from (mean, var) pairs, one picked
 * uniformly), iBOT's block-wise mask generator (rectangles of area >= 16
 * cells and log-uniform aspect ratio added until the target count, never
 * overshooting it), and the "rand" shape (a uniform random subset). */
#include <math.h>
#include <string.h>

#include "augment.h"
#include "ops.h"

double sere_mask_ratio(int n, const double *mean, const double *var, sere_rng *r) {
  double cand[16];
  if (n < 1 || n > 16) return 0;
  for (int i = 0; i < n; i++) cand[i] = var[i] > 0 ? sere_rng_range(r, mean[i] - var[i], mean[i] + var[i]) : mean[i];
  return n == 1 ? cand[0] : cand[sere_rng_int(r, 0, n - 1)];
}

static int check_mask_args(const char *op, int h, int w, double ratio) {
  if (h <= 0 || w <= 0 || (int64_t)h * w > (1 << 24)) {
    sere_fail("%s: mask size %dx%d must be positive with at most 2^24 cells", op, h, w);
    return -1;
  }
  if (!(ratio >= 0 && ratio <= 1)) {
    sere_fail("%s: ratio must be in [0, 1], got %g", op, ratio);
    return -1;
  }
  return 0;
}

/* One block attempt round: up to 10 rectangles, stopping at the first that
 * adds cells; returns the number of cells added (0 ends the procedure). */
static int add_block(uint8_t *mask, int h, int w, double remaining, sere_rng *r) {
  int lo_side = (h < w ? h : w) / 3;
  double lo = (double)lo_side * lo_side;
  for (int attempt = 0; attempt < 10; attempt++) {
    double area = sere_rng_range(r, lo, remaining);
    double ar = exp(sere_rng_range(r, log(0.3), log(1 / 0.3)));
    int bh = (int)nearbyint(sqrt(area * ar)), bw = (int)nearbyint(sqrt(area / ar));
    if (bw >= w || bh >= h) continue;
    int top = (int)sere_rng_int(r, 0, h - bh), left = (int)sere_rng_int(r, 0, w - bw);
    int fresh = 0;
    for (int i = top; i < top + bh; i++)
      for (int j = left; j < left + bw; j++) fresh += !mask[i * w + j];
    if (fresh > 0 && fresh <= remaining) {
      for (int i = top; i < top + bh; i++)
        for (int j = left; j < left + bw; j++) mask[i * w + j] = 1;
      return fresh;
    }
  }
  return 0;
}

int sere_block_mask(int h, int w, double ratio, sere_rng *r, uint8_t *mask) {
  if (check_mask_args("augment_block_mask", h, w, ratio)) return -1;
  memset(mask, 0, (size_t)h * w);
  double target = ratio * h * w;
  int count = 0;
  while (count < target) {
    int added = add_block(mask, h, w, target - count, r);
    if (!added) break;
    count += added;
  }
  return 0;
}

int sere_rand_mask(int h, int w, double ratio, sere_rng *r, uint8_t *mask) {
  if (check_mask_args("augment_block_mask", h, w, ratio)) return -1;
  int n = h * w, k = (int)floor(ratio * n);
  memset(mask, 0, (size_t)n);
  memset(mask + n - k, 1, (size_t)k);
  for (int i = n - 1; i > 0; i--) { /* Fisher-Yates */
    int j = (int)sere_rng_int(r, 0, i);
    uint8_t t = mask[i];
    mask[i] = mask[j];
    mask[j] = t;
  }
  return 0;
}
