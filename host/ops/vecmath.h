/* vecmath.h — f32 math in a form that loops calling it vectorise under -O3
 * without -ffast-math (a loop that calls libm's expf per element does not):
 * exp, tanh, log, sin/cos, erf, sqrt, and the sin/cos of 2 pi t that
 * Box-Muller needs.
 * Shared by the ops with such functions in a hot loop (element-wise,
 * softmax, attention, losses, GELU, the random fills); static inline, so
 * that every loop gets them inlined. Accuracies are measured against
 * double-precision libm over every float of the stated range, with and
 * without FMA. */
#ifndef SERE_VECMATH_H
#define SERE_VECMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Put before a function whose loops are bound by arithmetic: it is compiled
 * for AVX-512 and AVX2 + FMA as well as baseline x86-64 (SSE2, what the
 * build targets) and the best version is picked when the program loads
 * (glibc's ifunc). With SSE2 alone, exp-heavy loops run 3-8x slower. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__GLIBC__)
#define SERE_WIDE_SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SERE_WIDE_SIMD
#endif

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

/* tanh(x) within 1.5 ulp. For |x| < 0.55, x + x^3 P(x^2) with P a degree-4
 * minimax fit (relative error 1e-9 before rounding): no cancellation near
 * 0, where (e^2x - 1) / (e^2x + 1) would lose every digit. Above, 1 - 2 /
 * (e^2|x| + 1) with the sign put back: there tanh >= 0.5 and the
 * subtraction costs nothing. Both are computed and one selected, so loops
 * vectorise. e^2|x| = inf gives +-1, -0 stays -0, NaN stays NaN. */
static inline float sere_tanh_core(float x) {
  const float a = fabsf(x), z = a * a;
  float p = -6.274218205e-03f;
  p = p * z + 2.107166499e-02f;
  p = p * z - 5.385230854e-02f;
  p = p * z + 1.333258599e-01f;
  p = p * z - 3.333331645e-01f;
  const float small = a + a * z * p;
  const float big = 1.0f - 2.0f / (sere_exp_core(2.0f * a) + 1.0f);
  return copysignf(sere_select_f32(a < 0.55f, small, big), x);
}

/* ln x within 1.2 ulp, for every x (subnormals included): ln(-x) and ln NaN
 * are NaN, ln 0 = -inf, ln inf = inf. x = 2^e m with m in [sqrt(1/2),
 * sqrt(2)), f = m - 1 (exact) and s = f / (2 + f), so that
 *   ln m = 2 atanh s = f - f^2/2 + s (f^2/2 + R(s^2)),
 * R(z) = z P(z), P a degree-2 minimax fit (R's absolute error 2e-9 on
 * |s| <= 0.172): the large terms f and e ln2 (ln2 in the two parts of
 * sere_exp_core) are exact, and R's error is scaled by s. */
static inline float sere_log_core(float x) {
  const int sub = x < 0x1p-126f; /* subnormal: scale to normal first */
  const float xs = sere_select_f32(sub, x * 0x1p23f, x);
  uint32_t bits;
  memcpy(&bits, &xs, sizeof bits);
  /* move the mantissa range [sqrt(1/2), sqrt(2)) onto whole binades */
  bits += 0x3f800000u - 0x3f3504f3u;
  const float e = (float)((int32_t)(bits >> 23) - 127 - (sub ? 23 : 0));
  bits = (bits & 0x007fffffu) + 0x3f3504f3u;
  float m;
  memcpy(&m, &bits, sizeof m);
  const float f = m - 1.0f, hf2 = 0.5f * f * f;
  const float s = f / (2.0f + f), z = s * s;
  const float r = z * (6.666677594e-01f + z * (3.997754157e-01f + z * 2.987173796e-01f));
  float y = e * 0.693359375f + (f - hf2 + (s * (hf2 + r) - e * 2.12194440e-4f));
  y = sere_select_f32(x == 0.0f, -INFINITY, y);
  y = sere_select_f32(x < 0.0f, NAN, y);
  return sere_select_f32(x == INFINITY || x != x, x, y);
}

/* erfcx(t) = e^(t^2) erfc(t) for t in [0, 9.3], within 5e-9 relative: a
 * (4, 5) rational fit, in double, where its Horner steps cost no digits.
 * With it erfc(t) = e^(-t^2) erfcx(t) has no cancellation (GELU's normal
 * tail, erf). */
static inline double sere_erfcx(double t) {
  double p = 0.031744026432210026;
  p = p * t + 0.22424052377651335;
  p = p * t + 0.72120009114455041;
  p = p * t + 1.2285211894789765;
  p = p * t + 1.0000000040663113;
  double q = 0.056263959025512705;
  q = q * t + 0.39748706521212024;
  q = q * t + 1.3059389270800625;
  q = q * t + 2.380670626318711;
  q = q * t + 2.3569007856050841;
  q = q * t + 1.0;
  return p / q;
}

/* erf x within 2 ulp. For |x| < 0.5, x P(x^2) with 2 / sqrt(pi) in two
 * parts and P a degree-3 minimax fit (relative error 1.5e-9); above, 1 -
 * e^(-x^2) erfcx(|x|), where erf >= 0.52 and the subtraction is harmless.
 * From |x| = 9 on, erf is +-1 in f32. NaN stays NaN. */
static inline float sere_erf_core(float x) {
  const float a = fabsf(x), z = a * a;
  const float small = a * 1.128379226e+00f + a * (-5.863538342e-08f + z * (-3.761261702e-01f + z * (1.128294989e-01f +
                                                     z * (-2.676402591e-02f + z * 4.730230197e-03f))));
  const float t = sere_select_f32(a < 9.0f, a, 9.0f); /* also NaN -> 9: no NaN in the exponent bits */
  const float big = (float)(1.0 - (double)sere_exp_core(-t * t) * sere_erfcx(t));
  return sere_select_f32(x != x, x, copysignf(sere_select_f32(a < 0.5f, small, big), x));
}

/* sin x (cosine: quadrant + 1) for |x| < SERE_TRIG_MAX within 0.5 ulp +
 * 2^-30 relative (measured on every third float), i.e. almost always
 * correctly rounded: in double, x = n
 * pi/2 + r with pi/2 in two parts (the first with 31 bits, so n times it
 * is exact), then minimax polynomials on |r| <= pi/4 (relative error 5e-12)
 * chosen and signed by the quadrant n mod 4. Beyond SERE_TRIG_MAX (and for
 * inf, NaN) the result is meaningless: sere_sin_row recomputes those. */
#define SERE_TRIG_MAX 1048576.0f
static inline float sere_sin_quadrant(float x, uint32_t quadrant_add) {
  const double xd = x;
  double nb = xd * 0.63661977236758134 + 6755399441055744.0; /* + 1.5 * 2^52 rounds to an integer */
  uint64_t nbits;
  memcpy(&nbits, &nb, sizeof nbits);
  const double n = nb - 6755399441055744.0;
  const double r = (xd - n * 1.5707963267341256) - n * 6.077100506506192e-11, z = r * r;
  const float sv = (float)(r * (1.0 + z * (-0.16666666640775116 + z * (0.0083333293022841357 +
                                             z * (-0.00019839311442086918 + z * 2.7181137005212899e-06)))));
  const float cv = (float)(1.0 - 0.5 * z + z * z * (0.041666666619450531 + z * (-0.0013888883496592111 +
                                        z * (2.4799459241771541e-05 + z * -2.7205679151634506e-07))));
  const uint32_t q = (uint32_t)nbits + quadrant_add;
  float v = sere_select_f32(q & 1, cv, sv);
  uint32_t vb;
  memcpy(&vb, &v, sizeof vb);
  vb ^= (q & 2) << 30; /* quadrants 2 and 3: negate */
  memcpy(&v, &vb, sizeof v);
  return v;
}

/* out[i] = sin in[i] (cos when `cosine`) for n elements; out may be in.
 * Always inlined, so that it takes the caller's SERE_WIDE_SIMD target. */
static inline __attribute__((always_inline)) void sere_sin_row(float *out, const float *in, int64_t n, int cosine) {
  float buf[256];
  for (int64_t i0 = 0; i0 < n; i0 += 256) {
    const int64_t m = n - i0 < 256 ? n - i0 : 256;
    const float *x = in + i0;
    float *y = out == in ? buf : out + i0; /* in place: keep x for the second pass */
    int far = 0;
    for (int64_t i = 0; i < m; i++) {
      y[i] = sere_sin_quadrant(x[i], (uint32_t)cosine);
      far |= !(fabsf(x[i]) < SERE_TRIG_MAX);
    }
    if (far)
      for (int64_t i = 0; i < m; i++)
        if (!(fabsf(x[i]) < SERE_TRIG_MAX)) y[i] = cosine ? cosf(x[i]) : sinf(x[i]);
    if (y == buf) memcpy(out + i0, buf, (size_t)m * sizeof *buf);
  }
}

/* sqrt x within 1 ulp for x = 0 and every normal x >= 0 (subnormals,
 * negative x, inf and NaN are not for it): libm's sqrtf may set errno, and
 * loops that call it stay scalar. 1/sqrt x is estimated from the exponent
 * bits (3.5% off), refined by two Newton steps (5e-6), and x / sqrt x
 * corrected once by its residual. */
static inline float sere_sqrt_core(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  bits = 0x5f375a86u - (bits >> 1);
  float y;
  memcpy(&y, &bits, sizeof y);
  y = y * (1.5f - 0.5f * x * y * y);
  y = y * (1.5f - 0.5f * x * y * y);
  float r = x * y;
  r = r + 0.5f * y * (x - r * r);
  return sere_select_f32(x == 0.0f, 0.0f, r);
}

/* cos(2 pi t) and sin(2 pi t) for t = k 2^-24, 0 <= k < 2^24 (Box-Muller's
 * angle), within 1.6 ulp: k - 2^22 j (j = round(4 t)) is exact in integers,
 * leaves |t'| <= 1/8, and the quarter turns j swap and negate the results
 * of minimax polynomials in t' (relative error 3e-9 and 6e-11). */
static inline void sere_cossin_2pi(uint32_t k, float *c, float *s) {
  const uint32_t j = (k + (1u << 21)) >> 22;
  const float t = (float)((int32_t)k - (int32_t)(j << 22)) * 0x1p-24f, z = t * t;
  /* 2 pi in two parts: rounded to float alone it would cost half an ulp */
  const float sv = t * 6.283185482e+00f + t * (-1.748455600e-07f + z * (-4.134167099e+01f + z * (8.159376526e+01f +
                                                                                         z * -7.544559479e+01f)));
  const float cv = 1.0f + z * (-1.973920822e+01f + z * (6.493930817e+01f + z * (-8.544229889e+01f +
                                                                             z * 5.920278549e+01f)));
  float cq = sere_select_f32(j & 1, sv, cv), sq = sere_select_f32(j & 1, cv, sv);
  uint32_t cb, sb;
  memcpy(&cb, &cq, sizeof cb);
  memcpy(&sb, &sq, sizeof sb);
  cb ^= ((j + 1) & 2) << 30; /* cos is negative in quarters 1 and 2 */
  sb ^= (j & 2) << 30;       /* sin in quarters 2 and 3 */
  memcpy(c, &cb, sizeof cb);
  memcpy(s, &sb, sizeof sb);
}

#endif
