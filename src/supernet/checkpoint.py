"""Run directories and checkpoints: atomic writes, weights-only loads, clear errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from supernet.fileio import atomic_write_bytes, orphaned_temporaries

CHECKPOINT_FORMAT = 1
# What every checkpoint of `supernet train` holds; resuming needs the rest of Trainer.state_dict() too.
RUN_KEYS = ("config", "space", "num_classes", "in_channels", "model")
RESUME_KEYS = (*RUN_KEYS, "optimizer", "global_step", "global_batch", "rng", "noise", "counters")
# What a run directory may hold besides its own files: `--force` leaves these (searches, exports) alone.
_RUN_FILES = ("config.yaml", "metrics.jsonl")
_RUN_DIRS = ("checkpoints", "tensorboard")


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
        raise RunDirError(f"{path} not found; pass a run directory of `supernet train` or one of its checkpoints/*.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - arbitrary bytes fail inside the unpickler in arbitrary ways
        raise RunDirError(f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or not a "
                          "supernet checkpoint — resume from an epoch checkpoint in the same folder") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"checkpoint {path} is not a supernet checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def require_keys(state: Mapping[str, Any], path: Path, keys: tuple[str, ...] = RUN_KEYS) -> None:
    """Raise RunDirError naming `path` when a loaded checkpoint lacks any of `keys` or has no config mapping."""
    missing = [key for key in keys if key not in state]
    if missing or not isinstance(state["config"], dict):
        raise RunDirError(
            f"checkpoint {path} lacks {_few(missing) or 'a config mapping'}; it is not a checkpoint of "
            "`supernet train` (pass a run directory it wrote, or one of its checkpoints/*.pt)"
        )


def state_mismatch(expected: Mapping[str, Tensor], got: Any) -> str | None:
    """One line describing how `got` differs from `expected` in keys or shapes, or None when it fits."""
    if not isinstance(got, Mapping) or not all(isinstance(v, Tensor) for v in got.values()):
        return "expected a mapping of names to tensors"
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in got and got[k].shape != expected[k].shape
    ]
    parts = [
        f"{label} {_few(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if items
    ]
    return "; ".join(parts) or None


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


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

    def kept_epochs(self) -> list[int]:
        """The epochs whose checkpoint (epoch_NNN.pt) is in the checkpoints folder, in order."""
        if not self.checkpoints.is_dir():
            return []
        names = (p.stem.removeprefix("epoch_") for p in self.checkpoints.glob("epoch_*.pt"))
        return sorted(int(n) for n in names if n.isdigit())

    def has_checkpoint(self) -> bool:
        """Whether a resumable checkpoint exists."""
        return self.latest.is_file()

    def prepare_new(self, force: bool) -> None:
        """Create the directory for a fresh run; refuse to reuse a non-empty one unless `force`.

        With `force`, the run's own files (config, metrics, checkpoints, TensorBoard events) are deleted,
        but only after the whole directory was checked: a symbolic link or a non-directory where a run
        keeps its folders refuses before anything is deleted. Other entries (searches, exports) are kept.
        """
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"run directory {self.root} is a file; choose another --out")
        if self.root.is_dir() and any(self.root.iterdir()) and not force:
            if self.has_checkpoint():
                raise RunDirError(
                    f"run directory {self.root} already holds a run; continue it with "
                    f"`supernet train --resume {self.root}`, or pass --force to start over (its checkpoints "
                    "and metrics are deleted)"
                )
            raise RunDirError(
                f"run directory {self.root} is not empty but holds no checkpoint to resume (a run stopped "
                "before its first checkpoint?); pass --force to start over in it, or choose another --out"
            )
        if force and self.root.is_dir():
            doomed = self._force_targets()
            for path in doomed:
                path.unlink() if path.is_file() else path.rmdir()
        self.root.mkdir(parents=True, exist_ok=True)

    def _force_targets(self) -> list[Path]:
        """Every file and folder `--force` deletes, deepest first; raises before any is deleted."""
        targets: list[Path] = []
        for name in _RUN_FILES:
            path = self.root / name
            if path.is_symlink() or (path.exists() and not path.is_file()):
                raise RunDirError(f"{path} is not a regular file; --force deletes nothing through links or "
                                  "into folders: remove it yourself or choose another --out")
            if path.exists():
                targets.append(path)
        for name in _RUN_DIRS:
            sub = self.root / name
            if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
                raise RunDirError(f"{sub} is a symbolic link or a file, not the run's own folder; --force deletes "
                                  "nothing through links: remove it yourself or choose another --out")
            if not sub.is_dir():
                continue
            inner = sorted(sub.rglob("*"), reverse=True)
            links = [p for p in inner if p.is_symlink()]
            if links:
                raise RunDirError(f"{links[0]} is a symbolic link; --force deletes nothing through links: remove "
                                  "it yourself or choose another --out")
            targets.extend(inner)
        return targets

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files left by a kill during an atomic write; returns what was removed."""
        removed = []
        for folder in (self.root, self.checkpoints):
            for path in orphaned_temporaries(folder):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def require_existing(self, config_hint: str | None = None) -> None:
        """Check that this is a run directory with a checkpoint to resume or evaluate."""
        if not self.root.is_dir():
            raise RunDirError(f"run directory {self.root} does not exist; train one with `supernet train CONFIG --out DIR`")
        if not self.has_checkpoint() and not self.config.is_file():
            raise RunDirError(f"{self.root} is not a run directory (it has neither config.yaml nor "
                              "checkpoints/latest.pt); pass a directory written by `supernet train`")
        if not self.has_checkpoint():
            config = config_hint or str(self.config)
            raise RunDirError(
                f"run directory {self.root} has no checkpoints/latest.pt: the run stopped before its first "
                f"checkpoint, so there is nothing to resume or load; start it over with "
                f"`supernet train {config} --out {self.root} --force`"
            )


def checkpoint_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file: a `checkpoint_id` that changes whenever the weights do."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
