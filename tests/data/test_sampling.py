"""Thesis point sampling on analytic meshes: icospheres of radius 0.5 (SDF |p| - 0.5) with
the face region z > 0.2, a box with very unequal triangles, affine/similar posed copies."""

import numpy as np
import pytest
import torch
import trimesh
from scipy import stats

from npht.data import sampling as S
from npht.data.records import HeadMesh

R = 0.5


def sphere_arrays(subdivisions):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=R)
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


@pytest.fixture(scope="module")
def sphere():
    v, f = sphere_arrays(5)
    return HeadMesh(v, f, v[:, 2] > 0.2, "s", "neutral", True)


def angle_deg(a, b):
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def test_vertex_normals_are_radial_and_unit(sphere):
    n = S.vertex_normals(sphere.vertices, sphere.faces)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-12)
    assert angle_deg(n, sphere.vertices).max() < 0.25  # icosphere triangles are not all alike
    # area weighting: a vertex shared by a big and a small triangle leans to the big one
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0.1]], float)
    f = np.array([[0, 1, 2], [0, 3, 1]])
    n0 = S.vertex_normals(v, f)[0]
    np.testing.assert_allclose(n0, np.array([0, 0.1, 1]) / np.hypot(0.1, 1), atol=1e-12)  # unweighted: 45 deg


def test_surface_points_lie_on_the_mesh_with_interpolated_normals(sphere):
    s = S.sample_surface(sphere, 20000, 0)
    assert s.points.shape == s.normals.shape == s.barycentric.shape == (20000, 3)
    assert s.face_index.dtype == np.int64 and s.face_region.dtype == bool
    assert (s.barycentric >= 0).all()
    np.testing.assert_allclose(s.barycentric.sum(axis=1), 1.0, atol=1e-12)
    tri = sphere.vertices[sphere.faces[s.face_index]]
    np.testing.assert_allclose(s.points, np.einsum("nk,nkd->nd", s.barycentric, tri), atol=1e-12)
    # on the triangle's plane: zero distance to the mesh
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    off = np.abs(np.einsum("nd,nd->n", s.points - tri[:, 0], normal)) / np.linalg.norm(normal, axis=1)
    assert off.max() < 1e-12
    r = np.linalg.norm(s.points, axis=1)
    assert r.max() <= R + 1e-12 and r.min() > R - 1e-3  # chords of the sphere
    np.testing.assert_allclose(np.linalg.norm(s.normals, axis=1), 1.0, atol=1e-12)
    assert angle_deg(s.normals, s.points).max() < 1.0


def test_region_split_is_exact(sphere):
    labels = (sphere.vertices[sphere.faces][:, :, 2] > 0.2).sum(axis=1) >= 2  # majority rule, written out
    np.testing.assert_array_equal(S.triangle_region(sphere.faces, sphere.face_region), labels)
    assert 0 < labels.sum() < len(labels)
    face = S.sample_surface(sphere, 5000, 1, region="face")
    nonface = S.sample_surface(sphere, 5000, 1, region="nonface")
    assert labels[face.face_index].all() and face.face_region.all()
    assert not labels[nonface.face_index].any() and not nonface.face_region.any()
    both = S.sample_surface(sphere, 40000, 2)
    np.testing.assert_array_equal(both.face_region, labels[both.face_index])
    area = np.linalg.norm(np.cross(*(sphere.vertices[sphere.faces][:, k] - sphere.vertices[sphere.faces][:, 0]
                                     for k in (1, 2))), axis=1)
    p = area[labels].sum() / area.sum()
    assert abs(both.face_region.mean() - p) < 4 * np.sqrt(p * (1 - p) / 40000)


def test_area_weighting_within_binomial_tolerance():
    box = trimesh.creation.box(extents=(1.0, 0.3, 0.05))
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    n = 60000
    s = S.sample_surface((v, f), n, 3)
    area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    p = area / area.sum()
    counts = np.bincount(s.face_index, minlength=len(f))
    assert p.max() / p.min() > 15  # the test has teeth: very unequal triangles
    assert (np.abs(counts - n * p) < 4.5 * np.sqrt(n * p * (1 - p))).all(), (counts, n * p)
    # uniform within a triangle: the barycentric weight of vertex 0 has mean 1/3
    assert abs(s.barycentric[:, 0].mean() - 1 / 3) < 4 * np.sqrt(1 / 18 / n)


def test_signed_distance_matches_the_analytic_sphere(sphere):
    rng = np.random.default_rng(4)
    d = rng.normal(size=(4000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = np.concatenate([rng.uniform(0.05, 0.49, 2000), rng.uniform(0.51, 1.2, 2000)])
    p = d * r[:, None]
    sdf = S.signed_distance(sphere, p)
    truth = r - R
    assert np.abs(sdf - truth).max() < 1e-3
    assert (np.sign(sdf) == np.sign(truth)).all()
    np.testing.assert_array_equal(S.signed_distance((sphere.vertices, sphere.faces), p, chunk=777), sdf)


def test_watertightness_and_orientation_are_checked(sphere):
    assert S.is_watertight(sphere.faces)
    assert not S.is_watertight(sphere.faces[1:])
    doubled = np.concatenate([sphere.faces, sphere.faces[:1]])  # an edge shared by three faces
    assert not S.is_watertight(doubled)
    with pytest.raises(ValueError, match="watertight"):
        S.signed_distance((sphere.vertices, sphere.faces[1:]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="oriented inwards"):
        S.signed_distance((sphere.vertices, sphere.faces[:, ::-1]), np.zeros((1, 3)))
    # a few faces wound against their neighbours: still watertight, positive volume
    mixed = sphere.faces.copy()
    mixed[:40] = mixed[:40, ::-1]
    assert S.is_watertight(mixed) and S.signed_volume(sphere.vertices, mixed) > 0
    assert S.is_consistently_wound(sphere.faces) and not S.is_consistently_wound(mixed)
    with pytest.raises(ValueError, match="not consistently wound"):
        S.signed_distance((sphere.vertices, mixed), np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"points must be \[n, 3\]"):
        S.signed_distance(sphere, np.zeros((4, 2)))


def spheres(*parts, subdivisions=3):
    """One ``(V, F)`` of separate icospheres, ``parts`` = ``(center, radius, outward)``."""
    vs, fs, n = [], [], 0
    for center, radius, outward in parts:
        m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
        f = np.asarray(m.faces, np.int64)
        vs.append(np.asarray(m.vertices, np.float64) + center)
        fs.append((f if outward else f[:, ::-1]) + n)
        n += len(m.vertices)
    return np.concatenate(vs), np.concatenate(fs)


def test_separate_outward_components_pass():
    v, f = spheres(((-0.5, 0, 0), 0.3, True), ((0.5, 0, 0), 0.2, True))
    p = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0, 0], [0.5, 0.5, 0], [-0.5, 0.1, 0.1]])
    np.testing.assert_allclose(S.signed_distance((v, f), p), [-0.3, -0.2, 0.2, 0.5 - 0.2, np.sqrt(0.02) - 0.3],
                               atol=5e-3)
    # vertices used by no face are no components: one inverted sphere keeps the whole-mesh message
    v1, f1 = spheres(((0, 0, 0), 0.3, False))
    stray = np.concatenate([np.full((2, 3), 0.9), v1])
    with pytest.raises(ValueError, match=r"the mesh's faces are oriented inwards \(signed volume"):
        S.signed_distance((stray, f1 + 2), np.zeros((1, 3)))


def test_a_separate_component_wound_inwards_is_refused():
    v, f = spheres(((-0.5, 0, 0), 0.3, True), ((0.5, 0, 0), 0.2, False))
    assert S.is_watertight(f) and S.is_consistently_wound(f) and S.signed_volume(v, f) > 0
    # what the check prevents: the pseudonormal test calls the flipped sphere's inside "outside"
    assert S.signed_distance((v, f), np.array([[0.5, 0, 0]]), check=False)[0] > 0
    volume = S.signed_volume(v, f[len(f) // 2:])
    with pytest.raises(ValueError, match=rf"component 2 of 2 \(1280 faces, .*signed volume {volume:.3g}\) is "
                                         r"oriented inwards .*inside no other component.*flip its faces"):
        S.signed_distance((v, f), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="oriented inwards"):  # the first, larger one flipped too
        S.signed_distance((v, f[:, ::-1]), np.zeros((1, 3)))
    region = np.zeros(len(v), bool)
    with pytest.raises(ValueError, match="inside no other component"):  # the bulk samples check it too
        S.prepare_identity_samples((v, f, region), 10, 10, 10, rng=0)


def test_a_cavity_wall_wound_inwards_passes():
    # a hollow ball: outer sphere outward, nested inner sphere inward (the cavity's wall)
    v, f = spheres(((0, 0, 0), 0.5, True), ((0, 0, 0), 0.25, False), subdivisions=4)
    rng = np.random.default_rng(8)
    d = rng.normal(size=(3000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = np.concatenate([rng.uniform(0.0, 0.24, 1000), rng.uniform(0.26, 0.49, 1000), rng.uniform(0.51, 1.0, 1000)])
    truth = np.maximum(r - 0.5, 0.25 - r)  # positive outside and in the cavity, negative in the wall
    sdf = S.signed_distance((v, f), d * r[:, None])
    assert (sdf[:1000] > 0).all() and (sdf[1000:2000] < 0).all() and (sdf[2000:] > 0).all()
    assert np.abs(sdf - truth).max() < 2e-3
    # a solid island floating in the cavity (outward again) is consistent as well
    island = spheres(((0, 0, 0), 0.5, True), ((0.05, 0, 0), 0.25, False), ((0.05, 0, 0), 0.1, True))
    S.signed_distance(island, np.zeros((1, 3)))


def test_nested_or_intersecting_outward_components_are_refused():
    # a sphere inside a sphere, both outward: winding number 2 inside the inner one, and the
    # pseudonormal test calls the solid between them "outside" next to the inner sphere
    v, f = spheres(((0, 0, 0), 0.5, True), ((0.05, 0, 0), 0.25, True))
    assert S.signed_distance((v, f), np.array([[0.05, 0, 0.27]]), check=False)[0] > 0
    with pytest.raises(ValueError, match=r"component 2 of 2 \(1280 faces, .*\) is oriented outwards but lies "
                                         r"inside component 1 \(1280 faces.*flip its faces"):
        S.signed_distance((v, f), np.zeros((1, 3)))
    # overlapping spheres: some vertices of each lie inside the other
    v, f = spheres(((-0.2, 0, 0), 0.3, True), ((0.2, 0, 0), 0.3, True))
    with pytest.raises(ValueError, match=r"component 1 of 2 .* intersects or touches component 2"):
        S.signed_distance((v, f), np.zeros((1, 3)))


def test_near_surface_noise_has_the_requested_std():
    p = np.zeros((30000, 3))
    for sigma in (0.0025, 0.00025):
        d = S.near_surface(p, sigma, 5)
        assert abs(d.std() / sigma - 1) < 0.02 and abs(d.mean()) < 4 * sigma / np.sqrt(d.size)
    with pytest.raises(ValueError, match="sigma"):
        S.near_surface(p, -1.0, 0)


def test_ball_is_uniform():
    for radius in (1.0, 0.7):
        p = S.sample_ball(20000, 6, radius=radius)
        r = np.linalg.norm(p, axis=1)
        assert r.max() <= radius
        assert stats.kstest((r / radius) ** 3, "uniform").pvalue > 0.01
        assert np.abs(p.mean(axis=0)).max() < 4 * radius * np.sqrt(0.2 / 20000)  # E x^2 = r^2 / 5
    far = S.sample_ball(20000, 6)
    assert stats.kstest(np.linalg.norm(far, axis=1) ** 3, "uniform").pvalue > 0.01


def test_identity_samples(sphere):
    b = S.prepare_identity_samples(sphere, n_face=3000, n_nonface=2000, n_ball=1000, rng=7)
    assert set(b) == {k for keys in S.SET_KEYS.values() for k in keys}
    assert all(a.dtype == np.float32 for a in b.values())
    for region, n in (("face", 3000), ("nonface", 2000)):
        pts = b[f"surface_{region}_points"]
        assert pts.shape == b[f"surface_{region}_normals"].shape == (n, 3)
        z = pts[:, 2]  # a triangle reaches 0.01 past the label's boundary z = 0.2
        assert (z > 0.19).all() if region == "face" else (z < 0.21).all()
        for level, sigma in ((1, 0.0025), (2, 0.00025)):
            near, sdf = b[f"near{level}_{region}_points"], b[f"near{level}_{region}_sdf"]
            assert near.shape == (n, 3) and sdf.shape == (n,)
            # perturbed copies of the surface points; their SDF is the normal part of the noise
            assert abs((near - pts).std() / sigma - 1) < 0.05
            assert abs(sdf.std() / sigma - 1) < 0.08
            assert np.abs(sdf - (np.linalg.norm(near.astype(np.float64), axis=1) - R)).max() < 2e-4
    assert b["ball_points"].shape == (1000, 3)
    truth = np.linalg.norm(b["ball_points"].astype(np.float64), axis=1) - R
    assert np.abs(b["ball_sdf"] - truth).max() < 1e-3
    with pytest.raises(ValueError, match="oriented inwards"):
        S.prepare_identity_samples(HeadMesh(sphere.vertices, sphere.faces[:, ::-1], sphere.face_region, "s", "n",
                                            True), 10, 10, 10, rng=0)


def test_torso_cut_plane(sphere):
    plane = (np.array([0.0, -0.3, 0.0]), np.array([0.0, 1.0, 0.0]))  # keep y > -0.3
    cut = HeadMesh(sphere.vertices, sphere.faces, sphere.face_region, "s", "n", True, meta=dict(cut_plane=plane))
    b = S.prepare_identity_samples(cut, 500, 400, 300, rng=0)
    for k in ("surface_face_points", "surface_nonface_points", "ball_points"):
        assert (b[k][:, 1] > -0.3).all(), k
    assert len(b["surface_nonface_points"]) == 400 and len(b["ball_points"]) == 300
    assert b["surface_nonface_normals"][:, 1].min() < -0.5  # the lower sphere just above the plane
    np.testing.assert_allclose(b["ball_sdf"], np.linalg.norm(b["ball_points"].astype(float), axis=1) - R, atol=1e-3)
    same = S.prepare_identity_samples(sphere, 500, 400, 300, rng=0, cut_plane=plane)
    assert all(np.array_equal(same[k], b[k]) for k in b)
    uncut = S.prepare_identity_samples(cut, 500, 400, 300, rng=0, cut_plane=None)
    assert uncut["ball_points"][:, 1].min() < -0.3
    with pytest.raises(ValueError, match="the cut plane keeps .* none of the face surface"):
        S.prepare_identity_samples(sphere, 10, 10, 10, rng=0, cut_plane=(np.array([0, 0.9, 0]), np.array([0, 1, 0])))
    with pytest.raises(ValueError, match="cut_plane must be"):
        S.prepare_identity_samples(sphere, 10, 10, 10, rng=0, cut_plane="yes")


def test_determinism_per_seed(sphere):
    a = S.prepare_identity_samples(sphere, 200, 100, 50, rng=11)
    b = S.prepare_identity_samples(sphere, 200, 100, 50, rng=np.random.default_rng(11))
    c = S.prepare_identity_samples(sphere, 200, 100, 50, rng=12)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["ball_points"], c["ball_points"])
    s1, s2 = S.sample_correspondences(sphere, sphere, 100, rng=3), S.sample_correspondences(sphere, sphere, 100, rng=3)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    with pytest.raises(TypeError, match="rng must be"):
        S.sample_surface(sphere, 3, None)


def test_region_errors(sphere):
    all_face = HeadMesh(sphere.vertices, sphere.faces, np.ones(len(sphere.vertices), bool), "s", "n", True)
    with pytest.raises(ValueError, match="no 'nonface' triangles"):
        S.sample_surface(all_face, 10, 0, region="nonface")
    with pytest.raises(ValueError, match="no 'nonface' triangles"):
        S.prepare_identity_samples(all_face, 10, 10, 10, rng=0)
    assert len(S.prepare_identity_samples(all_face, 10, 0, 10, rng=0)["near1_nonface_sdf"]) == 0
    with pytest.raises(ValueError, match="region must be"):
        S.sample_surface(sphere, 10, 0, region="eyes")
    with pytest.raises(ValueError, match="needs a mesh with a per-vertex face_region"):
        S.sample_surface((sphere.vertices, sphere.faces), 10, 0, region="face")
    with pytest.raises(ValueError, match="n must be an int"):
        S.sample_surface(sphere, -1, 0)


def affine(v):
    a = np.array([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2], [0.05, 0.0, 1.0]])
    b = np.array([0.1, -0.2, 0.05])
    return v @ a.T + b, a, b


def test_correspondences_are_exact_for_an_affine_pose():
    v, f = sphere_arrays(3)
    posed_v, a, b = affine(v)
    neutral = HeadMesh(v, f, v[:, 2] > 0.2, "s", "neutral", True)
    posed = HeadMesh(posed_v, f, v[:, 2] > 0.2, "s", "smile", False)
    c = S.sample_correspondences(neutral, posed, 1001, sigmas=(0.0, 0.0), rng=8)
    assert c["neutral"].shape == c["posed"].shape == (1001, 3)
    np.testing.assert_array_equal(np.bincount(c["direction"]), [501, 500])
    for d in (0, 1):  # both directions: posed == A neutral + b
        sel = c["direction"] == d
        np.testing.assert_allclose(c["posed"][sel], c["neutral"][sel] @ a.T + b, atol=1e-12)
    # the sampled side is on its mesh at the stored triangle + barycentrics
    on = np.where(c["direction"][:, None] == 0, c["neutral"], c["posed"])
    src = np.where(c["direction"][:, None, None] == 0, v[f[c["face_index"]]], posed_v[f[c["face_index"]]])
    np.testing.assert_allclose(on, np.einsum("nk,nkd->nd", c["barycentric"], src), atol=1e-12)
    # area weighting on the posed side: the posed-first half follows the posed areas
    assert c["face_index"].max() < len(f)


def test_correspondence_noise_follows_the_normals_with_one_offset_per_pair():
    v, f = sphere_arrays(4)
    scale, shift = 1.2, np.array([0.1, 0.0, -0.05])  # a similarity: the posed mesh is a sphere too
    neutral, posed = (v, f), (v * scale + shift, f)
    c = S.sample_correspondences(neutral, posed, 20000, sigmas=(0.01, 0.002), rng=9)
    np.testing.assert_array_equal(np.bincount(c["level"]), [10000, 10000])
    for lvl, sigma in enumerate((0.01, 0.002)):
        a = c["offset"][c["level"] == lvl]
        assert abs(a.std() / sigma - 1) < 0.05
    # radial normals: each point moved off its sphere by the pair's shared offset a
    sag = 1e-3  # chord sag of the subdivision-4 icosphere is ~4e-4 at R=0.5
    np.testing.assert_allclose(np.linalg.norm(c["neutral"], axis=1) - R, c["offset"], atol=sag)
    np.testing.assert_allclose(np.linalg.norm(c["posed"] - shift, axis=1) - R * scale, c["offset"], atol=sag * scale)
    bulk = S.prepare_expression_samples(neutral, posed, n=300, rng=1)
    assert bulk["neutral"].dtype == bulk["posed"].dtype == np.float32 and bulk["neutral"].shape == (300, 3)
    assert bulk["level"].shape == (300,)


def test_correspondences_use_the_registration_and_check_topology():
    scan_v, scan_f = sphere_arrays(1)
    reg_v, reg_f = sphere_arrays(3)
    neutral = HeadMesh(scan_v, scan_f, scan_v[:, 2] > 0, "s", "neutral", True, reg_v, reg_f)
    posed = HeadMesh(scan_v * 1.1, scan_f, scan_v[:, 2] > 0, "s", "smile", False, affine(reg_v)[0], reg_f)
    c = S.sample_correspondences(neutral, posed, 2000, sigmas=(0, 0), rng=0)
    assert c["face_index"].max() >= len(scan_f)  # sampled on the registration, not the scan
    other = HeadMesh(scan_v, scan_f, scan_v[:, 2] > 0, "s", "smile", False)  # no registration: the scan
    with pytest.raises(ValueError, match="share their topology"):
        S.sample_correspondences(neutral, other, 10, rng=0)
    with pytest.raises(ValueError, match="share their topology.*different vertex indices"):
        S.sample_correspondences((reg_v, reg_f), (reg_v, np.roll(reg_f, 1, axis=0)), 10, rng=0)


def test_subsample_shapes_indices_and_replacement():
    n = 1000
    idx = np.arange(n, dtype=np.float32)
    bulk = {}
    for name, (pk, vk) in S.SET_KEYS.items():
        size = 100 if name == "ball" else n  # ball smaller than its step count: replacement
        bulk[pk] = np.stack([idx[:size]] * 3, axis=1)
        bulk[vk] = bulk[pk].copy() if vk.endswith("normals") else idx[:size].copy()
    out = S.subsample(bulk, S.DEFAULT_STEP_COUNTS, np.random.default_rng(0))
    assert set(out) == set(bulk)
    for name, count in S.DEFAULT_STEP_COUNTS.items():
        pk, vk = S.SET_KEYS[name]
        assert out[pk].shape == (count, 3) and out[pk].dtype == torch.float32
        assert out[vk].shape == ((count, 3) if vk.endswith("normals") else (count,))
        assert torch.equal(out[pk][:, 0], out[vk] if out[vk].ndim == 1 else out[vk][:, 0])  # same indices
        unique = len(torch.unique(out[pk][:, 0]))
        assert unique == count if name != "ball" else unique <= 100
    again = S.subsample(bulk, S.DEFAULT_STEP_COUNTS, 0)
    assert all(torch.equal(again[k], S.subsample(bulk, S.DEFAULT_STEP_COUNTS, 0)[k]) for k in again)
    only = S.subsample(bulk, {"near2_face": 5, "ball": 0}, 1)
    assert set(only) == {"near2_face_points", "near2_face_sdf", "ball_points", "ball_sdf"}
    assert only["ball_points"].shape == (0, 3)


def test_subsample_errors():
    bulk = {"ball_points": np.zeros((5, 3)), "ball_sdf": np.zeros(5)}
    with pytest.raises(KeyError, match="unknown sample sets \\['sky'\\]"):
        S.subsample(bulk, {"sky": 3}, 0)
    with pytest.raises(KeyError, match="lack \\['surface_face_points', 'surface_face_normals'\\]"):
        S.subsample(bulk, {"surface_face": 3}, 0)
    with pytest.raises(ValueError, match="counts\\['ball'\\] must be an int >= 0"):
        S.subsample(bulk, {"ball": -1}, 0)
    with pytest.raises(ValueError, match="bulk set 'ball' is empty"):
        S.subsample({"ball_points": np.zeros((0, 3)), "ball_sdf": np.zeros(0)}, {"ball": 1}, 0)
    with pytest.raises(ValueError, match="differ in length"):
        S.subsample({"ball_points": np.zeros((4, 3)), "ball_sdf": np.zeros(5)}, {"ball": 1}, 0)
