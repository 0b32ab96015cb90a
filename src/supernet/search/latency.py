"""Real latency of sub-networks on this machine, and per-layer lookup tables that predict it for any device.

Measure a network directly (torch eager or onnxruntime; warm-up, then the median of timed repeats)::

    stats = arch_latency(space, arch, num_classes=10, backend="onnxruntime", threads=1)

or profile each distinct layer once and predict every candidate by summing table entries::

    table = LatencyTable.build(space, num_classes=10, backend="onnxruntime")  # on the target device
    table.save("phone.json")                                                  # copy the file back
    LatencyTable.load("phone.json").predict(arch)                             # anywhere, no measuring

A layer's cost depends only on its own shapes and settings (channels, kernel, expand ratio, stride,
squeeze-excite, activation, shortcut, input side, batch), so the table keys each entry by those. Building
a table needs only torch (and onnxruntime for that backend) on the target device: run `build` there and
copy the JSON back. A prediction is::

    overhead_ms + sum(entry[layer] - call_ms for layer in arch's layers)

`call_ms` is the fixed cost of one call (a trivial graph measured the same way): each layer was timed as
its own call, while a network pays it once. `overhead_ms` is then fitted as the median residual of a few
whole-network measurements taken during `build` (what per-layer timing misses: the call itself, cache
effects between layers); without calibration it defaults to `call_ms`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from supernet import spaces
from supernet.families.base import LayerKey, family_stages
from supernet.families.choice import ChoiceLayer  # noqa: F401  (re-exported: a table layer kind)
from supernet.families.elastic_mbconv import BlockLayer  # noqa: F401  (re-exported: a table layer kind)
from supernet.fileio import atomic_write_text
from supernet.model import build_static
from supernet.nn.static import Head, conv_bn_act
from supernet.nn.widths import conv_out_size, expanded_width
from supernet.onnx_bytes import onnx_bytes
from supernet.search.predictor import kendall_tau
from supernet.space import Arch, HeadSpec, SearchSpace, StemSpec

Backend = Literal["torch", "onnxruntime"]
BACKENDS = ("torch", "onnxruntime")
TABLE_FORMAT = 1


class LatencyError(ValueError):
    """Latency cannot be measured or predicted: an unreadable table, or a table from another device."""


class MissingLayerError(KeyError):
    """A latency table has no entry for a layer of the architecture it was asked about."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one forward pass in milliseconds: median and 90th percentile of `repeats` timed runs."""

    median_ms: float
    p90_ms: float
    repeats: int


# -- measuring ---------------------------------------------------------------------------------------


def measure_latency(
    module: nn.Module,
    input_shape: Sequence[int],
    *,
    backend: Backend = "torch",
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
) -> LatencyStats:
    """Time `module` on one input of `input_shape` (batch first): `warmup` untimed runs, then `repeats` timed ones."""
    _check_settings(backend, threads, warmup, repeats)
    ref = next(module.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    runner = _torch_call if backend == "torch" else _onnxruntime_call
    with runner(module, x, threads) as call:
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
    return LatencyStats(
        median_ms=statistics.median(times), p90_ms=float(np.percentile(times, 90)), repeats=repeats
    )


def arch_latency(
    space: SearchSpace,
    arch: Arch,
    num_classes: int,
    in_channels: int | None = None,
    batch: int = 1,
    *,
    backend: Backend = "torch",
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
) -> LatencyStats:
    """Latency of the extracted `arch` (freshly initialised: latency does not depend on the weights)."""
    in_channels = space.in_channels if in_channels is None else in_channels
    with torch.random.fork_rng(devices=[]):  # weight init must not consume the caller's global RNG
        net = build_static(space, arch, num_classes, in_channels)
    shape = (batch, in_channels, arch.resolution, arch.resolution)
    return measure_latency(net, shape, backend=backend, threads=threads, warmup=warmup, repeats=repeats)


def device_name() -> str:
    """This machine's processor and core count, recorded in tables so entries are not mixed across devices."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = cpu or platform.processor() or "unknown cpu"
    return f"{cpu} ({platform.machine()}, {os.cpu_count()} cpus)"


def runtime_version(backend: Backend) -> str:
    """Name and version of the library that runs `backend`."""
    if backend == "torch":
        return f"torch {torch.__version__}"
    return f"onnxruntime {_onnxruntime().__version__}"


def _check_settings(backend: str, threads: int, warmup: int, repeats: int, batch: int = 1) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {list(BACKENDS)}")
    if threads < 1 or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"latency settings need threads >= 1, batch >= 1, repeats >= 1, warmup >= 0; got threads={threads}, "
            f"batch={batch}, repeats={repeats}, warmup={warmup}"
        )


@contextmanager
def _torch_call(module: nn.Module, x: Tensor, threads: int) -> Iterator[Callable[[], object]]:
    """A no-argument call of `module(x)` in eval + inference mode with `threads` torch threads (all restored)."""
    was_training, old_threads = module.training, torch.get_num_threads()
    torch.set_num_threads(threads)
    module.eval()
    try:
        with torch.inference_mode():
            if x.device.type == "cuda":  # kernels run asynchronously: wait for them inside the timed call
                yield lambda: (module(x), torch.cuda.synchronize(x.device))
            else:
                yield lambda: module(x)
    finally:
        module.train(was_training)
        torch.set_num_threads(old_threads)


@contextmanager
def _onnxruntime_call(module: nn.Module, x: Tensor, threads: int) -> Iterator[Callable[[], object]]:
    """A no-argument onnxruntime (CPU) run of `module` exported to an in-memory ONNX model."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes(module, x, dynamic_batch=False), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    yield lambda: session.run(None, feed)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise LatencyError(
            "backend 'onnxruntime' needs the onnxruntime and onnx packages: pip install onnxruntime onnx"
        ) from None
    return onnxruntime


# -- layers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StemLayer(LayerKey):
    """The first conv + BN + activation on a `side` x `side` input."""

    in_c: int
    out_c: int
    kernel: int
    stride: int
    activation: str
    side: int
    kind = "stem"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return conv_bn_act(self.in_c, self.out_c, self.kernel, self.stride, self.activation)


def _stem_layer(stem: StemSpec, in_c: int, width: int, side: int) -> tuple[StemLayer, int]:
    out = conv_out_size(side, stem.kernel, stem.stride)
    return StemLayer(in_c, width, stem.kernel, stem.stride, stem.activation, side), out


@dataclass(frozen=True)
class HeadLayer(LayerKey):
    """The head (expand conv, pool, mix conv, classifier) on a `side` x `side` input."""

    in_c: int
    mid: int
    width: int
    num_classes: int
    activation: str
    side: int
    kind = "head"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return Head(self.in_c, self.mid, self.width, self.num_classes, self.activation)


@dataclass(frozen=True)
class ClassifierLayer(LayerKey):
    """MobileNetV1's head (pool, classifier) on a `side` x `side` input of `in_c` channels."""

    in_c: int
    num_classes: int
    side: int
    kind = "classifier"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return Head(self.in_c, self.in_c, self.in_c, self.num_classes, "relu", mix=False, conv=False)


@dataclass(frozen=True)
class PoolHeadLayer(LayerKey):
    """The MobileNetV2 / ProxylessNAS head (expand conv to `width`, pool, classifier) on a `side` x `side` input."""

    in_c: int
    width: int
    num_classes: int
    activation: str
    side: int
    kind = "pool_head"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return Head(self.in_c, self.width, self.width, self.num_classes, self.activation, mix=False)


Layer = LayerKey  # StemLayer, a family's block layers, HeadLayer, PoolHeadLayer, ClassifierLayer


def _head_layer(head: HeadSpec, c: int, width: int, num_classes: int, side: int) -> Layer:
    if not head.conv:
        return ClassifierLayer(c, num_classes, side)
    if not head.mix:
        return PoolHeadLayer(c, width, num_classes, head.activation, side)
    return HeadLayer(c, expanded_width(c, head.expand_ratio), width, num_classes, head.activation, side)


def arch_layers(
    space: SearchSpace, arch: Arch, num_classes: int, in_channels: int | None = None
) -> list[Layer]:
    """The layers of the extracted `arch`, in order: stem, each block that costs something, head."""
    space.validate(arch)
    spec = space.spec
    in_channels = space.in_channels if in_channels is None else in_channels
    stem, side = _stem_layer(spec.stem, in_channels, arch.stem_width, arch.resolution)
    layers: list[Layer] = [stem]
    c = arch.stem_width
    for s, st in enumerate(family_stages(space)):
        for b, gene in enumerate(arch.blocks[s]):
            layer, side = st.block_layer(b, c, arch.widths[s], gene, side)
            if layer is not None:
                layers.append(layer)
            c = arch.widths[s]
    layers.append(_head_layer(spec.head, c, arch.head_width, num_classes, side))
    return layers


def space_layers(space: SearchSpace, num_classes: int, in_channels: int | None = None) -> set[Layer]:
    """Every distinct layer that some sub-network of `space` contains (enumerated exactly, without sampling archs)."""
    spec = space.spec
    in_channels = space.in_channels if in_channels is None else in_channels
    if spec.width_multiplier is not None:  # widths move together: far fewer layers than per-layer choices give
        return {
            layer
            for m in space.tied_multipliers()
            for r in spec.resolutions
            for layer in arch_layers(space, space.at_width(m, r), num_classes, in_channels)
        }
    layers: set[Layer] = set()
    states: set[tuple[int, int]] = set()  # (channels, side) reachable at the current point of the network
    for r in spec.resolutions:
        for w in spec.stem.widths:
            stem, side = _stem_layer(spec.stem, in_channels, w, r)
            layers.add(stem)
            states.add((w, side))
    for st in family_stages(space):
        stage_layers, states = st.stage_layers(states)
        layers |= stage_layers
    for c, side in states:
        for w in spec.head.widths if spec.head.conv else [c]:
            layers.add(_head_layer(spec.head, c, w, num_classes, side))
    return layers


def _sorted(layers: Iterable[Layer]) -> list[Layer]:
    return sorted(layers, key=lambda layer: layer.key)


# -- lookup table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSettings:
    """How a table's entries were measured; predictions are valid for these settings only."""

    backend: Backend
    batch: int
    threads: int
    warmup: int
    repeats: int
    device: str
    runtime: str


@dataclass(frozen=True)
class TableError:
    """A latency table's prediction error on held-out sub-networks (a result, not an exception)."""

    mean_abs_pct: float
    max_abs_pct: float
    rank_correlation: float
    n: int
    predicted_ms: tuple[float, ...] = ()
    measured_ms: tuple[float, ...] = ()


class LatencyTable:
    """Per-layer latency lookup table of one search space on one device; predicts a sub-network's latency."""

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        in_channels: int,
        settings: TableSettings,
        entries: dict[str, float],
        call_ms: float,
        overhead_ms: float,
    ):
        self.space = space
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.settings = settings
        self.entries = dict(entries)
        self.call_ms = call_ms
        self.overhead_ms = overhead_ms

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"LatencyTable({self.space.name!r}, {len(self)} layers, {s.backend}, batch={s.batch}, "
            f"threads={s.threads}, device={s.device!r})"
        )

    @classmethod
    def build(
        cls,
        space: SearchSpace,
        num_classes: int,
        in_channels: int | None = None,
        *,
        archs: Sequence[Arch] | None = None,
        backend: Backend = "torch",
        batch: int = 1,
        threads: int = 1,
        warmup: int = 5,
        repeats: int = 20,
        calibrate: int = 5,
        max_layers: int = 2000,
        samples: int = 100,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> LatencyTable:
        """Profile, on this machine, every layer of `archs` (default: every layer of the space, or sampled archs).

        With `archs=None` all distinct layers of the space are profiled when there are at most `max_layers`;
        otherwise those of `samples` seeded random archs plus the largest and smallest. `calibrate` whole
        networks (seeded, drawn from `archs` or the space) fit the per-network overhead. `progress(done, total)`
        is called after each layer.
        """
        _check_settings(backend, threads, warmup, repeats, batch)
        in_channels = space.in_channels if in_channels is None else in_channels
        rng = random.Random(seed)
        if archs is None:
            layers = space_layers(space, num_classes, in_channels)
            if len(layers) > max_layers:
                sampled = [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(samples)]
                layers = {layer for a in sampled for layer in arch_layers(space, a, num_classes, in_channels)}
            calibration = [space.sample(rng) for _ in range(calibrate)]
        else:
            layers = {layer for a in archs for layer in arch_layers(space, a, num_classes, in_channels)}
            calibration = rng.sample(list(archs), min(calibrate, len(archs)))
        layers |= {layer for a in calibration for layer in arch_layers(space, a, num_classes, in_channels)}
        settings = TableSettings(
            backend, batch, threads, warmup, repeats, device_name(), runtime_version(backend)
        )
        table = cls(space, num_classes, in_channels, settings, {}, call_ms=0.0, overhead_ms=0.0)
        table.call_ms = table._measure(_Trivial(), (batch, in_channels, 4, 4))
        table.profile(_sorted(layers), progress)
        table.overhead_ms = table.call_ms
        if calibration:
            residuals = [table.measure(a) - table._layer_sum(a) for a in calibration]
            table.overhead_ms = statistics.median(residuals)
        return table

    def layers(self, arch: Arch) -> list[Layer]:
        """The layers of `arch` that the table looks up."""
        return arch_layers(self.space, arch, self.num_classes, self.in_channels)

    def missing(self, arch: Arch) -> list[Layer]:
        """Layers of `arch` with no table entry."""
        return [layer for layer in self.layers(arch) if layer.key not in self.entries]

    def predict(self, arch: Arch, *, measure_missing: bool = False) -> float:
        """Predicted latency of `arch` in ms; unprofiled layers raise MissingLayerError unless `measure_missing`."""
        missing = self.missing(arch)
        if missing and not measure_missing:
            raise MissingLayerError(
                f"latency table has no entry for layer {missing[0].key}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; build the table with this arch in `archs`, or predict with measure_missing=True on its device"
            )
        if missing:
            self.profile(missing)
        return self.overhead_ms + self._layer_sum(arch)

    def profile(self, layers: Iterable[Layer], progress: Callable[[int, int], None] | None = None) -> None:
        """Measure `layers` on this machine (which must be the table's device) and store their entries."""
        self._check_device()
        todo = [layer for layer in dict.fromkeys(layers) if layer.key not in self.entries]
        for i, layer in enumerate(todo):
            with torch.random.fork_rng(devices=[]):  # weight init must not consume the caller's global RNG
                module = layer.module()
            self.entries[layer.key] = self._measure(module, layer.input_shape(self.settings.batch))
            if progress is not None:
                progress(i + 1, len(todo))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (inverse of `from_dict`)."""
        return {
            "format": TABLE_FORMAT,
            "settings": dataclasses.asdict(self.settings),
            "space": self.space.to_dict(),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "call_ms": self.call_ms,
            "overhead_ms": self.overhead_ms,
            "entries": dict(sorted(self.entries.items())),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "latency table") -> LatencyTable:
        """Rebuild a table from `to_dict` output; raises LatencyError naming what is wrong."""
        if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise LatencyError(f"{source}: not a latency table of format {TABLE_FORMAT} (format {got!r})")
        try:
            return cls(
                space=spaces.from_dict(d["space"], source=f"{source} space"),
                num_classes=int(d["num_classes"]),
                in_channels=int(d["in_channels"]),
                settings=TableSettings(**d["settings"]),
                entries={str(k): float(v) for k, v in d["entries"].items()},
                call_ms=float(d["call_ms"]),
                overhead_ms=float(d["overhead_ms"]),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise LatencyError(f"{source}: malformed latency table ({type(err).__name__}: {err})") from None

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by `save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise LatencyError(f"latency table {path}: {err.strerror or err}") from None
        except json.JSONDecodeError as err:
            raise LatencyError(f"latency table {path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=f"latency table {path}")

    def _layer_sum(self, arch: Arch) -> float:
        return sum(self.entries[layer.key] - self.call_ms for layer in self.layers(arch))

    def _check_device(self) -> None:
        here = device_name()
        if here != self.settings.device:
            raise LatencyError(
                f"this latency table was built on {self.settings.device!r}, not this machine ({here!r}); "
                "measure on that device or build a new table here"
            )

    def _measure(self, module: nn.Module, shape: Sequence[int]) -> float:
        s = self.settings
        stats = measure_latency(
            module, shape, backend=s.backend, threads=s.threads, warmup=s.warmup, repeats=s.repeats
        )
        return stats.median_ms

    def measure(self, arch: Arch) -> float:
        """Median whole-network latency of `arch` in ms, measured here with the table's settings."""
        s = self.settings
        stats = arch_latency(
            self.space,
            arch,
            self.num_classes,
            self.in_channels,
            s.batch,
            backend=s.backend,
            threads=s.threads,
            warmup=s.warmup,
            repeats=s.repeats,
        )
        return stats.median_ms


class _Trivial(nn.Module):
    """The cheapest graph that still reads its input: what one call costs with no layer in it."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :1, :1, :1] * 2.0


def evaluate_table(table: LatencyTable, archs: Sequence[Arch]) -> TableError:
    """Compare the table's predictions with whole-network measurements of `archs` on this machine (held out)."""
    if not archs:
        raise ValueError("evaluate_table needs at least one architecture")
    table._check_device()
    predicted = [table.predict(a) for a in archs]
    measured = [table.measure(a) for a in archs]
    errors = [abs(p - m) / m * 100.0 for p, m in zip(predicted, measured)]
    tau = kendall_tau(predicted, measured) if len(archs) > 1 else float("nan")
    return TableError(
        mean_abs_pct=float(np.mean(errors)),
        max_abs_pct=float(np.max(errors)),
        rank_correlation=tau,
        n=len(archs),
        predicted_ms=tuple(predicted),
        measured_ms=tuple(measured),
    )
