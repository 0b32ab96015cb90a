"""Depthwise-separable stages (MobileNetV1, Howard et al. 2017): weight-shared width and depth, no shortcut.

A block is a kxk depthwise conv then a 1x1 pointwise conv, each with BN and activation. Widths share
their first channels; a block has no genes of its own (its gene is the empty tuple).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import field_validator
from torch import nn

from supernet.families.base import FamilyStage, LayerKey, scale
from supernet.nn.dynamic_blocks import DynamicSeparableConv
from supernet.nn.static import SeparableConv
from supernet.nn.widths import conv_out_size
from supernet.space import (
    Activation,
    ArchError,
    Gene,
    StageGenes,
    StageSpec,
    check_choice,
    fmt_choices,
    positive_unique,
    top_choices,
)


@dataclass(frozen=True)
class SeparableLayer(LayerKey):
    """One depthwise-separable block on a `side` x `side` input."""

    in_c: int
    out_c: int
    kernel: int
    stride: int
    activation: str
    side: int
    kind = "separable"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return SeparableConv(self.in_c, self.out_c, self.kernel, self.stride, self.activation)


def separable_cost(c_in: int, width: int, size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """(MACs, params, output side) of a depthwise-separable block: depthwise and pointwise convs with their BNs."""
    out = conv_out_size(size, kernel, stride)
    macs = c_in * kernel * kernel * out * out + c_in * width * out * out
    params = c_in * kernel * kernel + 2 * c_in + c_in * width + 2 * width
    return macs, params, out


class SeparableStage(FamilyStage):
    """One stage of depthwise-separable blocks and its elastic width and depth."""

    family: Literal["separable"] = "separable"
    widths: list[int]
    depths: list[int]
    kernel: int = 3
    activation: Activation = "relu"

    @field_validator("widths", "depths")
    @classmethod
    def _choices(cls, v: list, info: object) -> list:
        return positive_unique(v, info.field_name)  # type: ignore[attr-defined]

    @field_validator("kernel")
    @classmethod
    def _kernel(cls, v: int) -> int:
        if v <= 0 or v % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {v}")
        return v

    # -- genes -----------------------------------------------------------------------------------------
    def block_choices(self, block: int) -> list[Gene]:
        """The one (empty) gene."""
        return [()]

    def largest(self) -> StageGenes:
        """Widest and deepest."""
        return StageGenes(max(self.widths), ((),) * max(self.depths))

    def smallest(self) -> StageGenes:
        """Narrowest and shallowest."""
        return StageGenes(min(self.widths), ((),) * min(self.depths))

    def sample(self, rng: random.Random) -> StageGenes:
        """Width and depth uniformly."""
        return StageGenes(rng.choice(self.widths), ((),) * rng.choice(self.depths))

    def mutate(self, genes: StageGenes, prob: float, rng: random.Random) -> StageGenes:
        """Resample width and depth with probability `prob`."""
        width = rng.choice(self.widths) if rng.random() < prob else genes.width
        depth = rng.choice(self.depths) if rng.random() < prob else len(genes.blocks)
        return StageGenes(width, ((),) * depth)

    def crossover(self, a: StageGenes, b: StageGenes, rng: random.Random) -> StageGenes:
        """Width and depth from either parent."""
        width = a.width if rng.random() < 0.5 else b.width
        depth = len(a.blocks) if rng.random() < 0.5 else len(b.blocks)
        return StageGenes(width, ((),) * depth)

    def check(self, genes: StageGenes, where: str) -> None:
        """Width and depth among the choices, every block's genes empty."""
        check_choice(f"{where} width", genes.width, self.widths)
        check_choice(f"{where} depth", len(genes.blocks), self.depths)
        for b, gene in enumerate(genes.blocks):
            if gene != ():
                raise ArchError(f"{where} block {b} has genes {list(gene)}; a separable block has none ([])")

    def size(self) -> int:
        """Widths times depths."""
        return len(self.widths) * len(self.depths)

    def pinned(self, genes: StageGenes) -> list[StageSpec]:
        """This stage at `genes`' width and depth only."""
        self.check(genes, "pinned stage")
        return [self.model_copy(update={"widths": [genes.width], "depths": [len(genes.blocks)]})]

    def restricted(self, kernel: int | None, depth: int | None, expand: int | None, width: int | None) -> SeparableStage:
        """The `n` largest depths and widths (there are no kernel or ratio choices)."""
        return self.model_copy(update={"depths": top_choices(self.depths, depth), "widths": top_choices(self.widths, width)})

    def describe(self) -> str:
        """`separable width {..} depth {..} k3 s2 relu`."""
        return (
            f"separable width {fmt_choices(self.widths)} depth {fmt_choices(self.depths)} k{self.kernel} "
            f"s{self.stride} {self.activation}"
        )

    def genes_text(self, genes: StageGenes) -> str:
        """`d2 w64`."""
        return f"d{len(genes.blocks)} w{genes.width}"

    # -- modules -----------------------------------------------------------------------------------------
    def _block_stride(self, b: int) -> int:
        return self.stride if b == 0 else 1

    def dynamic_blocks(self, in_widths: list[int], kernel_transform: bool) -> list[nn.Module]:
        """One weight-shared DynamicSeparableConv per possible block (kernel transforms do not apply)."""
        return [
            DynamicSeparableConv(in_widths if b == 0 else self.widths, self.widths, self.kernel, self._block_stride(b),
                                 self.activation)
            for b in range(max(self.depths))
        ]

    def configure(self, block: nn.Module, width: int, gene: Gene) -> None:
        """Active output width."""
        block.configure(width)  # type: ignore[operator]

    def static_block(self, b: int, c_in: int, width: int, gene: Gene) -> nn.Module:
        """A plain SeparableConv."""
        return SeparableConv(c_in, width, self.kernel, self._block_stride(b), self.activation)

    def copy_block(self, block: nn.Module, static: nn.Module, gene: Gene) -> None:
        """Slice the shared weights into the static block."""
        block.copy_to(static)  # type: ignore[operator]

    # -- cost, latency, encoding -------------------------------------------------------------------------
    def block_cost(self, b: int, c_in: int, width: int, size: int, gene: Gene) -> tuple[int, int, int]:
        """Depthwise and pointwise convs."""
        return separable_cost(c_in, width, size, self.kernel, self._block_stride(b))

    def block_layer(self, b: int, c_in: int, width: int, gene: Gene, side: int) -> tuple[LayerKey | None, int]:
        """A `separable(...)` table entry."""
        stride = self._block_stride(b)
        layer = SeparableLayer(c_in, width, self.kernel, stride, self.activation, side)
        return layer, conv_out_size(side, self.kernel, stride)

    def stage_layers(self, states: set[tuple[int, int]]) -> tuple[set[LayerKey], set[tuple[int, int]]]:
        """The first block from every input state; later blocks keep the stage's width and side."""
        layers: set[LayerKey] = set()
        out: set[tuple[int, int]] = set()
        for c, side in states:
            after = conv_out_size(side, self.kernel, self.stride)
            for w in self.widths:
                layers.add(SeparableLayer(c, w, self.kernel, self.stride, self.activation, side))
                out.add((w, after))
        if max(self.depths) > 1:
            layers |= {SeparableLayer(w, w, self.kernel, 1, self.activation, side) for w, side in out}
        return layers, out

    def encode(self, genes: StageGenes) -> list[float]:
        """Width and depth scaled to [0, 1]."""
        return [scale(genes.width, self.widths), scale(len(genes.blocks), self.depths)]

    def encoding_size(self) -> int:
        """Width and depth."""
        return 2
