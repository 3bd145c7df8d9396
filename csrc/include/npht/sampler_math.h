// Per-ray math of VolSDF's error-bound sampler (Yariv et al. 2021, Algorithm 1), written
// once for the CPU and the CUDA sources (no torch headers here, so nvcc compiles the
// kernels without torch). One call handles one ray; the CPU backend runs one ray per
// at::parallel_for index, the CUDA backend one ray per thread.
//
// A ray is a row: depths z[0..n) sorted ascending, sdf[0..n) at those depths, interval i
// = [z[i], z[i+1]] of length a_i, i < n - 1. With the Laplace density sigma(s; beta) of
// npht.reference.render.laplace_density:
//   d*_i         distance bound of interval i (VolSDF Theorem 1, reference distance_bound)
//   before_i     = sum_{j<i} a_j sigma(sdf_j)          (free energy before sample i)
//   E_i(beta)    = (min(exp(sum_{j<=i} exp(-d*_j / beta) a_j^2 / (4 beta^2)), 1e6) - 1)
//                  * exp(-before_i)                     (opacity error bound, interval i)
//   w_i(beta)    = (1 - exp(-a_i sigma(sdf_i))) exp(-before_i)   (rendering weight)
// Each expression keeps the operation order of npht/reference/sampler.py and
// npht/render/sampler.py, so float64 inputs agree with the reference to rounding (exp,
// sqrt and summation order aside).
//
// Precision: everything is computed in double; the outputs are rounded to the input dtype
// S. The bisection alone keeps its interval ends (lo, hi, mid) and eps in S, like the
// reference, so float32 betas equal the float32 reference's except where a decision
// (bound <= eps) sits within rounding of eps. eb_upsample of float32 inputs is the float64
// reference of the same inputs, rounded (the float32 reference itself loses precision in
// exp(cumsum) - 1 and in the CDF).
#pragma once

#include <stdint.h>

#include "npht/hd.h"

namespace npht {
namespace eb {

// pdf of eb_upsample: the opacity error bound per interval, or the rendering weights.
enum PdfMode : int { kPdfBound = 0, kPdfWeights = 1 };

constexpr double kBoundClamp = 1e6;    // exp(cumsum) is clamped to this (VolSDF)
constexpr double kMinCdfStep = 1e-5;   // CDF steps below this interpolate with denom 1

NPHT_HD double exp_(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

NPHT_HD double sqrt_(double x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

NPHT_HD double sign_(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : 0.0); }

// Laplace density for inv = 1 / beta (reference laplace_density, same operation order).
NPHT_HD double laplace_density(double sdf, double inv) {
  const bool outside = sdf >= 0.0;
  const double half_e = 0.5 * exp_(-(outside ? sdf : -sdf) * inv);
  return inv * (outside ? half_e : 1.0 - half_e);
}

// d* of one interval of length a whose ends have sdf s0, s1 (reference distance_bound):
// the least distance to the surface of any point in the interval; 0 unless both ends have
// the same nonzero sign.
NPHT_HD double distance_bound(double a, double s0, double s1) {
  const double b = s0 < 0.0 ? -s0 : s0;
  const double c = s1 < 0.0 ? -s1 : s1;
  const bool first = a * a + b * b <= c * c;   // the nearest point is the start
  const bool second = a * a + c * c <= b * b;  // ... the end
  const double s = (a + b + c) / 2.0;
  double q = s * (s - a) * (s - b) * (s - c);
  q = q < 0.0 ? 0.0 : q;  // torch.clamp(min=0) (keeps NaN)
  const double height = 2.0 * sqrt_(q) / (a > 0.0 ? a : 1.0);
  const bool triangle = !first && !second && (b + c - a > 0.0);
  const double d = second ? c : (first ? b : (triangle ? height : 0.0));
  const double same = (sign_(s1) * sign_(s0)) == 1.0 ? 1.0 : 0.0;
  return d * same;
}

// The error-bound increment exp(-d* / beta) a^2 / (4 beta^2) of one interval.
NPHT_HD double bound_term(double a, double s0, double s1, double beta) {
  return exp_(-distance_bound(a, s0, s1) / beta) * a * a / (4.0 * beta * beta);
}

// E_i from the running sum of bound terms and before_i.
NPHT_HD double bound_value(double cum, double before) {
  double e = exp_(cum);
  e = e > kBoundClamp ? kBoundClamp : e;  // torch.clamp(max=1e6)
  return (e - 1.0) * exp_(-before);
}

// max_i E_i(beta) <= eps (false if any E_i is NaN, as torch's max propagates NaN).
template <typename S>
NPHT_HD bool bound_holds(const S* z, const S* sdf, int64_t n, double beta, double eps) {
  const double inv = 1.0 / beta;
  double cum = 0.0, before = 0.0;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const double a = static_cast<double>(z[i + 1]) - static_cast<double>(z[i]);
    const double s0 = static_cast<double>(sdf[i]);
    cum += bound_term(a, s0, static_cast<double>(sdf[i + 1]), beta);
    if (!(bound_value(cum, before) <= eps)) return false;
    before += a * laplace_density(s0, inv);
  }
  return true;
}

// eb_bisect_beta for one ray: beta0 where the bound holds at beta0, else `iters` bisection
// steps in [beta0, beta_hi] keeping the upper end (reference bisect_beta). The interval
// ends live in S, like the reference's.
template <typename S>
NPHT_HD S bisect_beta_ray(const S* z, const S* sdf, int64_t n, S beta0, S beta_hi, double eps,
                           int64_t iters) {
  const double eps_s = static_cast<double>(static_cast<S>(eps));
  if (bound_holds(z, sdf, n, static_cast<double>(beta0), eps_s)) return beta0;
  S lo = beta0, hi = beta_hi;
  for (int64_t it = 0; it < iters; ++it) {
    const S mid = (lo + hi) / S(2);
    if (bound_holds(z, sdf, n, static_cast<double>(mid), eps_s))
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

// Unnormalised pdf of interval i for eb_upsample, given the running sums (updated here).
NPHT_HD double pdf_term(double a, double s0, double s1, double beta, double inv, int mode,
                         double add_tiny, double* cum, double* before) {
  double p;
  const double free_energy = a * laplace_density(s0, inv);
  if (mode == kPdfBound) {
    *cum += bound_term(a, s0, s1, beta);
    p = bound_value(*cum, *before);
  } else {
    p = (1.0 - exp_(-free_energy)) * exp_(-*before);
  }
  *before += free_energy;
  return p + add_tiny;
}

// eb_upsample for one ray: inverse-CDF sampling (reference sample_pdf) of the pdf over the
// n - 1 intervals at quantiles u[0..k) -> out[0..k). cdf: scratch of n doubles. The pdf,
// its normalisation, the CDF, the bin search (torch.searchsorted(right=True): the number
// of CDF entries <= u) and the interpolation are all in double; only the result is
// rounded to S.
template <typename S>
NPHT_HD void upsample_ray(const S* z, const S* sdf, S beta, const S* u, S* out, double* cdf,
                           int64_t n, int64_t k, int mode, double add_tiny) {
  const double b = static_cast<double>(beta);
  const double inv = 1.0 / b;
  // pass 1: the pdf (kept in cdf[1..n)) and its sum
  double cum = 0.0, before = 0.0, total = 0.0;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const double a = static_cast<double>(z[i + 1]) - static_cast<double>(z[i]);
    const double p = pdf_term(a, static_cast<double>(sdf[i]), static_cast<double>(sdf[i + 1]), b,
                              inv, mode, add_tiny, &cum, &before);
    cdf[i + 1] = p;
    total += p;
  }
  // pass 2: the CDF of the normalised pdf, in place
  double run = 0.0;
  cdf[0] = 0.0;
  // capped at 1 (NaN kept, as torch.clamp) and ending at exactly 1 (as the reference): u = 1
  // lands on the same interval whatever the summation order. A pdf summing to exactly 0: every
  // interval the same mass (the reference's rule).
  const bool flat = total == 0.0;
  const double flat_p = n > 1 ? 1.0 / static_cast<double>(n - 1) : 0.0;
  for (int64_t i = 1; i < n; ++i) {
    run += flat ? flat_p : cdf[i] / total;
    cdf[i] = run > 1.0 ? 1.0 : run;
  }
  if (n > 1) cdf[n - 1] = 1.0;
  // inverse CDF per quantile
  for (int64_t j = 0; j < k; ++j) {
    const double uj = static_cast<double>(u[j]);
    int64_t lo = 0, hi = n;  // -> lo = the number of cdf entries <= uj
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (cdf[mid] <= uj)
        lo = mid + 1;
      else
        hi = mid;
    }
    const int64_t below = lo - 1 < 0 ? 0 : lo - 1;
    const int64_t above = lo > n - 1 ? n - 1 : lo;
    const double c0 = cdf[below], c1 = cdf[above];
    double denom = c1 - c0;
    denom = denom < kMinCdfStep ? 1.0 : denom;
    const double z0 = static_cast<double>(z[below]);
    out[j] = static_cast<S>(z0 + (uj - c0) / denom * (static_cast<double>(z[above]) - z0));
  }
}

// eb_merge for one ray: a[0..n) and b[0..k) sorted -> out[0..n+k) sorted, order[t] = the
// index of out[t] in cat([a, b]). Ties take a's element first (a stable merge).
template <typename S>
NPHT_HD void merge_ray(const S* a, int64_t n, const S* b, int64_t k, S* out, int64_t* order) {
  int64_t i = 0, j = 0;
  for (int64_t t = 0; t < n + k; ++t) {
    const bool take_a = j >= k || (i < n && !(b[j] < a[i]));
    if (take_a) {
      out[t] = a[i];
      order[t] = i++;
    } else {
      out[t] = b[j];
      order[t] = n + j++;
    }
  }
}

}  // namespace eb
}  // namespace npht
