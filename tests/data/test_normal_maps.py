"""Ground-truth normal maps (pyrender) against analytic spheres and npht's own renderer,
driven by the same Cameras."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from npht.data.normal_maps import NormalMapRenderer, NormalMaps, render_normal_maps
from npht.render import (Cameras, LaplaceDensity, fibonacci_cameras, generate_rays, look_at, render,
                         world_normals_to_camera)

R = 0.5
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def renderer():
    with NormalMapRenderer() as r:
        yield r


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=6, radius=R)  # 81920 faces


def inscribed_radius(mesh, center=(0.0, 0.0, 0.0)):
    """Distance from the centre to the nearest face plane: rays passing farther than this
    from the centre may miss the (inscribed) polygonal sphere though they hit the sphere."""
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)] - np.asarray(center)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return float(np.min(np.abs((n * tri[:, 0]).sum(1)) / np.linalg.norm(n, axis=1)))


def analytic_sphere(cameras, center=(0.0, 0.0, 0.0), radius=R):
    """Through each pixel centre: hit mask, world normal, camera-axis depth and the ray's
    closest-approach distance to the centre (float64)."""
    cams = cameras.to(torch.float64)
    o, d = generate_rays(cams)
    o = o - torch.tensor(center, dtype=torch.float64)
    b = (o * d).sum(-1)
    closest = (o - b[..., None] * d).norm(dim=-1)
    disc = b * b - ((o * o).sum(-1) - radius ** 2)
    hit = disc > 0
    t = -b - disc.clamp(min=0).sqrt()
    p = o + t[..., None] * d
    normals = torch.where(hit[..., None], p / radius, torch.zeros_like(p))
    z_axis = cams.cam2world[:, :3, 2]
    depth = torch.where(hit, t * (d * z_axis[:, None, None]).sum(-1), torch.zeros_like(t))
    return hit, normals, depth, closest


def angles_deg(a, b):
    a = a.double() / a.double().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    b = b.double() / b.double().norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1, 1)))


def check_against_analytic(maps, cameras, mesh, center=(0.0, 0.0, 0.0)):
    """Masks: the polygonal sphere lies inside the sphere, so the rasterised mask may only
    lack pixels whose ray passes between the inscribed and the true radius (at most a few
    per view); it never covers a pixel the sphere does not. Normals: mean < 0.05 deg (the
    float colour buffer: 8-bit colour alone gives ~0.17 deg). Depth: < 1e-3 inside."""
    hit, normals, depth, closest = analytic_sphere(cameras, center)
    r_in = inscribed_radius(mesh, center)
    assert not (maps.mask & ~hit).any()
    missing = hit & ~maps.mask
    assert (closest[missing] > r_in - 1e-6).all()
    assert missing.flatten(1).sum(1).max() <= 4
    assert hit.flatten(1).sum(1).min() > 300  # the views do see the sphere
    err = angles_deg(maps.normals[maps.mask], normals[maps.mask])
    assert err.mean() < 0.05 and err.max() < 0.5, (err.mean(), err.max())
    assert (maps.normals[~maps.mask] == 0).all() and (maps.depth[~maps.mask] == 0).all()
    inner = maps.mask & (closest < 0.9 * R)
    assert (maps.depth[inner] - depth[inner]).abs().max() < 1e-3
    return missing.sum().item(), err


def test_sphere_exact_masks_and_normals(renderer, sphere):
    K = torch.tensor([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]]).expand(3, 3, 3)
    eye = torch.tensor([[0.0, 0.0, 2.6], [1.5, 1.0, 1.8], [-2.0, -0.5, -1.0]])
    cams = Cameras(K.clone(), look_at(eye), 128, 128)
    maps = renderer.render(sphere, cams, "world")
    assert isinstance(maps, NormalMaps) and maps.convention == "world"
    assert maps.normals.shape == (3, 128, 128, 3) and maps.normals.dtype == torch.float32
    assert maps.mask.dtype == torch.bool and maps.depth.shape == (3, 128, 128)
    norms = maps.normals[maps.mask].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    check_against_analytic(maps, cams, sphere)


def test_non_square_off_centre_principal_point(renderer):
    """fx != fy, principal point far from the centre, 48 x 80 pixels, sphere off the
    origin: half a pixel of misalignment would flip dozens of silhouette pixels."""
    center = (0.1, -0.05, 0.02)
    mesh = trimesh.creation.icosphere(subdivisions=6, radius=R)
    mesh.apply_translation(center)
    K = torch.tensor([[[70.0, 0, 31.3], [0, 55.0, 20.7], [0, 0, 1]], [[60.0, 0, 45.0], [0, 66.0, 27.2], [0, 0, 1]]])
    cams = Cameras(K, look_at(torch.tensor([[0.3, 0.2, 2.6], [2.0, -0.4, 1.2]])), 48, 80)
    maps = renderer.render(mesh, cams, "world")
    assert maps.normals.shape == (2, 48, 80, 3)
    check_against_analytic(maps, cams, mesh, center)
    # the same views shifted by half a pixel disagree with the analytic mask: the check has teeth
    shifted = Cameras(K + torch.tensor([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), cams.cam2world, 48, 80)
    hit = analytic_sphere(shifted, center)[0]
    assert (hit != maps.mask).sum() > 40


def test_alignment_with_npht_renderer(renderer, sphere):
    """npht's VolSDF renderer and the pyrender GT, same Cameras, OpenGL convention.

    The density is sharpened to beta = 1e-4 (the thesis' beta_min): with the default
    beta = 1e-3 the Laplace density's soft shell makes rays that pass up to ~3 beta outside
    the surface opaque (opacity 0.7-0.9), which costs ~2 * 3 beta / r of the sphere's area
    (measured IoU 0.988 at 40^2, 0.972 at 48^2, every GT pixel still covered): a property
    of VolSDF, not of the cameras, which this test is about."""
    cams = fibonacci_cameras(128, resolution=40)[[21, 90]]
    with torch.no_grad():
        out = render(lambda p: p.norm(dim=-1) - R, cams, convention="opengl",
                     density=LaplaceDensity(beta=1e-4, beta_min=0.0))
    gt = renderer.render(sphere, cams, "opengl")
    mask = out.opacity > 0.5
    assert gt.mask.flatten(1).sum(1).min() > 500
    assert not (gt.mask & ~mask).any()  # the GT silhouette lies within npht's
    iou = (mask & gt.mask).sum() / (mask | gt.mask).sum()
    assert iou >= 0.99, iou
    common = mask & gt.mask
    err = angles_deg(out.normals[common], gt.normals[common])
    assert err.mean() <= 1.0, err.mean()
    # depth: npht's is along the ray, the GT's along the optical axis
    _, dirs = generate_rays(cams)
    z_npht = out.depth * (dirs * cams.cam2world[:, None, None, :3, 2]).sum(-1)
    inner = common & (analytic_sphere(cams)[3] < 0.9 * R)
    assert (z_npht[inner] - gt.depth[inner]).abs().max() < 2e-3


def backprojected_points(maps, cameras):
    """World points ``[N, H, W, 3]`` of every pixel's depth through its pixel centre."""
    N, H, W = maps.depth.shape
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    uv = torch.stack([u, v], -1).double().reshape(1, -1, 2).expand(N, -1, -1)
    return cameras.to(torch.float64).unproject(uv, maps.depth.double().reshape(N, -1)).reshape(N, H, W, 3)


def test_silhouette_pixels_are_shaded_exactly(renderer, sphere):
    """Every other camera of the thesis' rig at 128^2. Regression: shading with the rasteriser's interpolation
    (normals as vertex colours, pyrender's depth) went wrong at ~1 silhouette pixel in
    10^5, covered by a face seen nearly edge-on -- on llvmpipe, in 9 of these 64 views, up
    to 28 deg of normal error and depths 0.1 off the surface. Every covered pixel's
    depth must back-project onto the polygon (between its inscribed radius and R, up to
    1e-4 for hits clamped to faces seen edge-on) and its normal must be within 1 deg of
    the sphere's normal there (interpolated vertex normals: 0.44 deg at worst)."""
    cams = fibonacci_cameras(128, resolution=128)[::2]
    maps = renderer.render(sphere, cams, "world")
    p = backprojected_points(maps, cams)[maps.mask]
    radius = p.norm(dim=-1)
    r_in = inscribed_radius(sphere)
    assert radius.min() > r_in - 1e-4 and radius.max() < R + 1e-4, (radius.min() - r_in, radius.max() - R)
    err = angles_deg(maps.normals[maps.mask], p)
    assert err.max() < 1.0 and err.mean() < 0.02, (err.max(), err.mean())


def test_corrupt_face_indices_are_ray_cast():
    """The recovery path without OpenGL: a face-index image made by brute-force ray
    casting, then pixels given a non-integer colour (what the rasteriser's extrapolation
    writes) or the index of a far face, and a covered pixel whose ray meets no face: the
    corrupt pixels are shaded as if clean, the empty ray becomes background."""
    from npht.data import normal_maps as nm
    from npht.data.sampling import vertex_normals

    mesh = trimesh.creation.icosphere(subdivisions=2, radius=R)
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    cams = fibonacci_cameras(128, resolution=20)[[30]].to(torch.float64)
    K, c2w = cams.K[0].numpy(), cams.cam2world[0].numpy()
    o, d = generate_rays(cams)
    index = nm._ray_cast(d[0].reshape(-1, 3).numpy(), c2w[:3, 3], v, f).reshape(20, 20)
    rgba = np.zeros((20, 20, 4), np.float32)
    rgba[..., :3] = nm._index_colors(len(f))[np.maximum(index, 0)] * (index >= 0)[..., None]
    rgba[..., 3] = index >= 0
    vn = vertex_normals(v, f)
    clean = nm._shade_exact(rgba, v, f, vn, K, c2w)
    assert clean[1].sum() > 100 and np.array_equal(clean[1], index >= 0)
    corrupt = rgba.copy()
    corrupt[10, 10, :3] += np.float32(0.3 / 255)  # not an exact index
    corrupt[9, 11, :3] = nm._index_colors(len(f))[(index[9, 11] + len(f) // 2) % len(f)]  # a far face
    empty = tuple(np.argwhere(index < 0)[0])
    corrupt[empty] = rgba[10, 10]  # covered, but its ray meets nothing
    normals, mask, depth = nm._shade_exact(corrupt, v, f, vn, K, c2w)
    assert np.array_equal(mask, clean[1])
    np.testing.assert_allclose(normals, clean[0], atol=1e-12)
    np.testing.assert_allclose(depth, clean[2], atol=1e-12)


def test_camera_conventions(renderer, sphere):
    cams = fibonacci_cameras(128, resolution=32)[[7, 64, 120]]
    world = renderer.render(sphere, cams, "world")
    gl = renderer.render(sphere, cams, "opengl")
    cv = renderer.render(sphere, cams, "opencv")
    assert gl.convention == "opengl" and cv.convention == "opencv"
    torch.testing.assert_close(gl.normals, world_normals_to_camera(world.normals, cams, "opengl"), atol=1e-6, rtol=0)
    torch.testing.assert_close(cv.normals, world_normals_to_camera(world.normals, cams, "opencv"), atol=1e-6, rtol=0)
    assert torch.equal(gl.mask, world.mask) and torch.equal(gl.depth, world.depth)
    # OpenGL camera frame on a sphere seen from outside: z towards the viewer, y up, x right
    m = gl.mask
    assert (gl.normals[..., 2][m] > 0).all()
    top, bottom = gl.normals[:, :12, :, 1], gl.normals[:, -12:, :, 1]
    assert (top[m[:, :12]] > 0).all() and (bottom[m[:, -12:]] < 0).all()
    left, right = gl.normals[:, :, :12, 0], gl.normals[:, :, -12:, 0]
    assert (left[m[:, :, :12]] < 0).all() and (right[m[:, :, -12:]] > 0).all()
    assert (cv.normals[:, :12, :, 1][m[:, :12]] < 0).all()  # OpenCV: y down


def test_inputs_and_one_call_form(sphere):
    cams = fibonacci_cameras(128, resolution=24)[[3, 50]]
    ref = render_normal_maps(sphere, cams)
    assert ref.convention == "opengl" and ref.mask.any()
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    for mesh in ((v, f), (v.astype(np.float32), f.astype(np.int32))):
        out = render_normal_maps(mesh, cams)
        torch.testing.assert_close(out.normals, ref.normals, atol=1e-5, rtol=0)
        assert torch.equal(out.mask, ref.mask)
    from npht.data.records import HeadMesh

    head = HeadMesh(v, f, np.zeros(len(v), bool), "s", "neutral", True)
    assert torch.equal(render_normal_maps(head, cams).mask, ref.mask)
    empty = render_normal_maps(sphere, Cameras(cams.K[:0], cams.cam2world[:0], 24, 24))
    assert empty.normals.shape == (0, 24, 24, 3)


def test_msaa_option_and_shared_context(renderer, sphere):
    """msaa=True softens silhouettes; an exact render afterwards is exact again (the shared
    framebuffer is remade); closing one renderer leaves the others working."""
    cams = fibonacci_cameras(128, resolution=64)[[10, 100]]
    exact = renderer.render(sphere, cams)
    with NormalMapRenderer(msaa=True) as soft_renderer:
        soft = soft_renderer.render(sphere, cams)
    hit = analytic_sphere(cams)[0]
    if os.environ.get("PYOPENGL_PLATFORM") == "osmesa":  # no framebuffer objects: never multisampled
        assert torch.equal(soft.mask, exact.mask)
    else:
        assert 0 < (soft.mask != hit).sum() <= 0.1 * hit.sum()
    again = renderer.render(sphere, cams)
    assert torch.equal(again.mask, exact.mask) and torch.equal(again.normals, exact.normals)
    other = NormalMapRenderer()
    other.close()
    other.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        other.render(sphere, cams)
    assert torch.equal(renderer.render(sphere, cams).mask, exact.mask)
    # other pyrender code deleting its renderer terminates the shared EGL display: recovered
    import pyrender

    foreign = pyrender.OffscreenRenderer(16, 16)
    foreign.delete()
    assert torch.equal(renderer.render(sphere, cams).normals, exact.normals)


def test_unusable_platform_is_a_clear_error():
    """PyOpenGL reads PYOPENGL_PLATFORM once per process: checked in a fresh one."""
    code = ("import trimesh\n"
            "from npht.data.normal_maps import render_normal_maps\n"
            "from npht.render import fibonacci_cameras\n"
            "try:\n"
            "    render_normal_maps(trimesh.creation.icosphere(1), fibonacci_cameras(1, resolution=8))\n"
            "except RuntimeError as e:\n"
            "    print('RuntimeError', e)\n")
    env = dict(os.environ, PYOPENGL_PLATFORM="no-such-platform",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("RuntimeError"), out.stdout + out.stderr
    assert "PYOPENGL_PLATFORM='no-such-platform'" in out.stdout
    assert "libegl1" in out.stdout and "libosmesa6" in out.stdout and "PyOpenGL>=3.1.10" in out.stdout


def test_errors(renderer, sphere):
    cams = fibonacci_cameras(128, resolution=16)[[0]]
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    with pytest.raises(ValueError, match=r"vertices must be a numeric \[V, 3\]"):
        renderer.render((v[:, :2], f), cams)
    with pytest.raises(ValueError, match=r"faces must be \[F, 3\]"):
        renderer.render((v, f[:, :2]), cams)
    with pytest.raises(ValueError, match="out of range"):
        renderer.render((v, f + len(v)), cams)
    with pytest.raises(ValueError, match="integer indices"):
        renderer.render((v, f.astype(float)), cams)
    with pytest.raises(ValueError, match="finite"):
        renderer.render((np.where(v > 0.4, np.nan, v), f), cams)
    with pytest.raises(ValueError, match="mesh is empty"):
        renderer.render((np.zeros((0, 3)), np.zeros((0, 3), int)), cams)
    with pytest.raises(ValueError, match="mesh is empty"):
        renderer.render((v, np.zeros((0, 3), int)), cams)
    with pytest.raises(TypeError, match="HeadMesh, a trimesh.Trimesh or a"):
        renderer.render(v, cams)
    with pytest.raises(ValueError, match="convention must be 'opengl', 'opencv' or 'world'"):
        renderer.render(sphere, cams, "directx")
    with pytest.raises(TypeError, match="cameras must be npht.render.Cameras"):
        renderer.render(sphere, cams.K)
    skewed = Cameras(cams.K.clone(), cams.cam2world, 16, 16)
    skewed.K[0, 0, 1] = 1.0
    with pytest.raises(ValueError, match="no skew"):
        renderer.render(sphere, skewed)
    with pytest.raises(ValueError, match="0 < znear < zfar"):
        NormalMapRenderer(znear=1.0, zfar=0.5)


def test_face_index_limit(renderer, sphere, monkeypatch):
    from npht.data import normal_maps as nm

    monkeypatch.setattr(nm, "_MAX_FACES", len(sphere.faces) - 1)
    cams = fibonacci_cameras(128, resolution=16)[[0]]
    with pytest.raises(ValueError, match="24-bit colours: at most"):
        renderer.render(sphere, cams)
    with NormalMapRenderer(msaa=True) as soft:  # colour-coded normals: no index, no limit
        assert soft.render(sphere, cams).mask.any()
