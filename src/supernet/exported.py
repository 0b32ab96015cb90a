"""Read an export directory back: its description, its weights, and the plain sub-network they make.

The writing side is `supernet.export`; this module sits below training, search and export so that any of
them may load an exported network (a teacher, a model to fine-tune) without reaching up.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from supernet import spaces
from supernet.checkpoint import state_mismatch
from supernet.model import build_static
from supernet.nn.static import StaticNet
from supernet.space import Arch, ArchError, SearchSpace, SpaceError

EXPORT_FORMAT = 1
ARCH_FILE = "arch.json"
ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
WEIGHTS_FILES = {"safetensors": "model.safetensors", "torch": "model.pt"}
EXPORT_FILES = frozenset({ARCH_FILE, ONNX_FILE, CARD_FILE, *WEIGHTS_FILES.values()})
CARD_KEYS = ("source", "checkpoint_id", "dataset", "budget", "val", "test", "before", "mean", "std", "lineage",
             "notes")
DOC_KEYS = ("arch", "space", "num_classes", "in_channels", "weights")
REEXPORT = "re-export it with `supernet export`"

class ExportError(ValueError):
    """An export directory cannot be written, read or verified."""



@dataclass(frozen=True)
class LoadedExport:
    """An exported sub-network rebuilt from its directory (eval mode), with what it was built from."""

    net: StaticNet
    arch: Arch
    space: SearchSpace
    num_classes: int
    in_channels: int


def load_export(path: str | os.PathLike[str]) -> LoadedExport:
    """Rebuild an exported sub-network and its description from its directory, without any supernet."""
    root = export_root(path)
    doc = read_doc(root)
    try:
        space = spaces.from_dict(doc["space"], source=f"{root / ARCH_FILE} (space)")
        arch = space.validate(Arch.from_dict(doc["arch"]))
    except (SpaceError, ArchError) as err:
        raise ExportError(f"{root / ARCH_FILE}: {err}; {REEXPORT}") from None
    net = build_fresh(space, arch, doc["num_classes"], doc["in_channels"])
    weights = root / doc["weights"]
    state = read_weights(weights)
    problem = state_mismatch(net.state_dict(), state)
    if problem:
        raise ExportError(
            f"weights file {weights} does not match the architecture in {ARCH_FILE} ({problem}); {REEXPORT}"
        )
    net.load_state_dict(state)
    return LoadedExport(net.eval(), arch, space, doc["num_classes"], doc["in_channels"])


def load_subnet(path: str | os.PathLike[str]) -> StaticNet:
    """Rebuild an exported sub-network (eval mode) from its directory, without any supernet."""
    return load_export(path).net


def is_export_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is an export directory (or its arch.json), as opposed to a run or checkpoint."""
    p = Path(path)
    return (p.is_dir() and (p / ARCH_FILE).is_file()) or (p.is_file() and p.name == ARCH_FILE)


def build_fresh(space: SearchSpace, arch: Arch, num_classes: int, in_channels: int) -> StaticNet:
    # The fresh initialisation is overwritten; keep the caller's global random stream untouched.
    with torch.random.fork_rng(devices=[]):
        return build_static(space, arch, num_classes, in_channels)




def read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ExportError(f"weights file {path} not found; the export is incomplete, {REEXPORT}")
    if path.suffix == ".safetensors":
        st = require("safetensors.torch", "to read safetensors weights")
        from safetensors import SafetensorError

        try:
            return st.load_file(path)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ExportError(
                f"weights file {path} is not a valid safetensors file ({err}); {REEXPORT}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - arbitrary bytes fail inside the unpickler in arbitrary ways
        raise ExportError(
            f"weights file {path} is not a weights-only torch file of tensors "
            f"({type(err).__name__}); {REEXPORT}"
        ) from None




def export_root(path: str | os.PathLike[str]) -> Path:
    root = Path(path)
    if root.is_file() and root.name == ARCH_FILE:
        root = root.parent
    if not root.is_dir():
        raise ExportError(
            f"export directory {root} not found; expected a folder written by `supernet export` "
            f"holding {ARCH_FILE} and {' or '.join(WEIGHTS_FILES.values())}"
        )
    return root




def read_doc(root: Path) -> dict[str, Any]:
    path = root / ARCH_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(
            f"{path} not found; {root} is not an export directory "
            f"({ARCH_FILE} describes the architecture), {REEXPORT}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} cannot be read as JSON ({err}); {REEXPORT}") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{path} is not a supernet export description (format {EXPORT_FORMAT}); {REEXPORT}"
        )
    missing = [key for key in DOC_KEYS if key not in doc]
    if missing:
        raise ExportError(f"{path} lacks {missing}; {REEXPORT}")
    if doc["weights"] not in WEIGHTS_FILES.values():
        raise ExportError(
            f"{path} names weights {doc['weights']!r}; expected one of {sorted(WEIGHTS_FILES.values())}"
        )
    for key in ("num_classes", "in_channels"):
        if not isinstance(doc[key], int) or isinstance(doc[key], bool) or doc[key] < 1:
            raise ExportError(f"{path}: {key} must be a positive integer, got {doc[key]!r}; {REEXPORT}")
    return doc




def require(module: str, purpose: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ExportError(f"the {package} package is needed {purpose}; pip install {package}") from None
