"""npht.softplus_mlp_with_grad(matmul="triton"): the MLP's products as Triton kernels with the
elementwise steps in their prologues/epilogues (kernels/mlp_mm.py), against the autograd
reference and against the plain math of each kernel. Interpreted on the CPU, compiled on a
GPU; every test name holds "triton" (tools/triton_check.py compiles what they launch)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import npht
from _backends import require_backend
from npht.reference import mlp as ref_mlp
from npht.reference import softplus_mlp_with_grad as reference
from test_mlp import MODE_IDS, MODES, loss_grads, make_mlp, opcheck_mlp_ops

aten = torch.ops.aten


@pytest.fixture
def tdev():
    return require_backend("triton")


@pytest.fixture
def mm(tdev):
    from npht.kernels import mlp_mm

    return mlp_mm


def _to(ts, device):
    return [t.detach().to(device).requires_grad_() for t in ts]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dims", [(35, 33, 17, 1), (3, 5, 1), (7, 16, 16, 16, 1)], ids=str)
@pytest.mark.parametrize("upstream", ["both", "y", "g"])
def test_triton_matmul_matches_autograd_reference(tdev, mode, dims, upstream):
    """float64: values, input gradient and the backward of a loss on both, in every mode;
    one hidden layer (3, 5, 1), odd widths, rows not a multiple of any block, two betas."""
    gen = torch.Generator().manual_seed(1)
    weights, biases = make_mlp(dims, scale=3.0)
    weights, biases = _to(weights, tdev), _to(biases, tdev)
    x = torch.randn(301, dims[0], generator=gen, dtype=torch.float64).to(tdev).requires_grad_()
    gy = torch.randn(301, generator=gen, dtype=torch.float64).to(tdev) if upstream != "g" else None
    gg = torch.randn(301, dims[0], generator=gen, dtype=torch.float64).to(tdev) if upstream != "y" else None
    for beta in (100.0, 2.0):
        y0, g0, r0 = loss_grads(lambda: reference(x, weights, biases, beta), x, weights, biases, gy, gg)
        y1, g1, r1 = loss_grads(
            lambda: npht.softplus_mlp_with_grad(x, weights, biases, beta=beta, matmul="triton", **mode),
            x, weights, biases, gy, gg)
        torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
        for a, b in zip(r1, r0):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _tf32(t):
    """float32 -> TF32 (10 explicit mantissa bits, round to nearest), as float32."""
    i = t.contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32).reshape(t.shape)


class _EmulateTF32(TorchDispatchMode):
    """Every float32 aten mm/addmm with TF32-rounded operands: what a GPU's TF32 products
    do to a computation, on the CPU (applied to the autograd reference)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        r = lambda t: _tf32(t) if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t
        if func in (aten.mm.default, aten.mm.out):
            args = (r(args[0]), r(args[1]), *args[2:])
        elif func in (aten.addmm.default, aten.addmm.out, aten.addmm_.default):
            args = (args[0], r(args[1]), r(args[2]), *args[3:])
        return func(*args, **(kwargs or {}))


def _f32_case():
    """A float32 MLP (35-64-64-64-1, weights x2, beta 100), a float64 copy, inputs and
    upstream gradients."""
    weights, biases = make_mlp((35, 64, 64, 64, 1), scale=2.0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(777, 35, generator=gen, dtype=torch.float64)
    gy, gg = torch.randn(777, generator=gen, dtype=torch.float64), torch.randn(777, 35, generator=gen,
                                                                               dtype=torch.float64)
    return weights, biases, x, gy, gg


def _errors(got, want):
    """Per quantity: max |error| / max |entry|, and the cosine of the gradients."""
    errs = [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want)]
    cos = [F.cosine_similarity(a.double().flatten(), b.flatten(), dim=0).item() for a, b in zip(got[1:], want[1:])
           if b.abs().max() > 0]
    return errs, cos


def _tf32_yardstick():
    """The float64 reference's results, and the errors of the float32 autograd reference
    with TF32-rounded products (emulated on the CPU)."""
    weights, biases, x, gy, gg = _f32_case()
    w64, b64, x64 = _to(weights, "cpu"), _to(biases, "cpu"), x.clone().requires_grad_()
    y0, g0, r0 = loss_grads(lambda: reference(x64, w64, b64), x64, w64, b64, gy, gg)
    w32, b32 = [t.detach().float().requires_grad_() for t in w64], [t.detach().float().requires_grad_() for t in b64]
    x32 = x64.detach().float().requires_grad_()
    with _EmulateTF32():
        y1, g1, r1 = loss_grads(lambda: reference(x32, w32, b32), x32, w32, b32, gy.float(), gg.float())
    return (y0, g0, *r0), _errors((y1, g1, *r1), (y0, g0, *r0))


def test_triton_matmul_strided_biases(tdev):
    """Biases (and the output row) that are views with non-unit strides, e.g. columns of a
    packed parameter tensor: the Triton products read them with unit stride, so the op
    hands them contiguous (wrong values before, silently); gradients reach the views."""
    weights, biases = make_mlp((5, 8, 8, 1))
    packed = torch.stack([b.detach() for b in biases[:-1]], 1).requires_grad_()   # [8, 2]
    out_b = torch.stack([biases[-1].detach(), torch.zeros(1, dtype=torch.float64)], 1).requires_grad_()
    strided = [packed[:, 0], packed[:, 1], out_b[:, 0]]
    w_last = torch.stack([weights[-1].detach()[0], torch.zeros(8, dtype=torch.float64)], 1).requires_grad_()
    ws = [w.detach().to(tdev) for w in weights[:-1]] + [w_last.to(tdev).t()[:1]]
    x = torch.randn(30, 5, dtype=torch.float64)
    gy, gg = torch.randn(30, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    want = loss_grads(lambda: reference(x, weights, biases), x, weights, biases, gy, gg)
    y, g = npht.softplus_mlp_with_grad(x.to(tdev), ws, [b.to(tdev) for b in strided], matmul="triton")
    torch.testing.assert_close(y.cpu(), want[0].detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.cpu(), want[1].detach(), rtol=1e-12, atol=1e-12)
    gp, = torch.autograd.grad((y.cpu() * gy).sum() + (g.cpu() * gg).sum(), [packed])
    torch.testing.assert_close(gp[:, 0], want[2][len(weights)], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("precision", ["highest", "high"])
def test_triton_matmul_float32(tdev, precision):
    """float32 with IEEE products ("highest") or TF32 ("high", on a GPU; the interpreter's
    products are IEEE), both routes, against float64 (max error / max entry)."""
    weights, biases = make_mlp((35, 64, 64, 64, 1), scale=2.0)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(777, 35, generator=gen, dtype=torch.float64)
    gy, gg = torch.randn(777, generator=gen, dtype=torch.float64), torch.randn(777, 35, generator=gen,
                                                                               dtype=torch.float64)
    w64, b64, x64 = _to(weights, tdev), _to(biases, tdev), x.to(tdev).requires_grad_()
    w32, b32 = [t.detach().float().requires_grad_() for t in w64], [t.detach().float().requires_grad_() for t in b64]
    x32 = x64.detach().float().requires_grad_()
    y0, g0, r0 = loss_grads(lambda: reference(x64, w64, b64), x64, w64, b64, gy.to(tdev), gg.to(tdev))
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        errs = {}
        for matmul in ("torch", "triton"):
            y1, g1, r1 = loss_grads(
                lambda: npht.softplus_mlp_with_grad(x32, w32, b32, matmul=matmul, chunk_size=300),
                x32, w32, b32, gy.float().to(tdev), gg.float().to(tdev))
            errs[matmul] = [((a.double() - b).abs().max() / b.abs().max()).item()
                            for a, b in zip((y1, g1, *r1), (y0, g0, *r0))]
    finally:
        torch.set_float32_matmul_precision(prev)
    # float32 rounding, amplified through the layers, is ~1e-5 of the largest entry in both
    # routes (measured on the CPU). TF32 rounds each product's inputs to 10-bit mantissas:
    # the autograd reference with emulated TF32 products errs by up to ~7e-2 of the largest
    # entry here (beta = 100 amplifies the pre-activations' rounding), so a GPU under
    # "high" is held to twice the emulation's error, quantity by quantity
    tol = [1e-4] * 11
    if precision == "high" and tdev.type == "cuda":
        tol = [max(1e-4, 2 * e) for e in _tf32_yardstick()[1][0]]
    names = ["y", "g", "x", *[f"w{i}" for i in range(4)], *[f"b{i}" for i in range(4)]]
    for matmul, e in errs.items():
        for name, err, t in zip(names, e, tol):
            assert err <= t, (matmul, name, err, t)


HALF_STORAGE = [dict(h_dtype=torch.float16), dict(d_dtype=torch.float16),
                dict(h_dtype=torch.float16, d_dtype=torch.float16)]


@pytest.mark.parametrize("storage", HALF_STORAGE, ids=["h16", "d16", "h16-d16"])
@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_triton_h_float16_is_tf32_grade(tdev, mode, storage):
    """h_dtype / d_dtype = torch.float16 (pre-activations / gradient-pass vectors stored
    rounded to float16, computed in float32) against float64, in every mode: no less accurate
    than TF32 products are (the autograd reference with emulated TF32 products: up to ~7e-2
    of the largest entry, gradient cosine ~0.998 on this MLP; float16's 11 significant bits
    are TF32's). Under the interpreter the products are IEEE, so what is measured is the
    float16 storage alone."""
    want, (tf32_err, tf32_cos) = _tf32_yardstick()
    weights, biases, x, gy, gg = _f32_case()
    w32, b32 = [t.detach().float().to(tdev).requires_grad_() for t in weights], \
        [t.detach().float().to(tdev).requires_grad_() for t in biases]
    x32 = x.float().to(tdev).requires_grad_()
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # the storage's error alone, also on a GPU
    try:
        y1, g1, r1 = loss_grads(
            lambda: npht.softplus_mlp_with_grad(x32, w32, b32, matmul="triton", **storage,
                                                chunk_size=mode.get("chunk_size", 300),
                                                **{k: v for k, v in mode.items() if k != "chunk_size"}),
            x32, w32, b32, gy.float().to(tdev), gg.float().to(tdev))
    finally:
        torch.set_float32_matmul_precision(prev)
    err, cos = _errors([t.cpu() for t in (y1, g1, *r1)], want)
    assert max(err) <= 1.25 * max(tf32_err), (err, tf32_err)
    assert min(cos) >= min(tf32_cos) - 1e-3, (cos, tf32_cos)
    assert max(err) > 1e-4  # (the float16 rounding does show: float32 alone errs by ~1e-5)


WIDE_STORAGE = [dict(), *HALF_STORAGE, dict(h_dtype=torch.float16, d_dtype=torch.float16, keep_gradient_pass=True)]


@pytest.mark.parametrize("storage", WIDE_STORAGE, ids=["f32", "h16", "d16", "h16-d16", "h16-d16-kept"])
def test_triton_decoder_width_tf32(tdev, storage):
    """The benchmark's decoder (35-256-256-256-256-1, beta 100): two 128-column blocks per
    product at the GPU's tiles, under TF32 (torch's "high"), with each storage option,
    against float64: within twice the errors of the float32 autograd reference with
    emulated TF32 products on the same case (on the CPU the interpreter's products are IEEE:
    what shows is float16 storage alone). Also how tools/triton_check.py sees the production
    launches (TF32, float16 storage) to compile them."""
    weights, biases = make_mlp((35, 256, 256, 256, 256, 1))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(150, 35, generator=gen, dtype=torch.float64)
    gy, gg = torch.randn(150, generator=gen, dtype=torch.float64), torch.randn(150, 35, generator=gen,
                                                                               dtype=torch.float64)
    w64, b64, x64 = _to(weights, "cpu"), _to(biases, "cpu"), x.clone().requires_grad_()
    want = loss_grads(lambda: reference(x64, w64, b64), x64, w64, b64, gy, gg)
    want = (want[0], want[1], *want[2])
    w32, b32 = [t.detach().float().requires_grad_() for t in w64], [t.detach().float().requires_grad_() for t in b64]
    x32 = x64.detach().float().requires_grad_()
    with _EmulateTF32():
        y1, g1, r1 = loss_grads(lambda: reference(x32, w32, b32), x32, w32, b32, gy.float(), gg.float())
    tf32_err, tf32_cos = _errors((y1, g1, *r1), want)
    wd, bd = [t.detach().float().to(tdev).requires_grad_() for t in w64], \
        [t.detach().float().to(tdev).requires_grad_() for t in b64]
    xd = x64.detach().float().to(tdev).requires_grad_()
    with npht.matmul_precision("high"):
        y2, g2, r2 = loss_grads(lambda: npht.softplus_mlp_with_grad(xd, wd, bd, matmul="triton", chunk_size=64,
                                                                    **storage),
                                xd, wd, bd, gy.float().to(tdev), gg.float().to(tdev))
    err, cos = _errors([t.cpu() for t in (y2, g2, *r2)], want)
    assert max(err) <= 2 * max(tf32_err), (err, tf32_err)
    assert min(cos) >= min(tf32_cos) - 1e-3, (cos, tf32_cos)


def test_triton_h_float16_saves_half(tdev):
    """The saved pre-activations are float16 (half the memory); the kept gradient pass stays
    float32; each kernel given float16 pre-activations computes what it computes from their
    float32 values (the conversion is exact)."""
    weights, biases = make_mlp((7, 16, 16, 16, 1), dtype=torch.float32)
    weights, biases = _to(weights, tdev), _to(biases, tdev)
    x = torch.randn(50, 7, device=tdev)
    y, g, hs, ds = torch.ops.npht.softplus_mlp_grad(x, weights, biases, 100.0, 20.0, True, 1 << 18, "auto", "triton",
                                                    True, torch.float16, torch.float32)
    assert [h.dtype for h in hs] == [torch.float16] * 3 and [d.dtype for d in ds] == [torch.float32] * 2
    _, g2, hs2, ds2 = torch.ops.npht.softplus_mlp_grad(x, weights, biases, 100.0, 20.0, True, 1 << 18, "auto",
                                                       "triton", True, torch.float32, torch.float16)
    assert [h.dtype for h in hs2] == [torch.float32] * 3 and [d.dtype for d in ds2] == [torch.float16] * 2
    assert g.dtype == g2.dtype == torch.float32  # the input gradient itself is never stored rounded
    from npht.kernels import mlp_mm as mm

    gen = torch.Generator().manual_seed(2)
    r = lambda *shape: torch.randn(*shape, generator=gen).to(tdev)
    M, K, N = 300, 33, 40
    w, w_r, bias = r(N, K), r(K, N), r(N)
    h16k, h16n = (r(M, K) * 0.3).half(), (r(M, N) * 0.3).half()
    hk, hn = h16k.float(), h16n.float()
    # interpreted: bit for bit; compiled, the float16 and float32 specialisations are separate
    # kernels, which may order a product's partial sums differently
    exact = dict(rtol=0, atol=0) if tdev.type == "cpu" else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mm.linear(h16k, w, bias, softplus_input=True), mm.linear(hk, w, bias, softplus_input=True),
                               **exact)
    out = mm.linear(hk, w, bias, out_dtype=torch.float16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, mm.linear(hk, w, bias).half(), **exact)
    d, dbar, hbar, hadj = r(M, K), r(M, K), r(M, K), r(M, N)
    torch.testing.assert_close(mm.reverse_step(d, h16k, w_r), mm.reverse_step(d, hk, w_r), **exact)
    dn = r(M, N)
    for a, b in zip(mm.adjoint_step(dbar, w, dn, h16n, colsum=True), mm.adjoint_step(dbar, w, dn, hn, colsum=True)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, **exact)
    for a, b in zip(mm.down_step(hbar, w_r, h16n, hadj.clone(), colsum=True),
                    mm.down_step(hbar, w_r, hn, hadj.clone(), colsum=True)):
        torch.testing.assert_close(a, b, **exact)
    gy, w_out = r(M), r(N)
    for a, b in zip(mm.output_step(h16n, gy, w_out, hadj.clone()), mm.output_step(hn, gy, w_out, hadj.clone())):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, **exact)
    a_ = r(M, N)
    torch.testing.assert_close(mm.weight_grad(a_, h16k, b_softplus=True), mm.weight_grad(a_, hk, b_softplus=True),
                               **exact)
    torch.testing.assert_close(mm.weight_grad(a_, hbar, a_h=h16n), mm.weight_grad(a_, hbar, a_h=hn), **exact)
    # float16 gradient-pass vectors d: the reverse product's input and output, the adjoint's
    # epilogue input, the weight gradient's left factor
    d16k, d16n = (r(M, K) * 0.1).half(), (r(M, N) * 0.1).half()
    out = mm.reverse_step(d16k, h16k, w_r, out_dtype=torch.float16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, mm.reverse_step(d16k.float(), hk, w_r).half(), **exact)
    for a, b in zip(mm.adjoint_step(dbar, w, d16n, h16n, colsum=True),
                    mm.adjoint_step(dbar, w, d16n.float(), hn, colsum=True)):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, **exact)
    b_ = r(M, K)
    torch.testing.assert_close(mm.weight_grad(d16n, b_, a_h=h16n, out=torch.zeros(N, K, device=tdev)),
                               mm.weight_grad(d16n.float(), b_, a_h=hn), **exact)
    with pytest.raises(TypeError, match="a float16 `a` needs `out`"):
        mm.weight_grad(d16n, b_, a_h=h16n)


def test_triton_h_float16_opcheck(tdev):
    opcheck_mlp_ops(tdev, "auto", "triton", torch.float16)
    opcheck_mlp_ops(tdev, "auto", "triton", torch.float16, torch.float16)


def test_triton_matmul_gradcheck(tdev):
    weights, biases = make_mlp((3, 6, 5, 1), scale=2.0)
    weights, biases = _to(weights, tdev), _to(biases, tdev)
    x = torch.randn(7, 3, dtype=torch.float64).to(tdev).requires_grad_()

    def fn(x, *params):
        return npht.softplus_mlp_with_grad(x, params[:3], params[3:], beta=3.0, chunk_size=3, matmul="triton")

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


def test_triton_matmul_opcheck(tdev):
    opcheck_mlp_ops(tdev, "auto", "triton")


def test_triton_matmul_errors(tdev):
    weights, biases = make_mlp((4, 6, 1), dtype=torch.float32)
    weights, biases = [w.detach().to(tdev) for w in weights], [b.detach().to(tdev) for b in biases]
    x = torch.randn(5, 4, device=tdev)
    for name in ("h_dtype", "d_dtype"):
        for bad in (torch.bfloat16, torch.float64, "float16", 16):
            with pytest.raises(TypeError, match=f"{name} must be None, x's dtype or torch.float16"):
                npht.softplus_mlp_with_grad(x, weights, biases, matmul="triton", **{name: bad})
        with pytest.raises(ValueError, match=rf"{name}=torch.float16 stores float32 .* needs float32 inputs and "
                                             r"matmul='triton' \(got torch.float32, matmul='torch'"):
            npht.softplus_mlp_with_grad(x, weights, biases, **{name: torch.float16})
    w64, b64 = [w.double() for w in weights], [b.double() for b in biases]
    with pytest.raises(ValueError, match=r"\(got torch.float64, matmul='triton'\)"):
        npht.softplus_mlp_with_grad(x.double(), w64, b64, matmul="triton", h_dtype=torch.float16)
    # None and x's own dtype are the default
    y0, _ = npht.softplus_mlp_with_grad(x, weights, biases, matmul="triton")
    y1, _ = npht.softplus_mlp_with_grad(x, weights, biases, matmul="triton", h_dtype=torch.float32)
    torch.testing.assert_close(y0, y1, rtol=0, atol=0)
    half = [w.bfloat16() for w in weights], [b.bfloat16() for b in biases]
    with pytest.raises(TypeError, match="matmul='triton' runs float32 and float64 MLPs"):
        npht.softplus_mlp_with_grad(x.bfloat16(), *half, matmul="triton")
    if tdev.type == "cpu":  # the interpreter runs CPU tensors; a GPU's compiled kernels do not
        return
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        npht.softplus_mlp_with_grad(x.cpu(), [w.cpu() for w in weights], [b.cpu() for b in biases],
                                    matmul="triton")


# ---- the kernels, one by one ---------------------------------------------------------------

BETA, THR = 100.0, 20.0


def _sp1(g, h):
    return torch.ops.aten.softplus_backward(g, h, BETA, THR)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1151, 35, 256), (300, 256, 33), (17, 256, 1)], ids=str)
def test_triton_mm_kernels_match_math(mm, tdev, dtype, M, K, N):
    """Each kernel against its torch expression; pre-activations straddle softplus's linear
    branch (beta h > threshold) and its far negative tail."""
    gen = torch.Generator().manual_seed(5)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).to(dtype).to(tdev)

    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    w, b = r(N, K, s=K ** -0.5), r(N)
    hk, hn = r(M, K, s=0.3), r(M, N, s=0.3)
    torch.testing.assert_close(mm.linear(hk, w, b), F.linear(hk, w, b), **tol)
    sp = F.softplus(hk, BETA, THR)
    torch.testing.assert_close(mm.linear(hk, w, b, softplus_input=True, beta=BETA, threshold=THR),
                               F.linear(sp, w, b), **tol)
    # reverse: (d s'(h)) w for w [out=K, in=N]; d one row (broadcast); into out
    w_r = r(K, N, s=K ** -0.5)
    d = r(M, K)
    torch.testing.assert_close(mm.reverse_step(d, hk, w_r, beta=BETA, threshold=THR), _sp1(d, hk) @ w_r, **tol)
    row = r(K)
    out = torch.full((M, N), float("nan"), dtype=dtype, device=tdev)
    got = mm.reverse_step(row, hk, w_r, beta=BETA, threshold=THR, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, _sp1(row.expand(M, K), hk) @ w_r, **tol)
    # adjoint: ebar = dbar w^T -> (ebar s'(h), ebar d s''(h)) for d [M, N] or one row [N]
    dbar, dn = r(M, K), r(M, N)
    ebar = dbar @ w.t()
    sum_tol = dict(rtol=tol["rtol"], atol=tol["atol"] * max(M, 1) ** 0.5)
    for dd in (dn, r(N)):
        e_ref, ebar_ref = _sp1(dd.expand(M, N), hn), ebar.clone()  # e = d s'(h)
        ref_mlp.softplus_adjoint_(ebar_ref, e_ref, hn, BETA, THR)  # -> (ebar s', ebar d s'')
        dnext, hadj_ = mm.adjoint_step(dbar, w, dd, hn, beta=BETA, threshold=THR)
        torch.testing.assert_close(dnext, ebar_ref, **tol)
        torch.testing.assert_close(hadj_, e_ref, rtol=tol["rtol"], atol=tol["atol"] * BETA)
        dnext, hadj_, csum = mm.adjoint_step(dbar, w, dd, hn, beta=BETA, threshold=THR, colsum=True)
        torch.testing.assert_close(dnext, ebar_ref, **tol)
        torch.testing.assert_close(csum, dnext.sum(0), **sum_tol)
    # down: abar = hbar w (w [out=K, in=N]); hadj + abar s'(h) in hadj's buffer
    hbar, hadj = r(M, K), r(M, N)
    expect = hadj + _sp1(hbar @ w_r, hn)
    got = mm.down_step(hbar, w_r, hn, hadj, beta=BETA, threshold=THR)
    assert got.data_ptr() == hadj.data_ptr()
    torch.testing.assert_close(got, expect, **tol)
    torch.testing.assert_close(mm.down_step(hbar, w_r, hn, beta=BETA, threshold=THR), _sp1(hbar @ w_r, hn), **tol)
    out, csum = mm.down_step(hbar, w_r, hn, hadj.clone(), beta=BETA, threshold=THR, colsum=True)
    torch.testing.assert_close(csum, out.sum(0), **sum_tol)
    # weight gradients reduced over rows: (a s'(a_h))^T b, a^T softplus(b), a broadcast row
    wg_tol = dict(rtol=tol["rtol"], atol=tol["atol"] * max(M, 1) ** 0.5 * 4)
    a_, b_ = r(M, N), r(M, K, s=0.3)
    torch.testing.assert_close(mm.weight_grad(a_, b_), a_.t() @ b_, **wg_tol)
    torch.testing.assert_close(mm.weight_grad(a_, b_, a_h=hn, beta=BETA, threshold=THR), _sp1(a_, hn).t() @ b_,
                               **wg_tol)
    torch.testing.assert_close(mm.weight_grad(a_, b_, b_softplus=True, beta=BETA, threshold=THR),
                               a_.t() @ F.softplus(b_, BETA, THR), **wg_tol)
    acc, row_n = r(N, K), r(N)
    expect = acc + _sp1(row_n.expand(M, N), hn).t() @ b_
    got = mm.weight_grad(row_n, b_, a_h=hn, beta=BETA, threshold=THR, out=acc)
    assert got.data_ptr() == acc.data_ptr()
    torch.testing.assert_close(got, expect, **wg_tol)
    # the output layer: hbar = [hadj +] gy w_out s'(h), its column sums, gy s(h) summed
    gy, w_out, hadj = r(M), r(N), r(M, N)
    expect = hadj + _sp1(gy[:, None] * w_out[None, :], hn)
    hb, hsum, gw = mm.output_step(hn, gy, w_out, hadj, beta=BETA, threshold=THR)
    assert hb.data_ptr() == hadj.data_ptr()
    torch.testing.assert_close(hb, expect, **tol)
    torch.testing.assert_close(hsum, expect.sum(0), **sum_tol)
    torch.testing.assert_close(gw, (gy[:, None] * F.softplus(hn, BETA, THR)).sum(0), **sum_tol)
    hb, _, _ = mm.output_step(hn, gy, w_out, beta=BETA, threshold=THR)
    torch.testing.assert_close(hb, _sp1(gy[:, None] * w_out[None, :], hn), **tol)


def test_triton_mm_softplus_extremes(mm, tdev):
    """The prologue's softplus at the linear branch's edge, far below zero (where
    log(1 + t) would round to 0) and at 0; NaN propagates."""
    h = torch.tensor([[0.2, 0.2001, -0.5, -3.0, 0.0, 1e-9, float("nan"), 0.19999]], dtype=torch.float64,
                     device=tdev).t()  # one value per row: [8, 1] times [[1]]
    one = torch.ones(1, 1, dtype=torch.float64, device=tdev)
    got = mm.linear(h, one, softplus_input=True, beta=BETA, threshold=THR)
    torch.testing.assert_close(got, F.softplus(h, BETA, THR), rtol=1e-14, atol=0, equal_nan=True)


def test_triton_mm_kernel_errors(mm, tdev):
    w = torch.randn(8, 5, device=tdev)
    a = torch.randn(4, 5, device=tdev)
    with pytest.raises(ValueError, match=r"a must be \[4, 5\]"):
        mm.linear(a[:, :4], w)
    with pytest.raises(TypeError, match="float32 or float64 only"):
        mm.linear(a.half(), w.half())
    with pytest.raises(TypeError, match="a must be torch.float32"):
        mm.linear(a.double(), w)
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        mm.linear(torch.randn(5, 4, device=tdev).t(), w)
    with pytest.raises(ValueError, match=r"bias must be contiguous \[8\]"):
        mm.linear(a, w, torch.zeros(5, device=tdev))
    with pytest.raises(ValueError, match=r"bias must be contiguous \[8\], got \(8,\)"):  # read with unit stride
        mm.linear(a, w, torch.zeros(8, 2, device=tdev)[:, 0])
    with pytest.raises(ValueError, match=r"the broadcast row must be contiguous \[8\]"):
        mm.reverse_step(torch.randn(5, device=tdev), torch.randn(4, 8, device=tdev), w)
    with pytest.raises(ValueError, match=r"h must be \[4, 8\]"):
        mm.reverse_step(torch.randn(4, 8, device=tdev), torch.randn(4, 5, device=tdev), w)
    with pytest.raises(ValueError, match="d and h are required"):
        mm.adjoint_step(a, w, None, None)
    with pytest.raises(ValueError, match="a broadcast row needs a_h"):
        mm.weight_grad(torch.randn(8, device=tdev), a)
    with pytest.raises(ValueError, match=r"a must be \[4, 8\]"):
        mm.weight_grad(torch.randn(3, 8, device=tdev), a)
    with pytest.raises(ValueError, match=r"out must be a torch.float32 \[8, 5\]"):
        mm.weight_grad(torch.randn(4, 8, device=tdev), a, out=torch.zeros(5, 8, device=tdev))
    with pytest.raises(ValueError, match="beta must be finite"):
        mm.linear(a, w, beta=0.0)
    with pytest.raises(ValueError, match=r"gy must be contiguous \[4\]"):
        mm.output_step(torch.randn(4, 8, device=tdev), torch.randn(5, device=tdev), torch.randn(8, device=tdev))
    with pytest.raises(TypeError, match="h must be torch.float64 on"):  # w_out's dtype rules
        mm.output_step(torch.randn(4, 8, device=tdev), torch.randn(4, device=tdev), torch.randn(8, device=tdev).double())
    with pytest.raises(TypeError, match=r"h must be torch.float32 \(or float16\)"):
        mm.output_step(torch.randn(4, 8, device=tdev).bfloat16(), torch.randn(4, device=tdev),
                       torch.randn(8, device=tdev))
    with pytest.raises(TypeError, match=r"d must be torch.float32 \(or float16\)"):
        mm.adjoint_step(a, w, torch.randn(4, 8, device=tdev).bfloat16(), torch.randn(4, 8, device=tdev))
    with pytest.raises(TypeError, match="hadj must be torch.float32 on"):  # a gradient: never float16
        mm.down_step(torch.randn(4, 8, device=tdev), w, torch.randn(4, 5, device=tdev),
                     torch.randn(4, 5, device=tdev).half())
    with pytest.raises(TypeError, match="out_dtype must be the weights' torch.float32 or float16"):
        mm.linear(a, w, out_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="out_dtype must be the weights' torch.float32 or float16"):
        mm.reverse_step(torch.randn(4, 8, device=tdev), torch.randn(4, 8, device=tdev), w, out_dtype=torch.bfloat16)
    # rows = 0: nothing launched, an empty result (zero column sums)
    assert mm.linear(a[:0], w).shape == (0, 8)
    out, csum = mm.down_step(torch.randn(0, 8, device=tdev), w, torch.randn(0, 5, device=tdev), colsum=True)
    assert out.shape == (0, 5) and torch.equal(csum, torch.zeros(5, device=tdev))
    acc = torch.ones(8, 5, device=tdev)
    assert torch.equal(mm.weight_grad(torch.randn(0, 8, device=tdev), a[:0], out=acc), torch.ones(8, 5, device=tdev))
    hb, hsum, gw = mm.output_step(torch.randn(0, 8, device=tdev), torch.randn(0, device=tdev),
                                  torch.randn(8, device=tdev))
    assert hb.shape == (0, 8) and not hsum.any() and not gw.any()


def test_triton_mm_block_override(mm, tdev, monkeypatch):
    """NPHT_MLP_MM_BLOCKS / NPHT_MLP_WGRAD_BLOCKS (for tuning on a GPU) pick the float32
    blocks; results unchanged; a malformed value is a clear error."""
    monkeypatch.setenv("NPHT_TRITON_GPU_BLOCKS", "1")  # the GPU's choice, even when interpreting
    monkeypatch.setenv("NPHT_MLP_MM_BLOCKS", "32,256,16,8")
    assert mm._blocks(256, torch.float32) == (32, 256, 16, 8)
    assert mm._blocks(35, torch.float32) == (32, 64, 16, 8)
    a, w = torch.randn(70, 40, device=tdev), torch.randn(35, 40, device=tdev)
    torch.testing.assert_close(mm.linear(a, w), a @ w.t(), rtol=2e-5, atol=2e-5)
    for bad in ("64,128,32", "64,100,32,4", "8,128,32,4", "64,128,32,x"):
        monkeypatch.setenv("NPHT_MLP_MM_BLOCKS", bad)
        with pytest.raises(ValueError, match="NPHT_MLP_MM_BLOCKS"):
            mm._blocks(256, torch.float32)
    monkeypatch.setenv("NPHT_MLP_WGRAD_BLOCKS", "32,32,16,4,8")
    assert mm._wgrad_blocks(torch.float32) == (32, 32, 16, 4, 8)
    b = torch.randn(70, 40, device=tdev)
    torch.testing.assert_close(mm.weight_grad(a[:, :35], b), a[:, :35].t() @ b, rtol=2e-5, atol=1e-4)
    monkeypatch.setenv("NPHT_MLP_WGRAD_BLOCKS", "32,32,16,4")
    with pytest.raises(ValueError, match="NPHT_MLP_WGRAD_BLOCKS must be 'BM,BN,BK,WARPS,SPLITS'"):
        mm._wgrad_blocks(torch.float32)
