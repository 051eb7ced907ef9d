/* vecmath.h — f32 math in a form that loops calling it vectorise under -O3
 * without -ffast-math (a loop that calls libm's expf per element does not).
 * Shared by the ops with exp in a hot loop (element-wise, softmax,
 * attention, losses); static inline, so that every loop gets it inlined. */
#ifndef SERE_VECMATH_H
#define SERE_VECMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* a if cond else b, through bit masks: under the default -ftrapping-math
 * GCC does not turn a ?: on floats into a select, and a branch stops
 * vectorisation. */
static inline float sere_select_f32(int cond, float a, float b) {
  int32_t ia, ib, m = -(int32_t)(cond != 0);
  memcpy(&ia, &a, sizeof ia);
  memcpy(&ib, &b, sizeof ib);
  ia = (ia & m) | (ib & ~m);
  memcpy(&a, &ia, sizeof a);
  return a;
}

#define SERE_EXP_MIN -86.9f    /* below, e^x (< 2e-38, near FLT_MIN) is flushed to 0 */
#define SERE_EXP_MAX 88.72283f /* the largest float x with e^x < FLT_MAX; above, inf */

/* e^r for |r| <= ln2 / 2 as 1 + r + r^2 P(r), with the coefficients of
 * Cephes' expf: the step after range reduction of sere_exp_core, for code
 * that reduces its argument its own way. */
static inline float sere_exp_poly(float r) {
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

/* e^x within 1 ulp, for every x: 0 below SERE_EXP_MIN, inf above
 * SERE_EXP_MAX, NaN stays NaN. x = n ln2 + r with |r| <= ln2 / 2 (n rounded
 * by adding 1.5 * 2^23, ln2 split into a part that n multiplies exactly and
 * a correction), and e^x = 2 e^r * 2^(n - 1), the scale written into the
 * exponent bits of the float that holds n: n = 128 stays finite, doubling
 * is exact so the product rounds once, and n >= -125 (x >= -86.99) keeps
 * the scale normal. No float is converted to an integer, so out-of-range x
 * gives garbage that the selects discard, never undefined behaviour. */
static inline float sere_exp_core(float x) {
  float nb = x * 1.44269504f + 12582912.0f;
  float n = nb - 12582912.0f;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  uint32_t bits;
  memcpy(&bits, &nb, sizeof bits); /* the integer n + 0x4B400000 */
  bits = (bits - 0x4B400000u + 126u) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  float e = (2.0f * sere_exp_poly(r)) * scale;
  e = sere_select_f32(x < SERE_EXP_MIN, 0.0f, e);
  return sere_select_f32(x > SERE_EXP_MAX, INFINITY, e);
}

/* out[i] = e^in[i] for n elements; out may be in. */
static inline void sere_exp_row(float *out, const float *in, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = sere_exp_core(in[i]);
}

#endif
