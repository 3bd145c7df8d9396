"""Loss terms against known values (analytic sphere SDF, linear discriminator, ramps),
gradients, the multi-stage schedule and the Table 4.1 weights."""

import math

import pytest
import torch

from npht.train import (
    LossWeights, correspondence_loss, deformation_penalty, discriminator_loss,
    edr_perturbation, eikonal_loss, explicit_density_loss, expression_losses, generator_loss,
    identity_losses, latent_loss, multi_stage_schedule, non_surface_loss, normal_map_loss,
    r1_penalty, surface_normal_loss, surface_normals_from_batch, surface_sdf_loss,
    total_variation_loss, triplane_l2_loss,
)

R = 0.5


def sphere(points, scale=1.0):
    """f = scale * (|x| - R) and its gradient by autograd."""
    x = points.detach().clone().requires_grad_(True)
    f = scale * (x.norm(dim=-1) - R)
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    return f, g


def unit_dirs(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=dtype), dim=-1)


# ------------------------------------------------------------------- 3D terms

def test_sphere_surface_terms_are_zero():
    n = unit_dirs(64)
    f, g = sphere(R * n)
    assert surface_sdf_loss(f).item() == pytest.approx(0.0, abs=1e-12)
    assert surface_normal_loss(g, n).item() == pytest.approx(0.0, abs=1e-12)
    assert eikonal_loss(g).item() == pytest.approx(0.0, abs=1e-12)
    assert eikonal_loss(g, mode="square").item() == pytest.approx(0.0, abs=1e-24)


def test_scaled_sphere_known_values():
    n = unit_dirs(32, seed=1)
    radii = torch.linspace(0.1, 0.9, 32, dtype=torch.float64)
    f, g = sphere(radii[:, None] * n, scale=2.0)
    # |f| = 2 | r - R |
    assert surface_sdf_loss(f).item() == pytest.approx((2 * (radii - R).abs()).mean().item())
    assert surface_sdf_loss(f, "sum").item() == pytest.approx((2 * (radii - R).abs()).sum().item())
    # ||grad|| = 2: eikonal exactly 1 per point, in both modes
    ones = torch.ones(32, dtype=torch.float64)
    torch.testing.assert_close(eikonal_loss(g, reduction="none"), ones)
    assert eikonal_loss(g, mode="square").item() == pytest.approx(1.0)
    # thesis' literal normal term: 1 - <2n, n> = -1; the cosine form is 0
    assert surface_normal_loss(g, n, normalize=False).item() == pytest.approx(-1.0)
    assert surface_normal_loss(g, n).item() == pytest.approx(0.0, abs=1e-12)   # default: cosine
    assert surface_normal_loss(g, n, normalize=True).item() == pytest.approx(0.0, abs=1e-12)
    # opposite normals: 1 - (-1) = 2 with the cosine form
    assert surface_normal_loss(g, -n, normalize=True).item() == pytest.approx(2.0)


def test_non_surface_penalty():
    assert non_surface_loss(torch.zeros(5)).item() == pytest.approx(1.0)
    f = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)
    want = torch.exp(-10 * f.abs())
    torch.testing.assert_close(non_surface_loss(f, reduction="none"), want)
    assert non_surface_loss(f).item() == pytest.approx(want.mean().item())
    assert non_surface_loss(f, alpha=3.0, reduction="sum").item() == pytest.approx(
        torch.exp(-3 * f.abs()).sum().item())


def test_explicit_density():
    a = torch.tensor([0.0, 1.0, 2.0])
    b = torch.tensor([0.5, 1.0, 0.0])
    assert explicit_density_loss(a, b).item() == pytest.approx((0.25 + 0 + 4) / 3)
    assert explicit_density_loss(a, a).item() == 0.0
    p = torch.zeros(20000, 3)
    moved = edr_perturbation(p, generator=torch.Generator().manual_seed(0))
    assert moved.std().item() == pytest.approx(0.01, rel=0.05)     # N(0, 1e-4): std 0.01


# ------------------------------------------------------------------- 2D terms

def test_normal_map_l1_with_masks():
    pred = torch.zeros(2, 3, 4, 3)
    target = torch.zeros(2, 3, 4, 3)
    target[..., 2] = 1.0                  # every pixel: L1 error 1
    pred[0, 0, 0] = torch.tensor([1.0, -1.0, 0.0])   # this pixel: |1|+|-1|+|-1| = 3
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[1, 2, 3] = True
    assert normal_map_loss(pred, target, mask).item() == pytest.approx((3 + 1) / 2)
    assert normal_map_loss(pred, target, mask, "sum").item() == pytest.approx(4.0)
    # no mask: background counts too (24 pixels, one with error 3)
    assert normal_map_loss(pred, target).item() == pytest.approx((23 + 3) / 24)
    # masked-out pixels do not matter, and an empty mask gives 0
    pred2 = pred.clone()
    pred2[1, 0, 0] = 100.0
    assert normal_map_loss(pred2, target, mask).item() == pytest.approx(2.0)
    assert normal_map_loss(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_gan_losses_at_zero_logits():
    z = torch.zeros(4)
    assert generator_loss(z).item() == pytest.approx(math.log(2))
    assert discriminator_loss(z, z).item() == pytest.approx(2 * math.log(2))
    d = torch.tensor([1.5, -0.5])
    assert generator_loss(d).item() == pytest.approx(
        sum(math.log1p(math.exp(-v)) for v in (1.5, -0.5)) / 2)


def test_r1_on_linear_discriminator():
    a = torch.tensor([0.3, -1.2, 2.0, 0.5], dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    d = x @ a
    a2 = a.square().sum().item()
    assert r1_penalty(d, x).item() == pytest.approx(5.0 * a2)                 # thesis 4.8
    d = x @ a
    assert r1_penalty(d, x, half=True).item() == pytest.approx(2.5 * a2)      # gamma/2
    # it trains D: differentiable w.r.t. a (create_graph)
    a_p = a.clone().requires_grad_(True)
    pen = r1_penalty(x @ a_p, x, weight=1.0)
    (ga,) = torch.autograd.grad(pen, a_p)
    torch.testing.assert_close(ga, 2 * a)


def test_r1_needs_grad_input():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x_real must require grad"):
        r1_penalty(x.sum(1), x)


# ------------------------------------------------------------------- planes, latents

def test_total_variation_and_triplane_l2():
    B, C, H, W = 2, 3, 4, 5
    const = torch.full((B, 3, C, H, W), 0.7)
    assert total_variation_loss(const).item() == 0.0
    assert total_variation_loss(const, mode="flip").item() == 0.0
    s = 0.25
    ramp = (s * torch.arange(W, dtype=torch.float64)).expand(B, 3, C, H, W)
    # shift: W-differences all s (C*H*(W-1) of them), H-differences 0; 3 planes
    assert total_variation_loss(ramp).item() == pytest.approx(3 * s * math.sqrt(C * H * (W - 1)))
    # flip along W: t - flip(t) = s*(2w - (W-1)); flip along H: 0
    w = torch.arange(W, dtype=torch.float64)
    want = 3 * math.sqrt(C * H * (s * (2 * w - (W - 1))).square().sum().item())
    assert total_variation_loss(ramp, mode="flip").item() == pytest.approx(want)
    # L2: ||const plane|| = 0.7 sqrt(C H W), 3 planes
    assert triplane_l2_loss(const).item() == pytest.approx(3 * 0.7 * math.sqrt(C * H * W), rel=1e-6)


@pytest.mark.parametrize("mode", ["shift", "flip"])
def test_plane_norms_have_finite_gradients_at_zero(mode):
    """A constant plane (TV) or a zero plane (L2) is each term's minimum: the gradient there
    is 0, not sqrt's 0 * inf = nan (which made every such step non-finite, hence skipped)."""
    B, C, H, W = 2, 3, 4, 5
    const = torch.full((B, 3, C, H, W), 0.7, requires_grad=True)
    total_variation_loss(const, mode=mode).backward()
    assert torch.equal(const.grad, torch.zeros_like(const))
    zero = torch.zeros(B, 3, C, H, W, requires_grad=True)
    triplane_l2_loss(zero).backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))
    # one zero plane among non-zero ones: finite, and the others' gradients unchanged
    x = torch.randn(B, 3, C, H, W, dtype=torch.float64)
    x[0, 1] = 0
    x.requires_grad_(True)
    triplane_l2_loss(x).backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[0, 1], torch.zeros(C, H, W, dtype=torch.float64))
    torch.testing.assert_close(x.grad[1], x.detach()[1] / x.detach()[1].flatten(1).norm(dim=1)[:, None, None, None] / B)


def test_latent_loss():
    z = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert latent_loss(z).item() == pytest.approx((25 + 1) / 2)
    assert latent_loss(torch.tensor([3.0, 4.0])).item() == pytest.approx(25.0)


def test_expression_losses():
    x = torch.zeros(4, 3)
    posed = torch.ones(4, 3)
    delta = torch.ones(4, 3)
    assert correspondence_loss(x, delta, posed).item() == 0.0
    assert correspondence_loss(x, torch.zeros(4, 3), posed).item() == pytest.approx(3.0)
    assert deformation_penalty(torch.full((5, 3), 2.0)).item() == pytest.approx(12.0)
    out = expression_losses(neutral=x, delta=torch.zeros(4, 3), posed=posed,
                            delta_outside=torch.full((5, 3), 2.0),
                            z_ex=torch.tensor([[3.0, 4.0]]))
    assert out["c"].item() == pytest.approx(100 * 3.0)
    assert out["dp"].item() == pytest.approx(1e-5 * 12.0)
    assert out["r"].item() == pytest.approx(5e-5 * 25.0)
    assert out["total"].item() == pytest.approx(300 + 1.2e-4 + 1.25e-3)


# ------------------------------------------------------------------- gradients

def test_gradcheck_normal_map_and_eikonal():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=g)
    mask = torch.rand(2, 3, 3, generator=g) > 0.4
    assert torch.autograd.gradcheck(lambda p: normal_map_loss(p, target, mask), (pred,))
    assert torch.autograd.gradcheck(lambda p: normal_map_loss(p, target), (pred,))
    grad = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: eikonal_loss(q), (grad,))
    assert torch.autograd.gradcheck(lambda q: eikonal_loss(q, mode="square"), (grad,))
    assert torch.autograd.gradgradcheck(lambda q: eikonal_loss(q, mode="square"), (grad,))
    n = unit_dirs(5, seed=3).expand(2, 5, 3)
    assert torch.autograd.gradcheck(lambda q: surface_normal_loss(q, n, normalize=True), (grad,))
    planes = torch.randn(1, 3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(total_variation_loss, (planes,))
    assert torch.autograd.gradcheck(triplane_l2_loss, (planes,))


def test_eikonal_gradient_reaches_sdf_parameters():
    """Through create_graph: the eikonal term moves a scale parameter towards 1."""
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x = (0.3 * unit_dirs(8)).requires_grad_(True)
    f = scale * (x.norm(dim=-1) - R)
    (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    (gs,) = torch.autograd.grad(eikonal_loss(g), scale)
    assert gs.item() == pytest.approx(1.0)          # d/ds |s - 1| at s = 2


# ------------------------------------------------------------------- weights, schedule

def test_weights_match_table_4_1_and_eq_4_21():
    w = LossWeights.thesis()
    assert w == LossWeights()
    assert (w.ss, w.sn, w.eik, w.nsp, w.edr) == (2.0e1, 3.0, 2.0, 1e-1, 1e-5)
    assert (w.nmr, w.g, w.d, w.tv, w.tp) == (2.0, 1.0, 1.0, 1e-4, 1e-4)
    assert (w.r1, w.alpha) == (5.0, 10.0)
    assert (w.c, w.dp, w.r) == (1.0e2, 1.0e-5, 5.0e-5)
    assert w.lat_id == 0.0
    n = LossWeights.npm()
    assert (n.ss, n.sn, n.eik, n.nsp) == (2.0, 0.3, 0.1, 0.01)
    assert (n.nmr, n.g, n.d, n.tv, n.tp, n.edr) == (0.0,) * 6
    assert n.lat_id == 0.005


def test_multi_stage_schedule():
    sch = multi_stage_schedule((5, 3, 7))
    assert [sch.stage_at(e).index for e in (0, 4, 5, 7, 8, 14, 15, 100)] == [1, 1, 2, 2, 3, 3, 3, 3]
    full = LossWeights()
    assert sch.active_weights(4) == full
    w2 = sch.active_weights(5)
    assert (w2.nmr, w2.g, w2.d) == (0.0, 0.0, 0.0)
    assert (w2.ss, w2.edr, w2.tv, w2.tp) == (full.ss, full.edr, full.tv, full.tp)
    w3 = sch.active_weights(8)
    assert (w3.nmr, w3.g, w3.d, w3.edr, w3.tv, w3.tp) == (0.0,) * 6
    assert (w3.ss, w3.sn, w3.eik, w3.nsp) == (full.ss, full.sn, full.eik, full.nsp)
    d = multi_stage_schedule()
    assert d.stage_at(4999).index == 1 and d.stage_at(5000).index == 2
    assert d.stage_at(8000).index == 3
    npm = multi_stage_schedule((1, 1, 1), LossWeights.npm())
    assert npm.active_weights(0) == LossWeights.npm()
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        sch.stage_at(-1)
    with pytest.raises(ValueError, match="three ints"):
        multi_stage_schedule((5, 3))
    with pytest.raises(ValueError, match="unknown loss terms"):
        full.without(["foo"])


# ------------------------------------------------------------------- identity helper

def _batch(dtype=torch.float64):
    nf, nn = unit_dirs(6, seed=4), unit_dirs(4, seed=5)
    g = torch.Generator().manual_seed(9)
    maps = torch.zeros(2, 3, 3, 3, dtype=dtype)
    maps[..., 2] = 1.0
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[:, 1, 1] = True
    return {
        "surface_face_points": R * nf, "surface_face_normals": nf,
        "surface_nonface_points": R * nn, "surface_nonface_normals": nn,
        "ball_points": torch.rand(7, 3, generator=g, dtype=dtype) - 0.5,
        "normal_maps": maps, "masks": masks,
    }


def test_identity_losses_sphere():
    b = _batch()
    assert surface_normals_from_batch(b).shape == (10, 3)
    surf = torch.cat([b["surface_face_points"], b["surface_nonface_points"]])
    fs, gs = sphere(surf)
    fx, gx = sphere(b["ball_points"])
    planes = torch.full((1, 3, 2, 3, 3), 0.5, dtype=torch.float64)
    out = identity_losses(b, surface_sdf=fs, surface_grad=gs, space_sdf=fx, space_grad=gx,
                          space_sdf_perturbed=fx + 0.1, normal_maps=b["normal_maps"],
                          d_fake=torch.zeros(2, dtype=torch.float64), planes=planes,
                          z_id=torch.ones(1, 4))
    assert set(out) == {"ss", "sn", "eik", "nsp", "edr", "nmr", "g", "tv", "tp", "total"}
    for k in ("ss", "sn", "eik", "nmr", "tv"):
        assert out[k].item() == pytest.approx(0.0, abs=1e-12), k
    assert out["nsp"].item() == pytest.approx(0.1 * torch.exp(-10 * fx.abs()).mean().item())
    assert out["edr"].item() == pytest.approx(1e-5 * 0.01)
    assert out["g"].item() == pytest.approx(math.log(2))
    assert out["tp"].item() == pytest.approx(1e-4 * 3 * 0.5 * math.sqrt(18))
    total = sum(v for k, v in out.items() if k != "total")
    assert out["total"].item() == pytest.approx(total.item())
    # the scaled sphere: eikonal 1 per point -> weight 2; stage 3 drops the 2D/plane terms
    fs2, gs2 = sphere(surf, 2.0)
    fx2, gx2 = sphere(b["ball_points"], 2.0)
    w3 = multi_stage_schedule((1, 1, 1)).active_weights(2)
    out3 = identity_losses(b, w3, surface_sdf=fs2, surface_grad=gs2, space_sdf=fx2,
                           space_grad=gx2, normal_maps=b["normal_maps"] + 1,
                           d_fake=torch.zeros(2), planes=planes, use_masks=True)
    assert set(out3) == {"ss", "sn", "eik", "nsp", "total"}
    assert out3["eik"].item() == pytest.approx(2.0)
    assert out3["sn"].item() == pytest.approx(0.0, abs=1e-12)   # cosine form: 3 * (1 - cos) = 0 at ||grad|| = 2
    # masked normal-map term with a known error: +1 on every channel -> L1 3 per pixel
    out1 = identity_losses(b, surface_sdf=fs, surface_grad=gs,
                           normal_maps=b["normal_maps"] + 1, use_masks=True)
    assert out1["nmr"].item() == pytest.approx(2.0 * 3.0)
    # eq. 4.3 sums over X u dX: without space samples the eikonal term runs over dX alone
    assert out1["eik"].item() == pytest.approx(0.0, abs=1e-12)
    surface_only = identity_losses(b, w3, surface_sdf=fs2, surface_grad=gs2)
    assert surface_only["eik"].item() == pytest.approx(2.0)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"grad and normals must have the same shape"):
        surface_normal_loss(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"grad must have shape \[\.\.\., 3\]"):
        eikonal_loss(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="mask must have shape"):
        normal_map_loss(torch.zeros(2, 3, 3, 3), torch.zeros(2, 3, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="pred and target must have the same shape"):
        normal_map_loss(torch.zeros(2, 3, 3, 3), torch.zeros(2, 3, 4, 3))
    with pytest.raises(ValueError, match=r"planes must have shape \[B, 3, C, H, W\]"):
        total_variation_loss(torch.zeros(3, 2, 4, 4))
    with pytest.raises(ValueError, match="sdf and sdf_perturbed"):
        explicit_density_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="neutral and posed"):
        correspondence_loss(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"z must have shape \[B, D\]"):
        latent_loss(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="reduction must be"):
        surface_sdf_loss(torch.zeros(3), "avg")
    with pytest.raises(TypeError, match="sdf must be a torch.Tensor"):
        surface_sdf_loss([0.0])
    b = _batch()
    with pytest.raises(ValueError, match="must match the batch's surface normals"):
        identity_losses(b, surface_sdf=torch.zeros(9), surface_grad=torch.zeros(9, 3))
    with pytest.raises(ValueError, match=r"sdf must have shape \(10,\)"):
        identity_losses(b, surface_sdf=torch.zeros(9), surface_grad=torch.zeros(10, 3))
