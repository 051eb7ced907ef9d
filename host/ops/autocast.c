/* autocast.c — the mixed-precision mode's per-thread flag and the casts
 * the ops make at their entry when it is on (see autocast.h). */
#include "autocast.h"

#include "ops.h"

static _Thread_local int autocast_on = 0;

int sere_autocast_enabled(void) { return autocast_on; }

int sere_set_autocast_enabled(int on) {
  int prev = autocast_on;
  autocast_on = on != 0;
  return prev;
}

int sere_autocast_lowers(int n, sere_tensor *const *ts) {
  if (!autocast_on) return 0;
  for (int i = 0; i < n; i++)
    if (ts[i] && ts[i]->dtype == SERE_F32) return 1;
  return 0;
}

sere_tensor *sere_autocast_operand(sere_tensor *t) {
  if (autocast_on && t->dtype == SERE_F32) return sere_to_dtype(t, SERE_BF16);
  return sere_tensor_retain(t);
}

int sere_autocast_operands(int n, sere_tensor *const *ts, sere_tensor **out) {
  for (int i = 0; i < n; i++) {
    out[i] = NULL;
    if (ts[i] && !(out[i] = sere_autocast_operand(ts[i]))) {
      sere_autocast_release(i, out);
      return -1;
    }
  }
  return 0;
}

void sere_autocast_release(int n, sere_tensor **ts) {
  for (int i = 0; i < n; i++) {
    sere_tensor_release(ts[i]);
    ts[i] = NULL;
  }
}

int sere_autocast_widens(const sere_tensor *t) { return autocast_on && t->dtype == SERE_BF16; }
