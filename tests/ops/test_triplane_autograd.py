"""Float64 gradcheck / gradgradcheck, torch.library.opcheck of the three registered ops,
and torch.compile parity."""

import itertools

import pytest
import torch

import npht
from _backends import OpCalls
from npht.reference import triplane_sample as reference


def tiny_inputs(device, B=1, N=5, C=2, H=3, W=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, dtype=torch.float64, generator=gen).to(device)
    # inside and just outside [-1, 1]; random, so finite differences do not straddle the
    # kinks at pixel borders
    points = ((torch.rand(B, N, 3, dtype=torch.float64, generator=gen) * 2 - 1) * 1.15).to(device)
    return planes.requires_grad_(True), points.requires_grad_(True)


CASES = list(itertools.product(("sum", "mean", "concat"), ("zeros", "border"), (False, True)))


def fast(backend):
    """gradcheck's fast mode (random projections of the Jacobians, a few evaluations instead
    of one per input element) for Triton under its CPU interpreter, where a launch costs
    ~0.1 s; the slow mode on every other backend."""
    return backend == "triton" and not torch.cuda.is_available()


@pytest.mark.parametrize("aggregate,padding,align_corners", CASES)
def test_gradcheck_and_gradgradcheck(backend, device, aggregate, padding, align_corners):
    planes, points = tiny_inputs(device)

    def fn(p, x):
        return npht.triplane_sample(p, x, aggregate=aggregate, padding_mode=padding,
                                    align_corners=align_corners, backend=backend)

    f = fast(backend)
    assert torch.autograd.gradcheck(fn, (planes, points), eps=1e-6, atol=1e-7, fast_mode=f)
    assert torch.autograd.gradgradcheck(fn, (planes, points), eps=1e-6, atol=1e-6, fast_mode=f)


def test_gradgradcheck_eg3d_projection_channels_last(backend, device):
    planes, points = tiny_inputs(device, B=2, N=4, C=3, H=4, W=3)
    planes_cl = planes.detach().permute(0, 1, 3, 4, 2).contiguous().requires_grad_(True)

    def fn(p, x):
        return npht.triplane_sample(p, x, aggregate="mean", projection="eg3d", box_warp=1.7,
                                    channels_last=True, backend=backend)

    assert torch.autograd.gradgradcheck(fn, (planes_cl, points), eps=1e-6, atol=1e-6,
                                        fast_mode=fast(backend))


def test_reference_oracle_gradgradcheck():
    """The oracle's own second derivative (grid_sample's double backward in this torch)."""
    planes, points = tiny_inputs("cpu")
    for padding, align in itertools.product(("zeros", "border"), (False, True)):
        assert torch.autograd.gradgradcheck(
            lambda p, x: reference(p, x, padding_mode=padding, align_corners=align),
            (planes, points), eps=1e-6, atol=1e-6)


def _op_args(device, backend, dtype=torch.float32, aggregate=1):
    B, N, C, H, W = 2, 9, 3, 4, 5
    planes = torch.randn(B, 3, H, W, C, device=device, dtype=dtype)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    points = (torch.rand(B, N, 3, device=device, dtype=pdt) * 2 - 1) * 1.2
    Cout = 3 * C if aggregate == 2 else C
    grad_out = torch.randn(B, N, Cout, device=device, dtype=dtype)
    common = ([0, 1, 1, 2, 0, 2], 1.0, aggregate, 0, False, backend)
    return planes, points, grad_out, common


@pytest.mark.parametrize("aggregate", [0, 2])
def test_opcheck(backend, device, aggregate):
    planes, points, grad_out, common = _op_args(device, backend, aggregate=aggregate)
    fwd_args = (planes.requires_grad_(True), points.requires_grad_(True), *common)
    torch.library.opcheck(torch.ops.npht.triplane_sample.default, fwd_args)
    bwd_args = (grad_out.requires_grad_(True), planes, points, *common, True, True)
    torch.library.opcheck(torch.ops.npht.triplane_sample_backward.default, bwd_args)
    gg_planes = torch.randn_like(planes)
    gg_points = torch.randn_like(points)
    for ggp, ggx in [(gg_planes, gg_points), (None, gg_points), (gg_planes, None)]:
        args = (ggp, ggx, grad_out.detach(), planes.detach(), points.detach(), *common, True, True, True)
        torch.library.opcheck(torch.ops.npht.triplane_sample_double_backward.default, args)


def test_opcheck_not_needed_outputs(backend, device):
    planes, points, grad_out, common = _op_args(device, backend)
    for need in [(True, False), (False, True)]:
        gp, gx = torch.ops.npht.triplane_sample_backward(grad_out, planes, points, *common, *need)
        assert (gp.numel() > 0) == need[0] and (gx.numel() > 0) == need[1]
        torch.library.opcheck(torch.ops.npht.triplane_sample_backward.default,
                              (grad_out, planes, points, *common, *need))


def test_third_derivative_is_a_clear_error(backend, device):
    planes, points = tiny_inputs(device)
    out = npht.triplane_sample(planes, points, backend=backend)
    (gx,) = torch.autograd.grad(out.sum(), points, create_graph=True)
    (hx,) = torch.autograd.grad((gx ** 2).sum(), points, create_graph=True)
    with pytest.raises(NotImplementedError, match="differentiable twice in reverse mode"):
        torch.autograd.grad(hx.sum(), points)


@pytest.mark.slow
def test_torch_compile_parity(backend, device):
    """A compiled function using the op gives eager's values and gradients."""
    torch._dynamo.reset()
    planes = torch.randn(2, 3, 8, 6, 7, device=device, requires_grad=True)
    points = ((torch.rand(2, 50, 3, device=device) * 2 - 1) * 1.1).requires_grad_(True)
    lin = torch.nn.Linear(8, 1).to(device)

    def f(p, x):
        feat = npht.triplane_sample(p, x, aggregate="sum", backend=backend)
        return torch.nn.functional.softplus(lin(feat), beta=100).sum()

    eager = f(planes, points)
    g_eager = torch.autograd.grad(eager, (planes, points))
    compiled = torch.compile(f, fullgraph=True)
    got = compiled(planes, points)
    g_got = torch.autograd.grad(got, (planes, points))
    torch.testing.assert_close(got, eager)
    for a, b in zip(g_got, g_eager):
        torch.testing.assert_close(a, b)


# ---- the backward computes what the call uses -------------------------------------


def test_decoder_gradient_asks_the_op_for_what_it_uses():
    """The eikonal path of TriplaneDecoder.sdf_and_gradient: the first backward computes
    the points' gradient only (no planes-sized scatter), the double backward gets None for
    the unused planes-gradient output (no zero-filled planes) and skips the points (a leaf
    nobody asks about), the loss's backward skips them too, and the fused MLP's saved
    pre-activations get no zero-filled gradients."""
    from npht.models.decoder import TriplaneDecoder

    torch.manual_seed(0)
    planes = torch.randn(1, 3, 8, 16, 16, requires_grad=True)
    points = (torch.rand(1, 50, 3) * 2 - 1).requires_grad_()
    dec = TriplaneDecoder(feature_dim=8, hidden=32)
    with OpCalls() as rec:
        sdf, n = dec.sdf_and_gradient(planes, points)
        loss = ((n.norm(dim=-1) - 1) ** 2).mean() + sdf.abs().mean()
        grads = torch.autograd.grad(loss, [planes, *dec.parameters()])
    bwd = [a for f, a in rec.calls if f == "npht.triplane_sample_backward.default"]
    assert [a[-2:] for a in bwd] == [(False, True), (True, False)]  # sdf_and_gradient, then the loss
    (bwd2,) = [a for f, a in rec.calls if f == "npht.triplane_sample_double_backward.default"]
    assert bwd2[0] is None and bwd2[1].shape == (1, 50, 3) and bwd2[-3:] == (True, True, False)
    zeros = [a for f, a in rec.calls if f.startswith("aten.zeros") and 32 in tuple(a[0])]
    assert zeros == []
    # and the gradients are autograd's
    sdf_r, n_r = dec.sdf_and_gradient(planes, points, fused=False)
    loss_r = ((n_r.norm(dim=-1) - 1) ** 2).mean() + sdf_r.abs().mean()
    for a, b in zip(grads, torch.autograd.grad(loss_r, [planes, *dec.parameters()])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_double_backward_gets_none_for_an_unused_planes_gradient(backend, device):
    """A call that asks for both first gradients, then a loss on the points' one only: the
    double backward gets None for the planes' gradient, not a zero-filled planes-sized
    tensor to read."""
    planes, points = tiny_inputs(device, N=6, C=2)
    feats = npht.triplane_sample(planes, points, backend=backend)
    gp, gx = torch.autograd.grad(feats.square().sum(), (planes, points), create_graph=True)
    assert gp.shape == planes.shape
    with OpCalls() as rec:
        torch.autograd.grad(gx.square().sum(), planes)
    (bwd2,) = [a for f, a in rec.calls if f == "npht.triplane_sample_double_backward.default"]
    assert bwd2[0] is None and bwd2[1].shape == points.shape


@pytest.mark.parametrize("planes_kind", ["leaf", "non-leaf"])
def test_backward_computes_only_the_gradients_the_call_asks_for(backend, device, planes_kind):
    """torch.autograd.grad(features, points) does not make the planes' gradient (the
    engine says the planes' node will not run), whether the planes are a leaf or come from
    a generator; .backward() and a request for both get both; values as the reference's."""
    planes0, points = tiny_inputs(device, N=6, C=2)

    def run(ask, backend_):
        planes = planes0 if planes_kind == "leaf" else planes0 * 1.5
        feats = npht.triplane_sample(planes, points, backend=backend_)
        loss = (feats * torch.arange(2, dtype=feats.dtype, device=device)).sum()
        if ask == "backward":
            planes0.grad = points.grad = None
            loss.backward()
            return planes0.grad, points.grad
        return torch.autograd.grad(loss, {"points": [points], "both": [planes0, points]}[ask])

    for ask, want_flags in (("points", (False, True)), ("both", (True, True)), ("backward", (True, True))):
        with OpCalls() as rec:
            got = run(ask, backend)
        (bwd,) = [a for f, a in rec.calls if f == "npht.triplane_sample_backward.default"]
        assert bwd[-2:] == want_flags, ask
        for a, b in zip(got, run(ask, "reference")):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
