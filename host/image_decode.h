/* image_decode.h — JPEG (TurboJPEG) and PNG (libpng) files to 8-bit RGB
 * sere_images, under the reference rules of tests/data/images (those of
 * PIL's convert("RGB") except: alpha dropped, 16-bit by the high byte, EXIF
 * orientation ignored; CMYK JPEGs are Adobe-inverted).
 *
 * Untrusted input: every length is checked, a header claiming more than
 * SERE_IMAGE_MAX_SIDE / SERE_IMAGE_MAX_PIXELS is refused before anything is
 * allocated, and a failure returns -1 with a sere_fail message that starts
 * with the file name, leaving nothing allocated.
 *
 * DCT-domain downscaling (JPEG only): a caller that will cut a crop of
 * crop_w x crop_h full-resolution pixels and resize it to out_w x out_h may
 * pass them as a hint. The decoder then uses the smallest TurboJPEG scale
 * 1/d (d in 2, 4, 8) for which ceil(crop_w / d) >= out_w and
 * ceil(crop_h / d) >= out_h, so the crop still has at least the output's
 * resolution, and reports d: the decoded image is ceil(W / d) x ceil(H / d)
 * and the caller divides its crop box by d. PNGs, and JPEGs for which no
 * factor fits, decode at full size with d = 1. A caller that picks d itself
 * (the loader: one decode for all the crops of a sample) reads the header
 * with sere_image_probe and calls sere_image_decode_scaled. */
#ifndef SERE_IMAGE_DECODE_H
#define SERE_IMAGE_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

typedef enum { SERE_IMAGE_UNKNOWN = 0, SERE_IMAGE_JPEG, SERE_IMAGE_PNG } sere_image_format;

typedef struct sere_decode_hint {
  int crop_w, crop_h; /* the region the caller will cut, in full-resolution pixels */
  int out_w, out_h;   /* the size it will be resized to */
} sere_decode_hint;

/* The format from the first bytes (magic numbers; the file name is not used). */
sere_image_format sere_image_sniff(const void *data, size_t len);

/* Reads only the header: format, full-resolution width and height. 0 or -1. */
int sere_image_probe(const void *data, size_t len, const char *name, sere_image_format *format,
                     int *w, int *h);

/* The scale denominator (1, 2, 4 or 8) that `hint` asks for (rule above;
 * 1 for NULL); the format is not looked at. */
int sere_decode_denom(const sere_decode_hint *hint);

/* Decodes a whole file held in memory into `out` (out->px is malloc'ed; free
 * it with sere_image_free). `name` is used in messages only. `hint` may be
 * NULL; `denom` (may be NULL) receives the scale denominator used (1 when
 * decoded at full size). Returns 0, or -1 with an error. */
int sere_image_decode(const void *data, size_t len, const char *name, const sere_decode_hint *hint,
                      sere_image *out, int *denom);

/* Decodes at 1/denom of the full size in each direction (ceil(W / denom) x
 * ceil(H / denom)); denom is 1, 2, 4 or 8 and applies to JPEGs only: a PNG
 * decodes at full size. `used` (may be NULL) receives the denominator
 * applied. 0, or -1 with an error. */
int sere_image_decode_scaled(const void *data, size_t len, const char *name, int denom, sere_image *out, int *used);

/* Reads a whole file into *data (malloc'ed; the caller frees it), refusing
 * one larger than SERE_IMAGE_MAX_FILE_BYTES. 0, or -1 with an error. */
#define SERE_IMAGE_MAX_FILE_BYTES ((size_t)1 << 30)
int sere_file_read(const char *path, uint8_t **data, size_t *len);

/* Writes an 8-bit RGB PNG atomically: to a temporary file beside `path`,
 * flushed to disk, then renamed over it. 0 or -1 with an error. */
int sere_image_write_png(const char *path, const sere_image *img);

void sere_image_free(sere_image *img);

#endif
