"""Reconstruction metrics against analytic values: identical surfaces, concentric and
shifted spheres (Chamfer by numerical integration), the F-score step at the gap, normal
orientation, the face region, and exhaustive vs. k-d tree nearest neighbours."""

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.integrate import quad
from _backends import require_backend

from npht.data import HeadMesh
from npht.eval import (DEFAULT_THRESHOLD, FACE_RADIUS, MM, chamfer_l1, compare_points, evaluate_meshes, f_score,
                       nearest_neighbors, normal_consistency, sample_points)

N = 20_000


def ico(radius=0.5, centre=(0.0, 0.0, 0.0), level=5):
    m = trimesh.creation.icosphere(level, radius=radius)
    m.apply_translation(centre)
    return m


def test_units():
    assert MM == 0.004 and DEFAULT_THRESHOLD == MM and FACE_RADIUS == 10 * MM


def test_sample_points_on_sphere():
    p, n = sample_points(ico(), 5000, seed=0)
    assert p.shape == n.shape == (5000, 3) and p.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0)
    r = np.linalg.norm(p, axis=1)
    assert r.max() <= 0.5 + 1e-12 and r.min() > 0.499  # inside the facets, close to the sphere
    assert (np.einsum("ij,ij->i", p, n) > 0).all()  # outward face normals
    q, _ = sample_points(ico(), 5000, seed=0)
    np.testing.assert_array_equal(p, q)  # deterministic
    # area-weighted: both hemispheres get half the points
    assert abs((p[:, 2] > 0).mean() - 0.5) < 0.03


def test_sample_points_face_mask():
    m = ico()
    mask = m.vertices[:, 2] > 0.3
    p, _ = sample_points(m, 2000, seed=1, face_mask=mask)
    assert p[:, 2].min() > 0.3 - 0.02  # majority-vertex triangles reach one edge beyond the cap
    with pytest.raises(ValueError, match="no 'face' triangles"):
        sample_points(m, 10, seed=0, face_mask=np.zeros(len(m.vertices), bool))


def test_identical_points():
    p, n = sample_points(ico(), N, seed=0)
    r = compare_points(p, p, n, n)
    assert r["chamfer_l1"] == 0.0 and r["accuracy"] == 0.0 and r["completeness"] == 0.0
    assert r["normal_consistency"] == pytest.approx(1.0, abs=1e-12)
    assert r["f_score"] == 1.0 and r["precision"] == 1.0 and r["recall"] == 1.0


def test_identical_meshes():
    m = ico()
    r = evaluate_meshes(m, m, n_points=N, seed=0)["head"]
    spacing = math.sqrt(m.area / N)
    assert r["chamfer_l1"] < spacing  # independent samples of one surface: ~spacing / 2
    assert r["normal_consistency"] > 0.999
    (p0, _), (p1, _) = sample_points(m, N, 0), sample_points(m, N, 1)
    assert compare_points(p0, p1, threshold=2 * spacing)["f_score"] > 0.999
    assert r["n_pred"] == r["n_gt"] == N and "face" not in evaluate_meshes(m, m, n_points=100)


def test_concentric_spheres():
    gap = 0.05
    r = evaluate_meshes(ico(0.5 + gap), ico(0.5), n_points=N, seed=0)["head"]
    spacing = math.sqrt(4 * math.pi * (0.5 + gap) ** 2 / N)  # of the sparser (larger) sphere
    # every point is >= gap from the other sphere; the nearest sample is off laterally by
    # l with E[l^2] = spacing^2 / pi (Poisson), so the mean is <= sqrt(gap^2 + spacing^2 / pi)
    for key in ("accuracy", "completeness", "chamfer_l1"):
        assert gap - 1e-4 < r[key] < math.sqrt(gap**2 + spacing**2 / math.pi)
    assert r["normal_consistency"] > 0.999
    # the F-score steps from 0 to 1 across the gap
    assert r["f_score"] == 0.0  # 1 mm << gap
    assert evaluate_meshes(ico(0.5 + gap), ico(0.5), n_points=N, threshold=0.9 * gap)["head"]["f_score"] == 0.0
    assert evaluate_meshes(ico(0.5 + gap), ico(0.5), n_points=N, threshold=1.2 * gap)["head"]["f_score"] == 1.0


def shifted_sphere_chamfer(radius, d):
    """Mean distance from a sphere (radius, centre (d, 0, 0)) to the sphere (radius,
    origin): for x = c + r u, |x| = sqrt(r^2 + d^2 + 2 r d u_x) and u_x is uniform in
    [-1, 1] on the sphere (Archimedes); the distance to the other sphere is ||x| - r|.
    Symmetric, so the Chamfer-L1 (mean of both directions) is the same number."""
    f = lambda t: abs(math.sqrt(radius**2 + d**2 + 2 * radius * d * t) - radius)  # noqa: E731
    t0 = -d / (2 * radius)  # the two spheres cross where the integrand's kink is
    return 0.5 * (quad(f, -1, t0)[0] + quad(f, t0, 1)[0])


def test_shifted_sphere_matches_integral():
    radius, d = 0.5, 0.1
    expected = shifted_sphere_chamfer(radius, d)
    assert expected == pytest.approx(0.0508, abs=1e-3)  # about d / 2 for small d
    gt, pred = ico(radius, level=6), ico(radius, (d, 0.0, 0.0), level=6)
    n = 100_000
    r = evaluate_meshes(pred, gt, n_points=n, seed=3)["head"]
    # the only error: the nearest *sample* is slightly farther than the surface (~1e-4 here)
    assert r["chamfer_l1"] == pytest.approx(expected, abs=5e-4)
    assert r["accuracy"] == pytest.approx(expected, abs=5e-4)
    assert r["completeness"] == pytest.approx(expected, abs=5e-4)


def test_flipped_normals():
    m = ico()
    flipped = trimesh.Trimesh(m.vertices, m.faces[:, ::-1], process=False)
    assert evaluate_meshes(flipped, m, n_points=N)["head"]["normal_consistency"] > 0.999  # NPHM: |cos|
    oriented = evaluate_meshes(flipped, m, n_points=N, oriented=True)["head"]["normal_consistency"]
    assert oriented < -0.999


def test_small_functions():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0.1]])
    # accuracy (0.1 + sqrt(1.01)) / 2, completeness 0.1
    assert chamfer_l1(a, b) == pytest.approx(0.5 * (0.5 * (0.1 + math.sqrt(1.01)) + 0.1))
    assert f_score(a, b, threshold=0.2) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f_score(a, b, threshold=0.1) == pytest.approx(2 * 0.5 * 1 / 1.5)  # <= t counts
    assert f_score(a, b, threshold=0.05) == 0.0
    na = np.array([[0.0, 0, 1], [0, 1, 0]])
    nb = np.array([[0.0, 0, 3]])  # normalised inside
    assert normal_consistency(a, na, b, nb) == pytest.approx(0.5 * (0.5 * (1 + 0) + 1))
    assert chamfer_l1(torch.tensor(a), torch.tensor(b)) == chamfer_l1(a, b)


@pytest.mark.parametrize("n, m, block", [(1000, 1500, 2**16), (777, 3001, 10_000), (5, 7, 1), (300, 1, 64)])
def test_bruteforce_equals_kdtree(n, m, block):
    rng = np.random.default_rng(n + m)
    q, r = rng.uniform(-1, 1, (n, 3)), rng.uniform(-1, 1, (m, 3))
    d0, i0 = nearest_neighbors(q, r)
    d1, i1 = nearest_neighbors(q, r, method="brute", block=block)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, rtol=0, atol=1e-12)
    assert d1.dtype == np.float64 and i1.dtype == np.int64


def test_bruteforce_precision_near_one():
    # a dense cluster far from the origin: float32 expansion would confuse these neighbours
    rng = np.random.default_rng(0)
    r = 0.9 + rng.uniform(0, 1e-3, (2000, 3))
    q = 0.9 + rng.uniform(0, 1e-3, (500, 3))
    d0, i0 = nearest_neighbors(q, r)
    d1, i1 = nearest_neighbors(q, r, method="brute", block=10_000)
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, rtol=1e-9)


@pytest.mark.cuda
def test_evaluate_on_cuda_matches_cpu():
    require_backend("cuda")
    gt, pred = ico(0.5), ico(0.52)
    a = evaluate_meshes(pred, gt, n_points=3000, seed=2, device="cpu")["head"]
    b = evaluate_meshes(pred, gt, n_points=3000, seed=2, device="cuda")["head"]
    assert a == pytest.approx(b, rel=1e-9)


def cap_head(radius=0.5, z=0.2):
    m = ico(radius)
    return HeadMesh(m.vertices, m.faces, m.vertices[:, 2] > z * radius / 0.5, "s", "neutral", True)


def test_face_region():
    gt = cap_head()
    pred = ico(0.51)  # 0.01 outside everywhere
    out = evaluate_meshes(pred, gt, n_points=N, seed=0, face_radius=0.04)
    assert set(out) == {"head", "face"}
    face = out["face"]
    assert face["n_pred"] == face["n_gt"] == N
    # both sides' face samples: their points within 0.04 of gt's cap, each 0.01 from the
    # other surface (plus the lateral offset of the nearest sample, bounded as for the
    # concentric spheres): the region rule adds no error of its own
    spacing = math.sqrt(pred.area / N)
    for k in ("accuracy", "completeness"):
        assert 0.01 - 1e-4 < face[k] < math.sqrt(0.01**2 + spacing**2 / math.pi), k
    # the same region from an explicit mask (and a plain trimesh as gt)
    out2 = evaluate_meshes(pred, ico(0.5), n_points=N, seed=0, face_radius=0.04, face_region=gt.face_region)
    assert out2["face"] == out["face"]


def test_face_region_of_identical_meshes_is_as_good_as_the_head():
    gt = cap_head()
    out = evaluate_meshes(gt, gt, n_points=N, seed=0, face_radius=0.04, threshold=0.02)
    head, face = out["head"], out["face"]
    spacing = math.sqrt(ico(0.5).area / N)
    assert face["chamfer_l1"] < spacing and face["chamfer_l1"] < 1.5 * head["chamfer_l1"]
    assert face["precision"] == face["recall"] == face["f_score"] == 1.0
    assert abs(face["accuracy"] - face["completeness"]) < 0.2 * face["chamfer_l1"]  # one rule for both sides


def test_face_region_extent():
    gt = cap_head()
    rng = np.random.default_rng(0)
    from npht.eval.metrics import _sample_near, _tree
    cap, _ = sample_points(gt, N, rng, face_mask=gt.face_region)
    for mesh in (gt, ico(0.5), ico(0.52)):
        pp, pn = _sample_near(mesh, N, rng, _tree(cap, None), 0.04)
        assert pp.shape == pn.shape == (N, 3)
        d = nearest_neighbors(pp, cap)[0]
        assert d.max() <= 0.04 and pp[:, 2].min() < 0.2 - 0.02  # within the radius, and it widened the cap
    with pytest.raises(ValueError, match="no triangle lies within face_radius"):
        _sample_near(ico(0.5), 10, rng, _tree(cap + 5.0, None), 0.04)


def test_errors():
    m = ico()
    with pytest.raises(ValueError, match="n_points"):
        evaluate_meshes(m, m, n_points=0)
    with pytest.raises(ValueError, match="threshold"):
        evaluate_meshes(m, m, n_points=10, threshold=0.0)
    with pytest.raises(ValueError, match="face_radius"):
        evaluate_meshes(m, m, n_points=10, face_radius=-1.0)
    with pytest.raises(ValueError, match="face region"):
        evaluate_meshes(ico(0.5, (5.0, 0, 0)), cap_head(), n_points=100)
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        nearest_neighbors(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="empty"):
        nearest_neighbors(np.zeros((0, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="block"):
        nearest_neighbors(np.zeros((1, 3)), np.zeros((4, 3)), method="brute", block=0)
    with pytest.raises(ValueError, match="method"):
        nearest_neighbors(np.zeros((1, 3)), np.zeros((4, 3)), method="kd")
    with pytest.raises(ValueError, match="both"):
        compare_points(np.zeros((1, 3)), np.zeros((1, 3)), pred_normals=np.ones((1, 3)))
    with pytest.raises(ValueError, match="one normal per point"):
        compare_points(np.zeros((2, 3)), np.zeros((1, 3)), np.ones((1, 3)), np.ones((1, 3)))
