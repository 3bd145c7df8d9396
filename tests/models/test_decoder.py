import pytest
import torch
import torch.nn.functional as F

import npht
from _backends import require_backend
from npht.models import TriplaneDecoder


def test_thesis_architecture():
    dec = TriplaneDecoder(feature_dim=32)
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(35, 256)] + [(256, 256)] * 3 + [(256, 1)]
    softplus = [m for m in dec.modules() if isinstance(m, torch.nn.Softplus)]
    assert len(softplus) == 4 and all(m.beta == 100 for m in softplus)


def test_sdf_of_triplanes_matches_manual_composition():
    dec = TriplaneDecoder(feature_dim=6, hidden=16)
    planes = torch.randn(2, 3, 6, 8, 8)
    points = torch.rand(2, 10, 3) * 2 - 1
    feat = npht.triplane_sample(planes, points)
    expected = dec.net(torch.cat([feat, points], -1)).squeeze(-1)
    torch.testing.assert_close(dec.sdf(planes, points), expected)
    assert dec.sdf(planes, points).shape == (2, 10)


def test_bad_feature_width():
    dec = TriplaneDecoder(feature_dim=6, hidden=16)
    with pytest.raises(ValueError, match=r"features must have 6 channels"):
        dec(torch.randn(2, 10, 5), torch.rand(2, 10, 3))
    with pytest.raises(ValueError, match=r"num_layers must be >= 2"):
        TriplaneDecoder(num_layers=1)


@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("sample_backend", ["reference", "cpu"])
@pytest.mark.parametrize("mlp_backend,mlp_matmul,keep", [("reference", "torch", False), ("auto", "torch", False),
                                                          ("auto", "triton", False), ("auto", "torch", True),
                                                          ("auto", "triton", True)])
def test_fused_sdf_and_gradient_matches_autograd(checkpoint, sample_backend, mlp_backend, mlp_matmul, keep):
    """The eikonal training step: SDF gradient through features and the direct point
    input, loss on its norm, gradients to planes, decoder and points."""
    if mlp_matmul == "triton":
        require_backend("triton")
    torch.manual_seed(0)
    dec = TriplaneDecoder(feature_dim=5, hidden=24).double()
    planes = (torch.randn(2, 3, 5, 9, 7, dtype=torch.float64) * 0.3).requires_grad_()
    points = (torch.rand(2, 33, 3, dtype=torch.float64) * 2 - 1).requires_grad_()
    params = [planes, points, *dec.parameters()]
    results = []
    for fused in (False, True):
        sdf, grad = dec.sdf_and_gradient(planes, points, fused=fused, checkpoint=checkpoint,
                                         backend=sample_backend, mlp_backend=mlp_backend,
                                         mlp_matmul=mlp_matmul, mlp_keep_gradient_pass=keep)
        loss = ((grad.norm(dim=-1) - 1) ** 2).mean() + sdf.abs().mean()
        results.append((sdf, grad, torch.autograd.grad(loss, params, allow_unused=True,
                                                        materialize_grads=True)))
    (s0, g0, r0), (s1, g1, r1) = results
    assert s1.shape == (2, 33) and g1.shape == (2, 33, 3)
    torch.testing.assert_close(s1, s0)
    torch.testing.assert_close(g1, g0)
    for a, b in zip(r1, r0):
        torch.testing.assert_close(a, b)
    # the gradient is the SDF's: finite differences along x
    eps = 1e-6
    shifted = points.detach() + torch.tensor([eps, 0, 0], dtype=torch.float64)
    fd = (dec.sdf(planes, shifted, backend=sample_backend) - dec.sdf(planes, points, backend=sample_backend)) / eps
    torch.testing.assert_close(g1[..., 0], fd, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("storage", [dict(mlp_h_dtype=torch.float16),
                                     dict(mlp_h_dtype=torch.float16, mlp_d_dtype=torch.float16,
                                          mlp_keep_gradient_pass=True)], ids=["h16", "h16-d16-kept"])
def test_fused_sdf_and_gradient_float16_storage(storage):
    """mlp_h_dtype / mlp_d_dtype = torch.float16 (float32 decoder, Triton products): the
    eikonal step's gradients close to float32 autograd's (cosine; the storage rounds like
    TF32), and the options reach the op (its error shows; float32 alone is ~1e-6)."""
    require_backend("triton")
    torch.manual_seed(0)
    dec = TriplaneDecoder(feature_dim=5, hidden=32)
    planes = (torch.randn(2, 3, 5, 9, 7) * 0.3).requires_grad_()
    points = (torch.rand(2, 65, 3) * 2 - 1).requires_grad_()
    params = [planes, points, *dec.parameters()]
    results = []
    for kw in (dict(fused=False), dict(mlp_matmul="triton", **storage)):
        sdf, grad = dec.sdf_and_gradient(planes, points, backend="cpu", **kw)
        loss = ((grad.norm(dim=-1) - 1) ** 2).mean() + sdf.abs().mean()
        results.append((sdf, grad, torch.autograd.grad(loss, params)))
    (s0, g0, r0), (s1, g1, r1) = results
    torch.testing.assert_close(s1, s0, rtol=1e-3, atol=1e-3)
    for a, b in zip((g1, *r1), (g0, *r0)):
        assert F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0) > 0.9999
    assert max((a - b).abs().max() / b.abs().max() for a, b in zip(r1, r0)) > 1e-5
    with pytest.raises(ValueError, match="needs float32 inputs and matmul='triton'"):
        dec.sdf_and_gradient(planes, points, backend="cpu", **storage)


def test_sdf_and_gradient_without_grad_mode():
    dec = TriplaneDecoder(feature_dim=4, hidden=16)
    planes = torch.randn(1, 3, 4, 8, 8, requires_grad=True)
    points = torch.rand(1, 20, 3) * 2 - 1
    with torch.no_grad():
        sdf, grad = dec.sdf_and_gradient(planes, points)
    assert not sdf.requires_grad and not grad.requires_grad
    s0, g0 = dec.sdf_and_gradient(planes, points, fused=False)
    torch.testing.assert_close(sdf, s0.detach())
    torch.testing.assert_close(grad, g0.detach())


@pytest.mark.parametrize("fused", [False, True])
def test_sdf_and_gradient_under_inference_mode(fused):
    """torch.inference_mode() switches autograd off: the gradient is computed outside it on
    copies of the (inference) inputs, as under no_grad (it raised "element 0 of tensors
    does not require grad")."""
    dec = TriplaneDecoder(feature_dim=4, hidden=16)
    planes = torch.randn(1, 3, 4, 8, 8)
    points = torch.rand(1, 20, 3) * 2 - 1
    s0, g0 = dec.sdf_and_gradient(planes, points, fused=False)
    with torch.inference_mode():
        p_inf, x_inf = planes.clone(), points.clone()  # inference tensors, as a model would make them
        sdf, grad = dec.sdf_and_gradient(p_inf, x_inf, fused=fused)
    assert not sdf.requires_grad and not grad.requires_grad
    torch.testing.assert_close(sdf, s0.detach())
    torch.testing.assert_close(grad, g0.detach())


def test_sdf_and_gradient_feature_mismatch():
    dec = TriplaneDecoder(feature_dim=4, hidden=16)
    with pytest.raises(ValueError, match="decoder expects 4"):
        dec.sdf_and_gradient(torch.randn(1, 3, 5, 8, 8), torch.rand(1, 20, 3))


def test_geometric_init_is_close_to_a_sphere():
    torch.manual_seed(0)
    dec = TriplaneDecoder().geometric_init_(0.5, generator=torch.Generator().manual_seed(0))
    planes = torch.randn(1, 3, 32, 16, 16) * 0.1
    dirs = torch.nn.functional.normalize(torch.randn(1, 2000, 3), dim=-1)
    with torch.no_grad():
        centre = dec.sdf(planes, torch.zeros(1, 1, 3))
        far = dec.sdf(planes, dirs * 0.95)
    # inside at the centre (finite width: about -0.28, not -0.5), outside near the unit sphere
    assert centre.item() < -0.15 and (far > 0).float().mean() > 0.99
    pts = dirs * torch.rand(1, 2000, 1)
    with torch.no_grad():
        err = dec.sdf(planes, pts) - (pts.norm(dim=-1) - 0.5)
        on = dec(torch.zeros(2000, 32), dirs[0] * 0.5)  # zero features: the sphere itself
    assert err.abs().mean() < 0.15
    assert on.mean().abs() < 0.01 and on.std() < 0.1  # the softplus offset is re-centred
    # the thesis model built directly has the same initialisation as npht train's
    from npht.models import IdentityModel

    with torch.no_grad():
        thesis = IdentityModel.thesis(1).decoder(torch.zeros(2000, 32), dirs[0] * 0.5)
    assert thesis.mean().abs() < 0.01
    assert IdentityModel.thesis(1, geometric_init=False).decoder.net[-1].bias.abs().item() < 0.1


def test_decoder_point_shape_error():
    dec = TriplaneDecoder(4, hidden=8)
    with pytest.raises(ValueError, match=r"points must have shape \(5, 3\)"):
        dec(torch.zeros(5, 4), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"points must have shape \(5, 3\)"):
        dec(torch.zeros(5, 4), torch.zeros(4, 3))


def test_half_precision_planes_with_a_float32_decoder():
    """float16/bfloat16 planes (the op samples them in float32, returns their dtype) feed a
    float32 decoder on both paths: the features are cast to the decoder's dtype."""
    dec = TriplaneDecoder(feature_dim=4, hidden=8, num_layers=3)
    planes = torch.randn(1, 3, 4, 8, 8).bfloat16()
    points = torch.rand(1, 10, 3) * 2 - 1
    expected = dec.sdf_and_gradient(planes.float(), points, fused=False)  # the same planes, in float32
    for fused in (False, True):
        sdf, grad = dec.sdf_and_gradient(planes, points, fused=fused)
        assert sdf.dtype == grad.dtype == torch.float32
        # only the bfloat16 rounding of the sampled features differs
        torch.testing.assert_close(sdf, expected[0], rtol=0, atol=0.02)
        torch.testing.assert_close(grad, expected[1], rtol=0, atol=0.05)
    assert dec.sdf(planes.half(), points).dtype == torch.float32


def test_integer_points_are_a_clear_error():
    dec = TriplaneDecoder(feature_dim=4, hidden=8, num_layers=2)
    with pytest.raises(TypeError, match="points must be a floating-point tensor"):
        dec.sdf_and_gradient(torch.randn(1, 3, 4, 8, 8), torch.zeros(1, 10, 3, dtype=torch.long))


def _eikonal(grad):
    return (grad.norm(dim=-1) - 1).square().mean()


class _EikonalLoss(torch.nn.Module):
    """The eikonal loss of ``dec`` at given points, as a module for torch.func.functional_call."""

    def __init__(self, dec, planes, kw):
        super().__init__()
        self.dec, self.planes, self.kw = dec, planes, kw

    def forward(self, points):
        return _eikonal(self.dec.sdf_and_gradient(self.planes, points, **self.kw)[1])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_sdf_and_gradient_under_torch_func(fused, backend):
    """sdf_and_gradient inside torch.func transforms (requires_grad_ / autograd.grad are
    refused there): vmap over point sets, per-sample eikonal gradients of the decoder's
    parameters (functional_call + grad + vmap) and of the planes, and the Hessian w.r.t.
    the points (jacrev of the gradient), each against plain autograd."""
    import torch.func as tf

    torch.manual_seed(0)
    dec = TriplaneDecoder(feature_dim=4, hidden=16, num_layers=3).double()
    planes = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64) * 0.5
    sets = torch.rand(3, 1, 7, 3, dtype=torch.float64) * 1.6 - 0.8
    kw = dict(fused=fused, backend=backend)

    # vmap over point sets: the values and gradients of a loop of plain calls
    sdf_v, grad_v = tf.vmap(lambda p: dec.sdf_and_gradient(planes, p, **kw))(sets)
    for i, p in enumerate(sets):
        s, g = dec.sdf_and_gradient(planes, p, **kw)
        torch.testing.assert_close(sdf_v[i], s)
        torch.testing.assert_close(grad_v[i], g)

    # per-sample gradients of an eikonal loss w.r.t. the decoder's parameters
    module = _EikonalLoss(dec, planes, kw)
    params = {k: v.detach() for k, v in module.named_parameters()}
    per_sample = tf.vmap(tf.grad(lambda prm, p: tf.functional_call(module, prm, (p,))), in_dims=(None, 0))(params, sets)
    for i, p in enumerate(sets):
        expected = torch.autograd.grad(module(p), list(module.parameters()), allow_unused=True,
                                       materialize_grads=True)  # the last bias: not in the gradient
        for (name, got), want in zip(per_sample.items(), expected):
            torch.testing.assert_close(got[i], want, msg=name)
        assert sum(int(w.abs().sum() > 0) for w in expected) == len(expected) - 1

    # the planes' gradient of the eikonal loss, and the Hessian w.r.t. the points
    p = sets[0]
    got = tf.grad(lambda pl: _eikonal(dec.sdf_and_gradient(pl, p, **kw)[1]))(planes)
    pl = planes.clone().requires_grad_()
    (want,) = torch.autograd.grad(_eikonal(dec.sdf_and_gradient(pl, p, **kw)[1]), pl)
    torch.testing.assert_close(got, want)
    hess = tf.jacrev(lambda q: dec.sdf_and_gradient(planes, q, **kw)[1].sum(1))(p)  # [1, 3, 1, 7, 3]
    q = p.clone().requires_grad_()
    g = dec.sdf_and_gradient(planes, q, **kw)[1].sum(1)
    rows = torch.stack([torch.autograd.grad(g[0, j], q, retain_graph=True)[0] for j in range(3)])  # [3, 1, 7, 3]
    torch.testing.assert_close(hess[0], rows)
    assert hess.abs().sum() > 0


@pytest.mark.parametrize("fused", [False, True])
def test_grouped_equals_repeated_planes(fused):
    """decoder.grouped(planes, V): the rows of a shape's V cameras sampled together from its
    planes equal each row sampled from planes.repeat_interleave(V, 0) (values, the points'
    gradient, and the gradients of a loss on both to the planes and the decoder)."""
    torch.manual_seed(0)
    dec = TriplaneDecoder(feature_dim=4, hidden=16, num_layers=3).double()
    planes = (torch.randn(2, 3, 4, 6, 5, dtype=torch.float64) * 0.5).requires_grad_()
    points = torch.rand(2 * 3, 7, 3, dtype=torch.float64) * 1.6 - 0.8

    def loss(sdf, grad):
        return sdf.square().sum() + (grad.norm(dim=-1) - 1).square().sum()

    sdf_fn, both_fn = dec.grouped(planes, 3)
    s, g = both_fn(points, fused=fused)
    assert s.shape == (6, 7) and g.shape == (6, 7, 3)
    torch.testing.assert_close(sdf_fn(points), s)
    got = torch.autograd.grad(loss(s, g), [planes, *dec.parameters()])
    rep = planes.repeat_interleave(3, 0)
    s0, g0 = dec.sdf_and_gradient(rep, points, fused=fused)
    torch.testing.assert_close(s, s0)
    torch.testing.assert_close(g, g0)
    for a, b in zip(got, torch.autograd.grad(loss(s0, g0), [planes, *dec.parameters()])):
        torch.testing.assert_close(a, b)
    # channels-last planes as they are; bad rows and groups named
    cl = planes.detach().permute(0, 1, 3, 4, 2).contiguous()
    torch.testing.assert_close(dec.grouped(cl, 3, channels_last=True)[0](points), s.detach())
    with pytest.raises(ValueError, match=r"points must be \[B \* group = 6, n, 3\]"):
        sdf_fn(points[:5])
    with pytest.raises(ValueError, match="group must be an int >= 1"):
        dec.grouped(planes, 0)
