"""Block sizes of kernels/mlp_mm.py on a GPU: the eikonal step of benchmarks/triplane.py with
the decoder's products as Triton kernels (``npht-<backend>-fused-tmm-tf32``), timed for each
``NPHT_MLP_MM_BLOCKS`` (products) and ``NPHT_MLP_WGRAD_BLOCKS`` (weight-gradient reductions)
candidate, beside the same step with torch's products
(``-fused-tf32``), with the gradient pass kept (``-tmm-keep``), with float16 pre-activations
(``-tmm-h16``) and the float32 reference, in one process. Prints one line per
candidate and writes ``tune_mlp_mm.json`` to ``--out``; the best candidates are the ones to
make the defaults in ``kernels/mlp_mm.py`` (``_blocks``, ``_wgrad_blocks``).

    python tools/tune_mlp_mm.py --out gpu_out                 # the benchmark's GPU sizes
    TRITON_INTERPRET=1 python tools/tune_mlp_mm.py --device cpu --quick --configs 64,128,32,4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# candidates that compile without spilled registers and within an A100's and an H100's
# shared memory for all four product kernels (tools/triton_check.py prints registers,
# spills and shared memory; 64,128,32,4, 128,128,32,8, 64,256,32,8 and 32,256,32,4 spilled
# 0.2-2 KiB per thread in the adjoint/down epilogues on sm_90)
CONFIGS = ["64,128,32,8", "64,64,32,4", "128,64,32,8", "64,128,64,8"]
# weight_grad's BM,BN,BK,WARPS,SPLITS (NPHT_MLP_WGRAD_BLOCKS), spill-free likewise
WGRAD_CONFIGS = ["64,64,64,8,64", "64,64,64,8,128", "64,64,64,8,32", "64,64,128,8,64", "32,128,128,8,64"]


VARS = ("NPHT_MLP_MM_BLOCKS", "NPHT_MLP_WGRAD_BLOCKS")


def _bench():
    spec = importlib.util.spec_from_file_location("triplane_bench", os.path.join(ROOT, "benchmarks", "triplane.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="BM,BN,BK,WARPS candidates (products)")
    p.add_argument("--wgrad-configs", nargs="*", default=WGRAD_CONFIGS,
                   help="BM,BN,BK,WARPS,SPLITS candidates (weight-gradient reductions)")
    p.add_argument("--out", default=None)
    p.add_argument("--B", type=int, default=None, help="batch (default: the benchmark's)")
    p.add_argument("--eik-N", type=int, default=None, help="points per batch (default: the benchmark's)")
    args = p.parse_args(argv)
    bench = _bench()
    cfg = bench.default_config(args.device, args.quick)
    for key in ("B", "eik_N"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    backend = "cuda" if args.device == "cuda" and bench.npht.build_info()["cuda"] else (
        "triton" if args.device == "cuda" else "cpu")
    rows = []

    def timed(method, blocks=None, var="NPHT_MLP_MM_BLOCKS"):
        for v in VARS:
            os.environ.pop(v, None)
        if blocks is not None:
            os.environ[var] = blocks
        row = {"method": method, "blocks": blocks, "variable": var if blocks is not None else None}
        try:
            step, _ = bench.make_step(method, "eikonal", cfg, args.device)
            row.update(bench.time_step(step, args.device, args.reps))
        except Exception as exc:  # a config that does not compile or run: recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        finally:
            for v in VARS:
                os.environ.pop(v, None)
        print(f"{method:32s} {blocks or '-':18s} {row.get('median_ms', float('nan')):9.3f} ms "
              f"{row.get('error', '')}", flush=True)
        rows.append(row)

    timed("reference")
    timed(f"npht-{backend}-fused" + ("-tf32" if args.device == "cuda" else ""))
    tmm = f"npht-{backend}-fused-tmm" + ("-tf32" if args.device == "cuda" else "")
    timed(tmm)  # the default blocks
    timed(tmm.replace("-tmm", "-tmm-keep"))  # keeping the gradient pass (no recompute)
    timed(tmm.replace("-tmm", "-tmm-h16"))  # float16 pre-activations
    for blocks in args.configs:
        timed(tmm, blocks)
    for blocks in args.wgrad_configs:
        timed(tmm, blocks, "NPHT_MLP_WGRAD_BLOCKS")
    result = {"config": cfg, "device": bench.device_name(args.device), "torch": bench.torch.__version__,
              "commit": bench.git_commit(), "rows": rows}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "tune_mlp_mm.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
