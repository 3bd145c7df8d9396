"""npht.softplus_mlp_with_grad vs the autograd reference: values, input gradients and the
backward of a loss on both (the eikonal double backward), in every mode."""

import pytest
import torch

import npht
from _backends import backend_device, require_backend  # noqa: F401
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


MODES = [dict(), dict(chunk_size=97), dict(checkpoint=True), dict(checkpoint=True, chunk_size=97),
         dict(keep_gradient_pass=True), dict(keep_gradient_pass=True, chunk_size=97)]
MODE_IDS = ["saved", "saved-chunked", "checkpoint", "checkpoint-chunked", "kept", "kept-chunked"]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
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
def test_gradcheck(backend, device, checkpoint):
    weights, biases = make_mlp((3, 6, 5, 1), scale=2.0)
    weights = [w.detach().to(device).requires_grad_() for w in weights]
    biases = [b.detach().to(device).requires_grad_() for b in biases]
    x = torch.randn(7, 3, dtype=torch.float64).to(device).requires_grad_()

    def fn(x, *params):
        return npht.softplus_mlp_with_grad(x, params[:3], params[3:], beta=3.0, checkpoint=checkpoint,
                                           chunk_size=3, backend=backend)

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


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_third_derivative_matches_the_explicit_formula(backend):
    """The fused backward's own derivative (the MLP's third; the vjp of the vjp of the
    explicit formula, unfused): gradients of a loss on the gradients of an eikonal-style
    loss match plain autograd through softplus_mlp_with_grad_explicit, in every input."""
    from npht.reference.mlp import softplus_mlp_with_grad_explicit

    weights, biases = make_mlp((3, 6, 6, 1), requires_grad=False)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def third(fn):
        leaves = [t.clone().requires_grad_() for t in (x, *weights, *biases)]
        y, g = fn(leaves[0], leaves[1:4], leaves[4:])
        first = torch.autograd.grad((g.norm(dim=-1) - 1).square().sum() + y.square().sum(), leaves,
                                    create_graph=True)
        return torch.autograd.grad(sum(t.square().sum() for t in first), leaves)

    got = third(lambda a, W, B: npht.softplus_mlp_with_grad(a, W, B, beta=10.0, backend=backend))
    want = third(lambda a, W, B: softplus_mlp_with_grad_explicit(a, W, B, 10.0, 20.0))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
        assert b.abs().sum() > 0


def opcheck_mlp_ops(device, backend, matmul, h_dtype=torch.float32, d_dtype=torch.float32):
    """torch.library.opcheck of both registered ops: saved / kept / checkpointed, chunked
    (``h_dtype`` / ``d_dtype``: the pre-activations' / gradient-pass vectors' storage,
    float16 with Triton products)."""
    weights, biases = make_mlp((4, 6, 6, 1), dtype=torch.float32)
    weights = [w.detach().to(device).requires_grad_() for w in weights]
    biases = [b.detach().to(device).requires_grad_() for b in biases]
    x = torch.randn(9, 4, device=device, requires_grad=True)
    for save, keep in ((True, False), (True, True), (False, False)):
        torch.library.opcheck(torch.ops.npht.softplus_mlp_grad.default,
                              (x, weights, biases, 100.0, 20.0, save, 4, backend, matmul, keep, h_dtype, d_dtype))
    y, g, hs, ds = torch.ops.npht.softplus_mlp_grad(x, weights, biases, 100.0, 20.0, True, 4, backend, matmul, True,
                                                    h_dtype, d_dtype)
    assert len(hs) == 2 and len(ds) == 1 and hs[0].dtype == h_dtype and ds[0].dtype == d_dtype
    args = (torch.randn(9, device=device), torch.randn(9, 4, device=device), x.detach(),
            [w.detach() for w in weights], [b.detach() for b in biases], [h.detach() for h in hs],
            [d.detach() for d in ds], 100.0, 20.0, 4, True, True, backend, matmul, h_dtype, d_dtype)
    torch.library.opcheck(torch.ops.npht.softplus_mlp_grad_backward.default, args)
    args_saved = args[:6] + ([],) + args[7:]
    torch.library.opcheck(torch.ops.npht.softplus_mlp_grad_backward.default, args_saved)
    args_ckpt = args[:5] + ([], []) + args[7:]
    torch.library.opcheck(torch.ops.npht.softplus_mlp_grad_backward.default, args_ckpt)


def test_opcheck(backend, device):
    opcheck_mlp_ops(device, backend, "torch")


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
    with pytest.raises(ValueError, match=r"D0 >= 1 input features, got shape \(5, 0\)"):
        f(torch.zeros(5, 0), [torch.zeros(6, 0), weights[1]], biases)
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
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "100"):
        with pytest.raises(ValueError, match="beta must be a finite positive number"):
            f(x, weights, biases, beta=bad)
    with pytest.raises(ValueError, match="threshold must be a real number"):
        f(x, weights, biases, threshold=float("nan"))
    with pytest.raises(ValueError, match="backend must be one of"):
        f(x, weights, biases, backend="gpu")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        f(x, weights, biases, backend="cuda")
    half = [w.to(torch.bfloat16) for w in weights], [b.to(torch.bfloat16) for b in biases]
    with pytest.raises(TypeError, match="backend='cpu' runs float32 and float64 MLPs"):
        f(x.to(torch.bfloat16), *half, backend="cpu")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        f(x, weights, biases, chunk_size=0)
    with pytest.raises(ValueError, match="matmul must be one of"):
        f(x, weights, biases, matmul="cublas")


# ---- the backward's elementwise kernels, per backend -----------------------------------------


@pytest.mark.parametrize("mode", [MODES[i] for i in (0, 1, 2, 5)], ids=["saved", "saved-chunked", "checkpoint",
                                                                         "kept-chunked"])
@pytest.mark.parametrize("upstream", ["both", "g"])
def test_backends_match_autograd_reference(backend, device, mode, upstream):
    """Each backend of the fused elementwise kernels, float64, against autograd's double
    backward; an odd width (33) and a row count that is not a multiple of any block."""
    dims = (35, 33, 17, 1)
    gen = torch.Generator().manual_seed(2)
    weights, biases = make_mlp(dims, scale=3.0)
    weights = [w.detach().to(device).requires_grad_() for w in weights]
    biases = [b.detach().to(device).requires_grad_() for b in biases]
    x = torch.randn(1151, dims[0], generator=gen, dtype=torch.float64).to(device).requires_grad_()
    gy = torch.randn(1151, generator=gen, dtype=torch.float64).to(device) if upstream == "both" else None
    gg = torch.randn(1151, dims[0], generator=gen, dtype=torch.float64).to(device)
    for beta in (100.0, 2.0):
        y0, g0, r0 = loss_grads(lambda: reference(x, weights, biases, beta), x, weights, biases, gy, gg)
        y1, g1, r1 = loss_grads(
            lambda: npht.softplus_mlp_with_grad(x, weights, biases, beta=beta, backend=backend, **mode),
            x, weights, biases, gy, gg)
        torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
        for a, b in zip(r1, r0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_backends_agree_in_float32(backend, device):
    """float32: the backend's gradients within float32 rounding of the reference backend's
    (the kernels compute s' and s'' from one exponential, the reference from two)."""
    weights, biases = make_mlp((35, 64, 64, 64, 1), dtype=torch.float32, scale=2.0)
    weights = [w.detach().to(device).requires_grad_() for w in weights]
    biases = [b.detach().to(device).requires_grad_() for b in biases]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(777, 35, generator=gen).to(device).requires_grad_()
    gy, gg = torch.randn(777, generator=gen).to(device), torch.randn(777, 35, generator=gen).to(device)
    _, _, r0 = loss_grads(lambda: npht.softplus_mlp_with_grad(x, weights, biases, backend="reference",
                                                              chunk_size=300), x, weights, biases, gy, gg)
    _, _, r1 = loss_grads(lambda: npht.softplus_mlp_with_grad(x, weights, biases, backend=backend,
                                                              chunk_size=300), x, weights, biases, gy, gg)
    for a, b in zip(r1, r0):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * b.abs().max().item())


def test_half_precision_uses_reference_kernels():
    """bfloat16 MLPs: ``auto`` takes the reference's elementwise ops (the kernels run
    float32/float64) and the result matches autograd's in bfloat16."""
    weights, biases = make_mlp((5, 16, 16, 1), dtype=torch.float32)
    wb = [w.detach().bfloat16().requires_grad_() for w in weights]
    bb = [b.detach().bfloat16().requires_grad_() for b in biases]
    x = torch.randn(40, 5).bfloat16().requires_grad_()
    gg = torch.randn(40, 5).bfloat16()
    _, _, r0 = loss_grads(lambda: reference(x, wb, bb, 10.0), x, wb, bb, None, gg)
    _, _, r1 = loss_grads(lambda: npht.softplus_mlp_with_grad(x, wb, bb, beta=10.0), x, wb, bb, None, gg)
    for a, b in zip(r1, r0):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b.float(), rtol=0.1, atol=0.1 * b.float().abs().max().item())


def _raw(backend):
    return npht.ops._backend.kernels(backend, "mlp")


def _pre_activations(M, W, beta, threshold, dtype, device):
    """Pre-activations covering both branches and their edges: beta h exactly at the
    threshold, just below and above it, 0, -0, deep in both tails (exp(-|x|) underflows)."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(M, W, generator=g, dtype=torch.float64) * 3 * threshold / beta
    special = torch.tensor([threshold, threshold * (1 - 1e-6), threshold * (1 + 1e-6), 0.0, -0.0,
                            -200.0, 200.0, -1e4, 1e4], dtype=torch.float64) / beta
    h.view(-1)[: special.numel()] = special[: h.numel()]
    return h.to(dtype=dtype, device=device)


def _derivs_exact(h, beta, threshold):
    """s'(h) and q(h) = s''(h) / s'(h) = beta (1 - sigmoid(beta h)) in float64, from
    x = beta h rounded to h's dtype (as every backend and torch compute it): the oracle of
    the raw kernels."""
    x = (h * beta).double()
    d1 = torch.where(x > threshold, torch.ones_like(x), torch.sigmoid(x))
    q = torch.where(x >= threshold, torch.zeros_like(x), beta * torch.sigmoid(-x))
    return d1, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1151, 33), (3, 256)], ids=str)
def test_raw_kernels_match_exact_math(backend, device, dtype, shape):
    M, W = shape
    beta, threshold = 100.0, 20.0
    h = _pre_activations(M, W, beta, threshold, dtype, device)
    g = torch.Generator().manual_seed(5)
    ebar, e, acc = (torch.randn(M, W, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
                    for _ in range(3))
    d1, q = _derivs_exact(h, beta, threshold)
    got_ebar, got_e = ebar.clone(), e.clone()
    _raw(backend).softplus_adjoint_(got_ebar, got_e, h, beta, threshold)
    if dtype == torch.float64:
        tol = dict(rtol=1e-14, atol=1e-300)
    else:
        # a few float32 ulp; atol: where exp(-|x|) falls below float32's smallest normal
        # (|x| > 87) the CPU's vectorised exp flushes it to 0 where libm gives a subnormal,
        # so terms of order beta * 2^-126 times the operands may differ
        tol = dict(rtol=1e-6, atol=1e-33)
    torch.testing.assert_close(got_ebar.double(), ebar.double() * d1, **tol)
    torch.testing.assert_close(got_e.double(), ebar.double() * e.double() * q, **tol)
    # exactly torch's rules at the threshold: s' = sigmoid up to it and 1 above; s'' = 0
    # from it up
    x = h * beta
    assert torch.equal(got_ebar[x > threshold], ebar[x > threshold])
    assert (got_e[x >= threshold] == 0).all()
    got_acc = acc.clone()
    _raw(backend).softplus_backward_add_(got_acc, ebar, h, beta, threshold)
    torch.testing.assert_close(got_acc.double(), acc.double() + ebar.double() * d1,
                               rtol=tol["rtol"], atol=max(tol["atol"], 4 * torch.finfo(dtype).eps))


def test_adjoint_is_the_second_derivative(backend, device):
    """``ebar e q`` is ``ebar d s''(h)`` for ``e = d s'(h)``: checked against autograd's
    second derivative of F.softplus in float64, away from the threshold."""
    beta, threshold = 7.0, 20.0
    g = torch.Generator().manual_seed(6)
    h = (torch.randn(37, 19, generator=g, dtype=torch.float64) * 2).to(device)
    d, ebar = (torch.randn(37, 19, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    hr = h.clone().requires_grad_()
    (s1,) = torch.autograd.grad(torch.nn.functional.softplus(hr, beta, threshold).sum(), hr, create_graph=True)
    (s2,) = torch.autograd.grad(s1.sum(), hr)
    e = torch.ops.aten.softplus_backward(d, h, beta, threshold)
    got_ebar = ebar.clone()
    _raw(backend).softplus_adjoint_(got_ebar, e, h, beta, threshold)
    torch.testing.assert_close(e, ebar * d * s2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_ebar, ebar * s1.detach(), rtol=1e-13, atol=1e-15)


def test_raw_kernels_propagate_nan(backend, device):
    h = torch.tensor([[float("nan"), 0.1, float("inf"), float("-inf")]], device=device)
    ebar, e = torch.ones(1, 4, device=device), torch.ones(1, 4, device=device)
    _raw(backend).softplus_adjoint_(ebar, e, h, 100.0, 20.0)
    assert ebar[0, 0].isnan() and e[0, 0].isnan()
    assert ebar[0, 1].isfinite() and e[0, 1].isfinite()
    # +inf: the linear branch (s' = 1, s'' = 0); -inf: s' = 0, q = beta
    assert ebar[0, 2] == 1 and e[0, 2] == 0 and ebar[0, 3] == 0 and e[0, 3] == 100
    acc = torch.zeros(1, 4, device=device)
    _raw(backend).softplus_backward_add_(acc, torch.ones(1, 4, device=device), h, 100.0, 20.0)
    assert acc[0, 0].isnan() and acc[0, 2] == 1 and acc[0, 3] == 0


def test_raw_kernel_errors(backend, device):
    if backend == "reference":
        pytest.skip("the reference is PyTorch ops without checks of its own")
    k = _raw(backend)
    a = torch.zeros(4, 3, device=device)
    with pytest.raises((RuntimeError, ValueError), match=r"must be \[M, W\]"):
        k.softplus_adjoint_(a.view(-1), a.view(-1), a.view(-1), 1.0, 20.0)
    with pytest.raises((RuntimeError, TypeError), match="float32 or float64"):
        k.softplus_adjoint_(a.half(), a.half(), a.half(), 1.0, 20.0)
    with pytest.raises((RuntimeError, TypeError), match="dtype"):
        k.softplus_adjoint_(a, a.clone(), a.double(), 1.0, 20.0)
    with pytest.raises((RuntimeError, ValueError), match="shape"):
        k.softplus_adjoint_(a, a.clone(), a[:2], 1.0, 20.0)
    with pytest.raises((RuntimeError, ValueError), match="contiguous"):
        k.softplus_backward_add_(a, torch.zeros(3, 4, device=device).t(), a, 1.0, 20.0)
    with pytest.raises((RuntimeError, ValueError), match="beta must be finite and > 0"):
        k.softplus_backward_add_(a, a.clone(), a, 0.0, 20.0)


def _backward_counts(dims, option):
    """For ``option`` off and on (a keyword of softplus_mlp_with_grad): the backward's
    (matrix products, softplus_backward passes) and its gradients, of the same loss."""
    from torch.profiler import ProfilerActivity, profile

    weights, biases = make_mlp(dims)
    x = torch.randn(50, dims[0], dtype=torch.float64, requires_grad=True)
    counts, grads = {}, {}
    for on in (False, True):
        y, g = npht.softplus_mlp_with_grad(x, weights, biases, **{option: on})
        loss = (g ** 2).sum() + y.sum()
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # sees the ops inside the registered op
            grads[on] = torch.autograd.grad(loss, [x, *weights, *biases])
        names = [e.name for e in prof.events()]
        counts[on] = (sum(n in ("aten::mm", "aten::addmm") for n in names),
                      sum(n == "aten::softplus_backward" for n in names))
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    return counts


@pytest.mark.parametrize("dims", [(5, 16, 16, 16, 1), (5, 16, 1)], ids=str)
def test_keep_gradient_pass_skips_the_recompute(dims):
    """keep_gradient_pass: the backward runs L-2 matrix products fewer (the reverse pass'
    d_{l-1} = e_l W_l, l = L-2 .. 1, is not recomputed) and keeps L-2 more saved tensors."""
    counts = _backward_counts(dims, "keep_gradient_pass")
    assert counts[False][0] - counts[True][0] == len(dims) - 3


@pytest.mark.parametrize("dims", [(5, 16, 16, 16, 1), (5, 16, 1)], ids=str)
def test_checkpoint_recomputes_the_forward_products_only(dims):
    """checkpoint=True: the backward's recompute runs the L-1 hidden layers' products and
    nothing else (not the output layer nor the gradient pass, which the backward redoes
    itself), so it costs L-1 products and no softplus derivative pass more than saving."""
    counts = _backward_counts(dims, "checkpoint")
    assert counts[True][0] - counts[False][0] == len(dims) - 2
    assert counts[True][1] == counts[False][1]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_autocast_runs_the_op_in_its_inputs_dtype(checkpoint):
    """Under torch.autocast the op computes in its inputs' dtype (float32), as its fake
    says, forward and backward (the products came back in bfloat16, and the backward
    failed on float32 buffers meeting them), for any number of rows."""
    weights, biases = make_mlp((6, 16, 16, 1), dtype=torch.float32)
    x = torch.randn(40, 6, requires_grad=True)
    want = loss_grads(lambda: npht.softplus_mlp_with_grad(x, weights, biases, checkpoint=checkpoint), x, weights,
                      biases, None, torch.ones(40, 6))
    for chunk in (1 << 18, 7):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, g = npht.softplus_mlp_with_grad(x, weights, biases, checkpoint=checkpoint, chunk_size=chunk)
            assert y.dtype == g.dtype == torch.float32
            got = torch.autograd.grad(g.sum(), [x, *weights, *biases], allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(g, want[1])
        for a, b in zip(got, want[2]):
            torch.testing.assert_close(a, b)


def test_keep_gradient_pass_errors():
    weights, biases = make_mlp((4, 6, 1), dtype=torch.float32)
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="checkpoint=True keeps nothing: choose one"):
        npht.softplus_mlp_with_grad(x, weights, biases, keep_gradient_pass=True, checkpoint=True)
    with pytest.raises(TypeError, match="keep_gradient_pass must be a bool"):
        npht.softplus_mlp_with_grad(x, weights, biases, keep_gradient_pass=1)


def test_matmul_precision_context():
    """npht.matmul_precision sets torch's float32 matmul precision for a block and restores
    it, also when the block raises; unknown settings are a ValueError."""
    before = torch.get_float32_matmul_precision()
    with npht.matmul_precision("high"):
        assert torch.get_float32_matmul_precision() == "high"
        with npht.matmul_precision("highest"):
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError, match="inside"):
        with npht.matmul_precision("medium"):
            raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == before
    for bad in ("tf32", None, 1):
        with pytest.raises(ValueError, match="precision must be one of"):
            with npht.matmul_precision(bad):
                pass
