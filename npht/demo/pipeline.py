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

>>> summary = run_demo("outputs/demo")          # doctest: +SKIP  (about 3 min on 2 CPU cores)
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .._atomic import write_atomic, write_json_atomic, write_text_atomic
from ..eval.renders import image_grid, normals_to_rgb, trained_sampler, view_cameras

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
    normal_fit_yaws: tuple = (20.0, -35.0)   # views of the held-out identity's GT normal maps
    normal_fit_iterations: int = 40          # the 2D fit (view_resolution^2 maps)
    grid_resolution: int = 128       # mesh extraction
    metric_points: int = 2_500_000  # the thesis' samples per mesh and region
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
                       scan_points=500, fit_iterations=12, normal_fit_iterations=3, grid_resolution=32,
                       metric_points=4000,
                       latent_steps=3, samples=2, latent_resolution=16, timing_quick=True, timing_reps=1)
        if torch.device(device).type == "cuda":
            # the gpu-demo presets (larger models, 64^2 maps), more data and steps, the thesis'
            # 256^3 grid (the full presets train for days: `npht train identity --preset npht-256`)
            return cls(identities=16, expressions=4, mesh_resolution=128, cameras=64, preset="gpu-demo",
                       train_steps=3000, expression_steps=2000, grid_resolution=256, metric_points=2_500_000,
                       latent_resolution=256)
        return cls()


# the demo's NPM baseline next to a demo preset: (hidden, layers); the tri-plane run's code
# size, point counts, batch, learning rates and stages, so that the two compare like for like
_NPM_DEMO_SIZES = {"cpu-demo": (64, 6), "gpu-demo": (256, 8)}


def _npm_config(preset: str, base, **overrides):
    """The NPM baseline trained beside the tri-plane preset ``preset`` (config ``base``):
    the ``npm`` preset, shrunk to the demo's sizes for a demo preset."""
    from ..train.config import TrainConfig

    if preset in _NPM_DEMO_SIZES:
        hidden, layers = _NPM_DEMO_SIZES[preset]
        overrides.update(z_dim=base.z_dim, npm_hidden=hidden, npm_layers=layers, lr=base.lr, lr_codes=base.lr_codes,
                         stage_epochs=base.stage_epochs, decay_interval=base.decay_interval,
                         decay_interval_codes=base.decay_interval_codes)
    return TrainConfig.preset("npm", counts=base.counts, batch_size=base.batch_size, **overrides)


#: a demo training run stopped by Ctrl-C / SIGTERM continues when the demo runs again (it has
#: no --resume: re-running reuses the data and continues the runs from their checkpoints)
_RESUME_HINT = "continue: run the same `npht demo` command again"


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


def run_demo(out: str = "outputs/demo", *, device: Optional[str] = None, quick: bool = False,
             config: Optional[DemoConfig] = None, seed: int = 0, progress: bool = True) -> dict:
    """Run the whole demo into ``out``; returns (and writes) the summary."""
    from ..data.normal_maps import NormalMapRenderer
    from ..data.partial import partial_point_cloud
    from ..data.prepare import OtherSettingsError, PrepareConfig, prepare
    from ..eval import evaluate_meshes, extract_mesh, model_sdf_fn
    from ..eval.fitting_eval import _scaled_schedule, markdown_table
    from ..fit import fit_identity
    from ..train.config import TrainConfig
    from ..train.expression import EXPRESSION_PRESETS, ExpressionConfig, ExpressionTrainer
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
        try:
            prepare(prep, data, workers=min(2, os.cpu_count() or 1), progress=progress)
        except OtherSettingsError as e:  # prepare's advice (--overwrite) is no flag of the demo's
            raise ValueError(f"{out} holds a demo run with other settings (its data: {e.diff}, (old, new)): use "
                             f"another --out, or delete {out} to run the demo there again") from None

    # 2. training ---------------------------------------------------------------------
    base = TrainConfig.preset(cfg.preset, device=device, seed=seed, progress=progress, image_every=0,
                              ckpt_every=max(50, cfg.train_steps // 4))
    runs = {
        "TP": base,
        "TP_3D": base.replace(weights=dataclasses.replace(base.weights, nmr=0.0, g=0.0, d=0.0)),
        "NPM": _npm_config(cfg.preset, base, device=device, seed=seed, progress=progress, image_every=0,
                           ckpt_every=max(50, cfg.train_steps // 4)),
    }
    ckpts = {}
    for name, tcfg in runs.items():
        run_dir = os.path.join(out, "runs", name.lower())
        with _stage(f"train {name}", timings):
            tr = IdentityTrainer(tcfg, data, run_dir, resume=True)
            tr.resume_hint = _RESUME_HINT
            left = cfg.train_steps - tr.global_step
            if left > 0:
                tr.train(max_steps=left)
            ckpts[name] = tr.ckpt_path
            del tr
    with _stage("train expression", timings):
        ecfg = ExpressionConfig.preset(cfg.preset if cfg.preset in EXPRESSION_PRESETS else "thesis", device=device,
                                       seed=seed, progress=progress)
        etr = ExpressionTrainer(ecfg, data, ckpts["TP"], os.path.join(out, "runs", "expression"), resume=True)
        etr.resume_hint = _RESUME_HINT
        left = cfg.expression_steps - etr.global_step
        if left > 0:
            etr.train(max_steps=left)
        expr_ckpt = etr.ckpt_path
        del etr
    import trimesh

    models = {name: load_identity(path, device) for name, path in ckpts.items()}
    tp = models["TP"]

    # 3.-5. pictures, fitting, meshes, metrics -------------------------------------------
    from ..data.dataset import HeadDataset

    train_ds = HeadDataset(data, "train", views=0)
    test_ds = HeadDataset(data, "test", views=0)
    fit_dir = os.path.join(out, "fit")
    os.makedirs(fit_dir, exist_ok=True)
    images = {}
    shown = list(range(min(cfg.views, len(train_ds))))
    gt_renderer = NormalMapRenderer()
    try:
        with _stage(f"render {cfg.view_resolution}x{cfg.view_resolution} normal maps", timings):
            images["normal_maps"] = _normal_map_grid(tp, train_ds, shown, gt_renderer, cfg.view_resolution,
                                                     device, os.path.join(out, "normal_maps.png"))
        gt = test_ds.mesh(0)
        scan = partial_point_cloud(gt, cfg.scan_points, resolution=256, generator=seed)
        write_atomic(os.path.join(fit_dir, "partial_scan.ply"), trimesh.PointCloud(scan.points.numpy()).export)
        write_atomic(os.path.join(fit_dir, "ground_truth.ply"), gt.to_trimesh().export)
        cams = view_cameras([20.0], cfg.view_resolution)
        metrics, fit_row = {}, [normals_to_rgb(*_mesh_maps(gt_renderer, gt, cams))]
        for name, trained in models.items():
            with _stage(f"fit + mesh + metrics {name}", timings):
                res = fit_identity(trained.model, scan.points.to(device), schedule=_scaled_schedule(cfg.fit_iterations),
                                   seed=seed, progress=progress)
                mesh = extract_mesh(model_sdf_fn(trained.model, res.code), resolution=cfg.grid_resolution,
                                    device=device, progress=progress, clip_radius=1.0)
                write_atomic(os.path.join(fit_dir, f"{name}.ply"), mesh.export)
                metrics[name] = evaluate_meshes(mesh, gt, n_points=cfg.metric_points, seed=seed,
                                         device=device)
                metrics[name]["fit_seconds"] = res.seconds
                fit_row.append(normals_to_rgb(*_mesh_maps(gt_renderer, mesh, cams)))
        R = cfg.view_resolution
        with _stage(f"fit TP to {R}x{R} normal maps", timings):
            normal_fit, mesh = _normal_map_fit(tp, gt, gt_renderer, cfg, device, seed, progress)
            write_atomic(os.path.join(fit_dir, "TP_normal_maps.ply"), mesh.export)
            normal_fit.update(evaluate_meshes(mesh, gt, n_points=cfg.metric_points, seed=seed, device=device))
            fit_row.append(normals_to_rgb(*_mesh_maps(gt_renderer, mesh, cams)))
        images["fit"] = image_grid([fit_row], ["ground truth | fitted: " + " | ".join(models) + " | TP (2D)"],
                              os.path.join(out, "fit.png"))
        with _stage("latent interpolation / sampling / expression transfer", timings):
            images["latent"] = _latent_grid(tp, cfg, device, seed, os.path.join(out, "latent.png"))
            images["expression_transfer"] = _transfer_grid(tp, load_expression(expr_ckpt, device), train_ds, shown,
                                                           gt_renderer, cfg, device, fit_dir,
                                                           os.path.join(out, "expression_transfer.png"))
    finally:
        gt_renderer.close()
    table = {"methods": {k: {r: {m: v[r][m] for m in ("chamfer_l1", "normal_consistency", "f_score")}
                             for r in ("face", "head") if r in v} for k, v in metrics.items()}}
    write_json_atomic(os.path.join(out, "metrics.json"),
                      {"identity": test_ds.records[0]["identity"], "scan_points": cfg.scan_points,
                       "grid_resolution": cfg.grid_resolution, "metric_points": cfg.metric_points,
                       "fit_iterations": cfg.fit_iterations, "metrics": metrics, "normal_map_fit": normal_fit})
    write_text_atomic(os.path.join(out, "metrics.md"), markdown_table(table) + "\n")

    # 6. timings ---------------------------------------------------------------------
    with _stage("time npht vs reference ops", timings):
        rows = op_timings(device, quick=cfg.timing_quick, reps=cfg.timing_reps, seed=seed)
        write_text_atomic(os.path.join(out, "timing.md"), format_table(rows) + "\n")

    summary = {
        "device": _device_name(device), "torch": torch.__version__, "seconds": time.perf_counter() - t_all,
        "stage_seconds": timings, "config": dataclasses.asdict(cfg), "metrics": table["methods"],
        "normal_map_fit": {k: normal_fit[k] for k in _NORMAL_FIT_SUMMARY},
        "timing": rows, "images": images, "checkpoints": {**ckpts, "expression": expr_ckpt},
        "fit_dir": fit_dir,
    }
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    _print_summary(summary, out, markdown_table(table), format_table(rows))
    return summary


def _code_of(trained, dataset, i: int) -> int:
    """The trained code index of record ``i``'s identity (by name)."""
    name = dataset.records[i]["identity"]
    names = trained.identity_names or dataset.identity_index
    return names[name]


_NORMAL_FIT_SUMMARY = ("views", "resolution", "iterations", "seconds", "loss_first", "loss_last",
                       "angle_deg_before", "angle_deg_after")


def _normal_map_fit(tp, gt, gt_renderer, cfg, device, seed: int, progress: bool):
    """Fit TP's identity code to ``view_resolution``^2 ground-truth normal maps of the
    held-out head (``normal_fit_yaws``) through npht's renderer (L1 normal-map loss, from
    the mean training code), render-time settings of the model's training plus coarse
    culling. Returns (record, mesh): loss and mean angular error on the GT's foreground
    (where the model covers it too) before and after, timings."""
    from ..eval import extract_mesh, model_sdf_fn
    from ..fit import fit_normal_maps
    from ..eval.fitting_eval import _scaled_schedule

    R = cfg.view_resolution
    cams = view_cameras(list(cfg.normal_fit_yaws), R)
    g = gt_renderer.render(gt, cams, convention="opengl")
    target, mask = g.normals.to(device), g.mask.to(device)
    sampler = trained_sampler(tp)
    init = tp.codes.mean(0)

    def angle(code):
        n, m = _model_maps(tp, code[None], cams, device, group=len(cams))   # every view sees the code
        both = m & mask
        cos = (n * target).sum(-1).clamp(-1, 1)[both]
        return math.degrees(float(torch.acos(cos).mean())) if cos.numel() else float("nan")

    res = fit_normal_maps(tp.model, cams.to(device), target, mask, density=tp.density, init=init,
                          schedule=_scaled_schedule(cfg.normal_fit_iterations), seed=seed, progress=progress,
                          renderer_options=dict(sampler=sampler, coarse_factor=4))
    rec = dict(views=len(cfg.normal_fit_yaws), resolution=R, iterations=cfg.normal_fit_iterations,
               seconds=res.seconds, loss_first=res.history["data"][0], loss_last=res.history["data"][-1],
               angle_deg_before=angle(init.to(device)), angle_deg_after=angle(res.code[0].to(device)))
    mesh = extract_mesh(model_sdf_fn(tp.model, res.code), resolution=cfg.grid_resolution, device=device,
                        progress=progress, clip_radius=1.0)
    return rec, mesh


def _model_maps(trained, codes: torch.Tensor, cameras, device, group: int = 1):
    """npht renders (opengl normals, opacity mask) of ``codes [B, z]`` or indices ``[B]``,
    shape b seen by cameras b * group .. (b + 1) * group - 1, with the error-bound sampler
    the model was trained with, npht's sample-efficient shading and converged-ray skipping."""
    from ..render import render

    sampler = trained_sampler(trained)
    with torch.no_grad():
        sdf_fn = trained.model.sdf_fn(codes.to(device), group=group)
    out = render(sdf_fn, cameras.to(device), density=trained.density, convention="opengl", sampler=sampler,
                 weight_threshold=1e-6)
    return out.normals.detach(), out.opacity.detach() > 0.5


def _mesh_maps(renderer, mesh, cameras):
    g = renderer.render(mesh, cameras, convention="opengl")
    return g.normals[0], g.mask[0]


def _normal_map_grid(tp, dataset, shown, gt_renderer, res, device, path):
    cams = view_cameras([20.0], res)
    row_gt, row_pred = [], []
    for i in shown:
        n, m = _model_maps(tp, torch.tensor([_code_of(tp, dataset, i)]), cams, device)
        row_pred.append(normals_to_rgb(n[0], m[0]))
        row_gt.append(normals_to_rgb(*_mesh_maps(gt_renderer, dataset.mesh(i), cams)))
    return image_grid([row_gt, row_pred], ["ground truth", "TP, npht render"], path)


def _latent_grid(tp, cfg, device, seed, path):
    """Interpolation between the first two training codes; samples of a Gaussian fitted to
    the training codes."""
    from ..fit import fit_gaussian, interpolate_codes, sample_codes

    cams = view_cameras([20.0], cfg.latent_resolution)
    codes = tp.codes
    rows = [interpolate_codes(codes[0], codes[min(1, len(codes) - 1)], cfg.latent_steps)]
    mean, cov = fit_gaussian(codes)
    rows.append(sample_codes(mean, cov, cfg.samples, generator=torch.Generator().manual_seed(seed)))
    pictures = []
    for zs in rows:
        pictures.append([normals_to_rgb(*(t[0] for t in _model_maps(tp, z[None], cams, device))) for z in zs])
    return image_grid(pictures, ["interpolation", "samples"], path)


def _transfer_grid(tp, expr, dataset, shown, gt_renderer, cfg, device, fit_dir, path):
    """The first posed training scan's expression code applied to each shown identity:
    its neutral mesh (marching cubes of F_id) and that mesh deformed forward by F_ex."""
    import trimesh

    from ..eval import extract_mesh, model_sdf_fn
    from ..fit import transfer_expression

    cams = view_cameras([20.0], cfg.latent_resolution)
    src_identity, src_expression = expr.expression_keys[0]
    row = []
    for i in shown:
        name = dataset.records[i]["identity"]
        z_id = expr.z_id[expr.identity_names[name]]
        neutral = extract_mesh(model_sdf_fn(tp.model, z_id), resolution=min(cfg.grid_resolution, 128), device=device,
                               clip_radius=1.0)
        verts = transfer_expression(expr.model, expr.codes[0], z_id).vertices(
            torch.as_tensor(neutral.vertices, dtype=torch.float32, device=device))
        posed = trimesh.Trimesh(verts.detach().cpu().numpy().reshape(-1, 3), neutral.faces, process=False)
        write_atomic(os.path.join(fit_dir, f"transfer_{src_identity}-{src_expression}_to_{name}.ply"), posed.export)
        row += [normals_to_rgb(*_mesh_maps(gt_renderer, neutral, cams)), normals_to_rgb(*_mesh_maps(gt_renderer, posed, cams))]
    label = f"{src_expression} of {src_identity} -> neutral | posed"
    return image_grid([row], [label], path)


def _device_name(device: str) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def _print_summary(summary: dict, out: str, metrics_md: str, timing_md: str) -> None:
    print()
    print(f"npht demo finished in {summary['seconds'] / 60:.1f} min on {summary['device']} (torch {summary['torch']})")
    print("\nHeld-out identity, fitted from a single-view partial scan (lower Chamfer is better):")
    print(metrics_md)
    nf = summary["normal_map_fit"]
    print(f"\nTP fitted to {nf['views']} GT normal maps of {nf['resolution']}x{nf['resolution']} through npht's renderer "
          f"({nf['iterations']} iterations, {nf['seconds']:.1f} s): L1 {nf['loss_first']:.3f} -> {nf['loss_last']:.3f}, "
          f"mean angle {nf['angle_deg_before']:.1f} -> {nf['angle_deg_after']:.1f} deg (metrics.json: its mesh's scores)")
    print("\nnpht ops vs the PyTorch reference (same run):")
    print(timing_md)
    print(f"\nOutputs in {out}:")
    for k, v in summary["images"].items():
        print(f"  {os.path.relpath(v, out):28s} {k.replace('_', ' ')}")
    print(f"  {'fit/*.ply':28s} partial scan, ground truth, fitted meshes, expression transfer")
    print(f"  {'metrics.json, metrics.md':28s} Chamfer-L1 / N.C. / F-score (face, head)")
    print(f"  {'timing.md, summary.json':28s} timings and everything above")


def _demo_main(args) -> int:
    from ..cli import check_device, check_out_folder

    check_out_folder(args.out)
    check_device(args.device)
    run_demo(args.out, device=args.device, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


def add_demo_parser(subparsers):
    from ..cli import HelpFormatter

    p = subparsers.add_parser("demo", help="the end-to-end demo: data, training, rendering, fitting, meshes, "
                                           "metrics, timings (about 3 min on 2 CPU cores)",
                              formatter_class=HelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo; a re-run there "
                                                         "reuses its data and finished training runs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: every stage in about a minute")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the training runs and the fits")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo_main)
    return p
