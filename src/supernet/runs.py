"""Restore a trained supernet from a run directory or a checkpoint file, for training, search and export alike;
load any trained network (an export or a run's largest sub-network) as a frozen module."""

from __future__ import annotations

import json
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
from supernet.space import Arch, ArchError, SearchSpace


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


@dataclass(frozen=True)
class StartingWeights:
    """A fixed network's starting weights (static-network keys) and the task they were trained for."""

    state: dict[str, torch.Tensor]
    num_classes: int
    in_channels: int
    source: str


def starting_weights(init: str, arch: dict[str, Any] | None = None) -> StartingWeights:
    """The weights `network.init` names: an export's, or sub-network `arch`'s inside a run's supernet."""
    if not Path(init).exists():
        raise RunDirError(f"network.init {init} not found; pass an export directory of `supernet export`, a run "
                          "directory of `supernet train` (with network.arch) or scratch")
    if is_export_dir(init):
        exported = load_export(init)
        return StartingWeights(exported.net.state_dict(), exported.num_classes, exported.in_channels, str(init))
    if arch is None:
        raise RunDirError(f"network.init {init} is a run: name its sub-network with network.arch (an arch dict)")
    run = load_supernet(init)
    sub = run.space.validate(Arch.from_dict(arch))
    return StartingWeights(run.net.extract(sub).state_dict(), run.num_classes, run.in_channels, str(init))


def read_arch(space: SearchSpace, text: str) -> Arch:
    """`largest`, `smallest`, a width like `0.5x` (width-multiplier spaces) or an architecture JSON file
    (an `arch.json` of an export, an `eval --json` output or a bare arch), validated against `space`."""
    if text in ("largest", "smallest"):
        return getattr(space, text)()
    if text.endswith("x") and not Path(text).exists():
        try:
            multiplier = float(text[:-1])
        except ValueError:
            multiplier = None
        if multiplier is not None:
            return space.at_width(multiplier)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"architecture file {path} not found; pass largest, smallest, a width like 0.5x "
                                "(width-multiplier spaces) or an ARCH.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArchError(f"architecture file {path} is not valid JSON ({err}); write it as "
                        "`supernet eval --json` or `supernet export` do") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]  # an export's arch.json or an eval --json output
    return space.validate(Arch.from_dict(data))
