/* image.h — the 8-bit RGB image every decoder produces and every
 * augmentation consumes: interleaved R, G, B bytes, row-major, rows of
 * exactly 3 * w bytes (no padding). At the Lua boundary an image is a
 * contiguous u8 tensor of shape [h, w, 3]. */
#ifndef SERE_IMAGE_H
#define SERE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct sere_image {
  int w, h;
  uint8_t *px; /* 3 * w * h bytes, owned by whoever allocated the image */
} sere_image;

/* Largest side and pixel count a decoder accepts; a header claiming more
 * is refused before anything is allocated. */
#define SERE_IMAGE_MAX_SIDE 65535
#define SERE_IMAGE_MAX_PIXELS ((int64_t)1 << 28)

#endif
