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

// The exponential the density uses: exp_ by default; the CPU backend passes its
// vectorisable float exp (csrc/include/npht/cpu_math.h).
struct StdExp {
  template <typename M>
  NPHT_HD M operator()(M x) const { return exp_(x); }
};

template <typename M, typename Exp = StdExp>
NPHT_HD M laplace_density(M sdf, M beta, Exp ex = Exp()) {
  const M e = ex(-fabs_(sdf) / beta);
  return (sdf >= M(0) ? M(0.5) * e : M(1) - M(0.5) * e) / beta;
}

template <typename M, typename Exp = StdExp>
NPHT_HD LaplaceTerms<M> laplace_density_vjp(M sdf, M beta, Exp ex = Exp()) {
  const M x = fabs_(sdf) / beta;
  const M e = ex(-x);
  const M inv2 = M(1) / (beta * beta);
  LaplaceTerms<M> t;
  t.sigma = (sdf >= M(0) ? M(0.5) * e : M(1) - M(0.5) * e) / beta;
  t.d_sdf = M(-0.5) * e * inv2;
  // 0.5 e (x - 1), 0 where e underflowed: an infinite |sdf| (x = inf) has the limit 0, not
  // 0 * inf = nan (which would poison beta's gradient through one sample)
  const M h = M(0.5) * e;
  const M hx = h == M(0) ? M(0) : h * (x - M(1));
  t.d_beta = (sdf >= M(0) ? hx : -hx - M(1)) * inv2;
  return t;
}

// Per-sample terms of one ray, computed inline from sdf, z and beta (the CUDA kernels; the
// CPU backend precomputes the same terms for a whole ray in a vectorised pass and hands the
// ray functions a provider with the same four methods reading its buffers).
template <typename T>
struct InlineRayTerms {
  const T* sdf;
  const T* z;
  int64_t n;
  T b;
  T ld;
  NPHT_HD T delta(int64_t i) const { return i + 1 < n ? z[i + 1] - z[i] : ld; }
  // expm1(-tau_i) = -alpha_i
  NPHT_HD double em1(int64_t i) const {
    return expm1_(-laplace_density<T>(sdf[i], b) * delta(i));
  }
  NPHT_HD LaplaceTerms<T> laplace(int64_t i) const { return laplace_density_vjp<T>(sdf[i], b); }
  // expm1(-tau_i) given sigma_i = laplace(i).sigma
  NPHT_HD double em1_from(int64_t i, T sigma) const { return expm1_(-sigma * delta(i)); }
};

// One ray of the compositing contract (csrc/bindings.cpp) from its per-sample terms
// (InlineRayTerms or a provider with em1(i)); pointers are already offset to the ray's first
// sample: z [n]; values [n, K] or nullptr; rendered [K]; weights [n].
template <typename T, typename Terms>
NPHT_HD void composite_ray_fwd_terms(const Terms& terms, const T* z, const T* values, int64_t n,
                                     int64_t K, T* rendered, T* depth, T* opacity, T* weights) {
  double trans = 1.0, dep = 0.0, opa = 0.0;  // trans = T_i
  for (int64_t i = 0; i < n; ++i) {
    const double em1 = terms.em1(i);  // -alpha_i
    const double zi = static_cast<double>(z[i]);
    const double w = -em1 * trans;
    trans *= 1.0 + em1;              // T_{i+1} = T_i exp(-tau_i)
    weights[i] = static_cast<T>(w);
    dep += w * zi;
    opa += w;
  }
  *depth = static_cast<T>(dep);
  *opacity = static_cast<T>(opa);
  // channels in groups of 4, one pass each, accumulated in named registers (an indexed
  // array would round-trip through memory every sample)
  for (int64_t k0 = 0; k0 < K; k0 += 4) {
    const int64_t kn = K - k0 < 4 ? K - k0 : 4;
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double w = static_cast<double>(weights[i]);
      const T* v = values + i * K + k0;
      a0 += w * static_cast<double>(v[0]);
      if (kn > 1) a1 += w * static_cast<double>(v[1]);
      if (kn > 2) a2 += w * static_cast<double>(v[2]);
      if (kn > 3) a3 += w * static_cast<double>(v[3]);
    }
    rendered[k0] = static_cast<T>(a0);
    if (kn > 1) rendered[k0 + 1] = static_cast<T>(a1);
    if (kn > 2) rendered[k0 + 2] = static_cast<T>(a2);
    if (kn > 3) rendered[k0 + 3] = static_cast<T>(a3);
  }
}

// sdf, z [n] of one ray: the terms computed inline.
template <typename T>
NPHT_HD void composite_ray_fwd(const T* sdf, const T* z, const T* values, int64_t n, int64_t K,
                               double beta, double last_delta, T* rendered, T* depth,
                               T* opacity, T* weights) {
  const InlineRayTerms<T> terms{sdf, z, n, static_cast<T>(beta), static_cast<T>(last_delta)};
  composite_ray_fwd_terms<T>(terms, z, values, n, K, rendered, depth, opacity, weights);
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

// g_i = dL/dw_i of one ray with the absent upstream gradients as 0 (values [n, K] or nullptr).
// Up to 4 channels are held in named registers (the common normals/colour case), more run a
// loop.
template <typename T>
struct RayUpstream {
  const T* rendered;  // [K] or nullptr (then no channel term)
  const T* values;    // [n, K] or nullptr
  const T* weights;   // [n] or nullptr
  int64_t K;
  double depth;
  double opacity;
  double r0, r1, r2, r3;  // rendered[0..3] as double, 0 past K
  NPHT_HD RayUpstream(const CompositeGrads<T>& g, const T* v, int64_t k)
      : rendered(v != nullptr && k > 0 ? g.rendered : nullptr), values(v), weights(g.weights), K(k),
        depth(g.depth != nullptr ? static_cast<double>(*g.depth) : 0.0),
        opacity(g.opacity != nullptr ? static_cast<double>(*g.opacity) : 0.0),
        r0(channel(0)), r1(channel(1)), r2(channel(2)), r3(channel(3)) {}
  NPHT_HD double channel(int64_t k) const {
    return rendered != nullptr && k < K ? static_cast<double>(rendered[k]) : 0.0;
  }
  NPHT_HD double at(int64_t i, double zi) const {
    double gi = depth * zi + opacity;
    if (rendered != nullptr) {
      const T* v = values + i * K;
      if (K <= 4) {
        gi += r0 * static_cast<double>(v[0]);
        if (K > 1) gi += r1 * static_cast<double>(v[1]);
        if (K > 2) gi += r2 * static_cast<double>(v[2]);
        if (K > 3) gi += r3 * static_cast<double>(v[3]);
      } else {
        for (int64_t k = 0; k < K; ++k) gi += static_cast<double>(rendered[k]) * static_cast<double>(v[k]);
      }
    }
    if (weights != nullptr) gi += static_cast<double>(weights[i]);
    return gi;
  }
  // dL/dv_ik = grad_rendered_k w_i for the K channels of sample i
  NPHT_HD void values_grad(double w, T* out) const {
    if (K <= 4) {
      out[0] = static_cast<T>(r0 * w);
      if (K > 1) out[1] = static_cast<T>(r1 * w);
      if (K > 2) out[2] = static_cast<T>(r2 * w);
      if (K > 3) out[3] = static_cast<T>(r3 * w);
    } else {
      for (int64_t k = 0; k < K; ++k) out[k] = static_cast<T>(channel(k) * w);
    }
  }
};

// Backward of one ray from its per-sample terms (InlineRayTerms or a provider with delta(i),
// em1(i), laplace(i) and em1_from(i, sigma)). `saved` [n]: the forward's weights, or nullptr
// to recompute them. With them the backward needs one transcendental per sample (the
// density's exp) instead of four, and T_{i+1} = T_i - w_i, except after the last sample
// (delta ~ 1e10 would amplify the weights' rounding), where T_n = T_{n-1} exp(-tau_{n-1}) is
// recomputed.
template <typename T, typename Terms>
NPHT_HD void composite_ray_bwd_terms(const Terms& terms, const CompositeGrads<T>& g, const T* z,
                                     const T* values, const T* saved, int64_t n, int64_t K,
                                     CompositeRayVjp<T> out) {
  // pass 1: total = sum_j w_j g_j (and the values' gradient, which needs only w)
  const RayUpstream<T> up(g, values, K);
  double trans = 1.0, total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double zi = static_cast<double>(z[i]);
    double w;
    if (saved != nullptr) {
      w = static_cast<double>(saved[i]);
    } else {
      const double em1 = terms.em1(i);
      w = -em1 * trans;
      trans *= 1.0 + em1;
    }
    total += w * up.at(i, zi);
    if (out.values != nullptr) up.values_grad(w, out.values + i * K);
  }
  if (out.sdf == nullptr && out.z == nullptr && out.beta == nullptr) return;
  // pass 2: dL/dtau_i = g_i T_{i+1} - (total - sum_{j<=i} w_j g_j); the last sample after
  // the loop (its suffix is exactly 0: round-off times last_delta ~ 1e10 would otherwise leak
  // into its gradients)
  const double g_depth = up.depth;
  double acc = 0.0, g_beta = 0.0, prev = 0.0;  // prev = dL/dtau_{i-1} sigma_{i-1}
  trans = 1.0;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const LaplaceTerms<T> lt = terms.laplace(i);
    double w;
    if (saved != nullptr) {
      w = static_cast<double>(saved[i]);
      trans = trans - w > 0.0 ? trans - w : 0.0;  // now T_{i+1}
    } else {
      const double em1 = terms.em1_from(i, lt.sigma);
      w = -em1 * trans;
      trans *= 1.0 + em1;  // now T_{i+1}
    }
    const double gi = up.at(i, static_cast<double>(z[i]));
    acc += w * gi;
    const double d_tau = gi * trans - (total - acc);
    const double d_tau_delta = d_tau * static_cast<double>(z[i + 1] - z[i]);
    if (out.sdf != nullptr) out.sdf[i] = static_cast<T>(d_tau_delta * lt.d_sdf);
    g_beta += d_tau_delta * lt.d_beta;
    if (out.z != nullptr) {
      const double cur = d_tau * lt.sigma;
      out.z[i] = static_cast<T>(g_depth * w + prev - cur);
      prev = cur;
    }
  }
  if (n > 0) {
    const int64_t i = n - 1;
    const LaplaceTerms<T> lt = terms.laplace(i);
    const double em1 = terms.em1_from(i, lt.sigma);
    const double w = saved != nullptr ? static_cast<double>(saved[i]) : -em1 * trans;
    trans *= 1.0 + em1;  // T_n
    const double d_tau = up.at(i, static_cast<double>(z[i])) * trans;
    const double d_tau_delta = d_tau * static_cast<double>(terms.delta(i));
    if (out.sdf != nullptr) out.sdf[i] = static_cast<T>(d_tau_delta * lt.d_sdf);
    g_beta += d_tau_delta * lt.d_beta;
    if (out.z != nullptr) out.z[i] = static_cast<T>(g_depth * w + prev);
  }
  if (out.beta != nullptr) *out.beta = static_cast<T>(g_beta);
}

template <typename T>
NPHT_HD void composite_ray_bwd(const CompositeGrads<T>& g, const T* sdf, const T* z,
                               const T* values, const T* saved, int64_t n, int64_t K,
                               double beta, double last_delta, CompositeRayVjp<T> out) {
  const InlineRayTerms<T> terms{sdf, z, n, static_cast<T>(beta), static_cast<T>(last_delta)};
  composite_ray_bwd_terms<T>(terms, g, z, values, saved, n, K, out);
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
