"""Block sizes of kernels/mlp_mm.py on a GPU: the eikonal step of benchmarks/triplane.py with
the decoder's products as Triton kernels (``npht-<backend>-fused-tmm-tf32``), timed for each
``NPHT_MLP_MM_BLOCKS`` (products) and ``NPHT_MLP_WGRAD_BLOCKS`` (weight-gradient reductions)
candidate, beside the same step with torch's products
(``-fused-tf32``), with the gradient pass kept (``-tmm-keep``), with float16 pre-activations
(``-tmm-h16``, ``-tmm-keep-h16-d16``) and the float32 reference, in one process. Prints one line per
candidate and writes ``tune_mlp_mm.json`` to ``--out``; the best candidates are the ones to
make the defaults in ``kernels/mlp_mm.py`` (``_blocks``, ``_wgrad_blocks``).

    python tools/tune_mlp_mm.py --out gpu_out                 # the benchmark's GPU sizes
    TRITON_INTERPRET=1 python tools/tune_mlp_mm.py --device cpu --quick --configs 64,128,32,4
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tune import config, load_bench, parser, timed_row, write_result  # noqa: E402
# candidates that compile without spilled registers and within an A100's and an H100's
# shared memory for all four product kernels (tools/triton_check.py prints registers,
# spills and shared memory; 64,128,32,4, 128,128,32,8, 64,256,32,8 and 32,256,32,4 spilled
# 0.2-2 KiB per thread in the adjoint/down epilogues on sm_90)
CONFIGS = ["64,128,32,8", "64,64,32,4", "128,64,32,8", "64,128,64,8"]
# weight_grad's BM,BN,BK,WARPS,SPLITS (NPHT_MLP_WGRAD_BLOCKS), spill-free likewise
WGRAD_CONFIGS = ["64,64,64,8,64", "64,64,64,8,128", "64,64,64,8,32", "64,64,128,8,64", "32,128,128,8,64"]


VARS = ("NPHT_MLP_MM_BLOCKS", "NPHT_MLP_WGRAD_BLOCKS")


def main(argv=None) -> dict:
    p = parser(__doc__, reps=5)
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="BM,BN,BK,WARPS candidates (products)")
    p.add_argument("--wgrad-configs", nargs="*", default=WGRAD_CONFIGS,
                   help="BM,BN,BK,WARPS,SPLITS candidates (weight-gradient reductions)")
    p.add_argument("--eik-N", type=int, default=None, help="points per batch (default: the benchmark's)")
    args = p.parse_args(argv)
    bench = load_bench()
    cfg = config(bench, args, "eik_N")
    backend = "cuda" if args.device == "cuda" and bench.npht.build_info()["cuda"] else (
        "triton" if args.device == "cuda" else "cpu")
    rows = []

    def timed(method, blocks=None, var="NPHT_MLP_MM_BLOCKS"):
        row = timed_row(bench, "eikonal", method, cfg, args.device, args.reps, VARS, var, blocks)
        row["variable"] = var if blocks is not None else None
        rows.append(row)

    timed("reference")
    timed(f"npht-{backend}-fused" + ("-tf32" if args.device == "cuda" else ""))
    tmm = f"npht-{backend}-fused-tmm" + ("-tf32" if args.device == "cuda" else "")
    timed(tmm)  # the default blocks
    timed(tmm.replace("-tmm", "-tmm-keep"))  # keeping the gradient pass (no recompute)
    timed(tmm.replace("-tmm", "-tmm-h16"))  # float16 pre-activations
    timed(tmm.replace("-tmm", "-tmm-keep-h16-d16"))  # kept gradient pass, both in float16
    for blocks in args.configs:
        timed(tmm, blocks)
    for blocks in args.wgrad_configs:
        timed(tmm, blocks, "NPHT_MLP_WGRAD_BLOCKS")
    return write_result(bench, args.device, cfg, rows, args.out, "tune_mlp_mm.json")

if __name__ == "__main__":
    main()
