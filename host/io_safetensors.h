/* io_safetensors.h — reading and writing safetensors files (the format of
 * Hugging Face's `safetensors` library, so files interchange with PyTorch).
 *
 * Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}, ...,
 *  "__metadata__": {"key": "value", ...}}, then the data buffer, each
 * tensor's bytes contiguous, little-endian, row-major, at [b, e) of it.
 *
 * dtypes: F32, BF16, I32, I64, U8, BOOL map to sere's f32, bf16, i32, i64,
 * u8, bool both ways; F16 and F64 (written by other tools) are read and
 * converted to f32. Any other dtype is an error.
 *
 * The reader treats its input as untrusted: every length is checked, the
 * header is limited to 100 MiB, allocations never exceed what the input
 * itself holds, and tensors must tile the data buffer exactly (no overlap,
 * no hole), as the safetensors library requires.
 *
 * Errors follow tensor.h: NULL / -1 after sere_fail with a message naming
 * the file (or "<buffer>"), the tensor and the problem. */
#ifndef SERE_IO_SAFETENSORS_H
#define SERE_IO_SAFETENSORS_H

#include <stddef.h>

#include "tensor.h"

#define SERE_SAFETENSORS_MAX_HEADER (100u << 20)

/* A loaded file: `count` tensors with their names (in data-buffer order)
 * and `nmeta` metadata pairs (in file order). All owned by the struct; a
 * caller that takes a tensor may set its slot to NULL before freeing. */
typedef struct sere_safetensors {
  int count;
  char **names;
  sere_tensor **tensors;
  int nmeta;
  char **meta_keys;
  char **meta_values;
} sere_safetensors;

/* Parses a whole file image held in memory. `source` names it in error
 * messages (NULL means "<buffer>"). */
sere_safetensors *sere_safetensors_parse(const void *data, size_t len, const char *source);
/* Reads `path`, streaming each tensor's bytes straight into its storage. */
sere_safetensors *sere_safetensors_read(const char *path);
/* Frees everything still owned (NULL tensor slots are skipped). */
void sere_safetensors_free(sere_safetensors *st);

/* Writes `n` tensors (any strides; written contiguous) under `names`, plus
 * `nmeta` metadata pairs, to `path` atomically: a temporary file in the same
 * directory is written, flushed, fsync'ed and renamed over `path`. Names
 * must be non-empty and unique; data is laid out sorted by name so the same
 * tensors always give the same bytes. 0 ok, -1 error. */
int sere_safetensors_write(const char *path, int n, const char *const *names, sere_tensor *const *tensors,
                           int nmeta, const char *const *meta_keys, const char *const *meta_values);

#endif
