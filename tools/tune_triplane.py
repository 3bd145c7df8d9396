"""Block sizes of the Triton tri-plane kernels (kernels/triplane.py) on a GPU: the forward,
forward+backward and eikonal-op (double backward) tasks of benchmarks/triplane.py with the
``npht-triton`` method, timed for each ``NPHT_TRIPLANE_BLOCKS="BLOCK_N,BLOCK_C,WARPS"``
candidate beside the default choice and the reference, in one process. Prints one line per
(task, candidate) and writes ``tune_triplane.json`` to ``--out``; a candidate faster in all
three tasks is the one to make ``_blocks``' default.

Why: compiled for sm_90 with C = 32, the default 128 x 32 tile (8 warps) keeps 1-5 KiB per
thread in local memory in all three kernels (``make triton-check`` prints it); 128 x 8 with
8 warps keeps none in the forward and backward, 40 bytes in the double backward.

    python tools/tune_triplane.py --out gpu_out                 # the benchmark's GPU sizes
    TRITON_INTERPRET=1 python tools/tune_triplane.py --device cpu --quick --configs 32,8,4
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tune_mlp_mm import _bench  # noqa: E402  (benchmarks/triplane.py, loaded by path)

CONFIGS = ["128,8,8", "128,8,4", "128,4,4", "256,8,8", "64,32,8"]
TASKS = ("fwd", "fwd_bwd", "eikonal_op")
VAR = "NPHT_TRIPLANE_BLOCKS"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="BLOCK_N,BLOCK_C,WARPS candidates")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--out", default=None)
    p.add_argument("--B", type=int, default=None, help="batch (default: the benchmark's)")
    p.add_argument("--N", type=int, default=None, help="points per batch (default: the benchmark's)")
    args = p.parse_args(argv)
    bench = _bench()
    cfg = bench.default_config(args.device, args.quick)
    for key in ("B", "N"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    rows = []

    def timed(task, method, blocks=None):
        os.environ.pop(VAR, None)
        if blocks is not None:
            os.environ[VAR] = blocks
        row = {"task": task, "method": method, "blocks": blocks}
        try:
            step, _ = bench.make_step(method, task, cfg, args.device)
            row.update(bench.time_step(step, args.device, args.reps))
        except Exception as exc:  # a config that does not compile or run: recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            os.environ.pop(VAR, None)
        print(f"{task:11s} {method:12s} {blocks or '-':10s} {row.get('median_ms', float('nan')):9.3f} ms "
              f"{row.get('error', '')}", flush=True)
        rows.append(row)

    for task in args.tasks:
        timed(task, "reference")
        timed(task, "npht-triton")  # the default blocks
        for blocks in args.configs:
            timed(task, "npht-triton", blocks)
    result = {"config": cfg, "device": bench.device_name(args.device), "torch": bench.torch.__version__,
              "commit": bench.git_commit(), "rows": rows}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "tune_triplane.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
