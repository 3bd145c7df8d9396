"""The error-bound sampler's fused per-ray ops (npht.ops.sampler) on every backend against
the reference (npht.reference.sampler), and ErrorBoundSampler end to end.

Tolerances. The kernels compute in float64 and round to the input dtype; the bisection
keeps its interval ends in the input dtype like the reference. So:
- eb_bisect_beta: float64 equal to 1e-12 relative, float32 equal to 1e-5 relative, on
  >= 99% of the rays: a ray may differ where one bisection step's bound is within rounding
  of eps (the float32 reference computes the bound in float32), which sends the rest of
  that ray's bisection elsewhere. All results finite and within [beta0, beta_hi].
- eb_upsample: the oracle is the float64 reference on the same inputs (the float32
  reference loses precision in exp(cumsum) - 1 and in the CDF). A sample may differ only
  where its quantile lies within rounding (1e-9) of an entry of the oracle's CDF: there the
  bin is a coin toss of summation order (typically u = 1 when the last bins carry almost no
  mass); all other samples agree to 1e-10 (float64) / 1 ulp of float32. At least 99% of
  the rays must agree entirely.
- eb_merge: exact.
Triton runs under its interpreter here (~1 ms per program, plus per loop step): its
cases are kept small (one program of <= 128 rays, short rays, few bisection steps).
"""

import pytest
import torch

import npht
from npht.ops import sampler as ops
from npht.reference import sampler as ref
from npht.render import ErrorBoundSampler, fibonacci_cameras, generate_rays, ray_sphere_bounds

from _backends import CPU_KERNELS, require_backend

# the Triton interpreter (numpy) warns where exp overflows to inf, which the math clamps
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

BETA0 = 1e-3
EPS = 0.1


def make_rays(R, n, dtype, kind, device="cpu", seed=1):
    """z [R, n] sorted in [near, far] (ends included), sdf [R, n]: a sphere of radius 0.5 seen
    at offsets in [0, 0.8) (about half the rays hit), or random smooth 1-D functions with
    several sign changes; both make the bisection iterate on most rays."""
    g = torch.Generator().manual_seed(seed)
    near, far = 1.0, 4.0
    z = torch.sort(near + (far - near) * torch.rand(R, n, generator=g, dtype=torch.float64), -1).values
    z[:, 0], z[:, -1] = near, far
    if kind == "sphere":
        off = 0.8 * torch.rand(R, 1, generator=g, dtype=torch.float64)
        sdf = torch.sqrt(off ** 2 + (2.6 - z) ** 2) - 0.5
    else:
        a = torch.rand(R, 3, generator=g, dtype=torch.float64)
        sdf = 0.3 * torch.sin(9 * z * a[:, :1] + 6 * a[:, 1:2]) + 0.2 * (a[:, 2:] - 0.3) + 0.05 * torch.cos(7 * z)
    return z.to(device, dtype), sdf.to(device, dtype)


def sizes(backend):
    """(R, n, k, iters) of the main comparisons: smaller for the Triton interpreter."""
    if backend == "triton" and not torch.cuda.is_available():
        return 96, 24, 9, 6
    return 400, 65, 33, 10


def assert_bisect_close(beta, beta_ref, beta_hi, dtype):
    assert beta.shape == beta_ref.shape and beta.dtype == beta_ref.dtype
    assert torch.isfinite(beta).all()
    assert (beta >= torch.tensor(BETA0, dtype=dtype)).all() and (beta <= beta_hi).all()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    same = (beta - beta_ref).abs() <= rtol * beta_ref.abs()
    assert same.float().mean() >= 0.99, f"{(~same).sum().item()} of {same.numel()} rays differ"


def assert_upsample_close(s, z, sdf, beta, u, mode, tiny, backend):
    """s [R, k] vs the float64 reference on the same inputs (see the module docstring);
    the reference backend is the reference itself, in the input dtype."""
    if backend == "reference":
        assert torch.equal(s, ref.eb_upsample(z, sdf, beta, u, mode, tiny))
        return
    z64, sdf64, b64, u64 = z.double(), sdf.double(), beta.double(), u.double()
    oracle = ref.eb_upsample(z64, sdf64, b64, u64, mode, tiny)
    assert s.shape == oracle.shape and s.dtype == z.dtype
    assert torch.isfinite(s).all()
    tol = 1e-10 if z.dtype == torch.float64 else 2.0 * torch.finfo(torch.float32).eps * z64.abs().max()
    bad = (s.double() - oracle).abs() > tol
    if bad.any():  # each differing sample: its quantile must sit on a CDF entry
        pdf = ref.upsample_pdf(z64, sdf64, b64, mode, tiny)
        pdf = pdf / pdf.sum(-1, keepdim=True)
        cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
        r, j = bad.nonzero(as_tuple=True)
        edge = (cdf[r] - u64[r, j][:, None]).abs().min(-1).values
        assert (edge <= 1e-9).all(), f"samples differ away from CDF entries: {edge.max().item()}"
    rows_ok = (~bad).all(-1).float().mean()
    assert rows_ok >= 0.99, f"{(~(~bad).all(-1)).sum().item()} of {bad.shape[0]} rays differ"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["sphere", "smooth"])
def test_bisect_beta_matches_reference(backend, device, dtype, kind):
    R, n, _, iters = sizes(backend)
    z, sdf = make_rays(R, n, dtype, kind, device)
    beta_hi = ref.initial_beta(z, EPS)
    beta_ref = ref.eb_bisect_beta(z, sdf, BETA0, beta_hi, EPS, iters)
    assert 0.2 < (beta_ref > BETA0).float().mean() < 1.0  # bisection iterates on many rays
    beta = ops.eb_bisect_beta(z, sdf, BETA0, beta_hi, EPS, iters, backend=backend)
    assert_bisect_close(beta, beta_ref, beta_hi, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["bound", "weights"])
@pytest.mark.parametrize("kind", ["sphere", "smooth"])
def test_upsample_matches_reference(backend, device, dtype, mode, kind):
    R, n, k, iters = sizes(backend)
    z, sdf = make_rays(R, n, dtype, kind, device)
    beta = ref.eb_bisect_beta(z, sdf, BETA0, ref.initial_beta(z, EPS), EPS, iters)
    tiny = 1e-6 if mode == "bound" else 1e-5
    m = ops.PDF_MODES[mode]
    # the sampler's quantiles (a sorted grid with u = 0 and 1) and random unsorted ones
    grid = torch.linspace(0.0, 1.0, k, dtype=dtype, device=device).expand(R, -1)
    rand = torch.rand(R, k, dtype=dtype, generator=torch.Generator().manual_seed(5)).to(device)
    for u in (grid, rand):
        s = ops.eb_upsample(z, sdf, beta, u, mode, tiny, backend=backend)
        assert_upsample_close(s, z, sdf, beta, u, m, tiny, backend)


@pytest.mark.parametrize("mode", ["bound", "weights"])
def test_upsample_u_one_is_the_far_end(backend, device, mode):
    """u = 1 (the sampler's last quantile) gives exactly the last depth on every backend: the
    CDF is capped at 1 and ends at exactly 1, so a normalised sum that rounds to 1 + 1 ulp in
    one summation order cannot move that sample back by an interval (VolSDF's 1e-5
    denominator rule would snap it to the previous depth)."""
    R, n, k, iters = sizes(backend)
    R *= 4  # enough rays for sums that round up (about a third of them at n = 65)
    z, sdf = make_rays(R, n, torch.float64, "smooth", device, seed=11)
    beta = ref.eb_bisect_beta(z, sdf, BETA0, ref.initial_beta(z, EPS), EPS, iters)
    u = torch.linspace(0.0, 1.0, k, dtype=torch.float64, device=device).expand(R, -1)
    s = ops.eb_upsample(z, sdf, beta, u, mode, 1e-6, backend=backend)
    assert torch.equal(s[:, -1], z[:, -1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["bound", "weights"])
def test_upsample_zero_mass_rays_sample_every_interval_alike(backend, device, dtype, mode):
    """add_tiny = 0 (the op's default, VolSDF's) and a pdf that is exactly 0 everywhere: a
    zero-length ray (all depths equal), and a ray far from the surface in float32 (exp(cum)
    - 1 rounds to 0). Every backend samples such a ray as the add_tiny limit does, each
    interval the same mass (the reference gave NaN, the kernels the first interval); the
    other rays are unchanged."""
    R, n, k = 6, 9, 5
    z, sdf = make_rays(R, n, dtype, "sphere", device, seed=3)
    z[1] = 2.0  # zero-length ray
    z[2] = torch.linspace(1.0, 4.0, n, dtype=dtype)
    sdf[2] = 50.0  # far from any surface
    beta = torch.full((R,), 1e-3, dtype=dtype, device=device)
    u = torch.linspace(0.0, 1.0, k, dtype=dtype, device=device).expand(R, -1).contiguous()
    m = ops.PDF_MODES[mode]
    pdf = ref.upsample_pdf(z, sdf, beta, m, 0.0)
    assert (pdf[1:3] == 0).all()  # the case under test
    s = ops.eb_upsample(z, sdf, beta, u, mode, 0.0, backend=backend)
    assert torch.isfinite(s).all()
    assert torch.equal(s[1], torch.full_like(s[1], 2.0))
    # equal mass per interval: quantile j / (k - 1) lands at interval position (n - 1) j / (k - 1)
    pos = (n - 1) * torch.linspace(0.0, 1.0, k, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=n - 2)
    want = z[2, lo].double() + (pos - lo) * (z[2, lo + 1] - z[2, lo]).double()
    torch.testing.assert_close(s[2].double().cpu(), want.cpu(), rtol=0, atol=4 * torch.finfo(dtype).eps)
    # unaffected rays as the reference (float64 oracle) has them; the reference backend itself
    assert_upsample_close(s, z, sdf, beta, u, m, 0.0, backend)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_merge_matches_torch_sort(backend, device, dtype):
    R, n, k, _ = sizes(backend)
    z, _ = make_rays(R, n, dtype, "sphere", device)
    samples = 1.0 + 3.0 * torch.rand(R, k - 2, dtype=dtype).to(device)
    # ties between the lists and within one
    samples = torch.sort(torch.cat([samples, z[:, 3:4], z[:, 3:4]], -1), -1).values
    merged, order = ops.eb_merge(z, samples, backend=backend)
    m_ref, _ = ref.eb_merge(z, samples)
    assert order.dtype == torch.int64 and merged.shape == (R, n + k)
    assert torch.equal(merged, m_ref)
    cat = torch.cat([z, samples], -1)
    assert torch.equal(torch.gather(cat, 1, order), merged)
    assert torch.equal(torch.sort(order, -1).values, torch.arange(n + k, device=device).expand(R, -1))
    if backend != "reference":  # kernels: stable merge, z's element first on ties
        torch.testing.assert_close(order, torch.sort(cat, dim=-1, stable=True).indices, rtol=0, atol=0)


@pytest.mark.parametrize("R,n,k", [(1, 2, 1), (37, 65, 1), (1, 3, 5), (37, 2, 7)])
def test_odd_sizes(backend, device, R, n, k):
    z, sdf = make_rays(R, n, torch.float64, "smooth", device, seed=R + n + k)
    beta_hi = ref.initial_beta(z, EPS)
    iters = 4
    beta = ops.eb_bisect_beta(z, sdf, BETA0, beta_hi, EPS, iters, backend=backend)
    beta_ref = ref.eb_bisect_beta(z, sdf, BETA0, beta_hi, EPS, iters)
    torch.testing.assert_close(beta, beta_ref, rtol=1e-12, atol=0)
    u = torch.rand(R, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    for mode in (0, 1):
        s = ops.eb_upsample(z, sdf, beta_ref, u, mode, 1e-6, backend=backend)
        assert_upsample_close(s, z, sdf, beta_ref, u, mode, 1e-6, backend)
    samples = torch.sort(u * 3.0 + 1.0, -1).values
    merged, order = ops.eb_merge(z, samples, backend=backend)
    assert torch.equal(merged, ref.eb_merge(z, samples)[0])
    assert torch.equal(torch.gather(torch.cat([z, samples], -1), 1, order), merged)
    # empty: no rays, no quantiles, nothing to merge
    e = ops.eb_bisect_beta(z[:0], sdf[:0], BETA0, beta_hi[:0], EPS, iters, backend=backend)
    assert e.shape == (0,)
    assert ops.eb_upsample(z, sdf, beta_ref, u[:, :0], 0, 1e-6, backend=backend).shape == (R, 0)
    mz, oz = ops.eb_merge(z[:, :0], samples[:, :0], backend=backend)
    assert mz.shape == (R, 0) and oz.shape == (R, 0)


def test_vmap_folds_into_the_rays(backend, device, monkeypatch):
    """torch.vmap over sets of rays runs each op's kernel once on the folded rays (counted:
    functorch's per-sample fallback would call it once per set, and its warning for these
    ops does not reach Python's warnings) and gives each set what a call of its own gives;
    unbatched arguments are shared, a vmapped dim may sit anywhere, nested vmap too."""
    import types

    import torch.func as tf

    V, R, n, k = 3, 5, 9, 4
    zs, sdfs = zip(*[make_rays(R, n, torch.float64, "smooth", device, seed=10 + v) for v in range(V)])
    z, sdf = torch.stack(zs), torch.stack(sdfs)
    beta_hi = ref.initial_beta(z.reshape(V * R, n), EPS).reshape(V, R)
    u = torch.rand(R, k, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    calls = []
    kernels = ops._backend.kernels

    def counting(name, part):
        real = kernels(name, part)

        def count(fn):
            return lambda *a: (calls.append(fn), getattr(real, fn)(*a))[1]
        return types.SimpleNamespace(**{fn: count(fn) for fn in ("eb_bisect_beta", "eb_upsample", "eb_merge")})

    monkeypatch.setattr(ops._backend, "kernels", counting)
    beta = tf.vmap(lambda a, b, c: ops.eb_bisect_beta(a, b, BETA0, c, EPS, 4, backend=backend))(z, sdf, beta_hi)
    samples = tf.vmap(lambda a, b, c: ops.eb_upsample(a, b, c, u, "bound", 1e-6, backend=backend),
                      in_dims=(0, 2, 1))(z, sdf.movedim(0, 2), beta.t())
    merged, order = tf.vmap(lambda a, b: ops.eb_merge(a, b, backend=backend))(z, torch.sort(samples, -1).values)
    nested = tf.vmap(tf.vmap(lambda a, b, c: ops.eb_bisect_beta(a, b, BETA0, c, EPS, 4, backend=backend)))(
        z.reshape(V, R, 1, n), sdf.reshape(V, R, 1, n), beta_hi.reshape(V, R, 1))
    assert calls == ["eb_bisect_beta", "eb_upsample", "eb_merge", "eb_bisect_beta"]
    for v in range(V):
        b = ops.eb_bisect_beta(z[v], sdf[v], BETA0, beta_hi[v], EPS, 4, backend=backend)
        assert torch.equal(beta[v], b) and torch.equal(nested[v, :, 0], b)
        s = ops.eb_upsample(z[v], sdf[v], b, u, "bound", 1e-6, backend=backend)
        assert torch.equal(samples[v], s)
        m, o = ops.eb_merge(z[v], torch.sort(s, -1).values, backend=backend)
        assert torch.equal(merged[v], m) and torch.equal(order[v], o)
    assert beta.shape == (V, R) and samples.shape == (V, R, k) and merged.shape == (V, R, n + k)


def test_beta0_holds_returns_beta0(backend, device):
    """Where the bound holds at beta0 the result is beta0 itself; iters = 0 gives beta_hi
    elsewhere."""
    z = torch.linspace(1.0, 4.0, 17, dtype=torch.float64, device=device).expand(3, -1).contiguous()
    sdf = torch.full_like(z, 0.7)  # far from any surface: the bound is tiny
    sdf[1] = 2.6 - z[1]  # a plane crossing: needs a larger beta
    sdf[2] = -sdf[2]
    beta_hi = ref.initial_beta(z, EPS)
    out = ops.eb_bisect_beta(z, sdf, BETA0, beta_hi, EPS, 0, backend=backend)
    assert out[0] == BETA0 and out[2] == BETA0 and out[1] == beta_hi[1]


def _args():
    z, sdf = make_rays(5, 9, torch.float64, "smooth")
    return z, sdf, ref.initial_beta(z, EPS), torch.rand(5, 4, dtype=torch.float64)


def test_errors():
    z, sdf, beta, u = _args()
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        ops.eb_bisect_beta(z.tolist(), sdf, BETA0, beta, EPS, 3)
    with pytest.raises(ValueError, match=r"z must be \[R, n\] with n >= 2"):
        ops.eb_bisect_beta(z[:, :1], sdf[:, :1], BETA0, beta, EPS, 3)
    with pytest.raises(ValueError, match=r"sdf must be \[R, n\] = \(5, 9\), got shape \(5, 8\)"):
        ops.eb_bisect_beta(z, sdf[:, :8], BETA0, beta, EPS, 3)
    with pytest.raises(TypeError, match="sdf must have the dtype of z"):
        ops.eb_bisect_beta(z, sdf.float(), BETA0, beta, EPS, 3)
    with pytest.raises(TypeError, match="z must be float32 or float64, got torch.float16"):
        ops.eb_bisect_beta(z.half(), sdf.half(), BETA0, beta.half(), EPS, 3)
    with pytest.raises(ValueError, match=r"beta_hi must be \[R\] = \(5,\)"):
        ops.eb_bisect_beta(z, sdf, BETA0, beta[:4], EPS, 3)
    with pytest.raises(ValueError, match="beta0 must be > 0"):
        ops.eb_bisect_beta(z, sdf, 0.0, beta, EPS, 3)
    with pytest.raises(ValueError, match="iters must be an int >= 0"):
        ops.eb_bisect_beta(z, sdf, BETA0, beta, EPS, -1)
    with pytest.raises(ValueError, match=r"u must be \[R, k\] = \(5, 4\), got shape \(4, 4\)"):
        ops.eb_upsample(z, sdf, beta, u[:4], "bound", 1e-6)
    with pytest.raises(ValueError, match=r"u must be \[R, k\], got shape \(5,\)"):
        ops.eb_upsample(z, sdf, beta, u[:, 0], "bound", 1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.eb_upsample(z, sdf, beta, u, "pdf", 1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.eb_upsample(z, sdf, beta, u, 2, 1e-6)
    with pytest.raises(ValueError, match="add_tiny must be >= 0"):
        ops.eb_upsample(z, sdf, beta, u, 0, -1.0)
    with pytest.raises(TypeError, match="beta must have the dtype of z"):
        ops.eb_upsample(z, sdf, beta.float(), u, 0, 1e-6)
    with pytest.raises(ValueError, match=r"samples must be \[R, k\] = \(5, 4\)"):
        ops.eb_merge(z, u[:3])
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.eb_merge(z, u, backend="fast")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        ops.eb_merge(z, u, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        ErrorBoundSampler(backend="fast")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="samples must be on the device of z"):
            ops.eb_merge(z, u.cuda())


def test_raw_kernel_errors():
    """The compiled kernels check their inputs too (clear messages, no crash)."""
    require_backend("cpu")
    C = torch.ops.npht_C
    z, sdf, beta, u = _args()
    with pytest.raises(RuntimeError, match=rf"npht_C \({CPU_KERNELS}\): sdf must have the shape of z"):
        C.eb_bisect_beta(z, sdf[:, :4].contiguous(), BETA0, beta, EPS, 3)
    with pytest.raises(RuntimeError, match="beta_hi must have the dtype of z"):
        C.eb_bisect_beta(z, sdf, BETA0, beta.float(), EPS, 3)
    with pytest.raises(RuntimeError, match="must be contiguous"):
        C.eb_upsample(z, sdf, beta, u.t().contiguous().t(), 0, 1e-6)
    with pytest.raises(RuntimeError, match="mode must be 0"):
        C.eb_upsample(z, sdf, beta, u, 3, 1e-6)
    with pytest.raises(RuntimeError, match="z must have at least 2 samples"):
        C.eb_upsample(z[:, :1].contiguous(), sdf[:, :1].contiguous(), beta, u, 0, 1e-6)
    with pytest.raises(RuntimeError, match=r"samples must have 5 rows \(one per ray\)"):
        C.eb_merge(z, u[:2])


def test_opcheck_cpu():
    require_backend("cpu")
    z, sdf, beta, u = _args()
    samples = torch.sort(u * 3 + 1, -1).values
    torch.library.opcheck(torch.ops.npht.eb_bisect_beta.default, (z, sdf, BETA0, beta, EPS, 3, "cpu"))
    torch.library.opcheck(torch.ops.npht.eb_upsample.default, (z, sdf, beta, u, 0, 1e-6, "cpu"))
    torch.library.opcheck(torch.ops.npht.eb_upsample.default, (z, sdf, beta, u, 1, 1e-5, "cpu"))
    torch.library.opcheck(torch.ops.npht.eb_merge.default, (z, samples, "cpu"))


# ---- ErrorBoundSampler end to end -----------------------------------------------------------


def sphere(p, r=0.5):
    return p.norm(dim=-1) - r


def torus(p, R=0.45, r=0.15):
    q = torch.stack([torch.sqrt(p[..., 0] ** 2 + p[..., 2] ** 2) - R, p[..., 1]], -1)
    return q.norm(dim=-1) - r


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("case", ["thesis-sphere", "volsdf-torus"])
def test_sampler_backends_match_reference(backend, device, training, case):
    """Same depths as backend="reference", float64 (every round: bisection, upsampling from
    the error bound, merging, final samples from the weights): the thesis' preset on a
    sphere, VolSDF's on a torus (where normalised CDFs end at 1 +- 1 ulp on many rays)."""
    sdf_fn = sphere if case == "thesis-sphere" else torus
    beta0 = BETA0 if case == "thesis-sphere" else 1.1e-3  # LaplaceDensity()'s beta
    if backend == "triton" and not torch.cuda.is_available():
        sampler_args, res = (8, 8, 4, EPS, 4, 3), 4  # small for the interpreter
    elif case == "thesis-sphere":
        sampler_args, res = (32, 32, 32, EPS, 10, 10), 12
    else:
        sampler_args, res = (64, 128, 32, EPS, 10, 5), 16
    cams = fibonacci_cameras(2, resolution=res, dtype=torch.float64)
    o, d = generate_rays(cams)
    o, d = o.reshape(2, -1, 3).to(device), d.reshape(2, -1, 3).to(device)
    near, far, hit = ray_sphere_bounds(o, d, 1.0)
    assert hit.any()

    def run(b):
        gen = torch.Generator().manual_seed(3) if training else None
        return ErrorBoundSampler(*sampler_args, backend=b)(sdf_fn, o, d, near, far, beta0,
                                                             training=training, generator=gen)

    z_ref, z = run("reference"), run(backend)
    assert z.shape == z_ref.shape and torch.isfinite(z).all()
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-9)


def test_sampler_default_backend_is_auto():
    assert ErrorBoundSampler().backend == "auto"
    assert "eb_bisect_beta" in npht.ops.__all__


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["bound", "weights"])
def test_cuda_upsample_more_rays_than_threads(mode):
    """The CUDA upsample caps its grid at 1024 blocks of 128 threads and gives each thread
    one CDF scratch row, reused across the rays of its grid-stride loop: 2.5 x that many
    rays, each against the float64 reference."""
    require_backend("cuda")
    R, n, k = 1024 * 128 * 5 // 2 + 77, 9, 5
    z, sdf = make_rays(R, n, torch.float64, "smooth", "cuda", seed=3)
    beta = ref.eb_bisect_beta(z, sdf, BETA0, ref.initial_beta(z, EPS), EPS, 10)
    u = torch.rand(R, k, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).cuda()
    tiny = 1e-6 if mode == "bound" else 1e-5
    s = ops.eb_upsample(z, sdf, beta, u, mode, tiny, backend="cuda")
    assert_upsample_close(s, z, sdf, beta, u, ops.PDF_MODES[mode], tiny, "cuda")
