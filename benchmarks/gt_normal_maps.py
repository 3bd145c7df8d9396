"""Ground-truth normal maps (pyrender, headless EGL): time per view for the thesis' rig of
128 Fibonacci cameras and accuracy against an analytic sphere.

    python benchmarks/gt_normal_maps.py                    # ~100k-triangle sphere, 128^2 and 256^2
    python benchmarks/gt_normal_maps.py --quick --out DIR  # small smoke run, JSON into DIR

Prints one line per resolution; with ``--out`` also writes the JSON (benchmarks/report.py
does not tabulate this benchmark yet, so keep its results out of benchmarks/results/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import device_name, git_commit  # noqa: E402


def uv_sphere(n_lat: int, n_lon: int, radius: float = 0.5):
    """A closed UV sphere (about 4 n_lat n_lon triangles, counter-clockwise outside)."""
    import trimesh

    return trimesh.creation.uv_sphere(radius=radius, count=[n_lat, n_lon])


def analytic_errors(maps, cameras, radius=0.5):
    from npht.render import generate_rays, ray_sphere_bounds

    o, d = generate_rays(cameras.to(torch.float64))
    near, _, hit = ray_sphere_bounds(o, d, radius)
    n = (o + near[..., None] * d) / radius
    both = hit & maps.mask
    cos = (maps.normals.double()[both] * n[both]).sum(-1).clamp(-1, 1)
    ang = torch.rad2deg(torch.acos(cos))
    return {"mask_mismatch_px": int((hit != maps.mask).sum()), "mask_px": int(hit.sum()),
            "mean_err_deg": float(ang.mean()), "p99_err_deg": float(torch.quantile(ang, 0.99)),
            "max_err_deg": float(ang.max())}  # max: grazing silhouette rays (polygon vs sphere)


def run(args) -> dict:
    from npht.data.normal_maps import NormalMapRenderer
    from npht.render import fibonacci_cameras

    mesh = uv_sphere(*((32, 32) if args.quick else (160, 160)))  # ~100k triangles
    rows = []
    with NormalMapRenderer() as renderer:
        for res in args.resolutions:
            cams = fibonacci_cameras(args.views, resolution=res)
            renderer.render(mesh, cams[:2])  # warm-up (context, shaders, framebuffer)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                maps = renderer.render(mesh, cams, "world")
                times.append(time.perf_counter() - t0)
            row = {"res": res, "views": args.views, "median_s": statistics.median(times),
                   "per_view_ms": statistics.median(times) / args.views * 1e3}
            row.update(analytic_errors(maps, cams))
            rows.append(row)
            print(f"{res}^2: {row['median_s']:.2f} s for {args.views} views ({row['per_view_ms']:.1f} ms/view), "
                  f"mean {row['mean_err_deg']:.4f} deg, p99 {row['p99_err_deg']:.3f} deg, "
                  f"max {row['max_err_deg']:.3f} deg, "
                  f"mask mismatch {row['mask_mismatch_px']} of {row['mask_px']} px")
    return {"benchmark": "gt_normal_maps", "device_type": "cpu", "device": device_name("cpu"),
            "renderer": "pyrender EGL " + os.environ.get("PYOPENGL_PLATFORM", ""), "torch": torch.__version__,
            "commit": git_commit(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
            "config": {"faces": int(len(mesh.faces)), "quick": args.quick, "reps": args.reps},
            "results": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--views", type=int, default=128)
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", help="folder for the JSON result")
    args = p.parse_args(argv)
    result = run(args)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"gt_normal_maps_{result['date'][:19].replace(':', '')}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2)
        os.replace(path + ".tmp", path)
        print(f"wrote {path}")
        return path
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
