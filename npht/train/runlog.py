"""The training runs' epoch loop and logs: ``log.csv`` (one row per logged step, fixed columns) and,
when the ``tensorboard`` package is installed, TensorBoard scalars under ``tb/`` (the writer is
closed, its last scalars flushed, when the loop ends, also by an exception or Ctrl-C)."""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional, Sequence

from .._atomic import write_atomic

__all__ = ["RunLog", "Stopped", "train_loop", "RESUME_HINT"]

#: how a stopped run continues, in :class:`Stopped`'s message (``npht train``'s flag); a
#: trainer's ``resume_hint`` attribute replaces it (``npht demo``: re-running resumes)
RESUME_HINT = "continue with --resume"


class RunLog:
    """``RunLog(out_dir, columns, terms, prefix)``; ``write(row, step)`` appends the row's
    ``columns`` to ``out_dir/log.csv`` (header on the first write; missing values empty)
    and its ``terms`` as TensorBoard scalars ``prefix/term``. ``close()`` (idempotent; also
    ``with RunLog(...) as log:``) flushes and closes the TensorBoard writer: it writes its
    events every 2 minutes otherwise, so a run that ends or dies would lose the last ones; a
    ``write`` after it opens a new writer (a new event file in ``tb/``)."""

    def __init__(self, out_dir: str, columns: Sequence[str], terms: Sequence[str], prefix: str = "loss"):
        self.out_dir = os.fspath(out_dir)
        self.path = os.path.join(self.out_dir, "log.csv")
        self.columns, self.terms, self.prefix = tuple(columns), tuple(terms), prefix
        self._tb = None
        self._purge_step = None

    def rewind(self, step: int) -> None:
        """A resumed run continues after ``step`` (its checkpoint's): rows logged after it by
        the run that died (killed between a logged step and its next checkpoint) are dropped
        from log.csv (rewritten atomically), and TensorBoard purges its events after it, so
        that each step is logged once."""
        self._purge_step = int(step) + 1
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        keep = [r for r in rows if not (r.get("step") or "").strip().isdigit() or int(r["step"]) <= step]
        if len(keep) == len(rows) or not fields:
            return
        write_csv_atomic(self.path, fields, keep)

    def write(self, row: dict, step: int) -> None:
        new = not os.path.exists(self.path)
        if not new and not getattr(self, "_checked", False):
            self._migrate()
        self._checked = True
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

    def _migrate(self) -> None:
        """A resumed run's log.csv written with other columns (an older npht) is rewritten
        once with this run's (values of columns it lacked left empty, of columns no longer
        logged dropped), so that the rows appended now line up with the header."""
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) == self.columns:
                return
            rows = list(reader)
        write_csv_atomic(self.path, self.columns, [{k: r.get(k) or "" for k in self.columns} for r in rows])

    def tensorboard(self):
        """The SummaryWriter, or ``None`` without the tensorboard package. The first one
        purges the events after the :meth:`rewind` step; one opened after :meth:`close` (a
        second ``train`` call) purges nothing: the events before it are this run's."""
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(self.out_dir, "tb"), purge_step=self._purge_step)
                self._purge_step = None
            except Exception:   # tensorboard is optional
                self._tb = False
        return self._tb or None

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer, if one is open (a second call does
        nothing). log.csv needs no closing: each ``write`` opens and closes it."""
        tb, self._tb = self._tb, (None if self._tb else self._tb)  # False (no tensorboard) stays
        if tb:
            tb.close()   # flushes its pending events first

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class Stopped(KeyboardInterrupt):
    """Raised by :func:`train_loop` after a stop signal, once the checkpoint is saved;
    ``signum`` is the signal (SIGINT: Ctrl-C, SIGTERM: ``kill``, a scheduler's preemption).
    The CLI exits with 128 + signum (130, 143)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)


class _StopOnSignal:
    """While active (main thread): the first SIGINT or SIGTERM this process receives only
    asks the loop to stop after the current step; another one more than ``REPEAT_S`` later
    interrupts at once (KeyboardInterrupt). Repeats within ``REPEAT_S`` are the same request:
    a cluster scheduler signals every process of a job (SLURM's scancel / preemption: SIGTERM)
    and torchrun, signalled too, forwards it to its workers again, milliseconds apart.

    Several ranks (torchrun: Ctrl-C reaches torchrun, which forwards SIGINT to every worker
    and kills them 30 s later; a scheduler sends SIGTERM to the workers) decide together:
    after every step the ranks' requests are all-reduced (MAX, one scalar), so all of them
    stop after the same step, whichever rank saw the signal first. The decision is the
    reduced value alone: a signal whose handler runs after the collective returned (Python
    runs handlers between bytecodes, so right after the C call) counts at the next step,
    on every rank alike. A rank that learned of the stop from another one still takes its
    own (forwarded) signal as the first, not as a request to abort."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    REPEAT_S = 1.0

    def __init__(self, world: int = 1, device="cpu"):
        self.enabled = threading.current_thread() is threading.main_thread()
        self.world, self.device = int(world), device
        self.first_at = None       # monotonic time of this process' first signal
        self.requested = False     # this process asked to stop (its own signal, or learned from a rank)
        self.signum = int(signal.SIGINT)
        self._previous = {}

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.first_at is not None:
            if now - self.first_at > self.REPEAT_S:
                raise KeyboardInterrupt
            return   # a repeat of the first (scheduler + torchrun): the same request
        self.first_at = now
        if not self.requested:
            self.signum = int(signum)
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
              "(again to abort at once)", file=sys.stderr, flush=True)

    def agreed(self) -> bool:
        """Whether any rank asked to stop (a collective: every rank calls it after every step,
        and all of them get the same answer)."""
        if self.world <= 1:
            return self.requested
        import torch

        flag = torch.tensor([float(self.requested), float(self.signum)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop, signum = flag.tolist()
        if stop > 0:   # the same on every rank (a request of this one's, or learned from another)
            self.requested, self.signum = True, int(signum)
        return stop > 0

    def __enter__(self):
        if self.enabled:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
        return False


def _quiet_worker(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT / SIGTERM: a terminal's Ctrl-C reaches its whole
    process group, and a worker that died of it would fail the main process' next fetch;
    the main process stops them (and they exit with it)."""
    for s in _StopOnSignal.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def train_loop(trainer, end_epoch: int, max_steps: Optional[int], *, desc: str, show_bar: bool,
               postfix: Callable[[dict], dict], after_step: Optional[Callable[[], None]] = None) -> None:
    """The epoch loop both trainers share: from ``trainer.epoch`` / ``step_in_epoch`` (a
    resume continues mid-epoch) until ``end_epoch`` or ``max_steps`` more steps, a
    DataLoader over ``trainer._batches(epoch)`` per epoch, ``trainer.step`` + ``_log`` per
    batch, ``after_step()`` (images), a checkpoint every ``cfg.ckpt_every`` steps and one at
    the end; tqdm bar with ``postfix(row)``. On a GPU each row gets ``mem_gib``, the process'
    peak allocated memory during the step (log.csv and the bar).

    Nothing is lost on the way out: Ctrl-C or SIGTERM stops after the current step (under
    torchrun all ranks after the same one), saves, then raises :class:`Stopped`, a
    KeyboardInterrupt (``--resume`` continues bit for bit); after
    ``trainer.MAX_NONFINITE_RUN`` steps in a row with non-finite gradients (their updates
    skipped, so the parameters are still finite) the state is saved and FloatingPointError
    raised. The run log's TensorBoard writer is closed on the way out, however the loop ends."""
    import torch
    from torch.utils.data import DataLoader

    from .identity import collate

    cfg = trainer.cfg
    taken = 0
    bar = None
    if trainer.epoch >= end_epoch and (max_steps is None or max_steps > 0):
        if getattr(trainer, "rank", 0) == 0:  # no step to take: no empty progress bar
            n = trainer.global_step
            print(f"{trainer.out_dir}: the run is already complete ({trainer.epoch} of {end_epoch} epochs, {n} "
                  f"step{'s' if n != 1 else ''} done): nothing to train", file=sys.stderr, flush=True)
        show_bar = False
    if show_bar:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_steps, desc=desc, dynamic_ncols=True)
    world = getattr(trainer, "world", 1)
    cuda = torch.device(trainer.device).type == "cuda"
    stop = _StopOnSignal(world, trainer.device)
    stopping = False  # agreed by all ranks (a rank's own request may come in between)
    try:
        stop.__enter__()
        while trainer.epoch < end_epoch and (max_steps is None or taken < max_steps) and not stopping:
            trainer.dataset.set_epoch(trainer.epoch)
            batches = trainer._batches(trainer.epoch)[trainer.step_in_epoch:]
            loader = DataLoader(trainer.dataset, batch_sampler=batches, collate_fn=collate,
                                num_workers=cfg.workers, generator=torch.Generator().manual_seed(trainer.epoch),
                                worker_init_fn=_quiet_worker if cfg.workers else None)
            for batch in loader:
                if cuda:
                    torch.cuda.reset_peak_memory_stats(trainer.device)
                row = trainer.step(batch)
                if cuda:  # this process' peak during the step
                    row["mem_gib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
                taken += 1
                trainer._log(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(**postfix(row), **({"mem": f"{row['mem_gib']:.1f}G"} if cuda else {}))
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
                stopping = stop.agreed()
                if stopping or (max_steps is not None and taken >= max_steps):
                    break
            if trainer.step_in_epoch >= len(trainer._batches(trainer.epoch)):
                trainer._end_epoch()
        if bar is not None:
            bar.close()
            bar = None
        trainer.save()
        if stopping and world > 1:
            # no rank leaves (and makes torchrun kill the rest) before rank 0 saved: a collective
            # that completes here (gloo's barrier() leaves work behind that can crash the exit);
            # the handler stays until then: a rank's own forwarded signal may come after it
            # learned of the stop from another rank, and is no request to abort
            done = torch.ones(1, device=trainer.device)
            torch.distributed.all_reduce(done)
            done.item()
    finally:
        stop.__exit__()
        if bar is not None:
            bar.close()
        trainer.log.close()   # TensorBoard's last scalars, also after an exception or Ctrl-C
    if stopping:
        raise Stopped(f"stopped at step {trainer.global_step} ({signal.Signals(stop.signum).name}); checkpoint "
                      f"{trainer.ckpt_path} ({getattr(trainer, 'resume_hint', RESUME_HINT)})", stop.signum)


def write_csv_atomic(path: str, fields: Sequence[str], rows) -> None:
    """``rows`` (dicts) under a ``fields`` header to ``path``, through :func:`npht._atomic.write_atomic`."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    write_atomic(path, write)
