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

from typing import Callable, Optional, Union

import numpy as np
import torch

__all__ = ["extract_mesh", "model_sdf_fn", "grid_sdf"]

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
    out = np.empty(R**3, dtype=np.float32)
    starts = range(0, R**3, chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sdf grid", unit="chunk", dynamic_ncols=True)
    for s in starts:
        idx = torch.arange(s, min(s + chunk, R**3), device=dev)
        pts = torch.stack([axis[idx // (R * R)], axis[(idx // R) % R], axis[idx % R]], dim=-1)
        val = sdf_fn(pts)
        if val.shape != (len(idx),) and val.shape != (len(idx), 1):
            raise ValueError(f"sdf_fn must map points [n, 3] to sdf [n], got {tuple(val.shape)} for n={len(idx)}")
        out[s:s + len(idx)] = val.reshape(-1).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise ValueError(f"sdf_fn returned {int((~np.isfinite(out)).sum())} non-finite values on the grid")
    return out.reshape(R, R, R)


def extract_mesh(sdf_fn: SdfFn, resolution: int = 256, bound: float = 1.0, chunk: int = 2**18,
                 device: Optional[Union[str, torch.device]] = None, level: float = 0.0,
                 progress: bool = False, clip_radius: Optional[float] = None):
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
