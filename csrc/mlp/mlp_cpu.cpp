// CPU backend of the fused MLP backward's elementwise steps (npht/ops/mlp.py):
// at::parallel_for over rows, the per-element math of csrc/include/npht/softplus_math.h
// (the one the CUDA kernels run) in loops the compiler vectorises, with the float
// exponential of csrc/include/npht/cpu_math.h (libm's expf is a scalar call).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "mlp/mlp_glue.h"
#include "npht/cpu_math.h"
#include "npht/softplus_math.h"

namespace npht {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel chunk (at least a row)

struct DoubleExp {
  double operator()(double x) const { return std::exp(x); }
};

template <typename T, typename ExpF>
inline void adjoint_rows(T* __restrict__ ebar, T* __restrict__ d, const T* __restrict__ h,
                         const T* __restrict__ w, int64_t r0, int64_t r1, int64_t W, T beta, T threshold) {
  for (int64_t r = r0; r < r1; ++r) {
    T* eb = ebar + r * W;
    T* dr = d + r * W;
    const T* hr = h + r * W;
    const T* dv = w != nullptr ? w : dr;  // w: one row for every row
    for (int64_t c = 0; c < W; ++c) {
      const softplus::Derivs<T> s = softplus::derivs<T>(hr[c], beta, threshold, ExpF());
      const T e = eb[c];
      dr[c] = e * dv[c] * s.d2;
      eb[c] = e * s.d1;
    }
  }
}

NPHT_CPU_CLONES void adjoint_rows_f(float* ebar, float* d, const float* h, const float* w, int64_t r0, int64_t r1,
                                    int64_t W, float beta, float threshold) {
  adjoint_rows<float, cpu::Exp>(ebar, d, h, w, r0, r1, W, beta, threshold);
}

template <typename T, typename ExpF>
inline void backward_add_rows(T* __restrict__ acc, const T* __restrict__ grad, const T* __restrict__ h, int64_t i0,
                              int64_t i1, T beta, T threshold) {
  for (int64_t i = i0; i < i1; ++i) acc[i] += grad[i] * softplus::derivs<T>(h[i], beta, threshold, ExpF()).d1;
}

NPHT_CPU_CLONES void backward_add_f(float* acc, const float* grad, const float* h, int64_t i0, int64_t i1,
                                    float beta, float threshold) {
  backward_add_rows<float, cpu::Exp>(acc, grad, h, i0, i1, beta, threshold);
}

void softplus_adjoint_op(at::Tensor& ebar, at::Tensor& d, const at::Tensor& h, const std::optional<at::Tensor>& w,
                         double beta, double threshold) {
  const mlp::Sizes s = mlp::check("softplus_adjoint_", ebar, "ebar", d, "d", h, w, beta, false);
  if (s.M * s.W == 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrain / s.W);
  if (ebar.scalar_type() == at::kDouble) {
    double *pe = ebar.data_ptr<double>(), *pd = d.data_ptr<double>();
    const double* ph = h.data_ptr<double>();
    const double* pw = w.has_value() ? w->data_ptr<double>() : nullptr;
    at::parallel_for(0, s.M, grain, [&](int64_t r0, int64_t r1) {
      adjoint_rows<double, DoubleExp>(pe, pd, ph, pw, r0, r1, s.W, beta, threshold);
    });
  } else {
    float *pe = ebar.data_ptr<float>(), *pd = d.data_ptr<float>();
    const float* ph = h.data_ptr<float>();
    const float* pw = w.has_value() ? w->data_ptr<float>() : nullptr;
    const float b = static_cast<float>(beta), t = static_cast<float>(threshold);
    at::parallel_for(0, s.M, grain, [&](int64_t r0, int64_t r1) { adjoint_rows_f(pe, pd, ph, pw, r0, r1, s.W, b, t); });
  }
}

void softplus_backward_add_op(at::Tensor& acc, const at::Tensor& grad, const at::Tensor& h, double beta,
                              double threshold) {
  const mlp::Sizes s = mlp::check("softplus_backward_add_", acc, "acc", grad, "grad", h, std::nullopt, beta, false);
  const int64_t n = s.M * s.W;
  if (n == 0) return;
  if (acc.scalar_type() == at::kDouble) {
    double* pa = acc.data_ptr<double>();
    const double *pg = grad.data_ptr<double>(), *ph = h.data_ptr<double>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      backward_add_rows<double, DoubleExp>(pa, pg, ph, i0, i1, beta, threshold);
    });
  } else {
    float* pa = acc.data_ptr<float>();
    const float *pg = grad.data_ptr<float>(), *ph = h.data_ptr<float>();
    const float b = static_cast<float>(beta), t = static_cast<float>(threshold);
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) { backward_add_f(pa, pg, ph, i0, i1, b, t); });
  }
}

}  // namespace
}  // namespace npht

TORCH_LIBRARY_IMPL(npht_C, CPU, m) {
  m.impl("softplus_adjoint_", &npht::softplus_adjoint_op);
  m.impl("softplus_backward_add_", &npht::softplus_backward_add_op);
}
