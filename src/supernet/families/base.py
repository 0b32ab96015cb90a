"""What a block family supplies beyond its genes: modules, static extraction, cost, latency layers, encoding."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from supernet.nn.widths import block_mid_channels, conv_out_size, se_width
from supernet.space import Gene, SearchSpace, StageGenes, StageSpec


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class LayerKey:
    """A latency-table layer: a frozen dataclass with a `kind`, a stable text key and a module to time.

    Subclasses are frozen dataclasses with `in_c` and `side` fields (the input they read) and `module()`.
    """

    kind = ""

    @property
    def key(self) -> str:
        """Table key: the kind and every field that determines the layer's cost."""
        fields = ",".join(f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self))  # type: ignore[arg-type]
        return f"{self.kind}({fields})"

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of the tensor this layer reads."""
        return (batch, self.in_c, self.side, self.side)  # type: ignore[attr-defined]

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.key


class FamilyStage(StageSpec):
    """A stage spec that also builds its family's modules and knows their cost.

    `Supernet`, `build_static`, `cost`, the latency tables and the predictor call only these methods, so a
    new family is one module implementing them plus an entry in `supernet.families.FAMILIES`.
    """

    def dynamic_blocks(self, in_widths: list[int], kernel_transform: bool) -> list[nn.Module]:
        """The stage's weight-holding blocks, one per possible block position."""
        raise NotImplementedError

    def configure(self, block: nn.Module, width: int, gene: Gene) -> None:
        """Make a dynamic block of this stage run `gene` at output `width`."""
        raise NotImplementedError

    def static_block(self, b: int, c_in: int, width: int, gene: Gene) -> nn.Module:
        """A freshly initialised plain module of block `b` with these genes."""
        raise NotImplementedError

    def copy_block(self, block: nn.Module, static: nn.Module, gene: Gene) -> None:
        """Copy a dynamic block's weights for `gene` into `static` (built by `static_block` for that gene)."""
        raise NotImplementedError

    def reset_parameters(self, blocks: list[nn.Module]) -> None:
        """Family-specific initialisation after the generic one (e.g. zero-init of residual BNs)."""

    def block_cost(self, b: int, c_in: int, width: int, size: int, gene: Gene) -> tuple[int, int, int]:
        """(MACs, params, output side) of block `b` on a `size` x `size` input of `c_in` channels."""
        raise NotImplementedError

    def block_layer(self, b: int, c_in: int, width: int, gene: Gene, side: int) -> tuple[LayerKey | None, int]:
        """The latency layer of block `b` (None when it costs nothing, e.g. Identity) and its output side."""
        raise NotImplementedError

    def stage_layers(self, states: set[tuple[int, int]]) -> tuple[set[LayerKey], set[tuple[int, int]]]:
        """Every latency layer the stage can contain after inputs `states` of (channels, side), and the outputs."""
        raise NotImplementedError

    def encode(self, genes: StageGenes) -> list[float]:
        """Fixed-length predictor features of one stage, in [0, 1]."""
        raise NotImplementedError

    def encoding_size(self) -> int:
        """Length of `encode`'s output."""
        raise NotImplementedError


def family_stages(space: SearchSpace) -> list[FamilyStage]:
    """The space's stages as family stages (what builds modules, counts cost, keys latency and encodes).

    Raises TypeError for a space parsed with a registry whose stages cannot build; `supernet.spaces`
    parses with the package's families, whose stages all can.
    """
    for s, st in enumerate(space.stages):
        if not isinstance(st, FamilyStage):
            raise TypeError(f"stage {s} ({st.family}) is not a block family's stage; parse the space with supernet.spaces")
    return space.stages  # type: ignore[return-value]


def scale(value: float, choices: list) -> float:
    """A choice mapped linearly from its smallest (0) to its largest (1) value."""
    lo, hi = min(choices), max(choices)
    return 0.0 if hi == lo else (value - lo) / (hi - lo)


def slot(value: float, choices: list) -> float:
    """A present block's choice mapped into (0, 1], so that 0 can mean "no block"."""
    return 0.25 + 0.75 * scale(value, choices) if len(choices) > 1 else 1.0


def mbconv_cost(
    c_in: int, width: int, size: int, kernel: int, ratio: float, stride: int, se: bool, shortcut: str
) -> tuple[int, int, int]:
    """(MACs, params, output side) of an MBConv block: expand, depthwise, SE, project and shortcut convs."""
    mid = block_mid_channels(c_in, ratio)
    out_size = conv_out_size(size, kernel, stride)
    macs = params = 0
    if ratio != 1:
        macs += c_in * mid * size * size
        params += c_in * mid + 2 * mid
    macs += mid * kernel * kernel * out_size * out_size
    params += mid * kernel * kernel + 2 * mid
    if se:
        r = se_width(mid)
        macs += 2 * mid * r
        params += 2 * mid * r + mid + r
    macs += mid * width * out_size * out_size
    params += mid * width + 2 * width
    if shortcut == "conv" and c_in != width:
        macs += c_in * width * out_size * out_size
        params += c_in * width
    return macs, params, out_size
