/* test_batchnorm_sync.c — the SyncBatchNorm hook of sere_batch_norm. A
 * batch is split in two halves, each run as if on its own rank with a hook
 * that adds the other half's per-channel sums (two ranks simulated in one
 * process: a first pass records each half's local sums, a second adds the
 * other half's). The halves must reproduce one batch norm over the whole
 * batch: outputs, running statistics and input gradients, with weight and
 * bias gradients that sum to the whole batch's (they stay per rank). Also:
 * a failing hook is an error, and eval mode never calls it. Prints
 * "N passed, N failed"; exits 1 on failure. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "ops/ops.h"
#include "tensor.h"


#define B 6
#define C 3
#define S 5
#define TOL 1e-5

typedef struct fake_rank {
  struct fake_rank *peer;
  int add;                      /* add the peer's recorded sums */
  int fail;                     /* report a failed all-reduce */
  double fwd[3 * C], bwd[2 * C]; /* this rank's local sums, as last seen */
  int calls;
} fake_rank;

static int fake_allreduce(double *buf, int64_t n, void *ctx) {
  fake_rank *r = ctx;
  r->calls++;
  if (r->fail) return -1;
  if (n != 3 * C && n != 2 * C) return -1;
  double *own = n == 3 * C ? r->fwd : r->bwd, *other = n == 3 * C ? r->peer->fwd : r->peer->bwd;
  memcpy(own, buf, sizeof *buf * (size_t)n);
  if (r->add)
    for (int64_t i = 0; i < n; i++) buf[i] += other[i];
  return 0;
}

/* max |a - b| / (1 + |b|) over all elements (shapes must match), or inf. */
static double max_diff(sere_tensor *a, sere_tensor *b) {
  if (!a || !b || !sere_same_shape(a, b)) return INFINITY;
  sere_tensor *fa = sere_as_contiguous_dtype(a, SERE_F32), *fb = sere_as_contiguous_dtype(b, SERE_F32);
  double worst = 0;
  const float *pa = sere_data(fa), *pb = sere_data(fb);
  for (int64_t i = 0; i < sere_numel(a); i++) {
    double d = fabs((double)pa[i] - pb[i]) / (1 + fabs(pb[i]));
    if (!(d <= worst)) worst = d; /* NaN counts as the worst */
  }
  sere_tensor_release(fa);
  sere_tensor_release(fb);
  return worst;
}

static sere_tensor *randn(int ndim, const int64_t *shape, double mean, double std, sere_generator *g) {
  sere_tensor *t = sere_tensor_new(SERE_F32, ndim, shape);
  sere_normal_(t, mean, std, g);
  return t;
}

/* A leaf copy of rows [start, start + n) of x. */
static sere_tensor *rows_leaf(sere_tensor *x, int64_t start, int64_t n) {
  sere_tensor *v = sere_narrow(x, 0, start, n);
  sere_tensor *t = sere_tensor_new(SERE_F32, v->ndim, v->shape);
  sere_copy_raw(t, v);
  sere_tensor_release(v);
  t->requires_grad = 1;
  return t;
}

static sere_tensor *leaf_copy(sere_tensor *x) { return rows_leaf(x, 0, x->shape[0]); }

static sere_tensor *slice(sere_tensor *t, int64_t start, int64_t n) { return sere_narrow(t, 0, start, n); }

static void clear_grad(sere_tensor *t) {
  sere_tensor_release(t->grad);
  t->grad = NULL;
}

static void test_two_ranks_match_one_batch(void) {
  sere_generator gen = {42, 0};
  const int64_t xs[] = {B, C, S}, cs[] = {C};
  sere_tensor *x = randn(3, xs, 1.0, 2.0, &gen), *g = randn(3, xs, 0, 1, &gen);
  sere_tensor *w = randn(1, cs, 1.0, 0.3, &gen), *b = randn(1, cs, 0, 1, &gen);
  const double momentum = 0.1, eps = 1e-5;

  /* one batch norm over the whole batch */
  sere_tensor *xf = leaf_copy(x), *wf = leaf_copy(w), *bf = leaf_copy(b);
  sere_tensor *rmf = sere_tensor_new(SERE_F32, 1, cs), *rvf = sere_tensor_new(SERE_F32, 1, cs);
  sere_fill_(rvf, 1.0);
  sere_tensor *yf = sere_batch_norm(xf, wf, bf, rmf, rvf, 1, momentum, eps, NULL);
  CHECK(yf && sere_backward(yf, g, 0) == 0);

  /* two ranks of B / 2 rows each (B / 2 = 3: odd, unlike the whole) */
  fake_rank ra = {0}, rb = {0};
  ra.peer = &rb;
  rb.peer = &ra;
  sere_bn_sync sa = {fake_allreduce, &ra}, sb = {fake_allreduce, &rb};
  sere_tensor *x0 = rows_leaf(x, 0, B / 2), *x1 = rows_leaf(x, B / 2, B / 2);
  sere_tensor *w0 = leaf_copy(w), *w1 = leaf_copy(w), *b0 = leaf_copy(b), *b1 = leaf_copy(b);
  sere_tensor *rm0 = sere_tensor_new(SERE_F32, 1, cs), *rv0 = sere_tensor_new(SERE_F32, 1, cs);
  sere_tensor *rm1 = sere_tensor_new(SERE_F32, 1, cs), *rv1 = sere_tensor_new(SERE_F32, 1, cs);
  sere_fill_(rv0, 1.0);
  sere_fill_(rv1, 1.0);

  /* forward, pass 1: record each rank's local sums */
  sere_tensor *t0 = sere_batch_norm(x0, w0, b0, NULL, NULL, 1, momentum, eps, &sa);
  sere_tensor *t1 = sere_batch_norm(x1, w1, b1, NULL, NULL, 1, momentum, eps, &sb);
  CHECK(t0 && t1);
  sere_tensor_release(t0);
  sere_tensor_release(t1);
  CHECK(ra.fwd[2 * C] == (B / 2) * S); /* the local count per channel */

  /* forward, pass 2: each rank sees the sums of the whole batch */
  ra.add = rb.add = 1;
  sere_tensor *y0 = sere_batch_norm(x0, w0, b0, rm0, rv0, 1, momentum, eps, &sa);
  sere_tensor *y1 = sere_batch_norm(x1, w1, b1, rm1, rv1, 1, momentum, eps, &sb);
  sere_tensor *yf0 = slice(yf, 0, B / 2), *yf1 = slice(yf, B / 2, B / 2);
  CHECK(max_diff(y0, yf0) < TOL);
  CHECK(max_diff(y1, yf1) < TOL);
  /* running statistics from the global mean and unbiased variance (n = B S, not B S / 2) */
  CHECK(max_diff(rm0, rmf) < TOL && max_diff(rm1, rmf) < TOL);
  CHECK(max_diff(rv0, rvf) < TOL && max_diff(rv1, rvf) < TOL);

  /* backward, pass 1: record the local gradient sums (graph kept) */
  sere_tensor *g0 = slice(g, 0, B / 2), *g1 = slice(g, B / 2, B / 2);
  ra.add = rb.add = 0;
  CHECK(sere_backward(y0, g0, 1) == 0 && sere_backward(y1, g1, 1) == 0);
  sere_tensor *leaves[] = {x0, x1, w0, w1, b0, b1};
  for (int i = 0; i < 6; i++) clear_grad(leaves[i]);

  /* backward, pass 2: the input gradients of the whole batch */
  ra.add = rb.add = 1;
  CHECK(sere_backward(y0, g0, 0) == 0 && sere_backward(y1, g1, 0) == 0);
  sere_tensor *gx0 = slice(xf->grad, 0, B / 2), *gx1 = slice(xf->grad, B / 2, B / 2);
  CHECK(max_diff(x0->grad, gx0) < TOL);
  CHECK(max_diff(x1->grad, gx1) < TOL);
  /* weight and bias gradients stay per rank and sum to the whole batch's */
  sere_tensor *gw = sere_binary(SERE_ADD, w0->grad, w1->grad), *gb = sere_binary(SERE_ADD, b0->grad, b1->grad);
  CHECK(max_diff(gw, wf->grad) < TOL);
  CHECK(max_diff(gb, bf->grad) < TOL);
  CHECK(max_diff(w0->grad, wf->grad) > 1e-3); /* a local sum, not the global one */
  CHECK(ra.calls == 4 && rb.calls == 4);      /* two forward and two backward all-reduces each */

  sere_tensor *all[] = {x,   g,  w,   b,   xf,  wf,  bf,  rmf, rvf, yf,  x0, x1, w0, w1, b0, b1, rm0, rv0,
                        rm1, rv1, y0, y1, yf0, yf1, g0, g1, gx0, gx1, gw, gb};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sere_tensor_release(all[i]);
}

static void test_failures_and_eval(void) {
  sere_generator gen = {7, 0};
  const int64_t xs[] = {4, C, 2}, cs[] = {C};
  sere_tensor *x = randn(3, xs, 0, 1, &gen), *rm = sere_tensor_new(SERE_F32, 1, cs);
  sere_tensor *rv = sere_tensor_new(SERE_F32, 1, cs);
  sere_fill_(rv, 1.0);
  fake_rank r = {0};
  r.peer = &r;
  sere_bn_sync s = {fake_allreduce, &r};

  /* eval mode normalises with the running statistics: no all-reduce */
  sere_tensor *y = sere_batch_norm(x, NULL, NULL, rm, rv, 0, 0.1, 1e-5, &s);
  CHECK(y && r.calls == 0);
  sere_tensor_release(y);

  /* a failing forward all-reduce is an error, and the running stats stay untouched */
  r.fail = 1;
  y = sere_batch_norm(x, NULL, NULL, rm, rv, 1, 0.1, 1e-5, &s);
  CHECK(!y && strstr(sere_last_error(), "sync all-reduce") != NULL);
  sere_tensor *ones = sere_full(1, cs, 1.0, SERE_F32);
  CHECK(max_diff(rv, ones) == 0);
  sere_tensor_release(ones);

  /* a failing backward all-reduce is an error of backward */
  r.fail = 0;
  sere_tensor *xl = leaf_copy(x);
  y = sere_batch_norm(xl, NULL, NULL, NULL, NULL, 1, 0.1, 1e-5, &s);
  r.fail = 1;
  CHECK(y && sere_backward(y, x, 0) == -1 && strstr(sere_last_error(), "sync all-reduce") != NULL);
  sere_tensor_release(y);
  sere_tensor_release(xl);
  sere_tensor_release(x);
  sere_tensor_release(rm);
  sere_tensor_release(rv);
}

int main(void) {
  test_two_ranks_match_one_batch();
  test_failures_and_eval();
  return check_summary();
}
