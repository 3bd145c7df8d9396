"""Render the committed benchmark JSON (benchmarks/results/) as markdown tables and write
them into README.md between the `<!-- results:begin -->` / `<!-- results:end -->` markers.

    python benchmarks/report.py            # rewrite the README's results section
    python benchmarks/report.py --print    # print the tables only
"""

from __future__ import annotations

import argparse
import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def latest_results(results_dir: str) -> list:
    """The newest result per (benchmark, device, quick) found in results_dir."""
    latest = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            res = json.load(f)
        if res.get("partial"):  # rows of a run that was cut off (_common.PartialRows)
            continue
        key = (res.get("benchmark"), res.get("device"), res.get("config", {}).get("quick"), res.get("label"))
        if key not in latest or res["date"] > latest[key][1]["date"]:
            latest[key] = (os.path.basename(path), res)
    return sorted(latest.values(), key=lambda kv: (kv[1]["device_type"] != "cuda", kv[0]))


def _ms(x):
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _rate(per_s: float) -> str:
    """Points per second with three significant figures and a unit (k, M, G): the CPU
    eikonal rows run at tens of thousands, which a fixed "{:.1f} M" printed as 0.0 M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if per_s >= scale:
            return f"{per_s / scale:.3g} {unit}"
    return f"{per_s:.3g}"


def _x(ratio):
    return "—" if ratio is None else f"{ratio:.2f}x"


def render_table(name: str, res: dict) -> str:
    """The renderer benchmark: time / memory per resolution, accuracy against the full renderer."""
    cfg = res["config"]
    lines = [
        f"**{res['device']}** — torch {res['torch']}, commit `{res['commit']}`, {res['date'][:10]} "
        f"(`{name}`): renderer, B={cfg['B']}, tri-plane {cfg['plane_res']}² x {cfg['C']}, decoder width "
        f"{cfg['hidden']}, float32; accuracy = against the full renderer (every sample shaded) at the same resolution"
        + (f"; the reference samples the tri-plane with {res['reference_impl']}" if res.get("reference_impl") else "")
        + (f" — *{res['label']}*" if res.get("label") else ""),
        "",
        "| task | method | res | median ms | speed-up vs reference | peak memory MiB | normal err deg | mask IoU | grad cosine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        head = f"| {r['task']} | {r['method']} | {r['res']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | |")
            continue
        mem = r.get("peak_mem_bytes")
        acc = r.get("accuracy_vs_full") or {}

        def num(key, fmt):
            return "" if acc.get(key) is None else format(acc[key], fmt)

        lines.append(
            f"{head} {_ms(r['median_ms'])} | {_x(r.get('speedup_vs_reference'))} | "
            f"{'' if mem is None else f'{mem / 2**20:.1f}'} | {num('normal_err_deg', '.3f')} | "
            f"{num('mask_iou', '.4f')} | {num('grad_cosine', '.4f')} |"
        )
    for target, ok in (res.get("targets") or {}).items():
        lines.append(f"- target {target}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def mesh_table(name: str, res: dict) -> str:
    """The evaluation benchmark: seconds per mesh extraction / metrics run."""
    cfg = res["config"]
    lines = [f"**{res['device']}** — torch {res['torch']}, commit `{res['commit']}`, {res['date'][:10]} "
             f"(`{name}`): mesh extraction (marching cubes) and evaluate_meshes ({cfg['points']} points)", "",
             "| task | model / method | grid | seconds | grid points/s | SDF evaluations | faces | same mesh as dense |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in res["results"]:
        grid = f"{r['res']}³ {r.get('mode', 'dense')}" if r.get("res") else ""
        pps = _rate(r["points_per_s"]) if "points_per_s" in r else ""
        ev = f"{r['evaluated'] / r['res']**3:.1%}" if "evaluated" in r else ""
        same = {True: "yes", False: "NO"}.get(r.get("same_mesh_as_dense"), "")
        lines.append(f"| {r['task']} | {r['method']} | {grid} | {r['seconds']:.2f} | {pps} | {ev} | "
                     f"{r.get('faces', '')} | {same} |")
    return "\n".join(lines)


def train_step_table(name: str, res: dict) -> str:
    """The identity trainer's step per preset (benchmarks/train_step.py)."""
    cfg = res["config"]
    lines = [f"**{res['device']}** — torch {res['torch']}, commit `{res['commit']}`, {res['date'][:10]} "
             f"(`{name}`): `IdentityTrainer` stage 1 (all terms, renderer, D step), data `{cfg['data']}`, "
             f"median of {cfg['steps'] - cfg['warmup']} steps after {cfg['warmup']} warm-up", "",
             f"| preset | maps | median step ms | wall per step ms | peak memory GiB | time vs {cfg['baseline']} | "
             f"memory vs {cfg['baseline']} |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['method']} | | {r['error']} | | | | |")
            continue
        wall = "" if r.get("wall_median_ms") is None else f"{r['wall_median_ms']:.1f}"
        mem = r.get("memory_vs_baseline")
        lines.append(f"| {r['method']} | {r['maps_per_step']} x {r['render_resolution']}² | {r['median_ms']:.1f} | "
                     f"{wall} | {r['peak_mem_bytes'] / 2**30:.2f} | {_x(r.get('time_vs_baseline'))} | "
                     f"{'' if mem is None else f'{mem:.2f}'} |")
    return "\n".join(lines)


def _own_peak(row: dict) -> str:
    """evaluate_meshes' own peak: RSS increase in a fresh process (CPU), CUDA allocator peak
    above the loop's tensors (GPU); '—' where the run did not measure it."""
    own = row.get("evaluate_meshes_rss_increase_bytes")
    if own is None:
        own = row.get("cuda_peak_bytes")
    return "—" if own is None else f"{own / 2**20:.0f}"


def metrics_table(name: str, res: dict) -> str:
    """The metrics benchmark: nearest neighbours per query, evaluate_meshes end to end."""
    cfg = res["config"]
    lines = [f"**{res['device']}** — torch {res['torch']}, commit `{res['commit']}`, {res['date'][:10]} "
             f"(`{name}`): nearest neighbours of {cfg['points']} surface samples against {cfg['points']} "
             f"(us per query on a {cfg['subset']}-query subset; brute force on {cfg['brute_subset']}), "
             "and evaluate_meshes (head + face region)", "",
             "| pair | mean distance | npht build s | npht all queries s | npht us/query | cKDTree us/query | "
             "speed-up vs cKDTree | brute force us/query | evaluate_meshes s | evaluate_meshes peak MiB | "
             "process peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        lines.append(f"| {r['pair']} | {r['mean_distance']:.4f} | {r['npht_build_s']:.2f} | {r['npht_query_all_s']:.2f} | "
                     f"{r['npht_us_per_query']:.2f} | {r['scipy_us_per_query']:.1f} | {_x(r['speedup_vs_scipy'])} | "
                     f"{r['brute_us_per_query']:.0f} | {r['evaluate_meshes_s']:.1f} | {_own_peak(r)} | "
                     f"{r['process_peak_rss_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def sensitivity_table(name: str, res: dict) -> str:
    cfg, conv = res["config"], res["convergence"]
    lines = [f"**{res['device']}** — torch {res['torch']}, commit `{res['commit']}`, {res['date'][:10]} "
             f"(`{name}`): render sensitivity at {cfg['res']}², B={cfg['B']}, beta {cfg['beta']}, thesis "
             f"sampler; {conv['foreground_unconverged']} of {conv['foreground']} foreground rays unconverged after "
             f"its last round. Against the full renderer (float32):", "",
             "| variant | mean normal error deg | median | 90th percentile | mask IoU |",
             "|---|---:|---:|---:|---:|"]
    for variant, r in res["results"].items():
        lines.append(f"| {variant} | {r['normal_err_deg']:.3f} | {r['normal_err_q50']:.3f} | "
                     f"{r['normal_err_q90']:.3f} | {r['mask_iou']:.4f} |")
    return "\n".join(lines)


def table(name: str, res: dict) -> str:
    if res.get("benchmark") == "render_sensitivity":
        return sensitivity_table(name, res)
    if res.get("benchmark") == "metrics":
        return metrics_table(name, res)
    if res.get("benchmark") == "render":
        return render_table(name, res)
    if res.get("benchmark") == "mesh_extraction":
        return mesh_table(name, res)
    if res.get("benchmark") == "train_step":
        return train_step_table(name, res)
    cfg = res["config"]
    lines = [
        f"**{res['device']}** — torch {res['torch']}, commit `{res['commit']}`, {res['date'][:10]} "
        f"(`{name}`): B={cfg['B']}, N={cfg['N']}, C={cfg['C']}, planes {cfg['res']}², "
        f"eikonal N={cfg['eik_N']} (eikonal_op: N), float32"
        + (f"; fused decoder backward in chunks of {cfg['mlp_chunk']} rows" if cfg.get("mlp_chunk") else "")
        + (f" — *{res['label']}*" if res.get("label") else ""),
        "",
    ]
    if not res.get("reference_baseline"):  # runs before the literal baseline existed
        lines += [
            "Reference (this run) = npht's reference backend: 3 x F.grid_sample + sum plus NaN / range guards, "
            "slower than the three calls alone (2.8x in the forward at B=4, N=2^15, C=32, 128² on a 2-core AMD EPYC); the EG3D column is a plain "
            "batched grid_sample. Later runs time the literal three calls as the reference.",
            "",
        ]
    impl = res.get("reference_impl") or {}
    if any(v != "grid_sample" for v in impl.values()):
        lines += [
            "Reference = 3 x F.grid_sample + sum, except for "
            + ", ".join(t for t, v in impl.items() if v != "grid_sample")
            + ": this torch has no double backward of grid_sample, so there the reference is "
            "the same sampling written with gathers (3 x `npht.reference.gather_bilinear` + sum"
            + (", no guards)." if "no guards; where" in (res.get("reference_baseline") or "")
               else ", with npht.reference's NaN / range guards in this run)."),
            "",
        ]
    if res.get("device_type") == "cpu":
        lines += [f"Peak memory: {res.get('memory_measure') or 'resident set size, peak above the start (with the '}"
                  + ("" if res.get("memory_measure") else "allocator's slack: earlier runs' memory ratios lean towards npht)")
                  + ", one step in a fresh process.", ""]
    lines += [
        "| task | method | median ms | points/s | speed-up vs reference | vs EG3D path | peak memory MiB | memory vs reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['method']} | {r['error']} | | | | | |")
            continue
        mem = r.get("peak_mem_bytes")
        mem_s = "" if mem is None else f"{mem / 2**20:.1f}"
        ratio = r.get("memory_ratio_vs_reference")
        ratio_s = "" if ratio is None else f"{ratio:.2f}"
        lines.append(
            f"| {r['task']} | {r['method']} | {_ms(r['median_ms'])} | {_rate(r['points_per_s'])} | "
            f"{_x(r.get('speedup_vs_reference'))} | {_x(r.get('speedup_vs_eg3d'))} | "
            f"{mem_s} | {ratio_s} |"
        )
    return "\n".join(lines)


def render(results_dir: str) -> str:
    found = latest_results(results_dir)
    if not found:
        return "_No benchmark results committed yet._"
    return "\n\n".join(table(name, res) for name, res in found)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    p.add_argument("--print", action="store_true", help="print instead of editing the README")
    args = p.parse_args(argv)
    text = render(args.results)
    if args.print:
        print(text)
        return
    with open(args.readme) as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{args.readme} lacks the {BEGIN} ... {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(args.readme, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
