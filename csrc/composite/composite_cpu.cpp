// CPU backend of the fused compositing op (at::parallel_for over rays). Every ray runs the
// per-ray functions of csrc/include/npht/composite_math.h, the same the CUDA kernels call,
// with its per-sample terms (the Laplace density's exp, expm1(-tau)) computed first for the
// whole ray in a vectorised loop (csrc/include/npht/cpu_math.h): libm's scalar expm1f alone
// cost more than the reference's vectorised PyTorch ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <vector>
#include <tuple>

#include "composite/composite_glue.h"
#include "npht/composite_math.h"
#include "npht/cpu_math.h"

namespace npht {
namespace {

constexpr int64_t kRayGrain = 64;  // rays per parallel chunk

#if defined(__GNUC__)
#define NPHT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define NPHT_ALWAYS_INLINE inline
#endif

// em1[i] = expm1(-tau_i) of one ray (n samples).
template <typename T>
NPHT_ALWAYS_INLINE void fwd_terms_impl(const T* __restrict__ sdf, const T* __restrict__ z, int64_t n,
                                       T b, T ld, T* __restrict__ em1) {
  for (int64_t i = 0; i + 1 < n; ++i) {
    em1[i] = cpu::expm1(-laplace_density<T>(sdf[i], b, cpu::Exp()) * (z[i + 1] - z[i]));
  }
  if (n > 0) em1[n - 1] = cpu::expm1(-laplace_density<T>(sdf[n - 1], b, cpu::Exp()) * ld);
}

NPHT_CPU_CLONES void fwd_terms(const float* sdf, const float* z, int64_t n, float b, float ld,
                               float* em1) {
  fwd_terms_impl<float>(sdf, z, n, b, ld, em1);
}

void fwd_terms(const double* sdf, const double* z, int64_t n, double b, double ld, double* em1) {
  fwd_terms_impl<double>(sdf, z, n, b, ld, em1);
}

// The density's terms of one ray; em1 (or nullptr) as in fwd_terms.
template <typename T>
NPHT_ALWAYS_INLINE void bwd_terms_impl(const T* __restrict__ sdf, const T* __restrict__ z, int64_t n,
                                       T b, T ld, T* __restrict__ sigma, T* __restrict__ d_sdf,
                                       T* __restrict__ d_beta, T* __restrict__ em1) {
  for (int64_t i = 0; i < n; ++i) {
    const LaplaceTerms<T> lt = laplace_density_vjp<T>(sdf[i], b, cpu::Exp());
    sigma[i] = lt.sigma;
    d_sdf[i] = lt.d_sdf;
    d_beta[i] = lt.d_beta;
  }
  if (em1 == nullptr) return;
  for (int64_t i = 0; i + 1 < n; ++i) em1[i] = cpu::expm1(-sigma[i] * (z[i + 1] - z[i]));
  if (n > 0) em1[n - 1] = cpu::expm1(-sigma[n - 1] * ld);
}

NPHT_CPU_CLONES void bwd_terms(const float* sdf, const float* z, int64_t n, float b, float ld,
                               float* sigma, float* d_sdf, float* d_beta, float* em1) {
  bwd_terms_impl<float>(sdf, z, n, b, ld, sigma, d_sdf, d_beta, em1);
}

void bwd_terms(const double* sdf, const double* z, int64_t n, double b, double ld, double* sigma,
               double* d_sdf, double* d_beta, double* em1) {
  bwd_terms_impl<double>(sdf, z, n, b, ld, sigma, d_sdf, d_beta, em1);
}

// The per-sample terms of one ray read from the buffers the passes above filled (the
// provider interface of InlineRayTerms in composite_math.h).
template <typename T>
struct BufferRayTerms {
  const T* z;
  int64_t n;
  T ld;
  const T* em1_all;  // [n], or nullptr: only the last sample's, em1_last
  const T* sigma;    // [n] (backward)
  const T* d_sdf;    // [n]
  const T* d_beta;   // [n]
  T em1_last;
  T delta(int64_t i) const { return i + 1 < n ? z[i + 1] - z[i] : ld; }
  double em1(int64_t i) const { return em1_all[i]; }
  LaplaceTerms<T> laplace(int64_t i) const { return {sigma[i], d_sdf[i], d_beta[i]}; }
  double em1_from(int64_t i, T) const { return em1_all != nullptr ? em1_all[i] : em1_last; }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_fwd_cpu(
    const at::Tensor& sdf,                      // [R, S] or [M]
    const at::Tensor& z,                        // like sdf
    const at::Tensor& beta,                     // [1] or [R]
    const std::optional<at::Tensor>& values,    // [R, S, K] or [M, K]
    const std::optional<at::Tensor>& offsets,   // [R + 1] int64 (packed)
    double last_delta) {
  const CompositeSizes s = composite_check(sdf, z, beta, values, offsets, /*cuda=*/false);
  // every ray writes its outputs; packed samples outside all (clamped) rays stay 0
  at::Tensor rendered = at::empty({s.R, s.K}, sdf.options());  // [R, K]
  at::Tensor depth = at::empty({s.R}, sdf.options());          // [R]
  at::Tensor opacity = at::empty({s.R}, sdf.options());        // [R]
  at::Tensor weights = s.S > 0 ? at::empty_like(sdf) : at::zeros_like(sdf);  // like sdf
  const int64_t* off = s.S == 0 && s.R > 0 && offsets ? offsets->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(sdf.scalar_type(), "composite_fwd_cpu", [&] {
    const scalar_t* sd = sdf.data_ptr<scalar_t>();
    const scalar_t* zz = z.data_ptr<scalar_t>();
    const scalar_t* bt = beta.data_ptr<scalar_t>();
    const scalar_t* v = s.K > 0 ? values->data_ptr<scalar_t>() : nullptr;
    scalar_t* ren = rendered.data_ptr<scalar_t>();
    scalar_t* dep = depth.data_ptr<scalar_t>();
    scalar_t* opa = opacity.data_ptr<scalar_t>();
    scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t ld = static_cast<scalar_t>(last_delta);
    at::parallel_for(0, s.R, kRayGrain, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> em1;
      for (int64_t r = r0; r < r1; ++r) {
        int64_t a, n;
        composite_ray_range(off, r, s.S, s.M, &a, &n);
        if (static_cast<int64_t>(em1.size()) < n) em1.resize(n);
        const scalar_t b = bt[s.per_ray_beta ? r : 0];
        fwd_terms(sd + a, zz + a, n, b, ld, em1.data());
        const BufferRayTerms<scalar_t> terms{zz + a, n, ld, em1.data(), nullptr, nullptr, nullptr, 0};
        composite_ray_fwd_terms<scalar_t>(terms, zz + a, v ? v + a * s.K : nullptr, n, s.K,
                                          ren + r * s.K, dep + r, opa + r, w + a);
      }
    });
  });
  return {rendered, depth, opacity, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_bwd_cpu(
    const std::optional<at::Tensor>& grad_rendered,  // [R, K]
    const std::optional<at::Tensor>& grad_depth,     // [R]
    const std::optional<at::Tensor>& grad_opacity,   // [R]
    const std::optional<at::Tensor>& grad_weights,   // like sdf
    const at::Tensor& sdf, const at::Tensor& z, const at::Tensor& beta,
    const std::optional<at::Tensor>& values, const std::optional<at::Tensor>& offsets,
    double last_delta, bool need_sdf, bool need_z, bool need_beta, bool need_values,
    const std::optional<at::Tensor>& weights) {  // like sdf, the forward's
  CompositeBwdIO io = composite_bwd_prepare(grad_rendered, grad_depth, grad_opacity, grad_weights, sdf, z,
                                            beta, values, offsets, need_sdf, need_z, need_beta,
                                            need_values, weights, /*cuda=*/false);
  const CompositeSizes& s = io.s;
  const at::Tensor *gr = io.grad_rendered, *gd = io.grad_depth, *go = io.grad_opacity, *gw = io.grad_weights;
  at::Tensor g_sdf = io.g_sdf, g_z = io.g_z, g_beta = io.g_beta, g_values = io.g_values;
  need_values = g_values.numel() > 0;
  const int64_t* off = s.S == 0 && s.R > 0 && offsets ? offsets->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(sdf.scalar_type(), "composite_bwd_cpu", [&] {
    auto ptr = [](const at::Tensor* t) { return t ? t->data_ptr<scalar_t>() : nullptr; };
    const scalar_t *pr = ptr(gr), *pd = ptr(gd), *po = ptr(go), *pw = ptr(gw), *ps = ptr(io.saved_weights);
    const scalar_t* sd = sdf.data_ptr<scalar_t>();
    const scalar_t* zz = z.data_ptr<scalar_t>();
    const scalar_t* bt = beta.data_ptr<scalar_t>();
    const scalar_t* v = s.K > 0 ? values->data_ptr<scalar_t>() : nullptr;
    scalar_t* os = need_sdf ? g_sdf.data_ptr<scalar_t>() : nullptr;
    scalar_t* oz = need_z ? g_z.data_ptr<scalar_t>() : nullptr;
    scalar_t* ob = need_beta ? g_beta.data_ptr<scalar_t>() : nullptr;
    scalar_t* ov = need_values ? g_values.data_ptr<scalar_t>() : nullptr;
    if (!io.any_upstream()) return;  // all-zero upstream: zero gradients
    const scalar_t ld = static_cast<scalar_t>(last_delta);
    const bool need_terms = os != nullptr || oz != nullptr || ob != nullptr;
    at::parallel_for(0, s.R, kRayGrain, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> buf;  // sigma, d_sdf, d_beta, em1 of one ray
      for (int64_t r = r0; r < r1; ++r) {
        int64_t a, n;
        composite_ray_range(off, r, s.S, s.M, &a, &n);
        if (static_cast<int64_t>(buf.size()) < 4 * n) buf.resize(4 * n);
        scalar_t *sig = buf.data(), *dsd = sig + n, *dbt = dsd + n;
        scalar_t* em1 = ps == nullptr ? dbt + n : nullptr;  // recompute the weights: all em1
        const scalar_t b = bt[s.per_ray_beta ? r : 0];
        if (need_terms) {
          bwd_terms(sd + a, zz + a, n, b, ld, sig, dsd, dbt, em1);
        } else if (em1 != nullptr) {  // the values' gradient alone, without saved weights
          fwd_terms(sd + a, zz + a, n, b, ld, em1);
        }
        const scalar_t em1_last =
            em1 == nullptr && need_terms && n > 0 ? cpu::expm1(-sig[n - 1] * ld) : scalar_t(0);
        CompositeGrads<scalar_t> g{pr ? pr + r * s.K : nullptr, pd ? pd + r : nullptr,
                                   po ? po + r : nullptr, pw ? pw + a : nullptr};
        CompositeRayVjp<scalar_t> out{os ? os + a : nullptr, oz ? oz + a : nullptr,
                                      ob ? ob + r : nullptr, ov ? ov + a * s.K : nullptr};
        const BufferRayTerms<scalar_t> terms{zz + a, n, ld, em1, sig, dsd, dbt, em1_last};
        composite_ray_bwd_terms<scalar_t>(terms, g, zz + a, v ? v + a * s.K : nullptr,
                                          ps ? ps + a : nullptr, n, s.K, out);
      }
    });
  });
  return {g_sdf, g_z, g_beta, g_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CPU, m) {
  m.impl("composite_fwd", &composite_fwd_cpu);
  m.impl("composite_bwd", &composite_bwd_cpu);
}

}  // namespace npht
