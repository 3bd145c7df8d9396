"""npht.softplus_mlp_with_grad vs the autograd reference: values, input gradients and the
backward of a loss on both (the eikonal double backward), in every mode."""

import pytest
import torch

import npht
from npht.reference import softplus_mlp_with_grad as reference


def make_mlp(dims, dtype=torch.float64, scale=1.0, seed=0, requires_grad=True):
    gen = torch.Generator().manual_seed(seed)
    weights = [(torch.randn(dims[i + 1], dims[i], generator=gen, dtype=dtype) * scale / dims[i] ** 0.5)
               for i in range(len(dims) - 1)]
    biases = [torch.randn(dims[i + 1], generator=gen, dtype=dtype) * 0.1 for i in range(len(dims) - 1)]
    return [w.requires_grad_(requires_grad) for w in weights], [b.requires_grad_(requires_grad) for b in biases]


def loss_grads(fn, x, weights, biases, gy, gg):
    y, g = fn()
    terms = []
    if gy is not None:
        terms.append((y * gy).sum())
    if gg is not None:
        terms.append((g * gg).sum())
    inputs = [t for t in (x, *weights, *biases) if t.requires_grad]
    # (the output bias does not reach g: zero, not "unused")
    return y, g, torch.autograd.grad(sum(terms), inputs, allow_unused=True, materialize_grads=True)


MODES = [dict(), dict(chunk_size=97), dict(checkpoint=True), dict(checkpoint=True, chunk_size=97)]


@pytest.mark.parametrize("mode", MODES, ids=["saved", "saved-chunked", "checkpoint", "checkpoint-chunked"])
@pytest.mark.parametrize("dims", [(7, 16, 16, 16, 1), (3, 5, 1), (35, 33, 17, 1)], ids=str)
@pytest.mark.parametrize("lead", [(1,), (1151,), (2, 3, 50)], ids=str)
@pytest.mark.parametrize("upstream", ["both", "y", "g"])
def test_matches_autograd_reference(mode, dims, lead, upstream):
    gen = torch.Generator().manual_seed(1)
    weights, biases = make_mlp(dims, scale=3.0)
    x = torch.randn(*lead, dims[0], generator=gen, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(lead, generator=gen, dtype=torch.float64) if upstream != "g" else None
    gg = torch.randn(*lead, dims[0], generator=gen, dtype=torch.float64) if upstream != "y" else None
    for beta in (100.0, 2.0):
        y0, g0, r0 = loss_grads(lambda: reference(x, weights, biases, beta), x, weights, biases, gy, gg)
        y1, g1, r1 = loss_grads(lambda: npht.softplus_mlp_with_grad(x, weights, biases, beta=beta, **mode),
                                x, weights, biases, gy, gg)
        assert y1.shape == lead and g1.shape == x.shape
        torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
        for a, b in zip(r1, r0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_linear_branch_above_threshold():
    """beta * h > threshold: softplus is the identity there (F.softplus), derivative 1 and
    second derivative 0; pre-activations straddle the threshold in this MLP."""
    weights, biases = make_mlp((4, 32, 32, 1), scale=20.0)
    x = torch.randn(300, 4, dtype=torch.float64, requires_grad=True)
    h0 = (x @ weights[0].T + biases[0]) * 100.0
    assert (h0 > 20).float().mean() > 0.2 and (h0 < -20).float().mean() > 0.2
    gy, gg = torch.randn(300, dtype=torch.float64), torch.randn(300, 4, dtype=torch.float64)
    _, _, r0 = loss_grads(lambda: reference(x, weights, biases), x, weights, biases, gy, gg)
    _, _, r1 = loss_grads(lambda: npht.softplus_mlp_with_grad(x, weights, biases), x, weights, biases, gy, gg)
    for a, b in zip(r1, r0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64():
    weights, biases = make_mlp((35, 64, 64, 64, 1))
    x = torch.randn(500, 35, dtype=torch.float64)
    y64, g64 = npht.softplus_mlp_with_grad(x, weights, biases)
    y32, g32 = npht.softplus_mlp_with_grad(x.float(), [w.float() for w in weights], [b.float() for b in biases])
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradcheck(checkpoint):
    weights, biases = make_mlp((3, 6, 5, 1), scale=2.0)
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, *params):
        return npht.softplus_mlp_with_grad(x, params[:3], params[3:], beta=3.0, checkpoint=checkpoint,
                                           chunk_size=3)

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


def test_only_some_inputs_need_grad():
    weights, biases = make_mlp((5, 8, 8, 1), requires_grad=False)
    x = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    gg = torch.randn(20, 5, dtype=torch.float64)
    (gx0,) = torch.autograd.grad((reference(x, weights, biases)[1] * gg).sum(), x)
    (gx1,) = torch.autograd.grad((npht.softplus_mlp_with_grad(x, weights, biases)[1] * gg).sum(), x)
    torch.testing.assert_close(gx1, gx0)
    # parameters only (a frozen input)
    weights, biases = make_mlp((5, 8, 8, 1))
    xd = x.detach()
    params = [*weights, *biases]
    r0 = torch.autograd.grad((reference(xd, weights, biases)[1] * gg).sum(), params, allow_unused=True,
                             materialize_grads=True)
    r1 = torch.autograd.grad((npht.softplus_mlp_with_grad(xd, weights, biases)[1] * gg).sum(), params)
    for a, b in zip(r1, r0):
        torch.testing.assert_close(a, b)


def test_no_grad_mode_keeps_no_graph():
    weights, biases = make_mlp((5, 8, 8, 1))
    x = torch.randn(20, 5, dtype=torch.float64)
    with torch.no_grad():
        y, g = npht.softplus_mlp_with_grad(x, weights, biases, chunk_size=6)
    assert not y.requires_grad and not g.requires_grad
    y0, g0 = reference(x, weights, biases)
    torch.testing.assert_close(y, y0.detach())
    torch.testing.assert_close(g, g0.detach())


def test_empty_input():
    weights, biases = make_mlp((5, 8, 1))
    x = torch.randn(0, 5, dtype=torch.float64, requires_grad=True)
    y, g = npht.softplus_mlp_with_grad(x, weights, biases)
    assert y.shape == (0,) and g.shape == (0, 5)
    (g.sum() + y.sum()).backward()
    assert weights[0].grad is not None and weights[0].grad.abs().sum() == 0


def test_third_derivative_is_an_error():
    weights, biases = make_mlp((3, 4, 1))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _, g = npht.softplus_mlp_with_grad(x, weights, biases)
    (gx,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="softplus_mlp_grad_backward"):
        torch.autograd.grad(gx.sum(), x)


def test_opcheck():
    weights, biases = make_mlp((4, 6, 6, 1), dtype=torch.float32)
    x = torch.randn(9, 4, requires_grad=True)
    for save in (True, False):
        torch.library.opcheck(torch.ops.npht.softplus_mlp_grad.default,
                              (x, weights, biases, 100.0, 20.0, save, 4))
    y, g, hs = torch.ops.npht.softplus_mlp_grad(x, weights, biases, 100.0, 20.0, True, 4)
    args = (torch.randn(9), torch.randn(9, 4), x.detach(), [w.detach() for w in weights],
            [b.detach() for b in biases], [h.detach() for h in hs], 100.0, 20.0, 4, True, True)
    torch.library.opcheck(torch.ops.npht.softplus_mlp_grad_backward.default, args)
    args_ckpt = args[:5] + ([],) + args[6:]
    torch.library.opcheck(torch.ops.npht.softplus_mlp_grad_backward.default, args_ckpt)


def test_torch_compile_parity():
    weights, biases = make_mlp((4, 16, 16, 1), dtype=torch.float32)
    x = torch.randn(64, 4, requires_grad=True)

    def step(x, weights, biases):
        y, g = npht.softplus_mlp_with_grad(x, weights, biases)
        loss = ((g.norm(dim=-1) - 1) ** 2).mean() + y.abs().mean()
        return loss, torch.autograd.grad(loss, [x, *weights, *biases])

    l0, r0 = step(x, weights, biases)
    l1, r1 = torch.compile(step, fullgraph=False)(x, weights, biases)
    torch.testing.assert_close(l1, l0)
    for a, b in zip(r1, r0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_errors():
    weights, biases = make_mlp((4, 6, 1), dtype=torch.float32)
    x = torch.randn(5, 4)
    f = npht.softplus_mlp_with_grad
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        f(x.tolist(), weights, biases)
    with pytest.raises(ValueError, match=r"weights\[0\] must be \[out, 3\]"):
        f(x[:, :3], weights, biases)
    with pytest.raises(ValueError, match="at least 2 layers"):
        f(x, weights[:1], biases[:1])
    with pytest.raises(ValueError, match="biases must match weights"):
        f(x, weights, biases[:1])
    with pytest.raises(ValueError, match=r"biases\[1\] must be \[1\]"):
        f(x, weights, [biases[0], torch.zeros(2)])
    with pytest.raises(TypeError, match=r"weights\[1\] must have x's dtype"):
        f(x, [weights[0], weights[1].double()], biases)
    with pytest.raises(TypeError, match="floating-point"):
        f(x.long(), weights, biases)
    with pytest.raises(ValueError, match="one output"):
        f(x, [weights[0], torch.randn(2, 6)], [biases[0], torch.zeros(2)])
    with pytest.raises(ValueError, match="beta must be positive"):
        f(x, weights, biases, beta=0.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        f(x, weights, biases, chunk_size=0)
