"""Mesh extraction from an SDF (thesis Sec. 5.2.2): the SDF on a ``resolution^3`` grid of
nodes spanning ``[-bound, bound]^3`` (thesis: 256 nodes in (-1, 1)), marching cubes at
``level`` 0 (scikit-image), vertices in world coordinates, faces counter-clockwise seen
from outside (the SDF is negative inside).

>>> import torch
>>> from npht.eval import extract_mesh
>>> mesh = extract_mesh(lambda p: p.norm(dim=-1) - 0.5, resolution=32)
>>> bool(mesh.is_watertight), round(float(mesh.volume), 2)  # 4/3 pi 0.5^3 = 0.52
(True, 0.52)

The mesh is the raw marching-cubes output (every component kept, nothing smoothed); a
surface that leaves the grid is cut open at its boundary.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["extract_mesh", "model_sdf_fn", "grid_sdf", "sparse_grid_sdf"]

SdfFn = Callable[[torch.Tensor], torch.Tensor]


def _check_args(resolution, bound, chunk, level) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2, got {resolution!r}")
    if not (isinstance(bound, (int, float)) and np.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if not (isinstance(level, (int, float)) and np.isfinite(level)):
        raise ValueError(f"level must be a finite number, got {level!r}")


@torch.no_grad()
def grid_sdf(sdf_fn: SdfFn, resolution: int = 256, bound: float = 1.0, chunk: int = 2**18,
             device: Optional[Union[str, torch.device]] = None, progress: bool = False) -> np.ndarray:
    """``sdf_fn`` on the nodes ``linspace(-bound, bound, resolution)^3`` as a float32 array
    ``[R, R, R]`` indexed ``[x, y, z]``. The points go to ``sdf_fn`` in chunks of ``chunk``
    (float32 ``[n, 3]`` on ``device``, default cpu), built from their flat indices so the
    whole grid of coordinates is never held. Raises ValueError on a non-finite value."""
    _check_args(resolution, bound, chunk, 0.0)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    R = resolution
    axis = torch.linspace(-bound, bound, R, dtype=torch.float32, device=dev)
    return _eval_nodes(sdf_fn, R**3, R, axis, chunk, progress, "sdf grid").reshape(R, R, R)


def _eval_nodes(sdf_fn: SdfFn, flat: Union[int, torch.Tensor], R: int, axis: torch.Tensor, chunk: int,
                progress: bool, desc: str) -> np.ndarray:
    """``sdf_fn`` at the grid nodes of flat indices ``flat`` (``[x, y, z]`` order, on the
    device of ``axis``; an int n: nodes 0 .. n-1, made chunk by chunk so the whole grid of
    coordinates is never held), in chunks, as float32 numpy."""
    n = flat if isinstance(flat, int) else len(flat)
    out = np.empty(n, dtype=np.float32)
    starts = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk", dynamic_ncols=True)
    for s in starts:
        idx = torch.arange(s, min(s + chunk, n), device=axis.device) if isinstance(flat, int) else flat[s:s + chunk]
        pts = torch.stack([axis[idx // (R * R)], axis[(idx // R) % R], axis[idx % R]], dim=-1)
        val = sdf_fn(pts)
        if val.shape != (len(idx),) and val.shape != (len(idx), 1):
            raise ValueError(f"sdf_fn must map points [n, 3] to sdf [n], got {tuple(val.shape)} for n={len(idx)}")
        out[s:s + len(idx)] = val.reshape(-1).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise ValueError(f"sdf_fn returned {int((~np.isfinite(out)).sum())} non-finite values on the grid")
    return out


@torch.no_grad()
def sparse_grid_sdf(sdf_fn: SdfFn, resolution: int = 256, bound: float = 1.0, chunk: int = 2**18,
                    device: Optional[Union[str, torch.device]] = None, level: float = 0.0, stride: int = 4,
                    lipschitz: float = 2.0, progress: bool = False) -> Tuple[np.ndarray, int]:
    """A grid for marching cubes from a fraction of the SDF evaluations of :func:`grid_sdf`:
    ``(volume [R, R, R] float32, evaluated nodes)``.

    The SDF is evaluated on every ``stride``-th node (and the last), which splits the grid
    into coarse cells. A coarse cell is refined (all its nodes evaluated) unless its corners
    share a side of ``level`` and are all farther from it than ``lipschitz`` times half the
    cell's diagonal: when ``|grad sdf| <= lipschitz`` everywhere, no point of such a cell can
    reach ``level``. Nodes of skipped cells get ``level +- that margin`` on their cell's side.
    Every grid cell that marching cubes triangulates then has its exact values, and the cells
    inside skipped coarse cells have one sign, so the mesh equals the dense grid's (the tests
    check equality of vertices and faces). npht's models are trained with the eikonal term
    (``|grad| ~ 1`` near the surface); ``lipschitz=2`` leaves a factor 2 of slack. A larger
    ``lipschitz`` refines more cells (safer, slower).
    """
    _check_args(resolution, bound, chunk, level)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2:
        raise ValueError(f"stride must be an int >= 2, got {stride!r}")
    if not (isinstance(lipschitz, (int, float)) and np.isfinite(lipschitz) and lipschitz > 0):
        raise ValueError(f"lipschitz must be a finite number > 0, got {lipschitz!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    R = resolution
    axis = torch.linspace(-bound, bound, R, dtype=torch.float32, device=dev)
    coarse = np.unique(np.r_[np.arange(0, R, stride), R - 1])  # coarse node indices per axis
    Rc = len(coarse)
    cflat = ((coarse[:, None, None] * R + coarse[None, :, None]) * R + coarse[None, None, :]).reshape(-1)
    vc = _eval_nodes(sdf_fn, torch.from_numpy(cflat).to(dev), R, axis, chunk, progress, "sdf coarse")
    vc = vc.reshape(Rc, Rc, Rc) - level
    corners = np.stack([vc[a:Rc - 1 + a, b:Rc - 1 + b, c:Rc - 1 + c]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)])  # [8, Rc-1, Rc-1, Rc-1]
    margin = lipschitz * 0.5 * np.sqrt(3.0) * stride * (2.0 * bound / (R - 1))
    side = np.sign(corners[0])
    skip = (np.abs(corners) > margin).all(0) & (np.sign(corners) == side).all(0)  # [Rc-1]^3
    # fine node i lies in coarse cell cell_of[i]; a coarse node also borders cell_prev[i]
    cell_of = np.minimum(np.searchsorted(coarse, np.arange(R), side="right") - 1, Rc - 2)
    on_node = np.isin(np.arange(R), coarse) & (np.arange(R) > 0)
    cell_prev = np.where(on_node, cell_of - on_node, cell_of)
    cell_prev[R - 1] = Rc - 2
    keep = np.zeros((R, R, R), dtype=bool)
    for ax in (cell_of, cell_prev):
        for ay in (cell_of, cell_prev):
            for az in (cell_of, cell_prev):
                keep |= ~skip[np.ix_(ax, ay, az)]
    vol = (level + margin * side[np.ix_(cell_of, cell_of, cell_of)]).astype(np.float32)
    keep.reshape(-1)[cflat] = False  # evaluated already
    fine = np.flatnonzero(keep)
    vol.reshape(-1)[fine] = _eval_nodes(sdf_fn, torch.from_numpy(fine).to(dev), R, axis, chunk, progress,
                                        "sdf near the surface")
    vol.reshape(-1)[cflat] = vc.reshape(-1) + level
    return vol, int(len(fine) + len(cflat))


def extract_mesh(sdf_fn: SdfFn, resolution: int = 256, bound: float = 1.0, chunk: int = 2**18,
                 device: Optional[Union[str, torch.device]] = None, level: float = 0.0,
                 progress: bool = False, clip_radius: Optional[float] = None, sparse: bool = False,
                 stride: int = 4, lipschitz: float = 2.0):
    """Marching cubes of the ``level`` set of ``sdf_fn`` (points ``[n, 3]`` float32 on
    ``device`` -> sdf ``[n]``, negative inside) over ``[-bound, bound]^3`` sampled at
    ``resolution`` nodes per axis (spacing ``2 bound / (resolution - 1)``); evaluation as in
    :func:`grid_sdf` (chunks of ``chunk`` points under ``torch.no_grad``, optional tqdm
    ``progress``). Returns a ``trimesh.Trimesh`` (not processed) with float64 vertices in
    world coordinates and faces counter-clockwise seen from outside, so that the face
    normals point towards increasing SDF.

    ``clip_radius``: intersect the shape with the ball of that radius (``max(sdf, |x| - r)``):
    npht's models are trained and rendered inside the unit sphere (the renderer's rays
    stop at it), so what an SDF does in the grid's corners beyond it is unconstrained;
    ``clip_radius=1.0`` keeps such shells out of the mesh. ``None``: the raw level set.

    ``sparse=True``: evaluate the SDF only near the surface (:func:`sparse_grid_sdf` with
    ``stride`` and ``lipschitz``; the same mesh when ``|grad sdf| <= lipschitz``): ~10x
    fewer evaluations for a head at 256^3. The thesis protocol (and Table 6.2's timing) is the
    dense grid, the default.

    Raises ValueError on bad arguments and when the level set does not cross the grid (the
    SDF is above or below ``level`` at every node).

    >>> m = extract_mesh(lambda p: p.abs().amax(dim=-1) - 0.5, resolution=21)  # a cube
    >>> [round(float(x), 3) for x in m.bounds[1]]
    [0.5, 0.5, 0.5]
    """
    import trimesh
    from skimage.measure import marching_cubes

    _check_args(resolution, bound, chunk, level)
    if clip_radius is not None:
        if not (isinstance(clip_radius, (int, float)) and clip_radius > 0):
            raise ValueError(f"clip_radius must be a number > 0 or None, got {clip_radius!r}")
        inner = sdf_fn

        def sdf_fn(p):
            v = inner(p)
            return torch.maximum(v.reshape(-1), p.norm(dim=-1).to(v.dtype) - (clip_radius - level))
    if sparse:
        vol, _ = sparse_grid_sdf(sdf_fn, resolution, bound, chunk, device, level, stride, lipschitz, progress)
    else:
        vol = grid_sdf(sdf_fn, resolution, bound, chunk, device, progress)
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < level < hi:
        where = "outside (above)" if lo >= level else "inside (below)"
        raise ValueError(f"no surface in the grid: the SDF is {where} level={level} at every node of "
                         f"[-{bound}, {bound}]^3 at resolution {resolution} (range [{lo:.4g}, {hi:.4g}])")
    h = 2.0 * bound / (resolution - 1)
    # scikit-image's default ("descent") winds the faces counter-clockwise seen from the
    # side of larger values: the outside of an SDF (checked by the tests' signed volume).
    verts, faces, _, _ = marching_cubes(vol, level, spacing=(h, h, h), gradient_direction="descent",
                                        allow_degenerate=False)
    verts = verts.astype(np.float64) - bound
    return trimesh.Trimesh(verts, faces.astype(np.int64), process=False)


def model_sdf_fn(model: torch.nn.Module, identity_or_code: Union[int, torch.Tensor]) -> SdfFn:
    """``points [n, 3] -> sdf [n]`` of one identity of an npht model for
    :func:`extract_mesh`: any model with ``sdf_fn(identity) -> (points [1, n, 3] -> sdf
    [1, n])`` (:class:`npht.models.IdentityModel`, :class:`npht.models.NPMBaseline`).

    ``identity_or_code``: an int index, an index tensor ``[]`` / ``[1]`` (integer) or a
    code ``[z]`` / ``[1, z]`` (float). The model's ``sdf_fn`` runs once here, under
    ``torch.no_grad``, so the tri-plane model generates its planes once; the points are
    moved to the model's device and dtype.

    >>> from npht.models import NPMBaseline
    >>> fn = model_sdf_fn(NPMBaseline(1, z_dim=8, hidden=32, layers=2, skip=None), 0)
    >>> tuple(fn(torch.zeros(5, 3)).shape)
    (5,)
    """
    if not callable(getattr(model, "sdf_fn", None)):
        raise TypeError(f"model must have an sdf_fn(identity) method, got {type(model).__name__}")
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    x = identity_or_code
    if isinstance(x, bool):
        raise TypeError("identity_or_code must be an int, an index tensor or a code tensor, got a bool")
    if isinstance(x, (int, np.integer)):
        x = torch.tensor([int(x)])
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"identity_or_code must be an int or a tensor, got {type(x).__name__}")
    x = x.to(dev)
    if x.is_floating_point():
        if x.dim() == 1:
            x = x[None]
        if x.dim() != 2 or x.shape[0] != 1:
            raise ValueError(f"a code must be [z] or [1, z], got {tuple(x.shape)}")
    else:
        if x.numel() != 1:
            raise ValueError(f"one identity index expected, got shape {tuple(x.shape)}")
        x = x.reshape(1).long()
    with torch.no_grad():
        fn = model.sdf_fn(x)

    def sdf(points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f"points must be [n, 3], got {tuple(points.shape)}")
        with torch.no_grad():
            return fn(points.to(dev, dtype)[None])[0]

    return sdf
