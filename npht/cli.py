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
import sys
from dataclasses import fields
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _add_prepare(sub) -> None:
    from .data.prepare import PrepareConfig

    p = sub.add_parser("prepare", help="prepare a dataset folder (meshes, samples, correspondences, normal maps)",
                       description="Prepare heads for training: procedural heads ('synthetic', no download), "
                                   "a folder of meshes or the NPHM layout. Re-running resumes; finished files "
                                   "are skipped.")
    p.add_argument("--source", required=True, help="'synthetic' or a folder (mesh folder or NPHM layout)")
    p.add_argument("--out", required=True, help="output folder")
    workers = max(1, min(8, os.cpu_count() or 1))
    p.add_argument("--workers", type=int, default=workers,
                   help=f"processes, one identity each at a time (default: the cores, at most 8: {workers})")
    p.add_argument("--overwrite", action="store_true", help="discard what the folder holds and start again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    defaults = PrepareConfig()
    for f in fields(PrepareConfig):
        if f.name == "source":
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=f"(default: {getattr(defaults, f.name)})")


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

    config = PrepareConfig(**{f.name: getattr(args, f.name) for f in fields(PrepareConfig)})
    manifest = prepare(config, args.out, workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
    n_id = len(manifest["identities"])
    print(f"prepared {len(manifest['records'])} records of {n_id} identities in {manifest['seconds']:.1f} s "
          f"-> {args.out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "data" and args.data_command == "prepare":
            return _run_prepare(args)
        if args.command in ("train", "eval", "fit", "render", "demo"):
            return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"npht: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the trainers save a checkpoint first (npht.train.runlog.train_loop)
        print(f"npht: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 128 + int(getattr(e, "signum", 2))  # 130 Ctrl-C, 143 SIGTERM
    raise AssertionError("unreachable")  # argparse requires a known subcommand


if __name__ == "__main__":
    sys.exit(main())
