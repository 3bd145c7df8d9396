"""The training runs' epoch loop and logs: ``log.csv`` (one row per logged step, fixed columns) and,
when the ``tensorboard`` package is installed, TensorBoard scalars under ``tb/``."""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

__all__ = ["RunLog", "train_loop"]


class RunLog:
    """``RunLog(out_dir, columns, terms, prefix)``; ``write(row, step)`` appends the row's
    ``columns`` to ``out_dir/log.csv`` (header on the first write; missing values empty)
    and its ``terms`` as TensorBoard scalars ``prefix/term``."""

    def __init__(self, out_dir: str, columns: Sequence[str], terms: Sequence[str], prefix: str = "loss"):
        self.out_dir = os.fspath(out_dir)
        self.path = os.path.join(self.out_dir, "log.csv")
        self.columns, self.terms, self.prefix = tuple(columns), tuple(terms), prefix
        self._tb = None

    def write(self, row: dict, step: int) -> None:
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.columns})
        tb = self.tensorboard()
        if tb is not None:
            for k in self.terms:
                if k in row:
                    tb.add_scalar(f"{self.prefix}/{k}", row[k], step)

    def tensorboard(self):
        """The SummaryWriter, or ``None`` without the tensorboard package."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(self.out_dir, "tb"))
            except Exception:   # tensorboard is optional
                self._tb = False
        return self._tb or None


class _StopOnInterrupt:
    """While active (one process, main thread): the first Ctrl-C (SIGINT) only asks the loop
    to stop after the current step, the second interrupts at once. Under torchrun (several
    ranks) the default handling stays: the ranks could not agree on a step to stop at."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step and saving a checkpoint (Ctrl-C again to abort at once)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
        return False


def train_loop(trainer, end_epoch: int, max_steps: Optional[int], *, desc: str, show_bar: bool,
               postfix: Callable[[dict], dict], after_step: Optional[Callable[[], None]] = None) -> None:
    """The epoch loop both trainers share: from ``trainer.epoch`` / ``step_in_epoch`` (a
    resume continues mid-epoch) until ``end_epoch`` or ``max_steps`` more steps, a
    DataLoader over ``trainer._batches(epoch)`` per epoch, ``trainer.step`` + ``_log`` per
    batch, ``after_step()`` (images), a checkpoint every ``cfg.ckpt_every`` steps and one at
    the end; tqdm bar with ``postfix(row)``.

    Nothing is lost on the way out: Ctrl-C (one process) stops after the current step,
    saves, then raises KeyboardInterrupt (``--resume`` continues bit for bit); after
    ``trainer.MAX_NONFINITE_RUN`` steps in a row with non-finite gradients (their updates
    skipped, so the parameters are still finite) the state is saved and FloatingPointError
    raised."""
    import torch
    from torch.utils.data import DataLoader

    from .identity import collate

    cfg = trainer.cfg
    taken = 0
    bar = None
    if show_bar:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_steps, desc=desc, dynamic_ncols=True)
    stop = _StopOnInterrupt(getattr(trainer, "world", 1) == 1)
    try:
        stop.__enter__()
        while trainer.epoch < end_epoch and (max_steps is None or taken < max_steps) and not stop.requested:
            trainer.dataset.set_epoch(trainer.epoch)
            batches = trainer._batches(trainer.epoch)[trainer.step_in_epoch:]
            loader = DataLoader(trainer.dataset, batch_sampler=batches, collate_fn=collate,
                                num_workers=cfg.workers, generator=torch.Generator().manual_seed(trainer.epoch))
            for batch in loader:
                row = trainer.step(batch)
                taken += 1
                trainer._log(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(**postfix(row))
                if after_step is not None:
                    after_step()
                if cfg.ckpt_every and trainer.global_step % cfg.ckpt_every == 0:
                    trainer.save()
                if trainer.nonfinite_run >= trainer.MAX_NONFINITE_RUN:
                    trainer.save()
                    raise FloatingPointError(
                        f"training diverged: the last {trainer.nonfinite_run} steps (up to step {trainer.global_step}) "
                        f"had non-finite gradients and were skipped; the parameters are unchanged since and saved in "
                        f"{trainer.ckpt_path}")
                if stop.requested or (max_steps is not None and taken >= max_steps):
                    break
            if trainer.step_in_epoch >= len(trainer._batches(trainer.epoch)):
                trainer._end_epoch()
    finally:
        stop.__exit__()
        if bar is not None:
            bar.close()
    trainer.save()
    if stop.requested:
        raise KeyboardInterrupt(f"stopped at step {trainer.global_step}; checkpoint {trainer.ckpt_path} "
                                "(continue with --resume)")
