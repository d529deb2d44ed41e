// Host-only element math written so that GCC auto-vectorizes the loops that call it: no libm calls and no float
// compares in the body (under the default -ftrapping-math GCC does not if-convert float selects, which stops the
// vectorizer), only arithmetic and integer bit operations. Used by the CPU kernels; tested in csrc/tests.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__)
#define DNA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DNA_ALWAYS_INLINE inline
#endif

// Marks a hot CPU loop function: GCC on x86-64 compiles it for AVX-512 / AVX2 / baseline and picks the clone at load
// time (empty elsewhere).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DNA_CPU_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define DNA_CPU_CLONES
#endif

namespace dna_fast {

DNA_ALWAYS_INLINE int32_t f2bits(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

DNA_ALWAYS_INLINE float bits2f(int32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// Largest magnitude passed to the exp below: exp(-87.3) ~ 1.2e-38 is still a normal float.
constexpr float kExpArgMax = 87.3f;

// exp(t) for t in [-kExpArgMax, 0] (the caller guarantees the range), relative error ~2 ulp. Cephes-style:
// t = n ln2 + r with |r| <= ln2 / 2, a degree-6 polynomial for exp(r), 2^n through the exponent bits.
DNA_ALWAYS_INLINE float fast_exp_nonpos(float t) {
  // round-to-nearest of t / ln2 with the 1.5 * 2^23 trick (branch-free); n in [-126, 0]
  const float fn = (t * 1.44269504088896341f + 12582912.f) - 12582912.f;
  float r = t - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  return p * bits2f((static_cast<int32_t>(fn) + 127) << 23);
}

// sigmoid(z), accurate for both signs: e = exp(-|z|) never overflows; sigmoid = 1 / (1 + e) for z >= 0 and
// e / (1 + e) for z < 0, picked with the sign bit. |z| is clamped to kExpArgMax in the integer domain (positive
// floats order like their bits), so NaN stays NaN only through the final z * sigmoid(z) of the swish.
DNA_ALWAYS_INLINE float fast_sigmoidf(float z) {
  const int32_t zb = f2bits(z);
  int32_t ab = zb & 0x7fffffff;
  const int32_t maxb = f2bits(kExpArgMax);
  const int32_t over = ab - maxb;  // no overflow: both are non-negative
  ab -= over & ~(over >> 31);      // branch-free min(ab, maxb): a select here would stop the vectorizer
  const float e = fast_exp_nonpos(-bits2f(ab));
  const float pos = 1.f / (1.f + e), neg = e * pos;
  const int32_t mask = zb >> 31;  // all ones when z < 0 (or -0, -nan)
  return bits2f((f2bits(neg) & mask) | (f2bits(pos) & ~mask));
}

// swish(z) = z * sigmoid(z).
DNA_ALWAYS_INLINE float fast_swishf(float z) { return z * fast_sigmoidf(z); }

}  // namespace dna_fast
