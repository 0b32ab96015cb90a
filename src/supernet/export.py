"""Export one sub-network as a standalone model (arch JSON, weights, ONNX, model card) and load it back.

    run = load_supernet("runs/fmnist")
    evaluator = Evaluator(run.net, data, 256, run.checkpoint_id)
    module = evaluator.extract(arch)                   # BN statistics recalibrated for `arch`
    export_subnet(module, run.space, arch, run.num_classes, run.in_channels, "export/r28",
                  card={"source": "runs/fmnist", "checkpoint_id": run.checkpoint_id,
                        "val": evaluator.evaluate(arch, "val")})
    verify_onnx("export/r28")                          # ONNX vs PyTorch, max abs difference
    model = load_subnet("export/r28")                  # plain torch.nn modules, no supernet involved

An export directory is written in a hidden sibling folder and renamed into place, so a failure never
leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

import supernet
from supernet import spaces
from supernet.checkpoint import state_mismatch
from supernet.cost import cost
from supernet.evaluation import EvalResult
from supernet.exported import (
    ARCH_FILE,
    CARD_FILE,
    CARD_KEYS,
    EXPORT_FILES,
    EXPORT_FORMAT,
    ONNX_FILE,
    REEXPORT,
    WEIGHTS_FILES,
    ExportError,
    build_fresh,
    export_root,
    load_subnet,
    read_doc,
    require,
)
from supernet.fileio import atomic_write_bytes, atomic_write_text
from supernet.onnx_bytes import onnx_bytes
from supernet.space import Arch, SearchSpace


@dataclass(frozen=True)
class ExportedPaths:
    """The files of one export directory (`onnx` is None when ONNX export was off)."""

    root: Path
    arch: Path
    weights: Path
    onnx: Path | None
    card: Path


def export_subnet(
    module: nn.Module,
    space: SearchSpace,
    arch: Arch,
    num_classes: int,
    in_channels: int,
    out_dir: str | os.PathLike[str],
    *,
    card: Mapping[str, Any],
    weights_format: Literal["safetensors", "torch"] = "safetensors",
    onnx: bool = True,
    overwrite: bool = False,
) -> ExportedPaths:
    """Write `module` (the extracted `arch`) to `out_dir`: arch.json, weights, model.onnx and MODEL_CARD.md.

    `card` may hold source (run directory), checkpoint_id, dataset, budget, val / test / before (EvalResult
    or a dict with top1, top5; before: the test accuracy of the network it was fine-tuned from), mean / std
    (input normalisation per channel), lineage (a JSON mapping: what the network was trained from and how)
    and notes.
    """
    if weights_format not in WEIGHTS_FILES:
        raise ValueError(f"weights_format must be one of {sorted(WEIGHTS_FILES)}, got {weights_format!r}")
    space.validate(arch)
    out_dir = Path(out_dir)
    card_doc = _card_doc(card, in_channels)
    _check_out_dir(out_dir, overwrite)
    net = build_fresh(space, arch, num_classes, in_channels)
    state = {key: value.detach().cpu() for key, value in module.state_dict().items()}
    problem = state_mismatch(net.state_dict(), state)
    if problem:
        raise ExportError(
            f"the module's weights do not fit the given architecture ({problem}); "
            "pass the module extracted for this arch"
        )
    net.load_state_dict(state)
    # Everything below is saved from `net`, so the weights, the ONNX graph and load_subnet agree exactly.
    weights_name = WEIGHTS_FILES[weights_format]
    c = cost(space, arch, num_classes, in_channels)
    doc = {
        "format": EXPORT_FORMAT,
        "arch": arch.to_dict(),
        "space": space.to_dict(),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "weights": weights_name,
        "onnx": ONNX_FILE if onnx else None,
        "cost": {"macs": c.macs, "params": c.params},
        "input": {
            "name": "images",
            "shape": ["batch", in_channels, arch.resolution, arch.resolution],
            "mean": card_doc.get("mean"),
            "std": card_doc.get("std"),
        },
        "card": card_doc,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "supernet_version": supernet.__version__,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_sibling(out_dir, "export")
    try:
        _write_weights(staging / weights_name, net.state_dict(), weights_format)
        if onnx:
            atomic_write_bytes(staging / ONNX_FILE, lambda fh: fh.write(onnx_bytes(net, torch.zeros(1, in_channels, arch.resolution, arch.resolution))))
        atomic_write_text(staging / ARCH_FILE, json.dumps(doc, indent=1) + "\n")
        atomic_write_text(staging / CARD_FILE, _model_card(doc, str(out_dir)))
        _publish(staging, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportedPaths(
        root=out_dir,
        arch=out_dir / ARCH_FILE,
        weights=out_dir / weights_name,
        onnx=out_dir / ONNX_FILE if onnx else None,
        card=out_dir / CARD_FILE,
    )


def verify_onnx(
    out_dir: str | os.PathLike[str], atol: float = 1e-4, batch_size: int = 3, seed: int = 0
) -> float:
    """Max abs difference between the ONNX model under onnxruntime and `load_subnet` on a random batch.

    Raises ExportError when it exceeds `atol` times the largest |logit| (at least 1). The batch differs from the export's batch of one, so the
    dynamic batch axis is exercised too.
    """
    root = export_root(out_dir)
    doc = read_doc(root)
    onnx_path = root / ONNX_FILE
    if doc.get("onnx") is None:
        raise ExportError(f"{root} was exported without ONNX (no {ONNX_FILE}); {REEXPORT}")
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path} not found; the export is incomplete, {REEXPORT}")
    model = load_subnet(root)
    ort = require("onnxruntime", "to verify the ONNX model")
    resolution = doc["arch"]["resolution"]
    images = torch.randn(
        batch_size, doc["in_channels"], resolution, resolution, generator=torch.Generator().manual_seed(seed)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a check, not a benchmark: stay off the caller's cores
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        onnx_out = session.run(["logits"], {"images": images.numpy()})[0]
    except Exception as err:  # noqa: BLE001 -- onnxruntime's error classes derive from Exception only
        raise ExportError(
            f"onnxruntime cannot run {onnx_path} ({type(err).__name__}: {' '.join(str(err).split())}); "
            f"{REEXPORT}"
        ) from None
    with torch.no_grad():
        torch_out = model(images)
    if tuple(onnx_out.shape) != tuple(torch_out.shape):
        raise ExportError(
            f"{onnx_path} returns shape {tuple(onnx_out.shape)}, PyTorch {tuple(torch_out.shape)}"
        )
    diff = float((torch.from_numpy(onnx_out) - torch_out).abs().max())
    bound = atol * max(1.0, float(torch_out.abs().max()))  # float32 rounding grows with the logits' scale
    if not diff <= bound:  # also catches NaN
        raise ExportError(
            f"{onnx_path} differs from the PyTorch model by {diff:.3g} (> {bound:.3g}, atol {atol:g} x the "
            f"logits' scale); {REEXPORT}"
        )
    return diff


# -- helpers ---------------------------------------------------------------------------------------


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _card_doc(card: Mapping[str, Any], in_channels: int) -> dict[str, Any]:
    """The model card's facts as plain JSON, validated."""
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model card keys {unknown}; use some of {list(CARD_KEYS)}")
    doc: dict[str, Any] = {}
    for key in ("source", "checkpoint_id", "dataset", "budget", "notes"):
        if card.get(key) is not None:
            doc[key] = str(card[key])
    for split in ("val", "test", "before"):
        result = card.get(split)
        if result is None:
            continue
        if isinstance(result, EvalResult):
            result = result.to_dict()
        if not isinstance(result, Mapping) or "top1" not in result:
            raise ValueError(
                f"model card {split!r} must be an EvalResult or a dict with top1 (and top5), got {result!r}"
            )
        doc[split] = {k: result[k] for k in ("top1", "top5", "loss", "images") if result.get(k) is not None}
    for key in ("mean", "std"):
        values = card.get(key)
        if values is None:
            continue
        if not isinstance(values, Sequence) or len(values) != in_channels:
            raise ValueError(
                f"model card {key!r} must list one number per input channel ({in_channels}), got {values!r}"
            )
        doc[key] = [float(v) for v in values]
    lineage = card.get("lineage")
    if lineage is not None:
        if not isinstance(lineage, Mapping):
            raise ValueError(f"model card 'lineage' must be a mapping, got {lineage!r}")
        try:
            doc["lineage"] = json.loads(json.dumps(dict(lineage)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"model card 'lineage' must hold JSON values only ({err})") from None
    return doc


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"export directory {out_dir} is a file; choose a directory")
    if not out_dir.is_dir():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if entries and not overwrite:
        raise ExportError(
            f"export directory {out_dir} is not empty; choose another directory or allow "
            "overwriting (overwrite=True, `--overwrite`)"
        )
    foreign = [name for name in entries if name not in EXPORT_FILES]
    if foreign:
        raise ExportError(
            f"export directory {out_dir} holds files that are not part of an export "
            f"({_few(foreign)}); refusing to replace it, choose another directory"
        )


def _sibling_name(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}"


def _new_sibling(path: Path, tag: str) -> Path:
    """A new hidden directory next to `path` (created with the default permissions, unlike mkdtemp)."""
    while True:
        candidate = _sibling_name(path, tag)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue


def _publish(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished `staging` directory to `out_dir`, replacing a previous export when allowed."""
    _check_out_dir(out_dir, overwrite)  # again: the directory may have changed during the export
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = _sibling_name(out_dir, "old")
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_weights(path: Path, state: dict[str, Tensor], weights_format: str) -> None:
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    if weights_format == "safetensors":
        st = require("safetensors.torch", "to write safetensors weights (or use weights_format='torch')")
        data = st.save(tensors, metadata={"format": "pt", "supernet_export": str(EXPORT_FORMAT)})
        atomic_write_bytes(path, lambda fh: fh.write(data))
    else:
        atomic_write_bytes(path, lambda fh: torch.save(tensors, fh))


# -- model card ------------------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n / 1e6:.3f} M ({n:,})"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _model_card(doc: dict[str, Any], where: str) -> str:
    """MODEL_CARD.md text from an arch.json document; `where` is the directory shown in the snippets."""
    arch, space, card = doc["arch"], doc["space"], doc["card"]
    parsed, parsed_arch = spaces.from_dict(space, source="arch.json space"), Arch.from_dict(arch)
    c, r, n = doc["in_channels"], arch["resolution"], doc["num_classes"]
    macs, params = doc["cost"]["macs"], doc["cost"]["params"]
    lines = [
        f"# {space['name']} sub-network: {macs / 1e6:.2f} MMACs, {params / 1e6:.3f} M params",
        "",
        (
            f"Exported by supernet {doc['supernet_version']} on {doc['exported'][:10]}. A plain PyTorch network "
            "extracted from a once-for-all supernet, with its BatchNorm statistics; it runs without the supernet."
        ),
        "",
        "## Source",
        "",
        f"- run: `{card.get('source', 'not recorded')}`",
        f"- checkpoint SHA-256: `{card.get('checkpoint_id', 'not recorded')}`",
        f"- search space: `{space['name']}` ({len(space['stages'])} stages)",
    ]
    if "dataset" in card:
        lines.append(f"- data set: {card['dataset']}")
    if "budget" in card:
        lines.append(f"- chosen under the budget: `{card['budget']}`")
    if "lineage" in card:
        lines += ["", "## Lineage", ""]
        lines += [f"- {key}: `{json.dumps(value) if not isinstance(value, str) else value}`"
                  for key, value in card["lineage"].items()]
    lines += [
        "",
        "## Cost",
        "",
        "| MACs | parameters |",
        "|---:|---:|",
        f"| {_count(macs)} | {_count(params)} |",
        "",
        f"Multiply-adds of convolutions and linear layers for one {r}x{r} image (`supernet.cost`).",
        "",
        "## Accuracy",
        "",
    ]
    splits = [s for s in ("val", "test", "before") if s in card]
    if splits:
        lines += ["| split | top-1 | top-5 | images |", "|---|---:|---:|---:|"]
        for split in splits:
            result = card[split]
            label = "test, before (the network it came from)" if split == "before" else split
            lines.append(
                f"| {label} | {_percent(result['top1'])} | {_percent(result.get('top5'))} "
                f"| {result.get('images', 'n/a')} |"
            )
    else:
        lines.append("Not measured.")
    stem = space["stem"]
    lines += [
        "",
        "## Architecture",
        "",
        f"- input resolution {r}, {c} channel(s), {n} classes",
        f"- stem: width {arch['stem_width']}, kernel {stem['kernel']}, stride {stem['stride']}, {stem['activation']}",
        "",
        "| stage | width | depth | blocks | stride | choices |",
        "|---:|---:|---:|---|---:|---|",
    ]
    for s, stage in enumerate(parsed.stages):
        lines.append(
            f"| {s + 1} | {arch['widths'][s]} | {arch['depths'][s]} | {stage.genes_text(parsed_arch.stage(s))} "
            f"| {stage.stride} | {stage.describe()} |"
        )
    lines += [
        "",
        f"- head: last conv width {arch['head_width']}, {space['head']['activation']}, linear classifier",
        "",
        "## Input",
        "",
        f"- `images`: float32, shape (batch, {c}, {r}, {r}), NCHW; output `logits`: (batch, {n}), unnormalised",
    ]
    if "mean" in card and "std" in card:
        lines.append(
            f"- preprocessing: resize to {r}x{r}, scale pixels to [0, 1], subtract mean "
            f"{card['mean']} and divide by std {card['std']} per channel"
        )
    else:
        lines.append(
            f"- preprocessing: resize to {r}x{r}; normalisation not recorded, use the training data's"
        )
    files = [ARCH_FILE, doc["weights"]] + ([ONNX_FILE] if doc["onnx"] else [])
    quoted = json.dumps(where)
    lines += [
        "",
        "## Use",
        "",
        f"Files: {', '.join(f'`{f}`' for f in files)}.",
        "",
        "```python",
        "import supernet",
        "",
        f"model = supernet.load_subnet({quoted})  # torch.nn.Module in eval mode",
        f"logits = model(images)  # images: (N, {c}, {r}, {r}) float32, preprocessed as above",
        "```",
    ]
    if doc["onnx"]:
        lines += [
            "",
            "```python",
            "import numpy as np",
            "import onnxruntime as ort",
            "",
            f'session = ort.InferenceSession({json.dumps(where + "/" + ONNX_FILE)}, providers=["CPUExecutionProvider"])',
            f"images = np.zeros((1, {c}, {r}, {r}), dtype=np.float32)  # preprocessed as above",
            'logits = session.run(["logits"], {"images": images})[0]',
            "```",
        ]
    if "notes" in card:
        lines += ["", "## Notes", "", card["notes"]]
    return "\n".join(lines) + "\n"
