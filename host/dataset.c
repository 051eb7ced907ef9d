/* dataset.c — ImageFolder scanning and list files (see dataset.h).
 *
 * Scanning is built for a million files: one readdir pass per directory,
 * d_type to tell files from folders (stat only when the file system does
 * not say, or for symbolic links), every path appended to one string arena,
 * and one qsort per class at the end. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dataset.h"
#include "tensor.h"

#define MAX_DEPTH 64               /* deeper nesting is taken for a symbolic link loop */
#define MAX_LIST_LABEL (1 << 20)   /* labels of a list file are below this */
#define MAX_LIST_BYTES ((size_t)1 << 32)

typedef struct entry {
  int64_t off;    /* path in the arena */
  int32_t dirlen; /* length of its directory part (sort key 1; the file name is key 2) */
  int32_t label;
} entry;

typedef struct builder {
  char *arena;
  size_t len, cap;
  entry *items;
  int64_t count, items_cap;
  char *path; /* scratch: the full path of the directory being read */
  size_t path_cap;
} builder;

static void builder_free(builder *b) {
  free(b->arena);
  free(b->items);
  free(b->path);
}

/* Grows *p (holding *cap elements of `size` bytes) to hold at least `need`. */
static int grow(void **p, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : 64;
  while (n < need) n *= 2;
  void *q = realloc(*p, n * size);
  if (!q) return -1;
  *p = q;
  *cap = n;
  return 0;
}

/* Appends s[0..n) and a NUL to the arena; returns its offset or -1. */
static int64_t arena_push(builder *b, const char *s, size_t n) {
  if (grow((void **)&b->arena, &b->cap, b->len + n + 1, 1)) return -1;
  int64_t off = (int64_t)b->len;
  memcpy(b->arena + b->len, s, n);
  b->arena[b->len + n] = '\0';
  b->len += n + 1;
  return off;
}

static int add_item(builder *b, const char *s, size_t n, int32_t dirlen, int32_t label) {
  size_t cap = (size_t)b->items_cap;
  if (grow((void **)&b->items, &cap, (size_t)b->count + 1, sizeof *b->items)) return -1;
  b->items_cap = (int64_t)cap;
  int64_t off = arena_push(b, s, n);
  if (off < 0) return -1;
  b->items[b->count++] = (entry){off, dirlen, label};
  return 0;
}

static int has_image_extension(const char *name, size_t n) {
  static const char *ext[] = {".jpg", ".jpeg", ".png"};
  for (int i = 0; i < 3; i++) {
    size_t e = strlen(ext[i]);
    if (n > e && strcasecmp(name + n - e, ext[i]) == 0) return 1;
  }
  return 0;
}

/* 1 for a directory, 0 for a regular file, -1 for anything else (or a broken link). */
static int entry_kind(const struct dirent *d, const char *full_path) {
  if (d->d_type == DT_DIR) return 1;
  if (d->d_type == DT_REG) return 0;
  if (d->d_type != DT_UNKNOWN && d->d_type != DT_LNK) return -1;
  struct stat st;
  if (stat(full_path, &st) != 0) return -1;
  return S_ISDIR(st.st_mode) ? 1 : S_ISREG(st.st_mode) ? 0 : -1;
}

/* Sets b->path[len..] = "/" name; returns the new length or -1. */
static int64_t path_append(builder *b, size_t len, const char *name) {
  size_t n = strlen(name);
  if (grow((void **)&b->path, &b->path_cap, len + n + 2, 1)) return -1;
  b->path[len] = '/';
  memcpy(b->path + len + 1, name, n + 1);
  return (int64_t)(len + 1 + n);
}

/* Adds every image below the directory b->path[0..len) with `label`;
 * `rel` is where the root-relative part of b->path starts. */
static int walk(builder *b, size_t len, size_t rel, int32_t label, int depth, const char *root) {
  if (depth > MAX_DEPTH) {
    sere_fail("dataset_scan: '%s': folders nested deeper than %d levels at '%s' (a symbolic link loop?)", root,
              MAX_DEPTH, b->path);
    return -1;
  }
  b->path[len] = '\0';
  DIR *dir = opendir(b->path);
  if (!dir) {
    sere_fail("dataset_scan: cannot read the folder '%s': %s", b->path, strerror(errno));
    return -1;
  }
  int rc = 0;
  struct dirent *d;
  while (rc == 0 && (d = readdir(dir))) {
    if (d->d_name[0] == '.' && (!d->d_name[1] || (d->d_name[1] == '.' && !d->d_name[2]))) continue;
    int64_t n = path_append(b, len, d->d_name);
    if (n < 0) {
      rc = -1;
      sere_fail("dataset_scan: out of memory scanning '%s'", root);
      break;
    }
    int kind = entry_kind(d, b->path);
    if (kind == 1) {
      rc = walk(b, (size_t)n, rel, label, depth + 1, root);
    } else if (kind == 0 && has_image_extension(d->d_name, (size_t)n - len - 1)) {
      if (add_item(b, b->path + rel, (size_t)n - rel, (int32_t)(len - rel), label)) {
        rc = -1;
        sere_fail("dataset_scan: out of memory scanning '%s'", root);
      }
    }
  }
  closedir(dir);
  return rc;
}

/* torchvision's order: by directory (a parent before its sub-folders),
 * then by file name; both compared as bytes. */
static _Thread_local const char *sort_arena;
static int compare_entries(const void *pa, const void *pb) {
  const entry *a = pa, *b = pb;
  const char *sa = sort_arena + a->off, *sb = sort_arena + b->off;
  int32_t n = a->dirlen < b->dirlen ? a->dirlen : b->dirlen;
  int c = memcmp(sa, sb, (size_t)n);
  if (c) return c;
  if (a->dirlen != b->dirlen) return a->dirlen < b->dirlen ? -1 : 1;
  return strcmp(sa + a->dirlen, sb + b->dirlen);
}

static int compare_names(const void *pa, const void *pb) {
  return strcmp(sort_arena + *(const int64_t *)pa, sort_arena + *(const int64_t *)pb);
}

/* Moves the builder's arrays into a new dataset (freeing the builder). */
static sere_dataset *finish(builder *b, const char *root, int nclasses, const char *op) {
  sere_dataset *ds = calloc(1, sizeof *ds);
  if (ds) {
    ds->root = strdup(root);
    ds->path_off = malloc(sizeof *ds->path_off * (size_t)b->count);
    ds->label = malloc(sizeof *ds->label * (size_t)b->count);
    ds->class_count = calloc((size_t)nclasses + 1, sizeof *ds->class_count);
  }
  if (!ds || !ds->root || !ds->path_off || !ds->label || !ds->class_count) {
    sere_dataset_free(ds);
    builder_free(b);
    return sere_fail("%s: '%s': out of memory", op, root);
  }
  ds->count = b->count;
  ds->nclasses = nclasses;
  for (int64_t i = 0; i < b->count; i++) {
    ds->path_off[i] = b->items[i].off;
    ds->label[i] = b->items[i].label;
    if (b->items[i].label >= 0) ds->class_count[b->items[i].label]++;
  }
  ds->arena = b->arena;
  b->arena = NULL;
  builder_free(b);
  return ds;
}

sere_dataset *sere_dataset_scan(const char *root_arg) {
  builder b = {0};
  size_t rootlen = strlen(root_arg);
  while (rootlen > 1 && root_arg[rootlen - 1] == '/') rootlen--;
  if (rootlen == 0) return sere_fail("dataset_scan: empty root path");
  if (grow((void **)&b.path, &b.path_cap, rootlen + 256, 1)) return sere_fail("dataset_scan: out of memory");
  memcpy(b.path, root_arg, rootlen);
  b.path[rootlen] = '\0';
  char *root = strdup(b.path);
  DIR *dir = root ? opendir(root) : NULL;
  if (!dir) {
    sere_fail("dataset_scan: cannot read the root folder '%s': %s", root_arg, root ? strerror(errno) : "out of memory");
    free(root);
    builder_free(&b);
    return NULL;
  }

  /* Class folders: names go to the arena first, sorted by offset. */
  int64_t *classes = NULL;
  size_t nclasses = 0, classes_cap = 0;
  struct dirent *d;
  int rc = 0;
  while ((d = readdir(dir))) {
    if (d->d_name[0] == '.' && (!d->d_name[1] || (d->d_name[1] == '.' && !d->d_name[2]))) continue;
    if (path_append(&b, rootlen, d->d_name) < 0 || entry_kind(d, b.path) != 1) continue;
    int64_t off = arena_push(&b, d->d_name, strlen(d->d_name));
    if (off < 0 || grow((void **)&classes, &classes_cap, nclasses + 1, sizeof *classes)) { rc = -1; break; }
    classes[nclasses++] = off;
  }
  closedir(dir);
  if (rc == 0 && nclasses > INT32_MAX - 1) rc = -1;
  if (rc) {
    free(classes);
    builder_free(&b);
    sere_fail("dataset_scan: '%s': out of memory listing the class folders", root);
    free(root);
    return NULL;
  }
  sort_arena = b.arena;
  if (nclasses) qsort(classes, nclasses, sizeof *classes, compare_names);

  for (size_t c = 0; c < nclasses && rc == 0; c++) {
    int64_t first = b.count;
    int64_t n = path_append(&b, rootlen, b.arena + classes[c]);
    rc = n < 0 ? (sere_fail("dataset_scan: out of memory"), -1) : walk(&b, (size_t)n, rootlen + 1, (int32_t)c, 0, root);
    if (rc == 0 && b.count == first) {
      sere_fail("dataset_scan: class folder '%s' under '%s' holds no .jpg, .jpeg or .png file", b.arena + classes[c],
                root);
      rc = -1;
    }
    sort_arena = b.arena; /* the arena may have moved */
    if (rc == 0) qsort(b.items + first, (size_t)(b.count - first), sizeof *b.items, compare_entries);
  }
  if (rc == 0 && b.count == 0)
    rc = (sere_fail("dataset_scan: no class folders with .jpg, .jpeg or .png files under '%s'", root), -1);
  if (rc) {
    free(classes);
    free(root);
    builder_free(&b);
    return NULL;
  }
  sere_dataset *ds = finish(&b, root, (int)nclasses, "dataset_scan");
  if (ds) {
    ds->class_off = classes;
  } else {
    free(classes);
  }
  free(root);
  return ds;
}

/* ---- list files ------------------------------------------------------ */

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

/* Parses one trimmed, non-empty line s[0..n) into the builder. */
static int parse_line(builder *b, const char *path, int64_t lineno, const char *s, size_t n, int *labelled,
                      int32_t *max_label) {
  size_t sp = n;
  while (sp > 0 && !is_space(s[sp - 1])) sp--;
  int has_label = sp > 0;
  int32_t label = -1;
  size_t plen = n;
  if (has_label) {
    char tok[32];
    size_t tlen = n - sp;
    char *end = NULL;
    long long v = -1;
    if (tlen < sizeof tok) {
      memcpy(tok, s + sp, tlen);
      tok[tlen] = '\0';
      errno = 0;
      v = strtoll(tok, &end, 10);
    }
    if (tlen >= sizeof tok || errno || *end || v < 0 || v >= MAX_LIST_LABEL) {
      sere_fail("dataset_list: %s:%lld: bad label '%.*s' (want an integer in [0, %d), the last field of the line)",
                path, (long long)lineno, (int)(tlen > 40 ? 40 : tlen), s + sp, MAX_LIST_LABEL);
      return -1;
    }
    label = (int32_t)v;
    if (label > *max_label) *max_label = label;
    plen = sp;
    while (plen > 0 && is_space(s[plen - 1])) plen--;
  }
  if (*labelled < 0) *labelled = has_label;
  if (*labelled != has_label) {
    sere_fail("dataset_list: %s:%lld: %s, but the first sample line %s (every line has a label, or none)", path,
              (long long)lineno, has_label ? "has a label" : "has no label", has_label ? "had none" : "had one");
    return -1;
  }
  if (memchr(s, '\0', plen)) {
    sere_fail("dataset_list: %s:%lld: the path contains a NUL byte", path, (long long)lineno);
    return -1;
  }
  if (add_item(b, s, plen, 0, label)) {
    sere_fail("dataset_list: %s: out of memory", path);
    return -1;
  }
  return 0;
}

static char *read_text(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return sere_fail("dataset_list: cannot open '%s': %s", path, strerror(errno));
  struct stat st;
  char *buf = NULL;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    sere_fail("dataset_list: '%s' is not a regular file", path);
  } else if ((uint64_t)st.st_size > MAX_LIST_BYTES) {
    sere_fail("dataset_list: '%s' is larger than %zu bytes", path, MAX_LIST_BYTES);
  } else if (!(buf = malloc((size_t)st.st_size + 1))) {
    sere_fail("dataset_list: '%s': out of memory", path);
  } else if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
    sere_fail("dataset_list: cannot read '%s'", path);
    free(buf);
    buf = NULL;
  } else {
    *len = (size_t)st.st_size;
    buf[*len] = '\0';
  }
  fclose(f);
  return buf;
}

sere_dataset *sere_dataset_list(const char *path) {
  size_t len = 0;
  char *text = read_text(path, &len);
  if (!text) return NULL;
  builder b = {0};
  int labelled = -1, rc = 0;
  int32_t max_label = -1;
  int64_t lineno = 0;
  for (size_t pos = 0; pos < len && rc == 0;) {
    const char *line = text + pos;
    const char *nl = memchr(line, '\n', len - pos);
    size_t n = nl ? (size_t)(nl - line) : len - pos;
    pos += n + 1;
    lineno++;
    while (n > 0 && is_space(line[0])) line++, n--;
    while (n > 0 && is_space(line[n - 1])) n--;
    if (n == 0 || line[0] == '#') continue;
    rc = parse_line(&b, path, lineno, line, n, &labelled, &max_label);
  }
  free(text);
  if (rc == 0 && b.count == 0) rc = (sere_fail("dataset_list: '%s' lists no files", path), -1);
  const char *slash = strrchr(path, '/');
  char *root = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
  if (rc == 0 && !root) rc = (sere_fail("dataset_list: out of memory"), -1);
  if (rc) {
    free(root);
    builder_free(&b);
    return NULL;
  }
  sere_dataset *ds = finish(&b, root, max_label + 1, "dataset_list");
  free(root);
  return ds;
}

void sere_dataset_free(sere_dataset *ds) {
  if (!ds) return;
  free(ds->root);
  free(ds->arena);
  free(ds->path_off);
  free(ds->label);
  free(ds->class_off);
  free(ds->class_count);
  free(ds);
}

size_t sere_dataset_path(const sere_dataset *ds, int64_t i, char *buf, size_t n) {
  const char *rel = sere_dataset_rel_path(ds, i);
  int k = rel[0] == '/' ? snprintf(buf, n, "%s", rel) : snprintf(buf, n, "%s/%s", ds->root, rel);
  return k < 0 ? 0 : (size_t)k;
}

const char *sere_dataset_class_name(const sere_dataset *ds, int c) {
  return ds->class_off && c >= 0 && c < ds->nclasses ? ds->arena + ds->class_off[c] : NULL;
}
