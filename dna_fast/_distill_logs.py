"""The distillation's logs: ``distill/log.csv`` and TensorBoard events of the main rank, truncated to the resumed
position so a resumed run's log reads like the uninterrupted one's. The machinery of :mod:`dna_fast.distill`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ._io import atomic_write

_logger = logging.getLogger("dna_fast.distill")  # the public module's logger, as before the split

LOG_COLUMNS = ("epoch", "step", "global_step", "block", "loss", "lr")


class _Logs:
    """log.csv and TensorBoard events of the main rank (no-ops elsewhere); truncated to a resumed position."""

    def __init__(self, run_dir: Path, main: bool, resume_step: int | None, tensorboard: bool) -> None:
        self.main = main
        self.csv_path = run_dir / "distill" / "log.csv"
        self._file = self._writer = self._tb = None
        if not main:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("global_step", "").isdigit()
                        and int(r["global_step"]) <= resume_step]

        def write(f):
            w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in LOG_COLUMNS} for r in rows)

        atomic_write(self.csv_path, write, mode="w", newline="")
        self._file = open(self.csv_path, "a", newline="")
        self._writer = csv.writer(self._file)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "distill" / "tb"), purge_step=resume_step)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                _logger.warning("tensorboard is not installed: no TensorBoard events are written")

    def write(self, epoch: int, step: int, global_step: int, losses: Sequence[float], lrs: Sequence[float]) -> None:
        if not self.main:
            return
        for i, (loss, lr) in enumerate(zip(losses, lrs)):
            self._writer.writerow([epoch, step, global_step, i, f"{loss:.6g}", f"{lr:.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(f"loss/block{i}", loss, global_step)
                self._tb.add_scalar(f"lr/block{i}", lr, global_step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        self._file = self._tb = None
