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

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tune import config, load_bench, parser, timed_row, write_result  # noqa: E402

CONFIGS = ["128,8,8", "128,8,4", "128,4,4", "256,8,8", "64,32,8"]
TASKS = ("fwd", "fwd_bwd", "eikonal_op")
VAR = "NPHT_TRIPLANE_BLOCKS"


def main(argv=None) -> dict:
    p = parser(__doc__, reps=7)
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="BLOCK_N,BLOCK_C,WARPS candidates")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--N", type=int, default=None, help="points per batch (default: the benchmark's)")
    args = p.parse_args(argv)
    bench = load_bench()
    cfg = config(bench, args, "N")
    rows = []

    def timed(task, method, blocks=None):
        rows.append({"task": task, **timed_row(bench, task, method, cfg, args.device, args.reps, (VAR,), VAR,
                                               blocks)})

    for task in args.tasks:
        timed(task, "reference")
        timed(task, "npht-triton")  # the default blocks
        for blocks in args.configs:
            timed(task, "npht-triton", blocks)
    return write_result(bench, args.device, cfg, rows, args.out, "tune_triplane.json")

if __name__ == "__main__":
    main()
