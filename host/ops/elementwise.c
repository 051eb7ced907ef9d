/* elementwise.c — placeholder */
#include "ops.h"
int sere_accumulate_into(sere_tensor *acc, sere_tensor *g) { (void)acc; (void)g; sere_fail("accumulate: not implemented"); return -1; }
