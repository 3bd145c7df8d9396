// Input checks and output allocation shared by the CPU and CUDA torch glue of the fused
// compositing op (contract in csrc/bindings.cpp). Only .cpp files include this (it uses
// ATen); the kernels see plain pointers and the sizes in CompositeSizes.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "npht/check.h"

namespace npht {

struct CompositeSizes {
  int64_t R;  // rays
  int64_t S;  // samples per ray (dense); 0 for packed
  int64_t M;  // samples in all
  int64_t K;  // value channels (0 without values)
  bool per_ray_beta;
};

inline const char* device_name(bool cuda) { return cuda ? "CUDA" : "CPU"; }

// Checks the forward's inputs for a kernel on `cuda` or CPU tensors and reads the sizes.
inline CompositeSizes composite_check(const at::Tensor& sdf,                   // [R, S] or [M]
                                      const at::Tensor& z,                     // like sdf
                                      const at::Tensor& beta,                  // [1] or [R]
                                      const std::optional<at::Tensor>& values,  // [R, S, K] or [M, K]
                                      const std::optional<at::Tensor>& offsets,  // [R + 1] int64
                                      bool cuda) {
  const char* where = cuda ? "npht_C composite (cuda): " : "npht_C composite (cpu): ";
  auto on_device = [&](const at::Tensor& t, const char* name) {
    NPHT_TORCH_CHECK(t.device().is_cuda() == cuda && (cuda || t.device().is_cpu()), where, name,
                     " must be a ", device_name(cuda), " tensor, got one on ", t.device());
    NPHT_TORCH_CHECK(t.device() == sdf.device(), where, name, " must be on the device of sdf (",
                     sdf.device(), "), got ", t.device());
    NPHT_TORCH_CHECK(t.is_contiguous(), where, name, " must be contiguous");
  };
  on_device(sdf, "sdf");
  on_device(z, "z");
  on_device(beta, "beta");
  const auto dt = sdf.scalar_type();
  NPHT_TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, where, "sdf must be float32 or float64, got ", dt);
  NPHT_TORCH_CHECK(z.scalar_type() == dt && beta.scalar_type() == dt, where,
                   "z and beta must have the dtype of sdf (", dt, "), got ", z.scalar_type(), " and ",
                   beta.scalar_type());
  NPHT_TORCH_CHECK(z.sizes() == sdf.sizes(), where, "z must have the shape of sdf ", sdf.sizes(), ", got ",
                   z.sizes());
  CompositeSizes s{};
  const bool packed = offsets.has_value() && offsets->defined();
  if (packed) {
    on_device(*offsets, "offsets");
    NPHT_TORCH_CHECK(offsets->scalar_type() == at::kLong, where, "offsets must be int64, got ",
                     offsets->scalar_type());
    NPHT_TORCH_CHECK(offsets->dim() == 1 && offsets->size(0) >= 1, where, "offsets must be [R + 1], got ",
                     offsets->sizes());
    NPHT_TORCH_CHECK(sdf.dim() == 1, where, "packed sdf must be [M], got ", sdf.sizes());
    s.R = offsets->size(0) - 1;
    s.S = 0;
    s.M = sdf.size(0);
  } else {
    NPHT_TORCH_CHECK(sdf.dim() == 2, where, "dense sdf must be [R, S], got ", sdf.sizes());
    s.R = sdf.size(0);
    s.S = sdf.size(1);
    s.M = s.R * s.S;
  }
  NPHT_TORCH_CHECK(beta.dim() == 1 && (beta.size(0) == 1 || beta.size(0) == s.R), where,
                   "beta must be [1] or [R] = [", s.R, "], got ", beta.sizes());
  s.per_ray_beta = beta.size(0) == s.R && s.R != 1;
  if (values.has_value() && values->defined()) {
    on_device(*values, "values");
    NPHT_TORCH_CHECK(values->scalar_type() == dt, where, "values must have the dtype of sdf (", dt,
                     "), got ", values->scalar_type());
    NPHT_TORCH_CHECK(values->dim() == sdf.dim() + 1, where, "values must be [", packed ? "M" : "R, S",
                     ", K], got ", values->sizes());
    for (int64_t d = 0; d < sdf.dim(); ++d) {
      NPHT_TORCH_CHECK(values->size(d) == sdf.size(d), where, "values must be [",
                       packed ? "M" : "R, S", ", K] with the sizes of sdf ", sdf.sizes(), ", got ",
                       values->sizes());
    }
    s.K = values->size(-1);
  }
  return s;
}

// An optional upstream gradient (or saved tensor) like `shape`: defined and non-empty,
// else absent (nullptr; a gradient then counts as zero).
inline const at::Tensor* usable_grad(const std::optional<at::Tensor>& g, at::IntArrayRef shape,
                                     const at::Tensor& sdf, const char* name, bool cuda) {
  if (!g.has_value() || !g->defined() || g->numel() == 0) return nullptr;
  const char* where = cuda ? "npht_C composite (cuda): " : "npht_C composite (cpu): ";
  NPHT_TORCH_CHECK(g->device() == sdf.device(), where, name, " must be on ", sdf.device(), ", got ",
                   g->device());
  NPHT_TORCH_CHECK(g->is_contiguous(), where, name, " must be contiguous");
  NPHT_TORCH_CHECK(g->scalar_type() == sdf.scalar_type(), where, name, " must be ", sdf.scalar_type(),
                   ", got ", g->scalar_type());
  NPHT_TORCH_CHECK(g->sizes() == shape, where, name, " must have shape ", shape, ", got ", g->sizes());
  return &*g;
}

// The backward's checked upstream gradients (nullptr = zero) and its outputs (empty where not
// needed; zero-filled unless the kernels write every element: samples of no ray, under
// malformed offsets, keep a 0 gradient).
struct CompositeBwdIO {
  CompositeSizes s;
  const at::Tensor *grad_rendered, *grad_depth, *grad_opacity, *grad_weights;
  const at::Tensor* saved_weights;  // the forward's weights, or nullptr
  at::Tensor g_sdf, g_z, g_beta, g_values;
  bool any_upstream() const { return grad_rendered || grad_depth || grad_opacity || grad_weights; }
};

inline CompositeBwdIO composite_bwd_prepare(
    const std::optional<at::Tensor>& grad_rendered, const std::optional<at::Tensor>& grad_depth,
    const std::optional<at::Tensor>& grad_opacity, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& sdf, const at::Tensor& z, const at::Tensor& beta,
    const std::optional<at::Tensor>& values, const std::optional<at::Tensor>& offsets, bool need_sdf,
    bool need_z, bool need_beta, bool need_values, const std::optional<at::Tensor>& weights, bool cuda) {
  CompositeBwdIO io;
  io.s = composite_check(sdf, z, beta, values, offsets, cuda);
  const CompositeSizes& s = io.s;
  io.grad_rendered = usable_grad(grad_rendered, {s.R, s.K}, sdf, "grad_rendered", cuda);
  io.grad_depth = usable_grad(grad_depth, {s.R}, sdf, "grad_depth", cuda);
  io.grad_opacity = usable_grad(grad_opacity, {s.R}, sdf, "grad_opacity", cuda);
  io.grad_weights = usable_grad(grad_weights, sdf.sizes(), sdf, "grad_weights", cuda);
  io.saved_weights = usable_grad(weights, sdf.sizes(), sdf, "weights", cuda);
  // dense rays with an upstream gradient write every element; otherwise start from zeros
  const bool written = s.S > 0 && io.any_upstream();
  auto like = [&](const at::Tensor& t) { return written ? at::empty_like(t) : at::zeros_like(t); };
  io.g_sdf = need_sdf ? like(sdf) : sdf.new_empty({0});
  io.g_z = need_z ? like(z) : z.new_empty({0});
  io.g_beta = need_beta ? (written ? at::empty({s.R}, sdf.options()) : at::zeros({s.R}, sdf.options()))
                        : sdf.new_empty({0});
  // shaped like values also with K = 0 channels (autograd checks the shape)
  io.g_values = need_values && values.has_value() && values->defined() ? like(*values) : sdf.new_empty({0});
  return io;
}

}  // namespace npht
