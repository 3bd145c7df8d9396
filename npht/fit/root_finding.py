"""Inverting a forward deformation by iterative root finding (thesis eq. 4.22, NPHM C.2,
following SNARF): for a posed point ``x_p`` find the canonical point

    x_c = argmin_x |x_p - D(x)|,   D(x) = x + F_ex(x, z_ex, z_id),

i.e. the root of ``g(x) = D(x) - x_p``, per point, by a batched Newton or Broyden method
(3 x 3 Jacobians by autograd, 3 x 3 solves).

Gradients never go through the iterations. At the solution, ``g(x_c(z), z) = 0``, so by the
implicit function theorem

    dx_c/dz = -J^{-1} dg/dz,   dx_c/dx_p = J^{-1},   J = dD/dx (x_c).

:func:`invert_deformation` returns ``x_c`` as ``x* - J^{-1} (g(x*) - stopgrad(g(x*)))``
(``J^{-1}`` constant): the value is the solver's ``x*`` exactly, and its first derivatives
with respect to everything ``D`` depends on (codes, network weights, ``x_p``) are the
implicit ones above. One differentiable evaluation of ``D`` is all the graph holds.
Second derivatives through ``x_c`` are not those of the implicit function (only the first
order is exact), which fitting does not need.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

__all__ = ["invert_deformation", "deformation_jacobian"]

DeformFn = Callable[[torch.Tensor], torch.Tensor]


def _check(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _eval(deform_fn: DeformFn, x: torch.Tensor) -> torch.Tensor:
    y = deform_fn(x)
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ValueError(f"deform_fn must map points [B, N, 3] to posed points of the same shape; "
                         f"for {tuple(x.shape)} it returned "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    return y


def deformation_jacobian(deform_fn: DeformFn, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``D(x) [B, N, 3]`` and its per-point Jacobian ``dD/dx [B, N, 3, 3]`` (row i = gradient
    of output i), both detached. ``D`` must act on each point independently (an MLP
    does): then three backward passes give all the 3 x 3 blocks.

    >>> import torch
    >>> A = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0]])
    >>> _, J = deformation_jacobian(lambda x: x @ A.T, torch.zeros(1, 4, 3))
    >>> torch.equal(J[0, 0], A)
    True
    """
    _check(x, "x")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = _eval(deform_fn, xg)
        rows = []
        for i in range(3):
            (gi,) = torch.autograd.grad(y[..., i].sum(), xg, retain_graph=i < 2, allow_unused=True)
            rows.append(torch.zeros_like(xg) if gi is None else gi)
    return y.detach(), torch.stack(rows, dim=-2).detach()


def _inv(J: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batched 3 x 3 inverses and a mask of the invertible ones (others: identity)."""
    inv, info = torch.linalg.inv_ex(J)
    ok = (info == 0) & torch.isfinite(inv).all(-1).all(-1)
    eye = torch.eye(3, dtype=J.dtype, device=J.device).expand_as(J)
    return torch.where(ok[..., None, None], inv, eye), ok


def _matvec(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (M @ v[..., None])[..., 0]


def invert_deformation(deform_fn: DeformFn, x_posed: torch.Tensor, init: Optional[torch.Tensor] = None,
                       iters: int = 20, tol: float = 1e-6, method: str = "broyden",
                       max_step: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Canonical points ``x_c [B, N, 3]`` with ``deform_fn(x_c) = x_posed``, and a mask
    ``converged [B, N]`` (residual ``|deform_fn(x_c) - x_posed| < tol``).

    Args:
        deform_fn: the forward deformation ``x [B, N, 3] -> x + F_ex(x) [B, N, 3]``, acting
            on each point independently (e.g. ``lambda x: expr.deform(x, z_id, z_ex)``).
            Any tensor it closes over that requires grad (codes, weights) receives the
            implicit gradient through ``x_c``.
        x_posed: posed points ``[B, N, 3]`` (gradients reach it too: ``dx_c/dx_p = J^-1``).
        init: initial guess ``[B, N, 3]``; default ``x_posed`` (NPHM's single
            initialisation ``x_init = x_p``).
        iters: maximum iterations; ``tol``: residual norm per point counted as converged
            (points that have converged are not updated further).
        method: ``"broyden"`` (Jacobian by autograd at the start, then Broyden's rank-one
            updates of its inverse: one evaluation of ``deform_fn`` per iteration, as
            SNARF) or ``"newton"`` (exact Jacobian every iteration: 1 forward, 3 backward).
        max_step: optional cap on the length of each update (damping for strong
            deformations).

    Each point keeps its best iterate (lowest residual). Non-converged points are returned
    as they are (best iterate) and flagged in the mask; their gradients are the implicit
    ones at that point, i.e. meaningful only where converged.

    >>> import torch
    >>> A = torch.tensor([[0.5, 0.2, 0.0], [0.0, 0.4, 0.3], [0.1, 0.0, 0.6]])
    >>> D = lambda x: x + 0.1 * torch.sin(x @ A.T + 0.3)
    >>> xp = torch.rand(2, 100, 3) * 2 - 1
    >>> xc, ok = invert_deformation(D, xp, tol=1e-6)
    >>> bool(ok.all()), float((D(xc) - xp).norm(dim=-1).max()) < 1e-6
    (True, True)
    """
    _check(x_posed, "x_posed")
    if method not in ("broyden", "newton"):
        raise ValueError(f"method must be 'broyden' or 'newton', got {method!r}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be a non-negative int, got {iters!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if max_step is not None and not max_step > 0:
        raise ValueError(f"max_step must be > 0 or None, got {max_step!r}")
    xp = x_posed.detach()
    if init is None:
        x = xp.clone()
    else:
        _check(init, "init")
        if init.shape != xp.shape:
            raise ValueError(f"init must have the shape of x_posed {tuple(xp.shape)}, got {tuple(init.shape)}")
        x = init.detach().to(xp.dtype).clone()

    with torch.no_grad():
        y, J = deformation_jacobian(deform_fn, x)
        g = y - xp
        err = g.norm(dim=-1)
        err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
        best_x, best_err = x.clone(), err.clone()
        Jinv, _ = _inv(J)
        for _ in range(iters):
            active = best_err >= tol
            if not bool(active.any()):
                break
            dx = -_matvec(Jinv, g)
            if max_step is not None:
                n = dx.norm(dim=-1, keepdim=True)
                dx = dx * torch.clamp(max_step / n.clamp_min(1e-30), max=1.0)
            dx = torch.where(active[..., None], dx, torch.zeros_like(dx))
            x_new = x + dx
            if method == "newton":
                y_new, J = deformation_jacobian(deform_fn, x_new)
                g_new = y_new - xp
                Jinv, _ = _inv(J)
            else:
                g_new = _eval(deform_fn, x_new) - xp
                # "good" Broyden update of the inverse (Sherman-Morrison):
                # Jinv += (dx - Jinv dg) dx^T Jinv / (dx^T Jinv dg)
                dg = g_new - g
                Jdg = _matvec(Jinv, dg)
                dxJ = (dx[..., None, :] @ Jinv)[..., 0, :]
                denom = (dx * Jdg).sum(-1, keepdim=True)
                good = active[..., None] & (denom.abs() > 1e-30) & torch.isfinite(denom)
                safe = torch.where(good, denom, torch.ones_like(denom))
                upd = (dx - Jdg)[..., :, None] * dxJ[..., None, :] / safe[..., None]
                Jinv = Jinv + torch.where(good[..., None], upd, torch.zeros_like(upd))
            x, g = x_new, g_new
            err = g.norm(dim=-1)
            err = torch.where(torch.isfinite(err), err, torch.full_like(err, float("inf")))
            better = err < best_err
            best_x = torch.where(better[..., None], x, best_x)
            best_err = torch.where(better, err, best_err)
        converged = best_err < tol

    x_star = best_x
    if not torch.is_grad_enabled():
        return x_star, converged
    # implicit gradient: one differentiable evaluation at the solution
    with torch.enable_grad():
        probe = _eval(deform_fn, x_star)
        g_star = probe - x_posed
    if not g_star.requires_grad:
        return x_star, converged
    _, J = deformation_jacobian(deform_fn, x_star)
    Jinv, _ = _inv(J)
    x_c = x_star - _matvec(Jinv, g_star - g_star.detach())
    return x_c, converged
