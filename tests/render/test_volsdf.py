"""npht's VolSDF renderer: equal to the reference renderer when every sample is shaded;
the sample-efficient approximations (weight threshold, coarse bounds) within the accuracy
bounds of the renderer issue; analytic shapes; colour, conventions, chunking, errors."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from npht.render import (ErrorBoundSampler, LaplaceDensity, VolSDFRenderer, fibonacci_cameras, generate_rays,
                         near_frontal_cameras, render, render_reference, world_normals_to_camera)


def sphere(p, r=0.5):
    return p.norm(dim=-1) - r


def box(p, half=(0.35, 0.3, 0.4), rounding=0.05):
    q = p.abs() - torch.tensor(half, dtype=p.dtype, device=p.device) + rounding
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0) - rounding


def torus(p, R=0.45, r=0.15):
    q = torch.stack([torch.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2) - R, p[..., 1]], -1)
    return q.norm(dim=-1) - r


def smooth_union(p, k=0.1):
    a = sphere(p - torch.tensor([0.0, 0.25, 0.0], dtype=p.dtype), 0.3)
    b = sphere(p + torch.tensor([0.0, 0.2, 0.0], dtype=p.dtype), 0.35)
    h = (0.5 + 0.5 * (b - a) / k).clamp(0, 1)
    return b * (1 - h) + a * h - k * h * (1 - h)


def angular_error_deg(a, b, mask):
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)[mask].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos)).mean().item()


def iou(a, b):
    return ((a & b).sum() / (a | b).sum().clamp(min=1)).item()


class MLPSdf(nn.Module):
    """A sphere plus a small learned perturbation: parameters for gradient checks."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.l1 = nn.Linear(3, 32)
        self.l2 = nn.Linear(32, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, p):
        return p.norm(dim=-1) - 0.5 + 0.03 * self.l2(F.softplus(self.l1(p), beta=10)).squeeze(-1)


CAMS = fibonacci_cameras(2, resolution=24)


def test_full_renderer_equals_reference():
    dens = LaplaceDensity(beta=0.01)
    ref = render_reference(torus, CAMS, dens)
    # the same (reference) sampler: in float32 one differing merged sample changes the
    # later rounds, so fused-vs-reference sampling is compared in tests/ops instead
    out = render(torus, CAMS, density=dens, weight_threshold=None,
                 sampler=replace(ErrorBoundSampler.thesis(), backend="reference"))
    torch.testing.assert_close(out.normals, ref.normals, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.opacity, ref.opacity, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.depth, ref.depth, rtol=1e-4, atol=1e-4)
    assert out.stats["samples_shaded"] == 2 * 24 * 24 * out.stats["samples_per_ray"]


SKIP = replace(ErrorBoundSampler.thesis(), skip_converged=True)
APPROXIMATIONS = [dict(weight_threshold=1e-6), dict(weight_threshold=1e-6, coarse_factor=2),
                  dict(sampler=SKIP), dict(coarse_factor=2, sampler=SKIP)]


@pytest.mark.parametrize("shape", [sphere, torus, smooth_union])
@pytest.mark.parametrize("options", APPROXIMATIONS)
def test_approximations_within_bounds(shape, options):
    dens = LaplaceDensity(beta=0.005)
    cams = fibonacci_cameras(2, resolution=32)
    full = render(shape, cams, density=dens, weight_threshold=None)
    fast = render(shape, cams, density=dens, **options)
    assert fast.stats["coarse"] == ("coarse_factor" in options)
    fg = full.opacity > 0.5
    assert angular_error_deg(fast.normals, full.normals, fg) <= 1.0
    assert iou(fast.opacity > 0.5, fg) >= 0.99
    assert fast.stats["samples_shaded"] < 0.7 * full.stats["samples_shaded"]
    if "sampler" in options:  # fewer SDF evaluations while sampling
        assert fast.stats["sampler_sdf_evaluations"] < 0.8 * full.stats["sampler_sdf_evaluations"]


def bumpy(p):
    """A sphere with ripples of 0.005: at beta 0.001 the sampler does not meet eps within
    its rounds, so its result depends on where its samples lie."""
    return sphere(p) + 0.005 * torch.sin(40 * p[..., 0]) * torch.sin(40 * p[..., 1]) * torch.sin(40 * p[..., 2])


@pytest.mark.parametrize("resolution", [64, (64, 96)])
def test_coarse_pass_only_culls_rays(resolution):
    """The rays the coarse pass keeps are rendered exactly as without it (the same samples),
    on an SDF whose sampling does not converge; the rays it culls are empty."""
    dens = LaplaceDensity(beta=0.001)
    cams = near_frontal_cameras(2, resolution=64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = render(bumpy, cams, resolution, density=dens)
        fast = render(bumpy, cams, resolution, density=dens, coarse_factor=4)
    assert base.stats["sampler_rounds"] == ErrorBoundSampler.thesis().max_total_iters  # not converged
    assert fast.stats["coarse"] and fast.stats["rays_rendered"] < 0.8 * base.stats["rays_rendered"]
    kept = fast.hit
    for a, b in ((fast.normals, base.normals), (fast.depth, base.depth), (fast.opacity, base.opacity)):
        torch.testing.assert_close(a[kept], b[kept], rtol=1e-5, atol=1e-6)
    assert base.opacity[~kept].max() < 1e-3
    assert (fast.opacity[~kept] == 0).all()


def test_final_pass_evaluates_only_new_samples():
    """The no-grad weights pass reuses the SDF the sampler evaluated: N_samples new values
    per rendered ray (test_full_renderer_equals_reference checks the image)."""
    dens = LaplaceDensity(beta=0.005)
    points = []

    def counting(p):
        points.append(p.shape[1])
        return torus(p)

    out = render(counting, fibonacci_cameras(2, resolution=16), density=dens)
    n = ErrorBoundSampler.thesis().N_samples
    assert out.stats["final_sdf_evaluations"] == out.stats["rays_rendered"] * n
    # every SDF call sees both shapes: the shape probe (2 points), the sampler, the final
    # pass and the shading pass (padded per shape) -- and nothing else
    total = 2 * sum(points)
    shading = total - 2 * 2 - out.stats["sampler_sdf_evaluations"] - out.stats["final_sdf_evaluations"]
    assert out.stats["samples_shaded"] <= shading <= 2 * out.stats["samples_shaded"]


@pytest.mark.parametrize("options", APPROXIMATIONS)
def test_parameter_gradients_match_full_renderer(options):
    """A loss on the normal map (through the normals' double backward) and the opacity:
    the parameter gradients of the fast renderer point the same way as the full one's."""
    sdf = MLPSdf()
    dens = LaplaceDensity(beta=0.01)
    cams = near_frontal_cameras(2, resolution=32, generator=torch.Generator().manual_seed(0))
    target = torch.randn(2, 32, 32, 3, generator=torch.Generator().manual_seed(1))

    def grads(**opts):
        sdf.zero_grad()
        dens.zero_grad()
        out = render(sdf, cams, density=dens, **opts)
        loss = ((out.normals - target) ** 2).mean() + out.opacity.mean()
        loss.backward()
        assert out.stats["coarse"] == ("coarse_factor" in opts)
        return torch.cat([p.grad.reshape(-1) for p in list(sdf.parameters()) + list(dens.parameters())])

    g_full = grads(weight_threshold=None)
    g_fast = grads(**options)
    assert g_full.abs().sum() > 0
    assert F.cosine_similarity(g_full, g_fast, dim=0) >= 0.99
    # beta's gradient, carried partly by low-weight tails, is within 10 % too
    assert abs(g_fast[-1] - g_full[-1]) <= 0.1 * abs(g_full[-1])


@pytest.mark.parametrize("shape", [sphere, box, torus, smooth_union])
def test_analytic_normals_depth_silhouette(shape):
    cams = fibonacci_cameras(3, resolution=32)
    out = render(shape, cams, density=LaplaceDensity(beta=1e-3))
    origins, dirs = generate_rays(cams)
    # exact silhouette by sphere tracing the analytic SDF
    t = torch.zeros(origins.shape[:-1])
    for _ in range(200):
        t = t + shape(origins + t[..., None] * dirs).clamp(min=0)
    p = origins + t[..., None] * dirs
    d_surf = shape(p)
    inside = d_surf.abs() < 1e-4
    # the silhouette, away from a band of rays grazing the surface
    with torch.no_grad():
        grazing = torch.zeros_like(inside)
        for s in torch.linspace(0, 1, 200):
            q = origins + (1.0 + 2.5 * s) * dirs
            grazing |= shape(q).abs() < 0.01
    clear = ~(grazing & ~inside)
    assert ((out.opacity > 0.5) == inside)[clear].float().mean() > 0.999
    n_true = torch.func.vmap(torch.func.grad(lambda x: shape(x[None])[0]))(p.reshape(-1, 3)).reshape(p.shape)
    cos = (F.normalize(n_true, dim=-1) * -dirs).sum(-1)
    good = inside & (out.opacity > 0.99) & (cos > 0.5)
    assert good.sum() > 100
    assert angular_error_deg(out.normals, n_true, good) < 1.0
    assert (out.depth - t)[good].abs().max() < 5e-3


def corner(p):
    """A sphere near the edge of the [-1, 1]^3 cube, partly outside the unit sphere."""
    return (p - torch.tensor([0.7, 0.7, 0.0], dtype=p.dtype, device=p.device)).norm(dim=-1) - 0.25


def test_box_bounds_render_what_the_sphere_clips():
    """bound_box=1.0 (a tri-plane's domain): a shape in the cube's edge region, which the
    unit sphere cuts, renders whole, matches the reference renderer with the same box,
    and its silhouette is the analytic one; inside both bounds the two renders agree."""
    cams = near_frontal_cameras(2, resolution=32, fov_degrees=60.0, generator=torch.Generator().manual_seed(4))
    dens = LaplaceDensity(beta=0.002)
    with torch.no_grad():
        ball = render(corner, cams, density=dens)
        cube = render(corner, cams, density=dens, bound_box=1.0)
    assert cube.stats["rays_in_bounds"] > ball.stats["rays_in_bounds"]
    origins, dirs = generate_rays(cams)
    t = torch.zeros(origins.shape[:-1])
    for _ in range(200):
        t = t + corner(origins + t[..., None] * dirs).clamp(min=0)
    surface = corner(origins + t[..., None] * dirs).abs() < 1e-4
    # the sphere's render loses part of the shape, the box's has it all
    assert ((ball.opacity > 0.5) & surface).sum() < 0.75 * surface.sum()
    assert ((cube.opacity > 0.5) == surface).float().mean() > 0.99
    ref = render_reference(corner, cams, dens, bound_box=1.0)
    full = render(corner, cams, density=dens, weight_threshold=None, bound_box=1.0,
                  sampler=replace(ErrorBoundSampler.thesis(), backend="reference"))
    torch.testing.assert_close(full.normals, ref.normals, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(full.opacity, ref.opacity, rtol=1e-4, atol=1e-5)
    # a shape inside both bounds: the same image (the sampler starts from other bounds)
    with torch.no_grad():
        a = render(torus, cams, density=dens)
        b = render(torus, cams, density=dens, bound_box=(1.0, 1.0, 1.0), coarse_factor=2)
    fg = a.opacity > 0.5
    assert iou(b.opacity > 0.5, fg) >= 0.99
    assert angular_error_deg(b.normals, a.normals, fg) < 1.0


def test_colour_convention_and_chunking():
    cams = fibonacci_cameras(2, resolution=16)
    dens = LaplaceDensity(beta=0.01)
    red = lambda p: torch.stack([torch.ones_like(p[..., 0]), p[..., 0] * 0, p[..., 0] * 0], -1)
    with torch.no_grad():
        out = render(sphere, cams, density=dens, color_fn=red, ray_chunk=100)
        one = render(sphere, cams, density=dens, color_fn=red, ray_chunk=None)
        gl = render(sphere, cams, density=dens, convention="opengl")
    assert out.color.shape == (2, 16, 16, 3)
    torch.testing.assert_close(out.color[..., 0], out.opacity, rtol=1e-5, atol=1e-6)
    for a, b in ((out.normals, one.normals), (out.depth, one.depth), (out.color, one.color)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gl.normals, world_normals_to_camera(one.normals, cams, "opengl"))
    # the resolution argument resizes the cameras
    with torch.no_grad():
        small = render(sphere, cams, 8, density=dens)
    assert small.normals.shape == (2, 8, 8, 3)


def test_loss_reaches_beta():
    dens = LaplaceDensity(beta=0.02)
    out = render(sphere, fibonacci_cameras(1, resolution=12), density=dens)
    out.opacity.sum().backward()
    assert dens.beta_param.grad is not None and dens.beta_param.grad != 0


def test_errors():
    cams = fibonacci_cameras(2, resolution=8)
    with pytest.raises(TypeError, match="cameras must be npht.render.Cameras"):
        render(sphere, "cams")
    with pytest.raises(TypeError, match="sdf_fn must be callable"):
        render(3.0, cams)
    for bad in (0, 2.5, (8,), "a", True, (8, 0)):
        with pytest.raises(ValueError, match=r"resolution must be a positive int H or a pair \(H, W\)"):
            render(sphere, cams, bad)
    assert render(sphere, cams, (6, 5)).normals.shape == (2, 6, 5, 3)
    with pytest.raises(TypeError, match="density must be an npht.render.LaplaceDensity"):
        render(sphere, cams, density=3)
    with pytest.raises(ValueError, match="cameras is empty"):
        render(sphere, cams[[]])
    with pytest.raises(TypeError, match="sampler must be an npht.render.ErrorBoundSampler"):
        VolSDFRenderer(sampler=(32, 32, 32))
    with pytest.raises(ValueError, match="convention must be"):
        render(sphere, cams, convention="directx")
    with pytest.raises(ValueError, match=r"sdf_fn must map points \[B, N, 3\] to \[B, N\] with B = 2"):
        render(lambda p: sphere(p[:1]), cams)
    with pytest.raises(ValueError, match="weight_threshold must be in"):
        VolSDFRenderer(weight_threshold=2.0)
    with pytest.raises(ValueError, match="coarse_factor must be an integer >= 2"):
        VolSDFRenderer(coarse_factor=1)
    for bad in (0.0, -1.0, (1.0, 2.0), (1.0, float("inf"), 1.0), "box"):
        with pytest.raises(ValueError, match="bound_box must be None, a finite number > 0 or three of them"):
            VolSDFRenderer(bound_box=bad)


def test_option_and_callback_errors():
    """Options and callbacks a render would otherwise meet as raw IndexErrors, range()
    errors or all-NaN maps (bound_radius=inf)."""
    cams = fibonacci_cameras(2, resolution=8)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="ray_chunk must be a positive integer or None"):
            VolSDFRenderer(ray_chunk=bad)
        with pytest.raises(ValueError, match="chunk must be a positive integer"):
            VolSDFRenderer(chunk=bad)
    for bad in (1.5, -1, True):
        with pytest.raises(ValueError, match="coarse_dilate must be an integer >= 0"):
            VolSDFRenderer(coarse_dilate=bad)
    for bad in (float("inf"), float("nan"), 0.0, "1"):
        with pytest.raises(ValueError, match="bound_radius must be a finite number > 0"):
            VolSDFRenderer(bound_radius=bad)
    with pytest.raises(TypeError, match="gradient_fn must be callable or None"):
        VolSDFRenderer(gradient_fn=3)
    with pytest.raises(TypeError, match="color_fn must be callable or None"):
        render(sphere, cams, color_fn=3)
    with torch.no_grad():
        for bad in (lambda p: p.norm(dim=-1), lambda p: p[:1]):  # [B, N]; the wrong batch size
            with pytest.raises(ValueError, match=r"color_fn must map points \[B, N, 3\] to colours \[B, N, C\]"):
                render(sphere, cams, color_fn=bad)
        for bad in (sphere, lambda p: (sphere(p), torch.zeros(2, 3))):  # the gradient missing; the wrong shape
            with pytest.raises(ValueError, match=r"gradient_fn must map points \[B, N, 3\] to \(sdf \[B, N\]"):
                render(sphere, cams, gradient_fn=bad)
        with pytest.raises(ValueError, match="sdf_fn's result does not depend on the points through autograd"):
            render(lambda p: sphere(p).detach(), cams)


def test_training_mode_is_seeded_and_close_to_eval():
    """training=True randomises the sampler (VolSDF): reproducible with a generator, and the
    normal map stays close to the deterministic one."""
    cams = fibonacci_cameras(1, resolution=24)
    dens = LaplaceDensity(beta=0.005)
    with torch.no_grad():
        a = render(torus, cams, density=dens, training=True, generator=torch.Generator().manual_seed(0))
        b = render(torus, cams, density=dens, training=True, generator=torch.Generator().manual_seed(0))
        c = render(torus, cams, density=dens, training=True, generator=torch.Generator().manual_seed(1))
        ev = render(torus, cams, density=dens)
    torch.testing.assert_close(a.normals, b.normals)
    assert not torch.equal(a.depth, c.depth)
    fg = ev.opacity > 0.5
    assert angular_error_deg(a.normals, ev.normals, fg) < 1.0
    assert iou(a.opacity > 0.5, fg) > 0.99


def test_presets_and_density_defaults():
    """The presets carry VolSDF's / the thesis' numbers, the density the thesis' beta."""
    from npht.render import ErrorBoundSampler, LaplaceDensity

    v, t = ErrorBoundSampler.volsdf(), ErrorBoundSampler.thesis()
    fields = ("N_samples", "N_samples_eval", "N_samples_extra", "eps", "beta_iters", "max_total_iters")
    assert tuple(getattr(v, f) for f in fields) == (64, 128, 32, 0.1, 10, 5)
    assert tuple(getattr(t, f) for f in fields) == (32, 32, 32, 0.1, 10, 10)
    assert v.add_tiny == t.add_tiny == 1e-6 and not v.skip_converged and not t.skip_converged
    assert v.samples_per_ray == 64 + 32 + 2
    d = LaplaceDensity()
    assert d.beta_min == 1e-4 and abs(float(d.get_beta()) - (1e-3 + 1e-4)) < 1e-9
