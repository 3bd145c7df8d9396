"""npht.volume_composite under torch.func transforms: grad, vjp, jacrev and vmap run the
registered fused ops (npht::volume_composite and its backward) through the op's
autograd.Functions and vmap rules (the vmapped copies folded into the rays of one launch);
forward mode (jvp, jacfwd, dual tensors) runs the PyTorch reference. Each case is checked
against plain autograd through the registered ops and against the reference formula
under the same transform."""


import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf

import npht
import npht.reference.render as render_ref
from _backends import call_counter, close
from npht.ops import composite as composite_mod

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)  # fused kernels against the reference formula


# vmap must use the ops' own batching rules, not functorch's per-sample loop (which warns)
pytestmark = pytest.mark.filterwarnings("error:.*performance drop")


def dense(device, R=4, S=6, K=2, per_ray_beta=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.sort(torch.rand(R, S, dtype=DT, generator=gen) * 2 + 0.5, -1)[0]
    sdf = (1.4 - z) + 0.1 * torch.randn(R, S, dtype=DT, generator=gen)  # rays crossing a surface
    beta = (0.05 + 0.1 * torch.rand(R if per_ray_beta else 1, dtype=DT, generator=gen))
    values = torch.randn(R, S, K, dtype=DT, generator=gen)
    return [t.to(device) for t in (sdf, z, beta, values)]


def packed(device, counts=(3, 0, 4, 2), K=2, per_ray_beta=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    z = torch.cat([torch.sort(torch.rand(n, dtype=DT, generator=gen) * 2 + 0.5)[0] for n in counts])
    sdf = (1.4 - z) + 0.1 * torch.randn(z.shape, dtype=DT, generator=gen)
    beta = 0.05 + 0.1 * torch.rand(len(counts) if per_ray_beta else 1, dtype=DT, generator=gen)
    values = torch.randn(z.shape[0], K, dtype=DT, generator=gen)
    return [t.to(device) for t in (sdf, z, beta, values)], offsets.to(device)


def fused(backend, offsets=None, last_delta=1e10):
    return lambda sdf, z, beta, values: tuple(npht.volume_composite(
        sdf, z, beta, values, ray_offsets=offsets, last_delta=last_delta, backend=backend))


def reference(offsets=None, last_delta=1e10):
    """The same compositing in PyTorch ops (differentiable in every mode)."""
    return lambda sdf, z, beta, values: render_ref._ref_composite(sdf, z, beta, values, offsets, last_delta)


def scalar(comp):
    def loss(sdf, z, beta, values):
        rendered, depth, opacity, weights = comp(sdf, z, beta, values)
        return rendered.square().sum() + depth.sum() + opacity.square().sum() + weights.sin().sum()
    return loss


def autograd_grads(fn, args, create_graph=False):
    """Gradients of fn(*args) (a scalar) by plain autograd through the registered ops."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    return torch.autograd.grad(fn(*leaves), leaves, create_graph=create_graph)


def layouts(device, layout, per_ray_beta):
    if layout == "dense":
        return dense(device, per_ray_beta=per_ray_beta), None
    return packed(device, per_ray_beta=per_ray_beta)


@pytest.mark.parametrize("layout", ["dense", "packed"])
@pytest.mark.parametrize("per_ray_beta", [False, True], ids=["shared_beta", "per_ray_beta"])
def test_grad_and_vjp(backend, device, layout, per_ray_beta):
    args, offsets = layouts(device, layout, per_ray_beta)
    ours, ref = fused(backend, offsets), reference(offsets)
    grads = tf.grad(scalar(ours), argnums=(0, 1, 2, 3))(*args)
    close(grads, autograd_grads(scalar(ours), args))
    close(grads, tf.grad(scalar(ref), argnums=(0, 1, 2, 3))(*args), **TOL)
    # one argument: the others' gradients are not asked for
    close(tf.grad(scalar(ours), argnums=2)(*args), grads[2])

    outs, vjp_fn = tf.vjp(ours, *args)
    gen = torch.Generator().manual_seed(1)
    cot = tuple(torch.randn(o.shape, dtype=DT, generator=gen).to(device) for o in outs)
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    plain = torch.autograd.grad(ours(*leaves), leaves, cot)
    close(vjp_fn(cot), plain)
    out_ref, vjp_ref = tf.vjp(ref, *args)
    close(outs, out_ref, **TOL)
    close(vjp_fn(cot), vjp_ref(cot), **TOL)


@pytest.mark.parametrize("layout", ["dense", "packed"])
def test_jacrev(backend, device, layout):
    """jacrev vmaps the backward op over the outputs' basis (one folded launch)."""
    (sdf, z, beta, values), offsets = layouts(device, layout, True)

    def rendered_and_depth(impl):
        return lambda s, b: impl(s, z, b, values)[:2]

    jac = tf.jacrev(rendered_and_depth(fused(backend, offsets)), argnums=(0, 1))(sdf, beta)
    close(jac, tf.jacrev(rendered_and_depth(reference(offsets)), argnums=(0, 1))(sdf, beta), **TOL)
    comp = fused(backend, offsets)
    rows = [autograd_grads(lambda s, b: comp(s, z, b, values)[1][r], (sdf, beta)) for r in range(beta.shape[0])]
    close(jac[1], tuple(torch.stack(g) for g in zip(*rows)))  # the depth's rows by plain autograd


def per_slice(fn, in_dims, args, out_dims=0):
    """The reference result of vmap: fn per slice, stacked."""
    V = next(a.shape[d] for a, d in zip(args, in_dims) if d is not None)
    outs = [fn(*(a if d is None else a.select(d, v) for a, d in zip(args, in_dims))) for v in range(V)]
    return tuple(torch.stack(o, out_dims) for o in zip(*outs))


def test_vmap_dense(backend, device):
    sdf, z, beta, values = dense(device)
    ours = fused(backend)
    many = torch.stack([sdf, sdf * 0.5, -sdf + 0.3])
    many_beta = torch.stack([beta, beta * 2, beta * 0.5])
    # sdf only (z, values, beta [R] shared by the copies)
    close(tf.vmap(ours, in_dims=(0, None, None, None))(many, z, beta, values),
          per_slice(ours, (0, None, None, None), (many, z, beta, values)))
    # a shared [1] beta, unbatched and batched
    close(tf.vmap(ours, in_dims=(0, None, None, None))(many, z, beta[:1], values),
          per_slice(ours, (0, None, None, None), (many, z, beta[:1], values)))
    close(tf.vmap(ours, in_dims=(0, None, 0, None))(many, z, many_beta[:, :1], values),
          per_slice(ours, (0, None, 0, None), (many, z, many_beta[:, :1], values)))
    # everything batched, at other dims, out_dims
    args = (many.movedim(0, 1), torch.stack([z, z + 0.1, z * 1.5]), many_beta.T, values.expand(3, *values.shape))
    in_dims = (1, 0, 1, 0)
    close(tf.vmap(ours, in_dims=in_dims, out_dims=1)(*args), per_slice(ours, in_dims, args, out_dims=1))
    close(tf.vmap(ours, in_dims=in_dims)(*args), tf.vmap(fused("reference"), in_dims=in_dims)(*args), **TOL)
    # nested and chunked vmap
    nested = torch.stack([many, many.flip(0)])
    got = tf.vmap(tf.vmap(ours, in_dims=(0, None, None, None)), in_dims=(0, None, None, None))(nested, z, beta, values)
    close(got, tuple(torch.stack(o) for o in zip(*(per_slice(ours, (0, None, None, None), (n, z, beta, values))
                                                     for n in nested))))
    close(tf.vmap(ours, in_dims=(0, None, None, None), chunk_size=2)(many, z, beta, values),
          per_slice(ours, (0, None, None, None), (many, z, beta, values)))
    # no values
    no_values = lambda s, zz, b: tuple(npht.volume_composite(s, zz, b, backend=backend))  # noqa: E731
    close(tf.vmap(no_values, in_dims=(0, None, None))(many, z, beta),
          per_slice(no_values, (0, None, None), (many, z, beta)))


@pytest.mark.parametrize("per_ray_beta", [False, True], ids=["shared_beta", "per_ray_beta"])
def test_vmap_packed(backend, device, per_ray_beta):
    """Packed rays: the copies' samples concatenated, their offsets shifted (one launch)."""
    (sdf, z, beta, values), offsets = packed(device, per_ray_beta=per_ray_beta)
    ours = fused(backend, offsets)
    many = torch.stack([sdf, sdf * 0.5, -sdf + 0.3])
    many_values = torch.stack([values, -values, values * 2])
    close(tf.vmap(ours, in_dims=(0, None, None, 0))(many, z, beta, many_values),
          per_slice(ours, (0, None, None, 0), (many, z, beta, many_values)))
    many_beta = torch.stack([beta, beta * 2, beta * 0.5])
    close(tf.vmap(ours, in_dims=(1, None, 0, None))(many.T, z, many_beta, values),
          per_slice(ours, (1, None, 0, None), (many.T, z, many_beta, values)))
    close(tf.vmap(ours, in_dims=(0, None, 0, 0))(many, z, many_beta, many_values),
          tf.vmap(fused("reference", offsets), in_dims=(0, None, 0, 0))(many, z, many_beta, many_values), **TOL)
    # vmapped offsets (the registered op's rule; the public function checks them eagerly)
    other = torch.tensor([0, 1, 5, 5, 9], device=device)
    both = torch.stack([offsets, other])

    def op(s, o):
        return torch.ops.npht.volume_composite(s, z, beta, values, o, 1e10, backend)

    close(tf.vmap(op)(many[:2], both), per_slice(op, (0, 0), (many[:2], both)))


def test_vmap_of_grad_and_second_order(backend, device):
    """Per-copy gradients (vmap(grad)), and the gradient of a loss on a gradient (the op's
    double backward, the reference's as with plain autograd), also through vmap(grad)."""
    sdf, z, beta, values = dense(device)
    ours = scalar(fused(backend))
    many = torch.stack([sdf, sdf * 0.5, -sdf + 0.3])
    grads = tf.vmap(tf.grad(ours, argnums=(0, 2)), in_dims=(0, None, None, None))(many, z, beta, values)
    rows = [autograd_grads(lambda s, b: ours(s, z, b, values), (s, beta)) for s in many]
    close(grads, tuple(torch.stack(g) for g in zip(*rows)))

    def on_gradient(loss):
        def outer(s, b, v):
            g_sdf, g_beta = tf.grad(loss, argnums=(0, 2))(s, z, b, v)
            return g_sdf.square().sum() + g_beta.sin().sum()
        return outer

    second = tf.grad(on_gradient(ours), argnums=(0, 1, 2))(sdf, beta, values)
    leaves = [t.detach().clone().requires_grad_(True) for t in (sdf, beta, values)]
    g_sdf, g_beta = torch.autograd.grad(ours(leaves[0], z, leaves[1], leaves[2]), leaves[:2], create_graph=True)
    close(second, torch.autograd.grad(g_sdf.square().sum() + g_beta.sin().sum(), leaves))
    close(second, tf.grad(on_gradient(scalar(reference())), argnums=(0, 1, 2))(sdf, beta, values), **TOL)

    def batched(loss):  # through vmap(grad): the double backward of a folded launch
        return lambda b: tf.vmap(tf.grad(loss), in_dims=(0, None, None, None))(many, z, b, values).square().sum()

    close(tf.grad(batched(ours))(beta), tf.grad(batched(scalar(reference())))(beta), **TOL)


def test_third_derivative(backend, device):
    """Under the transforms the double backward (the reference's, by torch.func) is
    differentiable again."""
    sdf, z, beta, values = dense(device, R=2, S=4)

    def third(loss):
        def second(s):
            return tf.grad(lambda s: tf.grad(loss)(s, z, beta, values).square().sum())(s).sin().sum()
        return tf.grad(second)(sdf)

    close(third(scalar(fused(backend))), third(scalar(reference())), **TOL)


@pytest.mark.parametrize("layout", ["dense", "packed"])
def test_forward_mode(backend, device, layout):
    """jvp, jacfwd and dual tensors: the reference formula (no fused forward mode), against
    the fused ops' reverse-mode Jacobian."""
    args, offsets = layouts(device, layout, True)
    ours = fused(backend, offsets)
    gen = torch.Generator().manual_seed(2)
    tangents = tuple(torch.randn(a.shape, dtype=DT, generator=gen).to(device) for a in args)
    out, jvp_out = tf.jvp(ours, tuple(args), tangents)
    jac = tf.jacrev(ours, argnums=(0, 1, 2, 3))(*args)
    expected = tuple(sum((j.reshape(o.numel(), -1) @ t.reshape(-1)).reshape(o.shape) for j, t in zip(jo, tangents))
                     for jo, o in zip(jac, out))
    close(jvp_out, expected, **TOL)
    close(out, ours(*args))
    close(tf.jacfwd(lambda s: ours(s, *args[1:])[1])(args[0]), jac[1][0], **TOL)
    with fwAD.dual_level():
        outs = ours(*(fwAD.make_dual(a, t) for a, t in zip(args, tangents)))
        tangent_out = tuple(fwAD.unpack_dual(o).tangent for o in outs)
    assert all(t is not None for t in tangent_out)  # torch.library ops alone drop them without a word
    close(tangent_out, expected, **TOL)
    # torch.func.hessian (forward over reverse) w.r.t. beta
    hess = tf.hessian(lambda b: ours(args[0], args[1], b, args[3])[1].sum())(args[2])
    close(hess, tf.jacrev(tf.jacrev(lambda b: ours(args[0], args[1], b, args[3])[1].sum()))(args[2]), **TOL)


def test_batched_gradients(backend, device):
    """Batched cotangents: torch.func.vmap over a vjp function (the backward op's vmap rule)
    and plain autograd's autograd.grad(..., is_grads_batched=True) (torch's legacy vmap
    prototype, which loops over the copies: it does not consult register_vmap rules)."""
    args = dense(device)
    ours = fused(backend)
    gen = torch.Generator().manual_seed(3)
    outs = ours(*args)
    cots = tuple(torch.randn(3, *o.shape, dtype=DT, generator=gen).to(device) for o in outs)
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    plain_outs = ours(*leaves)
    rows = [torch.autograd.grad(plain_outs, leaves, tuple(c[v] for c in cots), retain_graph=True) for v in range(3)]
    expected = tuple(torch.stack(g) for g in zip(*rows))
    _, vjp_fn = tf.vjp(ours, *args)
    close(tf.vmap(vjp_fn)(cots), expected)
    close(torch.autograd.grad(plain_outs, leaves, cots, is_grads_batched=True), expected)


def test_fused_path_runs_under_transforms(monkeypatch):
    """grad, vjp, jacrev, vmap and vmap(grad) run the registered ops through the
    autograd.Functions, folded by the vmap rules; the reference formula does not run
    (it is what forward mode uses)."""
    calls = {"forward": 0, "backward": 0, "fold": 0, "reference": 0}

    counting = call_counter(calls)

    monkeypatch.setattr(composite_mod._CompositeFn, "apply", counting("forward", composite_mod._CompositeFn.apply))
    monkeypatch.setattr(composite_mod._CompositeBackwardFn, "apply",
                        counting("backward", composite_mod._CompositeBackwardFn.apply))
    monkeypatch.setattr(composite_mod, "_fold_rays", counting("fold", composite_mod._fold_rays))
    reference_composite = render_ref._ref_composite

    def refuse(*args):
        calls["reference"] += 1
        raise AssertionError("the reference formula ran under a reverse-mode transform")

    monkeypatch.setattr(render_ref, "_ref_composite", refuse)
    sdf, z, beta, values = dense("cpu")
    ours = fused("cpu")
    loss = scalar(ours)

    def ran(transform):
        before = dict(calls)
        transform()
        return {k for k in calls if calls[k] > before[k]}

    assert ran(lambda: tf.grad(loss, argnums=(0, 1, 2, 3))(sdf, z, beta, values)) == {"forward", "backward"}
    assert ran(lambda: tf.vjp(ours, sdf, z, beta, values)[1](ours(sdf, z, beta, values))) == {"forward", "backward"}
    # jacrev: the backward op's vmap rule
    assert ran(lambda: tf.jacrev(lambda s: ours(s, z, beta, values)[1])(sdf)) == {"forward", "backward", "fold"}
    many = torch.stack([sdf, -sdf])
    assert ran(lambda: tf.vmap(ours, in_dims=(0, None, None, None))(many, z, beta, values)) == {"forward", "fold"}
    assert ran(lambda: tf.vmap(tf.grad(loss), in_dims=(0, None, None, None))(many, z, beta, values)) == {
        "forward", "backward", "fold"}
    assert calls["reference"] == 0

    monkeypatch.setattr(render_ref, "_ref_composite", counting("reference", reference_composite))
    assert ran(lambda: tf.jvp(lambda s: ours(s, z, beta, values), (sdf,), (torch.ones_like(sdf),))) == {"reference"}


def test_plain_autograd_path_unchanged(monkeypatch):
    """Without a transform or dual tensors the op is the registered one (what opcheck and
    torch.compile see): the autograd.Functions are not used, double backward included."""
    def refuse(*args):
        raise AssertionError("the torch.func path ran outside a transform")

    monkeypatch.setattr(composite_mod._CompositeFn, "apply", refuse)
    monkeypatch.setattr(composite_mod._CompositeBackwardFn, "apply", refuse)
    sdf, z, beta, values = dense("cpu")
    leaves = [t.clone().requires_grad_(True) for t in (sdf, beta)]
    g_sdf, g_beta = torch.autograd.grad(scalar(fused("cpu"))(leaves[0], z, leaves[1], values), leaves,
                                        create_graph=True)
    (g_sdf.square().sum() + g_beta.sum()).backward()
    assert all(t.grad is not None for t in leaves)


def test_torch_compile_of_a_transform():
    """torch.compile around torch.func.grad traces the autograd.Functions (fullgraph)."""
    (sdf, z, beta, values), offsets = packed("cpu")
    sdf, z, beta, values = (t.float() for t in (sdf, z, beta, values))
    g = tf.grad(lambda s, b: scalar(fused("cpu", offsets))(s, z, b, values), argnums=(0, 1))
    close(torch.compile(g, fullgraph=True)(sdf, beta), g(sdf, beta), rtol=1e-5, atol=1e-6)
