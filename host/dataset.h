/* dataset.h — the list of image files a training run reads, with labels.
 *
 * Two sources:
 *  - an ImageFolder tree (sere_dataset_scan): the sub-folders of `root`,
 *    sorted by name (byte order), are the classes, label = position in that
 *    order (0-based); every file at any depth below a class folder whose
 *    name ends in .jpg, .jpeg or .png (any case) is a sample. Within a class
 *    the order is torchvision's: directories in sorted order, and within a
 *    directory its files sorted by name. Symbolic links are followed. Files
 *    directly in `root` are ignored; a class folder without images, or a
 *    tree without any, is an error.
 *  - a list file (sere_dataset_list): one sample per line, "path [label]",
 *    label a 0-based integer written as the last field (so a path holding
 *    spaces needs a label); relative paths are relative to the list file's
 *    directory; blank lines and lines starting with '#' are skipped. Either
 *    every line has a label or none has (then every label is -1).
 *
 * Memory: paths live in one string arena (relative to `root`) with one
 * offset per sample, so a million files cost about their names' length plus
 * 16 bytes each. */
#ifndef SERE_DATASET_H
#define SERE_DATASET_H

#include <stddef.h>
#include <stdint.h>

typedef struct sere_dataset {
  char *root;          /* folder that relative paths are joined to */
  int64_t count;       /* samples */
  int nclasses;        /* class folders, or 1 + the largest label of a list file */
  char *arena;         /* all NUL-terminated strings */
  int64_t *path_off;   /* [count] offset of each path in the arena */
  int32_t *label;      /* [count] 0-based label, -1 when the list has none */
  int64_t *class_off;  /* [nclasses] offset of each class name (NULL for list files) */
  int64_t *class_count;/* [nclasses] samples per class */
} sere_dataset;

sere_dataset *sere_dataset_scan(const char *root);
sere_dataset *sere_dataset_list(const char *list_path);
void sere_dataset_free(sere_dataset *ds);

/* The path of sample i (0-based) as stored: relative to ds->root unless absolute. */
static inline const char *sere_dataset_rel_path(const sere_dataset *ds, int64_t i) {
  return ds->arena + ds->path_off[i];
}
/* Writes the full path of sample i into buf (size n); returns its length,
 * which is >= n when the buffer was too small (like snprintf). */
size_t sere_dataset_path(const sere_dataset *ds, int64_t i, char *buf, size_t n);
/* The name of class c (NULL for list files). */
const char *sere_dataset_class_name(const sere_dataset *ds, int c);

#endif
