// CPU backend of the fused MLP backward's elementwise steps (npht/ops/mlp.py):
// at::parallel_for over elements, the per-element math of csrc/include/npht/softplus_math.h
// (the one the CUDA kernels run) in loops the compiler vectorises, with the float
// exponential of csrc/include/npht/cpu_math.h (libm's expf is a scalar call).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "mlp/mlp_glue.h"
#include "npht/cpu_math.h"
#include "npht/softplus_math.h"

namespace npht {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel chunk

struct DoubleExp {
  double operator()(double x) const { return std::exp(x); }
};

template <typename T, typename ExpF>
inline void adjoint_range(T* __restrict__ ebar, T* __restrict__ e, const T* __restrict__ h, int64_t i0, int64_t i1,
                          T beta, T threshold) {
  for (int64_t i = i0; i < i1; ++i) {
    T hadj, dbar;
    softplus::adjoint<T>(ebar[i], e[i], h[i], beta, threshold, ExpF(), &hadj, &dbar);
    e[i] = hadj;
    ebar[i] = dbar;
  }
}

NPHT_CPU_CLONES void adjoint_f(float* ebar, float* e, const float* h, int64_t i0, int64_t i1, float beta,
                               float threshold) {
  adjoint_range<float, cpu::Exp>(ebar, e, h, i0, i1, beta, threshold);
}

template <typename T, typename ExpF>
inline void backward_add_range(T* __restrict__ acc, const T* __restrict__ grad, const T* __restrict__ h, int64_t i0,
                              int64_t i1, T beta, T threshold) {
  for (int64_t i = i0; i < i1; ++i) acc[i] += grad[i] * softplus::derivs<T>(h[i], beta, threshold, ExpF()).d1;
}

NPHT_CPU_CLONES void backward_add_f(float* acc, const float* grad, const float* h, int64_t i0, int64_t i1,
                                    float beta, float threshold) {
  backward_add_range<float, cpu::Exp>(acc, grad, h, i0, i1, beta, threshold);
}

void softplus_adjoint_op(at::Tensor& ebar, at::Tensor& e, const at::Tensor& h, double beta, double threshold) {
  const mlp::Sizes s = mlp::check("softplus_adjoint_", ebar, "ebar", e, "e", h, beta, false);
  const int64_t n = s.M * s.W;
  if (n == 0) return;
  if (ebar.scalar_type() == at::kDouble) {
    double *pb = ebar.data_ptr<double>(), *pe = e.data_ptr<double>();
    const double* ph = h.data_ptr<double>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      adjoint_range<double, DoubleExp>(pb, pe, ph, i0, i1, beta, threshold);
    });
  } else {
    float *pb = ebar.data_ptr<float>(), *pe = e.data_ptr<float>();
    const float* ph = h.data_ptr<float>();
    const float b = static_cast<float>(beta), t = static_cast<float>(threshold);
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) { adjoint_f(pb, pe, ph, i0, i1, b, t); });
  }
}

void softplus_backward_add_op(at::Tensor& acc, const at::Tensor& grad, const at::Tensor& h, double beta,
                              double threshold) {
  const mlp::Sizes s = mlp::check("softplus_backward_add_", acc, "acc", grad, "grad", h, beta, false);
  const int64_t n = s.M * s.W;
  if (n == 0) return;
  if (acc.scalar_type() == at::kDouble) {
    double* pa = acc.data_ptr<double>();
    const double *pg = grad.data_ptr<double>(), *ph = h.data_ptr<double>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      backward_add_range<double, DoubleExp>(pa, pg, ph, i0, i1, beta, threshold);
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
