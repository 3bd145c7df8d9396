"""Metrics cost (thesis Sec. 5.3: 2.5M points per mesh): exact nearest neighbours with npht's
kd-tree (npht.ops.knn) against scipy's cKDTree and the exhaustive search, and
``evaluate_meshes`` (head + face region) end to end.

Two surface pairs of procedural heads (npht.data.synthetic, meshes at 128^3): ``far``, the
ground truth (identity 0) against another identity (mean distance ~0.023, like a poor fit),
and ``near``, the ground truth against itself scaled by 1.01 (~0.005 apart, a good fit).
cKDTree's cost grows with the distance between the clouds, so it is timed on a random subset
of the queries (``--subset``) and npht's tree on the same subset and on all of them; the
ratio is per query, on the same subset, in the same run. The exhaustive search is timed on a
smaller subset (``--brute-subset``) on the benchmark's device. Memory: the process's peak RSS
(a lifetime high-water mark, so it includes the benchmark's own arrays) and evaluate_meshes'
own peak: on CPU the RSS increase of one call in a fresh process (``--no-memory`` skips it),
on GPU the allocator peak above what the loop holds.

    python benchmarks/metrics.py                 # 2.5M points; --device cuda for the GPU query
    python benchmarks/metrics.py --quick --out DIR

Writes ``metrics_<device>_<date>.json`` into ``--out`` (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import HERE, device_name, git_commit, rss_peak_during, sync, write_result  # noqa: E402


def timed(fn, dev):
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return out, time.perf_counter() - t0


def pairs(resolution: int):
    from npht.data.synthetic import synthetic_head

    gt = synthetic_head(0).mesh(None, resolution)
    other = synthetic_head(1).mesh(None, resolution)
    return gt, {"far": (other.vertices, other.faces), "near": (gt.vertices * 1.01, gt.faces)}


def run(args) -> dict:
    from scipy.spatial import cKDTree

    from npht.eval import evaluate_meshes, sample_points
    from npht.ops.knn import PointTree
    from npht.reference.knn import nearest_neighbors_bruteforce

    dev = args.device
    gt, preds = pairs(args.mesh_resolution)
    rng = np.random.default_rng(0)
    g, _ = sample_points(gt, args.points, rng)
    rows = []
    if dev == "cuda":  # CUDA context and kernel loading stay out of the timed runs
        w = torch.from_numpy(g[:4096])
        PointTree(w, device=dev).query(w.to(dev))
        nearest_neighbors_bruteforce(w[:256].to(dev), w.to(dev))
        evaluate_meshes(preds["near"], gt, n_points=10_000, device=dev)
        sync(dev)
    for name, pred in preds.items():
        p, _ = sample_points(pred, args.points, rng)
        sub = np.sort(rng.choice(len(p), min(args.subset, len(p)), replace=False))
        # npht: tree on the CPU, queries on the device
        tree, t_build = timed(lambda: PointTree(torch.from_numpy(g), device=dev), dev)
        (d_all, _), t_all = timed(lambda: tree.query(torch.from_numpy(p).to(dev)), dev)
        (d_sub, i_sub), t_sub = timed(lambda: tree.query(torch.from_numpy(p[sub]).to(dev)), dev)
        # scipy
        kd, t_kd_build = timed(lambda: cKDTree(g), "cpu")
        (d_kd, i_kd), t_kd = timed(lambda: kd.query(p[sub], k=1, workers=-1), "cpu")
        assert np.allclose(d_sub.cpu().numpy(), d_kd, rtol=0, atol=1e-12), "npht and scipy disagree"
        # exhaustive search on the device (a small subset: it is quadratic)
        bsub = sub[:args.brute_subset]
        gt_dev = torch.from_numpy(g).to(dev)
        (d_bf, _), t_bf = timed(lambda: nearest_neighbors_bruteforce(torch.from_numpy(p[bsub]).to(dev), gt_dev), dev)
        assert torch.allclose(d_bf.cpu(), d_sub.cpu()[:len(bsub)], rtol=0, atol=1e-12)
        us = lambda sec, n: 1e6 * sec / n  # noqa: E731
        row = {"pair": name, "points": args.points, "mean_distance": float(d_all.mean()),
               "npht_build_s": t_build, "npht_query_all_s": t_all, "npht_us_per_query": us(t_sub, len(sub)),
               "scipy_build_s": t_kd_build, "scipy_us_per_query": us(t_kd, len(sub)),
               "brute_us_per_query": us(t_bf, len(bsub)), "subset": len(sub), "brute_subset": len(bsub)}
        row["speedup_vs_scipy"] = row["scipy_us_per_query"] / row["npht_us_per_query"]
        row["speedup_vs_brute"] = row["brute_us_per_query"] / row["npht_us_per_query"]
        base = 0
        if dev == "cuda":  # the peak above what this loop already holds (tree, gt_dev)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        scores, t_eval = timed(lambda: evaluate_meshes(pred, gt, n_points=args.points, device=dev), dev)
        # the process's high-water mark (no sampling thread: it would steal the GIL from the timing)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if dev == "cpu" and not args.no_memory:  # evaluate_meshes' own peak, in a fresh process
            row["evaluate_meshes_rss_increase_bytes"] = child_peak(name, args)
        row.update(evaluate_meshes_s=t_eval, process_peak_rss_bytes=peak,
                   cuda_peak_bytes=torch.cuda.max_memory_allocated() - base if dev == "cuda" else None,
                   chamfer_l1_head=scores["head"]["chamfer_l1"],
                   chamfer_l1_face=scores["face"]["chamfer_l1"])
        rows.append(row)
        print(f"{name}: mean d {row['mean_distance']:.4f} | npht build {t_build:.2f} s, {args.points} queries "
              f"{t_all:.2f} s ({row['npht_us_per_query']:.2f} us/q) | scipy {row['scipy_us_per_query']:.1f} us/q "
              f"(x{row['speedup_vs_scipy']:.1f}) | brute {row['brute_us_per_query']:.0f} us/q | "
              f"evaluate_meshes (head + face) {t_eval:.1f} s, process peak RSS {peak / 2**20:.0f} MiB"
              + (f", its own peak RSS increase {row['evaluate_meshes_rss_increase_bytes'] / 2**20:.0f} MiB"
                 if "evaluate_meshes_rss_increase_bytes" in row else ""))
    return {
        "benchmark": "metrics", "device": device_name(dev), "device_type": dev, "torch": torch.__version__,
        "npht": __import__("npht").__version__, "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": {"points": args.points, "subset": args.subset, "brute_subset": args.brute_subset,
                   "mesh_resolution": args.mesh_resolution, "threads": torch.get_num_threads(),
                   "warm_up": dev == "cuda",
                   "pairs": {"far": "procedural identity 1 vs identity 0", "near": "identity 0 x 1.01 vs identity 0"}},
        "results": rows,
    }


def child_peak(pair: str, args) -> int:
    """Peak RSS increase of one ``evaluate_meshes`` call on ``pair``, measured in a fresh
    process (the meshes are built before the measurement starts)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child-memory", pair, "--points", str(args.points),
           "--mesh-resolution", str(args.mesh_resolution), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return int(out.stdout.strip().splitlines()[-1])


def child_memory(args) -> None:
    from npht.eval import evaluate_meshes

    gt, preds = pairs(args.mesh_resolution)
    pred = preds[args.child_memory]
    print(rss_peak_during(lambda: evaluate_meshes(pred, gt, n_points=args.points, device="cpu")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--points", type=int, default=2_500_000)
    p.add_argument("--subset", type=int, default=100_000, help="queries timed with scipy's cKDTree")
    p.add_argument("--brute-subset", type=int, default=2_000, help="queries timed with the exhaustive search")
    p.add_argument("--mesh-resolution", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="20k points, 64^3 meshes")
    p.add_argument("--no-memory", action="store_true", help="skip the child processes measuring "
                   "evaluate_meshes' own peak RSS (CPU)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--child-memory", choices=["far", "near"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        return child_memory(args)
    if args.quick:
        args.points, args.subset, args.brute_subset, args.mesh_resolution = 20_000, 2_000, 200, 64
    return write_result(run(args), args.out)


if __name__ == "__main__":
    main()
