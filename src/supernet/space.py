"""Search spaces of MBConv supernets and the architectures (`Arch`) sampled from them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Activation = Literal["relu", "relu6", "swish", "h_swish"]


class SpaceError(ValueError):
    """A search-space definition is invalid."""


class ArchError(ValueError):
    """An architecture is malformed or lies outside its search space."""


def _positive_unique(values: list, what: str) -> list:
    if not values:
        raise ValueError(f"{what} must list at least one choice")
    if any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has repeated choices {values}")
    return sorted(values)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StemSpec(_Spec):
    """The first convolution: width choices, kernel, stride, activation."""

    widths: list[int]
    kernel: int = 3
    stride: int = 2
    activation: Activation = "swish"

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "widths")

    @field_validator("kernel", "stride")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v


class StageSpec(_Spec):
    """One stage of MBConv blocks and its elastic choices."""

    widths: list[int]
    depths: list[int]
    kernels: list[int]
    expand_ratios: list[float]
    stride: int = 1
    se: bool = False
    activation: Activation = "swish"
    shortcut: Literal["conv", "identity"] = Field(
        "conv",
        description="conv: every block is residual (avg-pool + 1x1 conv when the shape changes, AttentiveNAS); "
        "identity: residual only when the shape is unchanged (OFA).",
    )

    @field_validator("widths", "depths", "expand_ratios")
    @classmethod
    def _choices(cls, v: list, info: Any) -> list:
        return _positive_unique(v, info.field_name)

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[int]) -> list[int]:
        v = _positive_unique(v, "kernels")
        if any(k % 2 == 0 for k in v):
            raise ValueError(f"kernels must be odd, got {v}")
        return v

    @field_validator("stride")
    @classmethod
    def _stride(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {v}")
        return v


class HeadSpec(_Spec):
    """Head: 1x1 expand conv (BN + act), global pool, 1x1 conv (act, no BN), linear classifier.

    With `mix: false` it is the MobileNetV2 / ProxylessNAS head instead: a 1x1 conv (BN + act) to one of
    `widths` channels, global pool, linear classifier (`expand_ratio` unused).
    """

    expand_ratio: float = 6.0
    widths: list[int]
    activation: Activation = "swish"
    mix: bool = True

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "widths")

    @field_validator("expand_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be positive")
        return v


class SpaceSpec(_Spec):
    """The full, validated description of a search space (what a preset YAML holds)."""

    name: str = "custom"
    description: str = ""
    in_channels: int = 3
    num_classes: int = Field(1000, description="classes of the task the preset is designed for (summaries' default)")
    stem: StemSpec
    stages: list[StageSpec]
    head: HeadSpec
    resolutions: list[int]

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "resolutions")

    @field_validator("in_channels", "num_classes")
    @classmethod
    def _in_channels(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @model_validator(mode="after")
    def _has_stages(self) -> SpaceSpec:
        if not self.stages:
            raise ValueError("stages must list at least one stage")
        return self


@dataclass(frozen=True)
class Arch:
    """One sub-network: resolution, stem/stage/head widths, stage depths, per-block kernels and ratios.

    `kernels[s]` and `expand_ratios[s]` hold one entry per active block of stage `s` (length `depths[s]`).
    """

    resolution: int
    stem_width: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    expand_ratios: tuple[tuple[float, ...], ...]
    head_width: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "kernels", tuple(tuple(int(k) for k in ks) for ks in self.kernels))
        object.__setattr__(
            self, "expand_ratios", tuple(tuple(_number(e) for e in es) for es in self.expand_ratios)
        )
        n = len(self.widths)
        if not (len(self.depths) == len(self.kernels) == len(self.expand_ratios) == n):
            raise ArchError(
                f"arch lists {n} widths, {len(self.depths)} depths, {len(self.kernels)} kernel lists and "
                f"{len(self.expand_ratios)} expand-ratio lists; give one of each per stage"
            )
        for s, (d, ks, es) in enumerate(zip(self.depths, self.kernels, self.expand_ratios)):
            if len(ks) != d or len(es) != d:
                raise ArchError(
                    f"stage {s} has depth {d} but {len(ks)} kernels and {len(es)} expand ratios; "
                    "give one kernel and one ratio per active block"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (inverse of `from_dict`)."""
        return {
            "resolution": self.resolution,
            "stem_width": self.stem_width,
            "widths": list(self.widths),
            "depths": list(self.depths),
            "kernels": [list(k) for k in self.kernels],
            "expand_ratios": [list(e) for e in self.expand_ratios],
            "head_width": self.head_width,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        """Build an Arch from `to_dict` output; raises ArchError naming missing or unknown keys."""
        if not isinstance(d, dict):
            raise ArchError(f"an architecture must be a JSON object, got {type(d).__name__}")
        expected = {"resolution", "stem_width", "widths", "depths", "kernels", "expand_ratios", "head_width"}
        missing, unknown = expected - d.keys(), d.keys() - expected
        if missing or unknown:
            hint = " (an AttentiveNAS/AlphaNet dict? use SearchSpace.arch_from_attentivenas)" if "width" in d else ""
            raise ArchError(
                f"architecture keys: missing {sorted(missing)}, unknown {sorted(unknown)}; expected "
                f"{sorted(expected)}{hint}"
            )
        try:
            return cls(
                resolution=int(d["resolution"]),
                stem_width=int(d["stem_width"]),
                widths=tuple(d["widths"]),
                depths=tuple(d["depths"]),
                kernels=tuple(tuple(k) for k in d["kernels"]),
                expand_ratios=tuple(tuple(e) for e in d["expand_ratios"]),
                head_width=int(d["head_width"]),
            )
        except (TypeError, ValueError) as err:
            if isinstance(err, ArchError):
                raise
            raise ArchError(f"malformed architecture: {err}") from err

    def to_json(self) -> str:
        """Compact JSON text of `to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Arch:
        """Parse `to_json` output."""
        return cls.from_dict(json.loads(text))


def _number(value: float) -> float | int:
    """Keep integral ratios as ints so JSON and hashing are stable (4 == 4.0)."""
    value = float(value)
    return int(value) if value.is_integer() else value


class SearchSpace:
    """What can be sampled: stem, MBConv stages, head and resolution choices."""

    def __init__(self, spec: SpaceSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        """The space's name."""
        return self.spec.name

    @property
    def stages(self) -> list[StageSpec]:
        """The stage specs, in order."""
        return self.spec.stages

    @property
    def in_channels(self) -> int:
        """Default number of input image channels."""
        return self.spec.in_channels

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "search space") -> SearchSpace:
        """Validate a dict against the schema; raises SpaceError with a one-line message per problem."""
        if not isinstance(d, dict):
            raise SpaceError(f"{source}: expected a mapping with keys stem, stages, head, resolutions")
        try:
            return cls(SpaceSpec.model_validate(d))
        except ValidationError as err:
            raise SpaceError(f"{source}: {describe_validation_error(err)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Load and validate a search space from a YAML file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SpaceError(f"search space file {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise SpaceError(f"search space file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 "
                             "YAML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpaceError(f"search space file {path} is not valid YAML: {err}".replace("\n", " ")) from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The space as a plain dict (round-trips through `from_dict`)."""
        return self.spec.model_dump()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, stages={len(self.stages)}, size={self.size():.3g})"

    # -- canonical members -------------------------------------------------------------------------
    def largest(self) -> Arch:
        """The sub-network with every choice at its maximum."""
        return self._extreme(max)

    def smallest(self) -> Arch:
        """The sub-network with every choice at its minimum."""
        return self._extreme(min)

    def _extreme(self, pick: Any) -> Arch:
        depths = tuple(pick(st.depths) for st in self.stages)
        return Arch(
            resolution=pick(self.spec.resolutions),
            stem_width=pick(self.spec.stem.widths),
            widths=tuple(pick(st.widths) for st in self.stages),
            depths=depths,
            kernels=tuple((pick(st.kernels),) * d for st, d in zip(self.stages, depths)),
            expand_ratios=tuple((pick(st.expand_ratios),) * d for st, d in zip(self.stages, depths)),
            head_width=pick(self.spec.head.widths),
        )

    # -- sampling and evolution --------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        """A sub-network drawn uniformly per dimension (each block's kernel and ratio independently)."""
        depths = tuple(rng.choice(st.depths) for st in self.stages)
        return Arch(
            resolution=rng.choice(self.spec.resolutions),
            stem_width=rng.choice(self.spec.stem.widths),
            widths=tuple(rng.choice(st.widths) for st in self.stages),
            depths=depths,
            kernels=tuple(tuple(rng.choice(st.kernels) for _ in range(d)) for st, d in zip(self.stages, depths)),
            expand_ratios=tuple(
                tuple(rng.choice(st.expand_ratios) for _ in range(d)) for st, d in zip(self.stages, depths)
            ),
            head_width=rng.choice(self.spec.head.widths),
        )

    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        """Resample each gene (resolution, widths, depths, each block's kernel and ratio) with probability `prob`."""
        self.validate(arch)

        def maybe(current: Any, choices: list) -> Any:
            return rng.choice(choices) if rng.random() < prob else current

        depths = tuple(maybe(d, st.depths) for d, st in zip(arch.depths, self.stages))
        kernels, ratios = [], []
        for s, st in enumerate(self.stages):
            ks, es = [], []
            for b in range(depths[s]):
                if b < arch.depths[s]:
                    ks.append(maybe(arch.kernels[s][b], st.kernels))
                    es.append(maybe(arch.expand_ratios[s][b], st.expand_ratios))
                else:  # a block that the depth mutation switched on gets fresh genes
                    ks.append(rng.choice(st.kernels))
                    es.append(rng.choice(st.expand_ratios))
            kernels.append(tuple(ks))
            ratios.append(tuple(es))
        return Arch(
            resolution=maybe(arch.resolution, self.spec.resolutions),
            stem_width=maybe(arch.stem_width, self.spec.stem.widths),
            widths=tuple(maybe(w, st.widths) for w, st in zip(arch.widths, self.stages)),
            depths=depths,
            kernels=tuple(kernels),
            expand_ratios=tuple(ratios),
            head_width=maybe(arch.head_width, self.spec.head.widths),
        )

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Each gene from either parent with equal probability (block genes from whichever parent has the block)."""
        self.validate(a)
        self.validate(b)

        def pick(x: Any, y: Any) -> Any:
            return x if rng.random() < 0.5 else y

        depths = tuple(pick(da, db) for da, db in zip(a.depths, b.depths))
        kernels, ratios = [], []
        for s, d in enumerate(depths):
            ks, es = [], []
            for i in range(d):
                parents = [p for p in (a, b) if i < p.depths[s]]
                ks.append(pick(*(p.kernels[s][i] for p in parents)) if len(parents) == 2 else parents[0].kernels[s][i])
                es.append(
                    pick(*(p.expand_ratios[s][i] for p in parents))
                    if len(parents) == 2
                    else parents[0].expand_ratios[s][i]
                )
            kernels.append(tuple(ks))
            ratios.append(tuple(es))
        return Arch(
            resolution=pick(a.resolution, b.resolution),
            stem_width=pick(a.stem_width, b.stem_width),
            widths=tuple(pick(wa, wb) for wa, wb in zip(a.widths, b.widths)),
            depths=depths,
            kernels=tuple(kernels),
            expand_ratios=tuple(ratios),
            head_width=pick(a.head_width, b.head_width),
        )

    def restrict(
        self,
        kernel: int | None = None,
        depth: int | None = None,
        expand: int | None = None,
        width: int | None = None,
        resolution: int | None = None,
    ) -> SearchSpace:
        """The sub-space keeping only the `n` largest choices of each named dimension (None: all).

        OFA's progressive shrinking trains such sub-spaces in turn (e.g. kernel=3, depth=1, expand=1).
        """

        def top(choices: list, n: int | None) -> list:
            if n is not None and n < 1:
                raise SpaceError(f"restrict keeps at least 1 choice per dimension, got {n}")
            return choices if n is None else choices[-n:]

        data = self.to_dict()
        data["resolutions"] = top(data["resolutions"], resolution)
        for st in data["stages"]:
            st["kernels"] = top(st["kernels"], kernel)
            st["depths"] = top(st["depths"], depth)
            st["expand_ratios"] = top(st["expand_ratios"], expand)
            st["widths"] = top(st["widths"], width)
        data["stem"]["widths"] = top(data["stem"]["widths"], width)
        data["head"]["widths"] = top(data["head"]["widths"], width)
        return SearchSpace.from_dict(data, source=f"{self.name} restricted")

    def size(self) -> int:
        """Number of distinct sub-networks in the space."""
        total = len(self.spec.resolutions) * len(self.spec.stem.widths) * len(self.spec.head.widths)
        for st in self.stages:
            per_block = len(st.kernels) * len(st.expand_ratios)
            total *= len(st.widths) * sum(per_block**d for d in st.depths)
        return total

    # -- validation --------------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Return `arch` if it lies in this space, else raise ArchError explaining the first problem."""
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch, got {type(arch).__name__}")
        if len(arch.widths) != len(self.stages):
            raise ArchError(
                f"arch has {len(arch.widths)} stages but space {self.name!r} has {len(self.stages)}"
            )
        _check_choice("resolution", arch.resolution, self.spec.resolutions)
        _check_choice("stem_width", arch.stem_width, self.spec.stem.widths)
        _check_choice("head_width", arch.head_width, self.spec.head.widths)
        for s, st in enumerate(self.stages):
            _check_choice(f"stage {s} width", arch.widths[s], st.widths)
            _check_choice(f"stage {s} depth", arch.depths[s], st.depths)
            for b in range(arch.depths[s]):
                _check_choice(f"stage {s} block {b} kernel", arch.kernels[s][b], st.kernels)
                _check_choice(f"stage {s} block {b} expand ratio", arch.expand_ratios[s][b], st.expand_ratios)
        return arch

    def contains(self, arch: Arch) -> bool:
        """Whether `arch` lies in this space."""
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    def arch_from_attentivenas(self, d: dict[str, Any]) -> Arch:
        """Convert an AlphaNet/AttentiveNAS architecture dict (one kernel and ratio per stage) into an Arch."""
        keys = {"resolution", "width", "depth", "kernel_size", "expand_ratio"}
        if not isinstance(d, dict) or not keys <= d.keys():
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ArchError(f"AttentiveNAS arch needs keys {sorted(keys)}, got {got}")
        n = len(self.stages)
        width, depth, kernel, ratio = d["width"], d["depth"], d["kernel_size"], d["expand_ratio"]
        if len(width) != n + 2 or len(depth) != n or len(kernel) != n or len(ratio) != n:
            raise ArchError(
                f"AttentiveNAS arch for a {n}-stage space needs width of length {n + 2} "
                f"[stem, stages..., last conv] and depth/kernel_size/expand_ratio of length {n}"
            )
        arch = Arch(
            resolution=int(d["resolution"]),
            stem_width=width[0],
            widths=tuple(width[1:-1]),
            depths=tuple(depth),
            kernels=tuple((k,) * dd for k, dd in zip(kernel, depth)),
            expand_ratios=tuple((e,) * dd for e, dd in zip(ratio, depth)),
            head_width=width[-1],
        )
        return self.validate(arch)

    def describe(self) -> str:
        """Human-readable table of the space's choices and size (`supernet.cost.summary` adds the cost range)."""

        def fmt(values: list) -> str:
            return "{" + ",".join(str(_number(v)) for v in values) + "}"

        lines = [f"search space {self.name!r}" + (f": {self.spec.description}" if self.spec.description else "")]
        lines.append(f"  input      {self.in_channels} channels, resolution {fmt(self.spec.resolutions)}")
        stem = self.spec.stem
        lines.append(f"  stem       width {fmt(stem.widths)} k{stem.kernel} s{stem.stride} {stem.activation}")
        for s, st in enumerate(self.stages):
            lines.append(
                f"  stage {s + 1:<4} width {fmt(st.widths)} depth {fmt(st.depths)} kernel {fmt(st.kernels)} "
                f"expand {fmt(st.expand_ratios)} s{st.stride}{' SE' if st.se else ''} {st.activation}"
            )
        head = self.spec.head
        if head.mix:
            lines.append(
                f"  head       expand x{_number(head.expand_ratio)}, last conv {fmt(head.widths)} {head.activation}"
            )
        else:
            lines.append(f"  head       1x1 conv {fmt(head.widths)} {head.activation}, pool, classifier")
        lines.append(f"  sub-networks  {self.size():.4g}")
        return "\n".join(lines)


def _check_choice(what: str, value: Any, choices: list) -> None:
    if value not in choices:
        raise ArchError(f"{what} {value} is not in the space's choices {choices}")


def describe_validation_error(err: ValidationError) -> str:
    """All schema problems of a pydantic error on one line: "stages.2.widths: must be positive; ..."."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        elif e["type"] == "missing":
            parts.append(f"missing key {where!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg}")
    return "; ".join(parts)
