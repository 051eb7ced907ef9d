/* test_cuda_batchnorm_sync.c — the SyncBatchNorm hook of sere_batch_norm on
 * CUDA tensors, whose per-channel sums live on the device and go through
 * the host for the hook (ops/batchnorm.c). A fake hook all-reduces over two
 * identical ranks (it doubles the buffer, counts included) and records
 * what it was given; the same batch norm with the same hook on the CPU is
 * the reference: the buffers handed to the hook ([3 C] forward, [2 C]
 * backward), outputs, running statistics and the gradients of x, weight and
 * bias must agree. A failing hook is an error that leaves the running
 * statistics alone. Without a CUDA device (or emulator) it prints SKIP and
 * exits 77 (ctest's "skipped"). Prints "N passed, N failed"; exits 1 on
 * failure. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "ops/ops.h"
#include "tensor.h"
#ifdef SERE_WITH_CUDA
#include "cuda_device.h"

#define B 4
#define C 3
#define S 5
#define TOL 1e-5

typedef struct twin_ranks {
  int calls, fail;
  double fwd[3 * C], bwd[2 * C]; /* the buffers as given, before the sum */
} twin_ranks;

static int twin_allreduce(double *buf, int64_t n, void *ctx) {
  twin_ranks *r = ctx;
  r->calls++;
  if (r->fail || (n != 3 * C && n != 2 * C)) return -1;
  memcpy(n == 3 * C ? r->fwd : r->bwd, buf, sizeof *buf * (size_t)n);
  for (int64_t i = 0; i < n; i++) buf[i] *= 2;
  return 0;
}

/* A CPU copy of t (any device), f32. */
static sere_tensor *on_cpu(const sere_tensor *t) {
  sere_tensor *c = sere_tensor_new(SERE_F32, t->ndim, t->shape);
  if (c && sere_copy_raw(c, t)) {
    sere_tensor_release(c);
    return NULL;
  }
  return c;
}

/* A copy of t on dev, requiring grad when asked. */
static sere_tensor *copy_to(const sere_tensor *t, sere_device_type dev, int requires_grad) {
  sere_tensor *c = sere_tensor_new_on(dev, t->dtype, t->ndim, t->shape);
  if (c && sere_copy_raw(c, t)) {
    sere_tensor_release(c);
    return NULL;
  }
  if (c) c->requires_grad = requires_grad;
  return c;
}

/* max |a - b| / (1 + |b|) of two tensors of the same shape on any device, or inf. */
static double max_diff(const sere_tensor *a, const sere_tensor *b) {
  sere_tensor *fa = a ? on_cpu(a) : NULL, *fb = b ? on_cpu(b) : NULL;
  double worst = INFINITY;
  if (fa && fb && sere_same_shape(fa, fb)) {
    const float *pa = sere_data(fa), *pb = sere_data(fb);
    worst = 0;
    for (int64_t i = 0; i < sere_numel(fa); i++) {
      double d = fabs((double)pa[i] - pb[i]) / (1 + fabs(pb[i]));
      if (!(d <= worst)) worst = d; /* NaN counts as the worst */
    }
  }
  sere_tensor_release(fa);
  sere_tensor_release(fb);
  return worst;
}

static double max_diff_raw(const double *a, const double *b, int n) {
  double worst = 0;
  for (int i = 0; i < n; i++) {
    double d = fabs(a[i] - b[i]) / (1 + fabs(b[i]));
    if (!(d <= worst)) worst = d;
  }
  return worst;
}

/* One training batch norm with the hook on dev, and its backward. */
typedef struct run {
  twin_ranks ranks;
  sere_tensor *x, *w, *b, *rm, *rv, *y;
} run;

static void run_on(run *r, sere_device_type dev, sere_tensor *x, sere_tensor *w, sere_tensor *b, sere_tensor *g) {
  const int64_t cs[] = {C};
  memset(&r->ranks, 0, sizeof r->ranks);
  sere_bn_sync sync = {twin_allreduce, &r->ranks};
  sere_tensor *ones = sere_full(1, cs, 1.0, SERE_F32);
  r->x = copy_to(x, dev, 1);
  r->w = copy_to(w, dev, 1);
  r->b = copy_to(b, dev, 1);
  r->rm = sere_tensor_new_on(dev, SERE_F32, 1, cs);
  r->rv = copy_to(ones, dev, 0);
  r->y = sere_batch_norm(r->x, r->w, r->b, r->rm, r->rv, 1, 0.1, 1e-5, &sync);
  sere_tensor *gd = copy_to(g, dev, 0);
  CHECK(r->y && gd && sere_backward(r->y, gd, 0) == 0);
  sere_tensor_release(gd);
  sere_tensor_release(ones);
}

static void release_run(run *r) {
  sere_tensor *all[] = {r->x, r->w, r->b, r->rm, r->rv, r->y};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sere_tensor_release(all[i]);
}

static void test_cuda_matches_cpu(void) {
  sere_generator gen = {11, 0};
  const int64_t xs[] = {B, C, S}, cs[] = {C};
  sere_tensor *x = sere_tensor_new(SERE_F32, 3, xs), *g = sere_tensor_new(SERE_F32, 3, xs);
  sere_tensor *w = sere_tensor_new(SERE_F32, 1, cs), *b = sere_tensor_new(SERE_F32, 1, cs);
  sere_normal_(x, 1.0, 2.0, &gen);
  sere_normal_(g, 0, 1, &gen);
  sere_normal_(w, 1.0, 0.3, &gen);
  sere_normal_(b, 0, 1, &gen);
  run cpu, gpu;
  run_on(&cpu, SERE_CPU, x, w, b, g);
  run_on(&gpu, SERE_CUDA, x, w, b, g);
  CHECK(gpu.ranks.calls == 2 && cpu.ranks.calls == 2); /* one forward, one backward all-reduce */
  CHECK(gpu.ranks.fwd[2 * C] == B * S);                /* the local count per channel */
  CHECK(max_diff_raw(gpu.ranks.fwd, cpu.ranks.fwd, 3 * C) < 1e-12);
  CHECK(max_diff_raw(gpu.ranks.bwd, cpu.ranks.bwd, 2 * C) < 1e-6);
  CHECK(max_diff(gpu.y, cpu.y) < TOL);
  CHECK(max_diff(gpu.rm, cpu.rm) < TOL);
  CHECK(max_diff(gpu.rv, cpu.rv) < TOL); /* the unbiased variance over 2 B S values */
  CHECK(max_diff(gpu.x->grad, cpu.x->grad) < TOL);
  CHECK(max_diff(gpu.w->grad, cpu.w->grad) < TOL);
  CHECK(max_diff(gpu.b->grad, cpu.b->grad) < TOL);
  release_run(&cpu);
  release_run(&gpu);

  /* a failing hook: an error, and the running statistics stay as they were */
  twin_ranks failing = {0};
  failing.fail = 1;
  sere_bn_sync sync = {twin_allreduce, &failing};
  sere_tensor *ones = sere_full(1, cs, 1.0, SERE_F32);
  sere_tensor *xd = copy_to(x, SERE_CUDA, 0), *rm = sere_tensor_new_on(SERE_CUDA, SERE_F32, 1, cs);
  sere_tensor *rv = copy_to(ones, SERE_CUDA, 0);
  sere_tensor *y = sere_batch_norm(xd, NULL, NULL, rm, rv, 1, 0.1, 1e-5, &sync);
  CHECK(!y && strstr(sere_last_error(), "sync all-reduce") != NULL);
  CHECK(max_diff(rv, ones) == 0);
  sere_tensor *all[] = {x, g, w, b, ones, xd, rm, rv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sere_tensor_release(all[i]);
}

#endif

int main(void) {
#ifdef SERE_WITH_CUDA
  if (sere_cuda_device_count() > 0) {
    test_cuda_matches_cpu();
    return check_summary();
  }
#endif
  printf("SKIP test_cuda_batchnorm_sync: no CUDA device (or emulator) in this build\n");
  return 77; /* ctest: skipped */
}
