"""Trained models back from their checkpoints (``npht train identity|expression``), ready
for fitting, rendering, mesh extraction and evaluation.

>>> ident = load_identity("runs/tp/checkpoint.pt")              # doctest: +SKIP
>>> sdf = ident.model(points, torch.tensor([0]))                 # doctest: +SKIP
>>> expr = load_expression("runs/expr/checkpoint.pt")           # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from .config import TrainConfig

__all__ = ["TrainedIdentity", "TrainedExpression", "load_identity", "load_expression", "read_identity_checkpoint",
           "checkpoint_kind", "check_kind", "checkpoint_file",
           "check_expression_pair"]


@dataclass
class TrainedIdentity:
    """``model`` (:class:`~npht.models.IdentityModel` or :class:`~npht.models.NPMBaseline`,
    eval mode, no grad), ``density`` (the trained :class:`~npht.render.LaplaceDensity`),
    ``config`` (the run's :class:`TrainConfig`), ``identity_names`` (name -> code index;
    ``None`` for checkpoints that did not store them), ``path``."""

    model: torch.nn.Module
    density: torch.nn.Module
    config: TrainConfig
    identity_names: Optional[Dict[str, int]]
    path: str

    @property
    def name(self) -> str:
        """``TP`` (tri-planes, all losses), ``TP_3D`` (tri-planes, 3D losses only) or ``NPM``."""
        if self.config.model == "npm":
            return "NPM"
        return "TP" if self.config.uses_2d else "TP_3D"

    @property
    def codes(self) -> torch.Tensor:
        """The trained identity codes ``[num_identities, z_dim]``."""
        return self.model.codes.weight.detach()


@dataclass
class TrainedExpression:
    """``model`` (:class:`~npht.models.ExpressionModel`, eval, no grad), ``z_id`` (the frozen
    identity codes it was trained with), ``expression_keys`` (code k -> ``(identity,
    expression)``), ``identity_names``, ``path``."""

    model: torch.nn.Module
    z_id: torch.Tensor
    expression_keys: List[Tuple[str, str]]
    identity_names: Dict[str, int]
    path: str

    @property
    def codes(self) -> torch.Tensor:
        return self.model.codes.weight.detach()


def check_expression_pair(identity: "TrainedIdentity", expression: "TrainedExpression") -> None:
    """ValueError unless ``expression`` was trained on ``identity`` (its frozen identity codes
    are that model's codes): an expression model fitted with another identity run's codes
    deforms the wrong shapes without any other sign."""
    mine, theirs = expression.z_id, identity.codes
    if mine.shape[-1] != theirs.shape[-1]:
        raise ValueError(f"the expression model {expression.path!r} is conditioned on identity codes of size "
                         f"{mine.shape[-1]}, the identity model {identity.path!r} has codes of size "
                         f"{theirs.shape[-1]}")
    if mine.shape != theirs.shape or not torch.equal(mine.cpu(), theirs.cpu()):
        raise ValueError(f"the expression model {expression.path!r} was trained on another identity model than "
                         f"{identity.path!r} (its frozen identity codes differ): give the identity checkpoint "
                         f"it was trained with (npht train expression --identity)")


def checkpoint_file(path: str, kind: str = "") -> str:
    """The checkpoint file ``path`` names: ``path`` itself, or ``path/checkpoint.pt`` for a run
    folder (what ``npht train`` writes there). FileNotFoundError for a folder without one or
    a path that does not exist."""
    path = os.fspath(path)
    what = f"{kind + ' ' if kind else ''}checkpoint"
    if os.path.isdir(path):
        inner = os.path.join(path, "checkpoint.pt")
        if not os.path.isfile(inner):
            raise FileNotFoundError(f"{what} {path!r} is a directory without checkpoint.pt")
        return inner
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    return path


def _read(path: str, map_location, kind: str = "") -> dict:
    from .checkpoint import load_checkpoint

    path = checkpoint_file(path, kind)
    try:
        s = load_checkpoint(path, map_location)
    except Exception as e:  # not a torch file at all
        raise ValueError(f"cannot read {kind + ' ' if kind else ''}checkpoint {path!r}: {type(e).__name__}: {e}") \
            from None
    return s


def checkpoint_kind(s) -> Optional[str]:
    """``"identity"`` or ``"expression"``: which trainer wrote the checkpoint dict ``s`` (an
    expression run's stores its ``expression_keys``); ``None`` for anything else."""
    if not isinstance(s, dict) or "model" not in s:
        return None
    if "expression_keys" in s:
        return "expression"
    return "identity" if isinstance(s.get("config"), dict) else None


def check_kind(s, path: str, kind: str) -> None:
    """A ValueError naming ``path`` unless ``s`` is a checkpoint of ``kind`` (``"identity"`` /
    ``"expression"``): the other trainer's config and state would fail far from the cause
    (an unknown config field, a state-dict key) or, worse, half load."""
    got = checkpoint_kind(s)
    if got == kind:
        return
    if got is not None:
        raise ValueError(f"{path!r} is an {got}-model checkpoint, not an {kind}-model checkpoint")
    layout = ": a dict with 'config' and 'model'" if kind == "identity" else ""
    raise ValueError(f"{path!r} is not an {kind}-model checkpoint (written by `npht train {kind}`{layout})")


def read_identity_checkpoint(path: str, map_location="cpu") -> Tuple[TrainConfig, dict]:
    """``(TrainConfig, checkpoint dict)`` of an ``npht train identity`` checkpoint (a run folder:
    its ``checkpoint.pt``); a FileNotFoundError / ValueError naming the file for anything else."""
    path = checkpoint_file(path, "identity")
    s = _read(path, map_location, "identity")
    check_kind(s, path, "identity")
    try:
        cfg = TrainConfig.from_saved(s["config"])
    except TypeError as e:
        raise ValueError(f"{path!r}: its 'config' is not an identity TrainConfig ({e})") from None
    return cfg, s


def load_identity(path: str, device="cpu") -> TrainedIdentity:
    """The identity model (and density) of an ``npht train identity`` checkpoint."""
    from ..render import LaplaceDensity
    from .identity import build_identity_model

    path = checkpoint_file(path, "identity")
    cfg, s = read_identity_checkpoint(path)
    model = build_identity_model(cfg, s["model"]["codes.weight"].shape[0])
    model.load_state_dict(s["model"])
    density = LaplaceDensity(cfg.beta_init, cfg.beta_min)
    if "density" in s:
        density.load_state_dict(s["density"])
    for m in (model, density):
        m.requires_grad_(False).eval().to(device)
    return TrainedIdentity(model, density, cfg, s.get("identity_names"), os.fspath(path))


def load_expression(path: str, device="cpu") -> TrainedExpression:
    """The expression model of an ``npht train expression`` checkpoint (a run folder: its
    ``checkpoint.pt``)."""
    from ..models import ExpressionModel
    from .expression import ExpressionConfig

    path = checkpoint_file(path, "expression")
    s = _read(path, "cpu", "expression")
    check_kind(s, path, "expression")
    cfg = ExpressionConfig.from_saved(s["config"])  # older checkpoints: their layout
    z_id = s["z_id"]
    keys = [tuple(k) for k in s["expression_keys"]]
    model = ExpressionModel(z_id.shape[1], cfg.z_ex_dim, cfg.hidden, cfg.layers, cfg.skip,
                            num_expressions=len(keys), beta=cfg.beta, skip_shrink=cfg.skip_shrink)
    model.load_state_dict(s["model"])
    model.requires_grad_(False).eval().to(device)
    return TrainedExpression(model, z_id.to(device), keys, dict(s["identity_names"]), os.fspath(path))
