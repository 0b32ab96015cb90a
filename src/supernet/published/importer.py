"""Turn a published supernet checkpoint into a run directory that eval, search, export, latency and report
accept like one `supernet train` wrote."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from supernet import spaces
from supernet.checkpoint import RunDir, RunDirError, checkpoint_digest, save_checkpoint
from supernet.config import Config, apply_overrides, config_from_dict, dump_config
from supernet.fileio import atomic_write_text
from supernet.model import Supernet
from supernet.published.archs import PUBLISHED_MODELS
from supernet.published.mapping import convert
from supernet.published.reading import FORMATS, PublishedFormatError, detect_format, read_state
from supernet.space import SearchSpace

# OFA's MobileNetV3 supernets by stem width (make_divisible(16 x width multiplier, 8)).
_OFA_PRESETS = {16: ("ofa_mbv3", "w1.0"), 24: ("ofa_mbv3_w12", "w1.2")}


@dataclass(frozen=True)
class ImportedRun:
    """What `import_checkpoint` wrote and found."""

    run_dir: Path
    format: str
    variant: str
    space: str
    num_classes: int
    tensors: int
    unused: dict[str, str] = field(default_factory=dict)
    archs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def preset_for(fmt: str, state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(preset space, variant) of a checkpoint in format `fmt`."""
    stem = state.get("first_conv.conv.weight")
    if stem is None:
        raise PublishedFormatError(f"{fmt} checkpoint lacks its stem convolution first_conv.conv.weight")
    if fmt == "attentivenas":
        return "alphanet", "AttentiveNAS / AlphaNet"
    width = int(stem.shape[0])
    if width not in _OFA_PRESETS:
        raise PublishedFormatError(f"OFA MobileNetV3 checkpoint with stem width {width}: only w1.0 (stem 16) and "
                                   "w1.2 (stem 24), the released supernets, have presets")
    return _OFA_PRESETS[width]


def import_settings(config: Config | None, space: SearchSpace, kernel_transform: bool, data_root: str | None,
                    overrides: list[str] | None = None) -> tuple[Config, list[str]]:
    """The imported run's config: `config` (or the defaults on an ImageFolder tree) with `overrides`, on the
    checkpoint's space; and notes on what the checkpoint replaced."""
    notes = []
    data = (config or Config()).model_dump(mode="json")
    if config is None:
        data["data"] = {**data["data"], "name": "imagefolder", "image_size": max(space.spec.resolutions)}
    if data_root is not None:
        data["data"]["root"] = str(data_root)
    data = apply_overrides(data, overrides or [])
    preset = space.name
    replaced = data.get("space") != preset or data.get("kernel_transform") != kernel_transform
    if (config is not None or overrides) and replaced:
        notes.append(f"the config's space {data.get('space')!r} (kernel_transform {data.get('kernel_transform')}) is "
                     f"replaced by the checkpoint's {preset!r} (kernel_transform {kernel_transform})")
    same_as_preset = space.to_dict() == spaces.get(preset).to_dict()
    data["space"], data["kernel_transform"] = (preset if same_as_preset else space.to_dict()), kernel_transform
    settings = config_from_dict(data, "import settings")
    if settings.data.name == "imagefolder" and not settings.data.root:
        raise PublishedFormatError("give --data-root: the ImageFolder tree (train/ and val/) that eval, search and "
                                   "export read")
    return settings, notes


def import_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: str | None = None,
    config: Config | None = None,
    data_root: str | None = None,
    force: bool = False,
    resolutions: list[int] | None = None,
    overrides: list[str] | None = None,
) -> ImportedRun:
    """Map every tensor of a published OFA MobileNetV3 or AttentiveNAS/AlphaNet supernet onto our supernet of
    the matching preset and write a run directory at `out` (checkpoint, config.yaml, import.json, archs/).

    `resolutions` replaces the preset's input resolutions (the networks are resolution-agnostic), e.g. to
    search only at the resolution a device runs.
    """
    if fmt is not None and fmt not in FORMATS:
        raise PublishedFormatError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    state = read_state(checkpoint)
    detected = detect_format(state)
    if fmt is not None and fmt != detected:
        raise PublishedFormatError(f"--format {fmt}, but {checkpoint} looks like a {detected} checkpoint; pass "
                                   f"--format {detected}")
    preset, variant = preset_for(detected, state)
    space = spaces.get(preset)
    if resolutions is not None:
        space = _with_resolutions(space, resolutions)
    classifier = state.get("classifier.linear.weight")
    if classifier is None or classifier.dim() != 2:
        raise PublishedFormatError(f"{detected} checkpoint lacks its classifier classifier.linear.weight")
    num_classes = int(classifier.shape[0])
    kernel_transform = detected == "ofa_mbv3"
    with torch.random.fork_rng(devices=[]):  # the fresh init is overwritten
        net = Supernet(space, num_classes, space.in_channels, kernel_transform)
    conversion = convert(detected, state, net.state_dict(), space)
    net.load_state_dict(conversion.state)
    settings, notes = import_settings(config, space, kernel_transform, data_root, overrides)

    run = RunDir(Path(out))
    if run.root.exists() and (not run.root.is_dir() or any(run.root.iterdir())) and not force:
        raise RunDirError(f"{run.root} is not empty; pass --force to replace an earlier import there (searches and "
                          "exports in it are kept), or choose another --out")
    run.prepare_new(force)
    digest = checkpoint_digest(checkpoint)
    provenance = {"checkpoint": str(Path(checkpoint).resolve()), "sha256": digest, "format": detected,
                  "variant": variant, "space": preset, "num_classes": num_classes,
                  "tensors": len(conversion.state) - len(conversion.filled), "unused": conversion.unused,
                  "filled": conversion.filled}
    archs = _write_published_archs(run.root, detected, space)
    atomic_write_text(run.config, dump_config(settings))
    atomic_write_text(run.root / "import.json", json.dumps(provenance, indent=2) + "\n")
    record = {"kind": "import", "step": 0, **{k: v for k, v in provenance.items() if k not in ("unused", "filled")}}
    atomic_write_text(run.metrics, json.dumps(record) + "\n")  # what report shows in place of training curves
    _mkdir(run.checkpoints)
    save_checkpoint(run.latest, {  # last: a run directory with a checkpoint is a complete import
        "config": settings.model_dump(mode="json"),
        "space": space.to_dict(),
        "num_classes": num_classes,
        "in_channels": space.in_channels,
        "model": net.state_dict(),
        "imported": provenance,
    })
    return ImportedRun(run.root, detected, variant, preset, num_classes, provenance["tensors"],
                       conversion.unused, archs, notes)


def _write_published_archs(root: Path, fmt: str, space: SearchSpace) -> list[Path]:
    """archs/NAME.json for the authors' published sub-networks of this supernet (AttentiveNAS, AlphaNet A0-A6)."""
    if fmt != "attentivenas":
        return []
    folder = _mkdir(root / "archs")
    written = []
    for name, model in PUBLISHED_MODELS.items():
        if model["arch"]["resolution"] not in space.spec.resolutions:
            continue
        path = folder / f"{name}.json"
        arch = space.arch_from_attentivenas(model["arch"])
        atomic_write_text(path, json.dumps(arch.to_dict()) + "\n")
        written.append(path)
    return written


def _with_resolutions(space: SearchSpace, resolutions: list[int]) -> SearchSpace:
    if not resolutions or any(int(r) < 32 for r in resolutions):
        raise PublishedFormatError(f"resolutions {resolutions}: give input sides of at least 32 pixels, e.g. 160,224")
    return spaces.from_dict({**space.to_dict(), "resolutions": sorted({int(r) for r in resolutions})},
                            source="imported space")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

