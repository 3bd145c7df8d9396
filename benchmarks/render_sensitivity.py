"""How much does a VolSDF normal map move when its samples move? The study behind the
renderer's choice of approximations (README, "Cost at high resolution").

On the render benchmark's SDF (tri-plane + thesis decoder, beta 0.001, thesis sampler) it
measures, against the full renderer (every sample shaded, float32), the foreground mean
angular error and the opacity-mask IoU of:

- ``denser-sampler``: the same SDF with a much denser error-bound sampler (64 / 256 / 32,
  16 rounds): how far the thesis sampler is from a converged sampling (its noise floor);
- ``tf32-everywhere``: TF32 matmuls in every SDF evaluation (sampler included), emulated on
  any device by rounding the decoder's matmul operands to TF32 (10-bit mantissa);
- ``tf32-shading``: TF32 only in the pass shaded with grad (sampler and weights in float32);
- ``threshold``: npht's default sample-efficient shading (for scale).

It also counts the rays that the sampler leaves unconverged (beta above beta0 after its
last round). Prints a table and writes JSON to benchmarks/results/render_sensitivity_*.json.

    python benchmarks/render_sensitivity.py --res 32
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F

import npht
from npht.ops import sampler as sampler_ops
from npht.render import ErrorBoundSampler, VolSDFRenderer
from npht.render.renderer import sdf_and_gradient_autograd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import render as render_bench  # noqa: E402
from _common import base_parser, device_name, git_commit, triton_version, write_result  # noqa: E402


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to TF32's 10-bit mantissa (nearest, ties away from zero);
    straight-through for autograd."""
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return x + (rounded - x.detach())


@contextmanager
def emulated_tf32():
    """Every ``F.linear`` (the decoder's layers) with TF32-rounded operands."""
    linear = F.linear

    def tf32_linear(x, w, b=None):
        return linear(round_tf32(x), round_tf32(w), b)

    F.linear = tf32_linear
    try:
        yield
    finally:
        F.linear = linear


def compare(out, full) -> dict:
    fg = full.opacity > 0.5
    cos = (F.normalize(out.normals, dim=-1) * F.normalize(full.normals, dim=-1)).sum(-1).clamp(-1, 1)
    err = torch.rad2deg(torch.acos(cos))[fg]
    mine = out.opacity > 0.5
    return {"normal_err_deg": float(err.mean()), "normal_err_q50": float(err.median()),
            "normal_err_q90": float(torch.quantile(err, 0.9)),
            "mask_iou": float((mine & fg).sum() / (mine | fg).sum().clamp(min=1))}


def unconverged_rays(scene, cams) -> dict:
    """Rays (all, and those in the foreground of the full render) whose beta is still above
    beta0 after the thesis sampler's last round."""
    last = {}
    bisect = sampler_ops.eb_bisect_beta

    def spy(*args, **kwargs):
        last["beta"] = bisect(*args, **kwargs)
        return last["beta"]

    sampler_ops.eb_bisect_beta = spy
    try:
        with torch.no_grad():
            out = VolSDFRenderer(density=scene.density, weight_threshold=None)(scene.sdf_npht, cams)
    finally:
        sampler_ops.eb_bisect_beta = bisect
    if out.stats["rays_rendered"] != out.stats["rays"]:  # then the sampler's rays are not the image's
        raise RuntimeError("every ray must meet the bounding sphere for this count")
    beta0 = float(scene.density.get_beta().detach())
    stuck = last["beta"].reshape(-1) > beta0
    fg = (out.opacity > 0.5).reshape(-1)
    return {"rays": int(stuck.numel()), "unconverged": int(stuck.sum()),
            "foreground": int(fg.sum()), "foreground_unconverged": int((stuck & fg).sum())}


def run(args) -> dict:
    cfg = render_bench.default_config(args.device, args.quick)
    scene = render_bench.Scene(cfg, args.device)
    cams = scene.cameras.resized(args.res, args.res)
    rows = {}
    with torch.no_grad():
        full = VolSDFRenderer(density=scene.density, weight_threshold=None)(scene.sdf_npht, cams)
        dense = ErrorBoundSampler(64, 256, 32, 0.1, 10, 16)
        rows["denser-sampler"] = compare(VolSDFRenderer(density=scene.density, weight_threshold=None,
                                                        sampler=dense)(scene.sdf_npht, cams), full)
        rows["threshold"] = compare(VolSDFRenderer(density=scene.density)(scene.sdf_npht, cams), full)
        # the TF32 rows shade every sample (no weight threshold): they measure TF32 alone
        with emulated_tf32():
            rows["tf32-everywhere"] = compare(VolSDFRenderer(density=scene.density, weight_threshold=None)(
                scene.sdf_npht, cams), full)

        def shade_tf32(p):
            with emulated_tf32():
                return sdf_and_gradient_autograd(scene.sdf_npht, p, torch.is_grad_enabled())

        rows["tf32-shading"] = compare(VolSDFRenderer(density=scene.density, weight_threshold=None,
                                                      gradient_fn=shade_tf32)(scene.sdf_npht, cams), full)
    for name, row in rows.items():
        print(f"{name:16s} mean {row['normal_err_deg']:7.3f} deg  q50 {row['normal_err_q50']:7.3f}  "
              f"q90 {row['normal_err_q90']:7.3f}  IoU {row['mask_iou']:.4f}", flush=True)
    conv = unconverged_rays(scene, cams)
    print(f"unconverged after the last round: {conv['unconverged']} of {conv['rays']} rays, "
          f"{conv['foreground_unconverged']} of {conv['foreground']} foreground rays")
    return {
        "benchmark": "render_sensitivity",
        "device": device_name(args.device),
        "device_type": args.device,
        "torch": torch.__version__,
        "triton": triton_version(),
        "npht": npht.__version__,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {**cfg, "res": args.res, "beta": 0.001, "sampler": "thesis",
                   "denser_sampler": "64 / 256 / 32, eps 0.1, 10 beta iterations, 16 rounds",
                   "tf32": "emulated: decoder matmul operands rounded to a 10-bit mantissa"},
        "results": rows,
        "convergence": conv,
    }


def main(argv=None):
    p = base_parser(__doc__, ("sensitivity",), reps=1)
    p.add_argument("--res", type=int, default=32)
    args = p.parse_args(argv)
    return write_result(run(args), args.out, None)


if __name__ == "__main__":
    main()
