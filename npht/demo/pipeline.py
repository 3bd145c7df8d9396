"""``npht demo``: the end-to-end main job on the embedded procedural heads, no download.

1. prepare a small dataset (``npht data prepare --source synthetic``);
2. train the identity model three ways, the thesis' Table 6.1 methods: ``TP`` (tri-planes,
   all losses incl. the 2D adversarial ones), ``TP_3D`` (tri-planes, 3D losses only) and
   ``NPM`` (the DeepSDF baseline) -- the ``cpu-demo`` sizes on a CPU, a GPU preset on CUDA;
   and the expression model on the posed scans;
3. render 256x256 normal maps of training identities with npht's renderer next to the
   ground truth;
4. fit a held-out identity from a single-view partial scan with each model, extract meshes
   (marching cubes) and score them (Chamfer-L1, N.C., F-score; face and head): the
   evaluation table;
5. latent interpolation, samples from a Gaussian fitted to the training codes and an
   expression transfer, as pictures;
6. time npht's ops against the PyTorch reference.

Everything lands in ``out`` (PNG grids, PLY meshes, JSON/markdown metrics and timings,
``summary.json``); re-running reuses the prepared data and finished training runs.

>>> summary = run_demo("outputs/demo")          # doctest: +SKIP  (~10 min on 2 CPU cores)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ["DemoConfig", "run_demo", "add_demo_parser"]


@dataclass
class DemoConfig:
    """Sizes of the demo. ``DemoConfig.for_device(device, quick)`` picks them."""

    identities: int = 8              # procedural identities (the last `test_identities` held out)
    test_identities: int = 2
    expressions: int = 3             # neutral + 2 posed per identity
    mesh_resolution: int = 96        # procedural GT meshes (marching-cubes grid)
    cameras: int = 32                # GT normal-map rig
    gt_resolution: int = 64          # stored GT maps (resampled to the training resolution)
    preset: str = "cpu-demo"
    train_steps: int = 450           # per identity model (TP, TP_3D, NPM)
    expression_steps: int = 300
    view_resolution: int = 256       # the rendered normal maps
    views: int = 3                   # training identities shown
    scan_points: int = 5000
    fit_iterations: int = 700
    grid_resolution: int = 128       # mesh extraction
    metric_points: int = 500_000
    latent_steps: int = 5
    samples: int = 4
    latent_resolution: int = 128
    timing_quick: bool = False
    timing_reps: int = 3

    @classmethod
    def for_device(cls, device: str, quick: bool = False) -> "DemoConfig":
        if quick:   # CI: every stage, tiny sizes
            return cls(identities=3, test_identities=1, expressions=2, mesh_resolution=40, cameras=4,
                       gt_resolution=16, train_steps=6, expression_steps=6, view_resolution=24, views=2,
                       scan_points=500, fit_iterations=12, grid_resolution=32, metric_points=4000,
                       latent_steps=3, samples=2, latent_resolution=16, timing_quick=True, timing_reps=1)
        if torch.device(device).type == "cuda":
            return cls(identities=16, expressions=4, mesh_resolution=160, cameras=64, gt_resolution=256,
                       preset="npht-256", train_steps=3000, expression_steps=2000, grid_resolution=256,
                       metric_points=2_500_000, latent_resolution=256)
        return cls()


def _stage(name: str, timings: Dict[str, float]):
    """Context manager printing and timing one stage."""
    class _S:
        def __enter__(self):
            print(f"[npht demo] {name} ...", flush=True)
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = time.perf_counter() - self.t0
            if exc[0] is None:
                print(f"[npht demo] {name}: {timings[name]:.1f} s", flush=True)
    return _S()


def _view_cameras(yaws: List[float], size: int, distance: float = 2.6, fov: float = 30.0, pitch: float = 5.0):
    from ..render import Cameras, intrinsics_from_fov, look_at

    eyes = torch.tensor([[math.sin(math.radians(y)) * math.cos(math.radians(pitch)), math.sin(math.radians(pitch)),
                          math.cos(math.radians(y)) * math.cos(math.radians(pitch))] for y in yaws]) * distance
    n = len(yaws)
    return Cameras(intrinsics_from_fov(fov, size).expand(n, 3, 3).clone(), look_at(eyes), size, size)


def _to_rgb(normals: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Normal maps ``[..., H, W, 3]`` -> uint8 RGB ``(n + 1) / 2`` on white."""
    rgb = ((normals.float().clamp(-1, 1) + 1) * 0.5).cpu().numpy()
    rgb[~mask.cpu().numpy().astype(bool)] = 1.0
    return (rgb * 255).round().astype(np.uint8)


def _grid(rows: List[List[np.ndarray]], labels: Optional[List[str]] = None, path: str = "") -> str:
    """Tile images (rows of equal-size HxWx3 uint8 arrays) into one PNG with row labels."""
    from PIL import Image, ImageDraw

    h, w = rows[0][0].shape[:2]
    pad, label_w = 4, (110 if labels else 0)
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (label_w + cols * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        y = pad + i * (h + pad)
        if labels:
            draw.text((4, y + h // 2 - 6), labels[i], fill="black")
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (label_w + pad + j * (w + pad), y))
    canvas.save(path)
    return path


def _render_sdf(sdf_fn, cameras, density, chunk_views: int = 1):
    """npht renderer, opengl normals; one camera batch entry per shape of ``sdf_fn``."""
    from ..render import render

    out = render(sdf_fn, cameras, density=density, convention="opengl")
    return out.normals.detach(), (out.opacity.detach() > 0.5)


def run_demo(out: str = "outputs/demo", *, device: Optional[str] = None, quick: bool = False,
             config: Optional[DemoConfig] = None, seed: int = 0, progress: bool = True) -> dict:
    """Run the whole demo into ``out``; returns (and writes) the summary."""
    from ..data.normal_maps import NormalMapRenderer
    from ..data.partial import partial_point_cloud
    from ..data.prepare import PrepareConfig, prepare
    from ..eval import evaluate_meshes, extract_mesh, model_sdf_fn
    from ..eval.fitting_eval import _scaled_schedule, markdown_table
    from ..fit import ExpressionTransfer, fit_gaussian, fit_identity, interpolate_codes, sample_codes
    from ..train.config import TrainConfig
    from ..train.expression import ExpressionConfig, ExpressionTrainer
    from ..train.identity import IdentityTrainer
    from ..train.loading import load_expression, load_identity
    from .timing import format_table, op_timings

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config or DemoConfig.for_device(device, quick)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    timings: Dict[str, float] = {}
    torch.manual_seed(seed)

    # 1. data -------------------------------------------------------------------------
    data = os.path.join(out, "data")
    with _stage("prepare data", timings):
        prep = PrepareConfig(identities=cfg.identities, test_identities=cfg.test_identities,
                             expressions=cfg.expressions, mesh_resolution=cfg.mesh_resolution, cameras=cfg.cameras,
                             resolution=cfg.gt_resolution, seed=seed,
                             **({} if not quick else dict(surface_face=600, surface_nonface=200, ball=300,
                                                          correspondences=500)))
        prepare(prep, data, workers=min(2, os.cpu_count() or 1), progress=progress)

    # 2. training ---------------------------------------------------------------------
    base = TrainConfig.preset(cfg.preset, device=device, seed=seed, progress=progress, image_every=0,
                              ckpt_every=max(50, cfg.train_steps // 4))
    runs = {
        "TP": base,
        "TP_3D": base.replace(weights=dataclasses.replace(base.weights, nmr=0.0, g=0.0, d=0.0)),
        "NPM": TrainConfig.preset("npm", device=device, seed=seed, progress=progress, image_every=0,
                                  ckpt_every=max(50, cfg.train_steps // 4), counts=base.counts,
                                  batch_size=base.batch_size,
                                  **(dict(z_dim=base.z_dim, npm_hidden=64, npm_layers=6, lr=base.lr,
                                          lr_codes=base.lr_codes, stage_epochs=base.stage_epochs,
                                          decay_interval=base.decay_interval,
                                          decay_interval_codes=base.decay_interval_codes)
                                     if cfg.preset == "cpu-demo" else {})),
    }
    ckpts = {}
    for name, tcfg in runs.items():
        run_dir = os.path.join(out, "runs", name.lower())
        with _stage(f"train {name}", timings):
            tr = IdentityTrainer(tcfg, data, run_dir, resume=True)
            left = cfg.train_steps - tr.global_step
            if left > 0:
                tr.train(max_steps=left)
            ckpts[name] = tr.ckpt_path
            del tr
    with _stage("train expression", timings):
        ecfg = ExpressionConfig.preset("cpu-demo" if cfg.preset == "cpu-demo" else "thesis", device=device,
                                       seed=seed, progress=progress)
        etr = ExpressionTrainer(ecfg, data, ckpts["TP"], os.path.join(out, "runs", "expression"), resume=True)
        left = cfg.expression_steps - etr.global_step
        if left > 0:
            etr.train(max_steps=left)
        expr_ckpt = etr.ckpt_path
        del etr
    models = {name: load_identity(path, device) for name, path in ckpts.items()}
    tp = models["TP"]

    # 3. normal maps at 256^2 -----------------------------------------------------------
    from ..data.dataset import HeadDataset

    train_ds = HeadDataset(data, "train", views=0)
    test_ds = HeadDataset(data, "test", views=0)
    cams1 = _view_cameras([20.0], cfg.view_resolution)
    images = {}
    with _stage(f"render {cfg.view_resolution}x{cfg.view_resolution} normal maps", timings), \
            NormalMapRenderer() as gt_renderer:
        rows_pred, rows_gt = [], []
        shown = list(range(min(cfg.views, len(train_ds))))
        for i in shown:
            code = tp.identity_names[train_ds.records[i]["identity"]] if tp.identity_names else \
                train_ds.identity_index[train_ds.records[i]["identity"]]
            with torch.no_grad():
                sdf_fn = tp.model.sdf_fn(torch.tensor([code], device=device))
            n, m = _render_sdf(sdf_fn, cams1.to(device), tp.density)
            rows_pred.append(_to_rgb(n[0], m[0]))
            g = gt_renderer.render(train_ds.mesh(i), cams1, convention="opengl")
            rows_gt.append(_to_rgb(g.normals[0], g.mask[0]))
        images["normal_maps"] = _grid([rows_gt, rows_pred], ["ground truth", "TP (npht render)"],
                                      os.path.join(out, "normal_maps.png"))

        # 4. fit a held-out identity, extract meshes, metrics ---------------------------
        schedule = _scaled_schedule(cfg.fit_iterations)
        gt = test_ds.mesh(0)
        scan = partial_point_cloud(gt, cfg.scan_points, resolution=min(256, 4 * cfg.view_resolution),
                                   generator=seed)
        fit_dir = os.path.join(out, "fit")
        os.makedirs(fit_dir, exist_ok=True)
        import trimesh

        trimesh.PointCloud(scan.points.numpy()).export(os.path.join(fit_dir, "partial_scan.ply"))
        gt.to_trimesh().export(os.path.join(fit_dir, "ground_truth.ply"))
        fits, metrics, fit_row = {}, {}, [_to_rgb(*_gt_maps(gt_renderer, gt, cams1))]
        for name, trained in models.items():
            with _stage(f"fit + mesh + metrics {name}", timings):
                res = fit_identity(trained.model, scan.points.to(device), schedule=schedule, seed=seed,
                                   progress=progress)
                mesh = extract_mesh(model_sdf_fn(trained.model, res.code), resolution=cfg.grid_resolution,
                                    device=device, progress=progress)
                mesh.export(os.path.join(fit_dir, f"{name}.ply"))
                metrics[name] = evaluate_meshes(mesh, gt, n_points=cfg.metric_points, seed=seed, device=device)
                metrics[name]["fit_seconds"] = res.seconds
                fits[name] = res.code
                fit_row.append(_to_rgb(*_gt_maps(gt_renderer, mesh, cams1)))
        images["fit"] = _grid([fit_row], None, os.path.join(out, "fit.png"))
        table = {"methods": {k: {r: {m: v[r][m] for m in ("chamfer_l1", "normal_consistency", "f_score")}
                                 for r in ("face", "head") if r in v} for k, v in metrics.items()}}
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({"identity": test_ds.records[0]["identity"], "scan_points": cfg.scan_points,
                       "grid_resolution": cfg.grid_resolution, "metric_points": cfg.metric_points,
                       "fit_iterations": cfg.fit_iterations, "metrics": metrics}, f, indent=1)
        with open(os.path.join(out, "metrics.md"), "w") as f:
            f.write(markdown_table(table) + "\n")

        # 5. latent space: interpolation, sampling, expression transfer ------------------
        with _stage("latent interpolation / sampling / expression transfer", timings):
            lat_cam = _view_cameras([20.0], cfg.latent_resolution)
            codes = tp.codes
            z = interpolate_codes(codes[0], codes[min(1, len(codes) - 1)], cfg.latent_steps)
            mean, cov = fit_gaussian(codes)
            zs = sample_codes(mean, cov, cfg.samples, generator=torch.Generator().manual_seed(seed))
            rows = []
            for batch in (z, zs):
                row = []
                for zi in batch:
                    with torch.no_grad():
                        fn = tp.model.sdf_fn(zi[None].to(device))
                    n, m = _render_sdf(fn, lat_cam.to(device), tp.density)
                    row.append(_to_rgb(n[0], m[0]))
                rows.append(row)
            images["latent"] = _grid(rows, ["interpolation", "samples"], os.path.join(out, "latent.png"))
            expr = load_expression(expr_ckpt, device)
            # expression of the first posed scan, transferred to every shown training identity:
            # the identity's mesh (marching cubes of F_id) deformed forward by F_ex
            k = 0
            src_id, src_expr = expr.expression_keys[k]
            row = []
            for i in shown:
                name_i = train_ds.records[i]["identity"]
                zi = expr.z_id[expr.identity_names[name_i]]
                neutral = extract_mesh(model_sdf_fn(tp.model, zi), resolution=min(cfg.grid_resolution, 128),
                                       device=device)
                tr = ExpressionTransfer(expr.model, expr.codes[k], zi)
                verts = tr.vertices(torch.as_tensor(neutral.vertices, dtype=torch.float32, device=device))
                posed = trimesh.Trimesh(verts.detach().cpu().numpy(), neutral.faces, process=False)
                row += [_to_rgb(*_gt_maps(gt_renderer, neutral, lat_cam)), _to_rgb(*_gt_maps(gt_renderer, posed, lat_cam))]
                if i == shown[0]:
                    posed.export(os.path.join(fit_dir, f"transfer_{name_i}_{src_expr}.ply"))
            images["expression_transfer"] = _grid([row], None, os.path.join(out, "expression_transfer.png"))

    # 6. timings ---------------------------------------------------------------------
    with _stage("time npht vs reference ops", timings):
        rows = op_timings(device, quick=cfg.timing_quick, reps=cfg.timing_reps, seed=seed)
        with open(os.path.join(out, "timing.md"), "w") as f:
            f.write(format_table(rows) + "\n")

    summary = {
        "device": _device_name(device), "torch": torch.__version__, "seconds": time.perf_counter() - t_all,
        "stage_seconds": timings, "config": dataclasses.asdict(cfg), "metrics": table["methods"],
        "timing": rows, "images": images, "checkpoints": {**ckpts, "expression": expr_ckpt},
        "fit_dir": fit_dir,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    _print_summary(summary, out, markdown_table(table), format_table(rows))
    return summary


def _gt_maps(renderer, mesh, cameras):
    g = renderer.render(mesh, cameras, convention="opengl")
    return g.normals[0], g.mask[0]


def _device_name(device: str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _print_summary(summary: dict, out: str, metrics_md: str, timing_md: str) -> None:
    print()
    print(f"npht demo finished in {summary['seconds'] / 60:.1f} min on {summary['device']} (torch {summary['torch']})")
    print("\nHeld-out identity, fitted from a single-view partial scan (lower Chamfer is better):")
    print(metrics_md)
    print("\nnpht ops vs the PyTorch reference (same run):")
    print(timing_md)
    print(f"\nOutputs in {out}:")
    for k, v in summary["images"].items():
        print(f"  {os.path.relpath(v, out):28s} {k.replace('_', ' ')}")
    print(f"  {'fit/*.ply':28s} partial scan, ground truth, fitted meshes, expression transfer")
    print(f"  {'metrics.json, metrics.md':28s} Chamfer-L1 / N.C. / F-score (face, head)")
    print(f"  {'timing.md, summary.json':28s} timings and everything above")


def add_demo_parser(subparsers):
    p = subparsers.add_parser("demo", help="the end-to-end demo: data, training, rendering, fitting, meshes, "
                                           "metrics, timings (about 10 min on 2 CPU cores)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every stage in about a minute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=lambda a: (run_demo(a.out, device=a.device, quick=a.quick, seed=a.seed,
                                            progress=not a.no_progress), 0)[1])
    return p
