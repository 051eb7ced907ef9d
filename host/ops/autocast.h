/* autocast.h — the mixed-precision mode (issue 6), PyTorch's autocast with
 * bf16 as the lower precision.
 *
 * While the mode is on (per thread, like grad mode), the ops of the
 * lower-precision list — matmul, bmm, attention, patch_embed — run on bf16
 * copies of their f32 operands and return bf16; the ops of the f32 list —
 * layer_norm, batch_norm, normalize, softmax, log_softmax,
 * soft_cross_entropy, grid_sample, interpolate — run on an f32 copy of a
 * bf16 input and return f32. Every other op keeps its inputs' dtypes.
 * The copies are made with sere_to_dtype, which is differentiable, so the
 * graph is exactly the explicitly cast one and an f32 leaf receives an f32
 * gradient. Each op checks the mode at its entry and calls itself again on
 * the cast inputs; nothing else changes.
 */
#ifndef SERE_AUTOCAST_H
#define SERE_AUTOCAST_H

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

int sere_autocast_enabled(void);
/* Turns the mode on or off for this thread; returns the previous state, so
 * `int prev = sere_set_autocast_enabled(1); ...; sere_set_autocast_enabled(prev);`
 * is a push and a pop. */
int sere_set_autocast_enabled(int on);

/* Lower-precision ops: true when the mode is on and one of the n tensors
 * (NULL entries skipped) is f32, i.e. when the op must cast. */
int sere_autocast_lowers(int n, sere_tensor *const *ts);
/* The bf16 version of an f32 tensor (a differentiable cast) while the mode
 * is on; otherwise t itself, retained. NULL on error. */
sere_tensor *sere_autocast_operand(sere_tensor *t);
/* sere_autocast_operand for each of n tensors into out (NULL stays NULL).
 * 0 ok; -1 with nothing held on error. Release with sere_autocast_release. */
int sere_autocast_operands(int n, sere_tensor *const *ts, sere_tensor **out);
void sere_autocast_release(int n, sere_tensor **ts);

/* f32-list ops: true when the mode is on and t is bf16, i.e. when the op
 * must run on sere_to_dtype(t, SERE_F32) instead. */
int sere_autocast_widens(const sere_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
