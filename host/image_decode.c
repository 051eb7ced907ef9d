/* image_decode.c — JPEG and PNG decoding to 8-bit RGB, and the PNG writer
 * (see image_decode.h for the rules and the DCT-scaling hint).
 *
 * JPEG goes through TurboJPEG with its default (accurate integer DCT, fancy
 * upsampling) settings, which give exactly Pillow's pixels. libjpeg warnings
 * (e.g. extraneous bytes before a marker) are tolerated as Pillow does,
 * except "premature end of file": Pillow refuses truncated files, so do we.
 *
 * PNG goes through libpng with an error callback that longjmps back into
 * png_run; everything png_run allocates lives in the png_job the caller
 * owns, so the caller frees it on both paths and nothing leaks. */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "image_decode.h"
#include "tensor.h"

static int fail(const char *fmt, const char *name, const char *detail) {
  sere_fail(fmt, name, detail);
  return -1;
}

static int check_size(const char *name, int64_t w, int64_t h) {
  if (w <= 0 || h <= 0) {
    sere_fail("%s: image has an empty size %lldx%lld", name, (long long)w, (long long)h);
    return -1;
  }
  if (w > SERE_IMAGE_MAX_SIDE || h > SERE_IMAGE_MAX_SIDE || w * h > SERE_IMAGE_MAX_PIXELS) {
    sere_fail("%s: image size %lldx%lld is beyond the limit (sides <= %d, at most %lld pixels)", name,
              (long long)w, (long long)h, SERE_IMAGE_MAX_SIDE, (long long)SERE_IMAGE_MAX_PIXELS);
    return -1;
  }
  return 0;
}

sere_image_format sere_image_sniff(const void *data, size_t len) {
  const uint8_t *p = data;
  static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (len >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return SERE_IMAGE_JPEG;
  if (len >= 8 && memcmp(p, png_magic, 8) == 0) return SERE_IMAGE_PNG;
  return SERE_IMAGE_UNKNOWN;
}

void sere_image_free(sere_image *img) {
  free(img->px);
  img->px = NULL;
  img->w = img->h = 0;
}

/* ---- JPEG ------------------------------------------------------------ */

static int jpeg_header(tjhandle tj, const void *data, size_t len, const char *name, int *w, int *h, int *cs) {
  int subsamp;
  if (tjDecompressHeader3(tj, data, (unsigned long)len, w, h, &subsamp, cs))
    return fail("%s: not a readable JPEG: %s", name, tjGetErrorStr2(tj));
  return check_size(name, *w, *h);
}

int sere_decode_denom(const sere_decode_hint *hint) {
  int best = 1;
  if (!hint || hint->out_w <= 0 || hint->out_h <= 0) return best;
  for (int d = 2; d <= 8; d *= 2) {
    tjscalingfactor f = {1, d};
    if (TJSCALED(hint->crop_w, f) >= hint->out_w && TJSCALED(hint->crop_h, f) >= hint->out_h) best = d;
  }
  return best;
}

/* Adobe-inverted CMYK to RGB in place (R = C*K/255 rounded, ...), the rule
 * Pillow applies. Writing 3 bytes per pixel never overtakes reading 4. */
static void cmyk_to_rgb(uint8_t *px, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    unsigned c = px[4 * i], m = px[4 * i + 1], y = px[4 * i + 2], k = px[4 * i + 3];
    px[3 * i] = (uint8_t)((c * k + 127) / 255);
    px[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
    px[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
  }
}

static int decode_jpeg(tjhandle tj, const void *data, size_t len, const char *name, int denom, sere_image *out,
                       int *used) {
  int w, h, cs;
  if (jpeg_header(tj, data, len, name, &w, &h, &cs)) return -1;
  tjscalingfactor sf = {1, denom};
  int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
  int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
  uint8_t *px = malloc((size_t)sw * sh * (cmyk ? 4 : 3));
  if (!px) return fail("%s: out of memory decoding a %s image", name, "JPEG");
  if (tjDecompress2(tj, data, (unsigned long)len, px, sw, 0, sh, cmyk ? TJPF_CMYK : TJPF_RGB, 0)) {
    const char *msg = tjGetErrorStr2(tj);
    if (tjGetErrorCode(tj) == TJERR_FATAL || strstr(msg, "Premature end")) {
      free(px);
      return fail("%s: JPEG data is corrupt or truncated: %s", name, msg);
    }
  }
  if (cmyk) {
    cmyk_to_rgb(px, (int64_t)sw * sh);
    uint8_t *shrunk = realloc(px, (size_t)sw * sh * 3);
    if (shrunk) px = shrunk;
  }
  out->w = sw;
  out->h = sh;
  out->px = px;
  if (used) *used = denom;
  return 0;
}

/* ---- PNG ------------------------------------------------------------- */

/* libpng reports errors by calling back; both the reader's and the
 * writer's state start with this, the callback's error pointer. */
typedef struct png_error {
  jmp_buf jump;
  char msg[256];
} png_failure;

static void png_on_error(png_structp png, png_const_charp msg) {
  png_failure *e = png_get_error_ptr(png);
  snprintf(e->msg, sizeof e->msg, "%s", msg);
  longjmp(e->jump, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {} /* e.g. the harmless iCCP warning */

typedef struct png_job {
  png_failure err; /* first: the error pointer libpng is given */
  const uint8_t *data;
  size_t len, pos;
  const char *name;
  png_structp png;
  png_infop info;
  uint8_t *px;
  png_bytep *rows;
} png_job;

static void png_read_memory(png_structp png, png_bytep dst, png_size_t n) {
  png_job *job = png_get_io_ptr(png);
  if (n > job->len - job->pos) png_error(png, "file is truncated");
  memcpy(dst, job->data + job->pos, n);
  job->pos += n;
}

/* Reads the header (and, if `decode`, the pixels) of job's PNG. Every
 * allocation goes into `job`, which decode_png frees whatever happens. */
static int png_run(png_job *job, int *w_out, int *h_out, int decode) {
  if (setjmp(job->err.jump)) return fail("%s: PNG data is corrupt or truncated: %s", job->name, job->err.msg);
  job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job->err, png_on_error, png_on_warning);
  if (!job->png) return fail("%s: cannot start the %s decoder", job->name, "PNG");
  job->info = png_create_info_struct(job->png);
  if (!job->info) return fail("%s: cannot start the %s decoder", job->name, "PNG");
  png_set_read_fn(job->png, job, png_read_memory);
  png_set_user_limits(job->png, SERE_IMAGE_MAX_SIDE, SERE_IMAGE_MAX_SIDE);
  png_read_info(job->png, job->info);
  png_uint_32 w, h;
  int depth, type;
  png_get_IHDR(job->png, job->info, &w, &h, &depth, &type, NULL, NULL, NULL);
  if (check_size(job->name, w, h)) return -1;
  *w_out = (int)w;
  *h_out = (int)h;
  if (!decode) return 0;

  /* Reference rules: palettes expanded, grey copied to R, G, B, 16 bits
   * cut to the high byte, alpha (and tRNS, which expansion turns into
   * alpha) dropped rather than composited. */
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(job->png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(job->png);
  if (depth == 16) png_set_strip_16(job->png);
  if (!(type & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(job->png);
  png_set_strip_alpha(job->png);
  png_set_interlace_handling(job->png);
  png_read_update_info(job->png, job->info);
  if (png_get_rowbytes(job->png, job->info) != (size_t)w * 3) png_error(job->png, "unexpected row layout");

  job->px = malloc((size_t)w * h * 3);
  job->rows = malloc(sizeof *job->rows * h);
  if (!job->px || !job->rows) return fail("%s: out of memory decoding a %s image", job->name, "PNG");
  for (png_uint_32 y = 0; y < h; y++) job->rows[y] = job->px + (size_t)y * w * 3;
  png_read_image(job->png, job->rows);
  return 0; /* trailing chunks (and IEND) are not needed: all pixels are in */
}

static int decode_png(const void *data, size_t len, const char *name, sere_image *out, int *w, int *h) {
  png_job job = {.data = data, .len = len, .name = name};
  int rc = png_run(&job, w, h, out != NULL);
  png_destroy_read_struct(job.png ? &job.png : NULL, job.info ? &job.info : NULL, NULL);
  free(job.rows);
  if (rc || !out) {
    free(job.px);
    return rc;
  }
  out->w = *w;
  out->h = *h;
  out->px = job.px;
  return 0;
}

/* ---- entry points ---------------------------------------------------- */

static int unknown_format(const char *name, size_t len) {
  if (len == 0) return fail("%s: the file is empty%s", name, "");
  return fail("%s: not a JPEG or PNG file%s", name, " (unrecognised first bytes)");
}

int sere_image_probe(const void *data, size_t len, const char *name, sere_image_format *format, int *w, int *h) {
  sere_image_format f = sere_image_sniff(data, len);
  if (format) *format = f;
  if (f == SERE_IMAGE_PNG) return decode_png(data, len, name, NULL, w, h);
  if (f != SERE_IMAGE_JPEG) return unknown_format(name, len);
  tjhandle tj = tjInitDecompress();
  if (!tj) return fail("%s: cannot start the JPEG decoder: %s", name, tjGetErrorStr2(NULL));
  int cs, rc = jpeg_header(tj, data, len, name, w, h, &cs);
  tjDestroy(tj);
  return rc;
}

int sere_image_decode_scaled(const void *data, size_t len, const char *name, int denom, sere_image *out, int *used) {
  out->w = out->h = 0;
  out->px = NULL;
  if (used) *used = 1;
  if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
    sere_fail("%s: the scale denominator must be 1, 2, 4 or 8, got %d", name, denom);
    return -1;
  }
  sere_image_format f = sere_image_sniff(data, len);
  if (f == SERE_IMAGE_PNG) {
    int w, h;
    return decode_png(data, len, name, out, &w, &h);
  }
  if (f != SERE_IMAGE_JPEG) return unknown_format(name, len);
  tjhandle tj = tjInitDecompress();
  if (!tj) return fail("%s: cannot start the JPEG decoder: %s", name, tjGetErrorStr2(NULL));
  int rc = decode_jpeg(tj, data, len, name, denom, out, used);
  tjDestroy(tj);
  return rc;
}

int sere_image_decode(const void *data, size_t len, const char *name, const sere_decode_hint *hint,
                      sere_image *out, int *denom) {
  return sere_image_decode_scaled(data, len, name, sere_decode_denom(hint), out, denom);
}

int sere_file_read(const char *path, uint8_t **data, size_t *len) {
  *data = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return fail("%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return fail("%s: not a regular file%s", path, "");
  }
  if ((uint64_t)st.st_size > SERE_IMAGE_MAX_FILE_BYTES) {
    fclose(f);
    sere_fail("%s: file of %lld bytes is larger than the %zu-byte limit for images", path, (long long)st.st_size,
              SERE_IMAGE_MAX_FILE_BYTES);
    return -1;
  }
  size_t n = (size_t)st.st_size;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) {
    fclose(f);
    return fail("%s: out of memory reading the file%s", path, "");
  }
  size_t got = fread(buf, 1, n, f);
  int err = ferror(f);
  fclose(f);
  if (err || got != n) {
    free(buf);
    return fail("%s: read error: %s", path, err ? strerror(errno) : "the file changed size");
  }
  *data = buf;
  *len = n;
  return 0;
}

/* ---- PNG writer ------------------------------------------------------ */

typedef struct png_out {
  png_failure err; /* first: the error pointer libpng is given */
  FILE *f;
  png_structp png;
  png_infop info;
} png_out;

static int write_png_rows(png_out *o, const char *path, const sere_image *img) {
  if (setjmp(o->err.jump)) return fail("%s: PNG writer failed: %s", path, o->err.msg);
  o->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &o->err, png_on_error, png_on_warning);
  if (!o->png) return fail("%s: cannot start the %s encoder", path, "PNG");
  o->info = png_create_info_struct(o->png);
  if (!o->info) return fail("%s: cannot start the %s encoder", path, "PNG");
  png_init_io(o->png, o->f);
  png_set_IHDR(o->png, o->info, img->w, img->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(o->png, o->info);
  for (int y = 0; y < img->h; y++) png_write_row(o->png, img->px + (size_t)y * img->w * 3);
  png_write_end(o->png, o->info);
  return 0;
}

int sere_image_write_png(const char *path, const sere_image *img) {
  if (check_size(path, img->w, img->h)) return -1;
  size_t n = strlen(path) + 32;
  char *tmp = malloc(n);
  if (!tmp) return fail("%s: out of memory%s", path, "");
  snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
  png_out o = {.f = fopen(tmp, "wb")};
  if (!o.f) {
    sere_fail("%s: cannot create the temporary file '%s': %s", path, tmp, strerror(errno));
    free(tmp);
    return -1;
  }
  int rc = write_png_rows(&o, path, img);
  png_destroy_write_struct(o.png ? &o.png : NULL, o.info ? &o.info : NULL);
  if (rc == 0 && (fflush(o.f) != 0 || fsync(fileno(o.f)) != 0)) rc = fail("%s: cannot write: %s", path, strerror(errno));
  if (fclose(o.f) != 0 && rc == 0) rc = fail("%s: cannot write: %s", path, strerror(errno));
  if (rc == 0 && rename(tmp, path) != 0) rc = fail("%s: cannot rename the temporary file over it: %s", path, strerror(errno));
  if (rc) unlink(tmp);
  free(tmp);
  return rc;
}
