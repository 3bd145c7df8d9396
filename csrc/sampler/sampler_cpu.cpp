// CPU backend of the error-bound sampler's per-ray math (at::parallel_for over rays). Same
// math as the CUDA kernels: every ray calls csrc/include/npht/sampler_math.h.
// Schemas and contract: csrc/bindings.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "npht/check.h"
#include "npht/sampler_math.h"

namespace npht {
namespace {

#define NPHT_CHECK(cond, ...) NPHT_TORCH_CHECK(cond, "npht_C (cpu): ", __VA_ARGS__)
#define CHECK_SIZE(x, dim, v)                                                            \
  NPHT_CHECK((x).size(dim) == (v), #x " must have size ", (v), " in dim ", (dim), ", got shape ", \
             (x).sizes())
#define CHECK_DTYPE_AS(x, y)                                                                  \
  NPHT_CHECK((x).scalar_type() == (y).scalar_type(), #x " must have the dtype of " #y " (", \
             (y).scalar_type(), "), got ", (x).scalar_type())

// Work per ray is O(n) to O(iters * n): a few rays per task are enough.
int64_t grain(int64_t work_per_ray) {
  const int64_t g = 32768 / (work_per_ray > 0 ? work_per_ray : 1);
  return g < 1 ? 1 : g;
}

// A float tensor [R, ...] on the CPU, contiguous (the checks every input shares).
void check_rows(const at::Tensor& x, const char* name, int64_t dim) {
  NPHT_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got ", x.device());
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
  NPHT_CHECK(sdf.sizes() == z.sizes(), "sdf must have the shape of z ", z.sizes(), ", got ",
             sdf.sizes());
  CHECK_DTYPE_AS(sdf, z);
  NPHT_CHECK(z.size(1) >= 2, "z must have at least 2 samples per ray, got shape ", z.sizes());
  return z.size(1);
}

at::Tensor eb_bisect_beta_cpu(const at::Tensor& z,        // [R, n]
                              const at::Tensor& sdf,      // [R, n]
                              double beta0,
                              const at::Tensor& beta_hi,  // [R]
                              double eps, int64_t iters) {
  const int64_t n = check_ray(z, sdf);
  const int64_t R = z.size(0);
  check_rows(beta_hi, "beta_hi", 1);
  CHECK_SIZE(beta_hi, 0, R);
  CHECK_DTYPE_AS(beta_hi, z);
  NPHT_CHECK(iters >= 0, "iters must be >= 0, got ", iters);
  at::Tensor beta = at::empty({R}, z.options());  // [R]
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "eb_bisect_beta_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* sp = sdf.data_ptr<scalar_t>();
    const scalar_t* hp = beta_hi.data_ptr<scalar_t>();
    scalar_t* out = beta.data_ptr<scalar_t>();
    const scalar_t b0 = static_cast<scalar_t>(beta0);
    at::parallel_for(0, R, grain((iters + 1) * n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        out[r] = eb::bisect_beta_ray<scalar_t>(zp + r * n, sp + r * n, n, b0, hp[r], eps, iters);
    });
  });
  return beta;
}

at::Tensor eb_upsample_cpu(const at::Tensor& z,     // [R, n]
                           const at::Tensor& sdf,   // [R, n]
                           const at::Tensor& beta,  // [R]
                           const at::Tensor& u,     // [R, k]
                           int64_t mode, double add_tiny) {
  const int64_t n = check_ray(z, sdf);
  const int64_t R = z.size(0);
  check_rows(beta, "beta", 1);
  CHECK_SIZE(beta, 0, R);
  CHECK_DTYPE_AS(beta, z);
  check_rows(u, "u", 2);
  CHECK_SIZE(u, 0, R);
  CHECK_DTYPE_AS(u, z);
  NPHT_CHECK(mode == eb::kPdfBound || mode == eb::kPdfWeights,
             "mode must be 0 (error bound) or 1 (weights), got ", mode);
  const int64_t k = u.size(1);
  at::Tensor out = at::empty({R, k}, z.options());  // [R, k]
  if (R == 0 || k == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "eb_upsample_cpu", [&] {
    const scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* sp = sdf.data_ptr<scalar_t>();
    const scalar_t* bp = beta.data_ptr<scalar_t>();
    const scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, grain(n + k), [&](int64_t begin, int64_t end) {
      std::vector<double> cdf(n);  // scratch: the CDF of one ray
      for (int64_t r = begin; r < end; ++r)
        eb::upsample_ray<scalar_t>(zp + r * n, sp + r * n, bp[r], up + r * k, op + r * k,
                                   cdf.data(), n, k, static_cast<int>(mode), add_tiny);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> eb_merge_cpu(const at::Tensor& z,         // [R, n]
                                                const at::Tensor& samples) {  // [R, k]
  check_rows(z, "z", 2);
  check_rows(samples, "samples", 2);
  CHECK_SIZE(samples, 0, z.size(0));
  CHECK_DTYPE_AS(samples, z);
  const int64_t R = z.size(0), n = z.size(1), k = samples.size(1);
  at::Tensor merged = at::empty({R, n + k}, z.options());               // [R, n + k]
  at::Tensor order = at::empty({R, n + k}, z.options().dtype(at::kLong));  // [R, n + k]
  if (R == 0 || n + k == 0) return {merged, order};
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "eb_merge_cpu", [&] {
    const scalar_t* a = z.data_ptr<scalar_t>();
    const scalar_t* b = samples.data_ptr<scalar_t>();
    scalar_t* mp = merged.data_ptr<scalar_t>();
    int64_t* op = order.data_ptr<int64_t>();
    at::parallel_for(0, R, grain(n + k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        eb::merge_ray<scalar_t>(a + r * n, n, b + r * k, k, mp + r * (n + k), op + r * (n + k));
    });
  });
  return {merged, order};
}

}  // namespace
}  // namespace npht

TORCH_LIBRARY_IMPL(npht_C, CPU, m) {
  m.impl("eb_bisect_beta", &npht::eb_bisect_beta_cpu);
  m.impl("eb_upsample", &npht::eb_upsample_cpu);
  m.impl("eb_merge", &npht::eb_merge_cpu);
}
