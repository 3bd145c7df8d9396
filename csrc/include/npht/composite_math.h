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
// Per-sample terms are computed in the tensors' dtype; all sums run in double; T_{i+1} = T_i exp(-tau_i) is carried as a product (two
// transcendentals per sample: the density's exp and expm1(-tau)); the suffix sum_{j>i} is
// total - inclusive prefix, both in double (two passes over the ray, nothing stored).
#pragma once

#include <stdint.h>

#include "npht/hd.h"

namespace npht {

// exp, expm1, fabs in the precision of their argument (float math stays float on the host)
NPHT_HD float exp_(float x) { return expf(x); }
NPHT_HD double exp_(double x) { return exp(x); }
NPHT_HD float expm1_(float x) { return expm1f(x); }
NPHT_HD double expm1_(double x) { return expm1(x); }
NPHT_HD float fabs_(float x) { return fabsf(x); }
NPHT_HD double fabs_(double x) { return fabs(x); }

// Laplace density and its partial derivatives (exact on both sides of sdf = 0), in the
// math type M (the tensors' dtype: per-sample terms need no more; sums run in double).
template <typename M>
struct LaplaceTerms {
  M sigma;
  M d_sdf;   // dsigma / dsdf = -0.5 e / beta^2
  M d_beta;  // dsigma / dbeta
};

template <typename M>
NPHT_HD M laplace_density(M sdf, M beta) {
  const M e = exp_(-fabs_(sdf) / beta);
  return (sdf >= M(0) ? M(0.5) * e : M(1) - M(0.5) * e) / beta;
}

template <typename M>
NPHT_HD LaplaceTerms<M> laplace_density_vjp(M sdf, M beta) {
  const M x = fabs_(sdf) / beta;
  const M e = exp_(-x);
  const M inv2 = M(1) / (beta * beta);
  LaplaceTerms<M> t;
  t.sigma = (sdf >= M(0) ? M(0.5) * e : M(1) - M(0.5) * e) / beta;
  t.d_sdf = M(-0.5) * e * inv2;
  t.d_beta = (sdf >= M(0) ? M(0.5) * e * (x - M(1)) : M(0.5) * e * (M(1) - x) - M(1)) * inv2;
  return t;
}

// One ray of the compositing contract (csrc/bindings.cpp); pointers are already offset to
// the ray's first sample: sdf, z [n]; values [n, K] or nullptr; rendered [K]; weights [n].
template <typename T>
NPHT_HD void composite_ray_fwd(const T* sdf, const T* z, const T* values, int64_t n, int64_t K,
                               double beta, double last_delta, T* rendered, T* depth,
                               T* opacity, T* weights) {
  const T b = static_cast<T>(beta), ld = static_cast<T>(last_delta);
  double trans = 1.0, dep = 0.0, opa = 0.0;  // trans = T_i
  for (int64_t i = 0; i < n; ++i) {
    const T delta = i + 1 < n ? z[i + 1] - z[i] : ld;
    const double em1 = expm1_(-laplace_density<T>(sdf[i], b) * delta);  // -alpha_i
    const double zi = static_cast<double>(z[i]);
    const double w = -em1 * trans;
    trans *= 1.0 + em1;              // T_{i+1} = T_i exp(-tau_i)
    weights[i] = static_cast<T>(w);
    dep += w * zi;
    opa += w;
  }
  *depth = static_cast<T>(dep);
  *opacity = static_cast<T>(opa);
  for (int64_t k0 = 0; k0 < K; k0 += 4) {  // channels in groups of 4, one pass each
    const int64_t kn = K - k0 < 4 ? K - k0 : 4;
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t i = 0; i < n; ++i) {
      const double w = static_cast<double>(weights[i]);
      for (int64_t k = 0; k < kn; ++k) acc[k] += w * static_cast<double>(values[i * K + k0 + k]);
    }
    for (int64_t k = 0; k < kn; ++k) rendered[k0 + k] = static_cast<T>(acc[k]);
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

// `saved` [n]: the forward's weights, or nullptr to recompute them. With them the backward
// needs one transcendental per sample (the density's exp) instead of four, and
// T_{i+1} = T_i - w_i, except after the last sample (delta ~ 1e10 would amplify the
// weights' rounding), where T_n = T_{n-1} exp(-tau_{n-1}) is recomputed.
template <typename T>
NPHT_HD void composite_ray_bwd(const CompositeGrads<T>& g, const T* sdf, const T* z,
                               const T* values, const T* saved, int64_t n, int64_t K,
                               double beta, double last_delta, CompositeRayVjp<T> out) {
  // pass 1: total = sum_j w_j g_j (and the values' gradient, which needs only w)
  const T b = static_cast<T>(beta), ld = static_cast<T>(last_delta);
  double trans = 1.0, total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double zi = static_cast<double>(z[i]);
    double w;
    if (saved != nullptr) {
      w = static_cast<double>(saved[i]);
    } else {
      const T delta = i + 1 < n ? z[i + 1] - z[i] : ld;
      const double em1 = expm1_(-laplace_density<T>(sdf[i], b) * delta);
      w = -em1 * trans;
      trans *= 1.0 + em1;
    }
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
  trans = 1.0;
  for (int64_t i = 0; i < n; ++i) {
    const double zi = static_cast<double>(z[i]);
    const bool last = i + 1 >= n;
    const T delta = last ? ld : z[i + 1] - z[i];
    const LaplaceTerms<T> lt = laplace_density_vjp<T>(sdf[i], b);
    double w;
    if (saved != nullptr && !last) {
      w = static_cast<double>(saved[i]);
      trans = trans - w > 0.0 ? trans - w : 0.0;  // now T_{i+1}
    } else {
      const double em1 = expm1_(-lt.sigma * delta);
      w = saved != nullptr ? static_cast<double>(saved[i]) : -em1 * trans;
      trans *= 1.0 + em1;  // now T_{i+1}
    }
    const double gi = composite_upstream(g, values, i, K, zi);
    acc += w * gi;
    // the suffix is exactly 0 after the last sample (round-off times last_delta ~ 1e10
    // would otherwise leak into its gradients)
    const double d_tau = gi * trans - (last ? 0.0 : total - acc);
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
