/* augment_color.c — the colour operations of method.md 5.5 on 8-bit RGB,
 * byte-exact with Pillow 9.4's ImageEnhance / convert("L") / HSV round trip
 * as torchvision's functional ops call them.
 *
 * Pillow blends in single precision: blend(a, b, alpha) = a + alpha * (b - a)
 * with alpha a C float, truncated to 8 bits for 0 <= alpha <= 1 and clipped
 * to [0, 255] first otherwise. Brightness and contrast depend only on the
 * byte value, so they run through a 256-entry table. */
#include <math.h>

#include "augment.h"
#include "ops.h"

static inline uint8_t blend(int a, int b, float alpha) {
  float t = (float)a + alpha * (float)(b - a);
  if (alpha >= 0 && alpha <= 1) return (uint8_t)t;
  return t <= 0 ? 0 : t >= 255 ? 255 : (uint8_t)t;
}

static inline int gray_of(const uint8_t *p) { return (19595 * p[0] + 38470 * p[1] + 7471 * p[2] + 32768) >> 16; }

static void apply_lut(sere_image *img, const uint8_t lut[256]) {
  size_t n = 3 * (size_t)img->w * img->h;
  for (size_t i = 0; i < n; i++) img->px[i] = lut[img->px[i]];
}

void sere_grayscale(sere_image *img) {
  size_t n = (size_t)img->w * img->h;
  for (size_t i = 0; i < n; i++) {
    uint8_t *p = img->px + 3 * i;
    p[0] = p[1] = p[2] = (uint8_t)gray_of(p);
  }
}

/* Pillow's RGB -> 8-bit HSV -> RGB (Convert.c), with `shift` added to the
 * hue byte modulo 256 in between. The mix of float and double arithmetic
 * is Pillow's and matters for the last bit. Two exact shortcuts: Pillow's
 * fmod(x, 1) sees x in [5/6, 11/6], where it is x - 1 for x >= 1; and the
 * sector/fraction of a hue byte and the fraction of a saturation byte come
 * from tables `tab` (see hue_tables) filled with Pillow's own expressions. */
typedef struct {
  int sector[256];
  float frac[256], sat[256];
} hue_tables;

static void hue_tables_init(hue_tables *t) {
  for (int h = 0; h < 256; h++) {
    t->sector[h] = (int)floor((float)h * 6.0 / 255.0);
    t->frac[h] = (float)((float)h * 6.0 / 255.0 - (float)t->sector[h]);
    t->sat[h] = (float)((float)h / 255.0);
  }
}

static inline uint8_t clip_u8(int v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

/* round() (half away from zero) for 0 <= x < 2^31 without a libm call;
 * x - t is exact there. */
static inline int round_nonneg(double x) {
  int t = (int)x;
  return x - t >= 0.5 ? t + 1 : t;
}

static void hue_shift_pixel(uint8_t *px, int shift, const hue_tables *tab) {
  int r = px[0], g = px[1], b = px[2];
  int maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
  int minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
  if (maxc == minc) return; /* grey: hue and saturation 0, round trip is exact */
  float cr = (float)(maxc - minc);
  float s = cr / (float)maxc;
  float hf;
  if (r == maxc) hf = (float)(maxc - b) / cr - (float)(maxc - g) / cr;
  else if (g == maxc) hf = (float)(2.0 + (float)(maxc - r) / cr - (float)(maxc - b) / cr);
  else hf = (float)(4.0 + (float)(maxc - g) / cr - (float)(maxc - r) / cr);
  double x = hf / 6.0 + 1.0;
  hf = (float)(x >= 1.0 ? x - 1.0 : x);
  uint8_t h = (uint8_t)(clip_u8((int)(hf * 255.0)) + shift);
  uint8_t sv = clip_u8((int)(s * 255.0));
  uint8_t v = (uint8_t)maxc;
  if (sv == 0) {
    px[0] = px[1] = px[2] = v;
    return;
  }
  float f = tab->frac[h], fs = tab->sat[sv];
  uint8_t val[4] = {v, clip_u8(round_nonneg((float)v * (1.0 - fs))), clip_u8(round_nonneg((float)v * (1.0 - fs * f))),
                    clip_u8(round_nonneg((float)v * (1.0 - fs * (1.0 - f))))}; /* v, p, q, t */
  static const int pick[6][3] = {{0, 3, 1}, {2, 0, 1}, {1, 0, 3}, {1, 2, 0}, {3, 1, 0}, {0, 1, 2}};
  for (int c = 0; c < 3; c++) px[c] = val[pick[tab->sector[h] % 6][c]];
}

int sere_color_adjust(sere_image *img, sere_jitter_op op, double f) {
  size_t n = (size_t)img->w * img->h;
  float alpha = (float)f;
  uint8_t lut[256];
  switch (op) {
  case SERE_JITTER_BRIGHTNESS:
  case SERE_JITTER_CONTRAST: {
    if (!(f >= 0)) {
      sere_fail("augment_color: %s factor must be >= 0, got %g", op ? "contrast" : "brightness", f);
      return -1;
    }
    int mu = 0;
    if (op == SERE_JITTER_CONTRAST) {
      int64_t sum = 0;
      for (size_t i = 0; i < n; i++) sum += gray_of(img->px + 3 * i);
      mu = n ? (int)floor((double)sum / (double)n + 0.5) : 0;
    }
    for (int v = 0; v < 256; v++) lut[v] = blend(mu, v, alpha);
    apply_lut(img, lut);
    return 0;
  }
  case SERE_JITTER_SATURATION:
    if (!(f >= 0)) {
      sere_fail("augment_color: saturation factor must be >= 0, got %g", f);
      return -1;
    }
    for (size_t i = 0; i < n; i++) {
      uint8_t *p = img->px + 3 * i;
      int y = gray_of(p);
      for (int c = 0; c < 3; c++) p[c] = blend(y, p[c], alpha);
    }
    return 0;
  case SERE_JITTER_HUE: {
    if (!(f >= -0.5 && f <= 0.5)) {
      sere_fail("augment_color: hue factor must be in [-0.5, 0.5], got %g", f);
      return -1;
    }
    /* torchvision adds np.uint8(f * 255): truncation toward zero, then
     * wrap-around modulo 256. */
    int shift = ((int)(f * 255) % 256 + 256) % 256;
    hue_tables tab;
    hue_tables_init(&tab);
    for (size_t i = 0; i < n; i++) hue_shift_pixel(img->px + 3 * i, shift, &tab);
    return 0;
  }
  }
  sere_fail("augment_color: unknown operation %d", (int)op);
  return -1;
}
