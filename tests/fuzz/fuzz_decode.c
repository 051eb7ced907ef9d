/* fuzz_decode.c — libFuzzer target for the image decoders: arbitrary bytes
 * through sere_image_probe and sere_image_decode (JPEG and PNG, with and
 * without a DCT-scaling hint). They must never crash, read out of bounds or
 * leak; a failure must name the input ("<fuzz>: ..."); a success must give
 * the size the header announced (divided by the scale).
 *
 * Headers claiming more than 4M pixels are probed but not decoded, so a
 * 20-byte input cannot make libjpeg zero a gigabyte of coefficients.
 *
 *   cmake -S . -B build-fuzz -DSERE_FUZZ=ON -DSERE_CUDA=OFF -DCMAKE_C_COMPILER=clang
 *   cmake --build build-fuzz --target fuzz_decode
 *   mkdir -p fuzz-corpus-img && ./build-fuzz/fuzz_decode -max_len=65536 \
 *       -max_total_time=300 -rss_limit_mb=2048 fuzz-corpus-img tests/fuzz/corpus_images
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "image_decode.h"
#include "tensor.h"

#define FUZZ_MAX_PIXELS (4 << 20)

static void check_message(void) {
  if (strncmp(sere_last_error(), "<fuzz>: ", 8)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sere_fail("%s", "");
  int w, h;
  sere_image_format f;
  if (sere_image_probe(data, size, "<fuzz>", &f, &w, &h)) {
    check_message();
    return 0;
  }
  if (f == SERE_IMAGE_UNKNOWN || w < 1 || h < 1 || (int64_t)w * h > FUZZ_MAX_PIXELS) return 0;
  /* The last byte picks a hint, so scaled decoding is fuzzed too. */
  sere_decode_hint hint = {w, h, w / (1 + (size ? data[size - 1] % 9 : 0)), h / 2 + 1};
  sere_image img;
  int denom;
  if (sere_image_decode(data, size, "<fuzz>", size && data[size - 1] & 1 ? &hint : NULL, &img, &denom)) {
    check_message();
    return 0;
  }
  if (img.w != (w + denom - 1) / denom || img.h != (h + denom - 1) / denom) abort();
  volatile uint8_t sink = img.px[0] ^ img.px[(size_t)img.w * img.h * 3 - 1]; /* touch both ends */
  (void)sink;
  sere_image_free(&img);
  return 0;
}
