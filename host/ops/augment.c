/* augment.c — geometric and filter image ops of method.md 5.2-5.4 on 8-bit
 * RGB images, byte-exact with Pillow 9.4: antialiased bicubic resize,
 * horizontal flip, the 3-pass extended box blur that Pillow calls a
 * Gaussian blur, solarise, ToTensor + Normalize, and the whole per-crop
 * pipeline that chains them with the colour ops of augment_color.c.
 *
 * Speed. Both filters are separable, and a filter along the columns of an
 * image runs along contiguous memory: every output row is a weighted sum
 * of whole input rows, which vectorises (combine_rows, box_blur_cols). A
 * filter along the rows therefore runs on the transposed image: the resize
 * transposes the input box, filters, and transposes back before its
 * vertical pass; the blur does the same around its horizontal passes. The
 * arithmetic is Pillow's integer arithmetic, so the order of the sums does
 * not matter. The hot loops are compiled for AVX-512 and AVX2 too
 * (SERE_WIDE_SIMD); the weights are computed outside them, and FMA
 * contraction is off in this file, so the double-precision steps round as
 * Pillow's do. Buffers come from a caller's sere_scratch. */
#pragma GCC optimize("fp-contract=off")
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "ops.h"
#include "vecmath.h"

#define RESIZE_BITS 22 /* Pillow's PRECISION_BITS = 32 - 8 - 2 */
#define LANES 64       /* bytes per step of the row kernels; rows are padded to a multiple */

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* ---- scratch memory ---------------------------------------------------- */

void *sere_scratch_reserve(sere_scratch *s, size_t bytes, const char *op) {
  if (bytes <= s->cap) return s->buf;
  sere_scratch_free(s);
  size_t cap = round_up(bytes + bytes / 4, 64);
  s->buf = aligned_alloc(64, cap);
  if (!s->buf) {
    sere_fail("%s: out of memory for %zu bytes of scratch space", op, cap);
    return NULL;
  }
  memset(s->buf, 0, cap); /* row padding is read (and ignored) by the row kernels */
  s->cap = cap;
  return s->buf;
}

void sere_scratch_free(sere_scratch *s) {
  free(s->buf);
  s->buf = NULL;
  s->cap = 0;
}

/* Hands out consecutive 64-byte aligned pieces of a reserved block. */
typedef struct {
  uint8_t *next;
} carver;

static void *carve(carver *c, size_t bytes) {
  void *p = c->next;
  c->next += round_up(bytes, 64);
  return p;
}

/* ---- transposes and the row kernel ------------------------------------- */

/* dst row x, pixel y = src row y, pixel x, for a block of `rows` x `cols`
 * 3-byte pixels (row strides in bytes). Pixels move as 4-byte words, tiled
 * so that both sides stay in cache: each store spills one byte into the
 * next pixel of its dst row, which is written after it, and each load reads
 * one byte past its pixel. The last src row goes byte by byte, so that
 * neither side ever touches a byte beyond the last pixel of its buffer. */
static void transpose_rgb(const uint8_t *src, size_t src_stride, int rows, int cols, uint8_t *dst,
                          size_t dst_stride) {
  enum { TILE = 16 };
  for (int y0 = 0; y0 < rows - 1; y0 += TILE) {
    int y1 = y0 + TILE < rows - 1 ? y0 + TILE : rows - 1;
    for (int x0 = 0; x0 < cols; x0 += TILE) {
      int x1 = x0 + TILE < cols ? x0 + TILE : cols;
      for (int x = x0; x < x1; x++) {
        const uint8_t *s = src + (size_t)y0 * src_stride + 3 * (size_t)x;
        uint8_t *d = dst + (size_t)x * dst_stride + 3 * (size_t)y0;
        for (int y = y0; y < y1; y++, s += src_stride, d += 3) {
          uint32_t v;
          memcpy(&v, s, 4);
          memcpy(d, &v, 4);
        }
      }
    }
  }
  const uint8_t *last = src + (size_t)(rows - 1) * src_stride;
  for (int x = 0; x < cols; x++) memcpy(dst + (size_t)x * dst_stride + 3 * (size_t)(rows - 1), last + 3 * x, 3);
}

/* Pillow's clip8 of a 22-bit fixed-point sum. */
static inline uint8_t clip_fixed(int32_t v) {
  v = v < 0 ? 0 : v;
  v = v > (255 << RESIZE_BITS) ? 255 << RESIZE_BITS : v;
  return (uint8_t)(v >> RESIZE_BITS);
}

/* dst[c] = clip(sum_i k[i] * src[i * stride + c]) for c < len: one output
 * row of a resize pass from n consecutive input rows. Reads every row up
 * to round_up(len, LANES) bytes; writes exactly len bytes. */
SERE_WIDE_SIMD static void combine_rows(const uint8_t *src, size_t stride, int n, const int32_t *k, size_t len,
                                        uint8_t *restrict dst) {
  for (size_t c0 = 0; c0 < len; c0 += LANES) {
    int32_t acc[LANES];
    for (int l = 0; l < LANES; l++) acc[l] = 1 << (RESIZE_BITS - 1);
    const uint8_t *row = src + c0;
    for (int i = 0; i < n; i++, row += stride) {
      int32_t w = k[i];
      for (int l = 0; l < LANES; l++) acc[l] += row[l] * w;
    }
    if (len - c0 >= LANES) {
      for (int l = 0; l < LANES; l++) dst[c0 + l] = clip_fixed(acc[l]);
    } else {
      for (size_t l = 0; l < len - c0; l++) dst[c0 + l] = clip_fixed(acc[l]);
    }
  }
}

/* ---- resize ------------------------------------------------------------- */

static double bicubic_kernel(double x) {
  const double a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/* One axis of a resize: output pixel j reads n[j] input pixels from
 * start[j] with fixed-point weights k[j * ksize ..]. */
typedef struct {
  int *start, *n;
  int32_t *k;
  int ksize;
} axis_weights;

static int axis_ksize(double length, int out_size) {
  double scale = length / out_size;
  return (int)ceil(2 * (scale < 1 ? 1 : scale)) * 2 + 1;
}

static size_t axis_bytes(int ksize, int out_size) {
  return round_up(sizeof(int) * 2 * (size_t)out_size, 64) + round_up(sizeof(int32_t) * (size_t)ksize * out_size, 64) +
         round_up(sizeof(double) * (size_t)ksize, 64);
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for the input window
 * [0, window) of which the resized region is [offset, offset + length)
 * (offset = 0 and length = window for a crop). Pieces from `c`. */
static void axis_weights_init(axis_weights *a, double offset, double length, int window, int out_size, carver *c) {
  double scale = length / out_size;
  double fscale = scale < 1 ? 1 : scale;
  double support = 2 * fscale, ss = 1.0 / fscale;
  a->ksize = axis_ksize(length, out_size);
  a->start = carve(c, sizeof(int) * 2 * (size_t)out_size);
  a->n = a->start + out_size;
  a->k = carve(c, sizeof(int32_t) * (size_t)a->ksize * out_size);
  double *w = carve(c, sizeof(double) * (size_t)a->ksize);
  for (int j = 0; j < out_size; j++) {
    double centre = offset + (j + 0.5) * scale;
    /* (int) truncates toward zero, as in Pillow; centre - support + 0.5 can
     * be negative, and is then clamped to 0 anyway. */
    int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > window) hi = window;
    double sum = 0;
    for (int i = lo; i < hi; i++) sum += w[i - lo] = bicubic_kernel((i - centre + 0.5) * ss);
    int32_t *k = a->k + (size_t)j * a->ksize;
    for (int i = 0; i < hi - lo; i++) {
      double v = sum != 0 ? w[i] / sum : w[i];
      k[i] = (int32_t)(v < 0 ? v * (1 << RESIZE_BITS) - 0.5 : v * (1 << RESIZE_BITS) + 0.5);
    }
    a->start[j] = lo;
    a->n[j] = hi - lo;
  }
}

/* The window of src pixels that the full-resolution span [pos, pos + len)
 * touches at scale 1/denom: first pixel, pixel count, and the span's offset
 * and length in window pixels. */
static void scaled_window(int pos, int len, int denom, int size, int *first, int *count, double *offset,
                          double *length) {
  double a = (double)pos / denom, b = (double)(pos + len) / denom;
  int lo = (int)floor(a), hi = (int)ceil(b);
  if (hi > size) hi = size;
  *first = lo;
  *count = hi - lo;
  *offset = a - lo;
  *length = b - a;
}

int sere_crop_source_transpose(sere_crop_source *s, sere_scratch *ws) {
  const sere_image *im = &s->img;
  uint8_t *t = sere_scratch_reserve(ws, 3 * (size_t)im->w * im->h + LANES, "augment_crop");
  if (!t) return -1;
  transpose_rgb(im->px, 3 * (size_t)im->w, im->h, im->w, t, 3 * (size_t)im->h);
  s->transposed = t;
  return 0;
}

int sere_resize_bicubic(const sere_crop_source *src, sere_box box, int out_w, int out_h, int flip, sere_scratch *ws,
                        uint8_t *out) {
  const sere_image *im = &src->img;
  int denom = src->denom;
  if (denom < 1 || denom > 8 || box.w <= 0 || box.h <= 0 || box.x < 0 || box.y < 0 ||
      (int64_t)box.x + box.w > (int64_t)im->w * denom || (int64_t)box.y + box.h > (int64_t)im->h * denom) {
    sere_fail("augment_resize: box (x=%d, y=%d, w=%d, h=%d) is not inside the %dx%d image (scale 1/%d)", box.x, box.y,
              box.w, box.h, im->w, im->h, denom);
    return -1;
  }
  if (out_w <= 0 || out_h <= 0 || out_w > SERE_IMAGE_MAX_SIDE || out_h > SERE_IMAGE_MAX_SIDE) {
    sere_fail("augment_resize: output size %dx%d must be positive and at most %d", out_w, out_h, SERE_IMAGE_MAX_SIDE);
    return -1;
  }
  int x0, nx, y0, ny;
  double ox, lx, oy, ly;
  scaled_window(box.x, box.w, denom, im->w, &x0, &nx, &ox, &lx);
  scaled_window(box.y, box.h, denom, im->h, &y0, &ny, &oy, &ly);
  int kx = axis_ksize(lx, out_w), ky = axis_ksize(ly, out_h);
  /* Row strides: a multiple of the kernel step, plus one step so that they
   * are rarely a multiple of 4 KiB (cache aliasing between the rows read
   * together). Buffers are sized for all ny rows. */
  size_t t_stride = round_up(3 * (size_t)ny, LANES) + LANES, v_stride = round_up(3 * (size_t)out_w, LANES) + LANES;
  size_t need = axis_bytes(kx, out_w) + axis_bytes(ky, out_h) + round_up((size_t)out_w * t_stride, 64) +
                round_up((size_t)ny * v_stride, 64) + (src->transposed ? 0 : round_up((size_t)nx * t_stride, 64));
  carver c = {sere_scratch_reserve(ws, need, "augment_resize")};
  if (!c.next) return -1;
  axis_weights ax, ay;
  axis_weights_init(&ax, ox, lx, nx, out_w, &c);
  axis_weights_init(&ay, oy, ly, ny, out_h, &c);
  uint8_t *th = carve(&c, (size_t)out_w * t_stride), *rows = carve(&c, (size_t)ny * v_stride);

  /* Horizontal pass on the rows the vertical pass reads, transposed: input
   * column x is row x of `cols`, output column j row j of th (out_w - 1 - j
   * when mirrored). */
  int y_first = ay.start[0], y_count = ay.start[out_h - 1] + ay.n[out_h - 1] - y_first;
  const uint8_t *cols;
  size_t c_stride;
  if (src->transposed) {
    c_stride = 3 * (size_t)im->h;
    cols = src->transposed + (size_t)x0 * c_stride + 3 * (size_t)(y0 + y_first);
  } else {
    uint8_t *t = carve(&c, (size_t)nx * t_stride);
    size_t stride = 3 * (size_t)im->w;
    transpose_rgb(im->px + (size_t)(y0 + y_first) * stride + 3 * (size_t)x0, stride, y_count, nx, t, t_stride);
    cols = t;
    c_stride = t_stride;
  }
  for (int j = 0; j < out_w; j++)
    combine_rows(cols + (size_t)ax.start[j] * c_stride, c_stride, ax.n[j], ax.k + (size_t)j * ax.ksize,
                 3 * (size_t)y_count, th + (size_t)(flip ? out_w - 1 - j : j) * t_stride);
  /* Back to rows, then the vertical pass. */
  transpose_rgb(th, t_stride, out_w, y_count, rows, v_stride);
  for (int j = 0; j < out_h; j++)
    combine_rows(rows + (size_t)(ay.start[j] - y_first) * v_stride, v_stride, ay.n[j], ay.k + (size_t)j * ay.ksize,
                 3 * (size_t)out_w, out + (size_t)j * 3 * out_w);
  return 0;
}

/* ---- flip, solarise ------------------------------------------------------ */

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

SERE_WIDE_SIMD void sere_solarize(sere_image *img) {
  size_t n = 3 * (size_t)img->w * img->h;
  uint8_t *px = img->px;
  for (size_t i = 0; i < n; i++) px[i] = px[i] >= 128 ? 255 - px[i] : px[i];
}

/* ---- Gaussian blur --------------------------------------------------------- */

/* One extended-box pass down the columns of a rows x len byte array:
 * out[y] = ww * sum(in[y-r .. y+r]) + fw * (in[y-r-1] + in[y+r+1]), rows
 * clamped to the array (edge replication), rounded from 24-bit fixed
 * point. Like Pillow we keep a running sum, in exact integer arithmetic,
 * here one per column so the inner loops run along contiguous rows. */
SERE_WIDE_SIMD static void box_blur_cols(const uint8_t *src, uint8_t *dst, int rows, size_t len, int r, uint32_t ww,
                                         uint32_t fw, uint32_t *restrict acc) {
#define ROW(i) (src + (size_t)((i) < 0 ? 0 : (i) >= rows ? rows - 1 : (i)) * len)
  for (size_t c = 0; c < len; c++) acc[c] = 0;
  for (int i = -r; i <= r; i++) {
    const uint8_t *p = ROW(i);
    for (size_t c = 0; c < len; c++) acc[c] += p[c];
  }
  for (int y = 0; y < rows; y++) {
    const uint8_t *far0 = ROW(y - r - 1), *far1 = ROW(y + r + 1), *old = ROW(y - r);
    uint8_t *restrict out = dst + (size_t)y * len;
    for (size_t c = 0; c < len; c++) {
      out[c] = (uint8_t)((acc[c] * ww + (uint32_t)(far0[c] + far1[c]) * fw + (1u << 23)) >> 24);
      acc[c] += (uint32_t)far1[c] - old[c];
    }
  }
#undef ROW
}

int sere_gaussian_blur(sere_image *img, double sigma, sere_scratch *ws) {
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
  size_t n = 3 * (size_t)w * h, side = (size_t)(w > h ? w : h);
  carver c = {sere_scratch_reserve(ws, 2 * round_up(n, 64) + round_up(sizeof(uint32_t) * 3 * side, 64), "augment_blur")};
  if (!c.next) return -1;
  uint8_t *t0 = carve(&c, n), *t1 = carve(&c, n);
  uint32_t *acc = carve(&c, sizeof(uint32_t) * 3 * side);
  /* Pillow blurs rows (3 passes) then columns (3 passes). Rows are blurred
   * as the columns of the transposed image: t0 <-> t1 ping-pong. */
  transpose_rgb(img->px, 3 * (size_t)w, h, w, t0, 3 * (size_t)h);
  box_blur_cols(t0, t1, w, 3 * (size_t)h, r, ww, fw, acc);
  box_blur_cols(t1, t0, w, 3 * (size_t)h, r, ww, fw, acc);
  box_blur_cols(t0, t1, w, 3 * (size_t)h, r, ww, fw, acc);
  transpose_rgb(t1, 3 * (size_t)h, w, h, t0, 3 * (size_t)w);
  box_blur_cols(t0, t1, h, 3 * (size_t)w, r, ww, fw, acc);
  box_blur_cols(t1, t0, h, 3 * (size_t)w, r, ww, fw, acc);
  box_blur_cols(t0, img->px, h, 3 * (size_t)w, r, ww, fw, acc);
  return 0;
}

/* ---- tensor conversion and the crop pipeline ------------------------------- */

SERE_WIDE_SIMD void sere_normalize_to_chw(const sere_image *img, const float mean[3], const float std[3], float *out) {
  size_t n = (size_t)img->w * img->h;
  const uint8_t *restrict px = img->px;
  float *restrict r = out, *restrict g = out + n, *restrict b = out + 2 * n;
  const float m0 = mean[0], m1 = mean[1], m2 = mean[2], s0 = std[0], s1 = std[1], s2 = std[2];
  for (size_t i = 0; i < n; i++) {
    r[i] = ((float)px[3 * i] / 255.0f - m0) / s0;
    g[i] = ((float)px[3 * i + 1] / 255.0f - m1) / s1;
    b[i] = ((float)px[3 * i + 2] / 255.0f - m2) / s2;
  }
}

int sere_augment_crop(const sere_crop_source *src, const sere_crop_recipe *rc, const sere_crop_params *p,
                      sere_scratch *ws, uint8_t *out) {
  if (sere_resize_bicubic(src, p->box, rc->size, rc->size, p->flip, ws, out)) return -1;
  sere_image img = {rc->size, rc->size, out};
  if (p->jitter)
    for (int i = 0; i < 4; i++)
      if (sere_color_adjust(&img, (sere_jitter_op)p->order[i], p->factor[p->order[i]])) return -1;
  if (p->gray) sere_grayscale(&img);
  if (p->blur && sere_gaussian_blur(&img, p->sigma, ws)) return -1;
  if (p->solarize) sere_solarize(&img);
  return 0;
}
