"""Benchmark of npht.triplane_sample against the PyTorch references, side by side in one run.

Methods: ``reference`` (literally 3 x F.grid_sample + sum, the thesis-style baseline, the
ratio denominator; where this torch has no double backward of grid_sample, the eikonal
tasks use npht's gather-based reference instead), ``npht-reference`` (the op with
``backend="reference"``: npht's pure-PyTorch raw kernels, written with gathers, i.e. what
the fallback costs),
``eg3d`` (EG3D's path: batched grid_sample, permute, mean), and npht with
each backend available here, fed the generator layout [B, 3, C, H, W] (``npht-<backend>``,
a drop-in call that includes the layout copy) and channels-last planes
(``npht-<backend>-cl``). Tasks: ``fwd`` (no grad), ``fwd_bwd`` (gradients to planes and
points), ``eikonal_op`` (the op alone under an eikonal loss: a fixed linear head, gradient w.r.t.
the points with create_graph, then gradients to planes and points: the op's double
backward), ``eikonal`` (tri-plane + the thesis decoder, eikonal loss on the SDF's gradient
norm, full double backward to planes and decoder). In the eikonal task two more npht
methods run: ``npht-<backend>-fused`` takes the decoder's value and gradient from
npht.softplus_mlp_with_grad (hand-written double backward) instead of autograd, and
``npht-<backend>-fused-ckpt`` does so keeping nothing for the backward (recompute in
chunks); ``npht-<backend>-fused-torch-ew`` is ``-fused`` with the decoder backward's
elementwise steps as plain PyTorch ops instead of npht's fused kernels (what they gain). On
the GPU ``npht-cuda-fused-tf32`` runs the fused step with TF32 matmuls
(``torch.set_float32_matmul_precision("high")``; the reference stays float32, and
``reference-tf32`` shows what TF32 alone gives the reference), ``npht-cuda-fused-tmm-tf32``
takes the decoder's products from Triton kernels with the elementwise steps fused into
them (``matmul="triton"``), ``-keep`` keeps the decoder's gradient pass for the backward
(``keep_gradient_pass=True``, backward chunks of 2^17 rows), ``-h16`` stores the decoder's
pre-activations in float16 (``h_dtype=torch.float16``), ``-d16`` its gradient pass' vectors
(``d_dtype=torch.float16``), and each ``-tf32`` row reports
the cosine similarity of its gradients to the float32 step's (``grad_cosine_vs_float32``).

Timing: triton.testing.do_bench on GPU, a repeated wall-clock timer on CPU; median and
20/80 % quantiles. Peak memory: CUDA allocator peak above the inputs on GPU; on CPU the
peak RSS increase (sampled every 0.2 ms) of a fresh child process running the task once. Results go to
benchmarks/results/triplane_<device>_<date>.json (+ .png with --plot).

    python benchmarks/triplane.py                 # full sizes for this device
    python benchmarks/triplane.py --quick --plot  # small sizes
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys

import torch

import npht
from npht import matmul_precision
from npht.models import TriplaneDecoder
from npht.reference import baseline_triplane_sum, eg3d_sample_from_planes, grid_sample_has_double_backward

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    base_parser,
    cuda_peak_during,
    device_name,
    git_commit,
    cpu_memory_measure,
    cpu_peak_during,
    time_interleaved,
    time_step,
    triton_version,
    write_result,
    PartialRows,
)

HERE = os.path.dirname(os.path.abspath(__file__))
EG3D_PLANE_AXES = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float32)
TASKS = ("fwd", "fwd_bwd", "eikonal_op", "eikonal")


def default_config(device: str, quick: bool) -> dict:
    if device == "cuda":
        cfg = dict(B=4, N=2 ** 20, C=32, res=256, eik_N=2 ** 18)
        if quick:
            cfg.update(N=2 ** 16, eik_N=2 ** 14)
    else:
        cfg = dict(B=4, N=2 ** 15, C=32, res=128, eik_N=2 ** 11)
        if quick:
            cfg.update(N=2 ** 10, C=8, res=32, eik_N=2 ** 7)
    return cfg


def methods_for(device: str) -> list:
    info = npht.build_info()
    names = ["reference", "npht-reference", "eg3d"]
    backends = []
    if device == "cuda":
        if info["cuda"]:
            backends.append("cuda")
        if info["triton"]:
            backends.append("triton")
    elif info["cpu"]:
        backends.append("cpu")
    for b in backends:
        names += [f"npht-{b}", f"npht-{b}-cl", f"npht-{b}-fused", f"npht-{b}-fused-ckpt",
                  f"npht-{b}-fused-torch-ew"]
    if backends and device == "cuda":  # TF32 exists on the GPU only
        names += ["reference-tf32", f"npht-{backends[0]}-fused-tf32"]
        if info["triton"]:  # the decoder's products as Triton kernels with fused elementwise steps
            names += [f"npht-{backends[0]}-fused-tmm-tf32", f"npht-{backends[0]}-fused-tmm-keep-tf32",
                      f"npht-{backends[0]}-fused-tmm-h16-tf32", f"npht-{backends[0]}-fused-tmm-keep-h16-tf32",
                      f"npht-{backends[0]}-fused-tmm-keep-h16-d16-tf32"]
    return names


def applies(method: str, task: str) -> bool:
    """The fused-decoder variants and the TF32 reference exist for the eikonal step only."""
    return ("-fused" not in method and method != "reference-tf32") or task == "eikonal"


def is_tf32(method: str) -> bool:
    """``-tf32`` methods: the eikonal step with TF32 matmuls (torch's "high" precision)."""
    return method.endswith("-tf32")


def float32_twin(method: str) -> str:
    """The method a ``-tf32`` one is measured against for ``grad_cosine_vs_float32``: the same
    sampler and decoder path in IEEE float32 storing everything in float32 (no ``-tmm``,
    ``-keep``, ``-h16``, ``-d16``: the float16 storage's rounding counts too)."""
    if method == "reference-tf32":
        return "reference"
    return _flags(method)[0]


FLAGS = ("-torch-ew", "-tmm", "-keep", "-h16", "-d16")  # suffixes of the fused methods, before -tf32
KEEP_CHUNK = 1 << 17  # rows per backward chunk of the -keep methods (unless --mlp-chunk)


def _flags(method: str):
    """(method without its flag suffixes and -tf32, the set of flags)."""
    if method.endswith("-tf32"):
        method = method[:-len("-tf32")]
    flags = set()
    while any(method.endswith(f) for f in FLAGS):
        f = next(f for f in FLAGS if method.endswith(f))
        flags.add(f)
        method = method[:-len(f)]
    return method, flags


def is_tmm(method: str) -> bool:
    """``-tmm`` methods: the fused decoder gradient with its products as Triton kernels
    with the elementwise steps in their prologues/epilogues (``matmul="triton"`` of
    softplus_mlp_with_grad) instead of torch matmuls."""
    return "-tmm" in _flags(method)[1]


def is_keep(method: str) -> bool:
    """``-keep`` methods: the fused decoder keeps its gradient pass for the backward
    (``keep_gradient_pass=True``: no recompute, more memory; backward chunks of
    ``KEEP_CHUNK`` rows to offset part of it)."""
    return "-keep" in _flags(method)[1]


def is_h16(method: str) -> bool:
    """``-h16`` methods (with ``-tmm``): the fused decoder stores its pre-activations in
    float16 (``h_dtype=torch.float16``: half their memory and traffic, TF32-grade rounding)."""
    return "-h16" in _flags(method)[1]


def is_d16(method: str) -> bool:
    """``-d16`` methods (with ``-tmm``): the fused decoder stores its gradient pass' vectors
    in float16 (``d_dtype=torch.float16``)."""
    return "-d16" in _flags(method)[1]


def is_torch_ew(method: str) -> bool:
    """``-torch-ew`` methods: the fused decoder gradient with its backward's elementwise
    steps as the PyTorch op sequence (``backend="reference"`` of softplus_mlp_with_grad)
    instead of npht's fused kernels: what those kernels gain, in the same run."""
    return "-torch-ew" in _flags(method)[1]


def parse_method(method: str):
    """'npht-cpu-cl' -> ('cpu', channels_last, fused decoder, checkpoint); a ``-tf32``
    (matmul precision) suffix, and before it the fused decoder's flags ``-torch-ew`` (its
    elementwise kernels), ``-tmm`` (its products), ``-keep`` (its saved state), are not
    part of it."""
    base, flags = _flags(method)
    m = re.fullmatch(r"npht-(\w+?)(-cl)?(-fused)?(-ckpt)?", base)
    if m is None or (m.group(4) and not m.group(3)) or (flags and not m.group(3)) or \
            ("-keep" in flags and m.group(4)) or (flags & {"-h16", "-d16"} and "-tmm" not in flags):
        raise ValueError(f"unknown method {method!r}")
    return m.group(1), bool(m.group(2)), bool(m.group(3)), bool(m.group(4))


def reference_impl(task: str, device: str) -> str:
    """3 x F.grid_sample, except for the eikonal step where this torch has no double
    backward of grid_sample (before 2.13): there the gather-based equivalent."""
    if task.startswith("eikonal") and not grid_sample_has_double_backward(device):
        return "gather"
    return "grid_sample"


def literal_grid_sample_sum(planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The baseline as users write it: three F.grid_sample calls + sum, no guards
    (:func:`npht.reference.baseline_triplane_sum`)."""
    return baseline_triplane_sum(planes, points, "grid_sample")


def sampler(method: str, task: str = "fwd", device: str = "cpu"):
    """method -> (function(planes, points) -> features, channels_last input?)."""
    if method in ("reference", "reference-tf32"):
        if reference_impl(task, device) == "gather":  # 3 x gather_bilinear + sum, no guards either
            return (lambda P, X: baseline_triplane_sum(P, X, "gather")), False
        return literal_grid_sample_sum, False
    if method == "npht-reference":
        return (lambda P, X: npht.triplane_sample(P, X, backend="reference")), False
    if method == "eg3d":
        def eg3d(P, X):
            return eg3d_sample_from_planes(EG3D_PLANE_AXES.to(P.device), P, X, box_warp=2.0).mean(1)
        return eg3d, False
    backend, cl, _, _ = parse_method(method)  # npht-<backend>[-cl]
    # EG3D comparisons use EG3D's projection and mean: same cost as npht's default sum
    return (lambda P, X: npht.triplane_sample(P, X, backend=backend, channels_last=cl)), cl


def make_inputs(cfg: dict, device: str, task: str, channels_last: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, C, R = cfg["B"], cfg["C"], cfg["res"]
    N = cfg["eik_N"] if task == "eikonal" else cfg["N"]
    planes = (torch.randn(B, 3, C, R, R, generator=gen) * 0.1).to(device)
    if channels_last:
        planes = planes.permute(0, 1, 3, 4, 2).contiguous()
    points = (torch.rand(B, N, 3, generator=gen) * 2 - 1).to(device)
    return planes.requires_grad_(task != "fwd"), points.requires_grad_(task != "fwd")


def make_step(method: str, task: str, cfg: dict, device: str):
    """Build the inputs and a closure running one step of ``task``."""
    fn, cl = sampler(method, task, device)
    planes, points = make_inputs(cfg, device, task, cl)
    if task == "fwd":
        def step():
            with torch.no_grad():
                return fn(planes, points)
    elif task == "fwd_bwd":
        go = torch.randn(points.shape[0], points.shape[1], cfg["C"], device=device)

        def step():
            out = fn(planes, points)
            return torch.autograd.grad(out, (planes, points), go)
    elif task == "eikonal_op":
        # the op's own second derivative: a fixed linear SDF head, eikonal loss on the
        # gradient w.r.t. the points, gradients to planes and points (double backward)
        w = torch.randn(cfg["C"], generator=torch.Generator().manual_seed(1)).to(device)

        def step():
            x = points
            sdf = fn(planes, x) @ w
            (normals,) = torch.autograd.grad(sdf.sum(), x, create_graph=True)
            loss = ((normals.norm(dim=-1) - 1) ** 2).mean()
            return torch.autograd.grad(loss, (planes, x))
    else:
        torch.manual_seed(0)
        decoder = TriplaneDecoder(feature_dim=cfg["C"]).to(device)
        params = [planes, *decoder.parameters()]
        fused = method.startswith("npht-") and parse_method(method)[2]

        def sdf_and_normals():
            if fused:
                backend, cl, _, ckpt = parse_method(method)
                chunk = cfg.get("mlp_chunk") or (KEEP_CHUNK if is_keep(method) else None)
                return decoder.sdf_and_gradient(planes, points, backend=backend, channels_last=cl,
                                                checkpoint=ckpt, mlp_chunk_size=chunk,
                                                mlp_backend="reference" if is_torch_ew(method) else "auto",
                                                mlp_matmul="triton" if is_tmm(method) else "torch",
                                                mlp_keep_gradient_pass=is_keep(method),
                                                mlp_h_dtype=torch.float16 if is_h16(method) else None,
                                                mlp_d_dtype=torch.float16 if is_d16(method) else None)
            sdf = decoder(fn(planes, points), points)
            (normals,) = torch.autograd.grad(sdf.sum(), points, create_graph=True)
            return sdf, normals

        precision = "high" if is_tf32(method) else "highest"

        def step():
            with matmul_precision(precision):
                sdf, normals = sdf_and_normals()
                loss = ((normals.norm(dim=-1) - 1) ** 2).mean() + sdf.abs().mean()
                return torch.autograd.grad(loss, params)
    return step, (planes, points)


def grad_cosine(step, step_ref) -> float:
    """Cosine similarity of two steps' gradients (all parameters flattened)."""
    def flat(grads):
        return torch.cat([g.reshape(-1).double() for g in grads])

    return float(torch.nn.functional.cosine_similarity(flat(step()), flat(step_ref()), dim=0))


def peak_memory(method: str, task: str, cfg: dict, device: str) -> int:
    """Bytes of peak memory a step needs beyond its inputs."""
    if device == "cuda":
        step, _ = make_step(method, task, cfg, device)
        return cuda_peak_during(step)
    cmd = [sys.executable, os.path.abspath(__file__), "--child-memory", method, task,
           "--config", json.dumps(cfg)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return int(out.stdout.strip().splitlines()[-1])


def child_memory(method: str, task: str, cfg: dict) -> None:
    """Run one step in this (fresh) process and print its peak memory above the start
    (:func:`_common.cpu_peak_during`)."""
    step, _ = make_step(method, task, cfg, "cpu")
    print(cpu_peak_during(step))


def run(args, on_row=None) -> dict:
    """The result dict; ``on_row(row)`` after each measured row (:class:`_common.PartialRows`)."""
    device = args.device
    cfg = default_config(device, args.quick)
    for key in ("B", "N", "C", "res", "eik_N", "mlp_chunk"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    methods = args.methods or methods_for(device)
    rows = []
    for task in args.tasks:
        todo = [m for m in methods if applies(m, task)]
        # CPU: the methods' runs interleaved round by round (load on a shared machine lands on
        # every side of a ratio); GPU: each method on its own (do_bench)
        steps, timed = {}, {}
        if device == "cpu":
            for method in todo:
                try:
                    steps[method] = make_step(method, task, cfg, device)[0]
                except RuntimeError:
                    pass  # measured (and its error recorded) below
            timed = time_interleaved(steps, args.reps)
        for method in todo:
            row = {"task": task, "method": method}
            try:
                step = steps.pop(method, None) or make_step(method, task, cfg, device)[0]
                row.update(timed.get(method) or time_step(step, device, args.reps))
                if is_tf32(method):  # what the precision (TF32, float16 storage) costs: vs plain float32
                    row["grad_cosine_vs_float32"] = grad_cosine(step, make_step(float32_twin(method), task, cfg,
                                                                                device)[0])
                del step
                if not args.no_memory:
                    row["peak_mem_bytes"] = peak_memory(method, task, cfg, device)
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            except RuntimeError as exc:  # e.g. no double backward of grid_sample in this torch
                row["error"] = str(exc).splitlines()[0][:200]
            except subprocess.CalledProcessError as exc:  # child ran out of memory / failed
                row["error"] = f"memory child failed: {exc.stderr.strip().splitlines()[-1:]}"
            if device == "cuda":
                torch.cuda.empty_cache()
            n = cfg["eik_N"] if task == "eikonal" else cfg["N"]
            if "median_ms" in row:
                row["points_per_s"] = cfg["B"] * n / (row["median_ms"] * 1e-3)
            rows.append(row)
            print(_fmt_row(row), flush=True)
            if on_row is not None:
                on_row(row)
    for row in rows:
        for base in ("reference", "eg3d"):
            ref = next((r for r in rows if r["task"] == row["task"] and r["method"] == base), None)
            if ref and "median_ms" in ref and "median_ms" in row:
                row[f"speedup_vs_{base}"] = ref["median_ms"] / row["median_ms"]
                if ref.get("peak_mem_bytes") and row.get("peak_mem_bytes") is not None:
                    row[f"memory_ratio_vs_{base}"] = row["peak_mem_bytes"] / ref["peak_mem_bytes"]
    return {
        "benchmark": "triplane",
        "device": device_name(device),
        "device_type": device,
        "torch": torch.__version__,
        "triton": triton_version(),
        "npht": npht.__version__,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reference_impl": {t: reference_impl(t, device) for t in args.tasks},
        "memory_measure": ("torch.cuda.max_memory_allocated above the start" if device == "cuda"
                           else cpu_memory_measure()),
        "reference_baseline": "literal 3 x F.grid_sample + sum (no guards; where reference_impl is 'gather': "
                              "3 x npht.reference.gather_bilinear + sum, no guards); npht-reference: the op's "
                              "pure-PyTorch backend",
        "config": {**cfg, "dtype": "float32", "reps": args.reps, "quick": args.quick,
                   "decoder": "5 layers, 256 wide, softplus beta=100"},
        "build_info": {k: v for k, v in npht.build_info().items() if not k.endswith("error")},
        **({"label": args.label} if args.label else {}),
        "results": rows,
    }


def _fmt_row(row: dict) -> str:
    if "error" in row:
        return f"{row['task']:8s} {row['method']:16s} {row['error']}"
    mem = row.get("peak_mem_bytes")
    mem_s = f"{mem / 2**20:9.1f} MiB" if mem is not None else ""
    return f"{row['task']:8s} {row['method']:16s} {row['median_ms']:10.3f} ms  {mem_s}"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["results"] if "speedup_vs_reference" in r]
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs = [tasks.index(r["task"]) + i * width for r in rows if r["method"] == m]
        axes[0].bar(xs, [r["speedup_vs_reference"] for r in rows if r["method"] == m], width, label=m)
        mem = [(tasks.index(r["task"]) + i * width, r.get("peak_mem_bytes", 0) / 2**20)
               for r in rows if r["method"] == m]
        axes[1].bar([x for x, _ in mem], [v for _, v in mem], width, label=m)
    for ax, title in zip(axes, ["speed-up vs reference (3 x grid_sample)", "peak memory (MiB)"]):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks)
        ax.set_title(title)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"npht.triplane_sample on {result['device']}  (B={cfg['B']}, N={cfg['N']}, "
                 f"C={cfg['C']}, {cfg['res']}^2; eikonal N={cfg['eik_N']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = base_parser(__doc__, TASKS, reps=7)
    p.add_argument("--N", type=int, help="points per batch element (fwd, fwd_bwd)")
    p.add_argument("--C", type=int)
    p.add_argument("--res", type=int, help="plane resolution")
    p.add_argument("--eik-N", dest="eik_N", type=int, help="points per batch element (eikonal)")
    p.add_argument("--label", help="names a run with other sizes: report.py keeps the newest run "
                   "per label (e.g. 'eikonal at scale') beside the default one")
    p.add_argument("--mlp-chunk", dest="mlp_chunk", type=int,
                   help="rows per chunk of the fused decoder's backward (default: the op's)")
    p.add_argument("--child-memory", nargs=2, metavar=("METHOD", "TASK"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        child_memory(*args.child_memory, json.loads(args.config))
        return None
    partial = PartialRows(args.out, "triplane", device=device_name(args.device), device_type=args.device,
                          torch=torch.__version__)
    path = write_result(run(args, partial.add), args.out, plot if args.plot else None)
    partial.done()
    return path


if __name__ == "__main__":
    main()
