"""Ground-truth normal maps of meshes with pyrender (the thesis, Sec. 5.1.2), driven by the
same :class:`npht.render.Cameras` as npht's differentiable renderer, so the two can be
compared pixel for pixel.

How a view is made (default, ``msaa=False``):

* pyrender draws the mesh once per view with ``RenderFlags.FLAT`` (no lighting), each face
  in one flat colour that encodes its index (24 bits; unshared vertices), uploaded once per
  mesh; only the camera node moves between views;
* for every covered pixel the ray through the pixel centre is intersected with that face
  in float64 (:func:`_shade_exact`): the hit gives the depth, its barycentrics interpolate
  the mesh's smooth (area-weighted) vertex normals, renormalised; the world normal is then
  rotated into the requested camera frame. The rasteriser's own interpolation is not used:
  it extrapolates garbage at the rare silhouette pixels covered by faces seen nearly
  edge-on (measured with normals as interpolated colours: up to 45 deg of normal error and
  0.49 of depth error, ~1 pixel in 10^5); the few pixels whose index itself is corrupt are
  ray cast against every face;
* with ``msaa=True`` (soft silhouettes) indices would blend, so the normals are written
  as vertex colours ``(n + 1) / 2`` instead, decoded ``2 c - 1`` and renormalised, and the
  depth is pyrender's (the thesis' recipe);
* ``Cameras`` (OpenCV) become ``IntrinsicsCamera(fx, fy, cx, cy)`` with the pose
  ``cam2world @ diag(1, -1, -1, 1)`` (OpenCV -> OpenGL camera axes). pyrender's projection
  puts the continuous pixel coordinate ``u`` at window coordinate ``u`` and OpenGL samples
  pixel ``(u, v)`` at its centre ``(u + 0.5, v + 0.5)``: exactly npht's ray convention
  (checked against analytic spheres in the tests, non-square and off-centre included).

Two framebuffer changes, scoped to this module's renders (:func:`_framebuffer_formats`):

* **exact masks** (``msaa=False``, default): pyrender's offscreen framebuffer is 4x MSAA,
  which blends silhouettes (alpha 64/128/191 at edges). Its renderbuffers are allocated with
  0 samples instead, so every pixel is either covered at its centre or not, like a ray
  through the pixel centre.
* **float colour**: the colour renderbuffers are ``GL_RGBA32F`` instead of ``GL_RGBA8`` and
  the colour is read back as floats. For ``msaa=True``'s colour-coded normals: 8-bit colour
  quantises each component to 2/255 (~0.17 deg mean angular error on a sphere). Face
  indices are exact in either.

Both rely on pyrender 0.1.x internals (the ``glRenderbufferStorage*`` names in
``pyrender.renderer`` and the offscreen renderer's main framebuffer); platforms without
framebuffer objects (OSMesa) render directly into an 8-bit, non-multisampled default
framebuffer: exact masks, and face indices are exact in 8 bits (``msaa=True`` has no
effect there; pyrender's read-back drops alpha, so coverage is depth > 0). Checked: this
module's and the partial-scan tests pass with ``PYOPENGL_PLATFORM=osmesa`` (Debian's
libosmesa6, PyOpenGL 3.1.10).

Measured (Mesa llvmpipe via EGL, 2 shared CPU cores): an icosphere of subdivision 6
(82k faces, r = 0.5), 128 Fibonacci views, against the analytic sphere through pixel
centres: at 128^2, 35 mask pixels in all 128 views differ, all rays that pass between
the polygon and the sphere (none covered wrongly); mean angular error 0.012 deg, max 1.4
deg (grazing rays, where the polygon's and the sphere's hits part); every depth
back-projects to within 6e-5 of the polygon. The ~100k-face sphere of ``benchmarks/gt_normal_maps.py``, 128 views:
see its output (~25-35 ms/view at 128^2, ~1.6x the time of the colour-coded normals: three
times the vertices, plus the float64 shading).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import sys
import threading
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from ..render.cameras import Cameras
from .sampling import vertex_normals

__all__ = ["NormalMaps", "NormalMapRenderer", "render_normal_maps", "mesh_arrays"]

CONVENTIONS = ("opengl", "opencv", "world")
_OPENCV_TO_OPENGL_POSE = np.diag([1.0, -1.0, -1.0, 1.0])
_MAX_FACES = (1 << 24) - 1  # face index + 1 in the 24 bits of RGB
_PATCH_LOCK = threading.RLock()
_INSTALL_HINT = (
    "install EGL (apt-get install libegl1, plus a driver: Mesa's libegl-mesa0 renders on the CPU) "
    "or OSMesa (apt-get install libosmesa6, then pip install 'PyOpenGL>=3.1.10' after pyrender, "
    "and set PYOPENGL_PLATFORM=osmesa); PYOPENGL_PLATFORM must be set before OpenGL or pyrender "
    "is first imported")


@dataclass
class NormalMaps:
    """Normal maps of ``N`` views, ``H x W`` pixels, on the cameras' device.

    ``normals [N, H, W, 3]`` float32 unit vectors (0 in the background) in ``convention``:
    ``"opengl"`` (camera x right, y up, z towards the viewer: what
    ``world_normals_to_camera(..., "opengl")`` gives), ``"opencv"`` (x right, y down, z
    forward) or ``"world"``. ``mask [N, H, W]`` bool: the surface covers the pixel centre.
    ``depth [N, H, W]`` float32: depth along the camera's optical axis (the OpenCV camera
    z of the surface point, positive in front of the camera; not the distance along the
    ray), 0 in the background.
    """

    normals: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    convention: str = "opengl"

    def __len__(self) -> int:
        return self.normals.shape[0]


# -- mesh input ---------------------------------------------------------------------------


def mesh_arrays(mesh) -> Tuple[np.ndarray, np.ndarray]:
    """``(vertices [V, 3] float64, faces [F, 3] int64)`` of a :class:`HeadMesh`, a
    ``trimesh.Trimesh`` or a ``(vertices, faces)`` pair, validated (finite vertices, at
    least one face, indices in range)."""
    if hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
        vertices, faces = mesh.vertices, mesh.faces
    elif isinstance(mesh, (tuple, list)) and len(mesh) == 2:
        vertices, faces = mesh
    else:
        raise TypeError("mesh must be a HeadMesh, a trimesh.Trimesh or a (vertices, faces) pair, "
                        f"got {type(mesh).__name__}")
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.number):
        raise ValueError(f"mesh vertices must be a numeric [V, 3] array, got shape {vertices.shape} "
                         f"dtype {vertices.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"mesh faces must be [F, 3], got shape {faces.shape}")
    if len(faces) == 0 or len(vertices) == 0:
        raise ValueError(f"mesh is empty: {len(vertices)} vertices, {len(faces)} faces")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"mesh faces must hold integer indices, got dtype {faces.dtype}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"mesh faces index vertices out of range [0, {len(vertices)}): "
                         f"min {faces.min()}, max {faces.max()}")
    vertices = vertices.astype(np.float64)
    if not np.isfinite(vertices).all():
        raise ValueError("mesh vertices must be finite (found NaN or inf)")
    return vertices, faces.astype(np.int64)


# -- OpenGL platform ----------------------------------------------------------------------


def _select_platform() -> str:
    """PYOPENGL_PLATFORM: the existing value, else ``"egl"`` (or ``"osmesa"`` when only
    OSMesa is installed). Set before OpenGL is imported, since PyOpenGL reads it once."""
    value = os.environ.get("PYOPENGL_PLATFORM")
    if value:
        return value
    if "OpenGL" not in sys.modules:
        has_egl = ctypes.util.find_library("EGL") is not None
        has_osmesa = ctypes.util.find_library("OSMesa") is not None
        if not has_egl and not has_osmesa:
            raise RuntimeError(f"headless OpenGL needs EGL or OSMesa and neither library was found: "
                               f"{_INSTALL_HINT}")
        value = "egl" if has_egl else "osmesa"
    else:
        value = "egl"
    os.environ["PYOPENGL_PLATFORM"] = value
    return value


def _import_pyrender():
    platform = _select_platform()
    try:
        import pyrender
    except Exception as e:  # ImportError, or PyOpenGL failing to load the platform library
        raise RuntimeError(f"cannot import pyrender with PYOPENGL_PLATFORM={platform!r} ({e}): "
                           f"{_INSTALL_HINT}") from e
    return pyrender


@contextlib.contextmanager
def _framebuffer_formats(msaa: bool):
    """While active, renderbuffers that pyrender allocates get float colour
    (``GL_RGBA32F`` instead of ``GL_RGBA``) and, unless ``msaa``, 0 samples instead of 4
    (no multisampling: exact coverage at pixel centres). pyrender allocates its offscreen
    framebuffer on the first render at a size, so renders of this module run inside this
    context; the module-level names are swapped under a lock and always restored."""
    import pyrender.renderer as pr
    from OpenGL import GL

    storage, storage_ms = pr.glRenderbufferStorage, pr.glRenderbufferStorageMultisample

    def fmt(internal_format):
        return GL.GL_RGBA32F if internal_format == GL.GL_RGBA else internal_format

    def patched(target, internal_format, width, height):
        return storage(target, fmt(internal_format), width, height)

    def patched_ms(target, samples, internal_format, width, height):
        return storage_ms(target, samples if msaa else 0, fmt(internal_format), width, height)

    with _PATCH_LOCK:
        pr.glRenderbufferStorage, pr.glRenderbufferStorageMultisample = patched, patched_ms
        try:
            yield
        finally:
            pr.glRenderbufferStorage, pr.glRenderbufferStorageMultisample = storage, storage_ms


# -- the renderer -------------------------------------------------------------------------


class _SharedContext:
    """The process's one pyrender ``OffscreenRenderer`` (one OpenGL context), shared by all
    :class:`NormalMapRenderer` objects and resized per image size.

    Why one: pyrender's EGL ``delete_context`` calls ``eglTerminate`` on the display, which
    every context of the process shares, so deleting one ``OffscreenRenderer`` kills the
    others. The context is reference-counted (deleted when the last renderer closes) and
    recreated if something else in the process terminated it. Resizing costs a framebuffer
    reallocation only when the size changes.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.users = 0
        self._offscreen = None
        self._msaa = None  # the multisampling of the framebuffer pyrender holds

    def acquire(self):
        with self.lock:
            self.users += 1

    def release(self):
        with self.lock:
            self.users -= 1
            if self.users == 0 and self._offscreen is not None:
                offscreen, self._offscreen, self._msaa = self._offscreen, None, None
                try:
                    offscreen.delete()
                except Exception:  # already terminated by someone else: nothing left to free
                    pass

    def offscreen(self, pyrender, width: int, height: int, msaa: bool):
        """A live ``OffscreenRenderer`` set to ``width x height``, whose framebuffer (made
        by pyrender at the next render if absent or of another size) has ``msaa``."""
        if self._offscreen is not None:
            try:
                self._offscreen._platform.make_current()
            except Exception:  # the EGL display was terminated under us: start afresh
                self._offscreen = None
        if self._offscreen is None:
            try:
                self._offscreen = pyrender.OffscreenRenderer(width, height)
            except Exception as e:
                raise RuntimeError(
                    f"cannot create an offscreen OpenGL context with PYOPENGL_PLATFORM="
                    f"{os.environ.get('PYOPENGL_PLATFORM')!r} ({type(e).__name__}: {e}): {_INSTALL_HINT}") from e
        renderer = self._offscreen._renderer
        if self._msaa != msaa and getattr(renderer, "_main_fb", None) is not None:
            self._offscreen._platform.make_current()
            renderer._delete_main_framebuffer()  # made with the other sample count
        self._msaa = msaa
        self._offscreen.viewport_width, self._offscreen.viewport_height = width, height
        return self._offscreen


_CONTEXT = _SharedContext()


class NormalMapRenderer:
    """Offscreen pyrender normal-map renderer; a context manager (``with
    NormalMapRenderer() as r: maps = r.render(mesh, cameras)``) or ``close()`` it.

    Args:
        znear, zfar: clipping planes (world units along the optical axis); the defaults
            suit npht's rig (unit-sphere heads, cameras at radius 2.6).
        msaa: keep pyrender's 4x multisampling (soft silhouettes: the mask is then alpha
            >= 0.5 and edge normals are coverage-weighted averages). Default ``False``:
            exact masks, each pixel sampled at its centre.
        double_sided: draw back faces too (for open meshes). Default ``False``: back faces
            are culled, which is exact for closed meshes with faces counter-clockwise seen
            from outside (HeadMesh's contract) and about twice as fast on a CPU rasteriser.

    All renderers of a process share one OpenGL context (see :class:`_SharedContext`),
    used under a lock; it is freed when the last renderer is closed.
    """

    def __init__(self, znear: float = 0.2, zfar: float = 5.0, msaa: bool = False, double_sided: bool = False):
        if not 0 < znear < zfar:
            raise ValueError(f"need 0 < znear < zfar, got znear={znear!r}, zfar={zfar!r}")
        self.znear, self.zfar = float(znear), float(zfar)
        self.msaa, self.double_sided = bool(msaa), bool(double_sided)
        self._pyrender = _import_pyrender()
        _CONTEXT.acquire()
        self._open = True

    def __enter__(self) -> "NormalMapRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the shared OpenGL context (freed with the last renderer); idempotent."""
        if getattr(self, "_open", False):
            self._open = False
            _CONTEXT.release()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _scene(self, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray):
        """One scene per mesh, uploaded once: without multisampling, one flat colour per face
        encoding its index (unshared vertices); with it, world normals as vertex colours."""
        pr = self._pyrender
        if self.msaa:
            colors = (normals + 1.0) * 0.5
            positions, indices = vertices, faces.astype(np.uint32)
        else:
            colors = np.repeat(_index_colors(len(faces)), 3, axis=0)
            positions, indices = vertices[faces].reshape(-1, 3), None
        colors = np.concatenate([colors, np.ones((len(colors), 1))], 1).astype(np.float32)
        material = pr.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                                roughnessFactor=1.0, doubleSided=self.double_sided)
        primitive = pr.Primitive(positions=positions.astype(np.float32), indices=indices,
                                 color_0=colors, material=material, mode=pr.constants.GLTF.TRIANGLES)
        scene = pr.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.0, 0.0, 0.0])
        scene.add(pr.Mesh([primitive]))
        return scene

    def render(self, mesh, cameras: Cameras, convention: str = "opengl") -> NormalMaps:
        """Normal maps, masks and depth of ``mesh`` (HeadMesh, trimesh or ``(vertices,
        faces)``, world frame) seen by ``cameras`` (each camera's ``K`` and pose; the
        cameras' ``height x width``). ``convention``: ``"opengl"``, ``"opencv"`` or
        ``"world"`` for the normals."""
        if not self._open:
            raise RuntimeError("NormalMapRenderer is closed")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be 'opengl', 'opencv' or 'world', got {convention!r}")
        if not isinstance(cameras, Cameras):
            raise TypeError(f"cameras must be npht.render.Cameras, got {type(cameras).__name__}")
        vertices, faces = mesh_arrays(mesh)
        if not self.msaa and len(faces) > _MAX_FACES:
            raise ValueError(f"mesh has {len(faces)} faces; face indices are 24-bit colours: at most {_MAX_FACES}")
        K = cameras.K.detach().cpu().double().numpy()
        c2w = cameras.cam2world.detach().cpu().double().numpy()
        if np.abs(K[:, 0, 1]).max(initial=0) > 1e-9 or np.abs(K[:, 1, 0]).max(initial=0) > 1e-9 or \
                not np.allclose(K[:, 2], [0.0, 0.0, 1.0]):
            raise ValueError("cameras.K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew)")
        N, H, W = len(cameras), cameras.height, cameras.width
        normals = np.zeros((N, H, W, 3), np.float32)
        mask = np.zeros((N, H, W), bool)
        depth = np.zeros((N, H, W), np.float32)
        if N:
            with _CONTEXT.lock:
                self._render_views(vertices, faces, K, c2w, H, W, convention, normals, mask, depth)
        device = cameras.device
        return NormalMaps(torch.from_numpy(normals).to(device), torch.from_numpy(mask).to(device),
                          torch.from_numpy(depth).to(device), convention)

    def _render_views(self, vertices, faces, K, c2w, H, W, convention, normals, mask, depth):
        pr = self._pyrender
        vn = vertex_normals(vertices, faces)
        scene = self._scene(vertices, faces, vn)
        camera = pr.IntrinsicsCamera(K[0, 0, 0], K[0, 1, 1], K[0, 0, 2], K[0, 1, 2], znear=self.znear,
                                     zfar=self.zfar)
        node = scene.add(camera, pose=np.eye(4))
        offscreen = _CONTEXT.offscreen(pr, W, H, self.msaa)
        flags = pr.RenderFlags.FLAT | pr.RenderFlags.RGBA
        for i in range(len(K)):
            camera.fx, camera.fy, camera.cx, camera.cy = K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]
            pose = c2w[i] @ _OPENCV_TO_OPENGL_POSE  # pyrender cameras look along their -z
            scene.set_pose(node, pose)
            with _framebuffer_formats(self.msaa):
                color8, z = offscreen.render(scene, flags)
                rgba = _read_float_color(offscreen, H, W)
            if rgba is None:  # no framebuffer objects (OSMesa): pyrender's 8-bit colour
                rgba = color8.astype(np.float32) / 255.0
                if rgba.shape[-1] == 3:  # OSMesa's read-back drops alpha: coverage is depth > 0
                    rgba = np.concatenate([rgba, (np.asarray(z) > 0)[..., None].astype(np.float32)], -1)
            if self.msaa:
                n, m = _decode(rgba, z, self.msaa)
            else:
                n, m, z = _shade_exact(rgba, vertices, faces, vn, K[i], c2w[i])
            if convention != "world":
                R = pose[:3, :3] if convention == "opengl" else c2w[i, :3, :3]
                n = n @ R  # components along the camera axes (columns of R)
            normals[i] = n * m[..., None]
            mask[i] = m
            depth[i] = np.where(m, z, 0.0)
        # the mesh's GL buffers are freed by pyrender at the next render of another scene


def _read_float_color(offscreen, height: int, width: int) -> Optional[np.ndarray]:
    """The float RGBA colour ``[H, W, 4]`` (top row first) of the last render, read from
    pyrender's resolved main framebuffer; ``None`` on platforms without framebuffer objects."""
    from OpenGL import GL

    platform, renderer = offscreen._platform, offscreen._renderer
    if not platform.supports_framebuffers() or getattr(renderer, "_main_fb", None) is None:
        return None
    platform.make_current()
    try:
        GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, renderer._main_fb)
        buf = GL.glReadPixels(0, 0, width, height, GL.GL_RGBA, GL.GL_FLOAT)
    finally:
        platform.make_uncurrent()
    rgba = np.frombuffer(buf, dtype=np.float32).reshape(height, width, 4)
    return rgba[::-1]


def _index_colors(count: int) -> np.ndarray:
    """RGB colours ``[count, 3]`` in [0, 1] encoding ``index + 1`` in 8 bits per channel
    (0 is the background); exact through 8-bit and float colour buffers alike."""
    i = np.arange(1, count + 1, dtype=np.int64)
    return np.stack([i & 255, (i >> 8) & 255, (i >> 16) & 255], -1) / 255.0


def _dot(a, b):
    return np.einsum("...i,...i->...", a, b)


def _cross(a, b):
    return np.stack([a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1], a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
                     a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]], -1)


def _ray_faces(face, d, pix, vertices, faces, K, c2w):
    """The rays ``d [M, 3]`` (world, from the camera centre, through pixel centres ``pix
    [M, 2]``) against the faces ``face [M]`` (float64): barycentrics of the hit clamped to
    the face ``[M, 3]``, that point ``[M, 3]`` and its distance to the pixel centre once
    projected (pixels; 0 when the ray meets the face)."""
    origin = c2w[:3, 3]
    tri = faces[face]
    p0, p1, p2 = vertices[tri[:, 0]], vertices[tri[:, 1]], vertices[tri[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    pvec = _cross(d, e2)
    det = _dot(e1, pvec)
    ok = np.abs(det) > 1e-300
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    tvec = origin - p0
    b1 = _dot(tvec, pvec) * inv
    b2 = _dot(d, _cross(tvec, e1)) * inv
    b = np.clip(np.stack([1.0 - b1 - b2, b1, b2], -1), 0.0, None)
    b = np.where(ok[:, None], b, 1.0 / 3.0)  # a face seen exactly edge-on: its centroid
    b /= b.sum(-1, keepdims=True)
    point = p0 + b[:, 1:2] * e1 + b[:, 2:] * e2
    cam = (point - origin) @ c2w[:3, :3]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = (cam @ K.T)[:, :2] / cam[:, 2:]
        offset = proj - pix
    miss = np.where(cam[:, 2] > 0, np.sqrt(_dot(offset, offset)), np.inf)
    return b, point, np.nan_to_num(miss, nan=np.inf)


def _ray_cast(d, origin, vertices, faces, chunk_elements=1 << 22):
    """The nearest face each ray ``d [B, 3]`` from ``origin`` meets, by brute force over
    all faces (float64; -1 where none): for the few pixels the rasteriser got wrong."""
    p0 = vertices[faces[:, 0]]
    e1, e2 = vertices[faces[:, 1]] - p0, vertices[faces[:, 2]] - p0
    tvec = origin - p0
    qvec = _cross(tvec, e1)  # [F, 3], independent of the ray
    best = np.full(len(d), -1, np.int64)
    step = max(1, chunk_elements // len(faces))
    for s in range(0, len(d), step):
        ray = d[s:s + step, None]  # [b, 1, 3]
        pvec = _cross(ray, e2)  # [b, F, 3]
        det = _dot(e1, pvec)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            b1 = _dot(tvec, pvec) * inv
            b2 = _dot(ray, qvec) * inv
            t = _dot(e2, qvec) * inv
        hit = (det != 0) & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 0)
        t = np.where(hit, t, np.inf)
        nearest = t.argmin(1)
        best[s:s + step] = np.where(np.isfinite(t[np.arange(len(t)), nearest]), nearest, -1)
    return best


def _shade_exact(rgba, vertices, faces, vn, K, c2w, wrong_px=0.5):
    """World unit normals ``[H, W, 3]``, mask and optical-axis depth ``[H, W]`` (float64)
    from a face-index image: the ray through each covered pixel's centre meets its face
    in float64; the normal interpolates the vertex normals with those barycentrics.

    The rasteriser's own interpolation is avoided because it fails for faces seen nearly
    edge-on at silhouettes: their vertices snapped to the subpixel grid make the
    interpolation plane ill-conditioned, so the value extrapolated to a pixel centre can
    be far off -- even of an attribute that is constant over the face (measured: 45 deg of
    normal and 0.49 of depth with colour-coded normals, corrupt face indices with index
    colours, on ~1 pixel in 10^5). Such a pixel (its colour is not an exact index, or its
    ray misses the face by more than ``wrong_px`` pixels once the hit is clamped to the
    face) is ray cast against every face; a ray that meets none is background. A ray that
    misses its face by less (a face seen edge-on, where the rasteriser's snapped vertices
    and float64 disagree about coverage) keeps it, the hit clamped to the face."""
    H, W = rgba.shape[:2]
    normals, depth, mask = np.zeros((H, W, 3)), np.zeros((H, W)), np.zeros((H, W), bool)
    v, u = np.nonzero(rgba[..., 3] > 0.5)
    if len(v) == 0:
        return normals, mask, depth
    c = rgba[v, u, :3].astype(np.float64) * 255.0
    byte = np.rint(c)
    valid = np.abs(c - byte).max(-1) < 0.05  # float32 round-off: ~1e-3; always true in 8 bits
    byte = byte.astype(np.int64)
    index = (byte[:, 0] | (byte[:, 1] << 8) | (byte[:, 2] << 16)) - 1
    valid &= (index >= 0) & (index < len(faces))
    index = np.where(valid, index, 0)
    pix = np.stack([u + 0.5, v + 0.5], -1)
    d = np.concatenate([pix, np.ones((len(u), 1))], -1) @ np.linalg.inv(K).T @ c2w[:3, :3].T
    b, point, miss = _ray_faces(index, d, pix, vertices, faces, K, c2w)
    bad = np.nonzero(~valid | (miss > wrong_px))[0]
    keep = np.ones(len(v), bool)
    if len(bad):
        index[bad] = _ray_cast(d[bad], c2w[:3, 3], vertices, faces)
        keep[bad] = index[bad] >= 0
        bad = bad[keep[bad]]
        b[bad], point[bad], _ = _ray_faces(index[bad], d[bad], pix[bad], vertices, faces, K, c2w)
    v, u, index, b, point = v[keep], u[keep], index[keep], b[keep], point[keep]
    tri = faces[index]
    depth[v, u] = (point - c2w[:3, 3]) @ c2w[:3, 2]
    n = b[:, :1] * vn[tri[:, 0]] + b[:, 1:2] * vn[tri[:, 1]] + b[:, 2:] * vn[tri[:, 2]]
    length = np.sqrt(_dot(n, n))[:, None]
    normals[v, u] = np.divide(n, length, out=np.zeros_like(n), where=length > 1e-12)
    mask[v, u] = True
    return normals, mask, depth


def _decode(rgba: np.ndarray, z: np.ndarray, msaa: bool):
    """World unit normals ``[H, W, 3]`` (float32) and the mask ``[H, W]`` from the colour
    ``(n + 1) / 2`` and pyrender's depth (0 where nothing was drawn). With multisampling the
    background (colour 0, alpha 0) is blended in: un-premultiply by alpha, mask = alpha >= 0.5."""
    alpha = rgba[..., 3]
    if msaa:
        m = alpha >= 0.5
        c = rgba[..., :3] / np.maximum(alpha, 1e-6)[..., None]
    else:
        m = z > 0
        c = rgba[..., :3]
    n = c.astype(np.float64) * 2.0 - 1.0
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    m = m & (length[..., 0] > 1e-6)
    n = np.divide(n, length, out=np.zeros_like(n), where=length > 1e-6)
    return n.astype(np.float32), m


def render_normal_maps(mesh, cameras: Cameras, convention: str = "opengl", *, znear: float = 0.2,
                       zfar: float = 5.0, msaa: bool = False, double_sided: bool = False) -> NormalMaps:
    """One-call form: ``NormalMapRenderer(...).render(mesh, cameras, convention)``; the
    OpenGL context is freed afterwards unless another renderer is open (keep a
    :class:`NormalMapRenderer` open to render many meshes)."""
    with NormalMapRenderer(znear=znear, zfar=zfar, msaa=msaa, double_sided=double_sided) as renderer:
        return renderer.render(mesh, cameras, convention)
