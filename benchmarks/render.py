"""Benchmark of npht's VolSDF normal-map renderer against the thesis-style reference, side
by side in one run.

SDF: tri-plane (C=32 channels, planes random * 0.1, sum aggregation) + the thesis decoder
(5 layers, 256 wide, softplus beta 100) with geometric initialisation (a bumpy sphere of
radius 0.5); Laplace density beta 0.001 (thesis); error-bound sampler with the thesis
parameters; B near-frontal cameras (radius 2.6, fov 30).

Task ``gan_step``: the generator side of a GAN step on normal maps: render the normal maps
at each resolution, a loss on them (mean squared error to a fixed target map: the
discriminator's cost does not depend on the renderer), backward through the normals
(double backward) into planes, decoder and beta. Methods:

- ``reference``: the thesis' renderer (npht.render.render_reference): every sample of every
  pixel evaluated with grad, PyTorch tri-plane sampling (3 x grid_sample, or its gather
  equivalent where grid_sample has no double backward), PyTorch sampler and compositing;
- ``npht-full``: npht's renderer shading every sample (fused ops, no approximation);
- ``npht``: + sample-efficient shading (the default weight threshold 1e-6);
- ``npht-fused``: + the decoder's value and gradient from npht.softplus_mlp_with_grad
  (``npht-fused-ckpt``: keeping nothing for the backward, recomputed in chunks);
- ``npht-coarse``: ``npht`` + ray culling from a 4x coarser pass;
- ``npht-skip``: ``npht`` + the sampler skips converged rays (``skip_converged``);
- ``npht-fast``: all of them: coarse culling, skip converged rays, fused decoder
  (``npht-fast-ckpt``: with the checkpointed fused decoder, for memory);
- ``npht-fast-tf32`` (GPU only): ``npht-fast`` with TF32 tensor-core matmuls in the shading
  pass and the backward; the sampler and the no-grad weights stay in float32 (TF32 there
  moves the samples of rays the sampler leaves unconverged: about 2 deg of normal error
  on this SDF, emulated on CPU, against 0.2 deg for TF32 in shading only);
  ``npht-fast-tmm-tf32`` (GPU only): the same with the decoder's products as Triton kernels
  with the elementwise steps fused in (``mlp_matmul="triton"``).

Accuracy (not timed): each npht method against the full renderer at the same resolution
(every sample shaded; its decoder gradient from the fused, checkpointed op, which equals
autograd's and fits in memory at resolutions where ``npht-full``'s autograd does not):
foreground mean angular error of the normal maps, opacity-mask IoU, and the cosine
similarity of the parameter gradients of the loss (issue bounds: <= 1 deg, >= 0.99, >= 0.99).

Task ``composite``: the compositing op alone, fwd+bwd (R = B * 256^2 rays, S = 66 samples,
normals as values): the reference PyTorch ops with autograd vs npht.volume_composite per
backend.

Task ``sampler``: the error-bound sampler alone (thesis preset, no grad) on B * comp_res^2
rays at an analytic sphere (radius 0.5, so the SDF costs next to nothing and the per-ray
math dominates): the reference PyTorch sampler vs its fused ops per backend.

Out of memory is a result (an ``error`` row), not a crash. Results go to
benchmarks/results/render_<device>_<date>.json (+ .png with --plot).

    python benchmarks/render.py              # full sizes for this device
    python benchmarks/render.py --quick      # small sizes
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

import npht
from npht import matmul_precision
from npht.models import TriplaneDecoder
from npht.reference import baseline_triplane_sum, grid_sample_has_double_backward
from npht.reference.render import baseline_composite
from npht.render import ErrorBoundSampler, LaplaceDensity, VolSDFRenderer, near_frontal_cameras, render_reference

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    cuda_peak_during,
    device_name,
    git_commit,
    base_parser,
    time_step,
    triton_version,
    write_result,
    PartialRows,
)

TASKS = ("gan_step", "composite", "sampler")
GAN_METHODS = ("reference", "npht-full", "npht", "npht-fused", "npht-fused-ckpt", "npht-coarse", "npht-skip",
               "npht-fast", "npht-fast-ckpt", "npht-fast-tf32", "npht-fast-tmm-tf32")
ACCURACY_BOUNDS = {"normal_err_deg": 1.0, "mask_iou": 0.99, "grad_cosine": 0.99}  # the renderer issue's


def gan_methods(device: str) -> list:
    """The methods run by default: TF32 exists only on the GPU."""
    return [m for m in GAN_METHODS if device == "cuda" or not m.endswith("-tf32")]




def default_config(device: str, quick: bool) -> dict:
    if device == "cuda":
        cfg = dict(B=4, C=32, plane_res=256, hidden=256, resolutions=[64, 128, 256, 512], comp_res=256)
        if quick:
            cfg.update(resolutions=[64, 128], comp_res=64)
    else:
        cfg = dict(B=2, C=32, plane_res=128, hidden=256, resolutions=[32, 64], comp_res=64)
        if quick:
            cfg.update(B=1, C=8, plane_res=16, hidden=32, resolutions=[8, 16], comp_res=8)
    return cfg


def composite_methods(device: str) -> list:
    info = npht.build_info()
    names = ["reference"]
    if device == "cuda":
        names += [f"npht-{b}" for b in ("cuda", "triton") if info[b]]
    elif info["cpu"]:
        names.append("npht-cpu")
    return names


class Scene:
    """Tri-plane + decoder SDF, density, cameras and a target normal map for one resolution."""

    def __init__(self, cfg: dict, device: str, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        B, C, P = cfg["B"], cfg["C"], cfg["plane_res"]
        self.planes = (torch.randn(B, 3, C, P, P, generator=g) * 0.1).to(device).requires_grad_()
        self.decoder = TriplaneDecoder(feature_dim=C, hidden=cfg["hidden"]).geometric_init_(0.5, generator=g)
        self.decoder.to(device)
        self.density = LaplaceDensity(beta=0.001, beta_min=1e-4).to(device)
        self.cameras = near_frontal_cameras(B, generator=g, device=device)
        self.params = [self.planes] + list(self.decoder.parameters()) + list(self.density.parameters())
        self.device = device
        self.ref_impl = "grid_sample" if grid_sample_has_double_backward(device) else "gather"

    def sdf_reference(self, p):  # the tri-plane as users write it: 3 samples + sum, no guards
        return self.decoder(baseline_triplane_sum(self.planes, p, self.ref_impl), p)

    def sdf_npht(self, p):
        return self.decoder.sdf(self.planes, p)

    def target(self, res: int):
        g = torch.Generator().manual_seed(1)
        t = torch.randn(len(self.cameras), res, res, 3, generator=g)
        return F.normalize(t, dim=-1).to(self.device)

    def render(self, method: str, res: int):
        cams = self.cameras.resized(res, res)
        if method == "reference":
            return render_reference(self.sdf_reference, cams, self.density)
        opts = dict(density=self.density)
        if method in ("npht-full", "accuracy-baseline"):
            opts["weight_threshold"] = None
        if method == "accuracy-baseline":  # the full renderer with the memory-frugal decoder gradient
            opts["gradient_fn"] = lambda p: self.decoder.sdf_and_gradient(self.planes, p, fused=True, checkpoint=True)
        fast = method.startswith("npht-fast")
        if method == "npht-coarse" or fast:
            opts["coarse_factor"] = 4
        if method == "npht-skip" or fast:
            opts["sampler"] = replace(ErrorBoundSampler.thesis(), skip_converged=True)
        if method.startswith("npht-fused") or fast:
            ckpt = method.endswith("-ckpt")
            precision = "high" if method.endswith("-tf32") else "highest"
            matmul = "triton" if "-tmm" in method else "torch"

            def gradient_fn(p):
                with matmul_precision(precision):
                    return self.decoder.sdf_and_gradient(self.planes, p, fused=True, checkpoint=ckpt,
                                                         mlp_matmul=matmul)

            opts["gradient_fn"] = gradient_fn
        return VolSDFRenderer(**opts)(self.sdf_npht, cams)

    def step_fn(self, method: str, res: int):
        target = self.target(res)

        def step():
            out = self.render(method, res)
            loss = ((out.normals - target) ** 2).mean()
            with matmul_precision("high" if method.endswith("-tf32") else "highest"):
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            return out, grads

        return step


def _flat_grads(grads, params):
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def accuracy(scene: Scene, method: str, res: int, full) -> dict:
    """``method`` against the full npht renderer at the same resolution."""
    out, grads = scene.step_fn(method, res)()
    f_out, f_grads = full
    fg = f_out.opacity > 0.5
    cos = (F.normalize(out.normals, dim=-1) * F.normalize(f_out.normals, dim=-1)).sum(-1)[fg].clamp(-1, 1)
    mine = out.opacity > 0.5
    g1, g2 = _flat_grads(grads, scene.params), _flat_grads(f_grads, scene.params)
    return {
        "normal_err_deg": float(torch.rad2deg(torch.acos(cos.detach())).mean()) if fg.any() else None,
        "mask_iou": float((mine & fg).sum() / (mine | fg).sum().clamp(min=1)),
        "grad_cosine": float(F.cosine_similarity(g1, g2, dim=0)),
        "foreground_fraction": float(fg.float().mean()),
        "samples_shaded": out.stats.get("samples_shaded"),
        "sampler_sdf_evaluations": out.stats.get("sampler_sdf_evaluations"),
        "coarse_pass_ran": out.stats.get("coarse"),  # off below 16 coarse pixels a side
    }


def measure(step, device: str, reps: int, memory: bool) -> dict:
    row = time_step(step, device, reps)
    if memory and device == "cuda":  # on CPU the allocator's caching hides a step's peak
        row["peak_mem_bytes"] = cuda_peak_during(step, warmed=True)  # time_step warmed it up
    return row


def _error_row(exc) -> str:
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def run_gan(cfg, device, methods, reps, memory, on_row=None) -> list:
    rows = []
    scene = Scene(cfg, device)
    for res in cfg["resolutions"]:
        full = None
        try:
            full = scene.step_fn("accuracy-baseline", res)()
        except Exception as exc:  # the accuracy baseline may itself run out of memory
            full_error = _error_row(exc)
        for method in methods:
            row = {"task": "gan_step", "method": method, "res": res}
            try:
                step = scene.step_fn(method, res)
                row.update(measure(step, device, reps, memory))
                # npht-full's own row checks the baseline (should agree to round-off)
                if method != "reference" and full is not None:
                    row["accuracy_vs_full"] = accuracy(scene, method, res, full)
                elif method != "reference":
                    row["accuracy_vs_full"] = {"error": full_error}
            except Exception as exc:
                row["error"] = _error_row(exc)
            if device == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(_fmt(row), flush=True)
            if on_row is not None:
                on_row(row)
        del full
    return rows


def composite_inputs(cfg, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    R, S = cfg["B"] * cfg["comp_res"] ** 2, 66
    z = torch.sort(torch.rand(R, S, generator=g) * 2.0 + 1.6, dim=1).values
    sdf = (2.6 - z) * 0.5 + 0.01 * torch.randn(R, S, generator=g)
    v = F.normalize(torch.randn(R, S, 3, generator=g), dim=-1)
    ups = [torch.randn(R, 3, generator=g), torch.randn(R, generator=g), torch.randn(R, generator=g)]
    return [t.to(device) for t in (sdf, z, v)], [u.to(device) for u in ups]


def run_composite(cfg, device, reps, memory, on_row=None) -> list:
    rows = []
    (sdf, z, v), ups = composite_inputs(cfg, device)
    beta = torch.tensor(0.01, device=device)
    for method in composite_methods(device):
        row = {"task": "composite", "method": method, "res": cfg["comp_res"]}
        s, b, vv = (t.detach().clone().requires_grad_() for t in (sdf, beta, v))

        def step():
            if method == "reference":
                rendered, depth, opacity, _ = baseline_composite(s, z, b, vv)
            else:
                rendered, depth, opacity, _ = npht.volume_composite(s, z, b, vv, backend=method[5:])
            return torch.autograd.grad((rendered, depth, opacity), (s, b, vv), ups)

        try:
            row.update(measure(step, device, reps, memory))
        except Exception as exc:
            row["error"] = _error_row(exc)
        rows.append(row)
        print(_fmt(row), flush=True)
        if on_row is not None:
            on_row(row)
    return rows


def sampler_methods(device: str) -> list:
    return ["reference"] + [m for m in composite_methods(device) if m != "reference"]


def run_sampler(cfg, device, reps, memory, on_row=None) -> list:
    rows = []
    g = torch.Generator().manual_seed(0)
    B, R = cfg["B"], cfg["comp_res"] ** 2
    uv = torch.rand(B, R, 2, generator=g) * 0.5 - 0.25  # a cone of rays around the sphere
    dirs = F.normalize(torch.cat([uv, -torch.ones(B, R, 1)], -1), dim=-1).to(device)
    origins = torch.tensor([0.0, 0.0, 2.6], device=device).expand(B, R, 3).contiguous()
    near, far = torch.full((B, R), 1.6, device=device), torch.full((B, R), 3.6, device=device)

    def sphere(p):
        return p.norm(dim=-1) - 0.5

    for method in sampler_methods(device):
        row = {"task": "sampler", "method": method, "res": cfg["comp_res"]}
        sampler = replace(ErrorBoundSampler.thesis(), backend="reference" if method == "reference" else method[5:])

        def step():
            with torch.no_grad():
                return sampler(sphere, origins, dirs, near, far, 1e-3)

        try:
            row.update(measure(step, device, reps, memory))
            row["rounds"] = sampler.last_stats["rounds"]
        except Exception as exc:
            row["error"] = _error_row(exc)
        rows.append(row)
        print(_fmt(row), flush=True)
        if on_row is not None:
            on_row(row)
    return rows


def add_ratios(rows: list) -> None:
    for row in rows:
        ref = next((r for r in rows if r["task"] == row["task"] and r["res"] == row["res"]
                    and r["method"] == "reference"), None)
        if ref and "median_ms" in ref and "median_ms" in row:
            row["speedup_vs_reference"] = ref["median_ms"] / row["median_ms"]
            if ref.get("peak_mem_bytes") and row.get("peak_mem_bytes") is not None:
                row["memory_ratio_vs_reference"] = row["peak_mem_bytes"] / ref["peak_mem_bytes"]


def targets(rows: list, device: str) -> dict:
    """The renderer issue's GPU targets (on a GPU) or DESIGN.md's CPU-backend target (on the
    CPU), evaluated on this run's rows."""
    def get(method, res):
        return next((r for r in rows if r["task"] == "gan_step" and r["method"] == method and r["res"] == res), None)

    def within_bounds(r):
        """True / False from the row's accuracy against the full renderer; None unmeasured."""
        acc = r.get("accuracy_vs_full", {})
        if acc.get("grad_cosine") is None or acc.get("normal_err_deg") is None:
            return None
        return (acc["normal_err_deg"] <= ACCURACY_BOUNDS["normal_err_deg"]
                and acc["mask_iou"] >= ACCURACY_BOUNDS["mask_iou"]
                and acc["grad_cosine"] >= ACCURACY_BOUNDS["grad_cosine"])

    ref64 = get("reference", 64)
    out = {}
    # the sample-efficient approximations against the full renderer (every device)
    for r in rows:
        if r["task"] == "gan_step" and within_bounds(r) is not None:
            out[f"{r['method']} {r['res']}: accuracy within bounds"] = within_bounds(r)
    # a time / memory target counts only for a row within the accuracy bounds
    for method in GAN_METHODS[2:]:
        r256, r512 = get(method, 256), get(method, 512)
        if ref64 is None or "median_ms" not in ref64:
            continue

        def ok(r, met):
            acc = within_bounds(r)
            return met and acc is not False

        def note(r):
            return " (accuracy not measured)" if within_bounds(r) is None else ""

        if r256 and "median_ms" in r256:
            out[f"{method}: 256 time <= reference 64 time{note(r256)}"] = ok(r256, r256["median_ms"] <= ref64["median_ms"])
            if r256.get("peak_mem_bytes") is not None:
                out[f"{method}: 256 peak <= 24 GiB{note(r256)}"] = ok(r256, r256["peak_mem_bytes"] <= 24 * 2 ** 30)
        if r512 and "median_ms" in r512:
            out[f"{method}: 512 time <= 4x reference 64 time{note(r512)}"] = ok(
                r512, r512["median_ms"] <= 4 * ref64["median_ms"])
    for r in rows:
        if r["task"] == "composite" and r["method"] != "reference" and "speedup_vs_reference" in r:
            out[f"composite {r['method']} fwd+bwd >= 10x reference"] = r["speedup_vs_reference"] >= 10
    if device == "cuda":
        return out
    # DESIGN.md: CPU backends >= 2x the PyTorch reference on the same (2-core) machine
    out = {k: v for k, v in out.items() if k.endswith("accuracy within bounds")}
    out.update({f"{r['task']} {r['method']} >= 2x reference": r["speedup_vs_reference"] >= 2
                for r in rows if r["task"] in ("composite", "sampler") and r["method"] == "npht-cpu"
                and "speedup_vs_reference" in r})
    return out


def run(args, on_row=None) -> dict:
    """The result dict; ``on_row(row)`` after each measured row (:class:`_common.PartialRows`)."""
    device = args.device
    cfg = default_config(device, args.quick)
    if args.B:
        cfg["B"] = args.B
    if args.resolutions:
        cfg["resolutions"] = args.resolutions
    rows = []
    if "gan_step" in args.tasks:
        rows += run_gan(cfg, device, args.methods or gan_methods(device), args.reps, not args.no_memory, on_row)
    if "composite" in args.tasks:
        rows += run_composite(cfg, device, args.reps, not args.no_memory, on_row)
    if "sampler" in args.tasks:
        rows += run_sampler(cfg, device, args.reps, not args.no_memory, on_row)
    add_ratios(rows)
    return {
        "benchmark": "render",
        "device": device_name(device),
        "device_type": device,
        "torch": torch.__version__,
        "triton": triton_version(),
        "npht": npht.__version__,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {**cfg, "dtype": "float32", "reps": args.reps, "quick": args.quick,
                   "sampler": "thesis (32/32/32, eps 0.1, beta_iters 10, max_iter 10)",
                   "memory": "CUDA allocator peak above the inputs" if device == "cuda"
                   else "not measured on CPU"},
        "build_info": {k: v for k, v in npht.build_info().items() if not k.endswith("error")},
        "reference_impl": "grid_sample" if grid_sample_has_double_backward(device) else "gather",
        "targets": targets(rows, device),
        **({"label": args.label} if args.label else {}),
        "results": rows,
    }


def _fmt(row: dict) -> str:
    head = f"{row['task']:9s} {row['method']:12s} {row['res']:4d}"
    if "error" in row:
        return f"{head}  {row['error']}"
    mem = row.get("peak_mem_bytes")
    acc = row.get("accuracy_vs_full", {})
    acc_s = (f"  err {acc['normal_err_deg']:.3f} deg, IoU {acc['mask_iou']:.4f}, grad cos {acc['grad_cosine']:.4f}"
             if acc.get("grad_cosine") is not None and acc.get("normal_err_deg") is not None else "")
    mem_s = f"{mem / 2**20:10.1f} MiB" if mem is not None else ""
    return f"{head} {row['median_ms']:11.2f} ms {mem_s}{acc_s}"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["results"] if r["task"] == "gan_step"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and "median_ms" in r]
        if not mine:
            continue
        axes[0].plot([r["res"] for r in mine], [r["median_ms"] for r in mine], "o-", label=method)
        mem = [r for r in mine if r.get("peak_mem_bytes") is not None]
        if mem:
            axes[1].plot([r["res"] for r in mem], [r["peak_mem_bytes"] / 2**30 for r in mem], "o-", label=method)
        oom = [r["res"] for r in rows if r["method"] == method and r.get("error") == "out of memory"]
        for res in oom:
            axes[0].annotate("OOM", (res, max(r["median_ms"] for r in mine)), fontsize=8)
    for ax, title in zip(axes, ["GAN generator step: median time (ms)", "peak memory (GiB)"]):
        ax.set_xlabel("normal-map resolution")
        ax.set_title(title)
        if not ax.lines:  # e.g. memory on CPU
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
            continue
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"npht renderer on {result['device']} (B={cfg['B']}, tri-plane {cfg['plane_res']}^2 x "
                 f"{cfg['C']}, decoder width {cfg['hidden']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = base_parser(__doc__, TASKS, reps=3)
    p.add_argument("--resolutions", type=int, nargs="+")
    p.add_argument("--label", help="names a run with other tasks or sizes: report.py keeps the newest run "
                   "per label beside the default one")
    args = p.parse_args(argv)
    unknown = set(args.methods or ()) - set(GAN_METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {GAN_METHODS}")
    partial = PartialRows(args.out, "render", device=device_name(args.device), device_type=args.device,
                          torch=torch.__version__)
    path = write_result(run(args, partial.add), args.out, plot if args.plot else None)
    partial.done()
    return path


if __name__ == "__main__":
    main()
