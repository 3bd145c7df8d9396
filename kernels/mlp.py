"""Triton backend of the fused MLP backward's elementwise steps (npht.softplus_mlp_with_grad),
the raw-kernel contract of csrc/bindings.cpp:

- ``softplus_adjoint_(ebar, d, h, w, beta, threshold)``: ``ebar <- ebar s'(h)`` and
  ``d <- ebar d s''(h)`` (``ebar w s''(h)`` with the row ``w [W]`` broadcast over the rows);
- ``softplus_backward_add_(acc, grad, h, beta, threshold)``: ``acc <- acc + grad s'(h)``.

All tensors contiguous ``[M, W]`` (w ``[W]``), one dtype, float32 or float64; computed in that
dtype. The math is that of csrc/include/npht/softplus_math.h: one exponential
``t = exp(-|x|)``, ``x = beta h``; with ``r = 1 / (1 + t)``, ``s' = r`` (x >= 0) or ``t r``
(x < 0), 1 where ``x > threshold``; ``s'' = beta t r^2``, 0 where ``x >= threshold``.
"""

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
    d2 = tl.where(x >= threshold, 0.0, beta * (t * r * r))
    return d1, d2


@triton.jit
def _adjoint_kernel(ebar, d, h, w, n, W, scalars, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    beta = tl.load(scalars)
    threshold = tl.load(scalars + 1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    hv = tl.load(h + offs, mask=mask, other=0.0)
    e = tl.load(ebar + offs, mask=mask, other=0.0)
    if HAS_W:
        dv = tl.load(w + offs % W, mask=mask, other=0.0)
    else:
        dv = tl.load(d + offs, mask=mask, other=0.0)
    d1, d2 = _derivs(hv, beta, threshold)
    tl.store(d + offs, (e * dv * d2).to(d.dtype.element_ty), mask=mask)
    tl.store(ebar + offs, (e * d1).to(ebar.dtype.element_ty), mask=mask)


@triton.jit
def _backward_add_kernel(acc, grad, h, n, scalars, BLOCK: tl.constexpr):
    beta = tl.load(scalars)
    threshold = tl.load(scalars + 1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    hv = tl.load(h + offs, mask=mask, other=0.0)
    g = tl.load(grad + offs, mask=mask, other=0.0)
    a = tl.load(acc + offs, mask=mask, other=0.0)
    d1, _ = _derivs(hv, beta, threshold)
    tl.store(acc + offs, (a + g * d1).to(acc.dtype.element_ty), mask=mask)


def _scalars(like, beta, threshold):
    """beta and threshold in the tensors' dtype (as torch's softplus kernels round them)."""
    return torch.tensor([beta, threshold], dtype=like.dtype, device=like.device)


def _block(n: int) -> int:
    return 1 << 16 if _interpreter_blocks() else 1024


def _check(op, a, a_name, b, b_name, h, w, beta):
    if a.dim() != 2:
        raise ValueError(f"npht.kernels.mlp {op}: {a_name} must be [M, W], got shape {tuple(a.shape)}")
    if a.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"npht.kernels.mlp {op}: {a_name} must be float32 or float64, got {a.dtype}")
    for name, t, shape in ((a_name, a, a.shape), (b_name, b, a.shape), ("h", h, a.shape),
                           ("w", w, a.shape[1:])):
        if t is None:
            continue
        if t.dtype != a.dtype or t.device != a.device:
            raise TypeError(f"npht.kernels.mlp {op}: {name} must have {a_name}'s dtype and device "
                            f"({a.dtype}, {a.device}), got {t.dtype} on {t.device}")
        if t.shape != shape:
            raise ValueError(f"npht.kernels.mlp {op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"npht.kernels.mlp {op}: {name} must be contiguous")
    if not (beta > 0 and beta < float("inf")):
        raise ValueError(f"npht.kernels.mlp {op}: beta must be finite and > 0, got {beta}")


def softplus_adjoint_(ebar, d, h, w, beta, threshold):
    _check("softplus_adjoint_", ebar, "ebar", d, "d", h, w, beta)
    n = ebar.numel()
    if n == 0:
        return
    BLOCK = _block(n)
    W = ebar.shape[1]
    _adjoint_kernel[(triton.cdiv(n, BLOCK),)](ebar, d, h, w if w is not None else h, n, W,
                                             _scalars(ebar, beta, threshold), HAS_W=w is not None, BLOCK=BLOCK, num_warps=4)


def softplus_backward_add_(acc, grad, h, beta, threshold):
    _check("softplus_backward_add_", acc, "acc", grad, "grad", h, None, beta)
    n = acc.numel()
    if n == 0:
        return
    BLOCK = _block(n)
    _backward_add_kernel[(triton.cdiv(n, BLOCK),)](acc, grad, h, n, _scalars(acc, beta, threshold), BLOCK=BLOCK,
                                                  num_warps=4)
