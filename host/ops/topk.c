/* topk.c — the k largest (or smallest) elements along a dim and their
 * indices; ops/reduce.c builds max/min/argmax/argmin on it (k = 1).
 *
 * Elements are compared through an int64 "order key", so one loop serves
 * every dtype: an f32 bit pattern is mapped so that integer order is float
 * order (-0 equal to +0, NaN above everything, so NaN is selected first as
 * in PyTorch), an integer is its own key, and smallest-first selection
 * flips the key (~key) while keeping NaN on top. Each line keeps a heap of
 * its k best elements with the worst at the root (O(n log k)); among equal
 * keys the lower index wins, so max/min report the first extremum.
 *
 * On CUDA tensors k = 1 (max, min, argmax, argmin) runs as a reduction in
 * kernels/reduce.cu with the same order; larger k is CPU-only for now. */
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#ifdef SERE_WITH_CUDA
#include "../../kernels/reduce.h"
#endif

#define PARALLEL_MIN 32768

typedef struct {
  int64_t key, idx;
} entry;

static inline int64_t order_key(const void *x, int is_float, int64_t i, int largest) {
  int64_t k;
  if (is_float) {
    float v = ((const float *)x)[i];
    if (v != v) return INT64_MAX;
    int32_t b;
    memcpy(&b, &v, sizeof b);
    if (b == INT32_MIN) b = 0; /* -0 */
    k = b >= 0 ? b : b ^ INT32_MAX;
  } else {
    k = ((const int64_t *)x)[i];
  }
  return largest ? k : ~k;
}

static inline int better(entry a, entry b) { return a.key > b.key || (a.key == b.key && a.idx < b.idx); }

static void sift_down(entry *h, int64_t n, int64_t i) {
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && better(h[w], h[l])) w = l;
    if (r < n && better(h[w], h[r])) w = r;
    if (w == i) return;
    entry t = h[i];
    h[i] = h[w];
    h[w] = t;
    i = w;
  }
}

static void sift_up(entry *h, int64_t i) {
  while (i > 0) {
    int64_t parent = (i - 1) / 2;
    if (!better(h[parent], h[i])) return;
    entry t = h[i];
    h[i] = h[parent];
    h[parent] = t;
    i = parent;
  }
}

static int by_index(const void *a, const void *b) {
  int64_t x = ((const entry *)a)->idx, y = ((const entry *)b)->idx;
  return (x > y) - (x < y);
}

/* Leaves the k best of the line (n elements from `start`, `stride` apart)
 * in h: best first when sorted, else in index order. */
static void select_line(const void *x, int is_float, int64_t start, int64_t stride, int64_t n, int64_t k,
                        int largest, int sorted, entry *h) {
  if (k == 0) return;
  int64_t size = 0;
  for (int64_t r = 0; r < n; r++) {
    entry e = {order_key(x, is_float, start + r * stride, largest), r};
    if (size < k) {
      h[size] = e;
      sift_up(h, size++);
    } else if (better(e, h[0])) {
      h[0] = e;
      sift_down(h, k, 0);
    }
  }
  if (!sorted) {
    qsort(h, (size_t)k, sizeof *h, by_index);
    return;
  }
  for (int64_t m = k; m > 1; m--) { /* heapsort: the worst goes to the back */
    entry t = h[0];
    h[0] = h[m - 1];
    h[m - 1] = t;
    sift_down(h, m - 1, 0);
  }
}

#ifdef SERE_WITH_CUDA
/* The reduction plan (kernels/reduce.h) of a top-1 over R along [outer, R, C]. */
static sere_reduce_plan line_plan(int64_t outer, int64_t R, int64_t C) {
  sere_reduce_plan p;
  memset(&p, 0, sizeof p);
  p.nkeep = outer > 1;
  p.ksize[0] = outer;
  p.kstride[0] = R * C;
  p.nblocks = outer;
  p.count = R;
  p.inner_reduced = C == 1;
  p.inner = C == 1 ? R : C;
  p.cols = C;
  p.nred = C > 1 && R > 1;
  p.rsize[0] = R;
  p.rstride[0] = C;
  return p;
}
#endif

/* Scatters g back to the selected positions. ints: dim, base. saved: indices. */
static int topk_backward(sere_node *n, sere_tensor *g, sere_tensor **gi) {
  const sere_edge *e = &n->edges[0];
  sere_tensor *ix = sere_node_saved(n, 0);
  if (!ix) return -1;
  int d = (int)n->ints[0];
  int64_t base = n->ints[1], R = e->ndim ? e->shape[d] : 1, k = g->ndim ? g->shape[d] : 1;
  int64_t C = 1;
  for (int i = d + 1; i < e->ndim; i++) C *= e->shape[i];
  int64_t O = C > 0 && k > 0 ? sere_numel(g) / (C * k) : 0;
  sere_tensor *gf = sere_as_contiguous_dtype(g, SERE_F32), *ic = sere_contiguous_raw(ix);
  sere_tensor *gx = gf && ic ? sere_tensor_new_on(sere_device_of(gf), SERE_F32, e->ndim, e->shape) : NULL; /* zeros */
#ifdef SERE_WITH_CUDA
  if (gx && sere_device_of(gx) == SERE_CUDA) {
    if (sere_cuda_topk_scatter(sere_data(gf), sere_data(ic), base, O, k, R, C, sere_data(gx))) {
      sere_tensor_release(gx);
      gx = NULL;
    }
  } else
#endif
  if (gx) {
    const float *gv = sere_data(gf);
    const int64_t *iv = sere_data(ic);
    float *out = gx->storage->data;
    for (int64_t o = 0; o < O; o++)
      for (int64_t j = 0; j < k; j++)
        for (int64_t c = 0; c < C; c++) {
          int64_t at = (o * k + j) * C + c;
          out[(o * R + iv[at] - base) * C + c] += gv[at];
        }
  }
  sere_tensor_release(gf);
  sere_tensor_release(ic);
  return (gi[0] = sere_grad_as(gx, e->dtype)) ? 0 : -1;
}

int sere_topk(sere_tensor *t, int64_t k, int dim, int largest, int sorted, int64_t base, sere_tensor **values,
              sere_tensor **indices) {
  char a[160];
  int d;
  *values = *indices = NULL;
  if (sere_wrap_dim(dim, t->ndim, "topk", &d)) return -1;
  int64_t R = t->ndim ? t->shape[d] : 1;
  if (k < 0 || k > R) {
    sere_fail("topk: k = %lld is out of range for dim %d of size %lld (shape %s)", (long long)k, d + 1,
              (long long)R, sere_shape_str(t, a, sizeof a));
    return -1;
  }
  if (k > 1 && sere_require_cpu("topk with k > 1", 1, &t)) return -1;
  int64_t shape[SERE_MAX_DIMS];
  int nd = t->ndim ? t->ndim : k != 1;
  memcpy(shape, t->shape, sizeof shape);
  shape[d] = k;
  int is_float = sere_dtype_is_float(t->dtype);
  sere_tensor *x = sere_as_contiguous_dtype(t, is_float ? SERE_F32 : SERE_I64);
  sere_device_type dev = sere_device_of(t);
  sere_tensor *v = sere_tensor_new_uninit_on(dev, t->dtype, nd, shape);
  sere_tensor *ix = sere_tensor_new_uninit_on(dev, SERE_I64, nd, shape);
  if (!x || !v || !ix) goto fail;
  int64_t C = 1;
  for (int i = d + 1; i < t->ndim; i++) C *= t->shape[i];
  int64_t lines = R > 0 ? sere_numel(t) / R : 0;
  const void *xd = sere_data(x);
  int64_t *iv = ix->storage->data;
  int oom = 0;
#ifdef SERE_WITH_CUDA
  if (dev == SERE_CUDA) {
    if (lines && k == 1) { /* k == 0: nothing to select */
      sere_reduce_plan pl = line_plan(lines / C, R, C);
      if (sere_cuda_select1(&pl, xd, x->dtype, largest, base, sere_data(v), t->dtype, iv)) goto fail;
    }
  } else
#endif
  { /* the CPU: a heap per line */
#pragma omp parallel if (lines * R >= PARALLEL_MIN && lines > 1)
    {
      entry *h = malloc((size_t)(k + 1) * sizeof *h);
      if (!h) {
#pragma omp atomic write
        oom = 1;
      }
#pragma omp for schedule(static)
      for (int64_t line = 0; line < lines; line++) {
        if (!h) continue;
        int64_t o = line / C, c = line % C;
        select_line(xd, is_float, o * R * C + c, C, R, k, largest, sorted, h);
        for (int64_t j = 0; j < k; j++) {
          int64_t at = (o * k + j) * C + c, src = (o * R + h[j].idx) * C + c;
          iv[at] = h[j].idx + base;
          if (t->dtype == SERE_F32) ((float *)v->storage->data)[at] = ((const float *)xd)[src];
          else if (t->dtype == SERE_I64) ((int64_t *)v->storage->data)[at] = ((const int64_t *)xd)[src];
          else sere_store_linear(v->storage->data, t->dtype, at, sere_load_linear(xd, x->dtype, src));
        }
      }
      free(h);
    }
  }
  if (oom) {
    sere_fail("topk: out of memory for k = %lld", (long long)k);
    goto fail;
  }
  sere_tensor_release(x);
  x = NULL;
  if (is_float && sere_needs_grad(1, &t)) {
    sere_node *n = sere_node_new("topk", topk_backward, 1, &t);
    if (!n) goto fail;
    n->ints[0] = d;
    n->ints[1] = base;
    sere_node_save(n, 0, ix);
    sere_attach(v, n);
  }
  *values = v;
  *indices = ix;
  return 0;
fail:
  sere_tensor_release(x);
  sere_tensor_release(v);
  sere_tensor_release(ix);
  return -1;
}
