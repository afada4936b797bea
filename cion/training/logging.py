"""What a trainer shows and keeps of its progress: ``metrics.jsonl`` (+ TensorBoard) written by
rank 0, and a rich progress bar."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """``out/metrics.jsonl`` (+ TensorBoard under ``out/tensorboard``) on rank 0, opened lazily
    (nothing is written in ``out`` before the first record); on resume, lines past the
    checkpoint's ``resume_step`` are dropped and TensorBoard purges the steps after it.

    Scalars go to TensorBoard as ``{prefix}/{kind}/{name}``, ``kind`` being the record's
    ``kind`` field (else ``default_kind``; no kind at all: ``{prefix}/{name}``).
    """

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int, *,
                 prefix: str, default_kind: str | None = None):
        self.enabled, self.tensorboard, self.out = enabled, tensorboard, Path(out)
        self.path = self.out / "metrics.jsonl"
        self.resume_step = resume_step
        self.prefix, self.default_kind = prefix, default_kind
        self.tb = None
        self._opened = False

    def _open(self) -> None:
        self._opened = True
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= self.resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.resume_step + 1)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if not self._opened:
            self._open()
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            kind = record.get("kind", self.default_kind)
            group = f"{self.prefix}/{kind}" if kind else self.prefix
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{group}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_bar(enabled: bool):
    """A rich progress bar with the running loss (``fields['loss']``), or None."""
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)
