import math

import pytest
import torch

from npht.render import (Cameras, fibonacci_cameras, fibonacci_sphere, generate_rays, intrinsics_from_focal,
                         intrinsics_from_fov, look_at, near_frontal_cameras, ray_sphere_bounds,
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
