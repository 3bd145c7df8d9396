"""The Triton compositing kernels (npht.kernels.composite) against the reference raw-kernel
contract (npht.reference.render.composite_fwd/bwd): dense and packed layouts (empty and
one-sample rays), float64 (to round-off) and float32 (the float64 result rounded once),
shared and per-ray beta, no values or K channels, several chunks / channel blocks / ray
blocks, every combination of needed gradients, missing upstream gradients, empty inputs.
Without a GPU this runs under the Triton interpreter (tests/conftest.py), so sizes are
small."""

import itertools

import pytest
import torch

pytest.importorskip("triton")

from npht.kernels import composite as tk  # noqa: E402
from npht.reference import render as ref  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
F64, F32 = torch.float64, torch.float32
LAST = ref.LAST_DELTA

# max error allowed, relative to the largest magnitude of the expected tensor
TOL = {F64: 1e-10, F32: 1e-6}
# float32 kernels against the float32 reference (which rounds at every step)
TOL_F32_REF = 1e-4

# (BLOCK_R, BLOCK_S, BLOCK_K): the module's heuristic, and small blocks so that small inputs
# span several ray blocks (a partial one), chunks (a partial one) and channel blocks
SMALL = (16, 32, 4)
BLOCKS = [pytest.param(None, id="blocks_auto"), pytest.param(SMALL, id="blocks_small")]


@pytest.fixture(params=BLOCKS)
def blocks(request, monkeypatch):
    monkeypatch.setattr(tk, "_BLOCKS", request.param)
    return request.param


def assert_close(actual, expected, tol, what="", atol=0.0):
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.numel() == 0:
        return
    a, e = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite values"
    scale = e.abs().max().item()
    err = (a - e).abs().max().item()
    assert err <= tol * scale + atol, \
        f"{what}: max abs error {err:.3g} > {tol:.1g} * {scale:.3g} + {atol:.1g}"


# ---------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _beta(g, R, per_ray):
    return torch.rand(R if per_ray else 1, generator=g, dtype=F64) * 0.09 + 0.01


def _sdf_of(g, z, surface):
    if surface:  # the ray crosses a surface at depth 1.5
        return 1.5 - z + 0.02 * torch.randn(z.shape, generator=g, dtype=F64)
    return 0.2 * torch.randn(z.shape, generator=g, dtype=F64)


def dense_inputs(R, S, K, per_ray, surface=False, seed=0):
    """float64 (sdf, z, beta, values, offsets=None): z sorted uniform in [0.5, 3]."""
    g = _gen(seed)
    z = torch.sort(torch.rand(R, S, generator=g, dtype=F64) * 2.5 + 0.5, dim=1).values
    sdf = _sdf_of(g, z, surface)
    values = None if K is None else torch.randn(R, S, K, generator=g, dtype=F64)
    return sdf, z, _beta(g, R, per_ray), values, None


def packed_inputs(counts, K, per_ray, surface=False, seed=0):
    """float64 (sdf, z, beta, values, offsets) for rays of the given sample counts."""
    g = _gen(seed)
    counts = torch.tensor(counts, dtype=torch.int64)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    z = torch.cat([torch.sort(torch.rand(int(c), generator=g, dtype=F64) * 2.5 + 0.5).values
                   for c in counts] + [torch.zeros(0, dtype=F64)])
    sdf = _sdf_of(g, z, surface)
    values = None if K is None else torch.randn(z.numel(), K, generator=g, dtype=F64)
    return sdf, z, _beta(g, counts.numel(), per_ray), values, offsets


def upstream(sdf, values, offsets, seed=1):
    """Random (grad_rendered, grad_depth, grad_opacity, grad_weights), float64."""
    g = _gen(seed)
    R = ref._num_rays(sdf, offsets)
    K = 0 if values is None else values.shape[-1]
    return (torch.randn(R, K, generator=g, dtype=F64), torch.randn(R, generator=g, dtype=F64),
            torch.randn(R, generator=g, dtype=F64), torch.randn(sdf.shape, generator=g, dtype=F64))


def to(ts, dtype):
    """Float tensors to dtype and DEVICE (offsets to DEVICE); None stays None."""
    out = []
    for t in ts:
        if t is None:
            out.append(None)
        elif t.is_floating_point():
            out.append(t.to(DEVICE, dtype))
        else:
            out.append(t.to(DEVICE))
    return out


FWD_NAMES = ("rendered", "depth", "opacity", "weights")
BWD_NAMES = ("grad_sdf", "grad_z", "grad_beta", "grad_values")


def check(inputs, dtype, last_delta=LAST, grads=None, needs=(True, True, True, True), atol=0.0):
    """Forward and backward of the Triton kernels on `inputs` (float64, cast to dtype)
    against the reference on the same (cast) inputs in float64, and for float32 also
    against the float32 reference, loosely. `atol`: an absolute error allowed besides the
    relative one, for results that are a cancellation of much larger terms."""
    sdf, z, beta, values, offsets = inputs
    grads = upstream(sdf, values, offsets) if grads is None else grads
    x = to(inputs, dtype)
    gx = to(grads, dtype)
    x64 = to(x, F64)  # the oracle sees exactly the rounded inputs
    g64 = to(gx, F64)
    got_f = tk.composite_fwd(*x, last_delta)
    got_b = tk.composite_bwd(*gx, *x, last_delta, *needs)
    exp_f = ref.composite_fwd(*x64, last_delta)
    exp_b = ref.composite_bwd(*g64, *x64, last_delta, *needs)
    for name, a, e in zip(FWD_NAMES + BWD_NAMES, got_f + got_b, exp_f + exp_b):
        assert_close(a, e.to(dtype), TOL[dtype], name, atol)
    if dtype == F32:
        exp_f = ref.composite_fwd(*x, last_delta)
        exp_b = ref.composite_bwd(*gx, *x, last_delta, *needs)
        for name, a, e in zip(FWD_NAMES + BWD_NAMES, got_f + got_b, exp_f + exp_b):
            assert_close(a, e, TOL_F32_REF, name + " (float32 reference)", atol)
    return got_f, got_b


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------

DENSE_CASES = [  # (R, S, K)
    (1, 1, None),
    (1, 1, 3),
    (6, 33, 1),
    (37, 67, None),
    (37, 67, 5),
    (5, 20, 3),
]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("per_ray", [False, True], ids=["beta_shared", "beta_per_ray"])
@pytest.mark.parametrize("R,S,K", DENSE_CASES)
def test_dense(blocks, dtype, per_ray, R, S, K):
    check(dense_inputs(R, S, K, per_ray, seed=R * 100 + S), dtype)


# empty rays first, inside and last; one-sample rays; rays spanning several chunks
PACKED_COUNTS = [0, 3, 1, 0, 17, 1, 40, 0, 67, 2, 1, 0]


@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("per_ray", [False, True], ids=["beta_shared", "beta_per_ray"])
@pytest.mark.parametrize("K", [None, 1, 3, 5])
def test_packed(blocks, dtype, per_ray, K):
    check(packed_inputs(PACKED_COUNTS, K, per_ray), dtype)


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("last_delta", [LAST, 0.05])
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
def test_surface_crossing(layout, last_delta, dtype):
    """Rays through a surface (sdf = 1.5 - z): weights peak there, opacity ~ 1."""
    if layout == "dense":
        inputs = dense_inputs(9, 40, 3, per_ray=True, surface=True, seed=3)
    else:
        inputs = packed_inputs([40, 0, 25, 1, 33], 3, per_ray=True, surface=True, seed=3)
    (_, depth, opacity, _), _ = check(inputs, dtype, last_delta=last_delta)
    offsets = inputs[4]
    n = torch.full((9,), 40) if offsets is None else offsets[1:] - offsets[:-1]
    full = (opacity.cpu() > 0.99) & (n >= 20)  # a one-sample ray is opaque where it is
    assert full.sum() >= 3
    assert ((depth[full] - 1.5).abs() < 0.2).all()


def test_transparent_ray_tiny_tau():
    """Far outside the surface tau ~ 1e-30: alpha = -expm1(-tau) keeps full relative
    accuracy (1 - exp(-tau) would be 0), the last sample (last_delta 1e10) included."""
    z = torch.linspace(0.5, 3.0, 20, dtype=F64)[None].to(DEVICE)
    sdf = (z + 0.2).clone()
    beta = torch.tensor([0.01], dtype=F64, device=DEVICE)
    _, _, _, w = tk.composite_fwd(sdf, z, beta, None, None, LAST)
    sigma = ref.laplace_density(sdf, 0.01)
    delta = torch.cat([z[:, 1:] - z[:, :-1], torch.full_like(z[:, :1], LAST)], -1)
    tau = sigma * delta
    T = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], -1), -1))
    expected = -torch.expm1(-tau) * T
    assert (expected > 0).all()
    torch.testing.assert_close(w, expected, rtol=1e-13, atol=0)


NEEDS = list(itertools.product([False, True], repeat=4))


def _needs_id(needs):
    return "need_" + ("".join(c for c, n in zip("szbv", needs) if n) or "none")


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("needs", NEEDS, ids=_needs_id)
def test_need_flags(layout, needs):
    """Each subset of needed gradients: needed ones match the reference, the others are
    empty."""
    if layout == "dense":
        inputs = dense_inputs(7, 21, 3, per_ray=False, seed=5)
    else:
        inputs = packed_inputs([5, 0, 21, 1, 9], 3, per_ray=True, seed=5)
    _, got = check(inputs, F64, needs=needs)
    for name, need, g in zip(BWD_NAMES, needs, got):
        if not need:
            assert g.numel() == 0, name


UPSTREAM = {  # which upstream gradients are given (the others None, or empty tensors)
    "rendered": (0,),
    "depth": (1,),
    "opacity": (2,),
    "weights": (3,),
    "rendered_weights": (0, 3),
    "none": (),
}


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("missing", ["None", "empty"])
@pytest.mark.parametrize("given", list(UPSTREAM))
def test_missing_upstream(layout, missing, given):
    if layout == "dense":
        inputs = dense_inputs(6, 19, 3, per_ray=True, seed=7)
    else:
        inputs = packed_inputs([4, 0, 19, 1], 3, per_ray=False, seed=7)
    full = upstream(inputs[0], inputs[3], inputs[4])
    absent = None if missing == "None" else torch.zeros(0, dtype=F64)
    grads = tuple(g if i in UPSTREAM[given] else absent for i, g in enumerate(full))
    # the opacity alone gives dL/dtau_i = go (T_{i+1} - sum_{j>i} w_j) = go T_n ~ 0, a
    # cancellation of O(1) terms: compared with an absolute tolerance
    _, got = check(inputs, F64, grads=grads, atol=1e-12 if given == "opacity" else 0.0)
    if given == "none":
        assert all((g == 0).all() for g in got)


def test_values_none_gives_empty_grad_values():
    inputs = dense_inputs(3, 5, None, per_ray=False)
    grads = upstream(inputs[0], None, None)
    got = tk.composite_bwd(*to(grads, F64), *to(inputs, F64), LAST, True, True, True, True)
    assert got[3].numel() == 0
    assert tk.composite_fwd(*to(inputs, F64), LAST)[0].shape == (3, 0)


@pytest.mark.parametrize("K", [None, 3])
@pytest.mark.parametrize("case", ["dense_R0", "dense_S0", "packed_R0", "packed_M0"])
def test_empty(case, K):
    """No rays, or rays without samples: correctly shaped zero results."""
    if case == "dense_R0":
        inputs = dense_inputs(0, 8, K, per_ray=False)
    elif case == "dense_S0":
        inputs = dense_inputs(4, 0, K, per_ray=True)
    elif case == "packed_R0":
        inputs = packed_inputs([], K, per_ray=False)
    else:
        inputs = packed_inputs([0, 0, 0], K, per_ray=True)
    sdf, z, beta, values, offsets = to(inputs, F64)
    R = ref._num_rays(sdf, offsets)
    Kk = 0 if K is None else K
    rendered, depth, opacity, w = tk.composite_fwd(sdf, z, beta, values, offsets, LAST)
    assert rendered.shape == (R, Kk) and depth.shape == (R,) and opacity.shape == (R,)
    assert w.shape == sdf.shape
    for t in (rendered, depth, opacity):
        assert (t == 0).all()
    grads = to(upstream(sdf, values, offsets), F64)
    gs, gz, gb, gv = tk.composite_bwd(*grads, sdf, z, beta, values, offsets, LAST,
                                      True, True, True, True)
    assert gs.shape == sdf.shape and gz.shape == z.shape and gb.shape == (R,)
    assert gv.shape == ((0,) if values is None else values.shape)
    for t in (gs, gz, gb, gv):
        assert (t == 0).all()
