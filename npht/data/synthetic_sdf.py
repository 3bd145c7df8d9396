"""Smooth SDF primitives and blends (PyTorch, any float dtype, autograd-friendly).

Points are ``[..., 3]`` tensors; centres, radii and axes are Python floats (tuples), so
one function serves float32 and float64. The blends are the quadratic polynomial smooth
minimum: its gradient is a convex combination of the operands' gradients, so it never
raises the Lipschitz constant above theirs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = [
    "smin", "smax", "ssub", "smoothstep", "sphere", "ellipsoid", "capsule", "tapered_capsule",
    "rotate_yz", "rotate_xz", "soft_abs",
]

Vec = Sequence[float]


def _vec(p: torch.Tensor, v: Vec) -> torch.Tensor:
    return torch.tensor(v, dtype=p.dtype, device=p.device)


def smin(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth union (quadratic polynomial smooth minimum, blend width ``k``)."""
    if k <= 0:
        return torch.minimum(a, b)
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return torch.lerp(b, a, h) - k * h * (1.0 - h)


def smax(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth intersection."""
    return -smin(-a, -b, k)


def ssub(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Smooth subtraction: ``a`` minus the solid ``b``."""
    return smax(a, -b, k)


def smoothstep(t: torch.Tensor) -> torch.Tensor:
    """C2 step (6t^5 - 15t^4 + 10t^3) of ``t`` clamped to [0, 1]; slope at most 1.875."""
    t = t.clamp(0.0, 1.0)
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)


def soft_abs(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smooth |x| (``sqrt(x^2 + eps^2)``), for mirror-symmetric parts without a crease."""
    return torch.sqrt(x * x + eps * eps)


def sphere(p: torch.Tensor, c: Vec, r: float) -> torch.Tensor:
    return (p - _vec(p, c)).norm(dim=-1) - r


def ellipsoid(p: torch.Tensor, c: Vec, radii: Vec) -> torch.Tensor:
    """Ellipsoid distance estimate ``k0 (k0 - 1) / k1`` (k0 = |q/r|, k1 = |q/r^2|): exact
    on the surface, gradient norm close to 1 near it, same sign as the true distance."""
    r = _vec(p, radii)
    q = p - _vec(p, c)
    k0 = (q / r).norm(dim=-1)
    k1 = (q / (r * r)).norm(dim=-1).clamp_min(1e-9)
    return k0 * (k0 - 1.0) / k1


def capsule(p: torch.Tensor, a: Vec, b: Vec, r: float) -> torch.Tensor:
    """Segment ``a``-``b`` thickened by ``r``."""
    return tapered_capsule(p, a, b, r, r)


def tapered_capsule(p: torch.Tensor, a: Vec, b: Vec, ra: float, rb: float) -> torch.Tensor:
    """Segment ``a``-``b`` with a radius going linearly from ``ra`` to ``rb`` (distance
    estimate; exact when ``ra == rb``)."""
    av, bv = _vec(p, a), _vec(p, b)
    ba = bv - av
    t = (((p - av) * ba).sum(-1) / float((ba * ba).sum())).clamp(0.0, 1.0)
    return (p - av - t[..., None] * ba).norm(dim=-1) - (ra + (rb - ra) * t)


def rotate_yz(p: torch.Tensor, angle: float, c: Vec = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Points rotated by ``angle`` about the x axis through ``c`` (y towards z)."""
    cv = _vec(p, c)
    q = p - cv
    ca, sa = math.cos(angle), math.sin(angle)
    y = ca * q[..., 1] - sa * q[..., 2]
    z = sa * q[..., 1] + ca * q[..., 2]
    return torch.stack([q[..., 0], y, z], -1) + cv


def rotate_xz(p: torch.Tensor, angle: float, c: Vec = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Points rotated by ``angle`` about the y axis through ``c`` (z towards x)."""
    cv = _vec(p, c)
    q = p - cv
    ca, sa = math.cos(angle), math.sin(angle)
    x = ca * q[..., 0] + sa * q[..., 2]
    z = -sa * q[..., 0] + ca * q[..., 2]
    return torch.stack([x, q[..., 1], z], -1) + cv
