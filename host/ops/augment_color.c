/* augment_color.c — the colour operations of method.md 5.5 on 8-bit RGB,
 * byte-exact with Pillow 9.4's ImageEnhance / convert("L") / HSV round trip
 * as torchvision's functional ops call them.
 *
 * Pillow blends in single precision: blend(a, b, alpha) = a + alpha * (b - a)
 * with alpha a C float, truncated to 8 bits for 0 <= alpha <= 1 and clipped
 * to [0, 255] first otherwise.
 *
 * Speed. Every loop here is branch-free per pixel and compiled for AVX-512
 * and AVX2 too (SERE_WIDE_SIMD), so it runs 8 or 16 pixels at a time with
 * the same float and double operations, in the same order, as Pillow's
 * scalar code. That only holds without FMA contraction (a fused a + alpha *
 * (b - a) rounds once instead of twice), hence the pragma below. */
#pragma GCC optimize("fp-contract=off")
#include <math.h>

#include "augment.h"
#include "ops.h"
#include "vecmath.h"

static inline int gray_of(int r, int g, int b) { return (19595 * r + 38470 * g + 7471 * b + 32768) >> 16; }

static inline int clamp_u8(int v) { return v < 0 ? 0 : v > 255 ? 255 : v; }

/* Pillow's blend of a and b, 0 <= a, b <= 255. For 0 <= alpha <= 1 the sum
 * lies in [0, 255] and truncation is all there is; otherwise truncating
 * toward zero and then clamping equals Pillow's clip-then-truncate. alpha
 * is at most 1e6 (see blend_alpha), so the float converts to int. */
static inline uint8_t blend(int a, int b, float alpha) {
  return (uint8_t)clamp_u8((int)((float)a + alpha * (float)(b - a)));
}

/* A factor as Pillow's float alpha, capped at 1e6: beyond, every blend of
 * b != a saturates (|alpha * (b - a)| >= 1e6) and b == a gives a, as with
 * the uncapped factor. */
static float blend_alpha(double f) { return (float)(f > 1e6 ? 1e6 : f); }

SERE_WIDE_SIMD static void blend_with(uint8_t *restrict px, size_t n, int a, float alpha) {
  for (size_t i = 0; i < n; i++) px[i] = blend(a, px[i], alpha);
}

SERE_WIDE_SIMD static int64_t gray_sum(const uint8_t *restrict px, size_t n) {
  int64_t sum = 0;
  for (size_t i = 0; i < n; i++) sum += gray_of(px[3 * i], px[3 * i + 1], px[3 * i + 2]);
  return sum;
}

SERE_WIDE_SIMD static void saturate(uint8_t *restrict px, size_t n, float alpha) {
  for (size_t i = 0; i < n; i++) {
    uint8_t *p = px + 3 * i;
    int y = gray_of(p[0], p[1], p[2]);
    for (int c = 0; c < 3; c++) p[c] = blend(y, p[c], alpha);
  }
}

SERE_WIDE_SIMD void sere_grayscale(sere_image *img) {
  size_t n = (size_t)img->w * img->h;
  uint8_t *restrict px = img->px;
  for (size_t i = 0; i < n; i++) {
    uint8_t *p = px + 3 * i;
    p[0] = p[1] = p[2] = (uint8_t)gray_of(p[0], p[1], p[2]);
  }
}

/* round() (half away from zero) for 0 <= x < 2^31; x - t is exact there. */
static inline int round_nonneg(double x) {
  int t = (int)x;
  return t + (x - (double)t >= 0.5);
}

/* a if cond else b, with bit masks: GCC turns ?: chains into branches
 * here, which stop vectorisation. */
static inline int select_int(int cond, int a, int b) {
  int m = -(cond != 0);
  return (a & m) | (b & ~m);
}

/* Pillow's RGB -> 8-bit HSV -> RGB (Convert.c: rgb2hsv_row, hsv2rgb), with
 * `shift` added to the hue byte modulo 256 in between; the mix of float
 * and double arithmetic is Pillow's and matters for the last bit.
 *
 * Written without branches, and with exact rewrites of Pillow's steps:
 *  - Of the quotients (max - c) / (max - min) that Pillow's hue uses, the
 *    one for the minimum channel is exactly 1 and the one for the maximum
 *    0, so only q = (max - mid) / (max - min) is divided out (float, as in
 *    Pillow); each of Pillow's six hue expressions is then base +- q, and
 *    computed in double it is exact (q has 24 bits, >= 2^-8 or 0), so
 *    rounding it to float once gives Pillow's float result. Ties between
 *    channels give the same value whichever case takes them.
 *  - fmod(x, 1) for x = h / 6 + 1 in [5/6, 11/6] is x - (int)x (exact);
 *    floor of a non-negative value is (int).
 *  - v (1 - fs) and v (1 - fs f) are exact in double (fs >= 1/255 and
 *    fs f >= 2^-15 have 24-bit mantissas, v 8 bits), and so is adding 0.5,
 *    so (int)(x + 0.5) is their round(); v (1 - fs (1 - f)) is rounded in
 *    double and keeps Pillow's round().
 * Divisors are kept nonzero for grey pixels, whose result is replaced by
 * the grey itself (Pillow's hue and saturation 0 give back v, v, v). */
SERE_WIDE_SIMD static void hue_shift(uint8_t *restrict px, size_t n, int shift) {
  for (size_t i = 0; i < n; i++) {
    uint8_t *p = px + 3 * i;
    int r = p[0], g = p[1], b = p[2];
    int maxc = r > g ? r : g;
    maxc = maxc > b ? maxc : b;
    int minc = r < g ? r : g;
    minc = minc < b ? minc : b;
    int cr = maxc - minc, mid = r + g + b - maxc - minc;
    /* rgb2hsv */
    float crf = (float)(cr | (cr == 0)), s = (float)cr / (float)(maxc | (maxc == 0));
    double q = (double)((float)(maxc - mid) / crf);
    /* r max: b - g quotients (b min: 1 - q, g min: q - 1); g max: 2 + r - b
     * (b min: 1 + q, r min: 3 - q); b max: 4 + g - r (r min: 3 + q, g min:
     * 5 - q). */
    int r_max = r == maxc, g_max = !r_max & (g == maxc);
    int up = select_int(r_max, g < b, select_int(g_max, b <= r, r <= g)); /* base + q, else base - q */
    double base = (double)select_int(r_max, -1 + 2 * !up, select_int(g_max, 3 - 2 * up, 5 - 2 * up));
    float hf = (float)(base + (double)(2 * up - 1) * q);
    double x = (double)hf / 6.0 + 1.0;
    hf = (float)(x - (double)(int)x);
    int hue = (clamp_u8((int)((double)hf * 255.0)) + shift) & 255;
    int sat = clamp_u8((int)((double)s * 255.0));
    /* hsv2rgb */
    double h6 = (double)(float)hue * 6.0 / 255.0;
    int sector = (int)h6;
    float f = (float)(h6 - (double)(float)sector);
    sector -= 6 * (sector == 6);
    float fs = (float)((double)(float)sat / 255.0);
    double v = (double)(float)maxc;
    int vp = (int)(v * (1.0 - (double)fs) + 0.5);
    int vq = (int)(v * (1.0 - (double)(fs * f)) + 0.5);
    int vt = round_nonneg(v * (1.0 - (double)fs * (1.0 - (double)f)));
    int keep = (cr == 0) | (sat == 0);
    int r_is_v = keep | (sector == 0) | (sector == 5), g_is_v = keep | (sector == 1) | (sector == 2);
    int b_is_v = keep | (sector == 3) | (sector == 4);
    p[0] = (uint8_t)select_int(r_is_v, maxc, select_int(sector == 1, vq, select_int(sector == 4, vt, vp)));
    p[1] = (uint8_t)select_int(g_is_v, maxc, select_int(sector == 0, vt, select_int(sector == 3, vq, vp)));
    p[2] = (uint8_t)select_int(b_is_v, maxc, select_int(sector == 2, vt, select_int(sector == 5, vq, vp)));
  }
}

int sere_color_adjust(sere_image *img, sere_jitter_op op, double f) {
  size_t n = (size_t)img->w * img->h;
  switch (op) {
  case SERE_JITTER_BRIGHTNESS:
  case SERE_JITTER_CONTRAST:
  case SERE_JITTER_SATURATION: {
    static const char *const names[3] = {"brightness", "contrast", "saturation"};
    if (!(f >= 0)) {
      sere_fail("augment_color: %s factor must be >= 0, got %g", names[op], f);
      return -1;
    }
    if (op == SERE_JITTER_SATURATION) {
      saturate(img->px, n, blend_alpha(f));
      return 0;
    }
    int mu = 0;
    if (op == SERE_JITTER_CONTRAST) mu = n ? (int)floor((double)gray_sum(img->px, n) / (double)n + 0.5) : 0;
    blend_with(img->px, 3 * n, mu, blend_alpha(f));
    return 0;
  }
  case SERE_JITTER_HUE: {
    if (!(f >= -0.5 && f <= 0.5)) {
      sere_fail("augment_color: hue factor must be in [-0.5, 0.5], got %g", f);
      return -1;
    }
    /* torchvision adds np.uint8(f * 255): truncation toward zero, then
     * wrap-around modulo 256. */
    hue_shift(img->px, n, ((int)(f * 255) % 256 + 256) % 256);
    return 0;
  }
  }
  sere_fail("augment_color: unknown operation %d", (int)op);
  return -1;
}
