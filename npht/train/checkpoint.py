"""Atomic checkpoints, RNG state capture, and the checkpointed-run part both auto-decoder
trainers share (counters, checkpoint path, run log, optimiser and RNG state, resume)."""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import warnings
from typing import Optional

import numpy as np
import torch

from .._atomic import new_file_mode, write_atomic

__all__ = ["save_atomic", "new_file_mode", "load_checkpoint", "rng_state", "set_rng_state", "split_legacy_param_groups",
           "config_differences", "check_limits", "RESUME_MAY_CHANGE", "CheckpointedRun"]

#: config fields a resumed run may set differently: how it runs, not what it trains
RESUME_MAY_CHANGE = frozenset({"device", "progress", "ckpt_every", "image_every", "log_every", "workers", "bf16",
                               "tf32", "fused_matmul", "fused_h16", "fused_d16", "fused_keep", "stage_epochs", "epochs"})


def config_differences(saved, current, may_change=RESUME_MAY_CHANGE) -> list:
    """``"field=saved (this run: current)"`` for every config field that differs between a
    checkpoint's config and a run's, except those in ``may_change``."""
    a, b = saved.to_dict(), current.to_dict()
    return [f"{k}={a.get(k)!r} (this run: {b.get(k)!r})" for k in sorted(set(a) | set(b))
            if k not in may_change and a.get(k) != b.get(k)]


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a
    crash mid-write leaves the previous file at ``path`` intact. The file gets the mode a
    plain save would give it (:func:`npht._atomic.write_atomic`)."""
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The saved dict (tensors on ``map_location``). A run's state is read onto the CPU: its RNG
    states must stay CPU byte tensors, and ``load_state_dict`` moves the rest to the
    parameters' device."""
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restores :func:`rng_state`'s dict (its tensors may have been loaded onto a GPU: the
    generators take CPU byte tensors only)."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def split_legacy_param_groups(state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """An optimiser state saved with one parameter group, loaded into ``optimizer`` that
    splits the same parameters, in the same order, into several groups (checkpoints written
    before the density's beta got its own group without weight decay). The saved group's
    hyper-parameters (lr after decay, betas) carry over to every group, except the keys
    the new groups set differently at construction (weight_decay of the no-decay group).
    Any other state is returned unchanged, for load_state_dict to check."""
    groups = state.get("param_groups", [])
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if len(groups) != 1 or len(sizes) < 2 or len(groups[0]["params"]) != sum(sizes):
        return state
    saved = groups[0]
    default_decay = optimizer.param_groups[0].get("weight_decay")
    new_groups, start = [], 0
    for g, n in zip(optimizer.param_groups, sizes):
        group = {k: v for k, v in saved.items() if k != "params"}
        if "weight_decay" in g and g["weight_decay"] != default_decay:
            group["weight_decay"] = g["weight_decay"]
        group["params"] = saved["params"][start:start + n]
        new_groups.append(group)
        start += n
    return {**state, "param_groups": new_groups}


def cli_overrides(args, values=(), flags=()) -> dict:
    """The config fields an ``npht train ...`` command sets: each of ``values`` given on the
    command line (not None), each of ``flags`` set (True), ``progress=False`` for
    ``--no-progress``, and ``device``: ``--device``, else this machine's (cuda when torch sees
    a GPU, as the other commands; a resumed run goes on where it is resumed)."""
    over = {k: getattr(args, k) for k in values if getattr(args, k, None) is not None}
    if "device" in values and getattr(args, "device", None) is None:
        import torch

        over["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    over.update({k: True for k in flags if getattr(args, k, False)})
    if getattr(args, "no_progress", False):
        over["progress"] = False
    return over


def check_limits(epochs: Optional[int] = None, max_steps: Optional[int] = None) -> None:
    """ValueError for a negative ``epochs`` or ``max_steps`` of ``train`` (``None``: the
    config's epochs / no step limit; ``max_steps=0`` takes no step and writes the checkpoint,
    as a run stopped before its first step)."""
    for name, v in (("epochs", epochs), ("max_steps", max_steps)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be >= 0, got {v!r}")


def read_run(path: str, kind: str) -> dict:
    """The checkpoint at ``path`` to resume a ``kind`` run (``"identity"`` / ``"expression"``)
    from; a ValueError when it is unreadable or the other trainer's."""
    from .loading import _read, check_kind

    s = _read(path, "cpu")
    try:
        check_kind(s, path, kind)
    except ValueError as e:
        raise ValueError(f"cannot resume: {e}; use a new out folder") from None
    return s


def resume_or_preset_config(config_cls, args, overrides: dict, default_preset: str, kind: str):
    """The config of an ``npht train ...`` command: ``--preset`` (or ``default_preset``) with
    the command's overrides; with ``--resume``, no ``--preset`` and a checkpoint in ``--out``,
    the checkpoint's own config with the overrides (the trainer refuses overrides that change
    what is trained), after checking that the ``kind`` trainer (identity / expression) wrote
    it. ``--resume`` without a checkpoint starts a new run (a requeued job's first start), and
    says so on stderr (rank 0 under torchrun): a mistyped ``--out`` would otherwise pass for a
    resume."""
    path = os.path.join(args.out, "checkpoint.pt")
    if args.resume and not os.path.exists(path) and int(os.environ.get("RANK", "0")) == 0:
        print(f"npht: no checkpoint in {args.out}: starting a new run", file=sys.stderr, flush=True)
    if args.resume and args.preset is None and os.path.exists(path):
        return config_cls.from_saved(read_run(path, kind)["config"]).replace(**overrides)
    return config_cls.preset(args.preset or default_preset, **overrides)


def _keep_as_prev(path: str) -> None:
    """Renames the file or folder ``path``, if there is one, to ``path + ".prev"``, replacing
    what was there (removed first: a folder cannot be renamed onto a non-empty one)."""
    if not os.path.lexists(path):
        return
    prev = path + ".prev"
    if os.path.isdir(prev) and not os.path.islink(prev):
        shutil.rmtree(prev)
    elif os.path.lexists(prev):
        os.remove(prev)
    os.replace(path, prev)


class CheckpointedRun:
    """Mixin of a trainer with ``cfg`` (``to_dict()``), ``model``, ``dataset`` (``epoch``,
    ``set_epoch``), ``device``, ``out_dir`` and the optimisers/schedulers named in
    ``OPTIMIZERS``: epoch/step counters, ``checkpoint.pt`` in ``out_dir``, the run log, and
    the part of the state every trainer saves and restores (``_run_state`` /
    ``_load_run_state``, which the trainer's ``state_dict`` / ``load_state_dict`` extend).
    Only rank 0 writes."""

    OPTIMIZERS = ("opt", "opt_codes", "sched", "sched_codes")
    KIND = ""   # "identity" / "expression": the checkpoints it resumes (npht.train.loading.check_kind)
    rank = 0
    #: consecutive steps with non-finite gradients after which training stops (diverged)
    MAX_NONFINITE_RUN = 20
    skipped_steps = 0     # steps whose update was skipped (non-finite gradients), in all
    nonfinite_run = 0     # ... of them in a row, up to the last step

    def _model_buffers(self) -> list:
        """Copies of ``model``'s buffers (BatchNorm statistics: the forward updates them),
        taken before a step so that a skipped one can put them back."""
        return [b.detach().clone() for b in self.model.buffers()]

    def _update_if_finite(self, grad_norms, optimizers, what: str, buffers=None) -> bool:
        """Steps ``optimizers`` if every gradient norm in ``grad_norms`` is finite. Else the
        update is skipped (parameters and optimiser states stay as they were, and with
        ``buffers``, :meth:`_model_buffers` of before the step, the model's buffers too: one
        NaN would otherwise spread into every parameter and every later checkpoint), with a
        warning. Under DDP the norms are the reduced gradients', so every rank decides alike."""
        if all(math.isfinite(n) for n in grad_norms):
            for opt in optimizers:
                opt.step()
            return True
        if buffers is not None:
            with torch.no_grad():
                for b, old in zip(self.model.buffers(), buffers):
                    b.copy_(old)
        if self.rank == 0:
            warnings.warn(f"step {self.global_step + 1}: non-finite {what} gradients (norms "
                          f"{', '.join(f'{n:.3g}' for n in grad_norms)}): update skipped", RuntimeWarning,
                          stacklevel=3)
        return False

    def _count_step(self, finite: bool) -> None:
        """Counts a step whose updates were (all) applied or not (``skipped_steps``,
        ``nonfinite_run``); :func:`npht.train.runlog.train_loop` stops a run after
        ``MAX_NONFINITE_RUN`` skipped steps in a row."""
        if finite:
            self.nonfinite_run = 0
        else:
            self.skipped_steps += 1
            self.nonfinite_run += 1

    def _refuse_overwrite(self, resume: bool) -> None:
        """ValueError if ``out_dir`` holds a checkpoint and ``resume`` is off (:meth:`_start_run`;
        the trainers call it first too, before building their data and models)."""
        path = os.path.join(self.out_dir, "checkpoint.pt")
        if resume or not os.path.exists(path):
            return
        try:
            step = f" at step {load_checkpoint(path)['global_step']}"
        except Exception:  # unreadable: still a run's file
            step = ""
        raise ValueError(f"{self.out_dir} already holds a run (checkpoint.pt{step}): pass --resume (resume=True) "
                         "to continue it, or use a new out folder")

    def _start_run(self, log_columns, log_terms, log_name: str, resume: bool) -> None:
        """Counters at 0, the run log, and the checkpoint in ``out_dir`` loaded if ``resume``.

        Without ``resume`` a checkpoint in ``out_dir`` is a ValueError: the new run would
        overwrite it at its first save and append its rows to the old run's log.csv. With
        ``resume`` and no checkpoint the run starts anew (the demo, a requeued cluster job's
        first start). A new run finding a log.csv, TensorBoard events (``tb/``) or image grids
        (``images/``) of a run that died before its first checkpoint keeps them as
        ``log.csv.prev``, ``tb.prev``, ``images.prev`` (replacing older ones) and starts its
        own: the old rows and curves would mix with its steps, the old ``step_*.png`` pass for
        its images. A resumed run keeps them (its log rewound to the checkpoint's step). The
        checkpoint must be of this trainer's ``KIND`` (identity / expression)."""
        from .runlog import RunLog

        self.epoch, self.global_step, self.step_in_epoch = 0, 0, 0
        self.ckpt_path = os.path.join(self.out_dir, "checkpoint.pt")
        self.log = RunLog(self.out_dir, log_columns, log_terms, log_name)
        self.log_path = self.log.path
        self._refuse_overwrite(resume)
        if not os.path.exists(self.ckpt_path):
            if self.rank == 0:
                for path in (self.log_path, os.path.join(self.out_dir, "tb"), os.path.join(self.out_dir, "images")):
                    _keep_as_prev(path)
            return
        s = read_run(self.ckpt_path, self.KIND)
        diff = config_differences(type(self.cfg).from_saved(s["config"]), self.cfg)
        if diff:
            raise ValueError(f"cannot resume {self.ckpt_path}: it was trained with other settings: "
                             f"{', '.join(diff)}. Resume with the run's own settings (`npht train ... "
                             f"--resume` without --preset takes them from the checkpoint) or use a new out_dir")
        self.load_state_dict(s)
        if self.rank == 0:  # steps logged after the checkpoint by a run that died are logged again
            self.log.rewind(self.global_step)

    def _run_state(self) -> dict:
        s = {"config": self.cfg.to_dict(), "model": self.model.state_dict()}
        s.update({name: getattr(self, name).state_dict() for name in self.OPTIMIZERS})
        s.update(skipped_steps=self.skipped_steps, nonfinite_run=self.nonfinite_run)
        s.update(epoch=self.epoch, global_step=self.global_step, step_in_epoch=self.step_in_epoch,
                 dataset_epoch=self.dataset.epoch, rng=rng_state())
        return s

    def _load_run_state(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        for name in self.OPTIMIZERS:
            target = getattr(self, name)
            state = s[name]
            if isinstance(target, torch.optim.Optimizer):
                state = split_legacy_param_groups(state, target)
            target.load_state_dict(state)
        self.epoch, self.global_step, self.step_in_epoch = s["epoch"], s["global_step"], s["step_in_epoch"]
        self.skipped_steps, self.nonfinite_run = s.get("skipped_steps", 0), s.get("nonfinite_run", 0)
        self.dataset.set_epoch(s["dataset_epoch"])
        set_rng_state(s["rng"])

    def save(self, path: Optional[str] = None) -> str:
        """The state to ``path`` (default: the run's checkpoint), atomically, on rank 0."""
        path = path or self.ckpt_path
        if self.rank == 0:
            save_atomic(self.state_dict(), path)
        return path

    def load(self, path: str) -> None:
        self.load_state_dict(load_checkpoint(path))
