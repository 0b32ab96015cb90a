"""Run directories and checkpoints: atomic writes, weights-only loads, clear errors."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supernet.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = 1


class RunDirError(ValueError):
    """A run directory is missing, already in use, or holds no usable checkpoint."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (tensors, numbers, strings, lists, dicts, tuples only)."""
    atomic_write_bytes(path, lambda fh: torch.save({"format": CHECKPOINT_FORMAT, **state}, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; raise RunDirError naming the file when it is unusable."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).latest
    if not path.is_file():
        raise RunDirError(f"checkpoint {path} not found; pass a run directory with checkpoints/latest.pt or a .pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise RunDirError(f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or not a "
                          "supernet checkpoint — resume from an epoch checkpoint in the same folder") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"checkpoint {path} is not a supernet checkpoint (format {CHECKPOINT_FORMAT})")
    return state


@dataclass(frozen=True)
class RunDir:
    """The layout of a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        """The checkpoint kept at the end of `epoch` (1-based)."""
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def has_checkpoint(self) -> bool:
        """Whether a resumable checkpoint exists."""
        return self.latest.is_file()

    def prepare_new(self, force: bool) -> None:
        """Create the directory for a fresh run; refuse to reuse a non-empty one unless `force`."""
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"run directory {self.root} is a file; choose another --out")
        if self.root.is_dir() and any(self.root.iterdir()) and not force:
            raise RunDirError(
                f"run directory {self.root} already exists; continue it with --resume {self.root}, "
                "or pass --force to start over (its contents are replaced)"
            )
        if force and self.root.is_dir():
            for name in ("metrics.jsonl", "config.yaml"):
                (self.root / name).unlink(missing_ok=True)
            for sub in (self.checkpoints, self.tensorboard):
                if sub.is_dir():
                    for f in sorted(sub.rglob("*"), reverse=True):
                        f.unlink() if f.is_file() else f.rmdir()
        self.root.mkdir(parents=True, exist_ok=True)

    def require_existing(self) -> None:
        """Check that this is a run directory with a checkpoint to resume or evaluate."""
        if not self.root.is_dir():
            raise RunDirError(f"run directory {self.root} does not exist; train one with `supernet train CONFIG --out DIR`")
        if not self.has_checkpoint():
            raise RunDirError(f"run directory {self.root} has no checkpoints/latest.pt yet; nothing to resume or load")
