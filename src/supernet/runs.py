"""Restore a trained supernet from a run directory or a checkpoint file, for training, search and export alike;
load any trained network (an export or a run's largest sub-network) as a frozen module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supernet import spaces
from supernet.checkpoint import (
    RunDir,
    RunDirError,
    checkpoint_digest,
    load_checkpoint,
    require_keys,
    state_mismatch,
)
from supernet.config import config_from_dict
from supernet.exported import is_export_dir, load_export
from supernet.model import Supernet
from supernet.nn.static import StaticNet
from supernet.space import SearchSpace


@dataclass(frozen=True)
class LoadedRun:
    """A trained supernet restored from a run directory or checkpoint file, with what it was built from."""

    net: Supernet
    space: SearchSpace
    num_classes: int
    in_channels: int
    config: dict[str, Any]
    checkpoint_path: Path
    checkpoint_id: str


def load_supernet(
    run_dir_or_checkpoint: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> LoadedRun:
    """Restore a trained supernet (eval mode) from a run directory's latest checkpoint or a checkpoint file."""
    path = Path(run_dir_or_checkpoint)
    if path.is_dir():
        run = RunDir(path)
        run.require_existing()
        path = run.latest
    state = load_checkpoint(path, map_location)
    require_keys(state, path)
    space = spaces.from_dict(state["space"], source=f"{path} (saved space)")
    config = config_from_dict(state["config"], source=f"{path} (saved config)").model_dump(mode="json")
    # Initial weights are overwritten below; fork the RNG so loading does not shift the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        net = Supernet(
            space,
            int(state["num_classes"]),
            int(state["in_channels"]),
            kernel_transform=bool(config.get("kernel_transform", False)),
        )
    problem = state_mismatch(net.state_dict(), state["model"])
    if problem:
        raise RunDirError(f"checkpoint {path}: its weights do not fit its saved search space ({problem})")
    net.load_state_dict(state["model"])
    net.set_channels_last(bool(config.get("train", {}).get("channels_last", False)))
    return LoadedRun(
        net=net.to(map_location).eval(),
        space=space,
        num_classes=net.num_classes,
        in_channels=net.in_channels,
        config=config,
        checkpoint_path=path,
        checkpoint_id=checkpoint_digest(path),
    )


def load_network(source: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[StaticNet, int]:
    """A trained network, frozen (eval mode, no gradients), and its input resolution.

    `source` is an export directory (`supernet export`) or a run directory or checkpoint of this tool, whose
    largest sub-network is taken.
    """
    if not Path(source).exists():
        raise RunDirError(f"{source} not found; pass an export directory of `supernet export`, or a run directory "
                          "of `supernet train` or one of its checkpoints/*.pt")
    if is_export_dir(source):
        exported = load_export(source)
        net, resolution = exported.net, exported.arch.resolution
    else:
        run = load_supernet(source)
        largest = run.space.largest()
        net, resolution = run.net.extract(largest), largest.resolution
    return net.to(device).eval().requires_grad_(False), resolution
