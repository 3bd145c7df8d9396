"""The ``npht`` command line (``npht ...`` or ``python -m npht ...``).

    npht data prepare --source synthetic --out data/synthetic
    npht data prepare --source /path/to/NPHM --out data/nphm --resolution 256
    npht train identity --preset cpu-demo --data data/synthetic --out runs/demo
    npht train expression --preset cpu-demo --data data/synthetic --identity runs/demo/checkpoint.pt --out runs/expr
    npht eval --data data/synthetic --model TP=runs/demo/checkpoint.pt --out runs/eval
    npht render --model runs/demo/checkpoint.pt --out runs/renders --resolution 512
    npht fit scan --model runs/demo/checkpoint.pt --scan head.ply --out runs/fit
    npht fit normals --model runs/demo/checkpoint.pt --normals runs/renders/normals.npz --out runs/fit-maps
    npht demo --out outputs/demo
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import fields
from typing import List, Optional

__all__ = ["main", "build_parser", "check_out_folder", "check_device", "HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default appended, unless it has none worth showing (None,
    a switch's off, an empty list) or its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "default" in text or d is None or d is False or d == [] or d == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def check_out_folder(path: str, flag: str = "--out") -> None:
    """ValueError when the output folder ``path`` cannot be one: an existing file, or a path
    under a file. The commands check it before any work (training, rendering), not when they
    first write."""
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{flag} {path!r} is a file, not a folder")
    parent = os.path.dirname(p)
    while parent and not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r}: {parent!r} is a file, not a folder")


def check_device(device: Optional[str], flag: str = "--device") -> None:
    """ValueError for a ``--device`` this process cannot use: not a device string torch
    knows, cuda without a CUDA GPU (or an index past the last one), another type torch cannot
    allocate on. ``None`` (the command's default) passes. Checked before any work: torch
    would fail only at the first tensor moved there, after data loading or training set-up."""
    if device is None:
        return
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{flag} {device!r} is not a device (cpu, cuda, cuda:N, ...)") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {device}: this torch has no CUDA GPU (torch.cuda.is_available() is False)")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"{flag} {device}: this machine has {n} CUDA GPU{'s' if n != 1 else ''} (cuda:0 .. "
                             f"cuda:{n - 1})")
    elif d.type == "meta":  # tensors without data: nothing can be trained or rendered there
        raise ValueError(f"{flag} {device}: the meta device holds no data (cpu, cuda, cuda:N, ...)")
    elif d.type != "cpu":
        try:
            torch.empty(0, device=d)
        except Exception as e:
            raise ValueError(f"{flag} {device}: torch cannot use it here ({type(e).__name__}: {e})") from None


#: ``npht data prepare``'s help of each PrepareConfig field (its flag: the name with dashes)
_PREPARE_HELP = {
    "layout": "a folder source's layout: nphm (<subject>/<expression>/scan.ply), folder "
              "(<identity>/<expression>.ply|.obj) or auto (nphm if the folder looks like it, else folder)",
    "identities": "procedural heads: how many identities",
    "expressions": "procedural heads: expressions per identity (neutral first)",
    "seed": "seed of the procedural heads and of every record's point samples",
    "mesh_resolution": "procedural heads: marching-cubes grid of their meshes",
    "surface_face": "surface points on the face per record",
    "surface_nonface": "surface points off the face per record",
    "ball": "uniform points in the unit ball per record",
    "correspondences": "neutral<->posed point pairs per posed record",
    "cameras": "ground-truth normal maps: cameras per record (0: no normal maps)",
    "camera_radius": "normal-map cameras' distance to the origin",
    "fov_degrees": "normal-map cameras' vertical field of view, degrees",
    "resolution": "normal maps' size in pixels (square)",
    "test_identities": "the last identities (sorted) held out as the test split",
}


class _StoreGiven(argparse.Action):
    """Stores the value like ``store`` and records the flag's ``dest`` in ``namespace.given``:
    which settings the command line set (a default may mean "not asked for")."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = frozenset(getattr(namespace, "given", ())) | {self.dest}


#: PrepareConfig fields of the procedural heads only: a folder source refuses them
_SYNTHETIC_ONLY = ("identities", "expressions", "mesh_resolution")


def _add_prepare(sub) -> None:
    from .data.prepare import PrepareConfig

    p = sub.add_parser("prepare", help="prepare a dataset folder (meshes, samples, correspondences, normal maps)",
                       description="Prepare heads for training: procedural heads ('synthetic', no download), "
                                   "a folder of meshes or the NPHM layout. Re-running resumes; finished files "
                                   "are skipped.", formatter_class=HelpFormatter)
    p.add_argument("--source", required=True, help="'synthetic' or a folder (mesh folder or NPHM layout)")
    p.add_argument("--out", required=True, help="output folder")
    workers = max(1, min(8, os.cpu_count() or 1))
    p.add_argument("--workers", type=int, default=workers,
                   help=f"processes, one identity each at a time (default: the cores, at most 8: {workers})")
    p.add_argument("--overwrite", action="store_true", help="discard what the folder holds and start again")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bar (--no-progress, as the other commands)")
    defaults = PrepareConfig()
    for f in fields(PrepareConfig):
        if f.name == "source":
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=_PREPARE_HELP[f.name], action=_StoreGiven,
                       **({"choices": ("auto", "folder", "nphm")} if f.name == "layout" else {}))
    p.set_defaults(given=frozenset())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npht", description="npht: tri-plane neural SDF head models")
    top = parser.add_subparsers(dest="command", required=True)
    data = top.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    _add_prepare(data)
    from .train.expression import add_expression_parser
    from .train.identity import add_train_parser

    train = top.add_parser("train", help="training").add_subparsers(dest="train_command", required=True)
    add_train_parser(train)
    add_expression_parser(train)
    from .demo.pipeline import add_demo_parser
    from .eval.fit_command import add_fit_parser
    from .eval.fitting_eval import add_eval_parser
    from .eval.renders import add_render_parser

    add_eval_parser(top)
    add_fit_parser(top)
    add_render_parser(top)
    add_demo_parser(top)
    return parser


def _run_prepare(args) -> int:
    from .data.prepare import PrepareConfig, prepare

    check_out_folder(args.out)
    if args.source != "synthetic":
        flags = ", ".join("--" + k.replace("_", "-") for k in _SYNTHETIC_ONLY if k in args.given)
        if flags:
            raise ValueError(f"{flags}: procedural heads only (--source synthetic); a folder source prepares all "
                             f"its identities and expressions (prepare a folder holding those you want)")
    config = PrepareConfig(**{f.name: getattr(args, f.name) for f in fields(PrepareConfig)})
    manifest = prepare(config, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet,
                       clamp_test_identities="test_identities" not in args.given)
    n_id = len(manifest["identities"])
    n_test = manifest["config"]["test_identities"]
    print(f"prepared {len(manifest['records'])} records of {n_id} identities ({n_test} held out as the test split) "
          f"in {manifest['seconds']:.1f} s -> {args.out}")
    return 0


def _cli_message(message: str) -> str:
    """An error's message as the command line says it: the Python API's ``overwrite=True
    (--overwrite)`` / ``--resume (resume=True)`` name the flag alone."""
    message = re.sub(r"\b\w+=True \((--[\w-]+)\)", r"\1", message)
    return re.sub(r"(--[\w-]+) \(\w+=True\)", r"\1", message)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data" and args.data_command == "prepare":
            return _run_prepare(args)
        if args.command in ("train", "eval", "fit", "render", "demo"):
            return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"npht: error: {_cli_message(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the trainers save a checkpoint first (npht.train.runlog.train_loop)
        print(f"npht: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))  # 130 Ctrl-C, 143 SIGTERM
    raise AssertionError("unreachable")  # argparse requires a known subcommand


if __name__ == "__main__":
    sys.exit(main())
