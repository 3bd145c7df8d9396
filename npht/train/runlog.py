"""The training runs' logs: ``log.csv`` (one row per logged step, fixed columns) and,
when the ``tensorboard`` package is installed, TensorBoard scalars under ``tb/``."""

from __future__ import annotations

import csv
import os
from typing import Sequence

__all__ = ["RunLog"]


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
