"""What tools/tune_mlp_mm.py and tools/tune_triplane.py share: benchmarks/triplane.py loaded
by path, one timed step per (method, block-size candidate) with the candidate set through an
environment variable (a failing candidate becomes an error row), and the JSON they write."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location("triplane_bench", os.path.join(ROOT, "benchmarks", "triplane.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec.loader.exec_module(mod)
    return mod


def parser(doc: str, reps: int) -> argparse.ArgumentParser:
    """The options both tools take (device, sizes, repetitions, output folder)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--out", default=None)
    p.add_argument("--B", type=int, default=None, help="batch (default: the benchmark's)")
    return p


def config(bench, args, points_key: str) -> dict:
    """The benchmark's configuration for the device, with --B and the points option
    (``points_key``: ``N`` or ``eik_N``) when given."""
    cfg = bench.default_config(args.device, args.quick)
    for key in ("B", points_key):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def timed_row(bench, task, method, cfg, device, reps, variables, var=None, blocks=None) -> dict:
    """Times ``task`` of ``method`` with ``os.environ[var] = blocks`` (every name in
    ``variables`` unset before and after): ``{"method", "blocks", median_ms ...}`` or an
    ``error``."""
    for v in variables:
        os.environ.pop(v, None)
    if blocks is not None:
        os.environ[var] = blocks
    row = {"method": method, "blocks": blocks}
    try:
        step, _ = bench.make_step(method, task, cfg, device)
        row.update(bench.time_step(step, device, reps))
    except Exception as exc:  # a config that does not compile or run: recorded, not fatal
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        for v in variables:
            os.environ.pop(v, None)
    print(f"{task:11s} {method:32s} {blocks or '-':18s} {row.get('median_ms', float('nan')):9.3f} ms "
          f"{row.get('error', '')}", flush=True)
    return row


def write_result(bench, device, cfg, rows, out, name) -> dict:
    """The run's record (config, device, torch, commit, rows), also as ``out/name`` when
    ``out`` is given."""
    import datetime as dt

    result = {"config": cfg, "device": bench.device_name(device), "device_type": device,
              "torch": bench.torch.__version__, "triton": bench.triton_version(), "commit": bench.git_commit(),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, name), "w") as f:
            json.dump(result, f, indent=1)
    return result
