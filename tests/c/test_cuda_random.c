/* test_cuda_random.c — sere_randint_ on a GPU tensor (kernels/random.cu)
 * in more cases than the Lua test reaches: every dtype, odd sizes, wide
 * and negative ranges, a strided target and an odd generator offset,
 * against the CPU fill from the same state, exactly; the generator
 * advances alike. Without a GPU (or CUDA) it prints SKIP and exits 77
 * (ctest's "skipped"). Prints "N passed, N failed"; exits 1 on failure. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "ops/ops.h"
#include "tensor.h"
#ifdef SERE_WITH_CUDA
#include "cuda_device.h"
#endif

/* Fills a CPU and a GPU tensor (of `shape`, through a transposed view when
 * `transposed`) from generators in the same state; 1 if they agree. */
static int randint_matches(sere_dtype dt, int ndim, const int64_t *shape, int transposed, int64_t lo, int64_t hi,
                           uint64_t offset) {
  sere_generator a = {.seed = 0x5eedull + (uint64_t)lo, .offset = offset}, b = a;
  sere_tensor *c = sere_tensor_new(dt, ndim, shape), *g = sere_tensor_new_on(SERE_CUDA, dt, ndim, shape);
  sere_tensor *cv = c && transposed ? sere_transpose(c, 0, 1) : sere_tensor_retain(c);
  sere_tensor *gv = g && transposed ? sere_transpose(g, 0, 1) : sere_tensor_retain(g);
  sere_tensor *back = g ? sere_tensor_new(dt, ndim, shape) : NULL;
  int ok = back && !sere_randint_(cv, lo, hi, &a) && !sere_randint_(gv, lo, hi, &b) && !sere_copy_raw(back, g) &&
           a.offset == b.offset && !memcmp(c->storage->data, back->storage->data, c->storage->nbytes);
  if (!ok) fprintf(stderr, "randint %s [%lld, %lld): %s\n", sere_dtype_name(dt), (long long)lo, (long long)hi,
                   back ? "cpu and cuda differ" : sere_last_error());
  sere_tensor_release(cv);
  sere_tensor_release(gv);
  sere_tensor_release(c);
  sere_tensor_release(g);
  sere_tensor_release(back);
  return ok;
}

int main(void) {
#ifdef SERE_WITH_CUDA
  if (sere_cuda_device_count() > 0) {
    const int64_t odd[1] = {197}, one[1] = {1}, square[2] = {9, 7};
    CHECK(randint_matches(SERE_I64, 1, odd, 0, -3, 1000000007, 0));
    CHECK(randint_matches(SERE_I64, 1, one, 0, 0, 2, 5));
    CHECK(randint_matches(SERE_I64, 2, square, 0, -((int64_t)1 << 31), (int64_t)1 << 31, 4294967297ull));
    CHECK(randint_matches(SERE_I32, 1, odd, 0, -100, 100, 3));
    CHECK(randint_matches(SERE_U8, 2, square, 1, 0, 256, 11));
    CHECK(randint_matches(SERE_F32, 2, square, 1, -7, 9, 1));
    CHECK(randint_matches(SERE_BF16, 1, odd, 0, 0, 1000, 2));
    CHECK(randint_matches(SERE_BOOL, 1, odd, 0, 0, 2, 9));
    return check_summary();
  }
#endif
  printf("SKIP test_cuda_random: no CUDA device (or emulator) in this build\n");
  return 77; /* ctest: skipped */
}
