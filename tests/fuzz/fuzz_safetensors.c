/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: parses
 * arbitrary bytes from memory with sere_safetensors_parse. It must never
 * crash, read out of bounds, leak, or allocate more than the input holds;
 * and every rejection must say which input it was ("<buffer>: ..."), so a
 * bare or stale message is reported as a failure too.
 *
 *   cmake -S . -B build-fuzz -DSERE_FUZZ=ON -DSERE_CUDA=OFF -DCMAKE_C_COMPILER=clang
 *   cmake --build build-fuzz --target fuzz_safetensors
 *   mkdir -p fuzz-corpus && ./build-fuzz/fuzz_safetensors -dict=tests/fuzz/safetensors.dict \
 *       -max_total_time=300 -rss_limit_mb=2048 fuzz-corpus tests/fuzz/corpus
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io_safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sere_fail("%s", ""); /* clear the message of the previous input */
  sere_safetensors *st = sere_safetensors_parse(data, size, NULL);
  if (!st) {
    const char *msg = sere_last_error();
    if (strncmp(msg, "<buffer>: ", 10) && strncmp(msg, "out of memory", 13)) abort();
    return 0;
  }
  /* A parsed file can only hold as many tensor bytes as the input did
   * (F16 doubles when widened to f32; F64 halves). */
  size_t total = 0;
  for (int i = 0; i < st->count; i++) {
    const sere_tensor *t = st->tensors[i];
    if (!t || !st->names[i] || !sere_is_contiguous(t)) abort();
    total += (size_t)sere_numel(t) * sere_dtype_size(t->dtype);
  }
  if (total > 2 * size) abort();
  sere_safetensors_free(st);
  return 0;
}
