"""Expressions as a smooth analytic deformation of the neutral head (neutral -> posed).

The map is a composition of two smooth maps, each with a positive Jacobian determinant
for every parameter in range, and each equal to the identity far from the face:

1. ``bumps``: ``x + sum_k a_k g_k(x)``, Gaussian bumps ``g_k = exp(-|x - c_k|^2 / 2 s_k^2)``
   at landmarks (mouth corners, lips, brows, cheeks) with amplitude vectors ``a_k``
   scaled by the expression parameters. ``det(I + a g'^T) = 1 + a . grad g`` and
   ``|grad g| <= 1 / (s sqrt(e))``; amplitudes stay below ``0.6 s`` so the determinant
   stays above 0.29 where bumps overlap (all 64 corners of the parameter box, dense
   samples of the unit ball).
2. ``jaw``: rotation by ``theta w(x)`` (``theta <= 0.26`` rad) about the hinge axis
   (parallel to x, in front of the ears) with a smooth weight ``w`` in [0, 1]. For a
   rotation about an axis, ``det J = 1 + theta dw/dphi`` with ``phi`` the angle about the
   axis. ``w`` is a product of a step across the lip gap increasing with ``phi``, a fade
   below the chin (slope at most 1.875 / 0.7 in ``phi``) and factors of quantities the
   rotation keeps (x, distance to the axis, distance to the hinge point), so
   ``det J >= 1 - 0.26 * 1.875 / 0.7 = 0.30`` everywhere.

A proper local diffeomorphism of R^3 is a global one, so the posed surface of a
watertight neutral mesh has no self-intersections. The inverse (``deform_inverse``) is
bisection on the jaw angle, then Newton's method for the bumps (Jacobian from autograd).
"""

from __future__ import annotations

import math

import torch

from .synthetic_params import ExpressionParams
from .synthetic_sdf import smoothstep, soft_abs
from .synthetic_shape import Layout

__all__ = ["deform", "deform_inverse", "jacobian", "JAW_MAX_ANGLE"]

JAW_MAX_ANGLE = 0.26  # rad at jaw_open = 1


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
        cheek = (0.004 * e.smile, 0.014 * max(e.smile, 0.0), 0.006 * e.smile)  # cheeks rise, never sink
        pair((0.13, L.mouth_y + 0.12, 0.33), 0.06, cheek)
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


def _merged_bumps(e: ExpressionParams, L: Layout):
    """The bumps with amplitudes of equal (centre, sigma) summed."""
    merged = {}
    for c, sigma, a in _bump_list(e, L):
        prev = merged.get((c, sigma), (0.0, 0.0, 0.0))
        merged[(c, sigma)] = tuple(p + q for p, q in zip(prev, a))
    return [(c, sigma, a) for (c, sigma), a in merged.items()]


def _bumps(x: torch.Tensor, e: ExpressionParams, L: Layout, with_jacobian: bool = False):
    """``x + sum_k a_k g_k(x)``; with ``with_jacobian`` also ``I + sum_k a_k grad g_k^T``
    (analytic: ``grad g = -g (x - c) / s^2``)."""
    y = x
    J = None
    if with_jacobian:
        J = torch.eye(3, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 3, 3).clone()
    for c, sigma, a in _merged_bumps(e, L):
        cv = torch.tensor(c, dtype=x.dtype, device=x.device)
        av = torch.tensor(a, dtype=x.dtype, device=x.device)
        q = x - cv
        g = torch.exp(-(q * q).sum(-1) / (2.0 * sigma * sigma))
        y = y + g[..., None] * av
        if with_jacobian:
            J = J - (g[..., None, None] / (sigma * sigma)) * (av[:, None] * q[..., None, :])
    return (y, J) if with_jacobian else y


# the jaw weight fades over the angles [0.95, 0.95 + 0.7] rad below the forward horizontal
JAW_SECTOR_END = (0.95, 0.7)


def _jaw_polar(x: torch.Tensor, L: Layout):
    """Hinge-axis coordinates: (x, rho = distance to the axis, phi = angle below the forward
    horizontal, increasing as the jaw opens, r = distance to the hinge point)."""
    _, hy, hz = L.hinge
    qy, qz = x[..., 1] - hy, x[..., 2] - hz
    rho = torch.sqrt(qy * qy + qz * qz + 1e-12)
    phi = torch.atan2(-qy, qz)
    r = torch.sqrt(x[..., 0] ** 2 + rho * rho)
    return x[..., 0], rho, phi, r


def _jaw_weight_polar(px, rho, phi, r, L: Layout) -> torch.Tensor:
    _, hy, hz = L.hinge
    phi_m = math.atan2(-(L.mouth_y - hy), L.mouth_z - hz)  # the lip gap
    # (i) step across the lip gap: sharp at the lips, wider sideways (in space: the angular
    # width is the spatial width over rho)
    width = 0.012 + 0.5 * torch.nn.functional.softplus((soft_abs(px) - L.mouth_half_width) / 0.05) * 0.05
    dphi = (width / rho.clamp_min(1e-3)).clamp(max=0.8)
    w1 = smoothstep(0.5 + (phi - phi_m) / (2.0 * dphi))
    # (ii) fade below the chin (keeps the neck)
    a0, da = JAW_SECTOR_END
    w3 = 1.0 - smoothstep((phi - a0) / da)
    # (iii) radial falloff about the hinge, (iv) off the axis: both orthogonal to the motion
    w4 = 1.0 - smoothstep((r - 0.66) / 0.3)
    w5 = smoothstep(rho / 0.08)
    return w1 * w3 * w4 * w5


def jaw_weight(x: torch.Tensor, L: Layout) -> torch.Tensor:
    """Weight in [0, 1] of the jaw rotation (1 on the lower lip, chin and jaw).

    A product of functions of the hinge-axis angle ``phi`` (step across the lip gap,
    increasing with ``phi``; fade below the chin, slope at most 1.875 / 0.7) and of
    quantities the rotation preserves (``x``, ``rho``, ``r``), so
    ``det J = 1 + theta dw/dphi >= 1 - 0.26 * 1.875 / 0.7 = 0.30``."""
    return _jaw_weight_polar(*_jaw_polar(x, L), L)


def _rotate_about_hinge(x: torch.Tensor, angle: torch.Tensor, L: Layout) -> torch.Tensor:
    _, hy, hz = L.hinge
    qy, qz = x[..., 1] - hy, x[..., 2] - hz
    ca, sa = torch.cos(angle), torch.sin(angle)
    # positive angles open the jaw: the chin (front, below the hinge) goes down and back
    return torch.stack([x[..., 0], ca * qy - sa * qz + hy, sa * qy + ca * qz + hz], -1)


def _jaw(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    if not e.jaw_open:
        return x
    return _rotate_about_hinge(x, JAW_MAX_ANGLE * e.jaw_open * jaw_weight(x, L), L)


def _jaw_inverse(y: torch.Tensor, e: ExpressionParams, L: Layout, iters: int = 60) -> torch.Tensor:
    """The rotation keeps x, rho and r, so the inverse solves the scalar equation
    ``psi = theta w(phi_y - psi)`` (increasing in psi since det J > 0) by bisection on
    [0, theta]."""
    if not e.jaw_open:
        return y
    theta = JAW_MAX_ANGLE * e.jaw_open
    px, rho, phi, r = _jaw_polar(y, L)
    # the weight vanishes outside the sector phi in (phi_m - 0.8, 1.65) and beyond r = 0.96:
    # only points whose bracket [phi - theta, phi] meets it are solved for
    _, hy, hz = L.hinge
    phi_m = math.atan2(-(L.mouth_y - hy), L.mouth_z - hz)
    live = (r < 0.96) & (phi > phi_m - 0.8) & (phi < sum(JAW_SECTOR_END) + theta)
    px, rho, phi, r = (t[live] for t in (px, rho, phi, r))
    lo, hi = torch.zeros_like(phi), torch.full_like(phi, theta)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        g = mid - theta * _jaw_weight_polar(px, rho, phi - mid, r, L)
        pos = g > 0
        hi, lo = torch.where(pos, mid, hi), torch.where(pos, lo, mid)
        if float((hi - lo).max()) < 1e-15 if hi.numel() else True:
            break
    angle = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
    angle[live] = -0.5 * (lo + hi)
    return _rotate_about_hinge(y, angle, L)


def deform(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    """Neutral points ``x [..., 3]`` -> posed points (identity for the neutral expression)."""
    if e.is_neutral:
        return x
    return _jaw(_bumps(x, e, L), e, L)


def jacobian(x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    """``d deform / dx`` at ``x [..., 3]``: ``[..., 3, 3]`` (rows: output coordinates)."""
    return _stage_jacobian(deform, x, e, L)


def _stage_jacobian(fn, x: torch.Tensor, e: ExpressionParams, L: Layout) -> torch.Tensor:
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = fn(xg, e, L)
        if not y.requires_grad:  # neutral
            return torch.eye(3, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], 3, 3).clone()
        rows = [torch.autograd.grad(y[..., i].sum(), xg, retain_graph=i < 2)[0] for i in range(3)]
    return torch.stack(rows, -2)


def deform_inverse(y: torch.Tensor, e: ExpressionParams, L: Layout, iters: int = 20,
                   tol: float = 1e-12) -> torch.Tensor:
    """Posed points ``y [..., 3]`` -> neutral points: the jaw rotation is undone by
    bisection on its angle, the bumps by Newton's method (``iters`` steps at most; stops
    when every residual is below ``tol``). Differentiable w.r.t. ``y``: a last Newton step
    on the whole map is taken with the graph attached, which gives the implicit-function
    gradient ``J^-1``."""
    if e.is_neutral:
        return y
    with torch.no_grad():
        yd = y.detach()
        z = _jaw_inverse(yd, e, L)
        x = z.clone()
        for _ in range(iters):
            fx, J = _bumps(x, e, L, with_jacobian=True)
            r = fx - z
            if not r.numel() or float(r.abs().max()) < tol:
                break
            x = x - torch.linalg.solve(J, r.unsqueeze(-1)).squeeze(-1)
    if y.requires_grad:
        J = jacobian(x, e, L)
        x = x - torch.linalg.solve(J, (deform(x, e, L) - y).unsqueeze(-1)).squeeze(-1)
    return x
