"""Elastic MBConv stages (OFA / BigNAS / AttentiveNAS): weight-shared width, depth, kernel and expand ratio.

Kernels share their centre and widths their first channels; a block's genes are (kernel, expand ratio).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator
from torch import nn

from supernet.families.base import FamilyStage, LayerKey, mbconv_cost, scale, slot
from supernet.nn.dynamic_blocks import DynamicMBConv
from supernet.nn.static import MBConv
from supernet.nn.widths import conv_out_size
from supernet.space import (
    Activation,
    ArchError,
    Gene,
    StageGenes,
    StageSpec,
    as_number,
    check_choice,
    fmt_choices,
    positive_unique,
    top_choices,
)


@dataclass(frozen=True)
class BlockLayer(LayerKey):
    """One MBConv block on a `side` x `side` input."""

    in_c: int
    out_c: int
    kernel: int
    expand_ratio: float
    stride: int
    se: bool
    activation: str
    shortcut: str
    side: int
    kind = "block"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return MBConv(
            self.in_c, self.out_c, self.kernel, self.expand_ratio, self.stride, self.se, self.activation, self.shortcut
        )


class ElasticMBConvStage(FamilyStage):
    """One stage of MBConv blocks and its elastic choices."""

    family: Literal["elastic_mbconv"] = "elastic_mbconv"
    widths: list[int]
    depths: list[int]
    kernels: list[int]
    expand_ratios: list[float]
    se: bool = False
    activation: Activation = "swish"
    shortcut: Literal["conv", "identity"] = Field(
        "conv",
        description="conv: every block is residual (avg-pool + 1x1 conv when the shape changes, AttentiveNAS); "
        "identity: residual only when the shape is unchanged (OFA).",
    )
    shortcut_pool: Literal["ceil", "zero_pad"] = Field(
        "ceil",
        description="how a strided conv shortcut pools: ceil (ceil-mode 2x2 average, padding not counted) or "
        "zero_pad (AttentiveNAS's and AlphaNet's code: an odd side padded by one zero on each side, the zeros "
        "counted); the two differ only on odd sides.",
    )

    @field_validator("widths", "depths", "expand_ratios")
    @classmethod
    def _choices(cls, v: list, info: object) -> list:
        return positive_unique(v, info.field_name)  # type: ignore[attr-defined]

    @field_validator("kernels")
    @classmethod
    def _kernels(cls, v: list[int]) -> list[int]:
        v = positive_unique(v, "kernels")
        if any(k % 2 == 0 for k in v):
            raise ValueError(f"kernels must be odd, got {v}")
        return v

    # -- genes -----------------------------------------------------------------------------------------
    def block_choices(self, block: int) -> list[Gene]:
        """Every (kernel, expand ratio) pair."""
        return [(k, as_number(e)) for k in self.kernels for e in self.expand_ratios]

    def largest(self) -> StageGenes:
        """Widest, deepest, largest kernel and ratio."""
        return StageGenes(max(self.widths), ((max(self.kernels), max(self.expand_ratios)),) * max(self.depths))

    def smallest(self) -> StageGenes:
        """Narrowest, shallowest, smallest kernel and ratio."""
        return StageGenes(min(self.widths), ((min(self.kernels), min(self.expand_ratios)),) * min(self.depths))

    def _fresh(self, rng: random.Random) -> Gene:
        return (rng.choice(self.kernels), rng.choice(self.expand_ratios))

    def sample(self, rng: random.Random) -> StageGenes:
        """Width and depth uniformly, then each block's kernel and ratio independently."""
        width, depth = rng.choice(self.widths), rng.choice(self.depths)
        return StageGenes(width, tuple(self._fresh(rng) for _ in range(depth)))

    def mutate(self, genes: StageGenes, prob: float, rng: random.Random) -> StageGenes:
        """Resample width, depth and each block's kernel and ratio with probability `prob`."""

        def maybe(current: object, choices: list) -> object:
            return rng.choice(choices) if rng.random() < prob else current

        width = maybe(genes.width, self.widths)
        depth = maybe(len(genes.blocks), self.depths)
        blocks = []
        for b in range(depth):  # type: ignore[arg-type]
            if b < len(genes.blocks):
                k, e = genes.blocks[b]
                blocks.append((maybe(k, self.kernels), maybe(e, self.expand_ratios)))
            else:  # a block that the depth mutation switched on gets fresh genes
                blocks.append(self._fresh(rng))
        return StageGenes(width, tuple(blocks))  # type: ignore[arg-type]

    def crossover(self, a: StageGenes, b: StageGenes, rng: random.Random) -> StageGenes:
        """Width, depth, and each block's kernel and ratio from either parent that has the block."""

        def pick(x: object, y: object) -> object:
            return x if rng.random() < 0.5 else y

        width = pick(a.width, b.width)
        depth = pick(len(a.blocks), len(b.blocks))
        blocks = []
        for i in range(depth):  # type: ignore[arg-type]
            parents = [p.blocks[i] for p in (a, b) if i < len(p.blocks)]
            if len(parents) == 2:
                blocks.append((pick(parents[0][0], parents[1][0]), pick(parents[0][1], parents[1][1])))
            else:
                blocks.append(parents[0])
        return StageGenes(width, tuple(blocks))  # type: ignore[arg-type]

    def check(self, genes: StageGenes, where: str) -> None:
        """Width, depth, and each block's kernel and ratio among the choices."""
        check_choice(f"{where} width", genes.width, self.widths)
        check_choice(f"{where} depth", len(genes.blocks), self.depths)
        for b, gene in enumerate(genes.blocks):
            if len(gene) != 2:
                raise ArchError(f"{where} block {b} has genes {list(gene)}; an MBConv block has [kernel, expand ratio]")
            check_choice(f"{where} block {b} kernel", gene[0], self.kernels)
            check_choice(f"{where} block {b} expand ratio", gene[1], self.expand_ratios)

    def size(self) -> int:
        """Widths times the sum over depths of (kernels x ratios) ** depth."""
        per_block = len(self.kernels) * len(self.expand_ratios)
        return len(self.widths) * sum(per_block**d for d in self.depths)

    def pinned(self, genes: StageGenes) -> list[StageSpec]:
        """One depth-1 stage per block of `genes`, each with that block's width, kernel and ratio only."""
        self.check(genes, "pinned stage")
        return [
            self.model_copy(update={"widths": [genes.width], "depths": [1], "kernels": [k], "expand_ratios": [e],
                                    "stride": self.stride if b == 0 else 1})
            for b, (k, e) in enumerate(genes.blocks)
        ]

    def restricted(self, kernel: int | None, depth: int | None, expand: int | None, width: int | None) -> ElasticMBConvStage:
        """The `n` largest kernels, depths, ratios and widths."""
        return self.model_copy(
            update={
                "kernels": top_choices(self.kernels, kernel),
                "depths": top_choices(self.depths, depth),
                "expand_ratios": top_choices(self.expand_ratios, expand),
                "widths": top_choices(self.widths, width),
            }
        )

    def describe(self) -> str:
        """`width {..} depth {..} kernel {..} expand {..} s2 SE swish`."""
        return (
            f"width {fmt_choices(self.widths)} depth {fmt_choices(self.depths)} kernel {fmt_choices(self.kernels)} "
            f"expand {fmt_choices(self.expand_ratios)} s{self.stride}{' SE' if self.se else ''} {self.activation}"
        )

    def genes_text(self, genes: StageGenes) -> str:
        """`d2 w24 k3,5 e4,6`."""
        ks = ",".join(str(k) for k, _ in genes.blocks)
        es = ",".join(f"{as_number(e):g}" for _, e in genes.blocks)
        return f"d{len(genes.blocks)} w{genes.width} k{ks} e{es}"

    # -- modules -----------------------------------------------------------------------------------------
    def dynamic_blocks(self, in_widths: list[int], kernel_transform: bool) -> list[nn.Module]:
        """One weight-shared DynamicMBConv per possible block."""
        return [
            DynamicMBConv(
                in_widths if b == 0 else self.widths,
                self.widths,
                self.kernels,
                self.expand_ratios,
                self.stride if b == 0 else 1,
                self.se,
                self.activation,
                self.shortcut,
                kernel_transform,
                self.shortcut_pool,
            )
            for b in range(max(self.depths))
        ]

    def configure(self, block: nn.Module, width: int, gene: Gene) -> None:
        """Active output width, kernel and ratio."""
        block.configure(width, gene[0], gene[1])  # type: ignore[operator]

    def static_block(self, b: int, c_in: int, width: int, gene: Gene) -> nn.Module:
        """A plain MBConv."""
        return MBConv(c_in, width, gene[0], gene[1], self.stride if b == 0 else 1, self.se, self.activation, self.shortcut,
                      self.shortcut_pool)

    def copy_block(self, block: nn.Module, static: nn.Module, gene: Gene) -> None:
        """Slice the shared weights into the static MBConv."""
        block.copy_to(static)  # type: ignore[operator]

    def reset_parameters(self, blocks: list[nn.Module]) -> None:
        """Zero-init the last BN of each always-residual block so it starts as identity (BigNAS).

        Blocks without a shortcut keep gamma = 1 or they would pass nothing on.
        """
        for b, block in enumerate(blocks):
            if b > 0 or block.shortcut_kind == "conv":
                nn.init.zeros_(block.project_bn.weight)

    # -- cost, latency, encoding -------------------------------------------------------------------------
    def block_cost(self, b: int, c_in: int, width: int, size: int, gene: Gene) -> tuple[int, int, int]:
        """Expand, depthwise, SE, project and shortcut convs."""
        stride = self.stride if b == 0 else 1
        return mbconv_cost(c_in, width, size, gene[0], gene[1], stride, self.se, self.shortcut)

    def block_layer(self, b: int, c_in: int, width: int, gene: Gene, side: int) -> tuple[LayerKey | None, int]:
        """A `block(...)` table entry."""
        stride, kernel = (self.stride if b == 0 else 1), gene[0]
        layer = BlockLayer(c_in, width, kernel, as_number(gene[1]), stride, self.se, self.activation, self.shortcut, side)
        return layer, conv_out_size(side, kernel, stride)

    def stage_layers(self, states: set[tuple[int, int]]) -> tuple[set[LayerKey], set[tuple[int, int]]]:
        """The first block from every input state; later blocks keep channels and odd 'same' kernels the side."""
        ratios = [as_number(e) for e in self.expand_ratios]
        layers: set[LayerKey] = set()
        after_first: set[tuple[int, int]] = set()
        for c, side in states:
            for w in self.widths:
                for k in self.kernels:
                    after_first.add((w, conv_out_size(side, k, self.stride)))
                    for e in ratios:
                        layers.add(BlockLayer(c, w, k, e, self.stride, self.se, self.activation, self.shortcut, side))
        out = set(after_first)
        if max(self.depths) > 1:
            for w, side in after_first:
                for k in self.kernels:
                    out.add((w, conv_out_size(side, k, 1)))
                    for e in ratios:
                        layers.add(BlockLayer(w, w, k, e, 1, self.se, self.activation, self.shortcut, side))
        return layers, out

    def encode(self, genes: StageGenes) -> list[float]:
        """Width and depth scaled, then per block slot kernel and ratio in (0, 1], 0 for switched-off blocks."""
        values = [scale(genes.width, self.widths), scale(len(genes.blocks), self.depths)]
        for b in range(max(self.depths)):
            if b < len(genes.blocks):
                values += [slot(genes.blocks[b][0], self.kernels), slot(genes.blocks[b][1], self.expand_ratios)]
            else:
                values += [0.0, 0.0]
        return values

    def encoding_size(self) -> int:
        """2 + 2 per possible block."""
        return 2 + 2 * max(self.depths)
