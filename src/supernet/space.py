"""The space core: `SearchSpace`, the `Arch` sampled from it, and the block-family protocol its stages implement.

The core knows no family: a stage's genes, sampling and validation belong to its `StageSpec` subclass
(`supernet.families`), and parsing a space takes the `Families` registry to look them up.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from supernet.rounding import make_divisible

Activation = Literal["relu", "relu6", "swish", "h_swish"]


class SpaceError(ValueError):
    """A search-space definition is invalid."""


class ArchError(ValueError):
    """An architecture is malformed or lies outside its search space."""


def positive_unique(values: list, what: str) -> list:
    """Validate a list of positive, distinct choices and return it ascending (a schema helper for families)."""
    if not values:
        raise ValueError(f"{what} must list at least one choice")
    if any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has repeated choices {values}")
    return sorted(values)


class Spec(BaseModel):
    """Base of the schema models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StemSpec(Spec):
    """The first convolution: width choices, kernel, stride, activation."""

    widths: list[int]
    kernel: int = 3
    stride: int = 2
    activation: Activation = "swish"

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return positive_unique(v, "widths")

    @field_validator("kernel", "stride")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v


Gene = tuple
"""One block's genes: a tuple of ints, floats or strings whose meaning its family defines."""


class StageGenes(NamedTuple):
    """What an `Arch` records for one stage: its output width and one gene tuple per active block."""

    width: int
    blocks: tuple[Gene, ...]


class StageSpec(Spec):
    """A stage of blocks from one block family: the protocol every family's stage spec implements.

    The space core calls only these methods, so it never knows which families exist. A family subclasses
    this (adding its YAML fields) in `supernet.families` and implements the genes below; the same class
    also supplies the family's modules, cost, latency layers and predictor encoding (see
    `supernet.families.base.FamilyStage`). Every stage also has `widths` and `depths`, its output-width
    and depth choices in ascending order (fields or properties, as the family prefers).
    """

    family: str
    stride: int = 1

    @field_validator("stride")
    @classmethod
    def _stride(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {v}")
        return v

    def check_input(self, in_widths: list[int], where: str) -> None:
        """Raise SpaceError unless the stage can follow a layer whose width is one of `in_widths`."""

    def block_choices(self, block: int) -> list[Gene]:
        """Every gene that block `block` may take."""
        raise NotImplementedError

    def largest(self) -> StageGenes:
        """The stage's most expensive configuration."""
        raise NotImplementedError

    def smallest(self) -> StageGenes:
        """The stage's cheapest configuration."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> StageGenes:
        """A configuration drawn uniformly per gene."""
        raise NotImplementedError

    def mutate(self, genes: StageGenes, prob: float, rng: random.Random) -> StageGenes:
        """Resample each gene with probability `prob`."""
        raise NotImplementedError

    def crossover(self, a: StageGenes, b: StageGenes, rng: random.Random) -> StageGenes:
        """Each gene from either parent with equal probability."""
        raise NotImplementedError

    def check(self, genes: StageGenes, where: str) -> None:
        """Raise ArchError (mentioning `where`) unless `genes` lie in this stage."""
        raise NotImplementedError

    def size(self) -> int:
        """Number of distinct configurations of the stage."""
        raise NotImplementedError

    def restricted(self, kernel: int | None, depth: int | None, expand: int | None, width: int | None) -> StageSpec:
        """The stage keeping only the `n` largest choices of each named dimension (None: all)."""
        raise NotImplementedError

    def pinned(self, genes: StageGenes) -> list[StageSpec]:
        """Stages whose only member is `genes` and whose blocks build exactly the blocks of `genes`, in order."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line of `SearchSpace.describe`'s table (after the stage number)."""
        raise NotImplementedError

    def genes_text(self, genes: StageGenes) -> str:
        """A short readable summary of one stage of an architecture."""
        raise NotImplementedError


def top_choices(choices: list, n: int | None) -> list:
    """The `n` largest of ascending `choices` (all when `n` is None): what `restrict` keeps."""
    if n is not None and n < 1:
        raise SpaceError(f"restrict keeps at least 1 choice per dimension, got {n}")
    return choices if n is None else choices[-n:]


class Families:
    """The block families a space may use, by name; stages without a `family` key get `default`."""

    def __init__(self, members: dict[str, type[StageSpec]], default: str) -> None:
        if default not in members:
            raise ValueError(f"default family {default!r} is not among {sorted(members)}")
        self._members = dict(members)
        self.default = default

    def names(self) -> list[str]:
        """The registered family names."""
        return sorted(self._members)

    def stage(self, d: Any, index: int) -> StageSpec:
        """Validate one stage dict with its family's schema (ValidationError locations start at the stage)."""
        if not isinstance(d, dict):
            raise SpaceError(f"stages.{index}: expected a mapping, got {type(d).__name__}")
        name = d.get("family", self.default)
        if name not in self._members:
            raise SpaceError(f"stages.{index}.family: unknown block family {name!r}; families are {self.names()}")
        return self._members[name].model_validate({**d, "family": name})


class HeadSpec(Spec):
    """Head: 1x1 expand conv (BN + act), global pool, 1x1 conv (act, no BN), linear classifier.

    With `mix: false` it is the MobileNetV2 / ProxylessNAS head instead: a 1x1 conv (BN + act) to one of
    `widths` channels, global pool, linear classifier (`expand_ratio` unused). With `conv: false` as well it
    is MobileNetV1's: global pool and classifier straight on the last stage's features, whose widths
    `widths` must then repeat.
    """

    expand_ratio: float = 6.0
    widths: list[int]
    activation: Activation = "swish"
    mix: bool = True
    conv: bool = True

    @model_validator(mode="after")
    def _conv_needs_no_mix(self) -> HeadSpec:
        if not self.conv and self.mix:
            raise ValueError("a head without its conv (conv: false) has no mix conv either; set mix: false")
        return self

    @field_validator("widths")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        return positive_unique(v, "widths")

    @field_validator("expand_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be positive")
        return v


class WidthMultiplierSpec(Spec):
    """One width multiplier m shared by every layer (slimmable networks): each width is make_divisible(base x m).

    `range: [low, high]` draws m uniformly from the interval (universally slimmable networks, Yu & Huang
    2019); `choices` lists the multipliers (slimmable networks, Yu et al. 2018). The stem, every stage and
    the head then each give one width, their base (1.0x) width. `scale_head: false` keeps the head's conv
    at its base width below 1.0x and scales it above (MobileNetV2's 1280-channel last conv).
    """

    range: list[float] | None = None
    choices: list[float] | None = None
    divisor: int = 8
    scale_head: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> WidthMultiplierSpec:
        if (self.range is None) == (self.choices is None):
            raise ValueError("give exactly one of range: [low, high] and choices: [...]")
        if self.range is not None and (len(self.range) != 2 or not 0 < self.range[0] < self.range[1]):
            raise ValueError(f"range must be [low, high] with 0 < low < high, got {self.range}")
        if self.choices is not None:
            positive_unique(self.choices, "choices")
        if self.divisor <= 0:
            raise ValueError(f"divisor must be positive, got {self.divisor}")
        return self

    @property
    def low(self) -> float:
        """The smallest multiplier."""
        return self.range[0] if self.range is not None else min(self.choices)  # type: ignore[arg-type]

    @property
    def high(self) -> float:
        """The largest multiplier."""
        return self.range[1] if self.range is not None else max(self.choices)  # type: ignore[arg-type]

    def grid(self) -> list[float]:
        """Multipliers fine enough to reach every width the rule can give (the choices themselves, if listed)."""
        if self.choices is not None:
            return sorted(self.choices)
        steps = round((self.high - self.low) / 1e-4)
        return [round(self.low + i * 1e-4, 6) for i in range(steps)] + [self.high]

    def draw(self, rng: random.Random) -> float:
        """One multiplier: uniform on the range, or one of the choices."""
        return rng.uniform(self.low, self.high) if self.range is not None else rng.choice(self.choices)  # type: ignore[arg-type]

    def describe(self) -> str:
        """`[0.25, 1.0]` or `{0.25,0.5,1}`, with the divisor."""
        which = f"[{self.low:g}, {self.high:g}]" if self.range is not None else fmt_choices(self.choices)  # type: ignore[arg-type]
        return f"{which}, widths rounded to multiples of {self.divisor}" + ("" if self.scale_head else ", head kept")


class SpaceSpec(Spec):
    """The full, validated description of a search space (what a preset YAML holds)."""

    name: str = "custom"
    description: str = ""
    in_channels: int = 3
    num_classes: int = Field(1000, description="classes of the task the preset is designed for (summaries' default)")
    stem: StemSpec
    stages: list[SerializeAsAny[StageSpec]]
    head: HeadSpec
    resolutions: list[int]
    width_multiplier: WidthMultiplierSpec | None = None

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, v: list[int]) -> list[int]:
        return positive_unique(v, "resolutions")

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
        if self.width_multiplier is not None:
            parts = [("stem", self.stem.widths), ("head", self.head.widths)]
            parts += [(f"stages.{i}", st.widths) for i, st in enumerate(self.stages)]  # type: ignore[attr-defined]
            several = [name for name, widths in parts if len(widths) != 1]
            if several:
                raise ValueError(
                    f"with width_multiplier, the stem, each stage and the head give one base (1.0x) width; "
                    f"{', '.join(several)} list several"
                )
        return self


@dataclass(frozen=True)
class Arch:
    """One sub-network: resolution, stem width, per stage a width, a depth and one gene tuple per block, head width.

    `blocks[s]` holds `depths[s]` gene tuples whose meaning the stage's block family defines: (kernel, expand
    ratio) for elastic MBConv stages, (operator,) for choice-block stages.
    """

    resolution: int
    stem_width: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    blocks: tuple[tuple[Gene, ...], ...]
    head_width: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "blocks", tuple(tuple(as_gene(g) for g in bs) for bs in self.blocks))
        n = len(self.widths)
        if not (len(self.depths) == len(self.blocks) == n):
            raise ArchError(
                f"arch lists {n} widths, {len(self.depths)} depths and {len(self.blocks)} block lists; "
                "give one of each per stage"
            )
        for s, (d, bs) in enumerate(zip(self.depths, self.blocks)):
            if len(bs) != d:
                raise ArchError(f"stage {s} has depth {d} but {len(bs)} blocks; give one gene list per active block")

    @classmethod
    def of_stages(cls, resolution: int, stem_width: int, stages: Sequence[StageGenes], head_width: int) -> Arch:
        """Assemble an Arch from per-stage genes."""
        return cls(
            resolution=resolution,
            stem_width=stem_width,
            widths=tuple(g.width for g in stages),
            depths=tuple(len(g.blocks) for g in stages),
            blocks=tuple(g.blocks for g in stages),
            head_width=head_width,
        )

    def stage(self, s: int) -> StageGenes:
        """The genes of stage `s`."""
        return StageGenes(self.widths[s], self.blocks[s])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (inverse of `from_dict`)."""
        return {
            "resolution": self.resolution,
            "stem_width": self.stem_width,
            "widths": list(self.widths),
            "depths": list(self.depths),
            "blocks": [[list(g) for g in bs] for bs in self.blocks],
            "head_width": self.head_width,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        """Build an Arch from `to_dict` output; raises ArchError naming missing or unknown keys.

        Also reads the format before block families (per-stage `kernels` and `expand_ratios` lists instead
        of `blocks`), which earlier runs, fronts and exports hold.
        """
        if not isinstance(d, dict):
            raise ArchError(f"an architecture must be a JSON object, got {type(d).__name__}")
        if "blocks" not in d and {"kernels", "expand_ratios"} <= d.keys():
            d = {k: v for k, v in d.items() if k not in ("kernels", "expand_ratios")} | {
                "blocks": _zip_legacy(d["kernels"], d["expand_ratios"])
            }
        expected = {"resolution", "stem_width", "widths", "depths", "blocks", "head_width"}
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
                blocks=tuple(tuple(bs) for bs in d["blocks"]),
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


def _zip_legacy(kernels: Any, ratios: Any) -> list:
    try:
        return [[[k, e] for k, e in zip(ks, es, strict=True)] for ks, es in zip(kernels, ratios, strict=True)]
    except (TypeError, ValueError) as err:
        raise ArchError(f"malformed architecture: kernels and expand_ratios do not pair up ({err})") from None


def as_gene(value: Any) -> Gene:
    """A block's genes as Arch stores them: a tuple, strings kept, integral numbers as ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ArchError(f"a block's genes must be a list, got {value!r}")
    return tuple(v if isinstance(v, str) else as_number(v) for v in value)


def as_number(value: float) -> float | int:
    """Keep integral values as ints so JSON and hashing are stable (4 == 4.0)."""
    value = float(value)
    return int(value) if value.is_integer() else value


class SearchSpace:
    """What can be sampled: stem, stages of blocks from block families, head and resolution choices."""

    def __init__(self, spec: SpaceSpec) -> None:
        self.declared = spec
        """The spec as written (a width-multiplier space's base widths); `spec` holds every width's choices."""
        self._tied: dict[tuple[int, ...], float] = {}
        self.spec = spec
        if spec.width_multiplier is not None:
            self._tied = tied_widths(spec)
            self.spec = expanded(spec, self._tied)

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
    def from_dict(cls, d: dict[str, Any], families: Families, source: str = "search space") -> SearchSpace:
        """Validate a dict against the schema; raises SpaceError with a one-line message per problem.

        `supernet.spaces.from_dict` passes the package's block families.
        """
        if not isinstance(d, dict):
            raise SpaceError(f"{source}: expected a mapping with keys stem, stages, head, resolutions")
        data = dict(d)
        problems = []
        if isinstance(data.get("stages"), list):
            stages = []
            for i, st in enumerate(data["stages"]):
                try:
                    stages.append(families.stage(st, i))
                except ValidationError as err:
                    problems.append(describe_validation_error(err, prefix=f"stages.{i}."))
                except SpaceError as err:
                    problems.append(str(err))
            data["stages"] = stages
        try:
            spec = SpaceSpec.model_validate(data)
        except ValidationError as err:
            problems.insert(0, describe_validation_error(err))
        if problems:
            raise SpaceError(f"{source}: {'; '.join(problems)}") from None
        space = cls(spec)
        space._check_layout(source)
        return space

    def _check_layout(self, source: str) -> None:
        spec = self.spec
        in_widths = spec.stem.widths
        for i, st in enumerate(spec.stages):
            st.check_input(in_widths, f"{source}: stages.{i}")
            in_widths = st.widths
        if not spec.head.conv and spec.head.widths != in_widths:
            raise SpaceError(
                f"{source}: head: without its conv the head's widths are the last stage's {in_widths}, got "
                f"{spec.head.widths}"
            )
        if spec.width_multiplier is not None:
            free = [i for i, st in enumerate(spec.stages) if st.size() != len(st.widths)]
            if free:
                raise SpaceError(
                    f"{source}: a width-multiplier space varies only the width, but stages {free} also have depth, "
                    "kernel, ratio or operator choices; give those stages one choice each"
                )

    @classmethod
    def from_yaml(cls, path: str | Path, families: Families) -> SearchSpace:
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
        return cls.from_dict(data, families, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The space as a plain dict (round-trips through `from_dict`)."""
        d = self.declared.model_dump()
        # fields added later stay out at their defaults, so that earlier runs' spaces compare and hash the same
        if d["width_multiplier"] is None:
            del d["width_multiplier"]
        if d["head"]["conv"]:
            del d["head"]["conv"]
        return d

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, stages={len(self.stages)}, size={self.size():.3g})"

    def families(self) -> list[str]:
        """The block family of each stage."""
        return [st.family for st in self.stages]

    # -- canonical members -------------------------------------------------------------------------
    def largest(self) -> Arch:
        """The sub-network with every choice at its maximum."""
        spec = self.spec
        if spec.width_multiplier is not None:
            return self.at_width(spec.width_multiplier.high, max(spec.resolutions))
        return self._assemble(
            max(spec.resolutions), max(spec.stem.widths), [st.largest() for st in self.stages], max(spec.head.widths)
        )

    def smallest(self) -> Arch:
        """The sub-network with every choice at its minimum."""
        spec = self.spec
        if spec.width_multiplier is not None:
            return self.at_width(spec.width_multiplier.low, min(spec.resolutions))
        return self._assemble(
            min(spec.resolutions), min(spec.stem.widths), [st.smallest() for st in self.stages], min(spec.head.widths)
        )

    def _assemble(self, resolution: int, stem: int, stages: Sequence[StageGenes], head: int) -> Arch:
        # a head without its conv reads the last stage's features: its width is that stage's
        return Arch.of_stages(resolution, stem, stages, head if self.spec.head.conv else stages[-1].width)

    # -- width multipliers (slimmable networks) ----------------------------------------------------
    def at_width(self, multiplier: float, resolution: int | None = None) -> Arch:
        """The sub-network of a width-multiplier space at `multiplier` (default resolution: the largest)."""
        wm = self.spec.width_multiplier
        if wm is None:
            raise ArchError(f"space {self.name!r} has no width multiplier; only slimmable spaces take --widths")
        if not wm.low - 1e-9 <= multiplier <= wm.high + 1e-9:
            raise ArchError(f"width multiplier {multiplier:g} lies outside the space's [{wm.low:g}, {wm.high:g}]")
        widths = multiplied_widths(self.declared, multiplier)
        stages = [StageGenes(w, st.largest().blocks) for w, st in zip(widths[1:-1], self.stages)]
        arch = Arch.of_stages(max(self.spec.resolutions) if resolution is None else resolution, widths[0], stages,
                              widths[-1])
        return self.validate(arch)

    def tied_multipliers(self) -> list[float]:
        """One multiplier per distinct sub-network width of a width-multiplier space (the roundest giving it)."""
        return sorted(self._tied.values())

    def multiplier_of(self, arch: Arch) -> float | None:
        """The roundest width multiplier giving `arch`'s widths, e.g. 0.75 (None outside a width-multiplier space)."""
        return self._tied.get((arch.stem_width, *arch.widths, arch.head_width))

    # -- sampling and evolution --------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Arch:
        """A sub-network drawn uniformly per gene (each block's genes independently; one multiplier if tied)."""
        spec = self.spec
        resolution = rng.choice(spec.resolutions)
        if spec.width_multiplier is not None:
            return self.at_width(spec.width_multiplier.draw(rng), resolution)
        stem = rng.choice(spec.stem.widths)
        stages = [st.sample(rng) for st in self.stages]
        return self._assemble(resolution, stem, stages, rng.choice(spec.head.widths))

    def mutate(self, arch: Arch, prob: float, rng: random.Random) -> Arch:
        """Resample each gene (resolution, widths, depths, each block's genes) with probability `prob`."""
        self.validate(arch)
        spec = self.spec

        def maybe(current: Any, choices: list) -> Any:
            return rng.choice(choices) if rng.random() < prob else current

        resolution = maybe(arch.resolution, spec.resolutions)
        if spec.width_multiplier is not None:  # the one multiplier is the one width gene
            if rng.random() < prob:
                return self.at_width(spec.width_multiplier.draw(rng), resolution)
            return replace(arch, resolution=resolution)
        stem = maybe(arch.stem_width, spec.stem.widths)
        stages = [st.mutate(arch.stage(s), prob, rng) for s, st in enumerate(self.stages)]
        return self._assemble(resolution, stem, stages, maybe(arch.head_width, spec.head.widths))

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Each gene from either parent with equal probability (block genes from whichever parent has the block)."""
        self.validate(a)
        self.validate(b)

        def pick(x: Any, y: Any) -> Any:
            return x if rng.random() < 0.5 else y

        resolution = pick(a.resolution, b.resolution)
        if self.spec.width_multiplier is not None:
            return replace(pick(a, b), resolution=resolution)
        stem = pick(a.stem_width, b.stem_width)
        stages = [st.crossover(a.stage(s), b.stage(s), rng) for s, st in enumerate(self.stages)]
        return self._assemble(resolution, stem, stages, pick(a.head_width, b.head_width))

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
        Dimensions a stage's family does not have are left alone.
        """
        spec = self.spec
        if spec.width_multiplier is not None and width is not None:
            raise SpaceError("a width-multiplier space's widths move together; it cannot keep the n largest per layer")
        if spec.width_multiplier is not None:
            return SearchSpace(self.declared.model_copy(update={"resolutions": top_choices(spec.resolutions, resolution)}))
        restricted = spec.model_copy(
            update={
                "resolutions": top_choices(spec.resolutions, resolution),
                "stem": spec.stem.model_copy(update={"widths": top_choices(spec.stem.widths, width)}),
                "head": spec.head.model_copy(update={"widths": top_choices(spec.head.widths, width)}),
                "stages": [st.restricted(kernel, depth, expand, width) for st in self.stages],
            }
        )
        return SearchSpace(restricted)

    def pinned(self, arch: Arch) -> SearchSpace:
        """The one-network space holding only `arch`: its static network has the same modules, weight names,
        MACs and params as `arch`'s in this space. Training it trains that one network on the supernet loop
        (`supernet distill` / `supernet finetune`); its only member is `pinned(arch).largest()`."""
        self.validate(arch)
        spec = self.spec
        if spec.name.endswith("-pinned") and self.size() == 1:
            return self  # already one network's space
        stages = [part for s, st in enumerate(self.stages) for part in st.pinned(arch.stage(s))]
        name = spec.name if spec.name.endswith("-pinned") else f"{spec.name}-pinned"
        pinned = spec.model_copy(update={
            "name": name,
            "description": f"one network of {spec.name}: {self.arch_text(arch)}",
            "stem": spec.stem.model_copy(update={"widths": [arch.stem_width]}),
            "stages": stages,
            "head": spec.head.model_copy(update={"widths": [arch.head_width]}),
            "resolutions": [arch.resolution],
            "width_multiplier": None,
        })
        return SearchSpace(pinned)

    def size(self) -> int:
        """Number of distinct sub-networks in the space."""
        if self._tied:
            return len(self.spec.resolutions) * len(self._tied)
        total = len(self.spec.resolutions) * len(self.spec.stem.widths) * len(self.spec.head.widths)
        for st in self.stages:
            total *= st.size()
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
        check_choice("resolution", arch.resolution, self.spec.resolutions)
        check_choice("stem_width", arch.stem_width, self.spec.stem.widths)
        check_choice("head_width", arch.head_width, self.spec.head.widths)
        for s, st in enumerate(self.stages):
            st.check(arch.stage(s), f"stage {s}")
        if not self.spec.head.conv and arch.head_width != arch.widths[-1]:
            raise ArchError(f"head_width {arch.head_width} must equal the last stage's width {arch.widths[-1]} "
                            "(the head has no conv)")
        if self._tied and self.multiplier_of(arch) is None:
            raise ArchError(
                f"widths stem {arch.stem_width}, stages {list(arch.widths)}, head {arch.head_width} come from no one "
                f"width multiplier of space {self.name!r}; use SearchSpace.at_width"
            )
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
            blocks=tuple(((k, e),) * dd for k, e, dd in zip(kernel, ratio, depth)),
            head_width=width[-1],
        )
        return self.validate(arch)

    def arch_text(self, arch: Arch) -> str:
        """A readable one-line summary of `arch`: resolution, stem, one bracket per stage, head."""
        self.validate(arch)
        stages = " ".join(f"[{st.genes_text(arch.stage(s))}]" for s, st in enumerate(self.stages))
        multiplier = self.multiplier_of(arch)
        width = "" if multiplier is None else f"{multiplier:g}x · "
        return f"{width}{arch.resolution}px · stem {arch.stem_width} · {stages} · head {arch.head_width}"

    def describe(self) -> str:
        """Human-readable table of the space's choices and size (`supernet.cost.summary` adds the cost range)."""
        lines = [f"search space {self.name!r}" + (f": {self.spec.description}" if self.spec.description else "")]
        lines.append(f"  input      {self.in_channels} channels, resolution {fmt_choices(self.spec.resolutions)}")
        stem = self.declared.stem
        lines.append(f"  stem       width {fmt_choices(stem.widths)} k{stem.kernel} s{stem.stride} {stem.activation}")
        tied = self.spec.width_multiplier is not None
        for s, st in enumerate(self.declared.stages if tied else self.stages):  # a tied space: its base widths
            lines.append(f"  stage {s + 1:<4} {st.describe()}")
        head = self.spec.head
        if tied:
            lines.append(f"  width      the base widths x one multiplier m for every layer, m in "
                         f"{self.spec.width_multiplier.describe()}")
        if not head.conv:
            lines.append("  head       pool, classifier")
        elif head.mix:
            lines.append(
                f"  head       expand x{as_number(head.expand_ratio)}, last conv {fmt_choices(head.widths)} {head.activation}"
            )
        else:
            lines.append(f"  head       1x1 conv {fmt_choices(head.widths)} {head.activation}, pool, classifier")
        lines.append(f"  sub-networks  {self.size():.4g}")
        return "\n".join(lines)


def multiplied_widths(spec: SpaceSpec, multiplier: float) -> tuple[int, ...]:
    """(stem, each stage, head) widths at `multiplier` from a width-multiplier spec's base widths."""
    wm = spec.width_multiplier
    if wm is None:
        raise SpaceError(f"space {spec.name!r} has no width multiplier")

    def scaled(base: int) -> int:
        return make_divisible(base * multiplier, wm.divisor)

    head_base = spec.head.widths[0]
    head = scaled(head_base) if wm.scale_head or multiplier > 1 else head_base
    return (scaled(spec.stem.widths[0]), *(scaled(st.widths[0]) for st in spec.stages), head)  # type: ignore[attr-defined]


def tied_widths(spec: SpaceSpec) -> dict[tuple[int, ...], float]:
    """Every distinct (stem, stages..., head) width tuple the multipliers give, each with its roundest multiplier."""
    assert spec.width_multiplier is not None
    spans: dict[tuple[int, ...], list[float]] = {}
    for m in spec.width_multiplier.grid():
        spans.setdefault(multiplied_widths(spec, m), []).append(m)
    return {widths: roundest(ms) for widths, ms in spans.items()}


def roundest(multipliers: list[float]) -> float:
    """The roundest of ascending `multipliers`: a multiple of 0.1, else 0.05, 0.01, ... (nearest their middle on a tie)."""
    middle = (multipliers[0] + multipliers[-1]) / 2
    for step in (0.1, 0.05, 0.01, 0.005, 0.001, 0.0005):
        exact = [m for m in multipliers if abs(m / step - round(m / step)) < 1e-6]
        if exact:
            return min(exact, key=lambda m: abs(m - middle))
    return multipliers[len(multipliers) // 2]


def expanded(spec: SpaceSpec, tied: dict[tuple[int, ...], float]) -> SpaceSpec:
    """A width-multiplier spec with each layer's width choices listed (what modules and costs are built from)."""
    columns = [sorted(set(c)) for c in zip(*tied)]
    stages = [st.model_copy(update={"widths": ws}) for st, ws in zip(spec.stages, columns[1:-1])]
    return spec.model_copy(
        update={
            "stem": spec.stem.model_copy(update={"widths": columns[0]}),
            "stages": stages,
            "head": spec.head.model_copy(update={"widths": columns[-1]}),
        }
    )


def fmt_choices(values: list) -> str:
    """Choices as `{a,b,c}`."""
    return "{" + ",".join(str(v if isinstance(v, str) else as_number(v)) for v in values) + "}"


def check_choice(what: str, value: Any, choices: list) -> None:
    if value not in choices:
        raise ArchError(f"{what} {value} is not in the space's choices {choices}")


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """All schema problems of a pydantic error on one line: "stages.2.widths: must be positive; ..."."""
    parts = []
    for e in err.errors():
        where = prefix + ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        elif e["type"] == "missing":
            parts.append(f"missing key {where!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{where}: {msg}")
    return "; ".join(parts)
