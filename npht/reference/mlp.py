"""Reference for :func:`npht.softplus_mlp_with_grad`: the MLP written with PyTorch ops and
its input gradient taken by autograd (``create_graph=True``), so that a loss on the
gradient is differentiated by autograd's double backward. This is what tri-plane SDF
projects do today; the tests use it as the oracle and the benchmarks as the baseline."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def softplus_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 beta: float = 100.0, threshold: float = 20.0) -> torch.Tensor:
    """``x [..., D0]`` -> ``[...]``: linear layers with softplus(beta, threshold) between them."""
    a = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        a = F.linear(a, w, b)
        if i < len(weights) - 1:
            a = F.softplus(a, beta, threshold)
    return a.squeeze(-1)


def softplus_mlp_with_grad(x: torch.Tensor, weights: Sequence[torch.Tensor],
                           biases: Sequence[torch.Tensor], beta: float = 100.0,
                           threshold: float = 20.0):
    """``(y [...], dy/dx [..., D0])`` by autograd; differentiable again when grad mode is on."""
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_()
        y = softplus_mlp(xr, weights, biases, beta, threshold)
        (g,) = torch.autograd.grad(y.sum(), xr, create_graph=create)
    return (y, g) if create else (y.detach(), g.detach())


def softplus_mlp_with_grad_explicit(x: torch.Tensor, weights: Sequence[torch.Tensor],
                                    biases: Sequence[torch.Tensor], beta: float = 100.0,
                                    threshold: float = 20.0):
    """``(y [...], dy/dx [..., D0])`` with the input gradient written out (the reverse pass
    ``d_{l-1} = (d_l * softplus'(h_l)) W_l``) in PyTorch ops, no autograd call: differentiable
    in every mode and under torch.func transforms (vmap included), where
    :func:`softplus_mlp_with_grad`'s ``torch.autograd.grad`` cannot run."""
    hs = []
    a = x
    for w, b in zip(weights[:-1], biases[:-1]):
        h = F.linear(a, w, b)
        hs.append(h)
        a = F.softplus(h, beta, threshold)
    y = F.linear(a, weights[-1], biases[-1]).squeeze(-1)
    d = weights[-1][0]
    for h, w in zip(reversed(hs), reversed(weights[:-1])):
        # softplus'(h) = sigmoid(beta h), 1 on the linear branch beta h > threshold
        s1 = torch.where(h * beta > threshold, torch.ones_like(h), torch.sigmoid(h * beta))
        d = (d * s1) @ w
    return y, d


# ---- the fused MLP backward's elementwise steps, in PyTorch ops ----------------------------
# The raw-kernel contract of csrc/bindings.cpp (npht_C::softplus_adjoint_ and
# softplus_backward_add_), implemented by the unfused sequence the cpu/cuda/triton kernels
# replace: the reference backend of npht.softplus_mlp_with_grad, and what runs for dtypes the
# kernels do not take (float16, bfloat16).


def softplus_adjoint_(ebar: torch.Tensor, e: torch.Tensor, h: torch.Tensor, beta: float,
                      threshold: float) -> None:
    """In place, for ``e = d * s'(h)`` (the gradient pass' product) and its upstream gradient
    ``ebar``: ``e <- ebar * d * s''(h) = ebar * e * beta * (1 - sigmoid(beta h))`` (0 where
    ``beta * h >= threshold``, torch's double backward of softplus), then
    ``ebar <- ebar * s'(h)``."""
    x = h * beta
    linear = x >= threshold
    q = torch.sigmoid_(x.neg_()).mul_(beta).masked_fill_(linear, 0.0)  # beta (1 - sigmoid(beta h))
    e.mul_(ebar).mul_(q)
    torch.ops.aten.softplus_backward.grad_input(ebar, h, beta, threshold, grad_input=ebar)


def softplus_backward_add_(acc: torch.Tensor, grad: torch.Tensor, h: torch.Tensor, beta: float,
                           threshold: float) -> None:
    """In place: ``acc <- acc + grad * s'(h)``."""
    acc.add_(torch.ops.aten.softplus_backward(grad, h, beta, threshold))
