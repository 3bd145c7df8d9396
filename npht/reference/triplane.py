"""Pure-PyTorch tri-plane sampling: the tests' oracle, the benchmarks' baseline and the
``reference`` backend.

Plane ``k`` is read with ``F.grid_sample`` at ``(p[axes[k][0]], p[axes[k][1]]) * scale``,
so every convention (``align_corners``, ``padding_mode``, pixel centres) is exactly
grid_sample's. Non-finite coordinates are made well defined, identically in every npht
backend: ``+-inf`` obeys the padding mode (zeros: 0, border: the edge), and a NaN in the two
coordinates a plane reads gives NaN features from that plane while that (point, plane)
pair contributes no gradient. Everything here is differentiable to any order by autograd.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "triplane_sample",
    "eg3d_sample_from_planes",
    "triplane_fwd",
    "triplane_bwd",
    "triplane_bwd2",
]

_AGGREGATES = ("sum", "mean", "concat")
_PADDINGS = ("zeros", "border")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sample_plane(plane: torch.Tensor, coords: torch.Tensor, padding: str, align_corners: bool):
    """plane [B, C, H, W], coords [B, N, 2] (already scaled) -> [B, N, C]."""
    nan = coords.isnan().any(-1, keepdim=True)  # [B, N, 1]
    # Past +-3 every corner is outside the plane (zeros) or clamped (border), with zero
    # gradient either way: clamping keeps grid_sample away from inf/huge values.
    grid = torch.where(nan, torch.zeros_like(coords), coords).clamp(-3.0, 3.0)
    out = F.grid_sample(
        plane, grid[:, None], mode="bilinear", padding_mode=padding, align_corners=align_corners
    )  # [B, C, 1, N]
    out = out[:, :, 0].transpose(1, 2)  # [B, N, C]
    return torch.where(nan, torch.full_like(out, float("nan")), out)


def sample_planar(
    planes: torch.Tensor,  # [B, 3, C, H, W]
    points: torch.Tensor,  # [B, N, 3]
    axes: Sequence[Sequence[int]],
    scale: float,
    aggregate: str,
    padding: str,
    align_corners: bool,
) -> torch.Tensor:
    """Three grid_sample calls and an aggregate; computes in float32 (float64 for float64
    planes) and returns the planes' dtype."""
    acc = _acc_dtype(planes.dtype)
    pl = planes.to(acc)
    pts = points.to(acc)
    feats = []
    for k in range(3):
        u, v = axes[k]
        coords = torch.stack([pts[..., u], pts[..., v]], dim=-1) * scale
        feats.append(_sample_plane(pl[:, k], coords, padding, align_corners))
    if aggregate == "concat":
        out = torch.cat(feats, dim=-1)
    elif aggregate == "mean":
        out = torch.stack(feats, dim=0).mean(0)
    else:
        out = torch.stack(feats, dim=0).sum(0)
    return out.to(planes.dtype)


def triplane_sample(
    planes: torch.Tensor,
    points: torch.Tensor,
    *,
    aggregate: str = "sum",
    align_corners: bool = False,
    padding_mode: str = "zeros",
    projection="npht",
    box_warp: float = 2.0,
    channels_last: bool = False,
) -> torch.Tensor:
    """Reference of :func:`npht.triplane_sample` (same arguments, no backend choice)."""
    from npht.ops.triplane import resolve_projection  # local: ops imports this module

    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
    if padding_mode not in _PADDINGS:
        raise ValueError(f"padding_mode must be one of {_PADDINGS}, got {padding_mode!r}")
    axes = resolve_projection(projection)
    planar = planes.permute(0, 1, 4, 2, 3) if channels_last else planes
    return sample_planar(planar, points, axes, 2.0 / box_warp, aggregate, padding_mode, align_corners)


def eg3d_sample_from_planes(
    plane_axes: torch.Tensor,  # [3, 3, 3]
    plane_features: torch.Tensor,  # [B, 3, C, H, W]
    coordinates: torch.Tensor,  # [B, M, 3]
    box_warp: float = 1.0,
) -> torch.Tensor:
    """EG3D's sampling path, written out: project each point onto the plane axes
    (coordinates times the inverse axes, first two components), one batched grid_sample
    over all planes, then permute to ``[B, 3, M, C]``. ``.mean(1)`` of the result is what
    EG3D's decoder consumes. Used as a drop-in comparison and as a benchmark baseline."""
    B, n_planes, C, H, W = plane_features.shape
    M = coordinates.shape[1]
    coords = (2.0 / box_warp) * coordinates
    inv = torch.linalg.inv(plane_axes.to(coords.dtype))  # [3, 3, 3]
    proj = torch.einsum("bmi,kij->bkmj", coords, inv)[..., :2]  # [B, 3, M, 2]
    grid = proj.reshape(B * n_planes, 1, M, 2)
    out = F.grid_sample(
        plane_features.reshape(B * n_planes, C, H, W),
        grid.to(plane_features.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # [B*3, C, 1, M]
    return out.permute(0, 3, 2, 1).reshape(B, n_planes, M, C)


# ---- the raw-kernel contract of csrc/bindings.cpp, in PyTorch (the `reference` backend) ----


def _axes_pairs(axes: Sequence[int]):
    return [(int(axes[2 * k]), int(axes[2 * k + 1])) for k in range(3)]


_AGG_NAMES = {0: "sum", 1: "mean", 2: "concat"}
_PAD_NAMES = {0: "zeros", 1: "border"}


def _fwd_cl(planes_cl, points, axes, scale, aggregate, padding, align_corners):
    return sample_planar(
        planes_cl.permute(0, 1, 4, 2, 3),
        points,
        _axes_pairs(axes),
        scale,
        _AGG_NAMES[aggregate],
        _PAD_NAMES[padding],
        align_corners,
    )


def triplane_fwd(planes, points, axes, scale, aggregate, padding, align_corners):
    """planes [B, 3, H, W, C] -> [B, N, C] or [B, N, 3C]."""
    return _fwd_cl(planes, points, axes, scale, aggregate, padding, align_corners)


def _grads_or_empty(grads, refs, needs):
    out = []
    for g, ref, need in zip(grads, refs, needs):
        if not need:
            out.append(ref.new_empty(0))
        elif g is None:
            out.append(torch.zeros_like(ref))
        else:
            out.append(g.to(ref.dtype))
    return tuple(out)


def triplane_bwd(grad_out, planes, points, axes, scale, aggregate, padding, align_corners,
                 need_planes, need_points):
    """(grad_planes, grad_points) by autograd through :func:`triplane_fwd`."""
    with torch.enable_grad():
        P = planes.detach().requires_grad_(True)
        X = points.detach().requires_grad_(True)
        out = _fwd_cl(P, X, axes, scale, aggregate, padding, align_corners)
        gP, gX = torch.autograd.grad(out, (P, X), grad_out, allow_unused=True)
    return _grads_or_empty((gP, gX), (planes, points), (need_planes, need_points))


def triplane_bwd2(gg_planes, gg_points, grad_out, planes, points, axes, scale, aggregate,
                  padding, align_corners, need_grad_out, need_planes, need_points):
    """The vjp of :func:`triplane_bwd` by double autograd."""
    with torch.enable_grad():
        G = grad_out.detach().requires_grad_(True)
        P = planes.detach().requires_grad_(True)
        X = points.detach().requires_grad_(True)
        out = _fwd_cl(P, X, axes, scale, aggregate, padding, align_corners)
        gP, gX = torch.autograd.grad(out, (P, X), G, create_graph=True)
        total = out.new_zeros((), dtype=gX.dtype)
        if gg_planes is not None:
            total = total + (gP.to(gX.dtype) * gg_planes.to(gX.dtype)).sum()
        if gg_points is not None:
            total = total + (gX * gg_points.to(gX.dtype)).sum()
        if total.requires_grad:
            grads = torch.autograd.grad(total, (G, P, X), allow_unused=True)
        else:
            grads = (None, None, None)
    return _grads_or_empty(grads, (grad_out, planes, points), (need_grad_out, need_planes, need_points))
