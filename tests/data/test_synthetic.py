"""Procedural heads: parameters, the neutral SDF, marching cubes meshes, the expression
deformation and the dataset iterator. Meshes are marched at low resolutions (48-64) to
keep the file fast on a 2-core CPU."""

import dataclasses

import numpy as np
import pytest
import torch

from npht.data.records import HeadMesh
from npht.data.synthetic import (EXPRESSION_PRESETS, ExpressionParams, IdentityParams, ProceduralHead,
                                 extract_mesh, identity_seed, synthetic_head, synthetic_heads)

RES = 64
VOXEL = 2.0 / (RES - 1)


@pytest.fixture(scope="module")
def head():
    return synthetic_head(1, seed=0)


@pytest.fixture(scope="module")
def meshes(head):
    return {name: head.mesh(name, RES) for name in EXPRESSION_PRESETS}


def ball_points(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g, dtype=dtype)
    r = torch.rand(n, 1, generator=g, dtype=dtype) ** (1 / 3)
    return p / p.norm(dim=1, keepdim=True) * r


def corner_expressions(n, seed=0):
    """Random corners of the expression box (every field at an end of its range)."""
    rng = np.random.default_rng(seed)
    ranges = ExpressionParams.ranges()
    return [ExpressionParams(**{k: ranges[k][rng.integers(2)] for k in ranges}) for _ in range(n)]


# --- parameters ---------------------------------------------------------------------------
def test_identity_params_sample_mean_vectors():
    a, b = IdentityParams.sample(7), IdentityParams.sample(7)
    assert a == b and a != IdentityParams.sample(8)
    assert IdentityParams.sample(np.random.default_rng(3)) == IdentityParams.sample(3)
    v = a.to_vector()
    assert v.dtype == np.float64 and v.shape == (len(IdentityParams.names()),)
    assert IdentityParams.from_vector(v) == a
    for name, (lo, hi) in IdentityParams.ranges().items():
        assert lo <= getattr(a, name) <= hi and lo <= getattr(IdentityParams.mean(), name) <= hi
    samples = np.stack([IdentityParams.sample(s).to_vector() for s in range(200)])
    lo, hi = np.array(list(IdentityParams.ranges().values())).T
    assert (samples.min(0) >= lo).all() and (samples.max(0) <= hi).all()
    assert (samples.std(0) > 0.1 * (hi - lo)).all()  # every field actually varies


def test_params_errors():
    msg = r"IdentityParams.nose_length = 2.0 is outside its range \[0.75, 1.3\]"
    with pytest.raises(ValueError, match=msg):
        IdentityParams(nose_length=2.0)
    with pytest.raises(ValueError, match="ExpressionParams.jaw_open"):
        ExpressionParams(jaw_open=-0.5)
    with pytest.raises(ValueError, match="ExpressionParams.smile"):
        ExpressionParams(smile=float("nan"))
    with pytest.raises(ValueError, match=r"needs a vector of shape \(6,\)"):
        ExpressionParams.from_vector(np.zeros(5))
    with pytest.raises(ValueError, match="hair_volume"):
        IdentityParams.mean().replace(hair_volume=1.5)
    with pytest.raises(TypeError, match="must be a number"):
        IdentityParams(chin="big")
    with pytest.raises(TypeError, match="seed must be an int"):
        IdentityParams.sample(1.5)


def test_expression_params_and_presets():
    assert list(EXPRESSION_PRESETS)[:5] == ["neutral", "jaw_open", "smile", "brow_raise", "surprise"]
    assert ExpressionParams.neutral().is_neutral and not np.any(ExpressionParams.neutral().to_vector())
    assert all(not e.is_neutral for k, e in EXPRESSION_PRESETS.items() if k != "neutral")
    assert ExpressionParams.sample(4) == ExpressionParams.sample(4) != ExpressionParams.sample(5)
    e = ExpressionParams.sample(4)
    assert ExpressionParams.from_vector(e.to_vector()) == e


def test_dataset_seeds():
    a, b = synthetic_head(3, seed=1), synthetic_head(3, seed=1)
    assert a.identity == b.identity and a.name == "synth003"
    others = [synthetic_head(4, seed=1).identity, synthetic_head(3, seed=2).identity]
    assert all(o != a.identity for o in others)
    with pytest.raises(ValueError, match="identity_index must be a non-negative int"):
        identity_seed(0, -1)


# --- neutral SDF and mesh -----------------------------------------------------------------
def test_determinism_of_meshes():
    m1 = synthetic_head(5, seed=3).mesh(None, 48)
    m2 = synthetic_head(5, seed=3).mesh(None, 48)
    np.testing.assert_array_equal(m1.vertices, m2.vertices)
    np.testing.assert_array_equal(m1.faces, m2.faces)
    m3 = synthetic_head(6, seed=3).mesh(None, 48)
    assert m3.vertices.shape != m1.vertices.shape or not np.allclose(m3.vertices, m1.vertices)


def test_mesh_records(head, meshes):
    neutral = meshes["neutral"]
    assert isinstance(neutral, HeadMesh) and neutral.vertices.dtype == np.float64
    assert (neutral.identity, neutral.expression, neutral.is_neutral) == ("synth001", "neutral", True)
    smile = meshes["smile"]
    assert (smile.expression, smile.is_neutral) == ("smile", False)
    np.testing.assert_array_equal(smile.faces, neutral.faces)  # exact correspondences
    np.testing.assert_array_equal(smile.face_region, neutral.face_region)
    assert head.mesh(ExpressionParams(smile=0.2), RES).expression == "custom"
    assert head.mesh(EXPRESSION_PRESETS["smile"], RES).expression == "smile"
    assert head.mesh(None, RES).vertices is not neutral.vertices  # copies, the cache stays intact


@pytest.mark.parametrize("name", list(EXPRESSION_PRESETS))
def test_meshes_watertight_inside_unit_sphere(meshes, name):
    m = meshes[name]
    tm = m.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume > 0.3  # positive: faces CCW from outside
    assert tm.body_count == 1
    assert np.linalg.norm(m.vertices, axis=1).max() < 0.95
    if name != "neutral":
        vn = meshes["neutral"].to_trimesh().volume
        assert abs(tm.volume - vn) < 0.03 * vn, (tm.volume, vn)


def identity_corners(n, seed=0):
    """Both all-low and all-high identities, then random corners of the identity box."""
    rng = np.random.default_rng(seed)
    ranges = IdentityParams.ranges()
    out = [IdentityParams(**{k: r[c] for k, r in ranges.items()}) for c in (0, 1)]
    return out + [IdentityParams(**{k: r[rng.integers(2)] for k, r in ranges.items()}) for _ in range(n)]


@pytest.mark.parametrize("identity", identity_corners(6))
def test_extreme_identities_inside_unit_sphere(identity):
    h = ProceduralHead(identity)
    for expression in ("neutral", "jaw_open"):
        m = h.mesh(expression, 48)
        tm = m.to_trimesh()
        assert np.linalg.norm(m.vertices, axis=1).max() < 0.95
        assert tm.is_watertight and tm.body_count == 1
    p = ball_points(4000, seed=8)
    for expression in corner_expressions(2, seed=2):
        assert float(torch.linalg.det(h.deform_jacobian(p, expression)).min()) > 0.25


def test_triangle_count_grows_with_resolution(meshes):
    f64 = len(meshes["neutral"].faces)
    f48 = len(synthetic_head(1).mesh(None, 48).faces)
    assert 1.5 < f64 / f48 < 2.2  # ~ (64/48)^2 = 1.78: a surface, not a volume


def test_narrow_band_equals_dense_grid(head):
    v_nb, f_nb = extract_mesh(head.sdf, 48, block=4)
    v_dense, f_dense = extract_mesh(head.sdf, 48, block=1)  # every node evaluated
    np.testing.assert_allclose(v_nb, v_dense, atol=1e-6)
    np.testing.assert_array_equal(f_nb, f_dense)


def test_narrow_band_evaluates_few_points(head):
    counted = []

    def sdf(p):
        counted.append(len(p))
        return head.sdf(p)

    extract_mesh(sdf, 96)
    assert sum(counted) < 0.35 * 96**3, sum(counted) / 96**3


def test_sdf_at_vertices_and_sign(head, meshes):
    v = torch.from_numpy(meshes["neutral"].vertices)
    assert head.sdf(v).abs().max() < VOXEL
    far = ball_points(500, seed=1)
    far = far / far.norm(dim=1, keepdim=True) * 0.97
    assert (head.sdf(far) > 0).all()
    assert head.sdf(torch.tensor([[0.0, 0.17, -0.06], [0.0, 0.0, 0.0], [0.0, -0.6, -0.05]])).lt(0).all()


def test_sdf_dtypes_and_autograd(head):
    p = ball_points(1000, seed=2)
    d64 = head.sdf(p)
    d32 = head.sdf(p.float())
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32 and d64.shape == (1000,)
    torch.testing.assert_close(d32.double(), d64, atol=1e-5, rtol=0)
    assert head.sdf(p.reshape(10, 100, 3)).shape == (10, 100)
    q = ball_points(6, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(head.sdf, (q,), eps=1e-6, atol=1e-6)


def test_sdf_gradient_norm_near_surface(head, meshes):
    """Eikonal quality: the smooth blends (concave joints, the hairline, ears) lower the
    gradient norm locally, so the check is statistical: median within 2% of 1, at least
    88% of the surface points within [0.8, 1.1] (92-94% measured), none above 1.5
    outside the mouth gap (thinner than a voxel at this resolution)."""
    v = torch.from_numpy(meshes["neutral"].vertices).requires_grad_(True)
    (g,) = torch.autograd.grad(head.sdf(v).sum(), v)
    n = g.norm(dim=1)
    assert abs(float(n.median()) - 1.0) < 0.02
    assert float(((n > 0.8) & (n < 1.1)).double().mean()) > 0.88
    lay = head.layout
    mouth = ((v[:, 1] - lay.mouth_y).abs() < 0.04) & (v[:, 2] > 0.25) & (v[:, 0].abs() < 0.13)
    assert float(n[~mouth].max()) < 1.5


def test_face_region(head, meshes):
    m = meshes["neutral"]
    fr, v = m.face_region, m.vertices
    assert 0.15 < fr.mean() < 0.6
    assert v[fr, 2].mean() > 0.15 > v[~fr, 2].mean()
    assert not fr[v[:, 2] < -0.3].any()  # back of the head
    assert not fr[v[:, 1] > 0.5].any()  # hair top
    assert not fr[v[:, 1] < -0.6].any()  # neck
    nose_tip = np.argmax(v[:, 2])
    assert fr[nose_tip]
    ear = (np.abs(v[:, 0]) > head.layout.W + 0.02) & (np.abs(v[:, 1] - head.layout.ear_c[1]) < 0.05)
    assert ear.any() and fr[ear].mean() > 0.9
    assert head.face_region(torch.zeros(2, 5, 3)).shape == (2, 5)


# --- deformation --------------------------------------------------------------------------
def test_neutral_deformation_is_identity(head):
    p = ball_points(100)
    assert torch.equal(head.deform(p, "neutral"), p) and torch.equal(head.deform_inverse(p, None), p)


@pytest.mark.parametrize("expression", list(EXPRESSION_PRESETS.values())[1:] + corner_expressions(6))
def test_jacobian_determinant_positive(head, meshes, expression):
    p = ball_points(20000, seed=4)
    det = torch.linalg.det(head.deform_jacobian(p, expression))
    assert float(det.min()) > 0.25  # analytic bound 0.30 for the jaw, ~0.3 for the bumps
    surf = torch.from_numpy(meshes["neutral"].vertices)
    assert float(torch.linalg.det(head.deform_jacobian(surf, expression)).min()) > 0.25


@pytest.mark.parametrize("expression", ["jaw_open", "surprise"] + corner_expressions(3, seed=1))
def test_inverse_round_trip(head, meshes, expression):
    for x in (ball_points(5000, seed=5), torch.from_numpy(meshes["neutral"].vertices)):
        y = head.deform(x, expression)
        assert float((head.deform_inverse(y, expression) - x).abs().max()) < 1e-5
    x32 = ball_points(2000, seed=6, dtype=torch.float32)
    y32 = head.deform(x32, expression)
    assert float((head.deform_inverse(y32, expression) - x32).abs().max()) < 1e-5


def test_posed_sdf(head, meshes):
    posed = torch.from_numpy(meshes["surprise"].vertices)
    assert head.posed_sdf(posed, "surprise").abs().max() < VOXEL
    far = ball_points(200, seed=7)
    far = far / far.norm(dim=1, keepdim=True) * 0.97
    assert (head.posed_sdf(far, "surprise") > 0).all()
    # differentiable: the implicit gradient matches finite differences
    p = posed[:5].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(head.posed_sdf(p, "jaw_open").sum(), p)
    eps = 1e-6
    for k in range(3):
        dp = torch.zeros_like(p)
        dp[:, k] = eps
        q = p.detach()
        fd = (head.posed_sdf(q + dp, "jaw_open") - head.posed_sdf(q - dp, "jaw_open")) / (2 * eps)
        torch.testing.assert_close(g[:, k], fd, atol=1e-5, rtol=1e-4)


def test_presets_move_the_expected_places(head, meshes):
    v0 = meshes["neutral"].vertices
    lay = head.layout
    dj = meshes["jaw_open"].vertices - v0
    chin = (v0[:, 1] < lay.chin_bottom_y + 0.08) & (v0[:, 2] > 0.25)
    assert chin.sum() > 5 and (dj[chin, 1] < -0.04).all()
    top = v0[:, 1] > 0.2
    assert np.abs(dj[top]).max() < 1e-6  # the cranium stays
    # the mouth gap opens: lower lip down, upper lip (nearly) still
    lips = (np.abs(v0[:, 0]) < 0.03) & (v0[:, 2] > lay.mouth_z - 0.03)
    upper = lips & (v0[:, 1] > lay.mouth_y + 0.012) & (v0[:, 1] < lay.mouth_y + 0.05)
    lower = lips & (v0[:, 1] < lay.mouth_y - 0.012) & (v0[:, 1] > lay.mouth_y - 0.05)
    assert upper.any() and lower.any()
    assert dj[lower, 1].mean() < -0.08 and dj[upper, 1].mean() > -0.02
    ds = meshes["smile"].vertices - v0
    for side in (1.0, -1.0):  # the vertices nearest to each mouth corner
        corner = np.argsort(np.linalg.norm(v0 - [side * lay.mouth_half_width, lay.mouth_y, 0.36], axis=1))[:8]
        assert (ds[corner, 1] > 0.008).all() and (ds[corner, 0] * side > 0.003).all()
    db = meshes["brow_raise"].vertices - v0
    brow = ((np.abs(np.abs(v0[:, 0]) - lay.eye_x) < 0.03) & (np.abs(v0[:, 1] - lay.brow_y) < 0.02)
            & (v0[:, 2] > 0.2))
    assert brow.any() and (db[brow, 1] > 0.01).all()


# --- dataset and errors ---------------------------------------------------------------------
def test_synthetic_heads_iterator():
    out = list(synthetic_heads(2, expressions=["neutral", "smile"], seed=4, resolution=48))
    keys = ["synth000/neutral", "synth000/smile", "synth001/neutral", "synth001/smile"]
    assert [m.key for m in out] == keys
    np.testing.assert_array_equal(out[0].faces, out[1].faces)
    first3 = [m.expression for m in synthetic_heads(1, expressions=3, resolution=48)]
    assert first3 == ["neutral", "jaw_open", "smile"]


def test_errors(head):
    with pytest.raises(ValueError, match=r"points must have shape \[..., 3\], got \[4, 2\]"):
        head.sdf(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="points must be a floating point tensor"):
        head.deform(torch.zeros(4, 3, dtype=torch.int64), "smile")
    with pytest.raises(TypeError, match="points must be a torch.Tensor"):
        head.face_region(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unknown expression preset 'grin'"):
        head.mesh("grin", 48)
    with pytest.raises(TypeError, match="expression must be None, a preset name or ExpressionParams"):
        head.deform(torch.zeros(1, 3), 3)
    with pytest.raises(ValueError, match="resolution must be an int >= 8"):
        head.mesh(None, 4)
    with pytest.raises(ValueError, match=r"expressions must be in \[1, 8\]"):
        next(synthetic_heads(1, expressions=0))
    with pytest.raises(ValueError, match="no zero level set"):
        extract_mesh(lambda p: p.norm(dim=-1) + 1.0, 16)
    with pytest.raises(TypeError, match="identity must be IdentityParams"):
        ProceduralHead(dataclasses.asdict(IdentityParams()))
