"""Mesh extraction: marching cubes of analytic SDFs lands on the surface in world
coordinates, closed and outward oriented; npht models plug in through model_sdf_fn."""

import math

import numpy as np
import pytest
import torch

from npht.eval import extract_mesh, grid_sdf, model_sdf_fn, sparse_grid_sdf
from npht.models import IdentityModel, NPMBaseline, TriplaneDecoder, TriplaneGenerator

RES = 64
H = 2.0 / (RES - 1)  # grid spacing over [-1, 1]


def sphere(radius=0.5, centre=(0.0, 0.0, 0.0)):
    c = torch.tensor(centre)
    return lambda p: (p - c).norm(dim=-1) - radius


def box(half):
    b = torch.tensor(half)

    def sdf(p):
        q = p.abs() - b
        return q.clamp(min=0).norm(dim=-1) + q.amax(dim=-1).clamp(max=0)

    return sdf


def outward_fraction(mesh, centre=(0.0, 0.0, 0.0)):
    c = mesh.triangles_center - np.asarray(centre)
    return float((np.einsum("ij,ij->i", c, mesh.face_normals) > 0).mean())


def test_sphere_on_surface_closed_outward():
    m = extract_mesh(sphere(0.5), resolution=RES)
    r = np.linalg.norm(m.vertices, axis=1)
    assert np.abs(r - 0.5).max() < H  # marching cubes interpolates along grid edges
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume > 0  # counter-clockwise seen from outside
    assert outward_fraction(m) == 1.0
    assert m.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.01)
    assert m.area == pytest.approx(4 * math.pi * 0.5**2, rel=0.01)
    assert m.vertices.dtype == np.float64 and m.faces.dtype == np.int64


def test_world_coordinates_and_axis_order():
    # an off-centre ellipsoid (a level set, not an exact SDF): distinct extents per axis
    # catch a transposed grid, the centre catches a wrong origin
    c = torch.tensor([0.2, -0.1, 0.05])
    axes = torch.tensor([0.3, 0.5, 0.7])
    m = extract_mesh(lambda p: ((p - c) / axes).norm(dim=-1) - 1.0, resolution=RES)
    lo, hi = m.bounds
    np.testing.assert_allclose(hi - lo, 2 * axes.numpy(), atol=2 * H)
    np.testing.assert_allclose(0.5 * (lo + hi), c.numpy(), atol=H)
    assert m.is_watertight and m.volume > 0 and outward_fraction(m, c.numpy()) > 0.99


def test_box_volume_and_bounds():
    half = (0.3, 0.4, 0.5)
    m = extract_mesh(box(half), resolution=RES)
    np.testing.assert_allclose(m.bounds[1], half, atol=H)
    np.testing.assert_allclose(m.bounds[0], -np.asarray(half), atol=H)
    # corners and edges are cut by at most a cell: the volume is off by O(edge length * H^2)
    assert m.volume == pytest.approx(0.6 * 0.8 * 1.0, rel=0.02)
    assert m.is_watertight and m.volume > 0


def test_bound_level_and_chunk():
    m = extract_mesh(sphere(0.5), resolution=33, bound=0.6)
    assert np.abs(np.linalg.norm(m.vertices, axis=1) - 0.5).max() < 1.2 / 32
    m = extract_mesh(sphere(0.5), resolution=RES, level=0.1)  # the 0.1 level set: radius 0.6
    assert np.abs(np.linalg.norm(m.vertices, axis=1) - 0.6).max() < H
    a = extract_mesh(sphere(0.4), resolution=32)
    b = extract_mesh(sphere(0.4), resolution=32, chunk=1000)  # ragged chunks
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_allclose(a.vertices, b.vertices)


def test_grid_order():
    g = grid_sdf(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], resolution=5, chunk=7)
    ax = np.linspace(-1, 1, 5)
    ref = ax[:, None, None] + 10 * ax[None, :, None] + 100 * ax[None, None, :]
    np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-5)


def test_no_grad_inside():
    seen = []

    def sdf(p):
        seen.append(torch.is_grad_enabled())
        return p.norm(dim=-1) - 0.5

    extract_mesh(sdf, resolution=16)
    assert seen and not any(seen)


@pytest.mark.parametrize("sdf, match", [
    (lambda p: p.norm(dim=-1) + 1.0, "no surface.*outside"),
    (lambda p: p.norm(dim=-1) - 5.0, "no surface.*inside"),
    (lambda p: torch.full((len(p),), float("nan")), "non-finite"),
    (lambda p: torch.zeros(len(p), 2), "sdf_fn must map"),
])
def test_bad_sdf(sdf, match):
    with pytest.raises(ValueError, match=match):
        extract_mesh(sdf, resolution=16)


@pytest.mark.parametrize("kwargs", [dict(resolution=1), dict(resolution=16.0), dict(bound=0.0),
                                    dict(bound=float("inf")), dict(chunk=0), dict(level=float("nan"))])
def test_bad_args(kwargs):
    with pytest.raises(ValueError):
        extract_mesh(sphere(), **{"resolution": 16, **kwargs})


def test_model_sdf_fn_npm():
    model = NPMBaseline(2, z_dim=8, hidden=64, layers=4, skip=2)  # geometric init: ~ sphere of radius 0.5
    fn = model_sdf_fn(model, 1)
    pts = torch.rand(100, 3) * 2 - 1
    with torch.no_grad():
        ref = model(pts[None], torch.tensor([1]))[0]
    torch.testing.assert_close(fn(pts), ref)
    torch.testing.assert_close(model_sdf_fn(model, torch.tensor(1))(pts), ref)
    torch.testing.assert_close(model_sdf_fn(model, model.codes.weight[1].detach())(pts), ref)
    m = extract_mesh(fn, resolution=32)
    on_surface = fn(torch.from_numpy(m.vertices).float()).abs().max().item()
    assert on_surface < 0.5 * 2 / 31 and len(m.faces) > 100


def test_model_sdf_fn_triplane_generates_once():
    gen = TriplaneGenerator(8, 4, 16, base=4)
    dec = TriplaneDecoder(4, hidden=16).geometric_init_(generator=torch.Generator().manual_seed(0))
    model = IdentityModel(gen, dec, 2, 8).eval()
    calls = []
    gen.register_forward_hook(lambda *a: calls.append(1))
    fn = model_sdf_fn(model, 0)
    pts = torch.rand(50, 3) * 2 - 1
    with torch.no_grad():
        ref = model(pts[None], torch.tensor([0]))[0]
    calls.clear()
    torch.testing.assert_close(fn(pts), ref)
    m = extract_mesh(fn, resolution=24, chunk=4096)
    assert not calls  # planes generated once, in model_sdf_fn
    with torch.no_grad():
        direct = extract_mesh(lambda p: model(p[None], torch.tensor([0]))[0], resolution=24, chunk=4096)
    assert len(m.faces) > 100
    np.testing.assert_array_equal(m.faces, direct.faces)
    np.testing.assert_allclose(m.vertices, direct.vertices, atol=1e-6)


def test_model_sdf_fn_errors():
    model = NPMBaseline(2, z_dim=8, hidden=16, layers=2, skip=None)
    with pytest.raises(ValueError, match="one identity"):
        model_sdf_fn(model, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="code"):
        model_sdf_fn(model, torch.zeros(2, 8))
    with pytest.raises(TypeError):
        model_sdf_fn(model, True)
    with pytest.raises(TypeError, match="sdf_fn"):
        model_sdf_fn(torch.nn.Linear(3, 1), 0)
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        model_sdf_fn(model, 0)(torch.zeros(1, 4, 3))


def test_clip_radius_intersects_with_a_ball():
    import numpy as np
    from npht.eval import extract_mesh

    slab = lambda p: p[:, 2].abs() - 0.1          # noqa: E731  an infinite slab: open at the grid's sides
    raw = extract_mesh(slab, resolution=41)
    assert np.abs(raw.vertices[:, :2]).max() > 0.99   # reaches the grid's boundary
    clipped = extract_mesh(slab, resolution=41, clip_radius=0.6)
    h = 2.0 / 40
    assert np.linalg.norm(clipped.vertices, axis=1).max() < 0.6 + h
    assert clipped.is_watertight and clipped.volume > 0
    # a disk of radius ~sqrt(0.6^2 - z^2), thickness 0.2
    assert abs(clipped.volume - 0.2 * np.pi * (0.6 ** 2 - 0.1 ** 2 / 3)) < 0.02
    with pytest.raises(ValueError, match="clip_radius"):
        extract_mesh(slab, resolution=21, clip_radius=-1.0)


def torus(p):
    return torch.stack([p[:, [0, 2]].norm(dim=-1) - 0.5, p[:, 1]], -1).norm(dim=-1) - 0.2


def rounded_union(p):  # two offset spheres and a box, 1-Lipschitz (min of distances)
    box = (p - torch.tensor([0.0, -0.3, 0.1])).abs() - torch.tensor([0.3, 0.1, 0.25])
    box = box.clamp(min=0).norm(dim=-1) + box.amax(-1).clamp(max=0)
    return torch.minimum(torch.minimum((p - 0.2).norm(dim=-1) - 0.35, (p + 0.25).norm(dim=-1) - 0.3), box)


@pytest.mark.parametrize("sdf", [sphere(0.6), torus, rounded_union])
@pytest.mark.parametrize("resolution, stride", [(48, 4), (61, 4), (67, 3), (40, 8)])
def test_sparse_extraction_equals_dense(sdf, resolution, stride):
    dense = extract_mesh(sdf, resolution)
    sparse = extract_mesh(sdf, resolution, sparse=True, stride=stride, lipschitz=1.0)
    np.testing.assert_array_equal(sparse.vertices, dense.vertices)
    np.testing.assert_array_equal(sparse.faces, dense.faces)
    vol, evaluated = sparse_grid_sdf(sdf, resolution, stride=stride, lipschitz=1.0)
    full = grid_sdf(sdf, resolution)
    assert evaluated < resolution**3
    assert np.array_equal(np.sign(vol), np.sign(full))  # every node on its true side
    exact = vol == full
    assert exact.sum() >= evaluated  # the evaluated nodes hold the SDF itself


def test_sparse_extraction_saves_evaluations_and_matches_a_model():
    gen = TriplaneGenerator(8, 4, 16, base=4)
    dec = TriplaneDecoder(4, hidden=16).geometric_init_(generator=torch.Generator().manual_seed(0))
    fn = model_sdf_fn(IdentityModel(gen, dec, 1, 8).eval(), 0)
    dense = extract_mesh(fn, 96, chunk=20000)
    seen = []
    sparse = extract_mesh(lambda p: seen.append(len(p)) or fn(p), 96, chunk=20000, sparse=True)
    np.testing.assert_array_equal(sparse.faces, dense.faces)
    np.testing.assert_allclose(sparse.vertices, dense.vertices, rtol=0, atol=0)
    assert sum(seen) < 0.4 * 96**3  # the surface's neighbourhood and the coarse grid only


@pytest.mark.parametrize("kwargs, match", [(dict(stride=1), "stride"), (dict(stride=2.0), "stride"),
                                           (dict(lipschitz=0.0), "lipschitz"), (dict(lipschitz=float("inf")), "lipschitz")])
def test_sparse_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        extract_mesh(sphere(), 16, sparse=True, **kwargs)
    with pytest.raises(ValueError, match="no surface"):
        extract_mesh(lambda p: p.norm(dim=-1) + 1.0, 16, sparse=True)


def test_layout_import_paths():
    # shared/DESIGN.md's layout names npht/mesh.py and npht/metrics.py: the same objects
    import npht.eval.mesh
    import npht.eval.metrics
    import npht.mesh
    import npht.metrics

    for short, full in ((npht.mesh, npht.eval.mesh), (npht.metrics, npht.eval.metrics)):
        assert short.__all__ == full.__all__ and len(full.__all__) >= 4
        for name in full.__all__:
            assert getattr(short, name) is getattr(full, name)


@pytest.mark.parametrize("module", ["npht.eval.mesh", "npht.eval.metrics"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
