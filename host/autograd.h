/* autograd.h — the tape: one node per differentiable op result, edges to the
 * nodes (or leaves) that produced its inputs, and the engine that walks
 * them in reverse topological order.
 *
 * How an op records itself (see the files in host/ops/ for many examples):
 *
 *   if (sere_needs_grad(2, (sere_tensor *[]){a, b})) {
 *     sere_node *n = sere_node_new("mul", mul_backward, 2, (sere_tensor *[]){a, b});
 *     if (!n || sere_node_save(n, 0, a) || sere_node_save(n, 1, b)) { ...error... }
 *     sere_attach(out, n);   // out->grad_fn = n (steals the node reference)
 *   }
 *
 * A backward function receives the gradient of the node's single output and
 * writes one new gradient reference per input into grad_in[i] (it may leave
 * grad_in[i] NULL when n->edges[i] does not need a gradient; check
 * sere_edge_needed(n, i)). It runs with grad mode off, so it may call any
 * op. A gradient may have any strides; the engine reduces nothing for the
 * op, so an op that broadcasts must sum its gradient back to the input shape
 * itself (sere_sum_to in ops/reduce.c).
 *
 * Saved tensors are released as soon as a node's backward has run (unless
 * retain_graph), so memory is freed during the backward pass. A saved
 * tensor that was modified in place since it was saved is detected through
 * its storage's version counter, and backward fails with a clear message.
 */
#ifndef SERE_AUTOGRAD_H
#define SERE_AUTOGRAD_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SERE_NODE_MAX_SAVED 6

typedef struct sere_node sere_node;
typedef int (*sere_backward_fn)(sere_node *n, sere_tensor *grad_out, sere_tensor **grad_in);

typedef struct sere_edge {
  sere_node *node;    /* producer of the input (owned ref), or NULL */
  sere_tensor *leaf;  /* the input itself when it is a leaf needing grad (owned ref) */
  /* Metadata of the input, for backward functions that need shapes. */
  int ndim;
  int64_t shape[SERE_MAX_DIMS];
  sere_dtype dtype;
} sere_edge;

struct sere_node {
  int refcount;
  const char *name;
  sere_backward_fn backward;
  int ninputs;
  sere_edge *edges; /* ninputs entries */
  sere_tensor *saved[SERE_NODE_MAX_SAVED];
  uint32_t saved_version[SERE_NODE_MAX_SAVED];
  int64_t ints[SERE_MAX_DIMS * 2]; /* op arguments (dims, sizes, ...) */
  double scalars[4];
  void *extra;                   /* op-private data freed with free() */
  int released;                  /* saved state already freed by a backward */
  /* engine scratch */
  sere_tensor *grad_accum;
  int pending;
  int visit_mark;
};

/* Grad mode (thread-local). Returns the previous value from set. */
int sere_grad_enabled(void);
int sere_set_grad_enabled(int on);

/* Does `t` take part in autograd (leaf with requires_grad, or has grad_fn)? */
int sere_tensor_requires_grad(const sere_tensor *t);
/* True when grad mode is on and any input requires grad. */
int sere_needs_grad(int n, sere_tensor *const *inputs);

sere_node *sere_node_new(const char *name, sere_backward_fn fn, int ninputs, sere_tensor *const *inputs);
void sere_node_release(sere_node *n);
/* Saves `t` (retained) in slot i, recording its storage version. 0 ok, -1 error. */
int sere_node_save(sere_node *n, int i, sere_tensor *t);
/* Saves in slot i a detached alias of `out`, the op's result (n is or will
 * be its grad_fn): the alias shares out's storage, so in-place changes are
 * detected, but not its node, so out and n do not own each other. */
int sere_node_save_output(sere_node *n, int i, sere_tensor *out);
/* Returns saved slot i (borrowed) or NULL with an error if it was modified in place. */
sere_tensor *sere_node_saved(sere_node *n, int i);
/* The end of a backward function that computed in f32: g as dtype d, g
 * itself when it has that dtype (any strides), else a contiguous copy.
 * Takes over the reference to g; NULL gives NULL. */
sere_tensor *sere_grad_as(sere_tensor *g, sere_dtype d);
int sere_edge_needed(const sere_node *n, int i);
/* out->grad_fn = n, out->requires_grad = 1; steals the reference to n. */
void sere_attach(sere_tensor *out, sere_node *n);

/* Runs backward from `root` with seed gradient `grad` (NULL: root must have
 * one element; the seed is 1). Accumulates into leaf ->grad. 0 ok, -1 error. */
int sere_backward(sere_tensor *root, sere_tensor *grad, int retain_graph);

/* Bumps the storage version of t (call after every in-place write). */
static inline void sere_bump_version(sere_tensor *t) { t->storage->version++; }

/* Errors out if an in-place op on `t` would corrupt autograd: in grad mode a
 * tensor that requires grad cannot be written in place. */
int sere_check_inplace(const sere_tensor *t, const char *op);

#ifdef __cplusplus
}
#endif
#endif
