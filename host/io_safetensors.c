/* io_safetensors.c — safetensors reader and writer (format in
 * io_safetensors.h).
 *
 * The reader never trusts its input. The header is parsed by a small strict
 * JSON parser that knows the schema, so it has no recursion and no generic
 * values: the top level is an object of tensor entries (objects holding a
 * string and two integer arrays) plus "__metadata__" (an object of
 * strings); anything else is an error at the byte where it appears. Then
 * every entry is checked (dtype, shape, size, offsets) and the entries,
 * sorted by offset, must tile the data buffer exactly. Only after all of
 * that are tensors allocated, each no larger than the bytes the input holds
 * for it (twice that for F16 -> f32).
 *
 * The writer builds the header in memory, then streams each tensor's bytes
 * (made contiguous one tensor at a time) into a temporary file that is
 * fsync'ed and renamed over the destination, so a reader never sees a
 * half-written file. */
#include "io_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io_safetensors.c copies tensor bytes as they are: it assumes a little-endian host"
#endif

#define METADATA_KEY "__metadata__"
/* Names in messages are cut to this many bytes: a hostile header may hold
 * megabyte-long names, and the message must still say what went wrong. */
#define NAME_FMT "'%.80s%s'"
#define NAME_ARG(s) (s), (strlen(s) > 80 ? "..." : "")

/* sere_fail for functions that return an int status: always -1. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  sere_fail("%s", msg);
  return -1;
}

/* ---- dtypes ---------------------------------------------------------- */
enum { ST_F16 = SERE_NDTYPES, ST_F64 }; /* file-only dtypes, read as f32 */

static const struct {
  const char *name;
  int size;          /* bytes per element in the file */
  sere_dtype dtype;  /* what sere holds it as */
  int kind;          /* the sere dtype stored as is, or ST_F16 / ST_F64 */
} st_dtypes[] = {
    {"F32", 4, SERE_F32, SERE_F32},  {"BF16", 2, SERE_BF16, SERE_BF16}, {"I32", 4, SERE_I32, SERE_I32},
    {"I64", 8, SERE_I64, SERE_I64},  {"U8", 1, SERE_U8, SERE_U8},       {"BOOL", 1, SERE_BOOL, SERE_BOOL},
    {"F16", 2, SERE_F32, ST_F16},    {"F64", 8, SERE_F32, ST_F64},
};
#define N_ST_DTYPES ((int)(sizeof st_dtypes / sizeof st_dtypes[0]))

static int st_dtype_of_sere(sere_dtype d) {
  for (int i = 0; i < N_ST_DTYPES; i++)
    if (st_dtypes[i].kind == (int)d) return i;
  return -1;
}

static float f16_to_f32(uint16_t h) {
  int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (exp == 0) v = ldexpf((float)man, -24); /* zero and subnormals */
  else if (exp == 31) v = man ? NAN : INFINITY;
  else v = ldexpf((float)(man | 0x400), exp - 25);
  return (h & 0x8000) ? -v : v;
}

/* ---- small shared helpers -------------------------------------------- */
/* Length of the valid UTF-8 sequence at p (p < end), or 0. Rejects overlong
 * forms, surrogates and code points above U+10FFFF. */
static int utf8_seq_len(const unsigned char *p, const unsigned char *end) {
  unsigned c = p[0];
  if (c < 0x80) return 1;
  int n;
  uint32_t cp, min;
  if ((c & 0xe0) == 0xc0) { n = 2; cp = c & 0x1f; min = 0x80; }
  else if ((c & 0xf0) == 0xe0) { n = 3; cp = c & 0x0f; min = 0x800; }
  else if ((c & 0xf8) == 0xf0) { n = 4; cp = c & 0x07; min = 0x10000; }
  else return 0;
  if (end - p < n) return 0;
  for (int i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (p[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

static int is_utf8(const char *s) {
  const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
  while (p < end) {
    int n = utf8_seq_len(p, end);
    if (!n) return 0;
    p += n;
  }
  return 1;
}

static int cmp_str_ptr(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Finds a string that occurs twice among strs[0..n) (sorting a copy).
 * Returns 0 and sets *dup (NULL when all differ), or -1 out of memory. */
static int find_duplicate(const char *const *strs, int n, const char **dup) {
  *dup = NULL;
  if (n < 2) return 0;
  const char **sorted = malloc((size_t)n * sizeof *sorted);
  if (!sorted) return fail("out of memory");
  memcpy(sorted, strs, (size_t)n * sizeof *sorted);
  qsort(sorted, (size_t)n, sizeof *sorted, cmp_str_ptr);
  for (int i = 1; i < n && !*dup; i++)
    if (!strcmp(sorted[i - 1], sorted[i])) *dup = sorted[i];
  free(sorted);
  return 0;
}

/* Returns arr (capacity *cap) with room for `need` elements of `elem`
 * bytes, possibly moved; NULL when out of memory (arr is still valid). */
static void *grow(void *arr, int *cap, int need, size_t elem) {
  if (need <= *cap) return arr;
  int ncap = *cap ? *cap * 2 : 16;
  void *p = realloc(arr, (size_t)ncap * elem);
  if (!p) return sere_fail("out of memory");
  *cap = ncap;
  return p;
}

/* ---- the parsed header ----------------------------------------------- */
typedef struct {
  char *name;
  int st; /* index into st_dtypes */
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  int64_t begin, end; /* data_offsets */
} entry;

typedef struct {
  entry *e;
  int n, cap;
  char **mkeys, **mvalues; /* metadata, in file order */
  int nmeta, kcap, vcap;
  int has_meta;
} header;

static void header_free(header *h) {
  for (int i = 0; i < h->n; i++) free(h->e[i].name);
  for (int i = 0; i < h->nmeta; i++) { free(h->mkeys[i]); free(h->mvalues[i]); }
  free(h->e);
  free(h->mkeys);
  free(h->mvalues);
}

/* fail() with "<src>: tensor '<name>': " in front. */
#define entry_fail(src, name, fmt, ...) fail("%s: tensor " NAME_FMT ": " fmt, (src), NAME_ARG(name), ##__VA_ARGS__)

/* ---- strict JSON for the header -------------------------------------- */
typedef struct {
  const char *src; /* file name for messages */
  const unsigned char *begin, *p, *end;
} json;

/* fail() naming the position of j->p in the header text. */
#define json_fail(j, fmt, ...) \
  fail("%s: invalid header JSON at header byte %zu: " fmt, (j)->src, (size_t)((j)->p - (j)->begin), ##__VA_ARGS__)

static void skip_ws(json *j) {
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* Skips whitespace and returns the next byte (-1 at the end) without consuming it. */
static int peek(json *j) {
  skip_ws(j);
  return j->p < j->end ? *j->p : -1;
}

/* Describes the next byte for a message: "'x'", "byte 0xff" or the end. */
static const char *found(const json *j, char *buf, size_t n) {
  if (j->p >= j->end) return "the end of the header";
  snprintf(buf, n, *j->p >= 0x20 && *j->p < 0x7f ? "'%c'" : "byte 0x%02x", *j->p);
  return buf;
}

static int expect(json *j, char c) {
  char buf[16];
  if (peek(j) != c) return json_fail(j, "expected '%c', found %s", c, found(j, buf, sizeof buf));
  j->p++;
  return 0;
}

/* After a member or element: consumes ',' (returns 0) or `close` (returns 1). */
static int comma_or_close(json *j, char close) {
  char buf[16];
  int c = peek(j);
  if (c != ',' && c != close) return json_fail(j, "expected ',' or '%c', found %s", close, found(j, buf, sizeof buf));
  j->p++;
  return c == close;
}

/* The value of the 4 hex digits at p, or -1. */
static int32_t hex4(const unsigned char *p) {
  int32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int c = p[i], d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    if (d < 0) return -1;
    v = v << 4 | d;
  }
  return v;
}

static char *put_utf8(char *o, uint32_t cp) {
  static const unsigned char lead[5] = {0, 0, 0xc0, 0xe0, 0xf0};
  int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  for (int i = n - 1; i > 0; i--, cp >>= 6) o[i] = (char)(0x80 | (cp & 0x3f));
  o[0] = (char)(lead[n] | cp);
  return o + n;
}

/* Decodes the \u escape at *pp (the backslash; the string ends at `close`)
 * and, for a high surrogate, the low one that must follow. */
static int unicode_escape(json *j, const unsigned char **pp, const unsigned char *close, uint32_t *out) {
  const unsigned char *p = *pp;
  j->p = p; /* for messages */
  int32_t cp = close - p >= 6 ? hex4(p + 2) : -1;
  if (cp < 0) return json_fail(j, "bad \\u escape");
  p += 6;
  if (cp >= 0xdc00 && cp <= 0xdfff) return json_fail(j, "lone low surrogate in \\u escape");
  if (cp >= 0xd800 && cp <= 0xdbff) {
    int32_t lo = close - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
    if (lo < 0xdc00 || lo > 0xdfff) return json_fail(j, "high surrogate in \\u escape not followed by a low one");
    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
    p += 6;
  }
  if (cp == 0) return json_fail(j, "strings may not contain \\u0000");
  *out = (uint32_t)cp;
  *pp = p;
  return 0;
}

/* Parses a string into a new NUL-terminated UTF-8 buffer. */
static int parse_string(json *j, char **out) {
  *out = NULL;
  if (peek(j) != '"') return json_fail(j, "expected a string");
  const unsigned char *p = j->p + 1, *close = p;
  while (close < j->end && *close != '"') {
    if (*close < 0x20) return j->p = close, json_fail(j, "control character in a string");
    if (*close == '\\' && ++close == j->end) break;
    close++;
  }
  if (close == j->end) return json_fail(j, "unterminated string");
  /* Escapes only shrink: \uXXXX (6 bytes) gives at most 3, a surrogate pair (12) gives 4. */
  char *s = malloc((size_t)(close - p) + 1), *o = s;
  if (!s) return fail("out of memory");
  while (p < close) {
    if (*p != '\\') {
      int n = utf8_seq_len(p, close);
      if (!n) { free(s); j->p = p; return json_fail(j, "invalid UTF-8 in a string"); }
      memcpy(o, p, (size_t)n);
      o += n;
      p += n;
      continue;
    }
    static const char simple[] = "\"\\/bfnrt", value[] = "\"\\/\b\f\n\r\t";
    const char *k = p[1] ? strchr(simple, p[1]) : NULL;
    if (k) {
      *o++ = value[k - simple];
      p += 2;
    } else if (p[1] == 'u') {
      uint32_t cp = 0;
      if (unicode_escape(j, &p, close, &cp)) { free(s); return -1; }
      o = put_utf8(o, cp);
    } else {
      free(s);
      j->p = p;
      return json_fail(j, "unknown escape in a string");
    }
  }
  *o = 0;
  j->p = close + 1;
  *out = s;
  return 0;
}

/* Parses an integer (JSON syntax, no fraction or exponent) into int64. */
static int parse_int(json *j, int64_t *out) {
  skip_ws(j);
  const unsigned char *start = j->p;
  int neg = j->p < j->end && *j->p == '-';
  if (neg) j->p++;
  if (j->p >= j->end || *j->p < '0' || *j->p > '9') return j->p = start, json_fail(j, "expected an integer");
  if (*j->p == '0' && j->p + 1 < j->end && j->p[1] >= '0' && j->p[1] <= '9')
    return json_fail(j, "leading zero in a number");
  uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
    uint64_t d = (uint64_t)(*j->p - '0');
    if (v > (limit - d) / 10) return j->p = start, json_fail(j, "integer does not fit in 64 bits");
    v = v * 10 + d;
    j->p++;
  }
  if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
    return j->p = start, json_fail(j, "expected an integer, found a non-integer number");
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

/* Parses [int, ...] with at most `max` elements; `what` names it in errors. */
static int parse_int_array(json *j, int64_t *vals, int max, int *n, const char *name, const char *what) {
  *n = 0;
  if (expect(j, '[')) return -1;
  if (peek(j) == ']') { j->p++; return 0; }
  for (;;) {
    if (*n == max) return entry_fail(j->src, name, "%s has more than %d entries", what, max);
    if (parse_int(j, &vals[(*n)++])) return -1;
    int done = comma_or_close(j, ']');
    if (done) return done < 0 ? -1 : 0;
  }
}

/* Parses the entry object of tensor `e->name`: dtype, shape, data_offsets. */
static int parse_entry(json *j, entry *e) {
  enum { DTYPE = 1, SHAPE = 2, OFFSETS = 4 };
  int seen = 0;
  if (expect(j, '{')) return -1;
  if (peek(j) == '}') return entry_fail(j->src, e->name, "entry is empty");
  for (;;) {
    char *key;
    if (parse_string(j, &key)) return -1;
    int field = !strcmp(key, "dtype") ? DTYPE : !strcmp(key, "shape") ? SHAPE : !strcmp(key, "data_offsets") ? OFFSETS : 0;
    if (!field || (seen & field)) {
      entry_fail(j->src, e->name, "%s field \"%.40s\"", field ? "duplicate" : "unknown", key);
      free(key);
      return -1;
    }
    free(key);
    seen |= field;
    if (expect(j, ':')) return -1;
    if (field == DTYPE) {
      char *name;
      if (peek(j) != '"') return entry_fail(j->src, e->name, "dtype must be a string");
      if (parse_string(j, &name)) return -1;
      e->st = -1;
      for (int i = 0; i < N_ST_DTYPES; i++)
        if (!strcmp(name, st_dtypes[i].name)) e->st = i;
      if (e->st < 0)
        entry_fail(j->src, e->name, "dtype '%.20s' is not supported (sere reads F32, BF16, F16, F64, I32, I64, U8, BOOL)",
                   name);
      free(name);
      if (e->st < 0) return -1;
    } else if (field == SHAPE) {
      if (parse_int_array(j, e->shape, SERE_MAX_DIMS, &e->ndim, e->name, "shape")) return -1;
    } else {
      int64_t offsets[2];
      int n;
      if (parse_int_array(j, offsets, 2, &n, e->name, "data_offsets")) return -1;
      if (n != 2) return entry_fail(j->src, e->name, "data_offsets must be [begin, end]");
      e->begin = offsets[0];
      e->end = offsets[1];
    }
    int done = comma_or_close(j, '}');
    if (done < 0) return -1;
    if (done) break;
  }
  if (seen != (DTYPE | SHAPE | OFFSETS))
    return entry_fail(j->src, e->name, "entry lacks \"%s\"",
                      !(seen & DTYPE) ? "dtype" : !(seen & SHAPE) ? "shape" : "data_offsets");
  return 0;
}

/* Parses the "__metadata__" object: string keys to string values. */
static int parse_metadata(json *j, header *h) {
  if (h->has_meta) return json_fail(j, "duplicate key \"" METADATA_KEY "\"");
  h->has_meta = 1;
  if (expect(j, '{')) return -1;
  if (peek(j) == '}') { j->p++; return 0; }
  for (;;) {
    char **keys = grow(h->mkeys, &h->kcap, h->nmeta + 1, sizeof *keys);
    if (!keys) return -1;
    h->mkeys = keys;
    char **values = grow(h->mvalues, &h->vcap, h->nmeta + 1, sizeof *values);
    if (!values) return -1;
    h->mvalues = values;
    char *key;
    if (parse_string(j, &key)) return -1;
    h->mkeys[h->nmeta] = key;
    h->mvalues[h->nmeta++] = NULL;
    if (expect(j, ':')) return -1;
    if (peek(j) != '"') return fail("%s: metadata value for key " NAME_FMT " must be a string", j->src, NAME_ARG(key));
    if (parse_string(j, &h->mvalues[h->nmeta - 1])) return -1;
    int done = comma_or_close(j, '}');
    if (done) return done < 0 ? -1 : 0;
  }
}

/* Parses the whole header: one object of tensor entries and metadata,
 * then nothing but whitespace (writers pad with spaces). */
static int parse_header(json *j, header *h) {
  if (expect(j, '{')) return -1;
  if (peek(j) == '}') j->p++;
  else for (;;) {
    char *key;
    if (parse_string(j, &key)) return -1;
    if (!strcmp(key, METADATA_KEY)) {
      free(key);
      if (expect(j, ':') || parse_metadata(j, h)) return -1;
    } else {
      entry *entries = grow(h->e, &h->cap, h->n + 1, sizeof *entries);
      if (!entries) { free(key); return -1; }
      h->e = entries;
      entry *e = &h->e[h->n++];
      memset(e, 0, sizeof *e);
      e->name = key;
      if (expect(j, ':') || parse_entry(j, e)) return -1;
    }
    int done = comma_or_close(j, '}');
    if (done < 0) return -1;
    if (done) break;
  }
  skip_ws(j);
  if (j->p != j->end) return json_fail(j, "unexpected characters after the header object");
  return 0;
}

/* ---- validating the entries ------------------------------------------ */
/* Checks one entry's shape and offsets against the data buffer length. */
static int check_entry(const char *src, const entry *e, int64_t buflen) {
  char shape[160];
  sere_shape_str_raw(e->ndim, e->shape, shape, sizeof shape);
  /* Zero sizes are legal, so overflow is judged on the product of the
   * others; sere_tensor_new's own limit is INT64_MAX / 16. */
  int64_t numel = 1, nonzero = 1;
  for (int d = 0; d < e->ndim; d++) {
    if (e->shape[d] < 0) return entry_fail(src, e->name, "negative size %lld in shape %s", (long long)e->shape[d], shape);
    if (e->shape[d] == 0) { numel = 0; continue; }
    if (nonzero > INT64_MAX / 16 / e->shape[d]) return entry_fail(src, e->name, "shape %s is too large", shape);
    nonzero *= e->shape[d];
  }
  if (numel) numel = nonzero;
  const char *dt = st_dtypes[e->st].name;
  int64_t nbytes = numel * st_dtypes[e->st].size;
  long long b = (long long)e->begin, en = (long long)e->end;
  if (b < 0 || en < 0) return entry_fail(src, e->name, "data_offsets [%lld, %lld] are negative", b, en);
  if (b > en) return entry_fail(src, e->name, "data_offsets [%lld, %lld] end before they begin", b, en);
  if (en - b != nbytes)
    return entry_fail(src, e->name, "data_offsets [%lld, %lld] do not match shape %s of %s (%lld bytes)", b, en, shape,
                      dt, (long long)nbytes);
  if (en > buflen)
    return entry_fail(src, e->name, "data_offsets [%lld, %lld] run past the end of the data buffer (%lld bytes)", b, en,
                      (long long)buflen);
  return 0;
}

static int cmp_entry_names(const void *a, const void *b) {
  return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static int cmp_entry_offsets(const void *pa, const void *pb) {
  const entry *a = pa, *b = pb;
  if (a->begin != b->begin) return a->begin < b->begin ? -1 : 1;
  if (a->end != b->end) return a->end < b->end ? -1 : 1;
  return strcmp(a->name, b->name);
}

/* Per-entry checks, unique names and keys, then (sorted by offset) the
 * entries must tile [0, buflen) exactly. */
static int check_header(const char *src, header *h, int64_t buflen) {
  for (int i = 0; i < h->n; i++)
    if (check_entry(src, &h->e[i], buflen)) return -1;
  if (h->n > 1) qsort(h->e, (size_t)h->n, sizeof *h->e, cmp_entry_names);
  for (int i = 1; i < h->n; i++)
    if (!strcmp(h->e[i - 1].name, h->e[i].name))
      return fail("%s: tensor name " NAME_FMT " appears twice", src, NAME_ARG(h->e[i].name));
  const char *dup;
  if (find_duplicate((const char *const *)h->mkeys, h->nmeta, &dup)) return -1;
  if (dup) return fail("%s: metadata key " NAME_FMT " appears twice", src, NAME_ARG(dup));

  if (h->n > 1) qsort(h->e, (size_t)h->n, sizeof *h->e, cmp_entry_offsets);
  int64_t covered = 0;
  for (int i = 0; i < h->n; i++) {
    const entry *e = &h->e[i];
    if (e->begin < covered)
      return entry_fail(src, e->name, "data_offsets [%lld, %lld] overlap tensor " NAME_FMT " [%lld, %lld]",
                        (long long)e->begin, (long long)e->end, NAME_ARG(h->e[i - 1].name),
                        (long long)h->e[i - 1].begin, (long long)h->e[i - 1].end);
    if (e->begin > covered)
      return entry_fail(src, e->name, "bytes [%lld, %lld) of the data buffer before it belong to no tensor",
                        (long long)covered, (long long)e->begin);
    covered = e->end;
  }
  if (covered != buflen)
    return fail("%s: bytes [%lld, %lld) at the end of the data buffer belong to no tensor", src, (long long)covered,
                (long long)buflen);
  return 0;
}

/* Reads the 8-byte little-endian header length and checks it against the
 * total length `len` of the file (p holds at least 8 bytes when len >= 8). */
static int check_prefix(const char *src, const unsigned char *p, uint64_t len, uint64_t *hlen) {
  if (len < 8)
    return fail("%s: %llu bytes is too short for a safetensors file (it starts with an 8-byte header length)", src,
                (unsigned long long)len);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = n << 8 | p[i];
  if (n > SERE_SAFETENSORS_MAX_HEADER)
    return fail("%s: header length %llu exceeds the limit of %u MiB (not a safetensors file?)", src,
                (unsigned long long)n, SERE_SAFETENSORS_MAX_HEADER >> 20);
  if (n > len - 8)
    return fail("%s: header length %llu runs past the end of the file (%llu bytes)", src, (unsigned long long)n,
                (unsigned long long)len);
  *hlen = n;
  return 0;
}

/* Parses and checks the header text; on failure h keeps what was parsed. */
static int read_header(const char *src, const unsigned char *text, size_t n, int64_t buflen, header *h) {
  json j = {src, text, text, text + n};
  return parse_header(&j, h) || check_header(src, h, buflen) ? -1 : 0;
}

/* ---- building the result --------------------------------------------- */
void sere_safetensors_free(sere_safetensors *st) {
  if (!st) return;
  for (int i = 0; i < st->count; i++) {
    free(st->names[i]);
    sere_tensor_release(st->tensors[i]);
  }
  for (int i = 0; i < st->nmeta; i++) {
    free(st->meta_keys[i]);
    free(st->meta_values[i]);
  }
  free(st->names);
  free(st->tensors);
  free(st->meta_keys);
  free(st->meta_values);
  free(st);
}

/* Converts the file's elements at `raw` into t's storage; raw may be the
 * storage itself for dtypes sere holds as they are. */
static void decode(sere_tensor *t, int st, const unsigned char *raw) {
  int64_t n = sere_numel(t);
  void *dst = sere_data(t);
  switch (st_dtypes[st].kind) {
    case ST_F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, raw + 2 * i, 2);
        ((float *)dst)[i] = f16_to_f32(h);
      }
      break;
    case ST_F64:
      for (int64_t i = 0; i < n; i++) {
        double d;
        memcpy(&d, raw + 8 * i, 8);
        ((float *)dst)[i] = (float)d; /* IEEE: nearest f32; out of range gives +-inf */
      }
      break;
    case SERE_BOOL: /* sere's bools are 0 or 1; a file may use any non-zero byte for true */
      for (int64_t i = 0; i < n; i++) ((uint8_t *)dst)[i] = raw[i] != 0;
      break;
    default:
      if (dst != (const void *)raw) memcpy(dst, raw, (size_t)n * (size_t)st_dtypes[st].size);
  }
}

/* fread of exactly n bytes; `what` names them in errors. */
static int read_exact(const char *src, FILE *f, void *buf, size_t n, const char *what) {
  if (fread(buf, 1, n, f) == n) return 0;
  if (ferror(f)) return fail("%s: read error in %s: %s", src, what, strerror(errno));
  return fail("%s: the file ended inside %s (was it truncated while being read?)", src, what);
}

/* Reads entry e's bytes from f (positioned at them) and decodes them into t. */
static int read_tensor(const char *src, FILE *f, const entry *e, sere_tensor *t) {
  size_t nbytes = (size_t)(e->end - e->begin);
  int as_is = st_dtypes[e->st].kind == (int)st_dtypes[e->st].dtype;
  unsigned char *raw = as_is ? sere_data(t) : malloc(nbytes ? nbytes : 1);
  char what[128];
  snprintf(what, sizeof what, "tensor " NAME_FMT, NAME_ARG(e->name));
  if (!raw) return fail("%s: out of memory reading %s", src, what);
  int rc = read_exact(src, f, raw, nbytes, what);
  if (!rc) decode(t, e->st, raw);
  if (!as_is) free(raw);
  return rc;
}

/* Moves names and metadata out of h into a new result and fills one tensor
 * per entry, from `buf` (the data buffer in memory) or, when buf is NULL,
 * from f positioned at the start of the data buffer. */
static sere_safetensors *build(const char *src, header *h, const unsigned char *buf, FILE *f) {
  sere_safetensors *st = calloc(1, sizeof *st);
  if (!st) return sere_fail("out of memory");
  st->meta_keys = h->mkeys;
  st->meta_values = h->mvalues;
  st->nmeta = h->nmeta;
  h->mkeys = h->mvalues = NULL;
  h->nmeta = 0;
  size_t n = (size_t)(h->n ? h->n : 1);
  st->names = calloc(n, sizeof *st->names);
  st->tensors = calloc(n, sizeof *st->tensors);
  if (!st->names || !st->tensors) {
    sere_safetensors_free(st);
    return sere_fail("out of memory");
  }
  for (int i = 0; i < h->n; i++) {
    entry *e = &h->e[i];
    sere_tensor *t = sere_tensor_new(st_dtypes[e->st].dtype, e->ndim, e->shape);
    if (!t || (buf ? (decode(t, e->st, buf + e->begin), 0) : read_tensor(src, f, e, t))) {
      sere_tensor_release(t);
      sere_safetensors_free(st);
      return NULL;
    }
    st->names[i] = e->name;
    st->tensors[i] = t;
    st->count++;
    e->name = NULL;
  }
  return st;
}

sere_safetensors *sere_safetensors_parse(const void *data, size_t len, const char *source) {
  const char *src = source ? source : "<buffer>";
  const unsigned char *p = data;
  uint64_t hlen = 0;
  if (check_prefix(src, p, len, &hlen)) return NULL;
  header h = {0};
  sere_safetensors *st = NULL;
  if (!read_header(src, p + 8, (size_t)hlen, (int64_t)(len - 8 - hlen), &h)) st = build(src, &h, p + 8 + hlen, NULL);
  header_free(&h);
  return st;
}

static sere_safetensors *read_open_file(const char *path, FILE *f) {
  struct stat sb;
  if (fstat(fileno(f), &sb)) return sere_fail("%s: cannot stat: %s", path, strerror(errno));
  if (!S_ISREG(sb.st_mode)) return sere_fail("%s: not a regular file", path);
  uint64_t size = (uint64_t)sb.st_size, hlen = 0;
  unsigned char prefix[8];
  if (read_exact(path, f, prefix, size < 8 ? size : 8, "the header length") || check_prefix(path, prefix, size, &hlen))
    return NULL;
  unsigned char *text = malloc(hlen ? (size_t)hlen : 1);
  if (!text) return sere_fail("%s: out of memory reading a %llu-byte header", path, (unsigned long long)hlen);
  header h = {0};
  sere_safetensors *st = NULL;
  if (!read_exact(path, f, text, (size_t)hlen, "the header") &&
      !read_header(path, text, (size_t)hlen, (int64_t)(size - 8 - hlen), &h))
    st = build(path, &h, NULL, f);
  free(text);
  header_free(&h);
  return st;
}

sere_safetensors *sere_safetensors_read(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return sere_fail("%s: cannot open: %s", path, strerror(errno));
  sere_safetensors *st = read_open_file(path, f);
  fclose(f);
  return st;
}

/* ---- writer ----------------------------------------------------------- */
/* A tensor to write, or a metadata pair (name = key). Both are written
 * sorted by name, so the same arguments always give the same bytes. */
typedef struct {
  const char *name, *value;
  sere_tensor *t;
  int64_t nbytes;
} item;

static int cmp_item_names(const void *a, const void *b) {
  return strcmp(((const item *)a)->name, ((const item *)b)->name);
}

/* Sorts items by name; returns a name that occurs twice, or NULL. */
static const char *sort_items(item *items, int n) {
  qsort(items, (size_t)n, sizeof *items, cmp_item_names);
  for (int i = 1; i < n; i++)
    if (!strcmp(items[i - 1].name, items[i].name)) return items[i].name;
  return NULL;
}

/* Writes s as a JSON string; s is valid UTF-8 (checked by the caller), so
 * only quotes, backslashes and control characters need escaping. */
static void put_json_string(FILE *m, const char *s) {
  fputc('"', m);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(m, "\\%c", *p);
    else if (*p < 0x20) fprintf(m, "\\u%04x", *p);
    else fputc(*p, m);
  }
  fputc('"', m);
}

/* The header text, padded with spaces to a multiple of 8 bytes, as a new
 * buffer *text of *len bytes. */
static int build_header(char **text, size_t *len, const item *items, int n, const item *meta, int nmeta) {
  *text = NULL;
  FILE *m = open_memstream(text, len);
  if (!m) return fail("out of memory building a safetensors header");
  fputc('{', m);
  if (nmeta) {
    fputs("\"" METADATA_KEY "\":{", m);
    for (int i = 0; i < nmeta; i++) {
      if (i) fputc(',', m);
      put_json_string(m, meta[i].name);
      fputc(':', m);
      put_json_string(m, meta[i].value);
    }
    fputc('}', m);
  }
  int64_t offset = 0;
  for (int i = 0; i < n; i++) {
    const sere_tensor *t = items[i].t;
    if (i || nmeta) fputc(',', m);
    put_json_string(m, items[i].name);
    fprintf(m, ":{\"dtype\":\"%s\",\"shape\":[", st_dtypes[st_dtype_of_sere(t->dtype)].name);
    for (int d = 0; d < t->ndim; d++) fprintf(m, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    fprintf(m, "],\"data_offsets\":[%lld,%lld]}", (long long)offset, (long long)(offset + items[i].nbytes));
    offset += items[i].nbytes;
  }
  fputc('}', m);
  fflush(m);
  for (size_t pad = (8 - *len % 8) % 8; pad; pad--) fputc(' ', m);
  int bad = ferror(m);
  if (fclose(m) || bad) {
    free(*text);
    *text = NULL;
    return fail("out of memory building a safetensors header");
  }
  return 0;
}

/* Writes the prefix, header and tensor data to the new file `tmp`, flushed
 * to disk. Returns 0 or -1 with an error (the caller removes tmp). */
static int write_contents(const char *path, const char *tmp, const char *text, size_t len, const item *items, int n) {
  FILE *f = fopen(tmp, "wb");
  if (!f) return fail("%s: cannot create the temporary file '%s': %s", path, tmp, strerror(errno));
  unsigned char prefix[8];
  for (int i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)len >> (8 * i));
  int ok = fwrite(prefix, 1, 8, f) == 8 && fwrite(text, 1, len, f) == len;
  for (int i = 0; ok && i < n; i++) {
    sere_tensor *c = sere_contiguous_on(items[i].t, SERE_CPU); /* a GPU tensor: a host copy */
    if (!c) { fclose(f); return -1; }
    ok = fwrite(sere_data(c), 1, (size_t)items[i].nbytes, f) == (size_t)items[i].nbytes;
    sere_tensor_release(c);
  }
  ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
  int err = errno;
  if (fclose(f) != 0 && ok) ok = 0, err = errno;
  return ok ? 0 : fail("%s: cannot write '%s': %s", path, tmp, strerror(err));
}

/* After the rename, fsync the directory so the new entry itself is on disk.
 * Best effort: some file systems refuse fsync on a directory. */
static void sync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (!dir) return;
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd >= 0) { fsync(fd); close(fd); }
  free(dir);
}

/* Checks the arguments of sere_safetensors_write before anything is written. */
static int check_write_args(const char *path, int n, const char *const *names, sere_tensor *const *tensors, int nmeta,
                            const char *const *keys, const char *const *values) {
  if (n < 0 || nmeta < 0) return fail("%s: negative tensor or metadata count", path);
  for (int i = 0; i < n; i++) {
    const char *name = names[i];
    const sere_tensor *t = tensors[i];
    if (!name || !*name) return fail("%s: tensor names must be non-empty", path);
    if (!strcmp(name, METADATA_KEY)) return fail("%s: '" METADATA_KEY "' is reserved, not a tensor name", path);
    if (!is_utf8(name)) return fail("%s: tensor name " NAME_FMT " is not valid UTF-8", path, NAME_ARG(name));
    if (!t) return fail("%s: tensor " NAME_FMT " is missing", path, NAME_ARG(name));
    if (st_dtype_of_sere(t->dtype) < 0)
      return fail("%s: tensor " NAME_FMT ": dtype %s has no safetensors equivalent", path, NAME_ARG(name),
                  sere_dtype_name(t->dtype));
  }
  for (int i = 0; i < nmeta; i++) {
    if (!keys[i] || !values[i]) return fail("%s: metadata key or value missing", path);
    if (!is_utf8(keys[i]) || !is_utf8(values[i]))
      return fail("%s: metadata " NAME_FMT " is not valid UTF-8", path, NAME_ARG(keys[i]));
  }
  return 0;
}

int sere_safetensors_write(const char *path, int n, const char *const *names, sere_tensor *const *tensors, int nmeta,
                           const char *const *meta_keys, const char *const *meta_values) {
  if (check_write_args(path, n, names, tensors, nmeta, meta_keys, meta_values)) return -1;
  item *items = calloc((size_t)(n + nmeta + 1), sizeof *items), *meta = items ? items + n : NULL;
  char *tmp = malloc(strlen(path) + 32), *text = NULL;
  const char *dup;
  size_t len = 0;
  int rc = -1;
  if (!items || !tmp) {
    sere_fail("out of memory");
    goto done;
  }
  for (int i = 0; i < n; i++) {
    items[i].name = names[i];
    items[i].t = tensors[i];
    items[i].nbytes = sere_numel(tensors[i]) * (int64_t)sere_dtype_size(tensors[i]->dtype);
  }
  for (int i = 0; i < nmeta; i++) {
    meta[i].name = meta_keys[i];
    meta[i].value = meta_values[i];
  }
  if ((dup = sort_items(items, n))) {
    fail("%s: tensor name " NAME_FMT " appears twice", path, NAME_ARG(dup));
    goto done;
  }
  if ((dup = sort_items(meta, nmeta))) {
    fail("%s: metadata key " NAME_FMT " appears twice", path, NAME_ARG(dup));
    goto done;
  }
  if (build_header(&text, &len, items, n, meta, nmeta)) goto done;
  sprintf(tmp, "%s.tmp.%ld", path, (long)getpid());
  if (write_contents(path, tmp, text, len, items, n)) {
    unlink(tmp);
    goto done;
  }
  if (rename(tmp, path) != 0) {
    sere_fail("%s: cannot rename '%s' over it: %s", path, tmp, strerror(errno));
    unlink(tmp);
    goto done;
  }
  sync_parent_dir(path);
  rc = 0;
done:
  free(items);
  free(tmp);
  free(text);
  return rc;
}
