// Per-element derivatives of softplus(h; beta, threshold) = log1p(exp(beta h)) / beta (h
// itself where beta h > threshold, as F.softplus), written once for the CPU and CUDA
// backends of the fused MLP backward (npht/ops/mlp.py, raw-kernel contract in
// csrc/bindings.cpp). With x = beta h and s = sigmoid(x):
//   s'(h)  = s; 1 where x > threshold                       (torch's softplus_backward)
//   s''(h) = beta s (1 - s) = s'(h) q(h), q = beta (1 - s); 0 where x >= threshold
//                                  (torch's softplus double backward: `x < threshold`)
// Both from one exponential t = exp(-|x|) in (0, 1]: with r = 1 / (1 + t), s = r and
// 1 - s = t r for x >= 0, s = t r and 1 - s = r for x < 0: no cancellation (torch's
// sigmoid (1 - sigmoid) rounds to 0 in float32 from x ~ 16.6 on) and no overflow for any x.
// A NaN pre-activation gives NaN for both (no branch swallows it).
#pragma once

#include "npht/hd.h"

namespace npht {
namespace softplus {

template <typename T>
struct Derivs {
  T d1;  // s'(h)
  T q;   // s''(h) / s'(h) = beta (1 - sigmoid(x)), 0 where x >= threshold
};

// exp_: the exponential to use (libm / CUDA's exp, or npht::cpu::Exp on vectorised CPU loops).
template <typename T, typename ExpF>
NPHT_HD Derivs<T> derivs(T h, T beta, T threshold, ExpF exp_) {
  const T x = h * beta;
  const T t = exp_(x < T(0) ? x : -x);  // exp(-|x|)
  const T r = T(1) / (T(1) + t);
  Derivs<T> out;
  out.d1 = x > threshold ? T(1) : (x >= T(0) ? r : t * r);
  out.q = x >= threshold ? T(0) : beta * (x >= T(0) ? t * r : r);
  return out;
}

// The adjoint step of the MLP's gradient pass for one element (npht_C::softplus_adjoint_):
// the pass computed e = d s'(h); for the upstream gradient ebar of e, returns through the
// pointers (hadj, dbar) = (ebar d s''(h), ebar s'(h)) = (ebar e q(h), ebar s'(h)).
template <typename T, typename ExpF>
NPHT_HD void adjoint(T ebar, T e, T h, T beta, T threshold, ExpF exp_, T* hadj, T* dbar) {
  const Derivs<T> s = derivs(h, beta, threshold, exp_);
  *hadj = ebar * e * s.q;
  *dbar = ebar * s.d1;
}

}  // namespace softplus
}  // namespace npht
