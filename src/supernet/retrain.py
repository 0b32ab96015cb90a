"""After the search: train one fixed network on the supernet's training loop.

- Fine-tune an exported sub-network with the weights it inherited (AlphaNet's and OFA's "finetuned 75
  epochs"), or retrain its architecture from scratch (EnNAS section 4: the searched network is retrained).
- Transfer it to another data set or class subset: the classifier is replaced, the rest inherited, with
  an optional frozen backbone or layer-wise learning rates (AlphaNet section 4.3).
- Distil one network from a frozen teacher (AlphaNet Tables 5-6, Appendix C: (1 - lambda) CE +
  lambda T^2 KL, lambda = 0.9, or the adaptive alpha-divergence in place of the KL).

Each builds a `Config` whose space is the network's one-network space (`SearchSpace.pinned`) and whose
`network` section says where its weights come from; `Trainer` trains it like any run (resume, logging,
DDP), and `export_network` writes the result as an export of the original space with its lineage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from supernet import spaces
from supernet.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from supernet.evaluation import EvalResult
from supernet.export import export_subnet, verify_onnx
from supernet.exported import export_root, is_export_dir, read_doc
from supernet.runs import load_supernet, read_arch
from supernet.search.job import open_run
from supernet.space import Arch, SearchSpace

FINETUNE_LR_FACTOR = 0.1  # inherited weights fine-tune at a tenth of their run's peak lr, without warm-up
# AlphaNet Appendix C: (1 - lambda) CE + lambda T^2 KL with lambda = 0.9 and T = 1 (Tables 5-6).
DISTILL_DEFAULTS: dict[str, Any] = {"divergence": "kl", "options": {"temperature": 1.0}, "kd_weight": 0.9,
                                    "ce_weight": 0.1}


@dataclass(frozen=True)
class NetworkSource:
    """A network to train: its space and architecture, where its weights can come from, what it was trained for."""

    kind: Literal["export", "run", "space"]
    space: SearchSpace
    arch: Arch
    weights: str | None  # an export or run directory holding trained weights; None for a bare space
    card: dict[str, Any]  # the export's model-card facts; {} for a run or a space
    dataset: str | None
    run_config: Path | None  # the config.yaml of the run the network was trained in, when it is on disk


def network_source(source: str | os.PathLike[str], arch: str | None = None) -> NetworkSource:
    """An export directory, a run directory or checkpoint (with `arch`, default largest), or a space (a preset
    name or YAML, with `arch`: largest, smallest, a width like 0.5x or an ARCH.json)."""
    text = str(source)
    if is_export_dir(source):
        if arch is not None:
            raise ConfigError(f"--arch picks a network of a run or a space; {text} is an export, one network already")
        root = export_root(source)
        doc = read_doc(root)
        space = spaces.from_dict(doc["space"], source=f"{root} (space)")
        card = dict(doc.get("card") or {})
        run = Path(card["source"]) if card.get("source") else None
        run_config = run / "config.yaml" if run is not None and (run / "config.yaml").is_file() else None
        return NetworkSource("export", space, space.validate(Arch.from_dict(doc["arch"])), str(root), card,
                             card.get("dataset"), run_config)
    if Path(text).exists() and Path(text).suffix not in (".yaml", ".yml"):
        loaded = load_supernet(text)
        run_dir = Path(text) if Path(text).is_dir() else None
        config = run_dir / "config.yaml" if run_dir is not None and (run_dir / "config.yaml").is_file() else None
        return NetworkSource("run", loaded.space, read_arch(loaded.space, arch or "largest"), text, {},
                             loaded.config["data"]["name"], config)
    space = spaces.get(text)
    return NetworkSource("space", space, read_arch(space, arch or "largest"), None, {}, None, None)


def finetune_config(
    export_dir: str | os.PathLike[str],
    *,
    epochs: float,
    recipe: str | os.PathLike[str] | None = None,
    from_scratch: bool = False,
    teacher: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    classes: Sequence[int] | None = None,
    freeze_backbone: bool = False,
    layer_lr_decay: float = 1.0,
    overrides: Sequence[str] = (),
) -> Config:
    """Continue training an exported sub-network (or retrain it `from_scratch`), optionally on other data.

    The base settings are `recipe`'s, else those of the run the export came from with the lr cut to
    `FINETUNE_LR_FACTOR` of its peak and no warm-up (a fresh run's lr and warm-up with `from_scratch`),
    else the defaults. `teacher` (an export or run) adds distillation with the base's divergence.
    """
    source = network_source(export_dir)
    if source.weights is None:
        raise ConfigError(f"{export_dir} is not an export directory; fine-tune takes one of `supernet export`")
    base = _base_settings(recipe, source.run_config)
    if recipe is None and source.run_config is not None and not from_scratch:
        base["optim"]["lr"] = round(base["optim"]["lr"] * FINETUNE_LR_FACTOR, 12)
        base["optim"]["warmup_epochs"] = 0.0
    method = "retrain from scratch" if from_scratch else "fine-tune"
    return _fixed_config(base, source, method=method, settings_from=str(recipe or source.run_config or "defaults"),
                         inherit=not from_scratch, teacher=teacher, epochs=epochs,
                         data=data, data_root=data_root, classes=classes, freeze_backbone=freeze_backbone,
                         layer_lr_decay=layer_lr_decay, overrides=overrides)


def distill_config(
    student: str | os.PathLike[str],
    teacher: str,
    *,
    recipe: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    from_scratch: bool = False,
    epochs: float | None = None,
    data: str | None = None,
    data_root: str | None = None,
    classes: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> Config:
    """Train one network from a frozen `teacher` (an export, or a run's largest network) with the recipe's
    divergence (without a recipe: AlphaNet's KL at T = 1, 0.9 KD + 0.1 CE).

    `student` is an export (its weights inherited unless `from_scratch`), a run with `arch` (trained from
    scratch: AlphaNet Tables 5-6 train their students from scratch), or a space with `arch`.
    """
    source = network_source(student, arch)
    base = _base_settings(recipe, None)
    if recipe is None:
        base["distill"] = dict(DISTILL_DEFAULTS)
        base["optim"]["label_smoothing"] = 0.0  # Eq. 7-8's CE is on the plain labels
    inherit = source.kind == "export" and not from_scratch  # a run's or a space's network trains from scratch
    return _fixed_config(base, source, method="distill", settings_from=str(recipe or "defaults"), inherit=inherit,
                         teacher=teacher, epochs=epochs, data=data,
                         data_root=data_root, classes=classes, freeze_backbone=False, layer_lr_decay=1.0,
                         overrides=overrides)


def _base_settings(recipe: str | os.PathLike[str] | None, run_config: Path | None) -> dict[str, Any]:
    path = recipe if recipe is not None else run_config
    return load_config(path).model_dump(mode="json")


def _fixed_config(
    base: dict[str, Any], source: NetworkSource, *, method: str, settings_from: str, inherit: bool, teacher: str | None,
    epochs: float | None, data: str | None, data_root: str | None, classes: Sequence[int] | None,
    freeze_backbone: bool, layer_lr_decay: float, overrides: Sequence[str],
) -> Config:
    """`base` turned into the fixed network's config: its pinned space, starting weights, teacher and data."""
    settings = dict(base)
    settings["space"] = source.space.pinned(source.arch).to_dict()
    settings["kernel_transform"] = False
    settings["sampler"] = {"name": "uniform", "num_random": 1}
    settings["schedule"] = {"name": "shrink_from_start"}
    settings["teacher"] = {"name": "none"} if teacher is None else {"name": "external", "checkpoint": str(teacher)}
    data_settings = dict(settings["data"])
    if data is not None:
        data_settings["name"] = data
        data_settings["root"] = data_root
    elif source.dataset is not None:
        if source.dataset != data_settings["name"]:
            data_settings["root"] = None  # the base's root belongs to another data set
        data_settings["name"] = source.dataset
    if data is None and data_root is not None:
        data_settings["root"] = data_root
    if classes is not None:
        data_settings["classes"] = [int(c) for c in classes]
    settings["data"] = data_settings
    if epochs is not None:
        settings["train"] = {**settings["train"], "epochs": epochs}
    init = source.weights if inherit and source.weights is not None else "scratch"
    origin = source.weights or f"{source.space.name} space, {source.space.arch_text(source.arch)}"
    lineage: dict[str, Any] = {"method": method, "from": origin, "settings": settings_from}
    for key in ("source", "checkpoint_id", "budget"):
        if source.card.get(key) is not None:
            lineage[{"source": "supernet_run"}.get(key, key)] = source.card[key]
    previous = source.card.get("lineage")
    if isinstance(previous, dict):  # the export was itself fine-tuned or distilled: keep its history
        lineage.update({k: previous[k] for k in ("supernet_run", "budget") if k in previous})
        lineage["previous"] = previous
    if teacher is not None:
        lineage["teacher"] = str(teacher)
    settings["network"] = {
        "init": init, "space": source.space.to_dict(), "arch": source.arch.to_dict(),
        "freeze_backbone": freeze_backbone, "layer_lr_decay": layer_lr_decay, "lineage": lineage,
    }
    return config_from_dict(apply_overrides(settings, list(overrides)), f"supernet {method}")


@dataclass(frozen=True)
class NetworkExport:
    """A trained fixed network's export: where it went, its accuracy, and the accuracy it started from."""

    path: Path
    val: EvalResult | None
    test: EvalResult
    before: dict[str, Any] | None  # the starting export's test result, when measured on the same task
    onnx_diff: float | None


def export_network(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *, onnx: bool = True,
    overwrite: bool = False,
) -> NetworkExport:
    """Export a trained fixed network (default: into RUN/export) as a network of its original space, with a
    model card of its lineage, its val/test accuracy after BN recalibration and, when it started from an
    export of the same task, that export's test accuracy before."""
    opened = open_run(run_dir, cache_path=Path(run_dir) / "eval_cache.json")
    network = opened.run.config.get("network")
    if not network or network.get("space") is None:
        raise ConfigError(f"{run_dir} trained a supernet, not one network; export a sub-network with "
                          "`supernet export RUN --arch ...`")
    space = spaces.from_dict(network["space"], source=f"{run_dir} (network.space)")
    arch = space.validate(Arch.from_dict(network["arch"]))
    trained = opened.run.space.largest()
    ev, data = opened.evaluator, opened.data
    val = ev.evaluate(trained, "val") if data.val is not None else None
    test = ev.evaluate(trained, "test")
    run_config = opened.run.config
    lineage = dict(network["lineage"])
    lineage.update({
        "init": network["init"], "epochs": run_config["train"]["epochs"], "lr": run_config["optim"]["lr"],
        "data": data.name, "classes": run_config["data"].get("classes"),
        "freeze_backbone": network["freeze_backbone"], "layer_lr_decay": network["layer_lr_decay"],
    })
    if run_config["teacher"]["name"] == "external":
        d = run_config["distill"]
        lineage["loss"] = (f"{d['kd_weight']:g} x {d['divergence']}{_options_text(d['options'])} + "
                           f"{d['ce_weight']:g} x CE")
    card: dict[str, Any] = {
        "source": str(run_dir), "checkpoint_id": opened.run.checkpoint_id, "dataset": data.name, "test": test,
        "mean": data.train.normalizer.mean, "std": data.train.normalizer.std, "lineage": lineage,
    }
    if val is not None:
        card["val"] = val
    before = _accuracy_before(str(lineage.get("from", "")), data.name, run_config["data"].get("classes"))
    if before is not None:
        card["before"] = before
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "export"
    export_subnet(ev.extract(trained), space, arch, opened.run.num_classes, opened.run.in_channels, out, card=card,
                  onnx=onnx, overwrite=overwrite)
    return NetworkExport(out, val, test, before, verify_onnx(out) if onnx else None)


def _options_text(options: dict[str, Any]) -> str:
    return "" if not options else "(" + ", ".join(f"{k}={v}" for k, v in sorted(options.items())) + ")"


def _accuracy_before(origin: str, dataset: str, classes: list[int] | None) -> dict[str, Any] | None:
    """The export the network came from: its test accuracy, when measured on the same task (data, all classes)."""
    if not origin or classes is not None or not is_export_dir(origin):
        return None
    card = read_doc(export_root(origin)).get("card") or {}
    if card.get("dataset") != dataset or not isinstance(card.get("test"), dict):
        return None
    return dict(card["test"])
