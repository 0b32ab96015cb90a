"""Run metrics: one JSON object per line in metrics.jsonl, mirrored to TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from supernet.checkpoint import RunDir
from supernet.fileio import atomic_write_text

# The kinds of pass whose multiply-adds a run logs as `<kind>_macs` (their sum is `train_macs`): gradient
# passes (forward + backward, 3x the forward), no-grad teacher passes, candidate scoring (AttentiveNAS) and
# sampler preparation (EnNAS's diversity estimation).
PASS_KINDS = ("gradient", "teacher", "scoring", "preparation")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a torn last line from a killed run, or any bad line, is skipped)."""
    return read_metrics_checked(path)[0]


def read_metrics_checked(path: str | Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The valid records of a metrics.jsonl file and the 1-based numbers of the lines that were skipped.

    A valid record is a JSON object whose `step`, when present, is an integer; anything else (a torn line,
    bytes that are not UTF-8, a list, a text step) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).metrics
    records, skipped = [], []
    if path.is_file():
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            step = record.get("step", 0) if isinstance(record, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                skipped.append(number)
                continue
            records.append(record)
    return records, skipped


class MetricsLog:
    """Appends records to metrics.jsonl and TensorBoard; on resume drops records newer than the checkpoint."""

    def __init__(self, run: RunDir, truncate_after: int | None = None, enabled: bool = True):
        self.path = run.metrics
        self.enabled = enabled
        self._writer = None
        if not enabled:  # ranks other than 0 write nothing
            return
        if truncate_after is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events at steps >= it: the checkpoint's own step keeps its scalars.
            purge = None if truncate_after is None else truncate_after + 1
            self._writer = SummaryWriter(str(run.tensorboard), purge_step=purge)
        except ImportError:  # tensorboard is a dependency; keep training if a user removed it
            self._writer = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (non-finite floats become null) and its numeric fields as scalars."""
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in record.items()}
        with self.path.open("a") as fh:  # records are infrequent; reopening keeps no handle across a kill
            fh.write(json.dumps(clean) + "\n")
        if self._writer is not None:
            kind, step = clean.get("kind", "log"), clean.get("step", 0)
            for key, value in clean.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk."""
        if self._writer is not None:
            self._writer.flush()
