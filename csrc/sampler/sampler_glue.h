// Input checks shared by the CPU and CUDA torch glue of the error-bound sampler ops
// (contract in csrc/bindings.cpp). Only .cpp files include this (it uses ATen).
#pragma once

#include <ATen/ATen.h>

#include "npht/check.h"
#include "npht/sampler_math.h"

namespace npht {
namespace eb {

struct Sizes {
  int64_t R;  // rays
  int64_t n;  // samples per ray
  int64_t k;  // new samples per ray (upsample, merge)
};

class Checker {
 public:
  explicit Checker(bool cuda) : cuda_(cuda), where_(cuda ? "npht_C (cuda): " : "npht_C (cpu): ") {}

  // A float tensor with `dim` dimensions on this backend's device (and `like`'s), contiguous.
  void rows(const at::Tensor& x, const char* name, int64_t dim, const at::Tensor* like = nullptr) const {
    NPHT_TORCH_CHECK(x.device().is_cuda() == cuda_ && (cuda_ || x.device().is_cpu()), where_, name,
                     " must be a ", cuda_ ? "CUDA" : "CPU", " tensor, got one on ", x.device());
    NPHT_TORCH_CHECK(x.is_contiguous(), where_, name, " must be contiguous (call .contiguous() first)");
    NPHT_TORCH_CHECK(x.dim() == dim, where_, name, " must have ", dim, " dimensions, got shape ", x.sizes());
    NPHT_TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, where_, name,
                     " must be float32 or float64, got ", x.scalar_type());
    if (like != nullptr) {
      NPHT_TORCH_CHECK(x.device() == like->device(), where_, name, " must be on the device of z (",
                       like->device(), "), got ", x.device());
      NPHT_TORCH_CHECK(x.scalar_type() == like->scalar_type(), where_, name, " must have the dtype of z (",
                       like->scalar_type(), "), got ", x.scalar_type());
      NPHT_TORCH_CHECK(x.size(0) == like->size(0), where_, name, " must have ", like->size(0),
                       " rows (one per ray), got shape ", x.sizes());
    }
  }

  // z, sdf [R, n] with n >= 2 (one interval at least).
  Sizes ray(const at::Tensor& z, const at::Tensor& sdf) const {
    rows(z, "z", 2);
    rows(sdf, "sdf", 2, &z);
    NPHT_TORCH_CHECK(sdf.sizes() == z.sizes(), where_, "sdf must have the shape of z ", z.sizes(), ", got ",
                     sdf.sizes());
    NPHT_TORCH_CHECK(z.size(1) >= 2, where_, "z must have at least 2 samples per ray, got shape ", z.sizes());
    return {z.size(0), z.size(1), 0};
  }

  Sizes bisect(const at::Tensor& z, const at::Tensor& sdf, const at::Tensor& beta_hi, int64_t iters) const {
    const Sizes s = ray(z, sdf);
    rows(beta_hi, "beta_hi", 1, &z);
    NPHT_TORCH_CHECK(iters >= 0, where_, "iters must be >= 0, got ", iters);
    return s;
  }

  Sizes upsample(const at::Tensor& z, const at::Tensor& sdf, const at::Tensor& beta, const at::Tensor& u,
                 int64_t mode) const {
    Sizes s = ray(z, sdf);
    rows(beta, "beta", 1, &z);
    rows(u, "u", 2, &z);
    NPHT_TORCH_CHECK(mode == kPdfBound || mode == kPdfWeights, where_,
                     "mode must be 0 (error bound) or 1 (weights), got ", mode);
    s.k = u.size(1);
    return s;
  }

  Sizes merge(const at::Tensor& z, const at::Tensor& samples) const {
    rows(z, "z", 2);
    rows(samples, "samples", 2, &z);
    return {z.size(0), z.size(1), samples.size(1)};
  }

 private:
  bool cuda_;
  const char* where_;
};

}  // namespace eb
}  // namespace npht
