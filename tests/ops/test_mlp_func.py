"""npht.softplus_mlp_with_grad under torch.func transforms: grad, vjp, jacrev and vmap run
the registered fused ops (npht::softplus_mlp_grad and its backward) through the op's
autograd.Functions and vmap rules (sets of points folded into the rows of one launch, an
ensemble of MLPs one launch per member); forward mode (jvp, jacfwd, dual tensors) runs the
explicit PyTorch formula. Each case is checked against plain autograd through the
registered ops and against the explicit formula under the same transform."""


import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf

import npht
import npht.reference.mlp as mlp_ref
from _backends import call_counter, close, require_backend
from npht.ops import mlp as mlp_mod

DT = torch.float64
BETA = 10.0

# (backend of the backward's elementwise kernels, matmul)
IMPLS = [
    pytest.param(("reference", "torch"), id="reference"),
    pytest.param(("cpu", "torch"), id="cpu"),
    pytest.param(("triton", "torch"), id="triton"),
    pytest.param(("triton", "triton"), id="triton-matmul"),
    pytest.param(("cuda", "torch"), id="cuda", marks=pytest.mark.cuda),
]


@pytest.fixture(params=IMPLS)
def impl(request):
    backend, matmul = request.param
    return dict(backend=backend, matmul=matmul), require_backend(backend)


# vmap must use the ops' own batching rules, not functorch's per-sample loop (which warns)
pytestmark = pytest.mark.filterwarnings("error:.*performance drop")


def mlp_inputs(device, seed=0, M=9, D=5, width=8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, D, dtype=DT, generator=gen) * 0.5
    weights = [torch.randn(width, D, dtype=DT, generator=gen) * 0.4,
               torch.randn(width, width, dtype=DT, generator=gen) * 0.3,
               torch.randn(1, width, dtype=DT, generator=gen) * 0.3]
    biases = [torch.randn(width, dtype=DT, generator=gen) * 0.5, torch.randn(width, dtype=DT, generator=gen) * 0.5,
              torch.randn(1, dtype=DT, generator=gen)]
    return x.to(device), [w.to(device) for w in weights], [b.to(device) for b in biases]


def fused(**kw):
    """(x, *weights, *biases) -> (y, dy/dx) by the op (3 layers)."""
    return lambda x, *p: npht.softplus_mlp_with_grad(x, list(p[:3]), list(p[3:]), beta=BETA, **kw)


def explicit(x, *p):
    return mlp_ref.softplus_mlp_with_grad_explicit(x, list(p[:3]), list(p[3:]), BETA, 20.0)


def eikonal(mlp):
    def loss(x, *p):
        y, g = mlp(x, *p)
        return ((g.norm(dim=-1) - 1) ** 2).sum() + y.sin().sum()
    return loss


def autograd_grads(fn, args):
    """Gradients of fn(*args) (a scalar) by plain autograd through the registered ops."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    return torch.autograd.grad(fn(*leaves), leaves)


def per_slice(fn, in_dims, args):
    V = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    outs = [fn(*(a if d is None else a.select(d, v) for a, d in zip(args, in_dims))) for v in range(V)]
    return tuple(torch.stack(o) for o in zip(*outs))


OPTIONS = [{}, {"checkpoint": True}, {"keep_gradient_pass": True, "chunk_size": 4}]


@pytest.mark.parametrize("options", OPTIONS, ids=["saved", "checkpoint", "kept-chunked"])
def test_grad_and_vjp(impl, options):
    """A loss on the value and the gradient (eikonal): first derivatives of both outputs,
    with every storage option."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device)
    args = (x, *weights, *biases)
    ours = fused(**kw, **options)
    argnums = tuple(range(7))
    grads = tf.grad(eikonal(ours), argnums=argnums)(*args)
    close(grads, autograd_grads(eikonal(ours), args))
    close(grads, tf.grad(eikonal(explicit), argnums=argnums)(*args))
    close(tf.grad(eikonal(ours), argnums=(0, 3))(*args), (grads[0], grads[3]))  # some arguments only

    (y, g), vjp_fn = tf.vjp(ours, *args)
    gen = torch.Generator().manual_seed(1)
    cot = tuple(torch.randn(t.shape, dtype=DT, generator=gen).to(device) for t in (y, g))
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    close(vjp_fn(cot), torch.autograd.grad(ours(*leaves), leaves, cot))
    close(vjp_fn(cot), tf.vjp(explicit, *args)[1](cot))
    close(vjp_fn((cot[0], torch.zeros_like(g))), tf.vjp(explicit, *args)[1]((cot[0], torch.zeros_like(g))))


def test_jacrev(impl):
    """w.r.t. the points only (the backward's copies folded into its rows), and w.r.t. a
    weight (a launch per copy: the weight gradients are sums over the rows)."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device, M=4, D=3, width=4)
    ours = fused(**kw)
    jac_x = tf.jacrev(lambda x: ours(x, *weights, *biases), argnums=0)(x)
    close(jac_x, tf.jacrev(lambda x: explicit(x, *weights, *biases))(x))
    rows = [autograd_grads(lambda x: ours(x, *weights, *biases)[1][m, k], (x,))[0] for m in range(4) for k in range(3)]
    close(jac_x[1], torch.stack(rows).reshape(4, 3, 4, 3))
    close(tf.jacrev(lambda w: ours(x, w, *weights[1:], *biases))(weights[0]),
          tf.jacrev(lambda w: explicit(x, w, *weights[1:], *biases))(weights[0]))


def test_vmap_points(impl):
    """One MLP, V sets of points: the copies folded into the rows of one launch."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device)
    ours = fused(**kw)
    many = torch.stack([x, x.flip(0), x * 0.5])
    params = (*weights, *biases)
    in_dims = (0,) + (None,) * 6
    expected = per_slice(ours, in_dims, (many, *params))
    close(tf.vmap(ours, in_dims=in_dims)(many, *params), expected)
    close(tf.vmap(ours, in_dims=(1,) + in_dims[1:], out_dims=(1, 0))(many.movedim(0, 1), *params),
          (expected[0].T, expected[1]))
    close(tf.vmap(ours, in_dims=in_dims, chunk_size=2)(many, *params), expected)
    nested = torch.stack([many, many * 2])
    close(tf.vmap(tf.vmap(ours, in_dims=in_dims), in_dims=in_dims)(nested, *params),
          tuple(torch.stack(o) for o in zip(*(per_slice(ours, in_dims, (n, *params)) for n in nested))))
    # single points: value [], gradient [D] per point
    close(tf.vmap(ours, in_dims=in_dims)(x, *params), ours(x, *params))
    close(tf.vmap(ours, in_dims=in_dims)(many, *params), tf.vmap(explicit, in_dims=in_dims)(many, *params))


@pytest.mark.parametrize("options", OPTIONS, ids=["saved", "checkpoint", "kept-chunked"])
def test_vmap_of_grad(impl, options):
    """Per-set gradients w.r.t. the points: the forward's and the backward's rows folded,
    with the saved pre-activations (and gradient-pass vectors) batched, or recomputed."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device)
    ours = fused(**kw, **options)
    many = torch.stack([x, x.flip(0) * 0.7, x + 0.2])
    params = (*weights, *biases)
    got = tf.vmap(tf.grad(eikonal(ours)), in_dims=(0,) + (None,) * 6)(many, *params)
    close(got, torch.stack([autograd_grads(lambda x: eikonal(ours)(x, *params), (m,))[0] for m in many]))


def test_vmap_ensemble(impl):
    """vmap over the weights (an ensemble of MLPs): one launch per member."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device)
    ours = fused(**kw)
    scale = torch.tensor([1.0, 0.8, 1.2], dtype=DT, device=device)
    ws = [w * scale.reshape(3, 1, 1) for w in weights]
    b0 = biases[0] * scale[:, None]
    in_dims = (None, 0, 0, 0, 0, None, None)  # x shared, the weights and the first bias batched
    args = (x, *ws, b0, *biases[1:])
    close(tf.vmap(ours, in_dims=in_dims)(*args), per_slice(ours, in_dims, args))
    close(tf.vmap(ours, in_dims=in_dims)(*args), tf.vmap(explicit, in_dims=in_dims)(*args))
    many = torch.stack([x, x * 0.5, -x])  # a set of points per member
    in_dims = (0,) + in_dims[1:]
    close(tf.vmap(ours, in_dims=in_dims)(many, *args[1:]), per_slice(ours, in_dims, (many, *args[1:])))
    # grad of the members' eikonal losses (vmap of the backward with weight gradients)
    ens_loss = lambda *a: tf.vmap(eikonal(ours), in_dims=in_dims)(*a).sum()  # noqa: E731
    close(tf.grad(ens_loss, argnums=(0, 1, 4))(many, *args[1:]),
          tf.grad(lambda *a: tf.vmap(eikonal(explicit), in_dims=in_dims)(*a).sum(), argnums=(0, 1, 4))(
              many, *args[1:]))


def test_per_point_gradients_and_second_order(impl):
    """vmap(grad(y)) over the points equals the op's gradient output; the gradient of an
    eikonal loss on that output, per set of points under vmap (second order: the op's
    backward of the gradient, batched)."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device)
    ours = fused(**kw)
    params = (*weights, *biases)
    value = lambda p: ours(p, *params)[0]  # noqa: E731 -- one point [D] -> a scalar
    close(tf.vmap(tf.grad(value))(x), ours(x, *params)[1])

    many = torch.stack([x, x.flip(0) * 0.7, x + 0.2])

    def batched(mlp):
        return lambda m, w0, b1: tf.vmap(eikonal(mlp), in_dims=(0,) + (None,) * 6)(
            m, w0, *weights[1:], biases[0], b1, biases[2]).square().sum()

    got = tf.grad(batched(ours), argnums=(0, 1, 2))(many, weights[0], biases[1])
    close(got, autograd_grads(batched(ours), (many, weights[0], biases[1])))
    close(got, tf.grad(batched(explicit), argnums=(0, 1, 2))(many, weights[0], biases[1]))


def test_differentiating_the_backward(impl):
    """The op's backward is differentiable too (its derivative the explicit formula's, by
    torch.func): grad of a loss on vmap(grad(y)) and jacrev(jacrev(y)) under transforms, and
    plain autograd's third derivative, against the explicit formula."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device, M=3)
    ours = fused(**kw)

    def sdf(fn):
        return lambda p, w0: fn(p, w0, *weights[1:], *biases)[0]

    def per_point_grads(fn):
        return lambda w0: tf.vmap(tf.grad(sdf(fn)), in_dims=(0, None))(x, w0).square().sum()

    close(tf.grad(per_point_grads(ours))(weights[0]), tf.grad(per_point_grads(explicit))(weights[0]))
    close(tf.jacrev(tf.jacrev(lambda p: sdf(ours)(p, weights[0])))(x[0]),
          tf.jacrev(tf.jacrev(lambda p: sdf(explicit)(p, weights[0])))(x[0]))
    results = []
    for fn in (ours, explicit):
        leaf = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(sdf(fn)(leaf, weights[0]).sum(), leaf, create_graph=True)
        results.append(torch.autograd.grad(g.square().sum(), leaf)[0])
    close(*results)


def test_forward_mode(impl):
    """jvp, jacfwd, dual tensors and hessian: the explicit formula (no fused forward mode),
    against the fused op's reverse-mode Jacobian."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device, M=4)
    ours = fused(**kw)
    args = (x, *weights, *biases)
    gen = torch.Generator().manual_seed(2)
    tangents = tuple(torch.randn(a.shape, dtype=DT, generator=gen).to(device) for a in args)
    jac = tf.jacrev(ours, argnums=tuple(range(7)))(*args)
    expected = tuple(sum((j.reshape(o.numel(), -1) @ t.reshape(-1)).reshape(o.shape) for j, t in zip(jo, tangents))
                     for jo, o in zip(jac, ours(*args)))
    out, jvp_out = tf.jvp(ours, args, tangents)
    close(out, ours(*args))
    close(jvp_out, expected)
    close(tf.jacfwd(lambda w: ours(x, w, *args[2:]))(weights[0]), tuple(j[1] for j in jac))
    with fwAD.dual_level():
        y, g = ours(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents)))
        tangent_out = fwAD.unpack_dual(y).tangent, fwAD.unpack_dual(g).tangent
    assert all(t is not None for t in tangent_out)  # torch.library ops alone drop them without a word
    close(tangent_out, expected)
    hess = tf.vmap(tf.hessian(lambda p: ours(p, *args[1:])[0]))(x)  # forward over reverse
    close(hess, tf.vmap(tf.jacrev(lambda p: ours(p, *args[1:])[1]))(x))


def test_batched_cotangents(impl):
    """torch.func.vmap over a vjp function: the backward op's vmap rule (rows folded when
    only the points' gradient is asked, a launch per copy with the weights')."""
    kw, device = impl
    x, weights, biases = mlp_inputs(device)
    ours = fused(**kw)
    gen = torch.Generator().manual_seed(3)
    cots = tuple(torch.randn(shape, dtype=DT, generator=gen).to(device) for shape in ((4, 9), (4, 9, 5)))
    params = (*weights, *biases)
    for args in ((x,), (x, *params)):  # the points only (rows folded), the weights too (a launch per copy)
        def fn(*a):
            return ours(*a, *params[len(a) - 1:])

        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        outs = fn(*leaves)
        rows = [torch.autograd.grad(outs, leaves, (cots[0][v], cots[1][v]), retain_graph=True) for v in range(4)]
        _, vjp_fn = tf.vjp(fn, *args)
        close(tf.vmap(vjp_fn)(cots), tuple(torch.stack(g) for g in zip(*rows)))


@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=(
    "autograd.grad(is_grads_batched=True) batches with torch's legacy vmap prototype "
    "(torch._vmap_internals), which ignores register_vmap rules and cannot loop over an op "
    "returning lists: use torch.func.vmap over a vjp function (test_batched_cotangents)"))
def test_is_grads_batched_legacy_vmap():
    x, weights, biases = mlp_inputs("cpu")
    leaf = x.clone().requires_grad_(True)
    _, g = npht.softplus_mlp_with_grad(leaf, weights, biases, beta=BETA, backend="cpu")
    cots = torch.randn(3, *g.shape, dtype=DT)
    got = torch.autograd.grad(g, leaf, cots, is_grads_batched=True, retain_graph=True)[0]
    close(got, torch.stack([torch.autograd.grad(g, leaf, c, retain_graph=True)[0] for c in cots]))


def test_fused_path_runs_under_transforms(monkeypatch):
    """grad, vjp, jacrev and vmap run the registered ops through the autograd.Functions and
    their vmap rules (folded rows or a launch per copy, as documented); the explicit
    formula runs only in forward mode."""
    calls = dict.fromkeys(("forward", "backward", "fold", "per_copy", "explicit"), 0)

    counting = call_counter(calls)

    monkeypatch.setattr(mlp_mod._MlpGradFn, "apply", counting("forward", mlp_mod._MlpGradFn.apply))
    monkeypatch.setattr(mlp_mod._MlpGradBackwardFn, "apply", counting("backward", mlp_mod._MlpGradBackwardFn.apply))
    monkeypatch.setattr(mlp_mod, "_fold_rows", counting("fold", mlp_mod._fold_rows))
    monkeypatch.setattr(mlp_mod, "_per_copy", counting("per_copy", mlp_mod._per_copy))
    explicit_formula = mlp_ref.softplus_mlp_with_grad_explicit

    def refuse(*args):
        calls["explicit"] += 1
        raise AssertionError("the explicit formula ran under a reverse-mode transform")

    monkeypatch.setattr(mlp_ref, "softplus_mlp_with_grad_explicit", refuse)
    x, weights, biases = mlp_inputs("cpu")
    ours = fused(backend="cpu")
    params = (*weights, *biases)

    def ran(transform):
        before = dict(calls)
        transform()
        return {k for k in calls if calls[k] > before[k]}

    assert ran(lambda: tf.grad(eikonal(ours), argnums=(0, 1))(x, *params)) == {"forward", "backward"}
    assert ran(lambda: tf.vjp(ours, x, *params)[1](ours(x, *params))) == {"forward", "backward"}
    assert ran(lambda: tf.jacrev(lambda x: ours(x, *params)[0])(x)) == {"forward", "backward", "fold"}
    assert ran(lambda: tf.jacrev(lambda w: ours(x, w, *params[1:])[0])(weights[0])) == {
        "forward", "backward", "per_copy"}
    many = torch.stack([x, -x])
    assert ran(lambda: tf.vmap(ours, in_dims=(0,) + (None,) * 6)(many, *params)) == {"forward", "fold"}
    assert ran(lambda: tf.vmap(tf.grad(eikonal(ours)), in_dims=(0,) + (None,) * 6)(many, *params)) == {
        "forward", "backward", "fold"}
    ws = torch.stack([weights[0], weights[0] * 2])
    assert ran(lambda: tf.vmap(ours, in_dims=(None, 0) + (None,) * 5)(x, ws, *params[1:])) == {"forward", "per_copy"}
    assert calls["explicit"] == 0

    monkeypatch.setattr(mlp_ref, "softplus_mlp_with_grad_explicit", counting("explicit", explicit_formula))
    assert ran(lambda: tf.jvp(lambda x: ours(x, *params), (x,), (torch.ones_like(x),))) == {"explicit"}


def test_plain_autograd_path_unchanged(monkeypatch):
    """Without a transform or dual tensors the op is the registered one (what opcheck and
    torch.compile see): the autograd.Functions are not used."""
    def refuse(*args):
        raise AssertionError("the torch.func path ran outside a transform")

    monkeypatch.setattr(mlp_mod._MlpGradFn, "apply", refuse)
    monkeypatch.setattr(mlp_mod._MlpGradBackwardFn, "apply", refuse)
    x, weights, biases = mlp_inputs("cpu")
    w0 = weights[0].clone().requires_grad_(True)
    _, g = npht.softplus_mlp_with_grad(x.requires_grad_(True), [w0, *weights[1:]], biases, beta=BETA, backend="cpu")
    ((g.norm(dim=-1) - 1) ** 2).sum().backward()
    assert w0.grad is not None and x.grad is not None


def test_torch_compile_of_a_transform():
    """torch.compile around torch.func.grad (fullgraph): the explicit formula there (torch
    2.13's Dynamo cannot trace the Functions' variable argument lists), equal to eager's
    fused result."""
    x, weights, biases = mlp_inputs("cpu")
    args = tuple(t.float() for t in (x, *weights, *biases))
    g = tf.grad(eikonal(fused(backend="cpu")), argnums=(0, 1))
    close(torch.compile(g, fullgraph=True)(*args), g(*args), rtol=1e-5, atol=1e-6)
