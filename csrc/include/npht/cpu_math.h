// Host-only float exp and expm1 written so that GCC/Clang vectorise loops over them (no
// calls, no branches: selects and integer bit tricks), for the CPU backends' per-sample
// passes. libm's expf/expm1f are scalar calls (expm1f ~14 ns on the 2-core CI machine, the
// bulk of the compositing op's time); these run at ~0.5 ns (AVX2) / ~2.5 ns (SSE2) per
// element in a vectorised loop. Accuracy (every 1e-4 step of [-120, 100], with and without
// FMA contraction): exp <= 1.1 ulp, expm1 <= 1.6 ulp (tests/ops/test_composite_op.py
// checks them through the op against float64).
//
// Vectorisation of the selects needs -fno-trapping-math (setup.py). NPHT_CPU_CLONES
// compiles a function for x86-64-v3 (AVX2 + FMA) and the baseline, picked at load time
// (GCC >= 11 on x86-64 Linux; elsewhere, or with -DNPHT_NO_CLONES, one baseline build).
#pragma once

#include <stdint.h>
#include <string.h>

#include <cmath>
#include <limits>

#if defined(__GNUC__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__) && \
    !defined(__clang__) && !defined(NPHT_NO_CLONES)  // GCC 11 brought arch=x86-64-v3
#define NPHT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define NPHT_CPU_CLONES
#endif

namespace npht {
namespace cpu {

inline float bits_to_float(int32_t i) {
  float f;
  memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t float_to_bits(float f) {
  int32_t i;
  memcpy(&i, &f, sizeof i);
  return i;
}

// exp overflows above kExpHi; below kExpLo the result is 0 (exp) or -1 (expm1) in float.
constexpr float kExpHi = 88.7228f;
constexpr float kExpLo = -87.3365f;

// x = k ln2 + r with integer k = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two parts, so
// that k * ln2_hi is exact); returns r and writes 2^k (x must lie in [kExpLo, kExpHi]).
inline float reduce_ln2(float x, float* two_k) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + shifter;
  const int32_t k = float_to_bits(t) - float_to_bits(shifter);
  const float kf = t - shifter;
  float r = x - kf * 0.693359375f;  // ln2_hi: 9 significant bits
  r = r - kf * -2.12194440e-4f;     // ln2_lo = ln2 - ln2_hi
  *two_k = bits_to_float((k + 127) << 23);
  return r;
}

// expm1(r) for |r| <= ln2 / 2: Taylor series to r^7 (truncation < 2e-8 relative).
inline float expm1_reduced(float r) {
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  return r + r * r * p;
}

inline float exp(float x) {
  float xc = x < kExpLo ? kExpLo : x;
  xc = xc > kExpHi ? kExpHi : xc;
  float two_k;
  const float r = reduce_ln2(xc, &two_k);
  float e = two_k + two_k * expm1_reduced(r);
  e = x < kExpLo ? 0.0f : e;
  e = x > kExpHi ? std::numeric_limits<float>::infinity() : e;
  return x != x ? x : e;  // NaN stays NaN
}

// expm1(x) = 2^k expm1(r) + (2^k - 1): exact for k = 0, no cancellation near 0.
inline float expm1(float x) {
  float xc = x < kExpLo ? kExpLo : x;
  xc = xc > kExpHi ? kExpHi : xc;
  float two_k;
  const float r = reduce_ln2(xc, &two_k);
  float e = two_k * expm1_reduced(r) + (two_k - 1.0f);
  e = x > kExpHi ? std::numeric_limits<float>::infinity() : e;
  return x != x ? x : e;
}

inline double exp(double x) { return std::exp(x); }
inline double expm1(double x) { return std::expm1(x); }

// Drop-in for the math headers' exponential functors (e.g. composite_math.h's StdExp).
struct Exp {
  template <typename M>
  M operator()(M x) const { return cpu::exp(x); }
};

}  // namespace cpu
}  // namespace npht
