// Torch glue of the fused MLP backward's elementwise CUDA kernels: registers
// softplus_adjoint_ and softplus_backward_add_ of the `npht_C` library (schemas and contract
// in csrc/bindings.cpp) for the CUDA dispatch key.
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "mlp/mlp_cuda.h"
#include "mlp/mlp_glue.h"
#include "npht/check.h"

namespace {

void softplus_adjoint_op(at::Tensor& ebar, at::Tensor& e, const at::Tensor& h, double beta, double threshold) {
  const npht::mlp::Sizes s = npht::mlp::check("softplus_adjoint_", ebar, "ebar", e, "e", h, beta, true);
  if (s.M * s.W == 0) return;
  const at::cuda::OptionalCUDAGuard guard(device_of(ebar));
  const cudaError_t err = npht::softplus_adjoint_cuda(
      ebar.data_ptr(), e.data_ptr(), h.data_ptr(), s.M, s.W, beta, threshold, ebar.scalar_type() == at::kDouble,
      at::cuda::getCurrentCUDAStream().stream());
  NPHT_TORCH_CHECK(err == cudaSuccess, "npht_C (cuda): softplus_adjoint_ kernel launch failed: ",
                   cudaGetErrorString(err));
}

void softplus_backward_add_op(at::Tensor& acc, const at::Tensor& grad, const at::Tensor& h, double beta,
                              double threshold) {
  const npht::mlp::Sizes s =
      npht::mlp::check("softplus_backward_add_", acc, "acc", grad, "grad", h, beta, true);
  if (s.M * s.W == 0) return;
  const at::cuda::OptionalCUDAGuard guard(device_of(acc));
  const cudaError_t err = npht::softplus_backward_add_cuda(
      acc.data_ptr(), grad.data_ptr(), h.data_ptr(), s.M, s.W, beta, threshold,
      acc.scalar_type() == at::kDouble, at::cuda::getCurrentCUDAStream().stream());
  NPHT_TORCH_CHECK(err == cudaSuccess, "npht_C (cuda): softplus_backward_add_ kernel launch failed: ",
                   cudaGetErrorString(err));
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CUDA, m) {
  m.impl("softplus_adjoint_", &softplus_adjoint_op);
  m.impl("softplus_backward_add_", &softplus_backward_add_op);
}
