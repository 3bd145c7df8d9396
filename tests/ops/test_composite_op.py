"""npht.volume_composite: every backend against autograd through the reference compositing
(dense and packed, shared and per-ray beta, with and without values), float64 gradcheck and
gradgradcheck, opcheck, odd sizes, error paths."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import npht
from _backends import OpCalls, backend_device, require_backend
from npht.reference.render import _ref_packed_per_sample_beta, composite, composite_packed

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _rays(R, S, K, dtype, device, seed=0, surface=1.5):
    """Rays crossing a surface near depth ``surface`` (so weights are neither all 0 nor
    all on one sample), depths sorted in [0.5, 3]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.sort(torch.rand(R, S, generator=g, dtype=torch.float64) * 2.5 + 0.5, dim=1).values
    sdf = (surface - z) + 0.05 * torch.randn(R, S, generator=g, dtype=torch.float64)
    v = torch.randn(R, S, K, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (sdf, z, v)]


def _packed(counts, K, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(counts, dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    z = torch.cat([torch.sort(torch.rand(int(c), generator=g, dtype=torch.float64) * 2.5 + 0.5).values
                   for c in counts]) if len(counts) else torch.zeros(0, dtype=torch.float64)
    sdf = (1.5 - z) + 0.05 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    v = torch.randn(z.shape[0], K, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (sdf, z, v)] + [offsets.to(device)]


def _reference(sdf, z, beta, v, offsets, last_delta):
    """Autograd-able reference outputs (rendered, depth, opacity, weights)."""
    R = sdf.shape[0] if offsets is None else offsets.numel() - 1
    if offsets is None:
        b = beta.reshape(-1)[:, None] if beta.numel() == R and R > 1 else beta.reshape(())
        out = composite(sdf, z, b, v, last_delta)
    elif beta.numel() > 1:
        b = torch.repeat_interleave(beta, offsets[1:] - offsets[:-1])  # the ray's beta per sample
        out = _ref_packed_per_sample_beta(sdf, z, b, v, offsets, last_delta)
    else:
        out = composite_packed(sdf, z, beta.reshape(()), offsets, v, last_delta)
    rendered = out[0] if out[0] is not None else sdf.new_zeros(R, 0)
    return rendered, out[1], out[2], out[3]


def _compare(backend, device, dtype, sdf, z, beta, v, offsets, last_delta=1e10, seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in (sdf, z, beta)]
    lv = None if v is None else v.detach().clone().requires_grad_()
    got = npht.volume_composite(*leaves, lv, ray_offsets=offsets, last_delta=last_delta, backend=backend)
    rl = [t.detach().clone().requires_grad_() for t in (sdf, z, beta)]
    rv = None if v is None else v.detach().clone().requires_grad_()
    want = _reference(*rl, rv, offsets, last_delta)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.to(a.dtype), **TOL[dtype])
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for t in want]
    grads_got = torch.autograd.grad(got, leaves + ([lv] if lv is not None else []), ups, allow_unused=True)
    grads_want = torch.autograd.grad([w for w in want if w.requires_grad],
                                     rl + ([rv] if rv is not None else []),
                                     [u for u, w in zip(ups, want) if w.requires_grad], allow_unused=True)
    for a, b in zip(grads_got, grads_want):
        if b is None:
            assert a is None or not a.abs().any()
            continue
        assert a.shape == b.shape
        if b.numel() == 0:
            continue
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_ray_beta", [False, True])
@pytest.mark.parametrize("K", [0, 1, 3, 4, 6])
def test_dense_matches_reference(backend, device, dtype, per_ray_beta, K):
    R, S = 37, 67
    sdf, z, v = _rays(R, S, max(K, 1), dtype, device)
    beta = (torch.rand(R, dtype=dtype) * 0.09 + 0.01 if per_ray_beta else torch.tensor([0.05], dtype=dtype)).to(device)
    _compare(backend, device, dtype, sdf, z, beta, v if K else None, None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_ray_beta", [False, True])
def test_packed_matches_reference(backend, device, dtype, per_ray_beta):
    counts = [5, 0, 1, 67, 12, 0, 3, 40, 2]
    sdf, z, v, off = _packed(counts, 5, dtype, device)
    R = len(counts)
    beta = (torch.rand(R, dtype=dtype) * 0.09 + 0.01 if per_ray_beta else torch.tensor([0.05], dtype=dtype)).to(device)
    _compare(backend, device, dtype, sdf, z, beta, v, off)


def test_packed_equals_dense(backend, device):
    R, S = 6, 9
    sdf, z, v = _rays(R, S, 3, torch.float64, device)
    beta = torch.tensor(0.05, dtype=torch.float64, device=device)
    dense = npht.volume_composite(sdf, z, beta, v, backend=backend)
    off = (torch.arange(R + 1) * S).to(device)
    packed = npht.volume_composite(sdf.reshape(-1), z.reshape(-1), beta, v.reshape(-1, 3), ray_offsets=off,
                                   backend=backend)
    for a, b in zip(dense[:3], packed[:3]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(dense.weights.reshape(-1), packed.weights, rtol=1e-12, atol=1e-14)


def test_finite_last_delta_and_scalar_beta(backend, device):
    sdf, z, v = _rays(5, 7, 2, torch.float64, device)
    _compare(backend, device, torch.float64, sdf, z, torch.tensor([0.2], dtype=torch.float64, device=device), v,
             None, last_delta=0.3)
    out = npht.volume_composite(sdf, z, 0.2, v, last_delta=0.3, backend=backend)  # python float beta
    ref = composite(sdf, z, 0.2, v, 0.3)
    torch.testing.assert_close(out.depth, ref[1])


@pytest.mark.parametrize("packed", [False, True])
def test_infinite_sdf_is_empty_space_with_finite_gradients(backend, device, packed):
    """An SDF of +inf (a user's "empty space") has density 0, -inf density 1/beta, and every
    gradient stays finite: dsigma/dbeta -> 0 as |sdf| -> inf (0 * inf = nan before, in every
    backend and in autograd through the reference density)."""
    sdf, z, v = _rays(4, 6, 2, torch.float64, device)
    sdf[0, 4:] = float("inf")
    sdf[1, :2] = float("inf")
    sdf[2, 5] = -float("inf")
    beta = torch.tensor([0.1], dtype=torch.float64, device=device)
    offsets = None
    if packed:
        offsets = torch.arange(0, 25, 6, device=device)
        sdf, z, v = sdf.reshape(-1), z.reshape(-1), v.reshape(-1, 2)
    _compare(backend, device, torch.float64, sdf, z, beta, v, offsets)
    b = beta.clone().requires_grad_()
    s = sdf.clone().requires_grad_()
    out = npht.volume_composite(s, z, b, v, ray_offsets=offsets, backend=backend)
    (out.rendered.sum() + out.depth.sum() + out.opacity.sum()).backward()
    assert torch.isfinite(b.grad).all() and torch.isfinite(s.grad).all()
    assert torch.isfinite(out.depth).all() and torch.isfinite(out.weights).all()


def test_packed_finite_last_delta_is_per_ray(backend, device):
    """Rays of different lengths, a finite last_delta and a shared beta: each ray composites
    as it would alone (its last sample's delta is last_delta, whatever the longest ray)."""
    sdf, z, v, off = _packed([1, 3, 0, 5], 2, torch.float64, device)
    beta = torch.tensor(0.5, dtype=torch.float64, device=device)
    out = npht.volume_composite(sdf, z, beta, v, ray_offsets=off, last_delta=0.5, backend=backend)
    for r in range(4):
        a, e = int(off[r]), int(off[r + 1])
        if a == e:
            assert out.opacity[r] == 0 and out.depth[r] == 0
            continue
        alone = npht.volume_composite(sdf[a:e][None], z[a:e][None], beta, v[a:e][None], last_delta=0.5,
                                      backend="reference")
        torch.testing.assert_close(out.weights[a:e], alone.weights[0], **TOL[torch.float64])
        torch.testing.assert_close(out.rendered[r], alone.rendered[0], **TOL[torch.float64])
        torch.testing.assert_close(out.depth[r], alone.depth[0], **TOL[torch.float64])
    _compare(backend, device, torch.float64, sdf, z, beta.reshape(1), v, off, last_delta=0.5)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("only", ["values", "beta"])
def test_backward_when_sdf_and_z_need_no_grad(backend, device, packed, only):
    if packed:
        sdf, z, v, off = _packed([2, 3, 1], 3, torch.float64, device)
    else:
        (sdf, z, v), off = _rays(3, 4, 3, torch.float64, device), None
    beta = torch.tensor(0.05, dtype=torch.float64, device=device)
    leaf = (v if only == "values" else beta).requires_grad_()
    out = npht.volume_composite(sdf, z, beta, v, ray_offsets=off, backend=backend)
    (got,) = torch.autograd.grad(out.rendered.sum() + out.depth.sum(), leaf)
    ref = npht.volume_composite(sdf, z, beta, v, ray_offsets=off, backend="reference")
    (want,) = torch.autograd.grad(ref.rendered.sum() + ref.depth.sum(), leaf)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("R,S", [(1, 1), (1, 2), (3, 1), (0, 4)])
def test_odd_sizes(backend, device, R, S):
    sdf, z, v = _rays(R, S, 3, torch.float64, device)
    _compare(backend, device, torch.float64, sdf, z, torch.tensor([0.05], dtype=torch.float64, device=device),
             v, None)


def test_packed_all_empty(backend, device):
    off = torch.zeros(4, dtype=torch.long, device=device)
    e = torch.zeros(0, dtype=torch.float64, device=device)
    out = npht.volume_composite(e, e, 0.1, e.reshape(0, 3), ray_offsets=off, backend=backend)
    assert out.rendered.shape == (3, 3) and not out.rendered.any() and not out.opacity.any()
    assert out.weights.shape == (0,)


def test_opaque_surface_depth(backend, device):
    """A ray through a plane at depth 1.5 with small beta: opacity 1, depth 1.5."""
    z = torch.linspace(0.5, 3.0, 400, dtype=torch.float64, device=device)[None]
    out = npht.volume_composite(1.5 - z, z, 1e-3, backend=backend)
    assert abs(out.opacity.item() - 1.0) < 1e-9
    assert abs(out.depth.item() - 1.5) < 5e-3


def _tiny(packed, device, counts=(3, 0, 1, 4)):
    """float64 (sdf, z, per-ray beta, values, offsets) of a few rays (packed: ``counts``
    samples each) for the derivative checks."""
    if packed:
        sdf, z, v, off = _packed(list(counts), 2, torch.float64, device)
    else:
        (sdf, z, v), off = _rays(3, 4, 2, torch.float64, device), None
    R = 3 if off is None else len(counts)
    beta = torch.rand(R, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.3 + 0.2
    return sdf, z, beta.to(device), v, off


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_gradgradcheck(backend, device, packed):
    sdf, z, beta, v, off = _tiny(packed, device)
    ins = [t.clone().requires_grad_() for t in (sdf, z, beta, v)]

    def f(s, zz, b, vv):
        return npht.volume_composite(s, zz, b, vv, ray_offsets=off, last_delta=0.7, backend=backend)

    assert gradcheck(f, ins)
    assert gradgradcheck(f, ins)


@pytest.mark.parametrize("packed", [False, True])
def test_third_derivative_matches_reference(backend, device, packed):
    """The double backward (the reference's, by torch.func) is differentiable again: a third
    derivative through the op equals plain autograd's through the reference compositing
    (it was silently missing terms while the double backward detached its inputs)."""
    sdf, z, beta, v, off = _tiny(packed, device, counts=(3, 0, 2, 4))

    def third(fn):
        ins = [t.clone().requires_grad_() for t in (sdf, z, beta, v)]
        out = fn(*ins)
        loss = out[0].square().sum() + out[1].sum() + out[3].sin().sum()
        g1 = torch.autograd.grad(loss, ins[:2], create_graph=True)
        g2 = torch.autograd.grad(g1[0].square().sum() + g1[1].sum(), ins[:3], create_graph=True)
        return torch.autograd.grad(g2[0].sin().sum() + g2[2].square().sum(), ins, allow_unused=True,
                                   materialize_grads=True)

    got = third(lambda s, zz, b, vv: npht.volume_composite(s, zz, b, vv, ray_offsets=off, last_delta=0.7,
                                                            backend=backend))
    want = third(lambda s, zz, b, vv: _reference(s, zz, b, vv, off, 0.7))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    assert all(b.abs().sum() > 0 for b in want)


def test_weights_gradient_only(backend, device):
    """A loss on the weights alone (e.g. a weight regulariser) reaches sdf and beta."""
    sdf, z, _ = _rays(4, 6, 1, torch.float64, device)
    s = sdf.clone().requires_grad_()
    b = torch.tensor([0.1], dtype=torch.float64, device=device, requires_grad=True)
    w = npht.volume_composite(s, z, b, backend=backend).weights
    (w * w).sum().backward()
    s2 = sdf.clone().requires_grad_()
    b2 = b.detach().clone().requires_grad_()
    w2 = composite(s2, z, b2.reshape(()))[3]
    (w2 * w2).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


@pytest.mark.parametrize("packed", [False, True])
def test_opcheck(backend, device, packed):
    if packed:
        sdf, z, v, off = _packed([3, 0, 2], 2, torch.float64, device)
    else:
        (sdf, z, v), off = _rays(3, 4, 2, torch.float64, device), None
    R = 3
    beta = torch.full((R,), 0.1, dtype=torch.float64, device=device)
    args = (sdf.requires_grad_(), z, beta.requires_grad_(), v.requires_grad_(), off, 1e10, backend)
    torch.library.opcheck(torch.ops.npht.volume_composite, args)
    ups = (torch.randn(R, 2, dtype=torch.float64, device=device), torch.randn(R, dtype=torch.float64, device=device),
           None, None)
    torch.library.opcheck(torch.ops.npht.volume_composite_backward,
                          ups + (sdf.detach(), z, beta.detach(), v.detach(), off, 1e10, backend, True, True, True, True))


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_malformed_offsets_stay_in_bounds(backend):
    """Offsets beyond M or decreasing are clamped by every kernel (no out-of-bounds read;
    eager calls check them first, torch.compile'd ones do not), forward and backward."""
    dev = require_backend(backend)  # fails in CI when the extension is missing
    if backend == "triton":
        from npht.kernels import composite as raw
    else:
        raw = torch.ops.npht_C
    f64 = dict(dtype=torch.float64, device=dev)
    sdf = torch.randn(5, **f64)
    z = torch.sort(torch.rand(5, **f64)).values
    beta = torch.tensor([0.1], **f64)
    off = torch.tensor([0, 3, 2, 99], dtype=torch.long, device=dev)
    rendered, depth, opacity, w = raw.composite_fwd(sdf, z, beta, None, off, 1e10)
    assert torch.isfinite(depth).all() and opacity[1] == 0  # ray 1 is [3, 3): empty
    ref = composite(sdf[None, :3], z[None, :3], 0.1)
    torch.testing.assert_close(depth[0], ref[1][0])
    ref2 = composite(sdf[None, 2:], z[None, 2:], 0.1)  # ray 2 is [2, 5): 99 clamped to M
    torch.testing.assert_close(depth[2], ref2[1][0])
    gs, gz, gb, _ = raw.composite_bwd(None, torch.ones(3, **f64), None, None, sdf, z, beta, None, off,
                                      1e10, True, True, True, False)
    assert torch.isfinite(gs).all() and torch.isfinite(gz).all() and torch.isfinite(gb).all()


def test_errors():
    sdf, z, v = _rays(3, 4, 2, torch.float32, "cpu")
    with pytest.raises(ValueError, match="dense sdf must be"):
        npht.volume_composite(sdf.reshape(-1), z.reshape(-1), 0.1)
    with pytest.raises(ValueError, match="z must have the shape of sdf"):
        npht.volume_composite(sdf, z[:, :3], 0.1)
    with pytest.raises(TypeError, match="z must have the dtype"):
        npht.volume_composite(sdf, z.double(), 0.1)
    with pytest.raises(ValueError, match="values must be"):
        npht.volume_composite(sdf, z, 0.1, v[:, :3])
    with pytest.raises(TypeError, match="values must have the dtype"):
        npht.volume_composite(sdf, z, 0.1, v.double())
    with pytest.raises(ValueError, match=r"beta must be a number, 0-d, \[1\] or \[R\]"):
        npht.volume_composite(sdf, z, torch.ones(2))
    with pytest.raises(TypeError, match="beta must have the dtype"):
        npht.volume_composite(sdf, z, torch.ones(1, dtype=torch.float64))
    with pytest.raises(TypeError, match="sdf must be float32 or float64"):
        npht.volume_composite(sdf.half(), z.half(), 0.1)
    with pytest.raises(ValueError, match="ray_offsets must be a 1-D int64"):
        npht.volume_composite(sdf.reshape(-1), z.reshape(-1), 0.1, ray_offsets=torch.tensor([0, 12]).int())
    with pytest.raises(ValueError, match="packed sdf must be"):
        npht.volume_composite(sdf, z, 0.1, ray_offsets=torch.tensor([0, 12]))
    flat_s, flat_z = sdf.reshape(-1), z.reshape(-1)
    M = flat_s.shape[0]
    for bad in ([1, 3, M], [0, 3, M - 1], [0, 5, 3, M]):  # not from 0, not to M, falling
        with pytest.raises(ValueError, match="ray_offsets must rise from 0 to the sample count"):
            npht.volume_composite(flat_s, flat_z, 0.1, ray_offsets=torch.tensor(bad))
    with pytest.raises(ValueError, match="backend must be one of"):
        npht.volume_composite(sdf, z, 0.1, backend="metal")
    for bad in (0.0, -0.1, float("inf"), float("nan"), "0.1", [0.1], True):  # NaN / garbage depths before
        with pytest.raises(ValueError, match="beta must be a positive finite number or a tensor"):
            npht.volume_composite(sdf, z, bad)
    for bad in (-1.0, float("nan"), "1e10", None):
        with pytest.raises(ValueError, match="last_delta must be a non-negative number"):
            npht.volume_composite(sdf, z, 0.1, last_delta=bad)


def test_meta_tensors_and_empty_packed_reference():
    """Shapes on the meta device (the offsets' data check skipped there); no rays with a
    per-ray beta of shape [0] on the reference backend (torch.cat of nothing before)."""
    meta = npht.volume_composite(torch.zeros(5, device="meta"), torch.zeros(5, device="meta"), 0.1,
                                 torch.zeros(5, 2, device="meta"), ray_offsets=torch.tensor([0, 2, 5], device="meta"))
    assert [tuple(t.shape) for t in meta] == [(2, 2), (2,), (2,), (5,)]
    empty, off = torch.zeros(0), torch.zeros(1, dtype=torch.long)
    for backend in ("reference", "cpu"):
        out = npht.volume_composite(empty, empty, torch.zeros(0), torch.zeros(0, 3), ray_offsets=off, backend=backend)
        assert [tuple(t.shape) for t in out] == [(0, 3), (0,), (0,), (0,)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("packed", [False, True])
def test_backward_with_saved_weights(backend, device, dtype, packed):
    """The backward given the forward's weights (fewer transcendentals) equals the one that
    recomputes them, also for rays that end inside the surface (the last sample's delta of
    1e10 must not amplify the weights' rounding)."""
    from npht.ops import _backend

    K = _backend.kernels(backend, "composite")
    if packed:
        sdf, z, v, off = _packed([7, 0, 1, 30, 12], 3, dtype, device)
        last = off[1:] - 1
        sdf[last[off[1:] > off[:-1]]] = -1e-3  # rays ending just inside
        R = 5
    else:
        sdf, z, v = _rays(9, 30, 3, dtype, device)
        sdf[:4, -1] = -1e-3
        off, R = None, 9
    beta = torch.tensor([0.05], dtype=dtype, device=device)
    w = K.composite_fwd(sdf, z, beta, v, off, 1e10)[3]
    g = torch.Generator().manual_seed(2)
    ups = [torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
           for s in ((R, 3), (R,), (R,), tuple(sdf.shape))]
    with_w = K.composite_bwd(*ups, sdf, z, beta, v, off, 1e10, True, True, True, True, w)
    without = K.composite_bwd(*ups, sdf, z, beta, v, off, 1e10, True, True, True, True)
    for a, b in zip(with_w, without):
        scale = b.abs().max().clamp(min=1.0)
        torch.testing.assert_close(a / scale, b / scale, **TOL[dtype])


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_float32_alpha_accuracy(backend):
    """Rays with a finite last delta: weight = 1 - exp(-tau) = -expm1(-tau) with
    tau = sigma(sdf) * delta over the whole float range (1e-30 .. 50, through the density's
    exp), against float64 math on the same float32 inputs: a few ulp, relative, also where
    tau is tiny (no cancellation in 1 - exp(-tau)). Guards the CPU backend's own float
    exp/expm1 (csrc/include/npht/cpu_math.h) and the CUDA path, which share the per-sample
    math of csrc/include/npht/composite_math.h (|sdf| / beta rounded in float as modelled
    here; the reference's 1 - exp(-tau) loses tiny tau, Triton's |sdf| * (1 / beta) rounds
    the exponent differently)."""
    require_backend(backend)
    device = backend_device(backend)
    beta = 0.01
    # sigma = 0.5 exp(-sdf / beta) / beta for sdf >= 0: tau spans e^-69 .. 50 times delta
    sdf = torch.linspace(0.0, 0.69, 4001, dtype=torch.float64)
    sdf = torch.cat([sdf, -sdf[1:200]])  # and inside: sigma -> 1 / beta
    delta = torch.logspace(-16, 1, sdf.numel(), dtype=torch.float64)[torch.randperm(sdf.numel())]
    s32, d32 = sdf.float(), delta.float()
    out = npht.volume_composite(s32[:, None].to(device), torch.zeros(s32.numel(), 1, device=device), beta,
                                last_delta=1.0, backend=backend)
    # float64 math from the float32 exponent |sdf| / beta on (that rounding alone moves
    # exp(-x) by x * 6e-8 relative, up to 4e-6 at x = 69: conditioning, not error)
    s64 = s32.double()
    x32 = (s32.abs() / torch.tensor(beta, dtype=torch.float32)).double()
    e = torch.exp(-x32)
    sigma = torch.where(s64 >= 0, 0.5 * e, 1 - 0.5 * e) / beta
    want = -torch.expm1(-sigma)
    got = out.weights[:, 0].double().cpu()
    assert (want > 0).all() and (got > 0).all()
    rel = ((got - want).abs() / want).max().item()
    assert rel < 1e-6, rel  # ~8 float ulp: the density's exp and arithmetic, expm1
    # and with the deltas (tau = sigma * delta down to 1e-30)
    z = torch.stack([torch.zeros_like(d32), d32], 1)
    s2 = torch.stack([s32, torch.full_like(s32, 10.0)], 1)  # second sample: no density
    out2 = npht.volume_composite(s2.to(device), z.to(device), beta, last_delta=1.0, backend=backend)
    want2 = -torch.expm1(-sigma * d32.double())
    got2 = out2.weights[:, 0].double().cpu()
    keep = want2 > 1e-37  # float32 normal range
    rel2 = ((got2[keep] - want2[keep]).abs() / want2[keep]).max().item()
    assert rel2 < 1e-6, rel2


def test_float32_extreme_sdf_values(backend, device):
    """Huge |sdf| / beta (the density's exp underflows to 0 or saturates at 1 / beta), inf and
    NaN: the outputs match the reference element for element, NaN where it has NaN."""
    sdf = torch.tensor([[1e30, 50.0, 1e-3, -1e-3, -50.0, -1e30],
                        [float("inf"), 0.3, 0.0, -0.3, float("-inf"), 1.0],
                        [0.5, float("nan"), -0.5, 0.2, 0.1, 0.0]], dtype=torch.float32)
    z = torch.linspace(0.5, 3.0, 6, dtype=torch.float32).expand(3, 6).contiguous()
    got = npht.volume_composite(sdf.to(device), z.to(device), 0.01, backend=backend)
    want = composite(sdf.double(), z.double(), 0.01)
    for a, b in zip(got[1:], want[1:]):
        a = a.double().cpu()
        assert torch.equal(torch.isnan(a), torch.isnan(b)), (a, b)
        ok = ~torch.isnan(b)
        torch.testing.assert_close(a[ok], b[ok], rtol=1e-5, atol=1e-6)


def test_zero_channel_values(backend, device):
    """values with K = 0 channels that require grad: rendered is [R, 0], the backward
    gives values a gradient of their own shape (empty), sdf its usual one."""
    sdf, z, _ = _rays(4, 5, 1, torch.float64, device)
    s = sdf.clone().requires_grad_()
    v = torch.zeros(4, 5, 0, dtype=torch.float64, device=device, requires_grad=True)
    out = npht.volume_composite(s, z, 0.1, v, backend=backend)
    assert out.rendered.shape == (4, 0)
    out.depth.sum().backward()
    assert v.grad is not None and v.grad.shape == (4, 5, 0)
    s2 = sdf.clone().requires_grad_()
    composite(s2, z, 0.1)[1].sum().backward()
    torch.testing.assert_close(s.grad, s2.grad)


@pytest.mark.parametrize("packed", [False, True])
def test_unread_results_reach_the_backward_as_none(backend, device, packed):
    """A loss on the rendered values alone hands the fused backward None for the depth,
    opacity and per-sample weights (no zero-filled tensors to read), with the same
    gradients; so does the double backward for unread gradients."""
    if packed:
        sdf, z, v, off = _packed([2, 3, 1], 3, torch.float64, device)
    else:
        (sdf, z, v), off = _rays(3, 4, 3, torch.float64, device), None
    beta = torch.tensor([0.05], dtype=torch.float64, device=device).requires_grad_()
    sdf.requires_grad_()
    out = npht.volume_composite(sdf, z, beta, v, ray_offsets=off, backend=backend)
    with OpCalls() as rec:
        g_sdf, g_beta = torch.autograd.grad(out.rendered.square().sum(), (sdf, beta), create_graph=True)
        (gg,) = torch.autograd.grad(g_sdf.square().sum(), sdf, retain_graph=True)
    # the first backward, then again through the rendered values inside the double backward
    bwds = [a for f, a in rec.calls if f == "npht.volume_composite_backward.default"]
    assert len(bwds) == 2
    for bwd in bwds:
        assert bwd[0] is not None and bwd[1] is None and bwd[2] is None and bwd[3] is None
    ref = npht.volume_composite(sdf, z, beta, v, ray_offsets=off, backend="reference")
    want = torch.autograd.grad(ref.rendered.square().sum(), (sdf, beta), create_graph=True)
    torch.testing.assert_close(g_sdf, want[0], **TOL[torch.float64])
    torch.testing.assert_close(g_beta, want[1], **TOL[torch.float64])
    torch.testing.assert_close(gg, torch.autograd.grad(want[0].square().sum(), sdf)[0], **TOL[torch.float64])


def test_non_finite_values_documented(backend, device):
    """A NaN value on a ray: the fused backends' backward (ray total minus prefix) gives NaN
    sdf gradients on every sample of that ray but the last; the reference only on the
    samples up to the bad one. Other rays stay finite everywhere."""
    sdf = torch.tensor([[0.3, 0.1, -0.05, -0.2, -0.4]] * 2, dtype=torch.float64, device=device).requires_grad_(True)
    z = torch.linspace(1, 2, 5, dtype=torch.float64, device=device)[None].expand(2, 5).contiguous()
    v = torch.randn(2, 5, 3, dtype=torch.float64).to(device)
    v[0, 1, 0] = float("nan")
    out = npht.volume_composite(sdf, z, 0.1, v, backend=backend)
    (g,) = torch.autograd.grad(out.rendered.sum(), sdf)
    nan = torch.isnan(g[0]).tolist()
    assert nan == ([True, True, False, False, False] if backend == "reference" else [True] * 4 + [False])
    assert torch.isfinite(g[1]).all()
