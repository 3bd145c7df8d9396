"""Partial point clouds from single-view depth maps: what a depth sensor in front of the
face sees, for fitting latent codes to partial observations.

A view's depth map (the pyrender renderer of :mod:`npht.data.normal_maps`, exact masks)
is back-projected through the pixel centres into world points; ``n_points`` of the
covered pixels are drawn at random (so the density follows the image, like a sensor's:
surfaces seen at grazing angles get fewer points), optionally with Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from npht.render.cameras import Cameras, near_frontal_cameras

__all__ = ["PartialScan", "partial_point_cloud"]

GeneratorLike = Union[torch.Generator, int, None]


@dataclass
class PartialScan:
    """``points [n, 3]`` float32 world coordinates; ``normals [n, 3]`` float32 unit world
    normals of the mesh at those pixels (``None`` unless asked for; without noise applied);
    ``cameras``: the one camera used (at the rendered resolution); ``depth [H, W]`` float32:
    depth along the optical axis, 0 where the mesh is not seen."""

    points: torch.Tensor
    normals: Optional[torch.Tensor]
    cameras: Cameras
    depth: torch.Tensor


def _generator(generator: GeneratorLike) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def partial_point_cloud(mesh, n_points: int, *, cameras: Optional[Cameras] = None,
                        resolution: Union[int, Tuple[int, int], None] = 256, noise_std: float = 0.0,
                        generator: GeneratorLike = None, return_normals: bool = False,
                        renderer=None) -> PartialScan:
    """``n_points`` surface points of ``mesh`` (HeadMesh, trimesh or ``(vertices, faces)``)
    seen from one camera.

    Args:
        cameras: one camera (``len(cameras) == 1``); default: one random near-frontal view
            (:func:`npht.render.near_frontal_cameras`, drawn with ``generator``).
        resolution: depth-map size ``H`` or ``(H, W)``; given cameras are resized to it
            (intrinsics scaled, same field of view); ``None`` keeps the given cameras' size
            (the default camera then has 256^2 pixels).
        noise_std: standard deviation of isotropic Gaussian noise added to the points
            (world units).
        generator: a ``torch.Generator``, an int seed or ``None`` (torch's global RNG).
            The same seed gives the same scan.
        return_normals: also return the mesh's world normals at the points.
        renderer: an open :class:`npht.data.normal_maps.NormalMapRenderer` to reuse
            (default: a temporary one).

    Points are drawn without replacement when the view covers at least ``n_points``
    pixels, with replacement otherwise (then some points repeat, up to the noise).
    Raises ``ValueError`` when ``n_points < 1`` or when the view sees no surface.
    """
    from npht.data.normal_maps import NormalMapRenderer

    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
        raise ValueError(f"n_points must be an int >= 1, got {n_points!r}")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
    gen = _generator(generator)
    if resolution is not None:
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if int(h) < 1 or int(w) < 1:
            raise ValueError(f"resolution must be positive, got {resolution!r}")
        h, w = int(h), int(w)
    if cameras is None:
        cameras = near_frontal_cameras(1, resolution=256, generator=gen)
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be npht.render.Cameras, got {type(cameras).__name__}")
    if len(cameras) != 1:
        raise ValueError(f"partial_point_cloud renders one view: cameras must hold 1 camera, got {len(cameras)}")
    if resolution is not None and (cameras.height, cameras.width) != (h, w):
        cameras = cameras.resized(h, w)

    if renderer is None:
        with NormalMapRenderer() as r:
            maps = r.render(mesh, cameras, "world")
    else:
        maps = renderer.render(mesh, cameras, "world")
    depth, mask = maps.depth[0].cpu(), maps.mask[0].cpu()
    pixels = mask.nonzero()  # [P, 2] = (v, u)
    count = len(pixels)
    if count == 0:
        raise ValueError("the view sees no surface of the mesh (empty depth map): check the camera pose, "
                         "znear/zfar and the mesh's scale")
    if count >= n_points:
        idx = torch.randperm(count, generator=gen)[:n_points]
    else:
        idx = torch.randint(count, (n_points,), generator=gen)
    v, u = pixels[idx, 0], pixels[idx, 1]
    uv = torch.stack([u, v], -1).double() + 0.5  # pixel centres
    cams64 = cameras.to(device="cpu", dtype=torch.float64)
    points = cams64.unproject(uv[None], depth[v, u].double()[None])[0]
    if noise_std > 0:
        points = points + noise_std * torch.randn(points.shape, generator=gen, dtype=torch.float64)
    normals = maps.normals[0].cpu()[v, u] if return_normals else None
    device = cameras.device
    return PartialScan(points.float().to(device), None if normals is None else normals.to(device), cameras,
                       maps.depth[0])
