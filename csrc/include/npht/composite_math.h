// Per-ray math of VolSDF compositing, written once for the CPU and the CUDA sources (no
// torch headers here, so nvcc compiles the kernels without torch).
//
// For one ray with samples i = 0..n-1 (sorted depths z_i):
//   delta_i = z_{i+1} - z_i  (delta_{n-1} = last_delta, 1e10 in VolSDF)
//   sigma_i = (1/beta) Psi_beta(-sdf_i)   Laplace density: with e = exp(-|sdf|/beta),
//             0.5 e / beta outside (sdf >= 0), (1 - 0.5 e) / beta inside
//   tau_i = sigma_i delta_i,  T_i = exp(-sum_{j<i} tau_j),  alpha_i = 1 - exp(-tau_i)
//   w_i = alpha_i T_i;  rendered_k = sum_i w_i v_ik,  depth = sum_i w_i z_i,  opacity = sum_i w_i
//
// Backward for an upstream g_i = dL/dw_i = sum_k grad_rendered_k v_ik + grad_depth z_i
// + grad_opacity + grad_weights_i:
//   dL/dtau_i = g_i T_{i+1} - sum_{j>i} w_j g_j
//   dL/dsdf_i = dL/dtau_i delta_i dsigma/dsdf_i,   dL/dbeta = sum_i dL/dtau_i delta_i dsigma/dbeta_i
//   dL/dz_i = grad_depth w_i + dL/dtau_{i-1} sigma_{i-1} - dL/dtau_i sigma_i  (terms that exist)
//   dL/dv_ik = grad_rendered_k w_i
// All sums run in double; the suffix sum_{j>i} is total - inclusive prefix, both in double
// (two passes over the ray, nothing stored per sample).
#pragma once

#include <stdint.h>

#include "npht/hd.h"

namespace npht {

// Laplace density and its partial derivatives (exact on both sides of sdf = 0).
struct LaplaceTerms {
  double sigma;
  double d_sdf;   // dsigma / dsdf = -0.5 e / beta^2
  double d_beta;  // dsigma / dbeta
};

NPHT_HD double laplace_density(double sdf, double beta) {
  const double e = exp(-fabs(sdf) / beta);
  return (sdf >= 0.0 ? 0.5 * e : 1.0 - 0.5 * e) / beta;
}

NPHT_HD LaplaceTerms laplace_density_vjp(double sdf, double beta) {
  const double x = fabs(sdf) / beta;
  const double e = exp(-x);
  const double inv2 = 1.0 / (beta * beta);
  LaplaceTerms t;
  t.sigma = (sdf >= 0.0 ? 0.5 * e : 1.0 - 0.5 * e) / beta;
  t.d_sdf = -0.5 * e * inv2;
  t.d_beta = (sdf >= 0.0 ? 0.5 * e * (x - 1.0) : 0.5 * e * (1.0 - x) - 1.0) * inv2;
  return t;
}

// One ray of the compositing contract (csrc/bindings.cpp); pointers are already offset to
// the ray's first sample: sdf, z [n]; values [n, K] or nullptr; rendered [K]; weights [n].
template <typename T>
NPHT_HD void composite_ray_fwd(const T* sdf, const T* z, const T* values, int64_t n, int64_t K,
                               double beta, double last_delta, T* rendered, T* depth,
                               T* opacity, T* weights) {
  double prefix = 0.0, dep = 0.0, opa = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double zi = static_cast<double>(z[i]);
    const double delta = i + 1 < n ? static_cast<double>(z[i + 1]) - zi : last_delta;
    const double tau = laplace_density(static_cast<double>(sdf[i]), beta) * delta;
    const double w = -expm1(-tau) * exp(-prefix);
    prefix += tau;
    weights[i] = static_cast<T>(w);
    dep += w * zi;
    opa += w;
  }
  *depth = static_cast<T>(dep);
  *opacity = static_cast<T>(opa);
  for (int64_t k = 0; k < K; ++k) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      acc += static_cast<double>(weights[i]) * static_cast<double>(values[i * K + k]);
    }
    rendered[k] = static_cast<T>(acc);
  }
}

// Upstream gradients of one ray; any pointer may be nullptr (zero).
template <typename T>
struct CompositeGrads {
  const T* rendered;  // [K]
  const T* depth;     // scalar
  const T* opacity;   // scalar
  const T* weights;   // [n]
};

// Outputs of one ray's backward; nullptr where not needed. g_beta is this ray's share.
template <typename T>
struct CompositeRayVjp {
  T* sdf;     // [n]
  T* z;       // [n]
  T* beta;    // scalar
  T* values;  // [n, K]
};

template <typename T>
NPHT_HD double composite_upstream(const CompositeGrads<T>& g, const T* values, int64_t i,
                                  int64_t K, double zi) {
  double gi = 0.0;
  if (g.rendered != nullptr && values != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      gi += static_cast<double>(g.rendered[k]) * static_cast<double>(values[i * K + k]);
    }
  }
  if (g.depth != nullptr) gi += static_cast<double>(*g.depth) * zi;
  if (g.opacity != nullptr) gi += static_cast<double>(*g.opacity);
  if (g.weights != nullptr) gi += static_cast<double>(g.weights[i]);
  return gi;
}

template <typename T>
NPHT_HD void composite_ray_bwd(const CompositeGrads<T>& g, const T* sdf, const T* z,
                               const T* values, int64_t n, int64_t K, double beta,
                               double last_delta, CompositeRayVjp<T> out) {
  // pass 1: total = sum_j w_j g_j (and the values' gradient, which needs only w)
  double prefix = 0.0, total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double zi = static_cast<double>(z[i]);
    const double delta = i + 1 < n ? static_cast<double>(z[i + 1]) - zi : last_delta;
    const double tau = laplace_density(static_cast<double>(sdf[i]), beta) * delta;
    const double w = -expm1(-tau) * exp(-prefix);
    prefix += tau;
    total += w * composite_upstream(g, values, i, K, zi);
    if (out.values != nullptr) {
      for (int64_t k = 0; k < K; ++k) {
        out.values[i * K + k] =
            static_cast<T>(g.rendered != nullptr ? static_cast<double>(g.rendered[k]) * w : 0.0);
      }
    }
  }
  if (out.sdf == nullptr && out.z == nullptr && out.beta == nullptr) return;
  // pass 2: dL/dtau_i = g_i T_{i+1} - (total - sum_{j<=i} w_j g_j)
  const double g_depth = g.depth != nullptr ? static_cast<double>(*g.depth) : 0.0;
  double acc = 0.0, g_beta = 0.0, prev = 0.0;  // prev = dL/dtau_{i-1} sigma_{i-1}
  prefix = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double zi = static_cast<double>(z[i]);
    const bool last = i + 1 >= n;
    const double delta = last ? last_delta : static_cast<double>(z[i + 1]) - zi;
    const LaplaceTerms lt = laplace_density_vjp(static_cast<double>(sdf[i]), beta);
    const double tau = lt.sigma * delta;
    const double w = -expm1(-tau) * exp(-prefix);
    prefix += tau;
    const double gi = composite_upstream(g, values, i, K, zi);
    acc += w * gi;
    // the suffix is exactly 0 after the last sample (round-off times last_delta ~ 1e10
    // would otherwise leak into its gradients)
    const double d_tau = gi * exp(-prefix) - (last ? 0.0 : total - acc);
    if (out.sdf != nullptr) out.sdf[i] = static_cast<T>(d_tau * delta * lt.d_sdf);
    g_beta += d_tau * delta * lt.d_beta;
    if (out.z != nullptr) {
      const double cur = last ? 0.0 : d_tau * lt.sigma;
      out.z[i] = static_cast<T>(g_depth * w + prev - cur);
      prev = cur;
    }
  }
  if (out.beta != nullptr) *out.beta = static_cast<T>(g_beta);
}

// The sample range of ray r: dense rows of S samples, or CSR offsets [R + 1] clamped to
// [0, M] so that malformed offsets never read out of bounds.
NPHT_HD void composite_ray_range(const int64_t* offsets, int64_t r, int64_t S, int64_t M,
                                 int64_t* start, int64_t* count) {
  if (offsets == nullptr) {
    *start = r * S;
    *count = S;
    return;
  }
  int64_t a = offsets[r], b = offsets[r + 1];
  a = a < 0 ? 0 : (a > M ? M : a);
  b = b < a ? a : (b > M ? M : b);
  *start = a;
  *count = b - a;
}

}  // namespace npht
