// Torch glue of the error-bound sampler's CUDA kernels: registers eb_bisect_beta,
// eb_upsample and eb_merge of the `npht_C` library (schemas and contract in
// csrc/bindings.cpp) for the CUDA dispatch key. Each op checks its inputs, allocates its
// outputs (and eb_upsample's CDF scratch), and calls the torch-free launchers of
// sampler_kernels.cu on the current stream of the inputs' device.
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "npht/check.h"
#include "npht/sampler_math.h"
#include "sampler/sampler_cuda.h"
#include "sampler/sampler_glue.h"

#define NPHT_CHECK(cond, ...) NPHT_TORCH_CHECK(cond, "npht_C (cuda): ", __VA_ARGS__)
#define CHECK_CUDA_ERR(err, what) \
  NPHT_CHECK((err) == cudaSuccess, what, " failed: ", cudaGetErrorString(err))

namespace {

const npht::eb::Checker kCheck(/*cuda=*/true);

at::Tensor eb_bisect_beta_op(const at::Tensor& z,        // [R, n]
                             const at::Tensor& sdf,      // [R, n]
                             double beta0,
                             const at::Tensor& beta_hi,  // [R]
                             double eps, int64_t iters) {
  const npht::eb::Sizes sz = kCheck.bisect(z, sdf, beta_hi, iters);
  const int64_t R = sz.R, n = sz.n;

  at::Tensor beta = at::empty({R}, z.options());  // [R], fully written

  const at::cuda::OptionalCUDAGuard guard(device_of(z));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = npht::eb_bisect_beta_cuda(
      z.data_ptr(), sdf.data_ptr(), beta0, beta_hi.data_ptr(), beta.data_ptr(), eps, iters, R, n,
      z.scalar_type() == at::kDouble, stream);
  CHECK_CUDA_ERR(err, "eb_bisect_beta kernel launch");
  return beta;
}

at::Tensor eb_upsample_op(const at::Tensor& z,     // [R, n]
                          const at::Tensor& sdf,   // [R, n]
                          const at::Tensor& beta,  // [R]
                          const at::Tensor& u,     // [R, k]
                          int64_t mode, double add_tiny) {
  const npht::eb::Sizes sz = kCheck.upsample(z, sdf, beta, u, mode);
  const int64_t R = sz.R, n = sz.n, k = sz.k;

  at::Tensor out = at::empty({R, k}, z.options());  // [R, k], fully written
  if (R == 0 || k == 0) return out;
  // [rows, n] scratch, one row per thread of the kernel's capped grid
  at::Tensor cdf = at::empty({npht::eb_upsample_scratch_rows(R), n}, z.options().dtype(at::kDouble));

  const at::cuda::OptionalCUDAGuard guard(device_of(z));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = npht::eb_upsample_cuda(
      z.data_ptr(), sdf.data_ptr(), beta.data_ptr(), u.data_ptr(), out.data_ptr(),
      cdf.data_ptr(), R, n, k, static_cast<int>(mode), add_tiny, z.scalar_type() == at::kDouble,
      stream);
  CHECK_CUDA_ERR(err, "eb_upsample kernel launch");
  return out;
}

std::tuple<at::Tensor, at::Tensor> eb_merge_op(const at::Tensor& z,         // [R, n]
                                               const at::Tensor& samples) {  // [R, k]
  const npht::eb::Sizes sz = kCheck.merge(z, samples);
  const int64_t R = sz.R, n = sz.n, k = sz.k;

  at::Tensor merged = at::empty({R, n + k}, z.options());                  // [R, n + k]
  at::Tensor order = at::empty({R, n + k}, z.options().dtype(at::kLong));  // [R, n + k]
  if (R == 0 || n + k == 0) return std::make_tuple(merged, order);

  const at::cuda::OptionalCUDAGuard guard(device_of(z));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err =
      npht::eb_merge_cuda(z.data_ptr(), samples.data_ptr(), merged.data_ptr(),
                          order.data_ptr<int64_t>(), R, n, k, z.scalar_type() == at::kDouble,
                          stream);
  CHECK_CUDA_ERR(err, "eb_merge kernel launch");
  return std::make_tuple(merged, order);
}

}  // namespace

TORCH_LIBRARY_IMPL(npht_C, CUDA, m) {
  m.impl("eb_bisect_beta", &eb_bisect_beta_op);
  m.impl("eb_upsample", &eb_upsample_op);
  m.impl("eb_merge", &eb_merge_op);
}
