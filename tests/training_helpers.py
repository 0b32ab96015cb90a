"""Helpers shared by the training tests: a tiny space, a small real data subset, quick configs."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from supernet.config import Config, load_config
from supernet.data import DataBundle, build_data

TINY_SPACE = str(Path(__file__).parent / "data" / "tiny_space.yaml")
CONFIGS = Path(__file__).parent.parent / "configs"
FMNIST = Path("/usr/share/datasets/fashion-mnist")

QUICK = [
    f"space={TINY_SPACE}",
    "data.batch_size=32",
    "data.eval_batch_size=128",
    "train.recal_images=128",
    "train.eval_images=128",
    "train.log_every_steps=1",
    "optim.warmup_epochs=0",
    "train.diagnostic_draws=0",  # tests/test_diagnostics.py turns them on where it checks them
]


def quick_config(recipe: str | None = None, *overrides: str) -> Config:
    """A recipe (file name in configs/) shrunk to the tiny space and small batches."""
    path = None if recipe is None else CONFIGS / recipe
    return load_config(path, [*QUICK, *overrides])


def small_data(limit: int = 512, val_size: int = 256) -> DataBundle:
    """A small seeded subset of the real Fashion-MNIST (skips when the Debian package is absent)."""
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists() and not (FMNIST / "train-images-idx3-ubyte").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or `make data`)")
    return _cached_data(limit, val_size)


@functools.cache
def _cached_data(limit: int, val_size: int) -> DataBundle:
    return build_data("fashion_mnist", val_size=val_size, seed=0, limit=limit)
