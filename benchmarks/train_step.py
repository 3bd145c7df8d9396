"""The identity trainer's step, presets side by side (issue 3's GAN-step targets in the real
trainer): ``npht.train.IdentityTrainer`` in stage 1 (every loss term: the 3D terms, the
normal-map renderer at the preset's resolution, the generator's adversarial term and the
discriminator's step) on a prepared dataset, a few steps per preset in this process.

Per preset: the median step time (the trainer's own ``time``: the step up to its logged
scalars, which synchronise the GPU), the median wall time per step (batch loading included),
the peak memory (CUDA: the largest per-step peak the trainer logs as ``mem_gib``, the whole
process' allocations; CPU: the peak RSS increase over the run, a lower bound for every preset
but the first, whose freed memory the later ones reuse), and the step time relative to
the ``--baseline`` preset (default ``thesis-64``) measured in the same run (npht's ops at the thesis' 64^2 setting; the
pure-PyTorch reference renderer's GAN step is timed by benchmarks/render.py).

A preset is a ``TrainConfig`` preset name, optionally ``@RES`` for another render resolution
(``npht-256@512``: 512^2 maps with npht-256's renderer options).

    python benchmarks/train_step.py --data DATA                        # GPU: thesis-64 npht-256 npht-256@512
    python benchmarks/train_step.py --data DATA --presets cpu-demo     # CPU
    python benchmarks/train_step.py --data DATA --quick --out DIR      # smoke run: cpu-demo, 3 steps

DATA: a folder of ``npht data prepare`` (on the GPU machine, which lacks libigl and pyrender,
one carried from here: tools/gpu_wheels.sh prepares ``.gpu_data/bench``). Writes
``train_step_<device>_<date>.json`` into ``--out`` (default benchmarks/results/), its rows
also after each preset (``train_step_partial.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (HERE, PartialRows, cpu_memory_measure, cpu_peak_during, device_name, git_commit,  # noqa: E402
                     summarize_times, write_result)

BASELINE = "thesis-64"


def parse_preset(spec: str):
    """``NAME[@RES]`` -> (preset name, overrides)."""
    from npht.train.config import PRESETS

    name, _, res = spec.partition("@")
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r} in {spec!r}; choose one of {sorted(PRESETS)} (optionally @RES)")
    if res and not (res.isdigit() and int(res) >= 8):
        raise SystemExit(f"{spec!r}: the resolution after @ must be an integer >= 8")
    return name, ({"render_resolution": int(res)} if res else {})


def run_preset(spec: str, data: str, device: str, steps: int, warmup: int) -> dict:
    """``steps`` trainer steps of one preset; the first ``warmup`` are left out of the times."""
    from npht.train.config import TrainConfig
    from npht.train.identity import IdentityTrainer

    name, over = parse_preset(spec)
    cfg = TrainConfig.preset(name, progress=False, ckpt_every=0, image_every=0, device=device, **over)
    rows, stamps = [], []
    with tempfile.TemporaryDirectory(prefix="npht-train-step-") as out:
        tr = IdentityTrainer(cfg, data, out)
        log = tr._log

        def logged(row):
            stamps.append(time.perf_counter())
            rows.append(dict(row))
            log(row)

        tr._log = logged
        if device == "cuda":
            tr.train(max_steps=steps)
            peak = max(r["mem_gib"] for r in rows) * 2**30
        else:
            peak = cpu_peak_during(lambda: tr.train(max_steps=steps))
        batch = cfg.batch_size * cfg.views
        tr = log = logged = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    if len(rows) <= warmup:
        raise RuntimeError(f"{spec}: only {len(rows)} steps logged, fewer than warm-up {warmup} + 1")
    times = summarize_times([r["time"] * 1e3 for r in rows[warmup:]], "trainer step time (perf_counter)")
    wall = [(b - a) * 1e3 for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return {"task": "identity_step", "method": spec, "preset": name, "render_resolution": cfg.render_resolution,
            "batch": cfg.batch_size, "maps_per_step": batch, **times,
            "wall_median_ms": statistics.median(wall) if wall else None,
            "peak_mem_bytes": int(peak), "peak_kind": "cuda max_memory_allocated per step" if device == "cuda"
            else cpu_memory_measure() + " over the run", "steps": len(rows), "warmup": warmup,
            "stage": int(rows[-1]["stage"]), "loss_last": float(rows[-1]["total"])}


def add_ratios(rows: list, baseline: str) -> None:
    """``time_vs_baseline`` / ``memory_vs_baseline``: ratios to the baseline preset's row."""
    base = next((r for r in rows if r["method"] == baseline and "error" not in r), None)
    for r in rows:
        if base is not None and "error" not in r:
            r["time_vs_baseline"] = r["median_ms"] / base["median_ms"]
            r["memory_vs_baseline"] = r["peak_mem_bytes"] / base["peak_mem_bytes"] if base["peak_mem_bytes"] else None


def run(args) -> dict:
    dev = args.device
    if not os.path.exists(os.path.join(args.data, "manifest.json")):
        raise SystemExit(f"--data {args.data}: no prepared dataset there (manifest.json missing); make one with "
                         "`npht data prepare --source synthetic --out DIR` (tools/gpu_wheels.sh prepares .gpu_data/bench)")
    presets = args.presets or (["cpu-demo"] if args.quick else
                               [BASELINE, "npht-256", "npht-256@512"] if dev == "cuda" else ["cpu-demo"])
    for spec in presets:
        parse_preset(spec)  # refuse a typo before the first preset runs
    steps = args.steps or (3 if args.quick else 12 if dev == "cuda" else 8)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or dev == "cpu" else 3)
    partial = PartialRows(args.out, "train_step", device=device_name(dev), device_type=dev)
    rows = []
    for spec in presets:
        try:
            row = run_preset(spec, args.data, dev, steps, warmup)
        except torch.cuda.OutOfMemoryError as e:
            row = {"task": "identity_step", "method": spec, "error": f"out of memory: {str(e).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
        rows.append(row)
        partial.add(row)
        if "error" in row:
            print(f"{spec:14s} {row['error']}")
        else:
            print(f"{spec:14s} {row['render_resolution']:4d}^2 x {row['maps_per_step']}: step {row['median_ms']:9.1f} ms "
                  f"(wall {row['wall_median_ms'] or float('nan'):9.1f} ms), peak {row['peak_mem_bytes'] / 2**30:6.2f} GiB")
    add_ratios(rows, args.baseline)
    result = {
        "benchmark": "train_step", "device": device_name(dev), "device_type": dev, "torch": torch.__version__,
        "npht": __import__("npht").__version__, "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"quick": args.quick, "data": os.path.basename(os.path.normpath(args.data)), "steps": steps,
                   "warmup": warmup, "stage": 1, "threads": torch.get_num_threads(), "baseline": args.baseline},
        "results": rows,
    }
    partial.done()
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared dataset (npht data prepare)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", nargs="+", help="PRESET[@RES] ... (default: GPU thesis-64 npht-256 npht-256@512, "
                                                "CPU cpu-demo)")
    p.add_argument("--steps", type=int, help="steps per preset (default 12 on GPU, 8 on CPU, 3 with --quick)")
    p.add_argument("--warmup", type=int, help="first steps left out of the times (default 3 on GPU, else 1)")
    p.add_argument("--baseline", default=BASELINE, help="the preset the ratios refer to (default thesis-64)")
    p.add_argument("--quick", action="store_true", help="cpu-demo, 3 steps (smoke run)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        p.error("--steps must be at least 2")
    return write_result(run(args), args.out)


if __name__ == "__main__":
    main()
