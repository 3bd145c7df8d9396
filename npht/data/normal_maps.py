"""Ground-truth normal maps of meshes with pyrender (the thesis, Sec. 5.1.2), driven by the
same :class:`npht.render.Cameras` as npht's differentiable renderer, so the two can be
compared pixel for pixel.

How a view is made:

* the mesh's smooth (area-weighted) vertex normals, in world space, are written once per
  mesh as vertex colours ``(n + 1) / 2``; the scene is uploaded once and only the camera
  node moves between views;
* pyrender draws with ``RenderFlags.FLAT`` (no lighting: the interpolated vertex colour is
  the fragment colour), the colour is decoded ``2 c - 1`` and renormalised per pixel, and
  the world normal is rotated into the requested camera frame;
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
  the colour is read back as floats. 8-bit colour quantises each normal component to 2/255
  (~0.17 deg mean angular error on a sphere); float colour leaves only the mesh's own
  interpolation error.

Both rely on pyrender 0.1.x internals (the ``glRenderbufferStorage*`` names in
``pyrender.renderer`` and the offscreen renderer's main framebuffer); platforms without
framebuffer objects (OSMesa) render directly into an 8-bit, non-multisampled default
framebuffer: exact masks, 8-bit normals.

Measured (Mesa llvmpipe via EGL, 2 shared CPU cores): an icosphere of subdivision 6
(82k faces, r = 0.5) against the analytic sphere through pixel centres: 0 mismatching mask
pixels at 128^2, mean angular error 0.012 deg (max 0.19 deg, at grazing silhouette rays
where polygon and sphere part); a ~100k-face sphere, 128 Fibonacci views: ~1.8 s at 128^2
(~14 ms/view), ~3.2 s at 256^2 (~25 ms/view), geometry-bound (``benchmarks/gt_normal_maps.py``).
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

    def _scene(self, vertices: np.ndarray, faces: np.ndarray):
        """One scene per mesh: world normals as float vertex colours, uploaded once."""
        pr = self._pyrender
        n = vertex_normals(vertices, faces)
        colors = np.concatenate([(n + 1.0) * 0.5, np.ones((len(n), 1))], 1).astype(np.float32)
        material = pr.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                                roughnessFactor=1.0, doubleSided=self.double_sided)
        primitive = pr.Primitive(positions=vertices.astype(np.float32), indices=faces.astype(np.uint32),
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
        scene = self._scene(vertices, faces)
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
            n, m = _decode(rgba, z, self.msaa)
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
