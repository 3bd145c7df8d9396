import math

import pytest
import torch

from npht.render import (Cameras, fibonacci_cameras, fibonacci_sphere, generate_rays, intrinsics_from_focal,
                         intrinsics_from_fov, look_at, near_frontal_cameras, ray_box_bounds, ray_sphere_bounds,
                         world_normals_to_camera)


def test_project_unproject_roundtrip():
    cams = near_frontal_cameras(3, resolution=40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pts = torch.rand(3, 50, 3, dtype=torch.float64) - 0.5
    pix = cams.project(pts)
    back = cams.unproject(pix[..., :2], pix[..., 2])
    torch.testing.assert_close(back, pts)


def test_rays_pass_through_pixel_centres():
    cams = fibonacci_cameras(5, resolution=16, dtype=torch.float64)
    origins, dirs = generate_rays(cams)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(5, 16, 16, dtype=torch.float64))
    pts = origins + 1.7 * dirs  # any point on the ray projects to its pixel centre
    pix = cams.project(pts.reshape(5, -1, 3))[..., :2].reshape(5, 16, 16, 2)
    v, u = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    torch.testing.assert_close(pix[..., 0], (u + 0.5).expand(5, 16, 16).double())
    torch.testing.assert_close(pix[..., 1], (v + 0.5).expand(5, 16, 16).double())


def test_opencv_convention_and_look_at():
    c2w = look_at(torch.tensor([[0.0, 0.0, 2.6]], dtype=torch.float64))  # in front of the face
    R = c2w[0, :3, :3]
    torch.testing.assert_close(R[:, 2], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))  # z forward: to origin
    torch.testing.assert_close(R[:, 1], torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))  # y down
    torch.testing.assert_close(R[:, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))  # x right (viewer's)
    torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=torch.float64))
    assert torch.det(R) > 0


def test_normals_to_opengl():
    cams = Cameras(intrinsics_from_fov(30, 8, dtype=torch.float64),
                   look_at(torch.tensor([[0.0, 0.0, 2.6]], dtype=torch.float64)), 8, 8)
    n_world = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(1, 8, 8, 3)  # facing the camera
    gl = world_normals_to_camera(n_world, cams, "opengl")
    cv = world_normals_to_camera(n_world, cams, "opencv")
    torch.testing.assert_close(gl[0, 0, 0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cv[0, 0, 0], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    up = world_normals_to_camera(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(1, 8, 8, 3), cams)
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))  # GL: y up
    with pytest.raises(ValueError, match="convention"):
        world_normals_to_camera(n_world, cams, "directx")


def test_fibonacci_rig():
    pts = fibonacci_sphere(128, 2.6, torch.float64)
    torch.testing.assert_close(pts.norm(dim=-1), torch.full((128,), 2.6, dtype=torch.float64))
    assert pts.mean(0).abs().max() < 0.05  # spread evenly
    d = torch.cdist(pts, pts) + torch.eye(128, dtype=torch.float64) * 10
    nn = d.min(1).values
    assert nn.max() / nn.min() < 1.6
    cams = fibonacci_cameras()
    assert len(cams) == 128 and cams.height == 64
    o, dirs = generate_rays(cams)
    centre = dirs[:, 31:33, 31:33].mean((1, 2))
    torch.testing.assert_close(centre / centre.norm(dim=-1, keepdim=True), -o[:, 0, 0] / 2.6, atol=1e-3, rtol=0)


def test_ray_sphere_bounds():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    near, far, hit = ray_sphere_bounds(o, d, 1.0)
    torch.testing.assert_close(near, torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(far[[0, 2]], torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert hit.tolist() == [True, False, True]


def test_ray_box_bounds_cases():
    f64 = dict(dtype=torch.float64)
    o = torch.tensor([[0.0, 0.0, 3.0],    # straight in through the +z face
                      [0.0, 2.0, 3.0],    # misses (parallel to y's slab, outside it)
                      [0.0, 0.0, 0.0],    # from the centre, along x
                      [1.0, 1.0, 3.0],    # along an edge of the box (closed box: a hit)
                      [0.0, 0.0, -3.0],   # box behind the ray
                      [3.0, 3.0, 0.0]], **f64)  # diagonally through two corners
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, -1.0],
                      [-1.0, -1.0, 0.0]], **f64)
    d = d / d.norm(dim=-1, keepdim=True)
    near, far, hit = ray_box_bounds(o, d, 1.0)
    assert hit.tolist() == [True, False, True, True, False, True]
    s2 = 2 ** 0.5
    torch.testing.assert_close(near[hit], torch.tensor([2.0, 0.0, 2.0, 2 * s2], **f64))
    torch.testing.assert_close(far[hit], torch.tensor([4.0, 1.0, 4.0, 4 * s2], **f64))
    # misses: a zero-length segment at the closest approach to the centre (0 when behind)
    torch.testing.assert_close(near[~hit], torch.tensor([3.0, 0.0], **f64))
    torch.testing.assert_close(far[~hit], near[~hit])
    # per-axis extents, batched shapes
    near, far, hit = ray_box_bounds(o[:1].expand(2, 4, 3), d[:1].expand(2, 4, 3), (0.5, 0.5, 0.25))
    assert near.shape == (2, 4) and hit.all()
    torch.testing.assert_close(near, torch.full((2, 4), 2.75, **f64))
    torch.testing.assert_close(far, torch.full((2, 4), 3.25, **f64))


def test_ray_box_bounds_against_dense_samples():
    """Random rays (some with zero direction components): the points of each ray within
    (near, far) lie in the box, those outside it (at t >= 0) do not."""
    g = torch.Generator().manual_seed(0)
    n = 400
    o = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * 2.5
    d = torch.randn(n, 3, generator=g, dtype=torch.float64)
    d[::5, 0] = 0.0
    d[::7, 1] = 0.0
    d = d / d.norm(dim=-1, keepdim=True)
    e = torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64)
    near, far, hit = ray_box_bounds(o, d, tuple(e.tolist()))
    t = torch.linspace(0, 8, 4001, dtype=torch.float64)
    pts = o[:, None] + t[None, :, None] * d[:, None]
    inside = (pts.abs() <= e).all(-1)
    margin = 1e-9
    within = (t > near[:, None] + margin) & (t < far[:, None] - margin) & hit[:, None]
    outside = ((t < near[:, None] - margin) | (t > far[:, None] + margin)) | ~hit[:, None]
    assert inside[within].all() and not inside[outside].any()
    assert hit.any() and (~hit).any()
    assert torch.isfinite(near).all() and torch.isfinite(far).all() and (far >= near).all()


def test_ray_box_bounds_errors():
    o, d = torch.zeros(4, 3), torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    for bad in (0.0, -1.0, float("inf"), float("nan"), (1.0, 1.0), (1.0, 0.0, 1.0), "1", True):
        with pytest.raises(ValueError, match="half_extent must be a finite number > 0 or three of them"):
            ray_box_bounds(o, d, bad)
    with pytest.raises(ValueError, match=r"origins and dirs must both be \[\.\.\., 3\] of one shape"):
        ray_box_bounds(o[:, :2], d[:, :2])
    with pytest.raises(ValueError, match="of one shape"):
        ray_box_bounds(o, d[:2])


def test_resized_keeps_field_of_view():
    cams = fibonacci_cameras(2, resolution=32, dtype=torch.float64)
    big = cams.resized(128)
    pts = torch.rand(2, 20, 3, dtype=torch.float64) - 0.5
    torch.testing.assert_close(big.project(pts)[..., :2], 4 * cams.project(pts)[..., :2])
    assert big.K[0, 0, 2] == 64


def test_camera_errors():
    K = intrinsics_from_fov(30, 8)
    with pytest.raises(ValueError, match=r"K must be \[B, 3, 3\]"):
        Cameras(K[0], look_at(torch.tensor([[0.0, 0.0, 2.0]])), 8, 8)
    with pytest.raises(ValueError, match="same number of cameras"):
        Cameras(K.expand(2, 3, 3), look_at(torch.tensor([[0.0, 0.0, 2.0]])), 8, 8)
    with pytest.raises(ValueError, match="height must be a positive int"):
        Cameras(K, look_at(torch.tensor([[0.0, 0.0, 2.0]])), 0, 8)
    c2w = look_at(torch.tensor([[0.0, 0.0, 2.0]]))
    with pytest.raises(ValueError, match="K and cam2world must share dtype and device"):
        Cameras(K, c2w.double(), 8, 8)
    with pytest.raises(TypeError, match="K must be a floating-point tensor"):
        Cameras(K.long(), c2w, 8, 8)
    cams = Cameras(K.expand(2, 3, 3), c2w.expand(2, 4, 4), 8, 8)
    with pytest.raises(ValueError, match=r"normals must be \[B, H, W, 3\] with B = 2 \(one map per camera\)"):
        world_normals_to_camera(torch.zeros(1, 8, 8, 3), cams)
    with pytest.raises(ValueError, match=r"normals must be \[B, H, W, 3\] with B = 2"):
        world_normals_to_camera(torch.zeros(2, 64, 3), cams)
    with pytest.raises(TypeError, match="cameras must be npht.render.Cameras"):
        world_normals_to_camera(torch.zeros(2, 8, 8, 3), None)
    with pytest.raises(ValueError, match="fov_degrees"):
        intrinsics_from_fov(180, 8)
    with pytest.raises(ValueError, match="eye and target coincide"):
        look_at(torch.zeros(1, 3))


def test_image_orientation():
    """Camera in front of the face (+z): world up is image up, world +x is image right."""
    cams = Cameras(intrinsics_from_fov(30, 64), look_at(torch.tensor([[0.0, 0.0, 2.6]])), 64, 64)
    pix = cams.project(torch.tensor([[[0.0, 0.3, 0.0], [0.3, 0.0, 0.0]]]))
    assert pix[0, 0, 1] < 32 and abs(pix[0, 0, 0] - 32) < 1e-4
    assert pix[0, 1, 0] > 32 and abs(pix[0, 1, 1] - 32) < 1e-4


def test_intrinsics_from_focal():
    K = intrinsics_from_focal(120.0, 64, 48)
    torch.testing.assert_close(K[0], torch.tensor([[120.0, 0.0, 24.0], [0.0, 120.0, 32.0], [0.0, 0.0, 1.0]]))
    # the same K as a field of view: f = (H / 2) / tan(fov / 2)
    fov = 2 * math.degrees(math.atan(32 / 120.0))
    torch.testing.assert_close(K, intrinsics_from_fov(fov, 64, 48))
    K2 = intrinsics_from_focal(100.0, 8, fy=90.0, cx=3.0, cy=5.0, batch=2, dtype=torch.float64)
    assert K2.shape == (2, 3, 3) and K2.dtype == torch.float64
    assert K2[1, 0, 0] == 100.0 and K2[1, 1, 1] == 90.0 and K2[1, 0, 2] == 3.0 and K2[1, 1, 2] == 5.0
    # a point on the optical axis projects to the principal point
    cams = Cameras(K2, look_at(torch.tensor([[0.0, 0.0, 2.0]]).double()).expand(2, 4, 4), 8, 8)
    torch.testing.assert_close(cams.project(torch.zeros(2, 1, 3, dtype=torch.float64))[0, 0, :2],
                               torch.tensor([3.0, 5.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="focal lengths must be positive and finite"):
        intrinsics_from_focal(0.0, 8)
