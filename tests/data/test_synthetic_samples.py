"""The sampling pipeline on the procedural heads, checked against their analytic SDF and
deformation (issue: signed distances right inside and outside, normal directions,
correspondence exactness)."""

import numpy as np
import pytest
import torch

from npht.data.sampling import prepare_identity_samples, sample_correspondences, sample_surface
from npht.data.synthetic import synthetic_head

RES = 96
VOXEL = 2.0 / RES


@pytest.fixture(scope="module")
def head():
    return synthetic_head(1)


@pytest.fixture(scope="module")
def bulk(head):
    return prepare_identity_samples(head.mesh(None, RES), n_face=1500, n_nonface=500, n_ball=3000, rng=0)


def analytic(head, points):
    return head.sdf(torch.from_numpy(np.asarray(points, np.float64))).numpy()


def test_signed_distances_agree_with_the_analytic_sdf(head, bulk):
    for key in ("ball", "near1_face", "near1_nonface"):
        mesh_sdf = bulk[f"{key}_sdf"].astype(np.float64)
        true = analytic(head, bulk[f"{key}_points"])
        clear = np.abs(true) > 2 * VOXEL  # away from the marching-cubes discretisation
        if key == "ball":
            assert clear.sum() > 2000 and (true < 0).sum() > 300  # inside and outside both tested
        assert (np.sign(mesh_sdf[clear]) == np.sign(true[clear])).all(), key
    # magnitude near the surface: the analytic field is a distance there up to its gradient
    # norm (median 1, see test_synthetic), the mesh one up to the voxel size
    near = bulk["near1_face_sdf"].astype(np.float64)
    true = analytic(head, bulk["near1_face_points"])
    assert np.median(np.abs(near - true)) < 0.25 * VOXEL


def test_surface_normals_follow_the_analytic_gradient(head, bulk):
    p = torch.from_numpy(bulk["surface_face_points"].astype(np.float64)).requires_grad_()
    (g,) = torch.autograd.grad(head.sdf(p).sum(), p)
    g = torch.nn.functional.normalize(g, dim=-1).numpy()
    cos = (g * bulk["surface_face_normals"]).sum(-1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert np.median(angle) < 3.0 and np.mean(angle < 20.0) > 0.95
    # surface points are on the analytic surface up to the discretisation
    assert np.median(np.abs(analytic(head, bulk["surface_face_points"]))) < 0.1 * VOXEL


def test_face_region_samples_lie_on_the_face(head, bulk):
    pts = torch.from_numpy(bulk["surface_face_points"].astype(np.float64))
    assert head.face_region(pts).float().mean() > 0.95
    assert (bulk["surface_face_points"][:, 2] > 0).mean() > 0.8  # the face looks towards +z


@pytest.mark.parametrize("expression", ["jaw_open", "smile"])
def test_correspondences_follow_the_analytic_deformation(head, expression):
    neutral, posed = head.mesh(None, RES), head.mesh(expression, RES)
    pairs = sample_correspondences(neutral, posed, 4000, sigmas=(0.0, 0.0), rng=3)
    mapped = head.deform(torch.from_numpy(pairs["neutral"].astype(np.float64)), expression).numpy()
    err = np.linalg.norm(mapped - pairs["posed"], axis=-1)
    moved = np.linalg.norm(pairs["posed"] - pairs["neutral"], axis=-1)
    assert moved.max() > 0.02  # the expression really moves points
    # barycentric transfer is the piecewise-linear interpolant of the smooth map: second order in
    # the edge length (largest where jaw_open stretches the mouth triangles ~5x)
    assert np.percentile(err, 99) < 0.1 * VOXEL and err.max() < VOXEL
    assert set(np.unique(pairs["direction"])) == {0, 1}


def test_region_sampling_on_head(head):
    s = sample_surface(head.mesh(None, RES), 500, np.random.default_rng(0), region="nonface")
    assert not s.face_region.any() and (s.points[:, 2] < 0).mean() > 0.4  # back of the head, neck
