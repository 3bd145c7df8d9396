// Input checks shared by the CPU and CUDA torch glue of the fused MLP backward's elementwise
// kernels (contract in csrc/bindings.cpp). Only .cpp files include this (it uses ATen); the
// kernels see plain pointers and sizes.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "npht/check.h"

namespace npht {
namespace mlp {

struct Sizes {
  int64_t M;  // rows
  int64_t W;  // columns (the layer's width)
};

// Every tensor on one device (CUDA when `cuda`, else CPU), one dtype (float32 or float64),
// contiguous, [M, W].
inline Sizes check(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& b,
                   const char* b_name, const at::Tensor& h, double beta, bool cuda) {
  const char* where = cuda ? " (cuda): " : " (cpu): ";
  NPHT_TORCH_CHECK(a.dim() == 2, "npht_C ", op, where, a_name, " must be [M, W], got shape ", a.sizes());
  const Sizes s{a.size(0), a.size(1)};
  NPHT_TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble, "npht_C ", op, where,
                   a_name, " must be float32 or float64, got ", a.scalar_type());
  auto same = [&](const at::Tensor& t, const char* name) {
    NPHT_TORCH_CHECK(t.device().is_cuda() == cuda && (cuda || t.device().is_cpu()), "npht_C ", op, where,
                     name, " must be a ", cuda ? "CUDA" : "CPU", " tensor, got one on ", t.device());
    NPHT_TORCH_CHECK(t.device() == a.device(), "npht_C ", op, where, name, " must be on ", a_name,
                     "'s device ", a.device(), ", got ", t.device());
    NPHT_TORCH_CHECK(t.scalar_type() == a.scalar_type(), "npht_C ", op, where, name, " must have ", a_name,
                     "'s dtype ", a.scalar_type(), ", got ", t.scalar_type());
    NPHT_TORCH_CHECK(t.sizes() == a.sizes(), "npht_C ", op, where, name, " must have ", a_name, "'s shape ",
                     a.sizes(), ", got ", t.sizes());
    NPHT_TORCH_CHECK(t.is_contiguous(), "npht_C ", op, where, name, " must be contiguous");
  };
  same(a, a_name);
  same(b, b_name);
  same(h, "h");
  NPHT_TORCH_CHECK(std::isfinite(beta) && beta > 0, "npht_C ", op, where, "beta must be finite and > 0, got ",
                   beta);
  return s;
}

}  // namespace mlp
}  // namespace npht
