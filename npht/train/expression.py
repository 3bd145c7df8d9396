"""Expression-model training (thesis Sec. 4.3, hyper-parameters of NPHM D.2 as Sec. 5.2.2
prescribes).

``ExpressionTrainer(config, data_root, identity_checkpoint, out_dir, resume=False)`` trains
the forward deformation network ``F_ex(x, z_ex, z_id)`` (:class:`~npht.models.ExpressionModel`)
and one auto-decoded expression code per posed training record against the
neutral<->posed correspondences of :class:`~npht.data.CorrespondenceDataset`, with the
identity codes ``z_id`` of a trained identity model (``npht train identity``) frozen.
Loss (eq. 4.21): ``lambda_c L_c + lambda_dp L_dp + lambda_r L_r`` with
``L_c = ||x + F_ex(x) - x_posed||^2`` on the pairs, ``L_dp = ||F_ex(x)||^2`` on points outside
the face region (the identity's neutral non-face surface samples) and ``L_r = ||z_ex||^2``.
Eq. 4.19 asks for "random points outside the face region"; the region is known on the scan
only (its per-vertex face mask), so the points are drawn where that mask is defined and the
deformation matters: the non-face part of the neutral surface (back of the head, neck, hair).

Code indexing: a posed record's ``expression_index`` in the prepared data is the position
of its expression within its identity (the same index is shared by different people), but
the thesis and NPHM (eq. 13, ``z_{j,l}``) auto-decode one code per identity j and expression
l, i.e. per posed scan. The trainer therefore numbers the posed training records densely,
in the dataset's record order: code ``k`` belongs to ``expression_keys[k] = (identity,
expression)`` (stored in the checkpoint). Identity codes are looked up by identity *name*
in the identity run's index, which its checkpoint stores (older checkpoints: the sorted
names of the neutral training records of its data, as :class:`~npht.data.HeadDataset`
numbers them); expression data of people the identity run has no code for is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .checkpoint import CheckpointedRun, check_limits, cli_overrides, resume_or_preset_config
from .runlog import train_loop
from .config import TrainConfig, check_counts
from .identity import _clip, auto_decoder_optimizers, build_identity_model
from .losses import LossWeights, expression_losses

__all__ = ["ExpressionConfig", "EXPRESSION_PRESETS", "ExpressionTrainer", "ExpressionData",
           "load_identity_checkpoint", "add_expression_parser", "train_expression_main", "EXPRESSION_LOG_COLUMNS"]

EXPRESSION_LOG_TERMS = ("c", "dp", "r", "total")
EXPRESSION_LOG_COLUMNS = ("epoch", "step") + EXPRESSION_LOG_TERMS + ("lr", "lr_codes", "time", "mem_gib")


@dataclass
class ExpressionConfig:
    """Expression-training settings. Presets (``ExpressionConfig.preset(name, **overrides)``):

    * ``thesis``: Sec. 4.3.2's network (DeepSDF MLP, 8 x 1024, skip at layer 4, softplus
      beta 100, z_ex 200; z_id is the identity run's code size, 512 in the thesis), codes
      ~ N(0, I) (Sec. 4.3.1), eq. 4.21's weights (c 100, dp 1e-5, r 5e-5); the training
      hyper-parameters are NPHM's (D.2, "same hyper-parameters as NPHM", Sec. 5.2.2): AdamW lr
      5e-4 with weight decay 5e-4, SparseAdam codes lr 1e-3, decay 0.5 every 600 epochs,
      gradient clipping 0.025, batch 32 posed scans, 1000 pairs per scan per step (Sec.
      5.1.2), 2000 epochs.
    * ``nphm``: the same with NPHM D.3.1's smaller MLP (6 x 512, skip at layer 3 without the
      shrunk layer: 512 is narrower than the 715 inputs), for Sec. 5.2.2's "similar
      architecture as NPHM" reading.
    * ``cpu-demo``: a tiny MLP (3 x 32, z_ex 8), 64 pairs, batch 2, faster rates; seconds
      on 2 cores.
    """

    z_ex_dim: int = 200
    hidden: int = 1024
    layers: int = 8
    skip: Optional[int] = 4
    skip_shrink: bool = True  # NPHM's DeepSDF: the layer before the skip outputs hidden - in
    beta: float = 100.0
    code_init_std: float = 1.0
    weights: LossWeights = field(default_factory=LossWeights.thesis)
    pairs: int = 1000                    # correspondences per posed scan per step
    outside_points: int = 250            # L_dp points (neutral non-face surface) per scan per step
    batch_size: int = 32
    epochs: int = 2000
    lr: float = 5e-4
    lr_codes: float = 1e-3
    weight_decay: float = 5e-4
    lr_decay: float = 0.5
    decay_interval: int = 600            # epochs
    decay_interval_codes: int = 600      # epochs
    grad_clip: Optional[float] = 0.025
    grad_clip_codes: Optional[float] = 0.025
    workers: int = 0
    seed: int = 0
    device: str = "cpu"
    ckpt_every: int = 1000               # steps (0: only at the end)
    log_every: int = 1
    progress: bool = True

    def check(self) -> "ExpressionConfig":
        """Raises ValueError for counts out of range (a batch of 0 scans, negative epochs or
        cadences: they would fail deep in the loop or silently train nothing); returns self."""
        check_counts(self, at_least_1=("batch_size", "pairs"),
                     at_least_0=("epochs", "outside_points", "workers", "ckpt_every", "log_every"))
        return self

    def replace(self, **changes) -> "ExpressionConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    #: values of fields that checkpoints written before the field existed were trained with
    LEGACY = {"skip_shrink": False}   # before NPHM's skip layout (2a75f46)

    @classmethod
    def from_saved(cls, d: dict) -> "ExpressionConfig":
        """The config a checkpoint's ``config`` dict was trained with (older ones included)."""
        return cls.from_dict({**cls.LEGACY, **d})

    @classmethod
    def from_dict(cls, d: dict) -> "ExpressionConfig":
        d = dict(d)
        if isinstance(d.get("weights"), dict):
            d["weights"] = LossWeights(**d["weights"])
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ExpressionConfig":
        if name not in EXPRESSION_PRESETS:
            raise ValueError(f"unknown expression preset {name!r}; choose one of {sorted(EXPRESSION_PRESETS)}")
        return EXPRESSION_PRESETS[name]().replace(**overrides)


EXPRESSION_PRESETS = {
    "thesis": lambda: ExpressionConfig(),
    # 6 x 512 is narrower than its input (3 + 512 + 200): the skip layer takes hidden + input
    # (NPHM's later DeepSDF, skip at layers // 2), no shrunk layer before it
    "nphm": lambda: ExpressionConfig(hidden=512, layers=6, skip=3, skip_shrink=False),
    "cpu-demo": lambda: ExpressionConfig(z_ex_dim=8, hidden=32, layers=3, skip=None, code_init_std=0.1,
                                         pairs=64, outside_points=16, batch_size=2, epochs=200, lr=2e-3,
                                         lr_codes=1e-2, decay_interval=100, decay_interval_codes=100,
                                         grad_clip=1.0, grad_clip_codes=1.0, ckpt_every=100),
    # what `npht demo` trains on a GPU (with the gpu-demo identity preset)
    "gpu-demo": lambda: ExpressionConfig(z_ex_dim=32, hidden=256, layers=6, skip=3, code_init_std=0.1,
                                         batch_size=8, epochs=600, lr=1e-3, lr_codes=1e-2, decay_interval=200,
                                         decay_interval_codes=200, grad_clip=1.0, grad_clip_codes=1.0,
                                         ckpt_every=500),
}


# ---------------------------------------------------------------------- identity run
def load_identity_checkpoint(path: str, map_location="cpu") -> Tuple[TrainConfig, dict]:
    """``(TrainConfig, model state dict)`` of an ``npht train identity`` checkpoint; a clear
    ValueError for anything else (:func:`npht.train.loading.read_identity_checkpoint`)."""
    from .loading import read_identity_checkpoint

    cfg, s = read_identity_checkpoint(path, map_location)
    return cfg, s["model"]


# ---------------------------------------------------------------------- data
class ExpressionData(torch.utils.data.Dataset):
    """Items of the posed training records: CorrespondenceDataset's ``neutral``/``posed``
    ``[pairs, 3]``, ``identity``/``expression`` names, ``code_index`` (the record's dense
    expression-code index), ``identity_index`` (replaced by the row of the frozen identity
    code table: the identity run's index of that name) and, with ``outside_points``,
    ``outside [outside_points, 3]``: non-face surface points of the identity's neutral scan
    (drawn like HeadDataset's, a pure function of seed, epoch and record)."""

    def __init__(self, root: str, identity_names: Dict[str, int], *, pairs: int, outside_points: int,
                 seed: int = 0, split: str = "train"):
        from ..data.dataset import CorrespondenceDataset, HeadDataset

        self.corr = CorrespondenceDataset(root, split, pairs=pairs, seed=seed)
        if len(self.corr) == 0:
            raise ValueError(f"{root!r} holds no posed {split} records with correspondences")
        self.keys: List[Tuple[str, str]] = [(r["identity"], r["expression"]) for r in self.corr.records]
        missing = sorted({i for i, _ in self.keys if i not in identity_names})
        if missing:
            raise ValueError(f"identities {missing} of the expression data have no trained code in the identity "
                             f"checkpoint (its identities: {sorted(identity_names)})")
        self.identity_names = dict(identity_names)
        self.outside_points = int(outside_points)
        self.neutral = None
        if self.outside_points:
            self.neutral = HeadDataset(root, split, expressions="neutral", counts={"surface_nonface": outside_points},
                                       views=0, seed=seed)
            self._neutral_row = {r["identity"]: i for i, r in enumerate(self.neutral.records)}
            lacking = sorted({i for i, _ in self.keys if i not in self._neutral_row})
            if lacking:
                raise ValueError(f"identities {lacking} have no neutral {split} record for the deformation "
                                 "penalty's points (set outside_points=0 to train without L_dp)")

    def __len__(self) -> int:
        return len(self.corr)

    def set_epoch(self, epoch: int) -> None:
        self.corr.set_epoch(epoch)
        if self.neutral is not None:
            self.neutral.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.corr.epoch

    def __getitem__(self, index: int) -> dict:
        item = self.corr[index]
        index %= len(self)
        item["code_index"] = index
        item["identity_index"] = self.identity_names[item["identity"]]
        if self.neutral is not None:
            item["outside"] = self.neutral[self._neutral_row[item["identity"]]]["surface_nonface_points"]
        return item


# ---------------------------------------------------------------------- trainer
class ExpressionTrainer(CheckpointedRun):
    KIND = "expression"

    def __init__(self, config: ExpressionConfig, data_root: str, identity_checkpoint: str, out_dir: str, *,
                 resume: bool = False, identity_data_root: Optional[str] = None):
        from ..data.dataset import HeadDataset
        from ..models import ExpressionModel

        self.cfg = cfg = config.check()
        self.out_dir = os.fspath(out_dir)
        self._refuse_overwrite(resume)
        self.device = torch.device(cfg.device)
        from .loading import checkpoint_file, read_identity_checkpoint

        self.identity_checkpoint = checkpoint_file(identity_checkpoint, "identity")  # a run folder: its checkpoint

        id_cfg, id_ckpt = read_identity_checkpoint(self.identity_checkpoint)
        id_state = id_ckpt["model"]
        n_codes = id_state["codes.weight"].shape[0] if "codes.weight" in id_state else -1
        # the identity run's code index by name: the checkpoint's own (a data folder with as many
        # identities but other people would otherwise pair each person with another's code)
        names = id_ckpt.get("identity_names")
        if names is not None:
            names = {str(k): int(v) for k, v in names.items()}
            if identity_data_root is not None:
                given = HeadDataset(os.fspath(identity_data_root), "train", views=0).identity_index
                if given != names:
                    raise ValueError(f"identity checkpoint {self.identity_checkpoint!r} was trained on the identities "
                                     f"{sorted(names)}, {os.fspath(identity_data_root)!r} holds {sorted(given)}")
        else:  # checkpoints before the names were saved: HeadDataset's numbering of the run's data
            id_root = os.fspath(identity_data_root if identity_data_root is not None else data_root)
            names = HeadDataset(id_root, "train", views=0).identity_index
            if n_codes != len(names):
                raise ValueError(f"identity checkpoint {self.identity_checkpoint!r} has {n_codes} identity codes but "
                                 f"{id_root!r} has {len(names)} neutral training identities: it was not trained on "
                                 "this data (pass the identity run's data folder)")
        if n_codes != len(names):
            raise ValueError(f"identity checkpoint {self.identity_checkpoint!r} has {n_codes} identity codes for "
                             f"{len(names)} named identities")
        self.identity_cfg = id_cfg
        self.identity_model = build_identity_model(id_cfg, len(names))
        self.identity_model.load_state_dict(id_state)
        self.identity_model.requires_grad_(False).eval().to(self.device)
        self.identity_names = names
        # frozen z_id table (Sec. 4.3.1: pre-trained in the identity model and frozen)
        self.z_id = self.identity_model.codes.weight.detach().clone().to(self.device)

        os.makedirs(self.out_dir, exist_ok=True)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.dataset = ExpressionData(data_root, names, pairs=cfg.pairs, outside_points=cfg.outside_points,
                                      seed=cfg.seed)
        self.expression_keys = list(self.dataset.keys)
        self.model = ExpressionModel(self.z_id.shape[1], cfg.z_ex_dim, cfg.hidden, cfg.layers, cfg.skip,
                                     skip_shrink=cfg.skip_shrink,
                                     num_expressions=len(self.dataset), beta=cfg.beta,
                                     init_std=cfg.code_init_std).to(self.device)
        self.code_params = [self.model.codes.weight]
        self.net_params = [p for n, p in self.model.named_parameters() if not n.startswith("codes.")]
        self.opt, self.opt_codes, self.sched, self.sched_codes = auto_decoder_optimizers(
            self.net_params, self.code_params, cfg)
        self._start_run(EXPRESSION_LOG_COLUMNS, EXPRESSION_LOG_TERMS, "expression", resume)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        s = self._run_state()
        # what fitting / deformation needs besides the network
        s.update(expression_keys=[list(k) for k in self.expression_keys],
                 identity_names=dict(self.identity_names), z_id=self.z_id.cpu(),
                 identity_config=self.identity_cfg.to_dict(), identity_checkpoint=self.identity_checkpoint)
        return s

    def load_state_dict(self, s: dict) -> None:
        keys = [tuple(k) for k in s["expression_keys"]]
        if keys != self.expression_keys:
            raise ValueError("the checkpoint's expression codes belong to other posed records than this data's")
        if not torch.equal(s["z_id"].to(self.z_id.device), self.z_id):
            raise ValueError("the checkpoint was trained with other identity codes than the given identity "
                             "checkpoint's")
        self._load_run_state(s)

    # ------------------------------------------------------------------ step
    def losses(self, batch: dict) -> Dict[str, torch.Tensor]:
        """The weighted terms of eq. 4.21 (differentiable) on a collated batch."""
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        z_id = self.z_id[batch["identity_index"].long()]
        z_ex = self.model.expression_latent(batch["code_index"].long())
        neutral = batch["neutral"]
        pts = neutral
        outside = batch.get("outside") if self.cfg.weights.dp != 0 else None
        if outside is not None:
            pts = torch.cat([neutral, outside], 1)       # one MLP pass for both point sets
        delta = self.model(pts, z_id, z_ex)
        n = neutral.shape[1]
        return expression_losses(self.cfg.weights, neutral=neutral, delta=delta[:, :n], posed=batch["posed"],
                                 delta_outside=delta[:, n:] if outside is not None else None, z_ex=z_ex)

    def step(self, batch: dict) -> Dict[str, float]:
        """One optimisation step on a collated batch; returns the logged values."""
        t0 = time.perf_counter()
        self.model.train()
        buffers = self._model_buffers()
        terms = self.losses(batch)
        self.opt.zero_grad(set_to_none=True)
        self.opt_codes.zero_grad(set_to_none=True)
        terms["total"].backward()
        norms = (_clip(self.net_params, self.cfg.grad_clip), _clip(self.code_params, self.cfg.grad_clip_codes))
        self._count_step(self._update_if_finite(norms, (self.opt, self.opt_codes), "expression model", buffers))
        self.global_step += 1
        self.step_in_epoch += 1
        row = {k: float(v.detach()) for k, v in terms.items()}
        row.update(epoch=self.epoch, step=self.global_step, lr=self.opt.param_groups[0]["lr"],
                   lr_codes=self.opt_codes.param_groups[0]["lr"], time=time.perf_counter() - t0)
        return row

    # ------------------------------------------------------------------ loop
    def _batches(self, epoch: int) -> List[List[int]]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        bs = self.cfg.batch_size
        return [order[i:i + bs] for i in range(0, len(order), bs)]

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.sched.step()
        self.sched_codes.step()

    def train(self, epochs: Optional[int] = None, max_steps: Optional[int] = None) -> None:
        """Train until ``epochs`` epochs are done in all (default ``config.epochs``) or
        ``max_steps`` more steps were taken; a checkpoint is written at the end."""
        cfg = self.cfg
        check_limits(epochs, max_steps)
        end = cfg.epochs if epochs is None else int(epochs)
        train_loop(self, end, max_steps, desc="train expression", show_bar=cfg.progress,
                   postfix=lambda row: dict(epoch=self.epoch, loss=f"{row['total']:.4g}"))

    def _log(self, row: dict) -> None:
        if not self.cfg.log_every or self.global_step % self.cfg.log_every:
            return
        self.log.write(row, self.global_step)


# ---------------------------------------------------------------------- CLI
def add_expression_parser(subparsers) -> argparse.ArgumentParser:
    """``npht train expression --preset P --data DIR --identity CKPT --out DIR [--resume] ...``."""
    from ..cli import HelpFormatter

    p = subparsers.add_parser("expression", help="train the expression (deformation) model",
                              formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(EXPRESSION_PRESETS), default=None,
                   help="default cpu-demo; with --resume and a checkpoint in --out: the run's own settings")
    p.add_argument("--data", required=True, help="prepared dataset folder (posed records with correspondences)")
    p.add_argument("--identity", required=True, help="checkpoint.pt of an `npht train identity` run")
    p.add_argument("--identity-data", default=None,
                   help="the identity run's data folder, if not --data (its identity codes are matched by name)")
    p.add_argument("--out", required=True, help="output folder (log, checkpoint)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (without one: start a new run there); "
                        "without --resume a folder holding a run is refused")
    p.add_argument("--epochs", type=int, default=None, help="epochs in all (default: the preset's)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many more steps (default: no limit; the run ends after --epochs)")
    p.add_argument("--batch-size", type=int, help="posed scans per step (default: the preset's)")
    p.add_argument("--pairs", type=int, help="correspondences per posed scan per step (default: the preset's)")
    p.add_argument("--device", help="default: cuda when torch sees a GPU, else cpu")
    p.add_argument("--seed", type=int, help="seed of the initialisation, the data order and the samples "
                                            "(default: the preset's, 0)")
    p.add_argument("--ckpt-every", type=int,
                   help="write checkpoint.pt every this many steps (0: only at the end; default: the preset's)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0: load in the main process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train_expression_main)
    return p


def train_expression_main(args) -> int:
    from ..cli import check_device, check_out_folder

    check_out_folder(args.out)
    check_device(args.device)
    check_limits(max_steps=args.max_steps)
    over = cli_overrides(args, ("epochs", "batch_size", "pairs", "device", "seed", "ckpt_every", "workers"))
    cfg = resume_or_preset_config(ExpressionConfig, args, over, "cpu-demo", "expression").check()
    trainer = ExpressionTrainer(cfg, args.data, args.identity, args.out, resume=args.resume,
                                identity_data_root=args.identity_data)
    trainer.train(max_steps=args.max_steps)
    return 0
