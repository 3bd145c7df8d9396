"""Triton backend of the fused MLP backward's elementwise steps (npht.softplus_mlp_with_grad),
the raw-kernel contract of csrc/bindings.cpp:

- ``softplus_adjoint_(ebar, e, h, beta, threshold)``: for ``e = d s'(h)`` (the gradient
  pass' product) and its upstream gradient ``ebar``: ``e <- ebar d s''(h) = ebar e q(h)``,
  then ``ebar <- ebar s'(h)``;
- ``softplus_backward_add_(acc, grad, h, beta, threshold)``: ``acc <- acc + grad s'(h)``.

All tensors contiguous ``[M, W]``, one dtype, float32 or float64; computed in that dtype.
The math is that of csrc/include/npht/softplus_math.h: one exponential ``t = exp(-|x|)``,
``x = beta h``; with ``r = 1 / (1 + t)``, ``s' = r`` (x >= 0) or ``t r`` (x < 0), 1 where
``x > threshold``; ``q = s''/s' = beta (1 - sigmoid(x))`` = ``beta t r`` (x >= 0) or
``beta r`` (x < 0), 0 where ``x >= threshold``.
"""

import functools

import torch
import triton
import triton.language as tl

from ._env import interpreter_blocks as _interpreter_blocks

__all__ = ["softplus_adjoint_", "softplus_backward_add_"]


@triton.jit
def _derivs(h, beta, threshold):
    x = h * beta
    t = tl.exp(tl.where(x < 0, x, -x))
    r = 1.0 / (1.0 + t)
    d1 = tl.where(x > threshold, 1.0, tl.where(x >= 0, r, t * r))
    q = tl.where(x >= threshold, 0.0, beta * tl.where(x >= 0, t * r, r))
    return d1, q


@triton.jit
def _kernel(a, b, h, n, scalars, ADJOINT: tl.constexpr, BLOCK: tl.constexpr):
    """ADJOINT: (a, b) = (ebar, e) <- (ebar s', ebar e q); else a = acc <- acc + b s'."""
    beta = tl.load(scalars)
    threshold = tl.load(scalars + 1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    hv = tl.load(h + offs, mask=mask, other=0.0)
    av = tl.load(a + offs, mask=mask, other=0.0)
    bv = tl.load(b + offs, mask=mask, other=0.0)
    d1, q = _derivs(hv, beta, threshold)
    if ADJOINT:
        tl.store(b + offs, (av * bv * q).to(b.dtype.element_ty), mask=mask)
        tl.store(a + offs, (av * d1).to(a.dtype.element_ty), mask=mask)
    else:
        tl.store(a + offs, (av + bv * d1).to(a.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=64)
def _scalars(beta: float, threshold: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[beta, threshold]`` in the arrays' dtype (as torch's softplus kernels round them), on
    their device: one tensor per setting, made once (not a host-to-device copy per launch;
    the kernels only read it). Shared with kernels/mlp_mm.py."""
    return torch.tensor([float(beta), float(threshold)], dtype=dtype, device=device)


def _block(n: int) -> int:
    return 1 << 16 if _interpreter_blocks() else 1024


def _check(op, a, a_name, b, b_name, h, beta):
    if a.dim() != 2:
        raise ValueError(f"npht.kernels.mlp {op}: {a_name} must be [M, W], got shape {tuple(a.shape)}")
    if a.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"npht.kernels.mlp {op}: {a_name} must be float32 or float64, got {a.dtype}")
    for name, t in ((a_name, a), (b_name, b), ("h", h)):
        if t.dtype != a.dtype or t.device != a.device:
            raise TypeError(f"npht.kernels.mlp {op}: {name} must have {a_name}'s dtype and device "
                            f"({a.dtype}, {a.device}), got {t.dtype} on {t.device}")
        if t.shape != a.shape:
            raise ValueError(f"npht.kernels.mlp {op}: {name} must have {a_name}'s shape {tuple(a.shape)}, got "
                             f"{tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"npht.kernels.mlp {op}: {name} must be contiguous")
    if not (beta > 0 and beta < float("inf")):
        raise ValueError(f"npht.kernels.mlp {op}: beta must be finite and > 0, got {beta}")


def _launch(op, a, a_name, b, b_name, h, beta, threshold, adjoint):
    _check(op, a, a_name, b, b_name, h, beta)
    n = a.numel()
    if n == 0:
        return
    BLOCK = _block(n)
    _kernel[(triton.cdiv(n, BLOCK),)](a, b, h, n, _scalars(beta, threshold, a.dtype, a.device), ADJOINT=adjoint, BLOCK=BLOCK,
                                      num_warps=4)


def softplus_adjoint_(ebar, e, h, beta, threshold):
    _launch("softplus_adjoint_", ebar, "ebar", e, "e", h, beta, threshold, adjoint=True)


def softplus_backward_add_(acc, grad, h, beta, threshold):
    _launch("softplus_backward_add_", acc, "acc", grad, "grad", h, beta, threshold, adjoint=False)
