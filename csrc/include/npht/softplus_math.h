// Per-element derivatives of softplus(h; beta, threshold) = log1p(exp(beta h)) / beta (h
// itself where beta h > threshold, as F.softplus), written once for the CPU and CUDA
// backends of the fused MLP backward (npht/ops/mlp.py, raw-kernel contract in
// csrc/bindings.cpp):
//   s'(h)  = sigmoid(x), x = beta h; 1 where x > threshold        (torch's softplus_backward)
//   s''(h) = beta sigmoid(x) (1 - sigmoid(x)); 0 where x >= threshold
//                                             (torch's softplus double backward, `x < threshold`)
// Both come from one exponential t = exp(-|x|) in (0, 1]: with r = 1 / (1 + t),
// sigmoid(x) = r for x >= 0 and t r for x < 0, and sigmoid (1 - sigmoid) = t r^2 for either
// sign, so no intermediate overflows for any x (z / (1 + z)^2 with z = exp(x) would at
// x > 44 in float). A NaN pre-activation gives NaN for both (no branch swallows it).
#pragma once

#include "npht/hd.h"

namespace npht {
namespace softplus {

template <typename T>
struct Derivs {
  T d1;  // s'(h)
  T d2;  // s''(h)
};

// exp_: the exponential to use (libm / CUDA's exp, or npht::cpu::Exp on vectorised CPU loops).
template <typename T, typename ExpF>
NPHT_HD Derivs<T> derivs(T h, T beta, T threshold, ExpF exp_) {
  const T x = h * beta;
  const T t = exp_(x < T(0) ? x : -x);  // exp(-|x|)
  const T r = T(1) / (T(1) + t);
  Derivs<T> out;
  out.d1 = x > threshold ? T(1) : (x >= T(0) ? r : t * r);
  out.d2 = x >= threshold ? T(0) : beta * (t * r * r);
  return out;
}

// The adjoint step of the MLP's reverse pass for one element (npht_C::softplus_adjoint_):
// e = d s'(h) was the forward; for its upstream gradient ebar, returns through the
// references (hadj, dbar) = (ebar d s''(h), ebar s'(h)).
template <typename T, typename ExpF>
NPHT_HD void adjoint(T ebar, T d, T h, T beta, T threshold, ExpF exp_, T* hadj, T* dbar) {
  const Derivs<T> s = derivs(h, beta, threshold, exp_);
  *hadj = ebar * d * s.d2;
  *dbar = ebar * s.d1;
}

}  // namespace softplus
}  // namespace npht
