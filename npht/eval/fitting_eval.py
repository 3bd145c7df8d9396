"""``npht eval``: the thesis' Table 6.1 protocol on a prepared dataset.

For every held-out identity (the ``test`` split's neutral records) a single-view partial
point cloud is taken from its ground-truth mesh (:func:`npht.data.partial_point_cloud`, a
near-frontal camera drawn from the seed), each trained model's identity code is fitted to it
(eq. 4.23, :func:`npht.fit.fit_identity`, NPHM C.5 schedule), the fitted SDF is meshed
(marching cubes on a grid in (-1, 1)^3, Sec. 5.2.2) and compared with the ground truth
(Chamfer-L1, normal consistency, F-score, face region and whole head; Sec. 5.3). The table
(mean over identities) is written as JSON and markdown in Table 6.1's layout.

With an expression model for a method (``expressions=`` / ``--expression NAME=CKPT``),
that method is also scored on the posed scans of the same identities (row ``"NAME
posed"``): identity and expression codes fitted jointly through the root-found inverse of
the forward deformation (eq. 4.22), the neutral mesh deformed forward to the fit.

What the rows are: the neutral rows fit ``z_id`` alone with ``x_c = x_p`` (no expression
model: the scans are neutral), as in the thesis' identity ablations (Sec. 6.3); the posed
rows follow the thesis' expression fitting: ``z_id`` and ``z_ex`` fitted jointly on the
single posed scan (4.4.1, NPHM C.4), then ``z_ex`` alone with that ``z_id`` (4.4.2;
``refine_expression=False``: the joint fit only). Units: Chamfer in model units
(FLAME metres x 4: 1 mm = 0.004), F-score at ``threshold`` (default 1 mm).

>>> table = evaluate_models({"TP": "runs/tp/checkpoint.pt", "NPM": "runs/npm/checkpoint.pt"},
...                         "data/synthetic", out_dir="runs/eval")          # doctest: +SKIP
>>> print(markdown_table(table))                                             # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch

from .._atomic import write_atomic, write_json_atomic, write_text_atomic

__all__ = ["evaluate_models", "markdown_table", "METRIC_KEYS", "add_eval_parser"]

#: (metric key, column title, higher is better)
METRIC_KEYS = (("chamfer_l1", "L1-Chamfer", False), ("normal_consistency", "N.C.", True),
               ("f_score", "F-Score", True))


def _load(model, device):
    from ..train.loading import TrainedIdentity, load_identity

    if isinstance(model, TrainedIdentity):
        return model
    return load_identity(model, device)


def _load_expression(expression, device):
    from ..train.loading import TrainedExpression, load_expression

    if isinstance(expression, TrainedExpression):
        return expression
    return load_expression(expression, device)


def evaluate_models(models: Mapping[str, Union[str, object]], data_root: str, *, split: str = "test",
                    scan_points: int = 5000, scan_resolution: int = 256, noise_std: float = 0.0,
                    mesh_resolution: int = 256, clip_radius: Optional[float] = 1.0,
                    metric_points: int = 2_500_000, sparse_mesh: bool = False,
                    threshold: Optional[float] = None, schedule=None, identities: Optional[int] = None,
                    seed: int = 0, device="cpu", out_dir: Optional[str] = None,
                    progress: bool = True, expressions: Optional[Mapping[str, Union[str, object]]] = None,
                    refine_expression: bool = True, resume: bool = True) -> dict:
    """Fit, mesh and score each model on each held-out identity.

    Args:
        models: method name -> identity checkpoint path (or a loaded
            :class:`~npht.train.loading.TrainedIdentity`).
        expressions: method name (of ``models``) -> the expression checkpoint trained on
            that identity model (or a loaded :class:`~npht.train.loading.TrainedExpression`).
            Each such method is also scored on the posed scans of the same identities, as
            method ``"<name> posed"``: ``z_id`` and ``z_ex`` fitted jointly with root finding
            (eq. 4.22, thesis 4.4.1), then, with ``refine_expression`` (default), ``z_ex``
            alone with ``z_id`` fixed from there (thesis 4.4.2, :func:`npht.fit.fit_expression`);
            the fitted neutral mesh moved to the expression by the forward deformation,
            scored against the posed ground truth.
        data_root: a prepared folder (``npht data prepare``); its ``split`` neutral records
            are the identities to fit.
        scan_points / scan_resolution / noise_std: the partial scan (NPHM: 5000 points).
        mesh_resolution: marching-cubes grid (thesis 256); clip_radius: the meshes are
            cut to the unit ball the models are trained in (``None``: the raw level set,
            :func:`npht.eval.extract_mesh`). sparse_mesh: evaluate the SDF only near the
            surface (``extract_mesh(sparse=True)``; the dense grid is the thesis'
            protocol). metric_points: samples per mesh
            and region (thesis 2.5M). threshold: F-score threshold (default 1 mm).
        schedule: a :class:`npht.fit.FitSchedule` (default NPHM C.5).
        identities: at most this many identities (the first ones; >= 1, ``None``: all).
        out_dir: if given, fitted meshes (PLY), ``eval.json`` and ``eval.md`` go there, and
            ``eval_partial.json`` after every scan (removed at the end): with ``resume``
            (default) a run with the same settings and checkpoints (path, size and
            modification time) takes the (scan, method) results it holds and fits only the
            rest, so an interrupted evaluation continues where it stopped (the fits are
            seeded per scan: the same table as an uninterrupted run). Other settings start
            again (with a warning).

    Returns ``{"methods": {name: {"face": {metric: mean}, "head": {...}}}, "per_identity":
    [...], "settings": {...}, "seconds": ...}``.
    """
    from ..data.dataset import HeadDataset
    from ..data.partial import partial_point_cloud
    import trimesh

    from ..fit import FitSchedule, fit_expression, fit_identity, posed_vertices
    from ..train.loading import check_expression_pair
    from .mesh import extract_mesh, model_sdf_fn
    from .metrics import DEFAULT_THRESHOLD, evaluate_meshes

    if not models:
        raise ValueError("models is empty: give at least one name -> checkpoint")
    if identities is not None and (not isinstance(identities, int) or isinstance(identities, bool) or identities < 1):
        raise ValueError(f"identities must be >= 1 (None: all), got {identities!r}")
    t0 = time.perf_counter()
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    schedule = schedule or FitSchedule()
    ds = HeadDataset(data_root, split, views=0)
    if len(ds) == 0:
        raise ValueError(f"{data_root!r} has no neutral records in split {split!r} to evaluate on")
    loaded = {name: _load(m, device) for name, m in models.items()}
    expressions = dict(expressions or {})
    unknown = sorted(set(expressions) - set(loaded))
    if unknown:
        raise ValueError(f"expressions names methods that are not among the models: {unknown}")
    posers = {name: _load_expression(e, device) for name, e in expressions.items()}
    for name, expr in posers.items():
        if expr.model.z_id_dim != loaded[name].model.z_dim:
            raise ValueError(f"the expression model given for {name!r} takes z_id of {expr.model.z_id_dim} dims, "
                             f"the identity model's codes have {loaded[name].model.z_dim}")
        check_expression_pair(loaded[name], expr)
    records = list(range(len(ds)))[:identities]
    posed_records = []
    if posers:
        pds = HeadDataset(data_root, split, expressions="posed", views=0)
        chosen = {ds.records[i]["identity"] for i in records}
        posed_records = [j for j in range(len(pds)) if pds.records[j]["identity"] in chosen]
    settings = dict(data_root=os.fspath(data_root), split=split, identities=len(records),
                    scan_points=scan_points, scan_resolution=scan_resolution, noise_std=noise_std,
                    mesh_resolution=mesh_resolution, clip_radius=clip_radius, sparse_mesh=sparse_mesh,
                    metric_points=metric_points, threshold=threshold, seed=seed, device=str(device),
                    schedule=dataclasses.asdict(schedule),
                    checkpoints={k: v.path for k, v in loaded.items()},
                    expression_checkpoints={k: v.path for k, v in posers.items()},
                    posed_scans=len(posed_records), refine_expression=refine_expression)
    partial_path = os.path.join(out_dir, "eval_partial.json") if out_dir else None
    done = _resumable_rows(partial_path, settings, [*loaded.values(), *posers.values()]) if resume else {}
    if out_dir and not done:  # starting again: no mesh or table of an earlier run may pass for this one's
        removed = _remove_outputs(out_dir)
        if removed:
            print(f"npht eval: starting again in {out_dir}: removed {len(removed)} files of the previous evaluation "
                  f"({', '.join(_summarise(removed))})", file=sys.stderr, flush=True)
    per_identity = []
    meshes_dir = os.path.join(out_dir, "meshes") if out_dir else None
    if meshes_dir:
        os.makedirs(meshes_dir, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(records) * len(loaded) + len(posed_records) * len(posers), desc="eval",
                   dynamic_ncols=True)

    def score(dataset, i, runs):
        """One scan of record i, fitted and scored by each (method, trained, expression or None)."""
        gt = dataset.mesh(i)
        rec = dataset.records[i]
        name = rec["identity"] if rec["expression"] == "neutral" else f"{rec['identity']}_{rec['expression']}"
        scan = partial_point_cloud(gt, scan_points, resolution=scan_resolution, noise_std=noise_std,
                                   generator=seed * 1000003 + i)
        row = done.get((rec["identity"], rec["expression"])) or {
            "identity": rec["identity"], "expression": rec["expression"], "methods": {}}
        for method, trained, expr in runs:
            if method in row["methods"]:  # from an interrupted run with the same settings
                if bar is not None:
                    bar.update(1)
                continue
            fit = fit_identity(trained.model, scan.points.to(device), schedule=schedule, seed=seed, progress=False,
                               expression_model=None if expr is None else expr.model)
            fit_seconds, losses, z_ex = fit.seconds, fit.losses, fit.z_ex
            if expr is not None and refine_expression:   # thesis 4.4.2: z_ex alone, z_id fixed
                ref = fit_expression(trained.model, expr.model, scan.points.to(device), fit.code[0],
                                     schedule=schedule, init=fit.z_ex[0], seed=seed, progress=False)
                fit_seconds, losses, z_ex = fit_seconds + ref.seconds, ref.losses, ref.z_ex
            mesh = extract_mesh(model_sdf_fn(trained.model, fit.code), resolution=mesh_resolution,
                                device=device, clip_radius=clip_radius, sparse=sparse_mesh)
            if expr is not None:  # the neutral mesh, forward-deformed to the fitted expression
                with torch.no_grad():
                    v = posed_vertices(expr.model, torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device),
                                       fit.code[0], z_ex[0])
                mesh = trimesh.Trimesh(v.cpu().double().numpy(), mesh.faces, process=False)
            scores = evaluate_meshes(mesh, gt, n_points=metric_points, threshold=threshold, seed=seed,
                                     device=device)
            scores["fit_seconds"] = fit_seconds
            scores["final_fit_loss"] = losses[-1] if losses else float("nan")
            row["methods"][method] = scores
            if meshes_dir:
                write_atomic(os.path.join(meshes_dir, f"{name}_{method.replace(' ', '_')}.ply"), mesh.export)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(scan=name, method=method, chamfer=f"{scores['head']['chamfer_l1']:.4f}")
        if meshes_dir:
            write_atomic(os.path.join(meshes_dir, f"{name}_gt.ply"), gt.to_trimesh().export)
        per_identity.append(row)
        if partial_path:
            write_json_atomic(partial_path, {"settings": _plain(settings),
                                              "files": _checkpoint_files([*loaded.values(), *posers.values()]),
                                              "per_identity": per_identity})

    try:
        for i in records:
            score(ds, i, [(method, trained, None) for method, trained in loaded.items()])
        for j in posed_records:
            score(pds, j, [(f"{method} posed", loaded[method], expr) for method, expr in posers.items()])
    finally:
        if bar is not None:
            bar.close()
    methods = {}
    for method in list(loaded) + [f"{m} posed" for m in posers]:
        methods[method] = {}
        for region in ("face", "head"):
            vals = [r["methods"][method][region] for r in per_identity
                    if method in r["methods"] and region in r["methods"][method]]
            if vals:
                methods[method][region] = {k: float(np.mean([v[k] for v in vals])) for k, _, _ in METRIC_KEYS}
    result = {"methods": methods, "per_identity": per_identity, "settings": settings,
              "seconds": time.perf_counter() - t0,
              "resumed_results": sum(len(r["methods"]) for r in done.values())}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(os.path.join(out_dir, "eval.json"), result)
        write_text_atomic(os.path.join(out_dir, "eval.md"), markdown_table(result) + "\n")
        if os.path.exists(partial_path):
            os.remove(partial_path)
    return result


#: the files an evaluation writes in its out_dir (besides meshes/*.ply)
_OUTPUTS = ("eval.json", "eval.md", "eval_partial.json", "eval_partial.json.tmp")


def _remove_outputs(out_dir: str) -> list:
    """Removes what an evaluation wrote in ``out_dir`` (:data:`_OUTPUTS`, and in ``meshes/`` the
    scans' meshes: ``<scan>_gt.ply`` and the ``<scan>_<method>.ply`` beside it; only when an
    earlier evaluation's table or partial results are there, so that no one else's .ply is
    taken for one); returns their paths relative to it."""
    removed = [name for name in _OUTPUTS if os.path.isfile(os.path.join(out_dir, name))]
    meshes = os.path.join(out_dir, "meshes")
    if removed and os.path.isdir(meshes):
        names = sorted(n for n in os.listdir(meshes) if n.endswith(".ply") and os.path.isfile(os.path.join(meshes, n)))
        scans = {n[:-len("_gt.ply")] for n in names if n.endswith("_gt.ply")}
        removed += [os.path.join("meshes", n) for n in names
                    if any(n.startswith(scan + "_") for scan in scans)]
    for rel in removed:
        os.remove(os.path.join(out_dir, rel))
    return removed


def _summarise(paths: list) -> list:
    """``paths`` with the meshes counted as one entry (``meshes/*.ply``)."""
    out = [p for p in paths if not p.startswith("meshes" + os.sep)]
    n = len(paths) - len(out)
    return out + ([f"{n} meshes/*.ply"] if n else [])


def _plain(obj):
    """``obj`` as JSON gives it back (tuples as lists), for comparing settings."""
    return json.loads(json.dumps(obj))


def _checkpoint_files(trained) -> list:
    """(path, size, modification time) of each loaded model's checkpoint (a retrained
    checkpoint at the same path is another model)."""
    out = []
    for t in trained:
        try:
            st = os.stat(t.path)
            out.append([t.path, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([t.path, None, None])
    return out


def _resumable_rows(path: Optional[str], settings: dict, trained) -> Dict[tuple, dict]:
    """(identity, expression) -> the per-scan row of an interrupted run's ``eval_partial.json``
    at ``path`` if it ran with these settings and checkpoints; ``{}`` otherwise."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            saved = json.load(f)
        same = saved["settings"] == _plain(settings) and saved["files"] == _checkpoint_files(trained)
        rows = saved["per_identity"] if same else []
    except (OSError, ValueError, KeyError, TypeError):
        same, rows = False, []
    if not same:
        warnings.warn(f"{path} was written by an evaluation with other settings or checkpoints: starting again",
                      RuntimeWarning, stacklevel=3)
        return {}
    return {(r["identity"], r["expression"]): r for r in rows}


def markdown_table(result: dict) -> str:
    """Table 6.1's layout: per metric a face and a head column, best value in bold."""
    methods = result["methods"]
    head = "| Method | " + " | ".join(f"{t} face {'↑' if up else '↓'} | {t} head {'↑' if up else '↓'}"
                                      for _, t, up in METRIC_KEYS) + " |"
    lines = [head, "|---" + "|---:" * (2 * len(METRIC_KEYS)) + "|"]
    best = {}
    for key, _, up in METRIC_KEYS:
        for region in ("face", "head"):
            vals = [m[region][key] for m in methods.values() if region in m]
            if vals:
                best[key, region] = max(vals) if up else min(vals)
    for name, m in methods.items():
        cells = []
        for key, _, _ in METRIC_KEYS:
            for region in ("face", "head"):
                if region not in m:
                    cells.append("–")
                    continue
                v = m[region][key]
                s = f"{v:.3e}" if key == "chamfer_l1" else f"{v:.3f}"
                cells.append(f"**{s}**" if best.get((key, region)) == v and len(methods) > 1 else s)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_eval_parser(subparsers):
    """``npht eval --data DIR --model NAME=CKPT ... --out DIR``."""
    from ..cli import HelpFormatter

    p = subparsers.add_parser("eval", help="fit held-out identities from partial scans and score the models "
                                           "(thesis Table 6.1)", formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="prepared dataset folder (its test split is evaluated)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=CKPT",
                   help="a method name and its identity checkpoint; repeat for each model")
    p.add_argument("--expression", action="append", default=[], metavar="NAME=CKPT",
                   help="an expression checkpoint trained on model NAME: NAME is also scored on the posed scans "
                        "(joint identity + expression fit), as row 'NAME posed'; repeatable")
    p.add_argument("--out", required=True, help="output folder (eval.json, eval.md, meshes/)")
    p.add_argument("--split", default="test", choices=("test", "train", "all"),
                   help="the records whose identities are fitted")
    p.add_argument("--identities", type=int, default=None, help="at most this many identities (default: all)")
    p.add_argument("--scan-points", type=int, default=5000, help="points of each partial scan (NPHM's 5000)")
    p.add_argument("--noise", type=float, default=0.0, help="scan noise std (model units)")
    p.add_argument("--mesh-resolution", type=int, default=256, help="marching-cubes grid of the fitted meshes")
    p.add_argument("--sparse-mesh", action="store_true",
                   help="evaluate the SDF only near the surface for marching cubes (~10x fewer evaluations at "
                        "256^3; the same mesh for SDFs with |grad| <= 2); default: the dense grid")
    p.add_argument("--metric-points", type=int, default=2_500_000,
                   help="points sampled per mesh and region for the metrics (the thesis' 2.5M)")
    p.add_argument("--iterations", type=int, default=None, help="fitting iterations (default 700)")
    p.add_argument("--relative-reg", choices=("auto", "true", "false"), default="auto",
                   help="the latent regulariser's unit (npht.fit.FitSchedule.relative_reg): 'auto' (default) NPHM's "
                        "literal lambda unless the training codes' mean ||z||^2 exceeds 1, 'true' always relative to "
                        "it, 'false' always literal")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the partial scans, the fits and the metric samples")
    p.add_argument("--no-expression-refine", action="store_true",
                   help="posed rows: the joint z_id/z_ex fit only (default: then z_ex alone, thesis 4.4.2)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore the eval_partial.json of an interrupted run in --out (default: continue it when its "
                        "settings and checkpoints are these)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_main)
    return p


def _eval_main(args) -> int:
    from ..cli import check_device, check_out_folder
    from ..fit import FitSchedule

    check_out_folder(args.out)
    check_device(args.device)

    def pairs(specs, flag):
        out = {}
        for spec in specs:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"{flag} must be NAME=CHECKPOINT, got {spec!r}")
            if name in out:
                raise ValueError(f"{flag} {name} is given twice ({out[name]!r} and {path!r}): give each name once")
            out[name] = path
        return out

    for flag, value, least in (("--scan-points", args.scan_points, 1), ("--metric-points", args.metric_points, 1),
                               ("--mesh-resolution", args.mesh_resolution, 2), ("--iterations", args.iterations, 1)):
        if value is not None and value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if not args.noise >= 0 or args.noise == float("inf"):
        raise ValueError(f"--noise must be a finite number >= 0, got {args.noise}")
    models, expressions = pairs(args.model, "--model"), pairs(args.expression, "--expression")
    if args.no_expression_refine and not expressions:
        raise ValueError("--no-expression-refine applies to the posed rows, which need --expression NAME=CKPT")
    schedule = FitSchedule() if args.iterations is None else _scaled_schedule(args.iterations)
    schedule = schedule.replace(relative_reg={"auto": "auto", "true": True, "false": False}[args.relative_reg])
    result = evaluate_models(models, args.data, split=args.split, scan_points=args.scan_points,
                             noise_std=args.noise, mesh_resolution=args.mesh_resolution,
                             sparse_mesh=args.sparse_mesh,
                             metric_points=args.metric_points, schedule=schedule, identities=args.identities,
                             seed=args.seed, device=args.device, out_dir=args.out, progress=not args.no_progress,
                             expressions=expressions, refine_expression=not args.no_expression_refine,
                             resume=not args.fresh)
    print(markdown_table(result))
    if result["resumed_results"]:
        print(f"({result['resumed_results']} (scan, method) results taken from the interrupted run's "
              f"eval_partial.json)")
    print(f"-> {os.path.join(args.out, 'eval.json')} ({result['seconds']:.0f} s)")
    return 0


def _scaled_schedule(iterations: int):
    """NPHM's schedule with its milestones scaled to ``iterations`` (700 -> itself)."""
    from ..fit import FitSchedule

    base = FitSchedule()
    f = iterations / base.iterations
    return base.replace(iterations=iterations, milestones=tuple(int(round(m * f)) for m in base.milestones),
                        reg_milestones=tuple(int(round(m * f)) for m in base.reg_milestones))
