/* autograd.c — node lifetime, grad mode, and the backward engine.
 *
 * The engine does two passes over the graph reachable from the root: the
 * first counts, for every node, how many edges point at it; the second runs
 * nodes in an order where a node runs only after every consumer has added
 * its contribution to the node's gradient (Kahn's algorithm). Gradient
 * contributions are summed in f32 (or the input's float dtype) with
 * sere_accumulate_into from ops/elementwise.c. */
#include "autograd.h"

#include <stdlib.h>
#include <string.h>

#include "ops/autocast.h"
#include "ops/ops.h"

static _Thread_local int grad_enabled = 1;

int sere_grad_enabled(void) { return grad_enabled; }

int sere_set_grad_enabled(int on) {
  int prev = grad_enabled;
  grad_enabled = on != 0;
  return prev;
}

int sere_tensor_requires_grad(const sere_tensor *t) { return t->requires_grad || t->grad_fn; }

int sere_needs_grad(int n, sere_tensor *const *inputs) {
  if (!grad_enabled) return 0;
  for (int i = 0; i < n; i++)
    if (inputs[i] && sere_tensor_requires_grad(inputs[i])) return 1;
  return 0;
}

int sere_check_inplace(const sere_tensor *t, const char *op) {
  if (grad_enabled && sere_tensor_requires_grad(t)) {
    sere_fail("%s: in-place write to a tensor that requires grad; use the out-of-place op, "
              "or do it inside sere.no_grad(fn)", op);
    return -1;
  }
  return 0;
}

sere_node *sere_node_new(const char *name, sere_backward_fn fn, int ninputs, sere_tensor *const *inputs) {
  sere_node *n = calloc(1, sizeof *n);
  sere_edge *edges = calloc((size_t)(ninputs > 0 ? ninputs : 1), sizeof *edges);
  if (!n || !edges) {
    free(n);
    free(edges);
    return sere_fail("out of memory allocating an autograd node");
  }
  n->edges = edges;
  n->refcount = 1;
  n->name = name;
  n->backward = fn;
  n->ninputs = ninputs;
  for (int i = 0; i < ninputs; i++) {
    sere_tensor *t = inputs[i];
    sere_edge *e = &n->edges[i];
    if (!t) continue;
    e->ndim = t->ndim;
    memcpy(e->shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    e->dtype = t->dtype;
    if (t->grad_fn) {
      e->node = t->grad_fn;
      e->node->refcount++;
    } else if (t->requires_grad) {
      e->leaf = sere_tensor_retain(t);
    }
  }
  return n;
}

static void node_free_saved(sere_node *n) {
  for (int i = 0; i < SERE_NODE_MAX_SAVED; i++) {
    sere_tensor_release(n->saved[i]);
    n->saved[i] = NULL;
  }
  free(n->extra);
  n->extra = NULL;
}

/* Releasing a node can release its input nodes in turn; long chains (a deep
 * network's graph) would recurse thousands of frames deep, so release
 * iteratively with an explicit stack. */
void sere_node_release(sere_node *n) {
  sere_node **stack = NULL;
  size_t len = 0, cap = 0;
  while (n) {
    if (--n->refcount == 0) {
      node_free_saved(n);
      sere_tensor_release(n->grad_accum);
      for (int i = 0; i < n->ninputs; i++) {
        sere_tensor_release(n->edges[i].leaf);
        if (n->edges[i].node) {
          if (len == cap) {
            cap = cap ? cap * 2 : 16;
            sere_node **s = realloc(stack, cap * sizeof *s);
            if (!s) abort(); /* cannot fail gracefully while freeing */
            stack = s;
          }
          stack[len++] = n->edges[i].node;
        }
      }
      free(n->edges);
      free(n);
    }
    n = len ? stack[--len] : NULL;
  }
  free(stack);
}

int sere_node_save(sere_node *n, int i, sere_tensor *t) {
  n->saved[i] = sere_tensor_retain(t);
  n->saved_version[i] = t->storage->version;
  return 0;
}

int sere_node_save_output(sere_node *n, int i, sere_tensor *out) {
  sere_tensor *alias = sere_detach(out);
  if (!alias) return -1;
  sere_node_save(n, i, alias);
  sere_tensor_release(alias);
  return 0;
}

sere_tensor *sere_grad_as(sere_tensor *g, sere_dtype d) {
  if (!g || g->dtype == d) return g;
  sere_tensor *r = sere_as_contiguous_dtype(g, d);
  sere_tensor_release(g);
  return r;
}

sere_tensor *sere_node_saved(sere_node *n, int i) {
  sere_tensor *t = n->saved[i];
  if (!t) {
    sere_fail("%s backward: saved tensors were already freed; call backward with retain_graph "
              "to backward through the graph a second time", n->name);
    return NULL;
  }
  if (t->storage->version != n->saved_version[i]) {
    sere_fail("%s backward: a tensor saved for the gradient was modified in place after the "
              "forward pass (version %u, now %u)", n->name, n->saved_version[i], t->storage->version);
    return NULL;
  }
  return t;
}

int sere_edge_needed(const sere_node *n, int i) { return n->edges[i].node || n->edges[i].leaf; }

void sere_attach(sere_tensor *out, sere_node *n) {
  if (out->grad_fn) sere_node_release(out->grad_fn);
  out->grad_fn = n;
  out->requires_grad = 1;
}

/* ---- engine ---------------------------------------------------------- */
typedef struct {
  sere_node **items;
  size_t len, cap;
} node_list;

static int list_push(node_list *l, sere_node *n) {
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    sere_node **p = realloc(l->items, cap * sizeof *p);
    if (!p) { sere_fail("backward: out of memory"); return -1; }
    l->items = p;
    l->cap = cap;
  }
  l->items[l->len++] = n;
  return 0;
}

/* A gradient nobody else holds (one reference, its own storage, dense):
 * the engine may keep it as an accumulator instead of copying it, since
 * later in-place accumulation cannot be seen by anyone else. */
static int exclusive(const sere_tensor *g) {
  return g->refcount == 1 && g->storage->refcount == 1 && g->offset == 0 && sere_is_contiguous(g);
}

/* Adds g into *slot (creating it when empty). The slot always owns a
 * private tensor, never an alias of someone else's, so later in-place
 * accumulation cannot write into a tensor someone else holds. */
static int accumulate(sere_tensor **slot, sere_tensor *g) {
  if (*slot) return sere_accumulate_into(*slot, g);
  if (exclusive(g)) {
    *slot = sere_tensor_retain(g);
    return 0;
  }
  *slot = sere_tensor_new_uninit_like(g, g->dtype);
  if (!*slot) return -1;
  return sere_copy_raw(*slot, g);
}

static int check_grad_shape(const sere_node *n, int i, const sere_tensor *g) {
  const sere_edge *e = &n->edges[i];
  if (g->ndim == e->ndim && !memcmp(g->shape, e->shape, sizeof(int64_t) * (size_t)e->ndim)) return 0;
  char a[128], b[128];
  sere_fail("%s backward produced a gradient of shape %s for an input of shape %s (internal error)",
            n->name, sere_shape_str(g, a, sizeof a), sere_shape_str_raw(e->ndim, e->shape, b, sizeof b));
  return -1;
}

static int accumulate_leaf(sere_tensor *leaf, sere_tensor *g) {
  if (leaf->grad && !sere_same_shape(leaf->grad, leaf)) {
    sere_fail("backward: the existing .grad has a different shape from its tensor");
    return -1;
  }
  if (!leaf->grad && g->dtype != leaf->dtype) { /* .grad takes the leaf's dtype, like PyTorch */
    leaf->grad = sere_as_contiguous_dtype(g, leaf->dtype);
    return leaf->grad ? 0 : -1;
  }
  return accumulate(&leaf->grad, g);
}

int sere_backward(sere_tensor *root, sere_tensor *grad, int retain_graph) {
  if (!sere_tensor_requires_grad(root)) {
    sere_fail("backward: tensor does not require grad and has no grad_fn");
    return -1;
  }
  sere_tensor *seed;
  if (grad) {
    if (!sere_same_shape(grad, root)) {
      char a[128], b[128];
      sere_fail("backward: gradient of shape %s given for a tensor of shape %s",
                sere_shape_str(grad, a, sizeof a), sere_shape_str(root, b, sizeof b));
      return -1;
    }
    if (sere_device_of(grad) != sere_device_of(root)) {
      sere_fail("backward: gradient on %s given for a tensor on %s (move it with :to())",
                sere_device_name(sere_device_of(grad)), sere_device_name(sere_device_of(root)));
      return -1;
    }
    seed = sere_as_contiguous_dtype(grad, sere_dtype_is_float(root->dtype) ? root->dtype : SERE_F32);
  } else {
    if (sere_numel(root) != 1) {
      char a[128];
      sere_fail("backward: implicit gradient needs a tensor with one element, got shape %s; "
                "pass a gradient: t:backward(grad)", sere_shape_str(root, a, sizeof a));
      return -1;
    }
    seed = sere_tensor_new_like(root, root->dtype);
    if (seed) sere_fill_raw(seed, 1.0);
  }
  if (!seed) return -1;

  if (!root->grad_fn) { /* a leaf: the gradient is the seed itself */
    int rc = accumulate_leaf(root, seed);
    sere_tensor_release(seed);
    return rc;
  }

  /* Backward functions compute in the dtypes the forward pass saved:
   * autocast (a forward-pass mode) must not recast them. */
  int prev_mode = sere_set_grad_enabled(0), prev_autocast = sere_set_autocast_enabled(0);
  int rc = -1;
  node_list all = {0}, ready = {0};

  /* pass 1: discover nodes and count consumers (iterative DFS) */
  node_list stack = {0};
  root->grad_fn->visit_mark = 1;
  if (list_push(&stack, root->grad_fn) || list_push(&all, root->grad_fn)) goto done;
  while (stack.len) {
    sere_node *n = stack.items[--stack.len];
    for (int i = 0; i < n->ninputs; i++) {
      sere_node *m = n->edges[i].node;
      if (!m) continue;
      m->pending++;
      if (!m->visit_mark) {
        m->visit_mark = 1;
        if (list_push(&stack, m) || list_push(&all, m)) goto done;
      }
    }
  }

  root->grad_fn->grad_accum = seed;
  seed = NULL;
  if (list_push(&ready, root->grad_fn)) goto done;

  /* pass 2: run nodes whose consumers have all contributed */
  while (ready.len) {
    sere_node *n = ready.items[--ready.len];
    sere_tensor *g = n->grad_accum;
    n->grad_accum = NULL;
    sere_tensor **grad_in = calloc((size_t)(n->ninputs > 0 ? n->ninputs : 1), sizeof *grad_in);
    if (!grad_in) {
      sere_tensor_release(g);
      sere_fail("backward: out of memory");
      goto done;
    }
    if (g && n->released) {
      free(grad_in);
      sere_tensor_release(g);
      sere_fail("%s backward: trying to backward through the graph a second time; the saved "
                "tensors were freed after the first backward (pass retain_graph = true)", n->name);
      goto done;
    }
    /* A node whose consumers all produced no gradient still runs as a no-op,
     * so the pending counts of the nodes below it reach zero. */
    int ran = g != NULL;
    int brc = ran ? n->backward(n, g, grad_in) : 0;
    sere_tensor_release(g);
    if (brc) {
      for (int i = 0; i < n->ninputs; i++) sere_tensor_release(grad_in[i]);
      free(grad_in);
      goto done;
    }
    if (ran && !retain_graph) {
      node_free_saved(n);
      n->released = 1;
    }
    for (int i = 0; i < n->ninputs; i++) {
      sere_edge *e = &n->edges[i];
      sere_tensor *gi = grad_in[i];
      int err = 0;
      if (gi && (e->node || e->leaf)) {
        err = check_grad_shape(n, i, gi);
        if (!err && e->leaf) err = accumulate_leaf(e->leaf, gi);
        if (!err && e->node) err = accumulate(&e->node->grad_accum, gi);
      }
      if (e->node && !err && --e->node->pending == 0) err = list_push(&ready, e->node);
      sere_tensor_release(gi);
      if (err) {
        for (int j = i + 1; j < n->ninputs; j++) sere_tensor_release(grad_in[j]);
        free(grad_in);
        goto done;
      }
    }
    free(grad_in);
  }
  rc = 0;

done:
  /* reset engine scratch on every discovered node, whatever happened */
  for (size_t i = 0; i < all.len; i++) {
    sere_node *n = all.items[i];
    n->pending = 0;
    n->visit_mark = 0;
    sere_tensor_release(n->grad_accum);
    n->grad_accum = NULL;
  }
  sere_tensor_release(seed);
  free(all.items);
  free(ready.items);
  free(stack.items);
  sere_set_grad_enabled(prev_mode);
  sere_set_autocast_enabled(prev_autocast);
  return rc;
}
