/* augment.c — geometric and filter image ops of method.md 5.2-5.4 on 8-bit
 * RGB images, byte-exact with Pillow 9.4: antialiased bicubic resize,
 * horizontal flip, the 3-pass extended box blur that Pillow calls a
 * Gaussian blur, solarise, ToTensor + Normalize, and the whole per-crop
 * pipeline that chains them with the colour ops of augment_color.c.
 *
 * The resize follows Pillow's two-pass scheme: per output column (row) a
 * run of input pixels with integer weights of 22 fractional bits,
 * horizontal pass first into an 8-bit intermediate, then vertical. The
 * weights depend only on the sizes, so they are computed once per axis. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "ops.h"

#define RESIZE_BITS 22 /* Pillow's PRECISION_BITS = 32 - 8 - 2 */

static double bicubic_kernel(double x) {
  const double a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/* Per output pixel j: first input pixel start[j], count n[j] and weights
 * k[j * ksize ..] (fixed point). */
typedef struct {
  int *start, *n;
  int32_t *k;
  int ksize;
} axis_weights;

static void axis_weights_free(axis_weights *a) {
  free(a->start);
  free(a->k);
}

static int axis_weights_init(axis_weights *a, int in_size, int out_size) {
  double scale = (double)in_size / out_size;
  double fscale = scale < 1 ? 1 : scale;
  double support = 2 * fscale;
  a->ksize = (int)ceil(support) * 2 + 1;
  a->start = malloc(sizeof(int) * 2 * (size_t)out_size);
  a->k = malloc(sizeof(int32_t) * (size_t)a->ksize * out_size);
  double *w = malloc(sizeof(double) * (size_t)a->ksize);
  if (!a->start || !a->k || !w) {
    free(w);
    axis_weights_free(a);
    sere_fail("augment_resize: out of memory for %d -> %d weights", in_size, out_size);
    return -1;
  }
  a->n = a->start + out_size;
  for (int j = 0; j < out_size; j++) {
    double centre = (j + 0.5) * scale;
    /* (int) truncates toward zero, as in Pillow; centre - support + 0.5 can
     * be negative, and is then clamped to 0 anyway. */
    int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in_size) hi = in_size;
    double sum = 0;
    for (int i = lo; i < hi; i++) sum += w[i - lo] = bicubic_kernel((i - centre + 0.5) / fscale);
    int32_t *k = a->k + (size_t)j * a->ksize;
    for (int i = 0; i < hi - lo; i++) {
      double v = sum != 0 ? w[i] / sum : w[i];
      k[i] = (int32_t)(v < 0 ? v * (1 << RESIZE_BITS) - 0.5 : v * (1 << RESIZE_BITS) + 0.5);
    }
    a->start[j] = lo;
    a->n[j] = hi - lo;
  }
  free(w);
  return 0;
}

static inline uint8_t clip_fixed(int32_t v) {
  if (v <= 0) return 0;
  if (v >= (255 << RESIZE_BITS)) return 255;
  return (uint8_t)(v >> RESIZE_BITS);
}

/* Horizontal pass: rows of `src` (row stride src_stride bytes, starting at
 * column x0) -> rows of out_w pixels. */
static void resize_rows(const uint8_t *src, size_t src_stride, int x0, int rows, const axis_weights *a, int out_w,
                        uint8_t *dst) {
  for (int y = 0; y < rows; y++) {
    const uint8_t *in = src + (size_t)y * src_stride + 3 * (size_t)x0;
    uint8_t *out = dst + (size_t)y * 3 * out_w;
    for (int j = 0; j < out_w; j++) {
      const uint8_t *p = in + 3 * a->start[j];
      const int32_t *k = a->k + (size_t)j * a->ksize;
      int32_t s0 = 1 << (RESIZE_BITS - 1), s1 = s0, s2 = s0;
      for (int i = 0; i < a->n[j]; i++) {
        s0 += p[3 * i] * k[i];
        s1 += p[3 * i + 1] * k[i];
        s2 += p[3 * i + 2] * k[i];
      }
      out[3 * j] = clip_fixed(s0);
      out[3 * j + 1] = clip_fixed(s1);
      out[3 * j + 2] = clip_fixed(s2);
    }
  }
}

/* Vertical pass over rows of `len` bytes; accumulates whole rows so the
 * inner loop runs along contiguous memory. */
static void resize_cols(const uint8_t *src, size_t len, const axis_weights *a, int out_h, int32_t *acc, uint8_t *dst) {
  for (int j = 0; j < out_h; j++) {
    const int32_t *k = a->k + (size_t)j * a->ksize;
    for (size_t c = 0; c < len; c++) acc[c] = 1 << (RESIZE_BITS - 1);
    for (int i = 0; i < a->n[j]; i++) {
      const uint8_t *row = src + (size_t)(a->start[j] + i) * len;
      int32_t w = k[i];
      for (size_t c = 0; c < len; c++) acc[c] += row[c] * w;
    }
    uint8_t *out = dst + (size_t)j * len;
    for (size_t c = 0; c < len; c++) out[c] = clip_fixed(acc[c]);
  }
}

int sere_resize_bicubic(const sere_image *src, sere_box box, int out_w, int out_h, uint8_t *out) {
  if (box.w <= 0 || box.h <= 0 || box.x < 0 || box.y < 0 || box.x + box.w > src->w || box.y + box.h > src->h) {
    sere_fail("augment_resize: box (x=%d, y=%d, w=%d, h=%d) is not inside the %dx%d image", box.x, box.y, box.w,
              box.h, src->w, src->h);
    return -1;
  }
  if (out_w <= 0 || out_h <= 0 || out_w > SERE_IMAGE_MAX_SIDE || out_h > SERE_IMAGE_MAX_SIDE) {
    sere_fail("augment_resize: output size %dx%d must be positive and at most %d", out_w, out_h, SERE_IMAGE_MAX_SIDE);
    return -1;
  }
  axis_weights ax, ay;
  if (axis_weights_init(&ax, box.w, out_w)) return -1;
  if (axis_weights_init(&ay, box.h, out_h)) { axis_weights_free(&ax); return -1; }
  /* Only the rows the vertical pass reads go through the horizontal pass. */
  int y_first = ay.start[0], y_end = ay.start[out_h - 1] + ay.n[out_h - 1];
  size_t len = 3 * (size_t)out_w;
  uint8_t *tmp = malloc(len * (size_t)(y_end - y_first));
  int32_t *acc = malloc(sizeof(int32_t) * len);
  if (!tmp || !acc) {
    free(tmp);
    free(acc);
    axis_weights_free(&ax);
    axis_weights_free(&ay);
    sere_fail("augment_resize: out of memory");
    return -1;
  }
  size_t stride = 3 * (size_t)src->w;
  resize_rows(src->px + (size_t)(box.y + y_first) * stride, stride, box.x, y_end - y_first, &ax, out_w, tmp);
  for (int j = 0; j < out_h; j++) ay.start[j] -= y_first;
  resize_cols(tmp, len, &ay, out_h, acc, out);
  free(tmp);
  free(acc);
  axis_weights_free(&ax);
  axis_weights_free(&ay);
  return 0;
}

void sere_hflip(sere_image *img) {
  for (int y = 0; y < img->h; y++) {
    uint8_t *row = img->px + (size_t)y * 3 * img->w;
    for (int a = 0, b = img->w - 1; a < b; a++, b--) {
      for (int c = 0; c < 3; c++) {
        uint8_t t = row[3 * a + c];
        row[3 * a + c] = row[3 * b + c];
        row[3 * b + c] = t;
      }
    }
  }
}

void sere_solarize(sere_image *img) {
  size_t n = 3 * (size_t)img->w * img->h;
  for (size_t i = 0; i < n; i++) img->px[i] = img->px[i] >= 128 ? 255 - img->px[i] : img->px[i];
}

/* One extended-box pass down the columns of a rows x len byte array:
 * out[y] = ww * sum(in[y-r .. y+r]) + fw * (in[y-r-1] + in[y+r+1]), rows
 * clamped to the array (edge replication), rounded from 24-bit fixed
 * point. Like Pillow we keep a running sum, in exact integer arithmetic,
 * here one per column so the inner loops run along contiguous rows. */
static void box_blur_cols(const uint8_t *src, uint8_t *dst, int rows, size_t len, int r, uint32_t ww, uint32_t fw,
                          uint32_t *acc) {
#define ROW(i) (src + (size_t)((i) < 0 ? 0 : (i) >= rows ? rows - 1 : (i)) * len)
  for (size_t c = 0; c < len; c++) acc[c] = 0;
  for (int i = -r; i <= r; i++) {
    const uint8_t *p = ROW(i);
    for (size_t c = 0; c < len; c++) acc[c] += p[c];
  }
  for (int y = 0; y < rows; y++) {
    const uint8_t *far0 = ROW(y - r - 1), *far1 = ROW(y + r + 1), *old = ROW(y - r);
    uint8_t *out = dst + (size_t)y * len;
    for (size_t c = 0; c < len; c++) {
      out[c] = (uint8_t)((acc[c] * ww + (uint32_t)(far0[c] + far1[c]) * fw + (1u << 23)) >> 24);
      acc[c] += (uint32_t)far1[c] - old[c];
    }
  }
#undef ROW
}

/* dst (h x w pixels) = src (w x h pixels) transposed. */
static void transpose_rgb(const uint8_t *src, int w, int h, uint8_t *dst) {
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++) dst[3 * ((size_t)x * h + y) + c] = src[3 * ((size_t)y * w + x) + c];
}

int sere_gaussian_blur(sere_image *img, double sigma) {
  if (!(sigma >= 0) || sigma > 1e4) {
    sere_fail("augment_blur: sigma must be in [0, 1e4], got %g", sigma);
    return -1;
  }
  if (sigma == 0) return 0;
  /* Pillow computes the box radius in single precision; so must we. */
  float s2 = (float)sigma * (float)sigma / 3;
  float L = (float)sqrt(12.0 * s2 + 1.0);
  float l = (float)floor((L - 1.0) / 2.0);
  float a = (2 * l + 1) * (l * (l + 1) - 3 * s2);
  a /= 6 * (s2 - (l + 1) * (l + 1));
  float radius = l + a;
  int r = (int)radius;
  uint32_t ww = (uint32_t)((float)(1 << 24) / (radius * 2 + 1));
  uint32_t fw = ((1u << 24) - (uint32_t)(r * 2 + 1) * ww) / 2;
  int w = img->w, h = img->h;
  size_t n = 3 * (size_t)w * h;
  uint8_t *t0 = calloc(n, 1), *t1 = malloc(n); /* calloc: quiets a false -Wmaybe-uninitialized */
  uint32_t *acc = malloc(sizeof(uint32_t) * 3 * (size_t)(w > h ? w : h));
  if (!t0 || !t1 || !acc) {
    free(t0);
    free(t1);
    free(acc);
    sere_fail("augment_blur: out of memory");
    return -1;
  }
  /* Pillow blurs rows (3 passes) then columns (3 passes). Rows are blurred
   * as the columns of the transposed image: t0 <-> t1 ping-pong. */
  transpose_rgb(img->px, w, h, t0);
  box_blur_cols(t0, t1, w, 3 * (size_t)h, r, ww, fw, acc);
  box_blur_cols(t1, t0, w, 3 * (size_t)h, r, ww, fw, acc);
  box_blur_cols(t0, t1, w, 3 * (size_t)h, r, ww, fw, acc);
  transpose_rgb(t1, h, w, t0);
  box_blur_cols(t0, t1, h, 3 * (size_t)w, r, ww, fw, acc);
  box_blur_cols(t1, t0, h, 3 * (size_t)w, r, ww, fw, acc);
  box_blur_cols(t0, img->px, h, 3 * (size_t)w, r, ww, fw, acc);
  free(t0);
  free(t1);
  free(acc);
  return 0;
}

void sere_normalize_to_chw(const sere_image *img, const float mean[3], const float std[3], float *out) {
  float lut[3][256];
  for (int c = 0; c < 3; c++)
    for (int v = 0; v < 256; v++) lut[c][v] = ((float)v / 255.0f - mean[c]) / std[c];
  size_t n = (size_t)img->w * img->h;
  for (int c = 0; c < 3; c++) {
    float *plane = out + c * n;
    const uint8_t *p = img->px + c;
    for (size_t i = 0; i < n; i++) plane[i] = lut[c][p[3 * i]];
  }
}

int sere_augment_crop(const sere_image *src, const sere_crop_recipe *rc, const sere_crop_params *p, uint8_t *out) {
  if (sere_resize_bicubic(src, p->box, rc->size, rc->size, out)) return -1;
  sere_image img = {rc->size, rc->size, out};
  if (p->flip) sere_hflip(&img);
  if (p->jitter)
    for (int i = 0; i < 4; i++)
      if (sere_color_adjust(&img, (sere_jitter_op)p->order[i], p->factor[p->order[i]])) return -1;
  if (p->gray) sere_grayscale(&img);
  if (p->blur && sere_gaussian_blur(&img, p->sigma)) return -1;
  if (p->solarize) sere_solarize(&img);
  return 0;
}
