"""Pinhole cameras and rays (OpenCV convention), the thesis' Fibonacci camera rig, and the
conversion of normal maps to the OpenGL camera convention pyrender renders in.

Conventions (DESIGN.md): world y up, faces towards +z; cameras in OpenCV convention (x
right, y down, z forward), ``cam2world`` 4x4 maps camera to world coordinates; pixel
``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``; ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = [
    "Cameras",
    "intrinsics_from_fov",
    "intrinsics_from_focal",
    "look_at",
    "fibonacci_sphere",
    "fibonacci_cameras",
    "near_frontal_cameras",
    "generate_rays",
    "ray_box_bounds",
    "ray_sphere_bounds",
    "world_normals_to_camera",
    "OPENCV_TO_OPENGL",
]

#: Flip of the camera y and z axes: OpenCV (x right, y down, z forward) <-> OpenGL
#: (x right, y up, z backward). Its own inverse.
OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0]))


@dataclass
class Cameras:
    """A batch of pinhole cameras: ``K [B, 3, 3]`` (pixels) and ``cam2world [B, 4, 4]``
    (OpenCV convention), for images of ``height x width`` pixels."""

    K: torch.Tensor
    cam2world: torch.Tensor
    height: int
    width: int

    def __post_init__(self):
        if not isinstance(self.K, torch.Tensor) or self.K.dim() != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"K must be [B, 3, 3], got {_shape(self.K)}")
        if (not isinstance(self.cam2world, torch.Tensor) or self.cam2world.dim() != 3
                or self.cam2world.shape[1:] != (4, 4)):
            raise ValueError(f"cam2world must be [B, 4, 4], got {_shape(self.cam2world)}")
        if self.K.shape[0] != self.cam2world.shape[0]:
            raise ValueError(
                f"K and cam2world must hold the same number of cameras, got {self.K.shape[0]} "
                f"and {self.cam2world.shape[0]}"
            )
        for name in ("K", "cam2world"):
            if not getattr(self, name).is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {getattr(self, name).dtype}")
        if self.K.dtype != self.cam2world.dtype or self.K.device != self.cam2world.device:
            raise ValueError(f"K and cam2world must share dtype and device, got K {self.K.dtype} on {self.K.device} "
                             f"and cam2world {self.cam2world.dtype} on {self.cam2world.device}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def __len__(self) -> int:
        return self.K.shape[0]

    @property
    def device(self) -> torch.device:
        return self.cam2world.device

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in world coordinates ``[B, 3]``."""
        return self.cam2world[:, :3, 3]

    def to(self, *args, **kwargs) -> "Cameras":
        return Cameras(self.K.to(*args, **kwargs), self.cam2world.to(*args, **kwargs), self.height, self.width)

    def __getitem__(self, idx) -> "Cameras":
        idx = [idx] if isinstance(idx, int) else idx
        return Cameras(self.K[idx], self.cam2world[idx], self.height, self.width)

    def resized(self, height: int, width: Optional[int] = None) -> "Cameras":
        """The same cameras rendering ``height x width`` pixels (intrinsics scaled)."""
        width = height if width is None else width
        K = self.K.clone()
        K[:, 0] *= width / self.width
        K[:, 1] *= height / self.height
        return Cameras(K, self.cam2world, height, width)

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """``points [B, N, 3]`` (world) -> camera coordinates ``[B, N, 3]``."""
        R, t = self.cam2world[:, :3, :3], self.cam2world[:, :3, 3]
        return (points - t[:, None]) @ R

    def project(self, points: torch.Tensor) -> torch.Tensor:
        """``points [B, N, 3]`` (world) -> pixel coordinates ``[B, N, 2]`` (continuous;
        the centre of pixel (u, v) is (u + 0.5, v + 0.5)) and depth along the optical axis
        as a third column: ``[B, N, 3] = (x_pix, y_pix, z_cam)``."""
        pc = self.world_to_camera(points)
        z = pc[..., 2:3]
        uv = (pc @ self.K.transpose(1, 2))[..., :2] / z
        return torch.cat([uv, z], -1)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates ``[B, N, 2]`` and depth along the optical axis ``[B, N]`` ->
        world points ``[B, N, 3]`` (the inverse of :meth:`project`)."""
        ones = torch.ones_like(pixels[..., :1])
        rays = torch.cat([pixels, ones], -1) @ torch.linalg.inv(self.K).transpose(1, 2)
        pc = rays * depth[..., None]
        return pc @ self.cam2world[:, :3, :3].transpose(1, 2) + self.cam2world[:, None, :3, 3]


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def intrinsics_from_fov(fov_degrees: float, height: int, width: Optional[int] = None,
                        batch: int = 1, dtype=torch.float32, device=None) -> torch.Tensor:
    """``K [batch, 3, 3]`` for a vertical field of view (degrees), principal point at the
    image centre, square pixels."""
    width = height if width is None else width
    if not 0 < fov_degrees < 180:
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees!r}")
    f = 0.5 * height / math.tan(math.radians(fov_degrees) / 2)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    return K.expand(batch, 3, 3).clone()


def intrinsics_from_focal(fx: float, height: int, width: Optional[int] = None, *, fy: Optional[float] = None,
                          cx: Optional[float] = None, cy: Optional[float] = None, batch: int = 1,
                          dtype=torch.float32, device=None) -> torch.Tensor:
    """``K [batch, 3, 3]`` from focal lengths in pixels (``fy`` default ``fx``) and the
    principal point (default the image centre, ``(width / 2, height / 2)`` in the pixel-centre
    convention of :func:`generate_rays`)."""
    width = height if width is None else width
    fy = fx if fy is None else fy
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"focal lengths must be positive and finite, got fx={fx!r}, fy={fy!r}")
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    return K.expand(batch, 3, 3).clone()


def look_at(eye: torch.Tensor, target: Optional[torch.Tensor] = None,
            up: Optional[torch.Tensor] = None) -> torch.Tensor:
    """OpenCV ``cam2world [B, 4, 4]`` of cameras at ``eye [B, 3]`` looking at ``target``
    (default: the origin), image up = world ``up`` (default +y) projected."""
    eye = torch.as_tensor(eye, dtype=torch.get_default_dtype() if not torch.is_tensor(eye) else eye.dtype)
    if eye.dim() == 1:
        eye = eye[None]
    if eye.dim() != 2 or eye.shape[-1] != 3:
        raise ValueError(f"eye must be [B, 3], got {tuple(eye.shape)}")
    target = torch.zeros_like(eye) if target is None else torch.as_tensor(target, dtype=eye.dtype).expand_as(eye)
    up = eye.new_tensor([0.0, 1.0, 0.0]) if up is None else torch.as_tensor(up, dtype=eye.dtype)
    forward = target - eye
    if (forward.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: eye and target coincide")
    z = forward / forward.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(z, up.expand_as(z))  # right-handed x = y cross z with y = -up
    degenerate = x.norm(dim=-1) < 1e-6  # looking along up: pick another reference
    if degenerate.any():
        alt = eye.new_tensor([0.0, 0.0, 1.0]).expand_as(z)
        x = torch.where(degenerate[:, None], torch.linalg.cross(z, alt), x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eye
    return c2w


def fibonacci_sphere(n: int, radius: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """``n`` points ``[n, 3]`` spread uniformly over a sphere (Fibonacci lattice), the
    first near the +y pole, y running from top to bottom."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n
    r = torch.sqrt(torch.clamp(1.0 - y * y, min=0.0))
    golden = math.pi * (3.0 - math.sqrt(5.0))
    phi = golden * i
    pts = torch.stack([r * torch.sin(phi), y, r * torch.cos(phi)], -1)
    return (pts * radius).to(dtype)


def fibonacci_cameras(n: int = 128, radius: float = 2.6, resolution: int = 64, fov_degrees: float = 30.0,
                      dtype=torch.float32, device=None) -> Cameras:
    """The thesis' rig (Sec. 5.1.2): ``n`` cameras on a Fibonacci lattice over a sphere
    of ``radius``, each looking at the origin, ``resolution^2`` pixels."""
    eye = fibonacci_sphere(n, radius, dtype).to(device)
    return Cameras(intrinsics_from_fov(fov_degrees, resolution, batch=n, dtype=dtype, device=device),
                   look_at(eye), resolution, resolution)


def near_frontal_cameras(n: int, radius: float = 2.6, max_yaw_degrees: float = 30.0,
                         max_pitch_degrees: float = 15.0, resolution: int = 64, fov_degrees: float = 30.0,
                         generator: Optional[torch.Generator] = None, dtype=torch.float32,
                         device=None) -> Cameras:
    """``n`` random cameras around the face direction (+z): yaw and pitch uniform in
    +-max, at ``radius``, looking at the origin."""
    yaw = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(max_yaw_degrees)
    pitch = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(max_pitch_degrees)
    eye = torch.stack([torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch), torch.cos(yaw) * torch.cos(pitch)], -1)
    eye = (eye * radius).to(dtype).to(device)
    return Cameras(intrinsics_from_fov(fov_degrees, resolution, batch=n, dtype=dtype, device=device),
                   look_at(eye), resolution, resolution)


def generate_rays(cameras: Cameras) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rays through the pixel centres: origins and unit directions ``[B, H, W, 3]``
    (world), row-major (v down, u right) as in the image."""
    H, W = cameras.height, cameras.width
    dev, dt = cameras.device, cameras.cam2world.dtype
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=dt) + 0.5,
                          torch.arange(W, device=dev, dtype=dt) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1).reshape(1, -1, 3)  # [1, HW, 3]
    dirs_cam = pix @ torch.linalg.inv(cameras.K).transpose(1, 2)  # [B, HW, 3]
    dirs = dirs_cam @ cameras.cam2world[:, :3, :3].transpose(1, 2)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = cameras.centers[:, None].expand_as(dirs)
    B = len(cameras)
    return origins.reshape(B, H, W, 3), dirs.reshape(B, H, W, 3)


def ray_sphere_bounds(origins: torch.Tensor, dirs: torch.Tensor, radius: float = 1.0):
    """Entry and exit distances of rays ``[..., 3]`` (unit ``dirs``) through the sphere of
    ``radius`` at the origin: ``(near, far, hit)`` each ``[...]``. Rays that miss get
    ``near = far = `` the distance of closest approach and ``hit = False``; near is
    clamped at 0 for origins inside the sphere."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = torch.sqrt(torch.clamp(disc, min=0.0))
    near = torch.clamp(-b - root, min=0.0)
    far = torch.clamp(-b + root, min=0.0)
    hit = hit & (far > 0)
    return near, far, hit


def _half_extent(half_extent, like: torch.Tensor) -> torch.Tensor:
    """``half_extent`` (a positive number or three of them) as a ``[3]`` tensor like ``like``."""
    vals = half_extent if isinstance(half_extent, (tuple, list)) else (half_extent,) * 3
    ok = len(vals) == 3 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < math.inf
                                for v in vals)
    if not ok:
        raise ValueError(f"half_extent must be a finite number > 0 or three of them (x, y, z), got {half_extent!r}")
    return torch.tensor([float(v) for v in vals], dtype=like.dtype, device=like.device)


def ray_box_bounds(origins: torch.Tensor, dirs: torch.Tensor, half_extent=1.0):
    """Entry and exit distances of rays ``[..., 3]`` (unit ``dirs``) through the axis-aligned
    box ``[-e, e]`` around the origin (``half_extent`` e: a number, or three for x, y, z; 1 is
    a tri-plane's ``[-1, 1]^3`` domain, EG3D's box of side ``box_warp`` is ``box_warp / 2``):
    ``(near, far, hit)`` each ``[...]``, as :func:`ray_sphere_bounds`: near is clamped at 0
    for origins inside the box; rays that miss it (or touch it at one point) get ``hit = False``
    and ``near = far = `` the distance along the ray to the point closest to the box's
    centre (0 if behind). Slab method; a direction component of exactly 0 keeps the
    origin's slab (inside: the whole line, outside: none) without dividing by it."""
    if origins.shape[-1:] != (3,) or dirs.shape != origins.shape:
        raise ValueError(f"origins and dirs must both be [..., 3] of one shape, got {_shape(origins)} and "
                         f"{_shape(dirs)}")
    e = _half_extent(half_extent, origins)
    zero = dirs == 0
    safe = torch.where(zero, torch.ones_like(dirs), dirs)
    t0, t1 = (-e - origins) / safe, (e - origins) / safe
    inside = origins.abs() <= e
    inf = torch.full_like(dirs, math.inf)
    lo = torch.where(zero, torch.where(inside, -inf, inf), torch.minimum(t0, t1))
    hi = torch.where(zero, torch.where(inside, inf, -inf), torch.maximum(t0, t1))
    near, far = lo.amax(-1), hi.amin(-1)
    hit = (far > near) & (far > 0)
    closest = torch.clamp(-(origins * dirs).sum(-1), min=0.0)
    near = torch.where(hit, torch.clamp(near, min=0.0), closest)
    far = torch.where(hit, far, closest)
    return near, far, hit


def ray_bounds(origins: torch.Tensor, dirs: torch.Tensor, radius: float = 1.0, box=None):
    """:func:`ray_box_bounds` with ``half_extent=box`` when a box is given, else
    :func:`ray_sphere_bounds` with ``radius``: the renderers' bounding volume."""
    if box is not None:
        return ray_box_bounds(origins, dirs, box)
    return ray_sphere_bounds(origins, dirs, radius)


def world_normals_to_camera(normals: torch.Tensor, cameras: Cameras, convention: str = "opengl") -> torch.Tensor:
    """World-space normal maps ``[B, H, W, 3]`` -> camera space, in ``"opencv"`` (x right,
    y down, z forward) or ``"opengl"`` (x right, y up, z backward: what pyrender's ground
    truth uses; a surface facing the camera has z > 0)."""
    if convention not in ("opencv", "opengl"):
        raise ValueError(f"convention must be 'opencv' or 'opengl', got {convention!r}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be npht.render.Cameras, got {type(cameras).__name__}")
    if not isinstance(normals, torch.Tensor) or normals.dim() != 4 or normals.shape[-1] != 3 \
            or normals.shape[0] != len(cameras):
        raise ValueError(f"normals must be [B, H, W, 3] with B = {len(cameras)} (one map per camera), got "
                         f"{_shape(normals)}")
    R = cameras.cam2world[:, :3, :3]  # columns: camera axes in world
    n_cam = normals @ R[:, None]  # [B, H, W, 3] @ [B, 1, 3, 3]: n . axis_k
    if convention == "opengl":
        n_cam = n_cam * OPENCV_TO_OPENGL.diagonal().to(n_cam)
    return n_cam
