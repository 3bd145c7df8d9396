// CPU backend of the error-bound sampler's per-ray math (at::parallel_for over rays). Same
// math as the CUDA kernels: every ray calls csrc/include/npht/sampler_math.h.
// Schemas and contract: csrc/bindings.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "npht/sampler_math.h"
#include "sampler/sampler_glue.h"

namespace npht {
namespace {

// Work per ray is O(n) to O(iters * n): a few rays per task are enough.
int64_t grain(int64_t work_per_ray) {
  const int64_t g = 32768 / (work_per_ray > 0 ? work_per_ray : 1);
  return g < 1 ? 1 : g;
}

const eb::Checker kCheck(/*cuda=*/false);

at::Tensor eb_bisect_beta_cpu(const at::Tensor& z,        // [R, n]
                              const at::Tensor& sdf,      // [R, n]
                              double beta0,
                              const at::Tensor& beta_hi,  // [R]
                              double eps, int64_t iters) {
  const eb::Sizes sz = kCheck.bisect(z, sdf, beta_hi, iters);
  const int64_t R = sz.R, n = sz.n;
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
  const eb::Sizes sz = kCheck.upsample(z, sdf, beta, u, mode);
  const int64_t R = sz.R, n = sz.n, k = sz.k;
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
  const eb::Sizes sz = kCheck.merge(z, samples);
  const int64_t R = sz.R, n = sz.n, k = sz.k;
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
