// CPU backend of the fused compositing op (at::parallel_for over rays). Every ray runs the
// per-ray functions of csrc/include/npht/composite_math.h, the same the CUDA kernels call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "composite/composite_glue.h"
#include "npht/composite_math.h"

namespace npht {
namespace {

constexpr int64_t kRayGrain = 64;  // rays per parallel chunk

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_fwd_cpu(
    const at::Tensor& sdf,                      // [R, S] or [M]
    const at::Tensor& z,                        // like sdf
    const at::Tensor& beta,                     // [1] or [R]
    const std::optional<at::Tensor>& values,    // [R, S, K] or [M, K]
    const std::optional<at::Tensor>& offsets,   // [R + 1] int64 (packed)
    double last_delta) {
  const CompositeSizes s = composite_check(sdf, z, beta, values, offsets, /*cuda=*/false);
  at::Tensor rendered = at::zeros({s.R, s.K}, sdf.options());  // [R, K]
  at::Tensor depth = at::zeros({s.R}, sdf.options());          // [R]
  at::Tensor opacity = at::zeros({s.R}, sdf.options());        // [R]
  at::Tensor weights = at::zeros_like(sdf);                    // like sdf
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
    at::parallel_for(0, s.R, kRayGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t a, n;
        composite_ray_range(off, r, s.S, s.M, &a, &n);
        composite_ray_fwd<scalar_t>(sd + a, zz + a, v ? v + a * s.K : nullptr, n, s.K,
                                    static_cast<double>(bt[s.per_ray_beta ? r : 0]), last_delta,
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
    at::parallel_for(0, s.R, kRayGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t a, n;
        composite_ray_range(off, r, s.S, s.M, &a, &n);
        CompositeGrads<scalar_t> g{pr ? pr + r * s.K : nullptr, pd ? pd + r : nullptr,
                                   po ? po + r : nullptr, pw ? pw + a : nullptr};
        CompositeRayVjp<scalar_t> out{os ? os + a : nullptr, oz ? oz + a : nullptr,
                                      ob ? ob + r : nullptr, ov ? ov + a * s.K : nullptr};
        composite_ray_bwd<scalar_t>(g, sd + a, zz + a, v ? v + a * s.K : nullptr, ps ? ps + a : nullptr, n, s.K,
                                    static_cast<double>(bt[s.per_ray_beta ? r : 0]), last_delta, out);
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
