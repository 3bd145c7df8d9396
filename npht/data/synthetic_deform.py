"""Expressions as a smooth analytic deformation of the neutral head (neutral -> posed).

The map is a composition of two smooth maps, each with a positive Jacobian determinant
for every parameter in range, and each equal to the identity far from the face:

1. ``bumps``: ``x + sum_k a_k g_k(x)``, Gaussian bumps ``g_k = exp(-|x - c_k|^2 / 2 s_k^2)``
   at landmarks (mouth corners, lips, brows, cheeks) with amplitude vectors ``a_k``
   scaled by the expression parameters. ``det(I + a g'^T) = 1 + a . grad g`` and
   ``|grad g| <= 1 / (s sqrt(e))``; amplitudes stay below ``0.6 s`` so the determinant
   stays above ~0.4 even where bumps overlap.
2. ``jaw``: rotation by ``theta w(x)`` about the hinge axis (parallel to x, in front of
   the ears) with a smooth weight ``w`` in [0, 1]. For a rotation about an axis ``a``
   through ``c``, ``det J = 1 + theta grad w . (a x (x - c))``. ``w`` is the product of
   (i) a step across the plane through the hinge axis and the lip gap (its gradient is
   parallel to the rotation velocity: it only increases det), (ii) a step in z in front
   of the hinge, (iii) a step above the neck and (iv) a radial falloff about the hinge
   (its gradient is orthogonal to the velocity). Only (ii) and (iii) can lower det; their
   widths keep it above ~0.3 at ``jaw_open = 1`` (checked on dense grids by the tests).

A proper local diffeomorphism of R^3 is a global one, so the posed surface of a
watertight neutral mesh has no self-intersections. The inverse (``deform_inverse``) is
Newton's method on ``deform(x) = y`` with the Jacobian from autograd, started at ``y``.
"""

from __future__ import annotations

import math

import torch

from .synthetic_params import ExpressionParams
from .synthetic_sdf import smoothstep, soft_abs
from .synthetic_shape import Layout

__all__ = ["deform", "deform_inverse", "jacobian", "JAW_MAX_ANGLE"]

JAW_MAX_ANGLE = 0.30  # rad at jaw_open = 1


def _bump_list(e: ExpressionParams, L: Layout):
    """``(centre, sigma, amplitude)`` triples (all mirrored pairs expanded)."""
    my, mz, mw = L.mouth_y, L.mouth_z - 0.02, L.mouth_half_width
    out = []

    def pair(c, s, a):
        out.append(((c[0], c[1], c[2]), s, (a[0], a[1], a[2])))
        out.append(((-c[0], c[1], c[2]), s, (-a[0], a[1], a[2])))

    corner = (mw + 0.005, my, mz - 0.03)
    if e.smile:
        pair(corner, 0.045, (0.012 * e.smile, 0.022 * e.smile, -0.008 * e.smile))
        pair((0.13, L.mouth_y + 0.12, 0.33), 0.06, (0.004 * e.smile, 0.014 * max(e.smile, 0.0), 0.006 * e.smile))
    if e.mouth_wide:
        pair(corner, 0.045, (0.02 * e.mouth_wide, 0.0, -0.006 * e.mouth_wide))
    if e.pucker:
        out.append(((0.0, my, mz), 0.05, (0.0, 0.0, 0.022 * e.pucker)))
        pair(corner, 0.045, (-0.016 * e.pucker, 0.0, 0.006 * e.pucker))
    if e.brow_raise:
        pair((L.eye_x, L.brow_y + 0.01, 0.36), 0.055, (0.0, 0.022 * e.brow_raise, 0.004 * e.brow_raise))
        out.append(((0.0, L.brow_y + 0.08, 0.38), 0.07, (0.0, 0.012 * e.brow_raise, 0.0)))
    if e.cheek_puff:
        pair((0.17, my + 0.06, 0.27), 0.075, (0.028 * e.cheek_puff, 0.0, 0.022 * e.cheek_puff))
    return out


def _bumps(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    y = x
    for c, s, a in _bump_list(e, L):
        cv = torch.tensor(c, dtype=x.dtype, device=x.device)
        av = torch.tensor(a, dtype=x.dtype, device=x.device)
        g = torch.exp(-((x - cv) ** 2).sum(-1) / (2.0 * s * s))
        y = y + g[..., None] * av
    return y


def jaw_weight(x: torch.Tensor, L: Layout) -> torch.Tensor:
    """Weight in [0, 1] of the jaw rotation (1 on the lower lip, chin and jaw)."""
    px, py, pz = x.unbind(-1)
    _, hy, hz = L.hinge
    # (i) below the plane through the hinge axis and the lip gap; sharp at the lips,
    # wider sideways (the x dependence is free: the rotation velocity has no x part)
    ty, tz = L.mouth_y - hy, L.mouth_z - hz
    n = math.hypot(ty, tz)
    s = ((py - L.mouth_y) * tz - (pz - L.mouth_z) * ty) / n  # > 0 above the plane
    width = 0.012 + 0.5 * torch.nn.functional.softplus((soft_abs(px) - L.mouth_half_width) / 0.05) * 0.05
    w1 = smoothstep(0.5 - s / (2.0 * width))
    # (ii) in front of the hinge
    w2 = smoothstep((pz - hz + 0.02) / 0.26)
    # (iii) above the neck
    w3 = smoothstep((py - L.chin_bottom_y + 0.17) / 0.2)
    # (iv) radial falloff about the hinge
    r = torch.sqrt(px * px + (py - hy) ** 2 + (pz - hz) ** 2)
    w4 = 1.0 - smoothstep((r - 0.66) / 0.3)
    return w1 * w2 * w3 * w4


def _jaw(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    if not e.jaw_open:
        return x
    angle = JAW_MAX_ANGLE * e.jaw_open * jaw_weight(x, L)
    _, hy, hz = L.hinge
    qy, qz = x[..., 1] - hy, x[..., 2] - hz
    ca, sa = torch.cos(angle), torch.sin(angle)
    # opening: the chin (front, below the hinge) goes down and back
    y = ca * qy - sa * qz + hy
    z = sa * qy + ca * qz + hz
    return torch.stack([x[..., 0], y, z], -1)


def deform(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    """Neutral points ``x [..., 3]`` -> posed points (identity for the neutral expression)."""
    if e.is_neutral:
        return x
    return _jaw(_bumps(x, e, L), e, L)


def jacobian(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    """``d deform / dx`` at ``x [..., 3]``: ``[..., 3, 3]`` (rows: output coordinates)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = deform(xg, e, L)
        if not y.requires_grad:  # neutral
            return torch.eye(3, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 3, 3).clone()
        rows = [torch.autograd.grad(y[..., i].sum(), xg, retain_graph=i < 2)[0] for i in range(3)]
    return torch.stack(rows, -2)


def deform_inverse(y: torch.Tensor, e: ExpressionParams, L: Layout, iters: int = 20,
                   tol: float = 1e-10) -> torch.Tensor:
    """Posed points ``y [..., 3]`` -> neutral points, by Newton's method (stops early when
    every residual is below ``tol``). Differentiable w.r.t. ``y``: the last step is taken
    with the graph attached, which gives the implicit-function gradient ``J^-1``."""
    if e.is_neutral:
        return y
    x = y.detach().clone()
    for _ in range(iters):
        r = deform(x, e, L) - y.detach()
        if float(r.abs().max()) < tol if r.numel() else True:
            break
        J = jacobian(x, e, L)
        x = x - torch.linalg.solve(J, r.unsqueeze(-1)).squeeze(-1)
    if y.requires_grad:
        J = jacobian(x, e, L)
        x = x - torch.linalg.solve(J, (deform(x, e, L) - y).unsqueeze(-1)).squeeze(-1)
    return x
