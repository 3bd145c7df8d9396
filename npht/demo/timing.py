"""A small timing table of npht's ops against the pure-PyTorch reference, measured side by
side in one run (the demo's "npht vs reference" table; ``benchmarks/`` has the full
benchmarks with sweeps, plots and memory).

Rows (each ``fwd+bwd`` and, where the op is used that way in training, double backward):

* ``triplane_sample``: :func:`npht.triplane_sample` vs 3 x ``grid_sample`` + sum, no
  guards (:func:`npht.reference.baseline_triplane_sum`; its gather form where
  ``grid_sample`` has no double backward), forward + backward into planes and points;
* ``triplane_eikonal``: the point gradient (create_graph) and a loss on it, backward
  (the eikonal term's double backward);
* ``volume_composite``: :func:`npht.volume_composite` vs VolSDF's compositing ops
  (:func:`npht.reference.render.baseline_composite`);
* ``render_step``: a normal-map GAN step (render, loss, backward into planes, decoder and
  beta) with :func:`npht.render.render` vs the thesis-style reference renderer.

>>> rows = op_timings("cpu", quick=True, reps=1)              # doctest: +SKIP
>>> print(format_table(rows))                                # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

__all__ = ["op_timings", "format_table"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pair(steps: Dict[str, Callable[[], object]], device: torch.device, reps: int) -> Dict[str, dict]:
    """Median wall time (ms) of ``reps`` runs of each step, after one warm-up each; peak CUDA
    memory of one more run each.

    The steps run interleaved (a, b, a, b, ...), so a slow spell of a shared machine lands
    on both sides of a ratio instead of on one of them."""
    for step in steps.values():
        step()
    _sync(device)
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {name: {"ms": statistics.median(t)} for name, t in times.items()}
    if device.type == "cuda":
        for name, step in steps.items():
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            _sync(device)
            out[name]["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return out


def _sizes(device: torch.device, quick: bool) -> dict:
    if device.type == "cuda" and not quick:
        return dict(B=4, C=32, P=256, N=2**18, rays=4 * 256 * 256, S=66, res=128)
    if device.type == "cuda":
        return dict(B=2, C=32, P=128, N=2**15, rays=2 * 64 * 64, S=66, res=64)
    if quick:
        return dict(B=1, C=8, P=32, N=2**11, rays=2**10, S=34, res=12)
    return dict(B=2, C=32, P=128, N=2**14, rays=2 * 32 * 32, S=66, res=24)


def op_timings(device="cpu", *, quick: bool = False, reps: int = 5, seed: int = 0) -> List[dict]:
    """Time each op with npht and with the reference, same inputs, same run.

    Returns rows ``{"op", "size", "npht_ms", "reference_ms", "speedup"}`` (+ peak memory
    in MiB on CUDA). ``quick``: tiny sizes (tests, a slow CPU)."""
    import npht
    from npht.models import TriplaneDecoder
    from npht.reference import baseline_triplane_sum, grid_sample_has_double_backward
    from npht.reference.render import baseline_composite
    from npht.render import LaplaceDensity, near_frontal_cameras, render, render_reference

    device = torch.device(device)
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    s = _sizes(device, quick)
    g = torch.Generator().manual_seed(seed)
    ref_impl = "grid_sample" if grid_sample_has_double_backward(device.type) else "gather"
    B, C, P, N = s["B"], s["C"], s["P"], s["N"]
    planes = (torch.randn(B, 3, C, P, P, generator=g) * 0.1).to(device).requires_grad_()
    points = (torch.rand(B, N, 3, generator=g) * 2 - 1).to(device).requires_grad_()

    def sample_fn(which):
        if which == "npht":
            return lambda: npht.triplane_sample(planes, points)
        return lambda: baseline_triplane_sum(planes, points, ref_impl)

    def fwd_bwd(which):
        f = sample_fn(which)
        return lambda: torch.autograd.grad(f().square().sum(), (planes, points))

    def eikonal(which):
        f = sample_fn(which)

        def step():
            sdf = f().mean(-1)
            (grad,) = torch.autograd.grad(sdf.sum(), points, create_graph=True)
            return torch.autograd.grad(((grad.norm(dim=-1) - 1) ** 2).mean(), planes)
        return step

    R, S = s["rays"], s["S"]
    z = torch.sort(torch.rand(R, S, generator=g) * 2.0 + 1.6, dim=1).values
    sdf = (2.6 - z) * 0.5 + 0.01 * torch.randn(R, S, generator=g)
    vals = F.normalize(torch.randn(R, S, 3, generator=g), dim=-1)
    z, sdf, vals = z.to(device), sdf.to(device).requires_grad_(), vals.to(device).requires_grad_()
    beta = torch.tensor(0.01, device=device, requires_grad=True)

    def composite(which):
        op = npht.volume_composite if which == "npht" else baseline_composite

        def step():
            rendered, depth, opacity, _ = op(sdf, z, beta, vals)
            return torch.autograd.grad(rendered.sum() + depth.sum() + opacity.sum(), (sdf, beta, vals))
        return step

    decoder = TriplaneDecoder(feature_dim=C).geometric_init_(0.5, generator=g).to(device)
    density = LaplaceDensity(beta=0.001, beta_min=1e-4).to(device)
    cams = near_frontal_cameras(B, generator=g, device=device).resized(s["res"], s["res"])
    params = [planes] + list(decoder.parameters()) + list(density.parameters())

    def render_step(which):
        def step():
            if which == "npht":
                out = render(lambda p: decoder.sdf(planes, p), cams, density=density)
            else:
                out = render_reference(lambda p: decoder(baseline_triplane_sum(planes, p, ref_impl), p),
                                       cams, density)
            return torch.autograd.grad(out.normals.square().mean(), params, allow_unused=True)
        return step

    cases = [("triplane_sample", f"B={B} C={C} {P}^2 N={N}", fwd_bwd),
             ("triplane_eikonal", f"B={B} C={C} {P}^2 N={N}", eikonal),
             ("volume_composite", f"{R} rays x {S} samples", composite),
             ("render_step", f"B={B} {s['res']}^2 normal maps", render_step)]
    rows = []
    for op, size, make in cases:
        row = {"op": op, "size": size}
        measured = _time_pair({which: make(which) for which in ("npht", "reference")}, device, reps)
        for which, t in measured.items():
            row[f"{which}_ms"] = t["ms"]
            if "peak_mem_mb" in t:
                row[f"{which}_peak_mem_mb"] = t["peak_mem_mb"]
        row["speedup"] = row["reference_ms"] / row["npht_ms"]
        rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    """Markdown table of :func:`op_timings` rows."""
    mem = any("npht_peak_mem_mb" in r for r in rows)
    head = "| op | size | npht (ms) | reference (ms) | speedup |" + (" peak MiB npht / ref |" if mem else "")
    sep = "|---|---|---:|---:|---:|" + ("---:|" if mem else "")
    lines = [head, sep]
    for r in rows:
        line = f"| {r['op']} | {r['size']} | {r['npht_ms']:.2f} | {r['reference_ms']:.2f} | {r['speedup']:.2f}x |"
        if mem:
            line += f" {r.get('npht_peak_mem_mb', float('nan')):.0f} / {r.get('reference_peak_mem_mb', float('nan')):.0f} |"
        lines.append(line)
    return "\n".join(lines)
