"""npht.triplane_sample: every backend against the pure-PyTorch reference (forward, first
and second derivatives, random upstream gradients), odd shapes, dtypes, edge cases."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import npht
from npht.reference import eg3d_sample_from_planes, gather_bilinear, grid_sample_has_double_backward
from npht.reference import triplane_sample as reference

AGGREGATES = ("sum", "mean", "concat")
PADDINGS = ("zeros", "border")

# Per-dtype tolerances, relative to the largest magnitude of the expected tensor.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


def assert_match(actual, expected, dtype, what=""):
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.double(), expected.double()
    nan_a, nan_e = a.isnan(), e.isnan()
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
    a, e = a.nan_to_num(), e.nan_to_num()
    scale = max(1.0, e.abs().max().item()) if e.numel() else 1.0
    tol = TOL[dtype] * scale
    err = (a - e).abs().max().item() if e.numel() else 0.0
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g}"


def make_inputs(device, dtype, B=2, N=37, C=5, H=6, W=9, channels_last=False, spread=1.3):
    planes = torch.randn(B, 3, C, H, W, dtype=torch.float32, device=device).to(dtype)
    if channels_last:
        planes = planes.permute(0, 1, 3, 4, 2).contiguous()
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    points = (torch.rand(B, N, 3, dtype=pdt, device=device) * 2 - 1) * spread
    return planes, points


def derivatives(fn, planes, points, seed=1):
    """Output, first derivatives and second derivatives (w.r.t. grad_out, planes, points)
    of fn for random upstream gradients."""
    gen = torch.Generator().manual_seed(seed)
    P = planes.detach().requires_grad_(True)
    X = points.detach().requires_grad_(True)
    out = fn(P, X)
    go = torch.randn(out.shape, generator=gen).to(out).requires_grad_(True)
    gP, gX = torch.autograd.grad(out, (P, X), go, create_graph=True)
    gg_planes = torch.randn(gP.shape, generator=gen).to(gP)
    gg_points = torch.randn(gX.shape, generator=gen).to(gX)
    total = (gP.float() * gg_planes.float()).sum() + (gX * gg_points).sum()
    hG, hP, hX = torch.autograd.grad(total, (go, P, X))
    return {"out": out, "grad_planes": gP, "grad_points": gX, "gg_grad_out": hG,
            "gg_planes": hP, "gg_points": hX}


def compare_with_reference(backend, planes, points, dtype, **kw):
    got = derivatives(lambda P, X: npht.triplane_sample(P, X, backend=backend, **kw), planes, points)
    exp = derivatives(lambda P, X: reference(P, X, **kw), planes, points)
    for name in exp:
        assert_match(got[name], exp[name], dtype, name)
    return got


@pytest.mark.parametrize(
    "aggregate,padding,align_corners,channels_last,projection",
    list(itertools.product(AGGREGATES, PADDINGS, (False, True), (False, True), ("npht", "eg3d"))),
)
def test_matches_reference(backend, device, aggregate, padding, align_corners, channels_last, projection):
    planes, points = make_inputs(device, torch.float32, channels_last=channels_last)
    compare_with_reference(
        backend, planes, points, torch.float32, aggregate=aggregate, padding_mode=padding,
        align_corners=align_corners, channels_last=channels_last, projection=projection,
        box_warp=1.6 if projection == "eg3d" else 2.0,
    )


@pytest.mark.parametrize(
    "B,N,C,H,W",
    [
        (1, 1, 4, 5, 5),  # a single point
        (1, 1151, 8, 16, 16),  # not a multiple of any block size
        (2, 50, 5, 7, 13),  # H != W
        (2, 40, 1, 6, 6),  # C = 1
        (1, 60, 33, 6, 5),  # C = 33: not a multiple of 8 or 32
        (1, 30, 70, 4, 4),  # C > 64: channel blocks loop
        (1, 25, 3, 1, 1),  # 1x1 planes
        (1, 25, 3, 1, 6),  # one row
    ],
)
@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_odd_shapes(backend, device, B, N, C, H, W, aggregate):
    planes, points = make_inputs(device, torch.float32, B=B, N=N, C=C, H=H, W=W)
    for align_corners, padding in [(False, "zeros"), (True, "border")]:
        compare_with_reference(backend, planes, points, torch.float32, aggregate=aggregate,
                               align_corners=align_corners, padding_mode=padding)


@pytest.mark.parametrize("wrt", ["both", "planes", "points"])
@pytest.mark.parametrize("aggregate", ["mean", "concat"])
def test_first_backward_each_input(backend, device, wrt, aggregate):
    """Gradients to one input or both (the CPU backend fuses the two into one pass over
    the points when both are needed, in blocks of 2^15 points: N spans three blocks)."""
    N = 2 ** 16 + 37 if backend in ("cpu", "cuda") else 301
    planes, points = make_inputs(device, torch.float32, B=2, N=N, C=3, H=5, W=7)
    gen = torch.Generator().manual_seed(3)
    needs = ("planes", "points") if wrt == "both" else (wrt,)
    grads = {}
    for name, fn in [("npht", lambda P, X: npht.triplane_sample(P, X, backend=backend, aggregate=aggregate)),
                     ("ref", lambda P, X: reference(P, X, aggregate=aggregate))]:
        P = planes.detach().requires_grad_("planes" in needs)
        X = points.detach().requires_grad_("points" in needs)
        out = fn(P, X)
        if name == "npht":
            go = torch.randn(out.shape, generator=gen).to(out)
        grads[name] = torch.autograd.grad(out, [{"planes": P, "points": X}[n] for n in needs], go)
    for n, a, e in zip(needs, grads["npht"], grads["ref"]):
        assert_match(a, e, torch.float32, f"grad_{n}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("aggregate", AGGREGATES)
def test_dtypes(backend, device, dtype, aggregate):
    planes, points = make_inputs(device, dtype, N=45, C=6)
    got = compare_with_reference(backend, planes, points, dtype, aggregate=aggregate)
    assert got["out"].dtype == dtype
    assert got["grad_planes"].dtype == dtype
    assert got["grad_points"].dtype == points.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_planes_accumulate_in_float32(backend, device, dtype, channels_last):
    """float16/bfloat16 planes: the op computes in float32 and rounds once. Many points per
    texel (N=6000 on 4x5 planes) make a plane gradient accumulated in the half type many
    ulps off; the point gradient (float32) must match float32 math to float32 tolerance."""
    gen = torch.Generator().manual_seed(3)
    planes16 = torch.randn(2, 3, 3, 4, 5, generator=gen).to(device=device, dtype=dtype)
    points = ((torch.rand(2, 6000, 3, generator=gen) * 2 - 1) * 1.1).to(device)
    if channels_last:
        planes16 = planes16.permute(0, 1, 3, 4, 2).contiguous()
    planes32 = planes16.float()
    outs, grads = {}, {}
    for name, p in (("half", planes16), ("float", planes32)):
        P, X = p.clone().requires_grad_(True), points.clone().requires_grad_(True)
        out = npht.triplane_sample(P, X, aggregate="mean", backend=backend)
        # the same upstream gradient, representable in the half type
        go = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(device=device, dtype=dtype)
        outs[name] = out
        grads[name] = torch.autograd.grad(out, (P, X), go.to(out.dtype))
    assert outs["half"].dtype == dtype and grads["half"][0].dtype == dtype
    # rounded once from float32 math: within one ulp of the half type (the float32 results of
    # different backends may differ in their last bits, which can move a rounding boundary)
    for what, a, e in (("out", outs["half"], outs["float"]), ("grad_planes", grads["half"][0], grads["float"][0])):
        e16 = e.to(dtype)
        ulp = (torch.nextafter(e16.abs(), torch.tensor(float("inf"), dtype=dtype, device=device)) - e16.abs()).float()
        err = (a.float() - e16.float()).abs()
        assert (err <= ulp).all(), f"{what}: {int((err > ulp).sum())} elements more than one ulp off"
        if backend in ("cpu", "reference"):
            assert torch.equal(a, e16), what  # same float32 math, one rounding: bitwise
    assert grads["half"][1].dtype == torch.float32
    torch.testing.assert_close(grads["half"][1], grads["float"][1], rtol=1e-5, atol=1e-5)


def test_reference_is_grid_sample():
    """The oracle itself: three F.grid_sample calls at the documented projections."""
    planes, points = make_inputs("cpu", torch.float64)
    for projection, box_warp in [("npht", 2.0), ("eg3d", 1.5), (((2, 1), (0, 0), (1, 2)), 3.0)]:
        axes = npht.resolve_projection(projection)
        for align_corners, padding in itertools.product((False, True), PADDINGS):
            feats = []
            for k, (u, v) in enumerate(axes):
                grid = torch.stack([points[..., u], points[..., v]], -1)[:, None] * (2 / box_warp)
                f = F.grid_sample(planes[:, k], grid, align_corners=align_corners, padding_mode=padding)
                feats.append(f[:, :, 0].transpose(1, 2))
            kw = dict(projection=projection, box_warp=box_warp, align_corners=align_corners,
                      padding_mode=padding)
            torch.testing.assert_close(reference(planes, points, **kw), sum(feats))
            torch.testing.assert_close(reference(planes, points, aggregate="mean", **kw), sum(feats) / 3)
            torch.testing.assert_close(reference(planes, points, aggregate="concat", **kw), torch.cat(feats, -1))


@pytest.mark.parametrize("align_corners", (False, True))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("size", [(6, 9), (1, 5), (4, 1)])
def test_gather_impl_is_grid_sample(align_corners, padding, size):
    """The oracle's gather path (used where grid_sample has no double backward) gives
    grid_sample's values and first derivatives, and has its own second derivatives."""
    H, W = size
    gen = torch.Generator().manual_seed(3)
    plane = torch.randn(2, 3, H, W, dtype=torch.float64, generator=gen, requires_grad=True)
    grid = ((torch.rand(2, 41, 2, dtype=torch.float64, generator=gen) * 2 - 1) * 1.4).requires_grad_()
    got = gather_bilinear(plane, grid, padding, align_corners)
    exp = F.grid_sample(plane, grid[:, None], padding_mode=padding,
                        align_corners=align_corners)[:, :, 0].transpose(1, 2)
    torch.testing.assert_close(got, exp)
    go = torch.randn_like(exp)
    torch.testing.assert_close(torch.autograd.grad(got, (plane, grid), go, retain_graph=True),
                               torch.autograd.grad(exp, (plane, grid), go, retain_graph=True))
    assert torch.autograd.gradgradcheck(
        lambda p, g: gather_bilinear(p, g, padding, align_corners),
        (plane[:1, :2].detach().requires_grad_(), grid[:1, :6].detach().requires_grad_()))
    if grid_sample_has_double_backward():
        (gg,) = torch.autograd.grad(got, grid, go, create_graph=True)
        (ge,) = torch.autograd.grad(exp, grid, go, create_graph=True)
        v = torch.randn_like(gg)
        torch.testing.assert_close(torch.autograd.grad(gg, plane, v),
                                   torch.autograd.grad(ge, plane, v))


def test_eg3d_drop_in(backend, device):
    """EG3D's sample_from_planes + mean(1) and npht with projection="eg3d" agree."""
    # EG3D's generate_planes(): plane axes as rows
    plane_axes = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                               [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                               [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)
    assert npht.projection_from_plane_axes(plane_axes) == npht.PROJECTIONS["eg3d"]
    planes, _ = make_inputs(device, torch.float32, B=2, C=8, H=12, W=12)
    coords = (torch.rand(2, 300, 3, device=device) - 0.5) * 1.1  # box_warp 1: [-0.55, 0.55]
    expected = eg3d_sample_from_planes(plane_axes.to(device), planes, coords, box_warp=1.0).mean(1)
    got = npht.triplane_sample(planes, coords, aggregate="mean", projection="eg3d", box_warp=1.0,
                               backend=backend)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_empty_points(backend, device):
    planes, _ = make_inputs(device, torch.float32, C=4)
    planes.requires_grad_(True)
    points = torch.zeros(2, 0, 3, device=device, requires_grad=True)
    for aggregate, C in [("sum", 4), ("concat", 12)]:
        out = npht.triplane_sample(planes, points, aggregate=aggregate, backend=backend)
        assert out.shape == (2, 0, C)
        gP, gX = torch.autograd.grad(out.sum(), (planes, points))
        assert gP.shape == planes.shape and torch.count_nonzero(gP) == 0
        assert gX.shape == (2, 0, 3)


@pytest.mark.parametrize("padding", PADDINGS)
def test_outside_and_nonfinite_points(backend, device, padding):
    """Documented behaviour: +-inf follows padding_mode; NaN gives NaN features from the
    planes that read it and no gradient from that (point, plane) pair."""
    planes, _ = make_inputs(device, torch.float32, B=1, C=3, H=5, W=7)
    nan, inf = float("nan"), float("inf")
    pts = torch.tensor([[[0.1, 0.2, 0.3],   # inside
                         [inf, 0.2, 0.3],   # x = +inf: planes xy and xz read it
                         [0.1, -inf, 0.3],  # y = -inf: planes xy and yz
                         [3.0, -5.0, 0.3],  # far outside, finite
                         [0.1, 0.2, nan]]], device=device)  # z NaN: planes yz and xz
    kw = dict(aggregate="concat", padding_mode=padding, align_corners=False)
    compare_with_reference(backend, planes, pts, torch.float32, **kw)
    out = npht.triplane_sample(planes, pts, backend=backend, **kw).view(5, 3, 3)
    assert torch.isfinite(out[:4]).all()
    assert torch.isfinite(out[4, 0]).all() and out[4, 1:].isnan().all()
    if padding == "zeros":
        assert (out[1, [0, 2]] == 0).all() and (out[2, [0, 1]] == 0).all() and (out[3] == 0).all()
    else:  # border: +inf x reads the last column of plane xy at y = 0.2
        edge = npht.triplane_sample(planes, torch.tensor([[[1.0, 0.2, 0.3]]], device=device),
                                    backend=backend, **kw).view(3, 3)
        torch.testing.assert_close(out[1, 0], edge[0])
    P = planes.detach().requires_grad_(True)
    X = pts.detach().requires_grad_(True)
    o = npht.triplane_sample(P, X, backend=backend, **kw)
    gP, gX = torch.autograd.grad(o.nan_to_num().sum(), (P, X))
    assert torch.isfinite(gP).all() and torch.isfinite(gX).all()
    # An infinite or far-away coordinate gets no gradient (outside: zeros; border: clamped)
    assert gX[0, 1, 0] == 0 and gX[0, 2, 1] == 0 and (gX[0, 3, :2] == 0).all()
    # z is NaN: planes yz and xz give nothing, plane xy still differentiates x and y
    assert gX[0, 4, 2] == 0 and (gX[0, 4, :2] != 0).all()


def test_points_outside_match_grid_sample_exactly(backend, device):
    """Outside [-1, 1] the padding semantics are F.grid_sample's (zeros and border)."""
    planes, _ = make_inputs(device, torch.float32, B=1, C=2, H=4, W=4)
    line = torch.linspace(-1.6, 1.6, 161, device=device)
    pts = torch.stack([line, line.flip(0), torch.zeros_like(line)], -1)[None]
    for padding, align in itertools.product(PADDINGS, (False, True)):
        kw = dict(padding_mode=padding, align_corners=align)
        torch.testing.assert_close(npht.triplane_sample(planes, pts, backend=backend, **kw),
                                   reference(planes, pts, **kw), rtol=1e-5, atol=1e-6)


def test_eikonal_step_matches_reference(backend, device):
    """A small SDF model (tri-plane + MLP, softplus) with an eikonal loss: the parameter
    gradients through the double backward equal the reference's."""
    planes0, points = make_inputs(device, torch.float32, B=2, N=64, C=8, H=10, W=10)
    torch.manual_seed(3)
    mlp = torch.nn.Sequential(torch.nn.Linear(8 + 3, 32), torch.nn.Softplus(beta=100),
                              torch.nn.Linear(32, 1)).to(device)

    def grads(sample):
        planes = planes0.detach().requires_grad_(True)
        x = points.detach().requires_grad_(True)
        sdf = mlp(torch.cat([sample(planes, x), x], -1)).squeeze(-1)
        (n,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
        loss = ((n.norm(dim=-1) - 1) ** 2).mean() + sdf.abs().mean()
        params = [planes, *mlp.parameters()]
        return torch.autograd.grad(loss, params)

    got = grads(lambda p, x: npht.triplane_sample(p, x, backend=backend))
    exp = grads(lambda p, x: reference(p, x))
    for g, e in zip(got, exp):
        # Float32 sums in another order (GPU atomics, the gather reference): an element that
        # is a near-cancelling sum can differ by ~1e-5 absolutely, so compare relative to the
        # tensor's scale, and the whole tensor by its norm.
        scale = e.abs().max().item()
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * scale)
        assert ((g - e).norm() / e.norm()).item() < 2e-5


def test_build_info():
    info = npht.build_info()
    for key in ("cpu", "cuda", "triton", "reference", "torch"):
        assert key in info
    assert info["reference"] is True
    assert info["cpu"] is True, info.get("compiled_error")


def test_cpu_gradients_do_not_depend_on_the_thread_count():
    """The CPU backward fuses both gradients into one pass per plane when there are at
    least as many planes (B * 3) as threads, and runs two passes otherwise (the double
    backward's plane scatter: one task per plane whatever the threads): same operations
    in the same order, so bitwise the same gradients."""
    gen = torch.Generator().manual_seed(0)
    C = 8
    P = torch.randn(1, 3, C, 17, 13, generator=gen).requires_grad_()
    X = ((torch.rand(1, 5000, 3, generator=gen) * 2.2 - 1.1)).requires_grad_()
    go = torch.randn(1, 5000, C, generator=gen)
    gg = torch.randn(1, 5000, 3, generator=gen)
    threads = torch.get_num_threads()
    got = []
    try:
        for n in (1, 4, 7):  # 3 planes >= 1 thread: fused; 3 < 4, 7: two passes
            torch.set_num_threads(n)
            g_planes, g_points = torch.autograd.grad(npht.triplane_sample(P, X, backend="cpu"), (P, X), go,
                                                     create_graph=True)
            got.append((g_planes, g_points) + torch.autograd.grad(g_points, (P, X), gg))
    finally:
        torch.set_num_threads(threads)
    for other in got[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got[0], other))


def test_triton_block_override(monkeypatch):
    """NPHT_TRIPLANE_BLOCKS (tools/tune_triplane.py) picks the Triton kernels' GPU blocks;
    values and gradients unchanged; a malformed value is a clear error."""
    from _backends import require_backend

    dev = require_backend("triton")
    from npht.kernels import triplane as kt

    monkeypatch.setenv("NPHT_TRITON_GPU_BLOCKS", "1")  # the GPU's choice, even when interpreting
    default = kt._blocks(1000, 32)
    monkeypatch.setenv("NPHT_TRIPLANE_BLOCKS", "32,8,2")
    assert kt._blocks(1000, 32) == (32, 8, 2) != default
    g = torch.Generator().manual_seed(0)
    planes = (torch.randn(2, 3, 11, 9, 7, generator=g)).to(dev).requires_grad_()
    points = (torch.rand(2, 77, 3, generator=g) * 2.2 - 1.1).to(dev).requires_grad_()
    out = npht.triplane_sample(planes, points, backend="triton")
    want = reference(planes, points)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    go = torch.randn_like(out)
    got = torch.autograd.grad(out, (planes, points), go)
    ref = torch.autograd.grad(want, (planes, points), go)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for bad in ("32,8", "8,8,4", "32,3,4", "32,8,x"):
        monkeypatch.setenv("NPHT_TRIPLANE_BLOCKS", bad)
        with pytest.raises(ValueError, match="NPHT_TRIPLANE_BLOCKS"):
            kt._blocks(1000, 32)
