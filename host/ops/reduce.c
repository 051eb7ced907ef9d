/* reduce.c — placeholder */
#include "ops.h"
sere_tensor *sere_sum_to(sere_tensor *t, int ndim, const int64_t *shape) { (void)t; (void)ndim; (void)shape; return sere_fail("sum_to: not implemented"); }
