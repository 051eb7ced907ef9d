/* check.h — the tiny assertion harness of the C unit tests: CHECK counts a
 * pass or prints the failing condition; check_summary prints
 * "N passed, N failed" and returns the exit status. */
#ifndef SERE_TEST_CHECK_H
#define SERE_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (cond) passed++;                                                    \
    else {                                                                 \
      failed++;                                                            \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);      \
    }                                                                      \
  } while (0)

static inline int check_summary(void) {
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

#endif
