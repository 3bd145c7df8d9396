"""Pure-PyTorch tri-plane sampling: the tests' oracle, the benchmarks' baseline and the
``reference`` backend.

Plane ``k`` is read with ``F.grid_sample`` at ``(p[axes[k][0]], p[axes[k][1]]) * scale``,
so every convention (``align_corners``, ``padding_mode``, pixel centres) is exactly
grid_sample's. Non-finite coordinates are made well defined, identically in every npht
backend: ``+-inf`` obeys the padding mode (zeros: 0, border: the edge), and a NaN in the two
coordinates a plane reads gives NaN features from that plane while that (point, plane)
pair contributes no gradient.

Second derivatives: ``F.grid_sample`` has a double backward w.r.t. the grid only in recent
PyTorch (2.13 has it, 2.11 does not). ``impl="auto"`` therefore uses grid_sample where its
double backward exists and otherwise ``impl="gather"``: the same bilinear sampling written
with gathers and arithmetic that autograd differentiates to any order (the hand-written
path users fall back to; exactly grid_sample's numbers, more memory).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "triplane_sample",
    "baseline_triplane_sum",
    "gather_bilinear",
    "grid_sample_has_double_backward",
    "eg3d_sample_from_planes",
    "triplane_fwd",
    "triplane_bwd",
    "triplane_bwd2",
]

_AGGREGATES = ("sum", "mean", "concat")
_PADDINGS = ("zeros", "border")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_IMPLS = ("auto", "grid_sample", "gather")
_GRID_SAMPLE_DOUBLE_BACKWARD: dict = {}


def grid_sample_has_double_backward(device: torch.device | str = "cpu") -> bool:
    """Whether this torch differentiates F.grid_sample's backward w.r.t. the grid (probed
    once per device type on a 1x1x2x2 plane)."""
    dev = torch.device(device)
    if dev.type not in _GRID_SAMPLE_DOUBLE_BACKWARD:
        plane = torch.ones(1, 1, 2, 2, device=dev, requires_grad=True)
        grid = torch.full((1, 1, 1, 2), 0.1, device=dev, requires_grad=True)
        try:
            out = F.grid_sample(plane, grid, align_corners=False)
            (g,) = torch.autograd.grad(out.sum(), grid, create_graph=True)
            torch.autograd.grad(g.sum(), plane)
            ok = True
        except RuntimeError:
            ok = False
        _GRID_SAMPLE_DOUBLE_BACKWARD[dev.type] = ok
    return _GRID_SAMPLE_DOUBLE_BACKWARD[dev.type]


def _unnormalize(g: torch.Tensor, size: int, align_corners: bool, padding: str) -> torch.Tensor:
    """grid_sample's grid coordinate -> pixel coordinate, border clamp with zero gradient."""
    if align_corners:
        ix = (g + 1) / 2 * (size - 1) if size > 1 else g * 0
    else:
        ix = ((g + 1) * size - 1) / 2
    if padding == "border":
        lo, hi = ix <= 0, ix >= size - 1
        ix = torch.where(lo, torch.zeros_like(ix), torch.where(hi, torch.full_like(ix, size - 1), ix))
    return ix


def gather_bilinear(plane: torch.Tensor, grid: torch.Tensor, padding: str,
                    align_corners: bool) -> torch.Tensor:
    """``F.grid_sample(plane, grid[:, None], mode="bilinear", ...)[:, :, 0].transpose(1, 2)``
    with gathers: plane [B, C, H, W], grid [B, N, 2] finite -> [B, N, C]. Differentiable
    to any order; keeps four [B, C, N] corner tensors alive for the backward."""
    B, C, H, W = plane.shape
    N = grid.shape[1]
    ix = _unnormalize(grid[..., 0], W, align_corners, padding)  # [B, N]
    iy = _unnormalize(grid[..., 1], H, align_corners, padding)
    x0 = ix.detach().floor()
    y0 = iy.detach().floor()
    tx, ty = ix - x0, iy - y0
    flat = plane.reshape(B, C, H * W)
    out = None
    for dx, dy, w in ((0, 0, (1 - tx) * (1 - ty)), (1, 0, tx * (1 - ty)),
                      (0, 1, (1 - tx) * ty), (1, 1, tx * ty)):
        xi, yi = x0 + dx, y0 + dy
        valid = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
        idx = (yi.clamp(0, H - 1) * W + xi.clamp(0, W - 1)).long()  # [B, N]
        vals = torch.gather(flat, 2, idx[:, None, :].expand(B, C, N))  # [B, C, N]
        term = vals * torch.where(valid, w, torch.zeros_like(w))[:, None, :]
        out = term if out is None else out + term
    return out.transpose(1, 2)


def _sample_plane(plane: torch.Tensor, coords: torch.Tensor, padding: str, align_corners: bool,
                  impl: str = "auto"):
    """plane [B, C, H, W], coords [B, N, 2] (already scaled) -> [B, N, C]."""
    nan = coords.isnan().any(-1, keepdim=True)  # [B, N, 1]
    # Past +-3 every corner is outside the plane (zeros) or clamped (border), with zero
    # gradient either way: clamping keeps grid_sample away from inf/huge values.
    grid = torch.where(nan, torch.zeros_like(coords), coords).clamp(-3.0, 3.0)
    if impl == "auto":
        impl = "grid_sample" if grid_sample_has_double_backward(plane.device) else "gather"
    if impl == "gather":
        out = gather_bilinear(plane, grid, padding, align_corners)
    else:
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
    impl: str = "auto",
) -> torch.Tensor:
    """Three grid_sample calls (or their gather equivalent, see ``impl``) and an aggregate;
    computes in float32 (float64 for float64 planes) and returns the planes' dtype."""
    acc = _acc_dtype(planes.dtype)
    pl = planes.to(acc)
    pts = points.to(acc)
    feats = []
    for k in range(3):
        u, v = axes[k]
        coords = torch.stack([pts[..., u], pts[..., v]], dim=-1) * scale
        feats.append(_sample_plane(pl[:, k], coords, padding, align_corners, impl))
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
    impl: str = "auto",
) -> torch.Tensor:
    """Reference of :func:`npht.triplane_sample` (same arguments, no backend choice).

    ``impl``: ``"grid_sample"`` (three F.grid_sample calls), ``"gather"`` (the same numbers
    from gathers, differentiable to any order in every torch) or ``"auto"`` (grid_sample
    where this torch has its double backward, else gather)."""
    from npht.ops.triplane import resolve_projection  # local: ops imports this module

    if aggregate not in _AGGREGATES:
        raise ValueError(f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
    if padding_mode not in _PADDINGS:
        raise ValueError(f"padding_mode must be one of {_PADDINGS}, got {padding_mode!r}")
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    axes = resolve_projection(projection)
    planar = planes.permute(0, 1, 4, 2, 3) if channels_last else planes
    return sample_planar(planar, points, axes, 2.0 / box_warp, aggregate, padding_mode, align_corners,
                         impl)


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


# ---- the raw-kernel contract of csrc/bindings.cpp in explicit PyTorch: the `reference`
# backend. The same formulas as csrc/include/npht/triplane_math.h, vectorised with
# gather/scatter (no autograd: these run inside the registered ops' implementations).


def _axes_pairs(axes: Sequence[int]):
    return [(int(axes[2 * k]), int(axes[2 * k + 1])) for k in range(3)]


def _source_index(g, size: int, align_corners: bool, padding: int):
    """Pixel coordinate and its derivative (border clamp included) for grid coords g."""
    if align_corners:
        ix = (g + 1) / 2 * (size - 1) if size > 1 else torch.zeros_like(g)
        d = torch.full_like(g, (size - 1) / 2)
    else:
        ix = ((g + 1) * size - 1) / 2
        d = torch.full_like(g, size / 2)
    if padding == 1:
        clamped = (ix <= 0) | (ix >= size - 1)
        ix = ix.clamp(0, size - 1)
        d = torch.where(clamped, torch.zeros_like(d), d)
    return ix, d


class _Footprint:
    """Bilinear footprint of all points on one plane: tensors [B, N, 4] and [B, N]."""

    def __init__(self, points, u, v, H, W, scale, align_corners, padding):
        pu, pv = points[..., u], points[..., v]
        nan = pu.isnan() | pv.isnan()
        self.fill = torch.where(nan, torch.full_like(pu, float("nan")), torch.zeros_like(pu))
        zero = torch.zeros_like(pu)
        ix, dx = _source_index(torch.where(nan, zero, pu) * scale, W, align_corners, padding)
        iy, dy = _source_index(torch.where(nan, zero, pv) * scale, H, align_corners, padding)
        x0f, y0f = ix.floor(), iy.floor()
        near = ~nan & (x0f >= -1) & (x0f <= W - 1) & (y0f >= -1) & (y0f <= H - 1)
        x0f = torch.where(near, x0f, zero)
        y0f = torch.where(near, y0f, zero)
        tx = torch.where(near, ix - x0f, zero)  # far/inf points: no corners, finite weights
        ty = torch.where(near, iy - y0f, zero)
        x0, y0 = x0f.long(), y0f.long()
        xs = torch.stack([x0, x0 + 1, x0, x0 + 1], -1)
        ys = torch.stack([y0, y0, y0 + 1, y0 + 1], -1)
        self.valid = near[..., None] & (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
        self.idx = torch.where(self.valid, ys * W + xs, torch.zeros_like(xs))
        keep = near.to(pu.dtype)[..., None]
        one = torch.ones_like(tx)
        self.w = torch.stack([(one - tx) * (one - ty), tx * (one - ty), (one - tx) * ty, tx * ty], -1) * keep
        self.wx = torch.stack([-(one - ty), one - ty, -ty, ty], -1) * keep
        self.wy = torch.stack([-(one - tx), -tx, one - tx, tx], -1) * keep
        self.cross = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=pu.dtype, device=pu.device) * keep
        self.dix = torch.where(nan, zero, dx * scale)
        self.diy = torch.where(nan, zero, dy * scale)

    def gather(self, plane):
        """plane [B, H, W, C] -> corner values [B, N, 4, C] (0 for invalid corners)."""
        B, H, W, C = plane.shape
        N = self.idx.shape[1]
        flat = plane.reshape(B, H * W, C)
        f = flat.gather(1, self.idx.reshape(B, N * 4, 1).expand(-1, -1, C)).reshape(B, N, 4, C)
        return f * self.valid[..., None].to(f.dtype)

    def scatter(self, coef, shape):
        """coef [B, N, 4, C] -> plane gradient [B, H, W, C] (invalid corners dropped)."""
        B, H, W, C = shape
        N = self.idx.shape[1]
        coef = coef * self.valid[..., None].to(coef.dtype)
        out = coef.new_zeros(B, H * W, C)
        out.scatter_add_(1, self.idx.reshape(B, N * 4, 1).expand(-1, -1, C), coef.reshape(B, N * 4, C))
        return out.reshape(B, H, W, C)


def _prepare(planes, points, axes, scale, align_corners, padding):
    acc = _acc_dtype(planes.dtype)
    B, _, H, W, C = planes.shape
    fps = [_Footprint(points.to(acc), u, v, H, W, scale, align_corners, padding)
           for u, v in _axes_pairs(axes)]
    return acc, fps, (B, H, W, C)


def _plane_slice(t, k, C, aggregate):
    return t[..., k * C:(k + 1) * C] if aggregate == 2 else t


def triplane_fwd(planes, points, axes, scale, aggregate, padding, align_corners):
    """planes [B, 3, H, W, C], points [B, N, 3] -> [B, N, C] or [B, N, 3C]."""
    acc, fps, (B, H, W, C) = _prepare(planes, points, axes, scale, align_corners, padding)
    feats = [(fp.w[..., None] * fp.gather(planes[:, k].to(acc))).sum(2) + fp.fill[..., None]
             for k, fp in enumerate(fps)]
    if aggregate == 2:
        return torch.cat(feats, -1).to(planes.dtype)
    out = feats[0] + feats[1] + feats[2]
    return (out / 3 if aggregate == 1 else out).to(planes.dtype)


def _points_grad(fps, g_ix, g_iy, axes, aw, like):
    grad = torch.zeros_like(like)
    for k, (u, v) in enumerate(_axes_pairs(axes)):
        grad[..., u] += aw * fps[k].dix * g_ix[k]
        grad[..., v] += aw * fps[k].diy * g_iy[k]
    return grad


def triplane_bwd(grad_out, planes, points, axes, scale, aggregate, padding, align_corners,
                 need_planes, need_points):
    """(grad_planes, grad_points) of triplane_fwd for the upstream gradient grad_out."""
    acc, fps, shape = _prepare(planes, points, axes, scale, align_corners, padding)
    aw = 1 / 3 if aggregate == 1 else 1.0
    C = shape[-1]
    go = grad_out.to(acc)
    grad_planes, g_ix, g_iy = [], [], []
    for k, fp in enumerate(fps):
        gok = _plane_slice(go, k, C, aggregate)[:, :, None]  # [B, N, 1, C]
        if need_planes:
            grad_planes.append(fp.scatter(aw * fp.w[..., None] * gok, shape))
        if need_points:
            f = fp.gather(planes[:, k].to(acc))
            g_ix.append(((fp.wx[..., None] * f).sum(2) * gok[:, :, 0]).sum(-1))
            g_iy.append(((fp.wy[..., None] * f).sum(2) * gok[:, :, 0]).sum(-1))
    gp = torch.stack(grad_planes, 1).to(planes.dtype) if need_planes else planes.new_empty(0)
    gx = _points_grad(fps, g_ix, g_iy, axes, aw, points) if need_points else points.new_empty(0)
    return gp, gx


def triplane_bwd2(gg_planes, gg_points, grad_out, planes, points, axes, scale, aggregate,
                  padding, align_corners, need_grad_out, need_planes, need_points):
    """The vjp of triplane_bwd for upstream gradients gg_planes, gg_points (either None)."""
    acc, fps, shape = _prepare(planes, points, axes, scale, align_corners, padding)
    aw = 1 / 3 if aggregate == 1 else 1.0
    C = shape[-1]
    go = grad_out.to(acc)
    g_go = torch.zeros_like(go)
    g_planes, g_ix, g_iy = [], [], []
    for k, (fp, (u, v)) in enumerate(zip(fps, _axes_pairs(axes))):
        gok = _plane_slice(go, k, C, aggregate)  # [B, N, C]
        f = fp.gather(planes[:, k].to(acc))  # [B, N, 4, C]
        G = fp.gather(gg_planes[:, k].to(acc)) if gg_planes is not None else torch.zeros_like(f)
        if gg_points is not None:
            qx = (gg_points[..., u].to(acc) * fp.dix)[..., None]  # [B, N, 1]
            qy = (gg_points[..., v].to(acc) * fp.diy)[..., None]
        else:
            qx = qy = torch.zeros_like(fp.dix)[..., None]
        dxF, dyF = (fp.wx[..., None] * f).sum(2), (fp.wy[..., None] * f).sum(2)
        xyF = (fp.cross[..., None] * f).sum(2)
        contrib = (fp.w[..., None] * G).sum(2) + qx * dxF + qy * dyF  # [B, N, C]
        _plane_slice(g_go, k, C, aggregate).add_(aw * contrib)
        g_ix.append((gok * ((fp.wx[..., None] * G).sum(2) + qy * xyF)).sum(-1))
        g_iy.append((gok * ((fp.wy[..., None] * G).sum(2) + qx * xyF)).sum(-1))
        if need_planes:
            coef = gok[:, :, None] * (qx[..., None] * fp.wx[..., None] + qy[..., None] * fp.wy[..., None])
            g_planes.append(fp.scatter(aw * coef, shape))
    out_go = g_go.to(grad_out.dtype) if need_grad_out else grad_out.new_empty(0)
    out_p = torch.stack(g_planes, 1).to(planes.dtype) if need_planes else planes.new_empty(0)
    out_x = _points_grad(fps, g_ix, g_iy, axes, aw, points) if need_points else points.new_empty(0)
    return out_go, out_p, out_x


NPHT_AXES = ((0, 1), (1, 2), (0, 2))  # npht's projections xy, yz, xz (grid_sample's x, y)


def baseline_triplane_sum(planes: torch.Tensor, points: torch.Tensor, impl: str = "grid_sample") -> torch.Tensor:
    """The baseline npht's speed-ups are measured against, as users write it: per plane of
    ``planes [B, 3, C, H, W]`` one bilinear sample (zeros padding, align_corners=False) at
    ``points [B, N, 3]`` on npht's planes (xy, yz, xz), summed -> ``[B, N, C]``. No guards
    (:func:`triplane_sample` adds NaN and range handling, which cost time). ``impl``:
    ``"grid_sample"`` (three F.grid_sample calls) or ``"gather"`` (three
    :func:`gather_bilinear` calls: the same numbers, where this torch has no double
    backward of grid_sample)."""
    if impl not in ("grid_sample", "gather"):
        raise ValueError(f"impl must be 'grid_sample' or 'gather', got {impl!r}")
    out = None
    for k, (u, v) in enumerate(NPHT_AXES):
        if impl == "gather":
            f = gather_bilinear(planes[:, k], points[..., [u, v]], "zeros", False)  # [B, N, C]
        else:
            f = F.grid_sample(planes[:, k], points[:, None, :, [u, v]], mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # [B, C, 1, N]
        out = f if out is None else out + f
    return out if impl == "gather" else out[:, :, 0].transpose(1, 2)
