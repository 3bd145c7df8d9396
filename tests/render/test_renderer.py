"""Error-bound sampler and the reference renderer on analytic SDFs."""

import threading
from dataclasses import replace

import pytest
import torch

from npht.reference import sampler as ref
from npht.render import (ErrorBoundSampler, LaplaceDensity, fibonacci_cameras, generate_rays,
                         ray_sphere_bounds, render_reference)


def sphere(p, r=0.5):
    return p.norm(dim=-1) - r


def torus(p, R=0.45, r=0.15):
    q = torch.stack([torch.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2) - R, p[..., 1]], -1)
    return q.norm(dim=-1) - r


def test_distance_bound_cases():
    z = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    # |sdf| grows away from the start: the start is nearest (b); a sign change gives 0
    sdf = torch.tensor([[0.2, 1.3, 0.5, -0.5]], dtype=torch.float64)
    d = ref.distance_bound(z, sdf)
    assert d[0, 0] == 0.2 and d[0, 2] == 0
    # triangle case: both ends at 0.8, interval 1: height sqrt(0.8^2 - 0.5^2)
    d = ref.distance_bound(torch.tensor([[0.0, 1.0]], dtype=torch.float64),
                           torch.tensor([[0.8, 0.8]], dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([[(0.64 - 0.25) ** 0.5]], dtype=torch.float64))


def test_bisect_beta_meets_eps():
    z = torch.linspace(0.0, 2.0, 64, dtype=torch.float64).expand(3, -1).contiguous()
    sdf = 1.0 - z + torch.tensor([[0.0], [0.2], [-0.3]], dtype=torch.float64)
    beta_hi = ref.initial_beta(z, 0.1)
    beta = ref.bisect_beta(1e-3, beta_hi, sdf, z, 0.1, 20)
    assert (ref.opacity_error_bound(beta, sdf, z) <= 0.1 + 1e-12).all()
    assert (beta >= 1e-3).all() and (beta <= beta_hi).all()
    # Lemma 2: the initial beta satisfies the bound for any SDF
    assert (ref.opacity_error_bound(beta_hi, sdf, z) <= 0.1 + 1e-9).all()


def test_sample_pdf_inverts_cdf():
    bins = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    pdf = torch.tensor([[0.0, 1.0, 0.0]])
    u = torch.linspace(0, 0.95, 11).expand(1, -1)
    s = ref.sample_pdf(bins, pdf, u)
    assert (s >= 1.0).all() and (s <= 2.0).all()
    torch.testing.assert_close(s, 1.0 + u)


def test_sampler_concentrates_samples_at_the_surface():
    sampler = ErrorBoundSampler.thesis()
    o = torch.tensor([[[0.0, 0.0, 2.6]]], dtype=torch.float64).expand(1, 4, 3).contiguous()
    d = torch.tensor([[0.0, 0.0, -1.0], [0.1, 0.0, -1.0], [0.0, 0.1, -1.0], [0.08, 0.08, -1.0]],
                     dtype=torch.float64)
    d = (d / d.norm(dim=-1, keepdim=True))[None]
    near, far, hit = ray_sphere_bounds(o, d, 1.0)
    z = sampler(sphere, o, d, near, far, 1e-3)
    assert z.shape == (1, 4, sampler.samples_per_ray)
    assert (z[..., 1:] >= z[..., :-1]).all()
    hit_depth = ray_sphere_bounds(o, d, 0.5)[0]
    close = ((z - hit_depth[..., None]).abs() < 0.01).sum(-1)
    assert (close >= sampler.N_samples // 2).all(), close


def test_sampler_training_mode_is_seeded():
    sampler = ErrorBoundSampler(16, 16, 4, 0.1, 5, 3)
    o = torch.tensor([[[0.0, 0.0, 2.6]]]).expand(1, 3, 3).contiguous()
    d = torch.tensor([[[0.0, 0.0, -1.0]]]).expand(1, 3, 3).contiguous()
    near, far, _ = ray_sphere_bounds(o, d)
    z1 = sampler(sphere, o, d, near, far, 1e-3, training=True, generator=torch.Generator().manual_seed(1))
    z2 = sampler(sphere, o, d, near, far, 1e-3, training=True, generator=torch.Generator().manual_seed(1))
    z3 = sampler(sphere, o, d, near, far, 1e-3, training=True, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(z1, z2)
    assert not torch.equal(z1, z3)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("extra", [0, 8])
def test_sampler_returns_the_sdf_it_knows(training, extra):
    """``return_sdf``: the same depths, and at each the SDF value the sampler evaluated (the
    extra samples; near/far when not training), NaN at exactly its N_samples new ones."""
    sampler = ErrorBoundSampler(12, 16, extra, 0.1, 5, 3)
    o = torch.tensor([[[0.0, 0.0, 2.6]]], dtype=torch.float64).expand(2, 5, 3).contiguous()
    d = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    d[..., 2] = -1.0
    d = d / d.norm(dim=-1, keepdim=True)
    near, far, _ = ray_sphere_bounds(o, d)
    kw = dict(training=training)
    z1 = sampler(torus, o, d, near, far, 1e-3, generator=torch.Generator().manual_seed(4), **kw)
    z2, known = sampler(torus, o, d, near, far, 1e-3, generator=torch.Generator().manual_seed(4), return_sdf=True,
                        **kw)
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    unknown = torch.isnan(known)
    assert (unknown.sum(-1) == sampler.N_samples + (2 if training else 0)).all()
    exact = torus(o[:, :, None] + z2[..., None] * d[:, :, None])
    torch.testing.assert_close(known[~unknown], exact[~unknown], rtol=1e-12, atol=1e-12)


def _two_items():
    """Rays of 2 items inside the unit sphere: item 0's hit the sphere of radius 0.5, item
    1's pass outside it. With ErrorBoundSampler(16, 32, 4, 0.1, 10, 8) at beta0 0.01 item
    0's rays all meet eps after 4 rounds, item 1's after 6 (the two at once: 6)."""
    o = torch.tensor([0.0, 0.0, 2.6], dtype=torch.float64).expand(2, 3, 3).contiguous()
    x = torch.tensor([[0.0, 0.1, 0.18], [0.3, 0.33, 0.36]], dtype=torch.float64)
    d = torch.stack([x, torch.zeros_like(x), torch.full_like(x, -2.6)], -1)
    d = d / d.norm(dim=-1, keepdim=True)
    near, far, _ = ray_sphere_bounds(o, d)
    return o, d, near, far


class _Ranks:
    """``reduce_unconverged`` of ``n`` simulated ranks (threads): each call waits for the
    other ranks' and returns the max of their flags, as an all_reduce with MAX does (a rank
    that called it fewer times than the others leaves them waiting: a BrokenBarrierError)."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n, timeout=60)
        self.flags, self.calls = [None] * n, [[] for _ in range(n)]

    def reducer(self, rank):
        def reduce(flag):
            assert flag.shape == () and flag.dtype == torch.int32
            self.calls[rank].append(int(flag))
            self.flags[rank] = int(flag)
            self.barrier.wait()
            out = max(self.flags)
            self.barrier.wait()  # all have read the flags before the next round writes them
            return torch.tensor(out, dtype=torch.int32)
        return reduce

    def run(self, fns):
        results, errors = [None] * len(fns), []

        def target(r):
            try:
                results[r] = fns[r](self.reducer(r))
            except Exception as e:  # reported below, after the other ranks stopped waiting
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(r,)) for r in range(len(fns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def test_sampler_reduce_unconverged_decides_the_rounds():
    """``reduce_unconverged`` is called once per round but the last, with this call's "some
    ray above eps" (int32, 0-dim), and its answer decides whether the rounds go on; None (the
    default) and a reducer that returns its input sample identically."""
    o, d, near, far = (t[:1] for t in _two_items())   # item 0 alone: converges after 4 rounds
    base = ErrorBoundSampler(16, 32, 4, 0.1, 10, 8)
    assert base.reduce_unconverged is None
    z0, k0 = base(sphere, o, d, near, far, 0.01, return_sdf=True)
    assert base.last_stats["rounds"] == 4

    seen = []
    same = replace(base, reduce_unconverged=lambda flag: seen.append(int(flag)) or flag)
    z1, k1 = same(sphere, o, d, near, far, 0.01, return_sdf=True)
    assert seen == [1, 1, 1, 0] and same.last_stats == base.last_stats
    torch.testing.assert_close(z1, z0, rtol=0, atol=0)
    torch.testing.assert_close(k1, k0, rtol=0, atol=0, equal_nan=True)

    seen.clear()
    more = replace(base, reduce_unconverged=lambda flag: seen.append(int(flag)) or True)  # another rank goes on
    z2 = more(sphere, o, d, near, far, 0.01)
    assert more.last_stats["rounds"] == 8                   # max_total_iters
    assert len(seen) == 7 and seen[:3] == [1, 1, 1] and not any(seen[3:])  # not called in round 8
    assert more.last_stats["sdf_evaluations"] > base.last_stats["sdf_evaluations"]
    assert not torch.equal(z2, z0)

    seen.clear()
    stop = replace(base, reduce_unconverged=lambda flag: seen.append(int(flag)) or torch.tensor(0))
    stop(sphere, o, d, near, far, 0.01)
    assert stop.last_stats["rounds"] == 1 and seen == [1]
    with pytest.raises(TypeError, match="reduce_unconverged must be callable"):
        ErrorBoundSampler(reduce_unconverged=True)


@pytest.mark.parametrize("skip_converged", [False, True])
def test_sampler_reduce_unconverged_ranks_sample_as_the_combined_batch(skip_converged):
    """Two ranks (threads), one item each, whose rays converge after 4 and 6 rounds: with
    the reducer both run the combined batch's 6 rounds and sample its depths; without it,
    rank 0 stops after 4."""
    o, d, near, far = _two_items()
    sampler = ErrorBoundSampler(16, 32, 4, 0.1, 10, 8, skip_converged=skip_converged)
    combined = sampler(sphere, o, d, near, far, 0.01)
    assert sampler.last_stats["rounds"] == 6
    alone = [replace(sampler) for _ in range(2)]
    for r in range(2):
        alone[r](sphere, o[r:r + 1], d[r:r + 1], near[r:r + 1], far[r:r + 1], 0.01)
    assert [s.last_stats["rounds"] for s in alone] == [4, 6]

    ranks = _Ranks(2)

    def rank_fn(r):
        def fn(reduce):
            s = replace(sampler, reduce_unconverged=reduce)
            z = s(sphere, o[r:r + 1], d[r:r + 1], near[r:r + 1], far[r:r + 1], 0.01)
            return z, s.last_stats["rounds"]
        return fn

    (z0, n0), (z1, n1) = ranks.run([rank_fn(0), rank_fn(1)])
    assert n0 == n1 == 6 and ranks.calls == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
    torch.testing.assert_close(torch.cat([z0, z1]), combined, rtol=0, atol=0)


def test_renderer_calls_the_reducer_alike_on_every_rank():
    """Through the renderer (coarse pass and the fine one), ranks whose data differ, one
    seeing a sphere and one nothing at all (every ray culled: the sampler gets a dummy ray),
    call the reducer equally often (else the all_reduce would hang) and run the same rounds."""
    from npht.render import render

    cams = fibonacci_cameras(2, resolution=32)
    sdfs = [sphere, lambda p: p.norm(dim=-1) + 2.0]    # no surface inside the bounds
    ranks = _Ranks(2)

    def rank_fn(r):
        def fn(reduce):
            smp = ErrorBoundSampler(8, 16, 4, 0.1, 6, 6, reduce_unconverged=reduce)
            with torch.no_grad():
                out = render(sdfs[r], cams[r:r + 1], density=LaplaceDensity(beta=0.01), sampler=smp,
                             coarse_factor=2)
            return out.stats
        return fn

    s0, s1 = ranks.run([rank_fn(0), rank_fn(1)])
    assert s0["coarse"] and s1["coarse"] and s1["rays_rendered"] == 0 < s0["rays_rendered"]
    assert len(ranks.calls[0]) == len(ranks.calls[1]) > 0
    # rank 1 alone would stop each pass after its first round (its rays have converged), but
    # runs rank 0's rounds: all 6 of each pass
    assert not any(ranks.calls[1]) and s0["sampler_rounds"] == s1["sampler_rounds"] == 12


def test_sampler_errors():
    with pytest.raises(ValueError, match="N_samples must be >= 1"):
        ErrorBoundSampler(0)
    with pytest.raises(ValueError, match="cannot exceed N_samples_eval"):
        ErrorBoundSampler(8, 8, 16)
    s = ErrorBoundSampler.thesis()
    with pytest.raises(ValueError, match=r"origins and dirs must both be \[B, R, 3\]"):
        s(sphere, torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4), torch.ones(4), 1e-3)
    with pytest.raises(ValueError, match=r"near and far must be \[B, R\]"):
        s(sphere, torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(4), torch.ones(4), 1e-3)


@pytest.mark.parametrize("sdf,name", [(sphere, "sphere"), (torus, "torus")])
def test_reference_renderer_analytic(sdf, name):
    cams = fibonacci_cameras(3, resolution=24, dtype=torch.float64)
    dens = LaplaceDensity(beta=1e-3).double()
    with torch.no_grad():
        out = render_reference(sdf, cams, dens)
    o, d = generate_rays(cams)
    # analytic first hit by dense marching (reference ray caster)
    t = torch.linspace(1.0, 4.2, 6401, dtype=torch.float64)
    vals = sdf(o[..., None, :] + t[:, None] * d[..., None, :])
    inside = vals < 0
    hit = inside.any(-1)
    first = inside.float().argmax(-1)
    depth = t[first]
    # silhouettes agree except within a few beta of the outline
    margin = vals.min(-1).values.abs() > 0.01
    pred = out.opacity > 0.5
    assert (pred[margin] == hit[margin]).all()
    iou = (pred & hit).sum() / (pred | hit).sum()
    assert iou > 0.95
    interior = hit & margin & (vals.min(-1).values < -0.01)
    p = o + depth[..., None] * d
    p = p.clone().requires_grad_()
    (n,) = torch.autograd.grad(sdf(p).sum(), p)
    n = n / n.norm(dim=-1, keepdim=True)
    # depth: the Laplace density's bias grows like beta / |cos| at grazing angles
    facing = interior & ((n * d).sum(-1).abs() > 0.5)
    torch.testing.assert_close(out.depth[facing], depth[facing], atol=5e-3, rtol=0)
    cos = (out.normals[interior] * n[interior]).sum(-1).clamp(-1, 1)
    assert torch.rad2deg(torch.acos(cos)).mean() < 1.0


def test_reference_renderer_backpropagates_through_normals():
    """A loss on the normal map reaches the SDF's parameters (double backward) and beta."""
    cams = fibonacci_cameras(2, resolution=8)
    dens = LaplaceDensity(beta=0.01)
    radius = torch.tensor(0.5, requires_grad=True)
    scale = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)

    def ellipsoid(p):
        return (p * scale).norm(dim=-1) - radius

    out = render_reference(ellipsoid, cams, dens)
    loss = out.normals[..., 1].abs().mean() + out.opacity.mean()
    loss.backward()
    assert scale.grad is not None and scale.grad.abs().sum() > 0
    assert radius.grad is not None and dens.beta_param.grad is not None


def test_float32_sdf_under_float64_cameras():
    """A float32 network (it casts its input) under float64 cameras renders in the cameras'
    dtype like a float64 one (to float32 precision): the sampler's first round casts the SDF
    to the rays' dtype as its later rounds do (it raised "sdf must have the dtype of z")."""
    from npht.render import VolSDFRenderer

    cams = fibonacci_cameras(1, resolution=8, dtype=torch.float64)
    smp = ErrorBoundSampler(8, 8, 4, 0.1, 4, 2)
    dens = LaplaceDensity(beta=0.01).double()
    with torch.no_grad():
        for render in (lambda f: render_reference(f, cams, dens, smp),
                       lambda f: VolSDFRenderer(sampler=smp, density=dens)(f, cams)):
            a, b = render(lambda p: sphere(p.float())), render(sphere)
            assert a.normals.dtype == torch.float64
            torch.testing.assert_close(a.opacity, b.opacity, atol=1e-3, rtol=0)


def test_renderer_errors():
    cams = fibonacci_cameras(2, resolution=8)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"render under torch.no_grad\(\) instead"):
        render_reference(sphere, cams, LaplaceDensity(), ErrorBoundSampler(8, 8, 4, 0.1, 4, 2))
    with pytest.raises(TypeError, match="cameras must be npht.render.Cameras"):
        render_reference(sphere, "cams", LaplaceDensity())
    with pytest.raises(ValueError, match=r"batch_size \(3\) must equal the number of cameras \(2\)"):
        render_reference(sphere, cams, LaplaceDensity(), batch_size=3)
    with pytest.raises(ValueError, match=r"sdf_fn must map points \[B, N, 3\] to \[B, N\] with B = 2"):
        render_reference(lambda p: sphere(p[:1]), cams, LaplaceDensity())
    with pytest.raises(TypeError, match="density must be an npht.render.LaplaceDensity"):
        render_reference(sphere, cams, 0.01)
