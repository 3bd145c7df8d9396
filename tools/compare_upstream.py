"""Compare npht with the upstream projects' own code, run side by side on the CPU.

Two of npht's claims are checked against the real upstream functions (imported from a
checkout at run time; this file contains none of their code, only calls into it):

* ``--eg3d PATH`` (a checkout of the GitHub project NVlabs/eg3d): EG3D's
  ``sample_from_planes(generate_planes(), planes, coords, mode='bilinear',
  padding_mode='zeros', box_warp=bw).mean(1)`` (its decoder averages the planes) against
  ``npht.triplane_sample(planes, coords, aggregate="mean", projection="eg3d",
  box_warp=bw)``: values and the gradients to the planes and the coordinates, on non-square
  planes with points partly outside the box (zeros padding), for a power-of-two and another
  ``box_warp``. EG3D casts the sampling grid to float32 (``.float()``) before its
  ``grid_sample``, so it cannot take float64 planes as it stands: the float64 run makes
  ``Tensor.float`` return float64 tensors unchanged for the duration of the call (nothing
  else of EG3D's is changed); the float32 run calls it untouched.
* ``--volsdf PATH`` (a checkout of the GitHub project lioryariv/volsdf): VolSDF's
  ``LaplaceDensity``, its ``ErrorBoundSampler`` (Algorithm 1, deterministic: the model in
  eval mode) and ``VolSDFNetwork``'s volume rendering and forward pass (normal map, colour)
  against npht's ``LaplaceDensity``, ``ErrorBoundSampler`` (``training=False``),
  ``npht.volume_composite`` and ``VolSDFRenderer`` (``weight_threshold=None``: every
  sample shaded), on analytic SDFs (a sphere; two spheres one behind the other, so rays
  cross the surface up to four times) both sides evaluate identically. Compared: the rays,
  the z samples of every ray (sorted), the converged beta, the number of rounds, the
  weights and their gradients (to sdf, z and beta), depth (sum w z), opacity (sum w),
  normal and colour maps.

Get the checkouts with ``git clone`` of the two GitHub projects (any directory), then

    python tools/compare_upstream.py --eg3d ~/src/eg3d --volsdf ~/src/volsdf
    python tools/compare_upstream.py --volsdf ~/src/volsdf --dtypes float64 --backends cpu

Nothing is installed from them. VolSDF's code calls ``.cuda()`` throughout: while its
functions run, ``Tensor.cuda`` returns the tensor unchanged and the default dtype is the
dtype under test (its ``torch.zeros(...)`` / ``torch.linspace`` buffers, float32 in
VolSDF's own runs, follow it; npht's calls run under the same default). Modules VolSDF's
files import but these comparisons never reach (OpenCV in ``utils/rend_util.py``) are
stubbed when they are not installed. Rays go through pixel centres (``uv + 0.5``: npht's
convention; VolSDF's data loader passes integer pixel coordinates) and both renderers get
VolSDF's ray bounds ``[near, 2 * scene_bounding_sphere]`` (npht's renderer bounds rays by
a sphere of its own; the comparison gives it VolSDF's bounds instead).

Settings that npht documents as deliberate departures are matched on the upstream side
where they are arguments: VolSDF's sampler gets ``add_tiny=1e-6`` (MonoSDF's value and
npht's; VolSDF's default 0.0 is run too, against npht with ``add_tiny=0.0``), and npht's
``skip_converged`` stays off (its default, VolSDF's semantics).

Each row prints the max absolute difference and that relative to the largest magnitude
of the upstream result. Status:

* ``ok``: within the dtype's tolerance (float64 1e-9, float32 1e-4, relative);
* ``explained``: beyond it, for a cause the tool has verified on the spot: (a) VolSDF's
  density ``(0.5 + 0.5 sign(s) expm1(-|s|/beta)) / beta`` cancels to an absolute error of
  ~1 ulp / beta where sdf > 0 (npht's ``0.5 exp(-s/beta) / beta`` keeps its relative
  precision), which the last sample's 1e10 interval turns into weight; verified by running
  VolSDF's own code again with npht's density module in place of its own and finding the
  difference gone; (b) the sampler without add_tiny: VolSDF's inverse CDF sends the quantile
  u = 1 to the end of the support when its CDF sums to 1 + 1 ulp, npht's CDF ends at
  exactly 1 (the far end, VolSDF's own result in exact arithmetic); verified round by round;
* ``info``: reported, not judged: rays VolSDF turns into NaN without add_tiny (npht samples
  them), npht's default renderer (samples below weight 1e-6 not shaded: a documented
  approximation), the density tails against the exact formula, and the float32 sampler
  (the bisection's ``bound <= eps`` and the inverse CDF's search turn on round-off, so a
  ray's beta can land one bisection step away on either side; its rows give both sides'
  distance from VolSDF run in float64);
* ``FAIL``: anything else. Exit status 1 when a row fails, 0 otherwise, 2 for a usage error
  (no checkout given, or a path that is not one).
"""

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import subprocess
import sys
import types
from functools import partial
from typing import Callable, Dict, List, Optional

import torch

# relative tolerance per dtype for rows that must agree (max |a - b| / max |upstream|)
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
EG3D_RENDERER = os.path.join("eg3d", "training", "volumetric_rendering", "renderer.py")
VOLSDF_FILES = [os.path.join("code", "model", f) for f in ("density.py", "ray_sampler.py", "network.py")] + [
    os.path.join("code", "utils", "rend_util.py")]


class UsageError(Exception):
    pass


# -- results -------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    group: str
    name: str
    setting: str
    max_abs: float
    max_rel: float
    tol: Optional[float]  # None: informational
    note: str = ""
    explained: Optional[str] = None  # a difference beyond tol whose cause the tool verified

    @property
    def status(self) -> str:
        if self.tol is None:
            return "info"
        if math.isfinite(self.max_rel) and self.max_rel <= self.tol:
            return "ok"
        return "explained" if self.explained else "FAIL"

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def describe(self) -> str:
        notes = [n for n in (self.note, self.explained if self.status == "explained" else "") if n]
        return self.status + (f" ({'; '.join(notes)})" if notes else "")


def diff(a: torch.Tensor, b: torch.Tensor):
    """(max |a - b|, that / max |b|) over all elements; NaN anywhere gives NaN."""
    a, b = a.detach().double(), b.detach().double().reshape(a.shape)
    if a.numel() == 0:
        return 0.0, 0.0
    d = (a - b).abs()
    m = float(d.max()) if not torch.isnan(d).any() else float("nan")
    scale = float(torch.nan_to_num(b.abs(), nan=0.0).max())
    return m, (m / scale if scale > 0 else (0.0 if m == 0 else float("inf")))


class Report:
    def __init__(self):
        self.rows: List[Row] = []

    def add(self, group, name, setting, got, upstream, tol, note="", explain: Optional[Callable] = None):
        """A comparison row. ``explain()``, called only when the row is beyond ``tol``,
        returns the verified cause of the difference (a string) or None."""
        m, r = diff(got, upstream)
        row = Row(group, name, setting, m, r, tol, note)
        if tol is not None and not (math.isfinite(r) and r <= tol) and explain is not None:
            row.explained = explain()
        self.rows.append(row)

    def add_value(self, group, name, setting, value, tol=None, note=""):
        """A number of its own (a count, an error): fails when above ``tol``."""
        self.rows.append(Row(group, name, setting, float(value), float(value), tol, note))

    def print(self, out=sys.stdout):
        head = ("group", "quantity", "setting", "max abs diff", "max rel diff", "tolerance", "status")
        lines = [head] + [(r.group, r.name, r.setting, f"{r.max_abs:.3g}", f"{r.max_rel:.3g}",
                           "-" if r.tol is None else f"{r.tol:g}", r.describe()) for r in self.rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        for k, line in enumerate(lines):
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip(), file=out)
            if k == 0:
                print("  ".join("-" * w for w in widths), file=out)

    @property
    def failed(self) -> List[Row]:
        return [r for r in self.rows if not r.ok]


# -- loading upstream code -----------------------------------------------------------------

@contextlib.contextmanager
def _patched(obj, name, value):
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def upstream_env(dtype: torch.dtype):
    """While upstream code runs on the CPU: ``Tensor.cuda`` is the identity and the
    default dtype is ``dtype``."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with _patched(torch.Tensor, "cuda", lambda self, *a, **k: self):
            yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def float_cast_keeps_float64():
    """``Tensor.float()`` leaves float64 tensors as they are (EG3D's grid cast)."""
    original = torch.Tensor.float

    def _float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original(self, *args, **kwargs)

    with _patched(torch.Tensor, "float", _float):
        yield


def import_from(root: str, modules: List[str], stub_if_missing=()) -> Dict[str, types.ModuleType]:
    """Import ``modules`` (dotted names) with ``root`` first on sys.path, under their own
    names, then take them out of ``sys.modules`` again (with every module of the same top
    packages), restoring whatever was there: upstream packages named ``utils``, ``model``
    or ``training`` do not leak into the rest of the process."""
    tops = {m.split(".")[0] for m in modules}
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in tops}
    for k in saved:
        del sys.modules[k]
    stubs = []
    for name in stub_if_missing:
        if importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
            stubs.append(name)
    sys.path.insert(0, root)
    try:
        return {m: importlib.import_module(m) for m in modules}
    finally:
        sys.path.remove(root)
        for k in [k for k in sys.modules if k.split(".")[0] in tops]:
            del sys.modules[k]
        sys.modules.update(saved)
        for name in stubs:
            sys.modules.pop(name, None)


def _check_checkout(path: str, files: List[str], what: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise UsageError(f"{path} is not a checkout of {what}: {', '.join(missing)} not found")
    return path


def checkout_commit(path: str) -> str:
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown (not a git work tree)"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- EG3D ------------------------------------------------------------------------------------

def compare_eg3d(path: str, dtypes, backends, report: Report) -> None:
    import npht

    root = _check_checkout(path, [EG3D_RENDERER], "NVlabs/eg3d")
    mod = import_from(os.path.join(root, "eg3d"), ["training.volumetric_rendering.renderer"])[
        "training.volumetric_rendering.renderer"]
    axes32 = mod.generate_planes()
    proj = npht.projection_from_plane_axes(axes32)
    same = proj == npht.PROJECTIONS["eg3d"]
    report.add_value("eg3d", "generate_planes() == projection 'eg3d'", str(proj), 0.0 if same else 1.0, 0.0)
    g = torch.Generator().manual_seed(0)
    cases = [  # (B, C, H, W, M, box_warp, coordinate range): EG3D's box_warp 1 (FFHQ) and 1.6
        (2, 8, 12, 16, 400, 1.0, 0.6),
        (1, 5, 9, 7, 300, 1.6, 0.9),
    ]
    for dtype in dtypes:
        tol = TOL[dtype]
        for B, C, H, W, M, bw, lim in cases:
            planes0 = torch.randn(B, 3, C, H, W, generator=g, dtype=torch.float64).to(dtype)
            # |coordinates| up to lim: beyond box_warp / 2 some fall outside (zeros padding)
            coords0 = ((torch.rand(B, M, 3, generator=g, dtype=torch.float64) * 2 - 1) * lim).to(dtype)
            gout = torch.randn(B, M, C, generator=g, dtype=torch.float64).to(dtype)
            P, X = planes0.clone().requires_grad_(), coords0.clone().requires_grad_()
            ctx = float_cast_keeps_float64() if dtype == torch.float64 else contextlib.nullcontext()
            with ctx:
                ref = mod.sample_from_planes(axes32.to(dtype), P, X, mode="bilinear", padding_mode="zeros",
                                             box_warp=bw).mean(1)
            ref_gp, ref_gx = torch.autograd.grad((ref * gout).sum(), (P, X))
            setting = f"{_dt(dtype)} B{B} C{C} {H}x{W} box_warp {bw:g}"
            for backend in backends:
                P2, X2 = planes0.clone().requires_grad_(), coords0.clone().requires_grad_()
                got = npht.triplane_sample(P2, X2, aggregate="mean", projection="eg3d", box_warp=bw,
                                           align_corners=False, padding_mode="zeros", backend=backend)
                gp, gx = torch.autograd.grad((got * gout).sum(), (P2, X2))
                s = f"{setting} [{backend}]"
                report.add("eg3d", "features", s, got, ref, tol)
                report.add("eg3d", "d/d planes", s, gp, ref_gp, tol)
                report.add("eg3d", "d/d coords", s, gx, ref_gx, tol)


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")


# -- VolSDF ----------------------------------------------------------------------------------

NEAR, BOUND_SPHERE = 0.0, 3.0  # VolSDF's DTU configuration: rays from 0 to 2 * 3
SAMPLER = dict(N_samples=64, N_samples_eval=128, N_samples_extra=32, eps=0.1, beta_iters=10, max_total_iters=5)
BETA_MIN = 1e-4
BETAS = (0.1, 1e-3)  # VolSDF's initial beta (DTU configuration), the thesis'


def sphere_sdf(p):
    return p.norm(dim=-1) - 0.5


def two_spheres_sdf(p):
    """Two spheres one behind the other along z (the cameras look roughly along -z):
    central rays cross the surface four times."""
    c1 = p.new_tensor([0.0, 0.05, 0.42])
    c2 = p.new_tensor([0.08, 0.0, -0.42])
    return torch.minimum((p - c1).norm(dim=-1) - 0.32, (p - c2).norm(dim=-1) - 0.36)


SCENES = {"sphere": sphere_sdf, "two spheres": two_spheres_sdf}


def color_of(p):
    return torch.sigmoid(3.0 * p)


class _ImplicitNetwork(torch.nn.Module):
    """The analytic SDF behind VolSDF's implicit-network interface (get_sdf_vals;
    get_outputs: sdf [N, 1], features, gradient). ``rounds`` keeps the points of each
    get_sdf_vals call (one per sampler round)."""

    def __init__(self, sdf):
        super().__init__()
        self.sdf = sdf
        self.rounds: List[torch.Tensor] = []

    def get_sdf_vals(self, x):
        self.rounds.append(x.detach())
        return self.sdf(x)[:, None]

    def get_outputs(self, x):
        x.requires_grad_(True)
        sdf = self.sdf(x)[:, None]
        (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=True)
        return sdf, x.new_zeros(x.shape[0], 0), grad


def _depths(points, origins, dirs):
    """Points of rays ``origins, dirs [R, 3]`` (any layout ray-major) -> depths ``[R, k]``."""
    p = points.reshape(origins.shape[0], -1, 3)
    return ((p - origins[:, None]) * dirs[:, None]).sum(-1)


class _RenderingNetwork(torch.nn.Module):
    def forward(self, points, normals, view_dirs, feature_vectors):
        return color_of(points)


def _cameras(dtype, res: int):
    from npht.render import Cameras, intrinsics_from_fov, look_at

    eyes = torch.tensor([[0.0, 0.3, 2.6], [1.2, -0.4, 2.2]], dtype=dtype)
    return Cameras(intrinsics_from_fov(30.0, res, batch=2, dtype=dtype), look_at(eyes), res, res)


def _volsdf_camera_input(cams, dtype):
    """VolSDF's model input (intrinsics [B, 4, 4], pose, uv at npht's pixel centres)."""
    B, H, W = len(cams), cams.height, cams.width
    v, u = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    uv = torch.stack([u, v], -1).reshape(1, H * W, 2).expand(B, -1, -1)
    intr = torch.eye(4, dtype=dtype).repeat(B, 1, 1)
    intr[:, :3, :3] = cams.K
    return {"intrinsics": intr, "uv": uv, "pose": cams.cam2world}


@contextlib.contextmanager
def _recording(module, name, store):
    """``module.name`` (a function) records its last result in ``store`` while inside."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        store[name] = out = original(*args, **kwargs)
        return out

    with _patched(module, name, wrapper):
        yield


@contextlib.contextmanager
def _recording_beta(density, store):
    """The last ``beta`` a density module is called with (VolSDF's sampler calls its
    density last with the converged beta)."""
    original = density.forward

    def forward(sdf, beta=None):
        store["beta"] = beta
        return original(sdf, beta=beta)

    density.forward = forward  # an instance attribute, taken out again below
    try:
        yield
    finally:
        del density.forward


def _npht_density(beta, dtype):
    from npht.render import LaplaceDensity

    return LaplaceDensity(beta=beta, beta_min=BETA_MIN).to(dtype)


def _bounded_renderer(**kwargs):
    """npht's renderer with VolSDF's ray bounds ``[near, 2 R]`` for every ray."""
    from npht.render import VolSDFRenderer

    if not callable(getattr(VolSDFRenderer, "_bounds", None)):
        raise RuntimeError("npht.render.VolSDFRenderer has no _bounds hook: update tools/compare_upstream.py")

    class Bounded(VolSDFRenderer):
        def _bounds(self, origins, dirs):
            shape = origins.shape[:-1]
            return (torch.full(shape, NEAR, dtype=origins.dtype), torch.full(shape, 2.0 * BOUND_SPHERE,
                                                                             dtype=origins.dtype),
                    torch.ones(shape, dtype=torch.bool))

    return Bounded(**kwargs)


class VolSDF:
    """Calls into a VolSDF checkout's code."""

    def __init__(self, root: str):
        mods = import_from(os.path.join(root, "code"),
                           ["model.density", "model.ray_sampler", "model.network", "utils.rend_util"],
                           stub_if_missing=("cv2", "imageio", "skimage"))
        self.Density = mods["model.density"].LaplaceDensity
        self.Sampler = mods["model.ray_sampler"].ErrorBoundSampler
        self.Network = mods["model.network"].VolSDFNetwork
        self.rend_util = mods["utils.rend_util"]

    def density(self, beta):
        return self.Density(params_init={"beta": beta}, beta_min=BETA_MIN)

    def sample(self, density, sdf_fn, origins, dirs, add_tiny):
        """get_z_vals in eval mode: z ``[R, S]``, the converged beta ``[R]`` and the new
        depths of each round (a list of ``[R, k]``)."""
        model = torch.nn.Module()
        model.density, model.implicit_network = density, _ImplicitNetwork(sdf_fn)
        model.eval()
        sampler = self.Sampler(BOUND_SPHERE, NEAR, add_tiny=add_tiny, **SAMPLER)
        rec: dict = {}
        with _recording_beta(density, rec), torch.no_grad():
            z, _ = sampler.get_z_vals(dirs, origins, model)
        rounds = [_depths(x, origins, dirs) for x in model.implicit_network.rounds]
        return z, rec["beta"].reshape(-1), rounds

    def network(self, density, sdf_fn=None):
        """A VolSDFNetwork around ``density`` and the analytic SDF (its constructor needs a
        pyhocon config and builds MLPs: the attributes its methods use are set instead)."""
        net = self.Network.__new__(self.Network)
        torch.nn.Module.__init__(net)
        net.density = density
        net.implicit_network = _ImplicitNetwork(sdf_fn)
        net.rendering_network = _RenderingNetwork()
        net.ray_sampler = self.Sampler(BOUND_SPHERE, NEAR, add_tiny=1e-6, **SAMPLER)
        net.white_bkgd, net.scene_bounding_sphere = False, BOUND_SPHERE
        return net.eval()

    def weights(self, density, z, sdf, gw):
        """volume_rendering's weights and the gradients of sum(w * gw) to sdf, z, beta."""
        zz, ss = z.detach().clone().requires_grad_(), sdf.detach().clone().requires_grad_()
        w = self.network(density).volume_rendering(zz, ss.reshape(-1, 1))
        return w.detach(), torch.autograd.grad((w * gw).sum(), (ss, zz, next(density.parameters())))

    def forward(self, density, sdf_fn, model_input):
        """The forward pass in eval mode: its output, and depth / opacity from the weights
        of its samples."""
        net = self.network(density, sdf_fn)
        rec: dict = {}
        with _recording(net.ray_sampler, "get_z_vals", rec):
            out = net(model_input)
        z = rec["get_z_vals"][0].detach()
        dirs, loc = self.rend_util.get_camera_params(model_input["uv"], model_input["pose"],
                                                      model_input["intrinsics"])
        R = dirs.shape[1]
        pts = loc.repeat_interleave(R, 0)[:, None] + z[..., None] * dirs.reshape(-1, 1, 3)
        with torch.no_grad():
            w = net.volume_rendering(z, sdf_fn(pts).reshape(-1, 1))
        return {"normals": out["normal_map"].detach(), "color": out["rgb_values"].detach(),
                "depth": (w * z).sum(1), "opacity": w.sum(1)}


def _npht_sample(sdf_fn, origins, dirs, near, far, beta0, add_tiny, backend):
    """npht's sampler (``training=False``): z ``[R, S]``, the converged beta (its last
    bisection's result), the new depths of each round."""
    import npht
    from npht.render import ErrorBoundSampler

    store: dict = {}
    rounds: List[torch.Tensor] = []

    def recording_sdf(p):
        rounds.append(p.detach())
        return sdf_fn(p)

    sampler = ErrorBoundSampler(**SAMPLER, add_tiny=add_tiny, backend=backend)
    with _recording(npht.render.sampler.ops, "eb_bisect_beta", store):
        z = sampler(recording_sdf, origins, dirs, near, far, beta0, training=False)
    o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    return z.reshape(o.shape[0], -1), store["eb_bisect_beta"], [_depths(p, o, d) for p in rounds]


def _u1_explanation(rounds_np, rounds_up, far: float, rays: torch.Tensor, tol_abs: float) -> Optional[str]:
    """Whether the rays ``rays`` (bool [R]) whose samples differ all first differ, in some
    round, in that round's last new sample alone (the quantile u = 1), which npht puts at
    the ray's far end: VolSDF's inverse CDF sends u = 1 to the end of the support when its
    CDF sums to 1 + 1 ulp, to the far end when it sums to 1 or 1 - 1 ulp (npht's CDF ends at
    exactly 1: the far end, VolSDF's result in exact arithmetic). After that the two sample
    sets differ by that sample, and all that follows differs."""
    if len(rounds_np) != len(rounds_up):
        return None
    state = torch.zeros(rays.shape[0], dtype=torch.long)  # 0 same so far, 1 explained, 2 not
    for a, b in zip(rounds_np, rounds_up):
        if a.shape != b.shape:
            return None
        d = (a - b).abs() > tol_abs
        first = (state == 0) & d.any(1)
        only_u1 = ~d[:, :-1].any(1) & ((a[:, -1] - far).abs() <= tol_abs)
        state[first & only_u1] = 1
        state[first & ~only_u1] = 2
    if bool((state[rays] == 1).all()):
        return (f"{int(rays.sum())} rays: the quantile u = 1 of a round lands at the far end in npht, at the end "
                "of the support in VolSDF (its CDF sums to 1 + 1 ulp); everything after differs")
    return None


def _f32_note(got, up32, up64) -> str:
    """float32 sampler rows: both sides' distance from VolSDF in float64 (the bisection's
    comparisons with eps and the inverse CDF's search turn on round-off: a ray's beta can
    land one bisection step away, and its later samples with it)."""
    def off(x):
        d = (x.detach().double() - up64.double()).abs()
        d = d.reshape(d.shape[0], -1).max(1).values
        return f"{float(d.max()):.2g} ({int((d > 1e-5 * float(up64.abs().max())).sum())} rays)"

    return f"max from VolSDF float64: npht {off(got)}, VolSDF {off(up32)}"


def _density_explanation(got, alt_upstream, tol) -> Optional[str]:
    """VolSDF's code run with npht's density module instead of its own agrees."""
    r = diff(got, alt_upstream)[1]
    if math.isfinite(r) and r <= tol:
        return f"VolSDF's density rounding: {r:.2g} with npht's density in VolSDF's code"
    return None


def compare_volsdf(path: str, dtypes, backends, report: Report, res: int = 8) -> None:
    import npht
    from npht.render import ErrorBoundSampler, generate_rays, laplace_density

    up = VolSDF(_check_checkout(path, VOLSDF_FILES, "lioryariv/volsdf"))
    g = torch.Generator().manual_seed(1)
    for dtype in dtypes:
        tol, dt = TOL[dtype], _dt(dtype)
        with upstream_env(dtype):  # npht's calls too: its default-dtype buffers as VolSDF's
            # -- density ------------------------------------------------------------------
            sdf = torch.cat([torch.linspace(-1, 1, 2001, dtype=dtype), torch.tensor([0.0, 1e-9, -1e-9], dtype=dtype)])
            for beta in BETAS:
                d_up, d_np = up.density(beta), _npht_density(beta, dtype)
                b = d_up.get_beta().detach()
                report.add("volsdf", "beta = |beta| + beta_min", f"{dt} beta {beta:g}", d_np.get_beta(),
                           d_up.get_beta(), tol)
                report.add("volsdf", "Laplace density", f"{dt} beta {beta:g}, sdf in [-1, 1]",
                           laplace_density(sdf, b), d_up(sdf, beta=b), tol)
                # the far tail, sdf / beta in [10, 60], against 0.5 / beta exp(-sdf / beta)
                tail = torch.linspace(10.0, 60.0, 501, dtype=torch.float64) * float(b)
                exact = 0.5 / float(b) * torch.exp(-tail / float(b))
                for who, val in (("npht", laplace_density(tail.to(dtype), b)),
                                 ("VolSDF", d_up(tail.to(dtype), beta=b))):
                    rel = ((val.double() - exact).abs() / exact).max()
                    report.add_value("volsdf", f"density tail: {who} rel. error", f"{dt} beta {beta:g}, "
                                     "sdf/beta in [10, 60]", rel, note="vs 0.5/beta exp(-sdf/beta)")

            # -- rays ---------------------------------------------------------------------
            cams = _cameras(dtype, res)
            B, R = len(cams), res * res
            origins, dirs = (t.reshape(B, R, 3) for t in generate_rays(cams))
            model_input = _volsdf_camera_input(cams, dtype)
            up_dirs, up_loc = up.rend_util.get_camera_params(model_input["uv"], model_input["pose"],
                                                              model_input["intrinsics"])
            report.add("volsdf", "ray directions", f"{dt} {B} cameras {res}x{res}", dirs, up_dirs, tol)
            report.add("volsdf", "ray origins", f"{dt}", origins, up_loc[:, None].expand(-1, R, -1), tol)
            near = torch.full((B, R), NEAR, dtype=dtype)
            far = torch.full((B, R), 2.0 * BOUND_SPHERE, dtype=dtype)
            o_flat, d_flat = origins.reshape(-1, 3), dirs.reshape(-1, 3)

            for scene, sdf_fn in SCENES.items():
                for beta in BETAS:
                    beta0 = up.density(beta).get_beta().detach()
                    # -- the sampler, both sides on the same rays ------------------------------
                    for add_tiny in (1e-6, 0.0):
                        z_up, beta_up, rounds_up = up.sample(up.density(beta), sdf_fn, o_flat, d_flat, add_tiny)
                        exact = dtype == torch.float64
                        if not exact:  # float32 is reported with both sides' distance from float64
                            with upstream_env(torch.float64):
                                z64, beta64, _ = up.sample(up.density(beta), sdf_fn, o_flat.double(),
                                                           d_flat.double(), add_tiny)
                        nan_rays = torch.isnan(z_up).any(1)
                        keep = ~nan_rays
                        setting = f"{dt} {scene} beta {float(beta0):.4g} add_tiny {add_tiny:g}"
                        for backend in backends:
                            z, beta_np, rounds_np = _npht_sample(sdf_fn, origins, dirs, near, far, beta0, add_tiny,
                                                                 backend)
                            s = f"{setting} [{backend}]"
                            notes = []
                            if bool(nan_rays.any()):
                                notes.append(f"{int(nan_rays.sum())} of {B * R} rays NaN in VolSDF (all-zero pdf, no "
                                             "add_tiny): compared on the others")
                                report.add_value("volsdf", "sampler: npht NaN samples", s, int(torch.isnan(z).sum()),
                                                 0.0)
                            z_note, b_note, ex_z = list(notes), [], None
                            if exact:
                                scale = 2.0 * BOUND_SPHERE
                                bad = ((z - z_up).abs() > tol * scale).any(1) & keep
                                ex_z = partial(_u1_explanation, rounds_np, rounds_up, scale, bad, tol * scale)
                            else:
                                z_note.append(_f32_note(z[keep], z_up[keep], z64[keep]))
                                b_note.append(_f32_note(beta_np[keep], beta_up[keep], beta64[keep]))
                            row_tol = tol if exact else None
                            report.add("volsdf", "sampler z (sorted)", s, z[keep], z_up[keep], row_tol,
                                       "; ".join(z_note), explain=ex_z)
                            report.add("volsdf", "sampler converged beta", s, beta_np, beta_up, row_tol,
                                       "; ".join(b_note))
                            report.add_value("volsdf", "sampler rounds (npht - VolSDF)", s,
                                             len(rounds_np) - len(rounds_up), 0.0 if exact else None)
                    # -- compositing on VolSDF's samples --------------------------------------
                    z_up, _, _ = up.sample(up.density(beta), sdf_fn, o_flat, d_flat, 1e-6)
                    sdf_vals = sdf_fn(o_flat[:, None] + z_up[..., None] * d_flat[:, None])
                    gw = torch.randn(z_up.shape, dtype=torch.float64, generator=g).to(dtype)
                    w_up, gr_up = up.weights(up.density(beta), z_up, sdf_vals, gw)
                    w_alt, gr_alt = up.weights(_npht_density(beta, dtype), z_up, sdf_vals, gw)
                    for backend in backends:
                        dens = _npht_density(beta, dtype)
                        ss, zz = sdf_vals.clone().requires_grad_(), z_up.clone().requires_grad_()
                        out = npht.volume_composite(ss, zz, dens.get_beta().reshape(1), backend=backend)
                        grads = torch.autograd.grad((out.weights * gw).sum(), (ss, zz, dens.beta_param))
                        s = f"{dt} {scene} beta {float(beta0):.4g} [{backend}]"
                        rows = [("weights", out.weights, w_up, w_alt),
                                ("depth", out.depth, (w_up * z_up).sum(1), (w_alt * z_up).sum(1)),
                                ("opacity", out.opacity, w_up.sum(1), w_alt.sum(1))]
                        rows += [(f"d/d {n}", a, b_, c) for n, a, b_, c in zip(("sdf", "z", "beta"), grads, gr_up,
                                                                                gr_alt)]
                        for name, got, ref, alt in rows:
                            report.add("volsdf", f"composite: {name}", s, got, ref, tol,
                                       explain=partial(_density_explanation, got, alt, tol))
                    # -- the whole forward pass: normal map, colour, depth, opacity -------------
                    f_up = up.forward(up.density(beta), sdf_fn, model_input)
                    f_alt = up.forward(_npht_density(beta, dtype), sdf_fn, model_input)
                    for k, backend in enumerate(backends):
                        kw = dict(sampler=ErrorBoundSampler(**SAMPLER, add_tiny=1e-6, backend=backend),
                                  backend=backend)
                        r = _bounded_renderer(density=_npht_density(beta, dtype), weight_threshold=None, **kw)(
                            sdf_fn, cams, color_fn=color_of)
                        ours = {"normals": r.normals.reshape(-1, 3), "color": r.color.reshape(-1, 3),
                                "depth": r.depth.reshape(-1), "opacity": r.opacity.reshape(-1)}
                        s = f"{dt} {scene} beta {float(beta0):.4g} [{backend}]"
                        for key in ("normals", "color", "depth", "opacity"):
                            report.add("volsdf", f"render: {key}", s, ours[key], f_up[key], tol,
                                       explain=partial(_density_explanation, ours[key], f_alt[key], tol))
                        if k == 0:  # npht's default renderer: samples below weight 1e-6 not shaded
                            r = _bounded_renderer(density=_npht_density(beta, dtype), **kw)(sdf_fn, cams)
                            report.add("volsdf", "render: normals, weight_threshold 1e-6", s,
                                       r.normals.reshape(-1, 3), f_alt["normals"], None,
                                       "npht's documented approximation; vs VolSDF with npht's density")


# -- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eg3d", metavar="PATH", help="checkout of NVlabs/eg3d")
    p.add_argument("--volsdf", metavar="PATH", help="checkout of lioryariv/volsdf")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--backends", nargs="+", default=["cpu", "reference"], choices=["cpu", "reference"],
                   help="npht backends to run (CPU ones)")
    p.add_argument("--resolution", type=int, default=8, help="rays per camera side (2 cameras)")
    args = p.parse_args(argv)
    if not args.eg3d and not args.volsdf:
        p.error("give --eg3d PATH and/or --volsdf PATH (checkouts of NVlabs/eg3d, lioryariv/volsdf)")
    if args.resolution < 1:
        p.error("--resolution must be >= 1")
    dtypes = [getattr(torch, d) for d in args.dtypes]
    report = Report()
    try:
        paths = {}
        if args.eg3d:
            paths["eg3d"] = _check_checkout(args.eg3d, [EG3D_RENDERER], "NVlabs/eg3d")
        if args.volsdf:
            paths["volsdf"] = _check_checkout(args.volsdf, VOLSDF_FILES, "lioryariv/volsdf")
    except UsageError as e:
        p.error(str(e))
    for name, path in paths.items():
        print(f"{name}: {path} at commit {checkout_commit(path)}")
    torch.manual_seed(0)
    if "eg3d" in paths:
        compare_eg3d(paths["eg3d"], dtypes, args.backends, report)
    if "volsdf" in paths:
        compare_volsdf(paths["volsdf"], dtypes, args.backends, report, args.resolution)
    report.print()
    failed = report.failed
    print(f"\n{len(report.rows) - len(failed)} of {len(report.rows)} rows agree"
          + (f"; FAILED: {len(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
