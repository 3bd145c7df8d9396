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

#define NPHT_CHECK(cond, ...) NPHT_TORCH_CHECK(cond, "npht_C (cuda): ", __VA_ARGS__)
#define CHECK_SIZE(x, dim, v)                                                            \
  NPHT_CHECK((x).size(dim) == (v), #x " must have size ", (v), " in dim ", (dim), ", got shape ", \
             (x).sizes())
#define CHECK_DTYPE_AS(x, y)                                                                  \
  NPHT_CHECK((x).scalar_type() == (y).scalar_type(), #x " must have the dtype of " #y " (", \
             (y).scalar_type(), "), got ", (x).scalar_type())
#define CHECK_SAME_DEVICE(x, y)                                                       \
  NPHT_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
             (x).device(), " and ", (y).device())
#define CHECK_CUDA_ERR(err, what) \
  NPHT_CHECK((err) == cudaSuccess, what, " failed: ", cudaGetErrorString(err))

namespace {

// A float tensor [R, ...] on a CUDA device, contiguous, with `dim` dimensions.
void check_rows(const at::Tensor& x, const char* name, int64_t dim) {
  NPHT_CHECK(x.is_cuda(), name, " must be a CUDA tensor, got one on ", x.device());
  NPHT_CHECK(x.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
  NPHT_CHECK(x.dim() == dim, name, " must have ", dim, " dimensions, got shape ", x.sizes());
  NPHT_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
             " must be float32 or float64, got ", x.scalar_type());
}

// z, sdf [R, n] with n >= 2 (one interval at least); returns n.
int64_t check_ray(const at::Tensor& z,     // [R, n]
                  const at::Tensor& sdf) {  // [R, n]
  check_rows(z, "z", 2);
  check_rows(sdf, "sdf", 2);
  CHECK_SAME_DEVICE(sdf, z);
  NPHT_CHECK(sdf.sizes() == z.sizes(), "sdf must have the shape of z ", z.sizes(), ", got ",
             sdf.sizes());
  CHECK_DTYPE_AS(sdf, z);
  NPHT_CHECK(z.size(1) >= 2, "z must have at least 2 samples per ray, got shape ", z.sizes());
  return z.size(1);
}

at::Tensor eb_bisect_beta_op(const at::Tensor& z,        // [R, n]
                             const at::Tensor& sdf,      // [R, n]
                             double beta0,
                             const at::Tensor& beta_hi,  // [R]
                             double eps, int64_t iters) {
  const int64_t n = check_ray(z, sdf);
  const int64_t R = z.size(0);
  check_rows(beta_hi, "beta_hi", 1);
  CHECK_SAME_DEVICE(beta_hi, z);
  CHECK_SIZE(beta_hi, 0, R);
  CHECK_DTYPE_AS(beta_hi, z);
  NPHT_CHECK(iters >= 0, "iters must be >= 0, got ", iters);

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
  const int64_t n = check_ray(z, sdf);
  const int64_t R = z.size(0);
  check_rows(beta, "beta", 1);
  CHECK_SAME_DEVICE(beta, z);
  CHECK_SIZE(beta, 0, R);
  CHECK_DTYPE_AS(beta, z);
  check_rows(u, "u", 2);
  CHECK_SAME_DEVICE(u, z);
  CHECK_SIZE(u, 0, R);
  CHECK_DTYPE_AS(u, z);
  NPHT_CHECK(mode == npht::eb::kPdfBound || mode == npht::eb::kPdfWeights,
             "mode must be 0 (error bound) or 1 (weights), got ", mode);
  const int64_t k = u.size(1);

  at::Tensor out = at::empty({R, k}, z.options());  // [R, k], fully written
  if (R == 0 || k == 0) return out;
  at::Tensor cdf = at::empty({R, n}, z.options().dtype(at::kDouble));  // [R, n] scratch

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
  check_rows(z, "z", 2);
  check_rows(samples, "samples", 2);
  CHECK_SAME_DEVICE(samples, z);
  CHECK_SIZE(samples, 0, z.size(0));
  CHECK_DTYPE_AS(samples, z);
  const int64_t R = z.size(0), n = z.size(1), k = samples.size(1);

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
