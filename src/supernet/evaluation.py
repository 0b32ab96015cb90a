"""Evaluate sub-networks: BN recalibration on training images, then accuracy on a held-out split, cached.

A weight-shared supernet's BN running statistics describe whichever sub-networks trained last, so each
sub-network is measured after re-estimating them from training images (AttentiveNAS / OFA)::

    evaluator = Evaluator(net, bundle, batch_size=256, checkpoint_id=checkpoint_digest(path))
    evaluator.evaluate(arch)   # recalibrate on train, accuracy on val
    evaluator.evaluate(arch)   # cache hit: no forward pass

An evaluation leaves the supernet as it found it (BN statistics bit for bit, active arch, train/eval flags,
dropout rates, random streams), so the training loop can call it between epochs.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supernet.data import DataBundle, Dataset, Loader, resize_batch
from supernet.fileio import atomic_write_text
from supernet.model import Supernet
from supernet.space import Arch

SPLITS = ("val", "test")
CACHE_FORMAT = 1
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_STATS = ("running_mean", "running_var", "num_batches_tracked")
_Key = tuple[str, str, str, str]  # (checkpoint_id, settings JSON, arch JSON, split)


class CacheError(ValueError):
    """An evaluation cache file exists but cannot be used."""


@dataclass(frozen=True)
class EvalResult:
    """Accuracy on one split: top-1 and top-5 fractions (top5 None with <= 5 classes), mean cross-entropy."""

    top1: float
    top5: float | None
    loss: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Build from `to_dict` output."""
        top5 = d["top5"]
        return cls(
            float(d["top1"]), None if top5 is None else float(top5), float(d["loss"]), int(d["images"])
        )


# -- BN statistics -------------------------------------------------------------------------------


def _batch_norms(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m) for name, m in net.named_modules() if isinstance(m, _BATCH_NORMS) and m.track_running_stats
    ]


def bn_state(net: nn.Module) -> dict[str, dict[str, Tensor]]:
    """Copies of every BatchNorm's running mean, variance and batch count, by module name."""
    return {name: {key: getattr(m, key).clone() for key in _STATS} for name, m in _batch_norms(net)}


@torch.no_grad()
def restore_bn_state(net: nn.Module, state: dict[str, dict[str, Tensor]]) -> None:
    """Copy statistics saved by `bn_state` back into the same tensors, bit for bit."""
    norms = dict(_batch_norms(net))
    if norms.keys() != state.keys():
        raise ValueError(
            f"BN state of {len(state)} layers does not match the network's {len(norms)} BatchNorm layers; "
            "restore it into the network it was saved from"
        )
    for name, m in norms.items():
        for key in _STATS:
            getattr(m, key).copy_(state[name][key])


@contextmanager
def preserved_bn_state(net: nn.Module) -> Iterator[None]:
    """Run the body, then put every BatchNorm's running statistics back as they were."""
    state = bn_state(net)
    try:
        yield
    finally:
        restore_bn_state(net, state)


@contextmanager
def _preserved_modes(net: nn.Module) -> Iterator[None]:
    # Per module, not net.train(flag): a caller may have frozen parts of the network in eval mode.
    modes = [(m, m.training) for m in net.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _device(module: nn.Module) -> torch.device:
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def recalibrate_bn(
    net: Supernet, arch: Arch, batches: Iterable[Tensor | tuple[Tensor, Tensor]], num_images: int
) -> int:
    """Activate `arch` and re-estimate every BN's running statistics from up to `num_images` images.

    Streams `batches` (images, or (images, labels) pairs), resized to `arch.resolution`, and stops pulling
    as soon as `num_images` were seen (the last batch truncated). Returns the number of images used.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    net.set_active(arch)
    norms = [m for _, m in _batch_norms(net)]
    momenta = [m.momentum for m in norms]
    rates = net.dropout_rate, net.drop_connect_rate
    device = _device(net)
    for m in norms:
        m.reset_running_stats()
    iterator = iter(batches)
    seen = 0
    net.dropout_rate = net.drop_connect_rate = 0.0
    try:
        with _preserved_modes(net):
            net.train()
            for batch in iterator:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                # Hold nothing across steps: the batch dies as soon as its forward pass ends.
                del batch
                images = images[: num_images - seen]
                if len(images):
                    seen += len(images)
                    # Momentum n_batch / n_seen weights each batch by its size, so the running mean is the
                    # mean over all images even with a truncated last batch; with equal batches this is
                    # torch's cumulative average (momentum=None).
                    for m in norms:
                        m.momentum = len(images) / seen
                    net(resize_batch(images.to(device), arch.resolution))
                del images
                if seen >= num_images:
                    break
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.dropout_rate, net.drop_connect_rate = rates
        if iterator is not batches and hasattr(iterator, "close"):
            iterator.close()  # we made this iterator: release its workers now, not at garbage collection
    if seen == 0:
        raise ValueError("BN recalibration got no images; pass a non-empty training split")
    return seen


@torch.no_grad()
def accuracy(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], resolution: int | None, num_classes: int
) -> EvalResult:
    """Top-1, top-5 (when num_classes > 5) and mean cross-entropy of `model` in eval mode over `batches`.

    Works for a supernet (its active arch) and for any plain module; images are resized to `resolution`
    unless it is None. The module's train/eval flags are restored afterwards.
    """
    device = _device(model)
    k = 5 if num_classes > 5 else 1
    images = 0
    correct = torch.zeros(2, dtype=torch.int64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    with _preserved_modes(model):
        model.eval()
        for x, y in batches:
            if not len(y):
                continue
            x, y = x.to(device), y.to(device)
            logits = model(x if resolution is None else resize_batch(x, resolution))
            if logits.shape != (len(y), num_classes):
                raise ValueError(
                    f"model output has shape {tuple(logits.shape)}, expected ({len(y)}, {num_classes}); "
                    "is num_classes the data set's?"
                )
            loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
            # One topk for both counts, so ties can never make top-1 correct but top-5 wrong.
            hit = logits.topk(k, dim=1).indices == y[:, None]
            correct[0] += hit[:, 0].sum()
            correct[1] += hit.any(dim=1).sum()
            images += len(y)
    if images == 0:
        raise ValueError("accuracy got no images; the split is empty")
    top1, top5 = (int(c) / images for c in correct.tolist())
    return EvalResult(top1, top5 if num_classes > 5 else None, float(loss) / images, images)


# -- cached evaluation -----------------------------------------------------------------------------


class Evaluator:
    """Accuracy of a supernet's sub-networks after BN recalibration, cached by (checkpoint, arch, split).

    Recalibration uses the first `recalibration_images` (default 64 batches) of the training split in
    a fixed order seeded by `seed`, without augmentation, so results are deterministic. Results are keyed
    by `checkpoint_id` (e.g. `checkpoint_digest` of the weights file), the arch, the split and these
    settings; with `cache_path` they persist as JSON, so no sub-network is evaluated twice across processes
    (a cache file that cannot be written is reported in `cache_problem`, and evaluation goes on).
    `checkpoint_id` must identify the data split too if several runs share one cache file.
    """

    def __init__(
        self,
        net: Supernet,
        data: DataBundle,
        batch_size: int,
        checkpoint_id: str,
        *,
        recalibration_images: int | None = None,
        seed: int = 0,
        cache_path: str | os.PathLike[str] | None = None,
        num_workers: int = 0,
    ) -> None:
        recalibration_images = 64 * batch_size if recalibration_images is None else recalibration_images
        if batch_size < 1 or recalibration_images < 1:
            raise ValueError(
                f"batch_size and recalibration_images must be >= 1, got {batch_size} and {recalibration_images}"
            )
        if not checkpoint_id:
            raise ValueError("checkpoint_id must be a non-empty string, e.g. checkpoint_digest(path)")
        if net.num_classes != data.num_classes:
            raise ValueError(
                f"the supernet has {net.num_classes} classes but the data set {data.num_classes}"
            )
        self.net, self.data, self.checkpoint_id = net, data, checkpoint_id
        self.batch_size, self.recalibration_images, self.seed = batch_size, recalibration_images, seed
        self.num_workers = num_workers
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.hits = 0
        self.misses = 0
        self.cache_problem: str | None = None  # why the cache file could not be written, once it failed
        self._settings = json.dumps(
            {"batch_size": batch_size, "recalibration_images": recalibration_images, "seed": seed},
            sort_keys=True,
        )
        self._cache: dict[_Key, EvalResult] = {} if self.cache_path is None else _read_cache(self.cache_path)

    def evaluate(self, arch: Arch, split: str = "val") -> EvalResult:
        """Accuracy of `arch` on `split` ("val" or "test") after BN recalibration; cached."""
        dataset = self._dataset(split)
        self.net.space.validate(arch)
        key = (self.checkpoint_id, self._settings, arch.to_json(), split)
        if key in self._cache:
            self.hits += 1
            return self._cache[key]
        self.misses += 1
        with self._untouched():
            self._recalibrate(arch)
            result = accuracy(
                self.net, self._batches(dataset, shuffle=False), arch.resolution, self.data.num_classes
            )
        self._cache[key] = result
        if self.cache_path is not None and self.cache_problem is None:
            try:
                _write_cache(self.cache_path, self._cache)
            except OSError as err:  # a full or read-only disk costs the cache, never the result
                self.cache_problem = (f"evaluation cache {self.cache_path} could not be written "
                                      f"({err.strerror or err}); results of this process are kept in memory only")
        return result

    def evaluate_many(self, archs: Iterable[Arch], split: str = "val") -> list[EvalResult]:
        """`evaluate` each arch in order."""
        return [self.evaluate(arch, split) for arch in archs]

    def extract(self, arch: Arch) -> nn.Module:
        """A standalone network of `arch` with recalibrated BN statistics, in eval mode (what to deploy)."""
        with self._untouched():
            self._recalibrate(arch)
            return self.net.extract(arch).eval()

    def recalibration_batches(self) -> Loader:
        """The training batches recalibration draws from: seeded order, no augmentation."""
        return self._batches(self.data.train, shuffle=True)

    def split_batches(self, split: str = "val") -> Loader:
        """The batches accuracy is measured on for `split`."""
        return self._batches(self._dataset(split), shuffle=False)

    def _recalibrate(self, arch: Arch) -> None:
        recalibrate_bn(self.net, arch, self.recalibration_batches(), self.recalibration_images)

    def _batches(self, dataset: Dataset, shuffle: bool) -> Loader:
        return Loader(
            dataset,
            self.batch_size,
            seed=self.seed,
            epoch=0,
            shuffle=shuffle,
            augment=False,
            drop_last=False,
            num_workers=self.num_workers,
        )

    def _dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; evaluate on one of {SPLITS}")
        dataset = getattr(self.data, split)
        if dataset is None:
            raise ValueError(
                f"the data has no {split!r} split to evaluate on; set data.val_size > 0 to carve one "
                "from the training set"
            )
        return dataset

    @contextmanager
    def _untouched(self) -> Iterator[None]:
        active = self.net.active_arch
        with preserved_bn_state(self.net):
            try:
                yield
            finally:
                self.net.set_active(active)


def _read_cache(path: Path) -> dict[_Key, EvalResult]:
    fix = "delete it to start a fresh cache"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheError(f"evaluation cache {path} cannot be read ({err}); {fix}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != CACHE_FORMAT
        or not isinstance(doc.get("entries"), list)
    ):
        raise CacheError(
            f"evaluation cache {path} is not a supernet evaluation cache (format {CACHE_FORMAT}); {fix}"
        )
    cache = {}
    try:
        for entry in doc["entries"]:
            key = (
                str(entry["checkpoint"]),
                json.dumps(entry["settings"], sort_keys=True),
                Arch.from_dict(entry["arch"]).to_json(),
                str(entry["split"]),
            )
            cache[key] = EvalResult.from_dict(entry["result"])
    except (KeyError, TypeError, ValueError) as err:
        raise CacheError(f"evaluation cache {path} holds a malformed entry ({err}); {fix}") from None
    return cache


def _write_cache(path: Path, cache: dict[_Key, EvalResult]) -> None:
    # Merge with the file first: another process may have added entries since we read it.
    merged = {**_read_cache(path), **cache}
    entries = [
        {
            "checkpoint": checkpoint,
            "settings": json.loads(settings),
            "split": split,
            "arch": json.loads(arch),
            "result": result.to_dict(),
        }
        for (checkpoint, settings, arch, split), result in merged.items()
    ]
    text = json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1)
    atomic_write_text(path, text)
