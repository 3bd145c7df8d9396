// Torch glue of the compositing CUDA kernels: registers composite_fwd and composite_bwd of
// the `npht_C` library (contract in csrc/bindings.cpp) for the CUDA dispatch key. Checks
// the inputs, allocates the outputs and calls the torch-free launchers of
// composite_kernels.cu on the current stream of the inputs' device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "composite/composite_cuda.h"
#include "composite/composite_glue.h"

namespace npht {
namespace {

CompositeLaunch launch_params(const CompositeSizes& s, double last_delta, const at::Tensor& sdf) {
  CompositeLaunch p{};
  p.R = s.R;
  p.S = s.S;
  p.M = s.M;
  p.K = s.K;
  p.per_ray_beta = s.per_ray_beta;
  p.last_delta = last_delta;
  p.f64 = sdf.scalar_type() == at::kDouble;
  return p;
}

const int64_t* offsets_ptr(const CompositeSizes& s, const std::optional<at::Tensor>& offsets) {
  return s.S == 0 && s.R > 0 && offsets ? offsets->data_ptr<int64_t>() : nullptr;
}

void* ptr_or_null(const at::Tensor* t) { return t ? t->data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_fwd_cuda_op(
    const at::Tensor& sdf,                     // [R, S] or [M]
    const at::Tensor& z,                       // like sdf
    const at::Tensor& beta,                    // [1] or [R]
    const std::optional<at::Tensor>& values,   // [R, S, K] or [M, K]
    const std::optional<at::Tensor>& offsets,  // [R + 1] int64 (packed)
    double last_delta) {
  const CompositeSizes s = composite_check(sdf, z, beta, values, offsets, /*cuda=*/true);
  const c10::cuda::CUDAGuard guard(sdf.device());
  at::Tensor rendered = at::empty({s.R, s.K}, sdf.options());  // [R, K]
  at::Tensor depth = at::empty({s.R}, sdf.options());          // [R]
  at::Tensor opacity = at::empty({s.R}, sdf.options());        // [R]
  // packed offsets may leave samples to no ray: their weight is 0
  at::Tensor weights = s.S == 0 ? at::zeros_like(sdf) : at::empty_like(sdf);
  const cudaError_t err = composite_fwd_cuda(
      sdf.data_ptr(), z.data_ptr(), beta.data_ptr(), s.K > 0 ? values->data_ptr() : nullptr,
      offsets_ptr(s, offsets), rendered.data_ptr(), depth.data_ptr(), opacity.data_ptr(),
      weights.data_ptr(), launch_params(s, last_delta, sdf), c10::cuda::getCurrentCUDAStream());
  NPHT_TORCH_CHECK(err == cudaSuccess, "npht_C composite_fwd (cuda) launch failed: ",
                   cudaGetErrorString(err));
  return {rendered, depth, opacity, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_bwd_cuda_op(
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
                                            need_values, weights, /*cuda=*/true);
  const CompositeSizes& s = io.s;
  const at::Tensor *gr = io.grad_rendered, *gd = io.grad_depth, *go = io.grad_opacity, *gw = io.grad_weights;
  at::Tensor g_sdf = io.g_sdf, g_z = io.g_z, g_beta = io.g_beta, g_values = io.g_values;
  need_values = g_values.numel() > 0;
  const c10::cuda::CUDAGuard guard(sdf.device());
  if (!io.any_upstream()) return {g_sdf, g_z, g_beta, g_values};
  const cudaError_t err = composite_bwd_cuda(
      ptr_or_null(gr), ptr_or_null(gd), ptr_or_null(go), ptr_or_null(gw), sdf.data_ptr(),
      z.data_ptr(), beta.data_ptr(), s.K > 0 ? values->data_ptr() : nullptr,
      ptr_or_null(io.saved_weights), offsets_ptr(s, offsets), need_sdf ? g_sdf.data_ptr() : nullptr,
      need_z ? g_z.data_ptr() : nullptr, need_beta ? g_beta.data_ptr() : nullptr,
      need_values ? g_values.data_ptr() : nullptr, launch_params(s, last_delta, sdf),
      c10::cuda::getCurrentCUDAStream());
  NPHT_TORCH_CHECK(err == cudaSuccess, "npht_C composite_bwd (cuda) launch failed: ",
                   cudaGetErrorString(err));
  return {g_sdf, g_z, g_beta, g_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CUDA, m) {
  m.impl("composite_fwd", &composite_fwd_cuda_op);
  m.impl("composite_bwd", &composite_bwd_cuda_op);
}

}  // namespace npht
