"""Choice-block stages (SPOS, Cream, DNA, EnNAS): per layer several operators with independent weights.

Operators, by name: `mbconv_k{K}_e{E}` (inverted residual, kernel K, expand ratio E; `_se` adds squeeze-
excite), `shuffle_k{K}` (ShuffleNetV2 unit), `xception` (the Xception-style ShuffleNetV2 unit of SPOS) and
`identity`. A block's gene is (operator,). Identity lets depth vary and is a candidate in every layer but
a stage's first (which changes stride or width), as in ProxylessNAS, DNA and Cream.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from supernet.families.base import FamilyStage, LayerKey, mbconv_cost
from supernet.nn.choice import IDENTITY, ChoiceBlock
from supernet.nn.shuffle import ShuffleBlock, shuffle_split, shuffle_widths
from supernet.nn.static import MBConv
from supernet.nn.widths import conv_out_size
from supernet.space import (
    Activation,
    ArchError,
    Gene,
    SpaceError,
    StageGenes,
    StageSpec,
    check_choice,
    fmt_choices,
)

_MBCONV = re.compile(r"mbconv_k(\d+)_e(\d+(?:\.\d+)?)(_se)?")
_SHUFFLE = re.compile(r"shuffle_k(\d+)")


@dataclass(frozen=True)
class Operator:
    """A parsed operator name."""

    kind: Literal["mbconv", "shuffle", "xception", "identity"]
    kernel: int = 3
    expand_ratio: float = 1
    se: bool = False


@functools.lru_cache(maxsize=256)
def parse_operator(name: str) -> Operator:
    """The operator a name denotes; ValueError naming the accepted forms otherwise (cached: cost counts parse
    every block of every sub-network they see)."""
    if name == IDENTITY:
        return Operator("identity")
    if name == "xception":
        return Operator("xception")
    if m := _SHUFFLE.fullmatch(name):
        kernel = int(m.group(1))
    elif m := _MBCONV.fullmatch(name):
        kernel = int(m.group(1))
        ratio = float(m.group(2))
        if ratio <= 0:
            raise ValueError(f"operator {name!r}: expand ratio must be positive")
    else:
        raise ValueError(
            f"unknown operator {name!r}; operators are mbconv_k<K>_e<E>[_se], shuffle_k<K>, xception, identity"
        )
    if kernel % 2 == 0:
        raise ValueError(f"operator {name!r}: kernels must be odd")
    if name.startswith("shuffle"):
        return Operator("shuffle", kernel)
    return Operator("mbconv", kernel, int(ratio) if ratio.is_integer() else ratio, m.group(3) is not None)


def _conv(c_in: int, c_out: int, kernel: int, side: int, groups: int = 1) -> tuple[int, int]:
    """(MACs, params) of a conv + BN producing a `side` x `side` map."""
    return c_out * side * side * (c_in // groups) * kernel * kernel, c_out * (c_in // groups) * kernel * kernel + 2 * c_out


def operator_cost(op: Operator, c_in: int, width: int, size: int, stride: int, shortcut: str) -> tuple[int, int, int]:
    """(MACs, params, output side) of one operator on a `size` x `size` input of `c_in` channels."""
    if op.kind == "identity":
        return 0, 0, size
    if op.kind == "mbconv":
        return mbconv_cost(c_in, width, size, op.kernel, op.expand_ratio, stride, op.se, shortcut)
    main_in, mid, main_out = shuffle_widths(c_in, width, stride)
    out = conv_out_size(size, 3 if op.kind == "xception" else op.kernel, stride)
    if op.kind == "xception":
        convs = [(main_in, main_in, 3, out, main_in), (main_in, mid, 1, out, 1), (mid, mid, 3, out, mid),
                 (mid, mid, 1, out, 1), (mid, mid, 3, out, mid), (mid, main_out, 1, out, 1)]
    else:
        convs = [(main_in, mid, 1, size, 1), (mid, mid, op.kernel, out, mid), (mid, main_out, 1, out, 1)]
    if not shuffle_split(c_in, width, stride):
        k = 3 if op.kind == "xception" else op.kernel
        convs += [(c_in, c_in, k, out, c_in), (c_in, c_in, 1, out, 1)]
    macs = params = 0
    for conv in convs:
        m, p = _conv(*conv)
        macs, params = macs + m, params + p
    return macs, params, out


@functools.lru_cache(maxsize=4096)
def _nominal_macs(name: str, width: int, stride: int, shortcut: str) -> int:
    """An operator's MACs at its stage's width on an 8 x 8 input: how largest() and smallest() rank a layer's
    operators (cached: the training loop asks for the largest sub-network every step)."""
    return operator_cost(parse_operator(name), width, width, 8, stride, shortcut)[0]


@dataclass(frozen=True)
class ChoiceLayer(LayerKey):
    """One choice-block operator on a `side` x `side` input."""

    op: str
    in_c: int
    out_c: int
    stride: int
    activation: str
    shortcut: str
    side: int
    kind = "choice"

    def module(self) -> nn.Module:
        """A freshly initialised layer of this shape."""
        return build_operator(parse_operator(self.op), self.in_c, self.out_c, self.stride, self.activation, self.shortcut)


def build_operator(op: Operator, c_in: int, width: int, stride: int, activation: str, shortcut: str) -> nn.Module:
    """A freshly initialised plain module of one operator."""
    if op.kind == "identity":
        return nn.Identity()
    if op.kind == "mbconv":
        return MBConv(c_in, width, op.kernel, op.expand_ratio, stride, op.se, activation, shortcut)
    return ShuffleBlock(c_in, width, op.kernel, stride, activation, xception=op.kind == "xception")


class ChoiceStage(FamilyStage):
    """`layers` choice blocks of output `width`; each picks one of `ops` (Identity not in the first)."""

    family: Literal["choice"] = "choice"
    width: int
    layers: int
    ops: list[str]
    activation: Activation = "relu"
    shortcut: Literal["conv", "identity"] = "identity"
    layer_ops: list[list[str]] | None = Field(
        None, description="per layer, its own operators (each among `ops`), overriding `ops` for that layer; "
        "what a pinned one-network space records"
    )

    @field_validator("width", "layers")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("ops must list at least one operator")
        if len(set(v)) != len(v):
            raise ValueError(f"ops has repeated operators {v}")
        for name in v:
            parse_operator(name)
        return v

    @model_validator(mode="after")
    def _not_only_identity(self) -> ChoiceStage:
        if all(op == IDENTITY for op in self.ops):
            raise ValueError("ops needs an operator other than identity (a stage's first layer cannot skip)")
        if self.layer_ops is not None:
            if len(self.layer_ops) != self.layers:
                raise ValueError(f"layer_ops lists {len(self.layer_ops)} layers, the stage has {self.layers}")
            for b, ops in enumerate(self.layer_ops):
                if not ops or any(op not in self.ops for op in ops) or (b == 0 and ops == [IDENTITY]):
                    raise ValueError(f"layer_ops[{b}] must list some of the stage's ops {self.ops} "
                                     "(the first layer not only identity)")
        return self

    @property
    def widths(self) -> list[int]:
        """The one output width."""
        return [self.width]

    @property
    def depths(self) -> list[int]:
        """The one block count (Identity operators shorten the effective depth)."""
        return [self.layers]

    def _block_stride(self, b: int) -> int:
        return self.stride if b == 0 else 1

    # -- genes -----------------------------------------------------------------------------------------
    def block_choices(self, block: int) -> list[Gene]:
        """The stage's (or this layer's `layer_ops`) operators; no Identity in the first layer."""
        ops = self.ops if self.layer_ops is None else self.layer_ops[block]
        return [(op,) for op in ops if not (block == 0 and op == IDENTITY)]

    def _nominal_macs(self, b: int, gene: Gene) -> int:
        return _nominal_macs(gene[0], self.width, self._block_stride(b), self.shortcut)

    def largest(self) -> StageGenes:
        """Per layer the operator with the most MACs."""
        return StageGenes(self.width, tuple(
            max(self.block_choices(b), key=lambda g, b=b: self._nominal_macs(b, g)) for b in range(self.layers)
        ))

    def smallest(self) -> StageGenes:
        """Per layer the operator with the fewest MACs (Identity where allowed)."""
        return StageGenes(self.width, tuple(
            min(self.block_choices(b), key=lambda g, b=b: self._nominal_macs(b, g)) for b in range(self.layers)
        ))

    def sample(self, rng: random.Random) -> StageGenes:
        """Each layer's operator uniformly."""
        return StageGenes(self.width, tuple(rng.choice(self.block_choices(b)) for b in range(self.layers)))

    def mutate(self, genes: StageGenes, prob: float, rng: random.Random) -> StageGenes:
        """Resample each layer's operator with probability `prob`."""
        return StageGenes(self.width, tuple(
            rng.choice(self.block_choices(b)) if rng.random() < prob else g for b, g in enumerate(genes.blocks)
        ))

    def crossover(self, a: StageGenes, b: StageGenes, rng: random.Random) -> StageGenes:
        """Each layer's operator from either parent."""
        return StageGenes(self.width, tuple(x if rng.random() < 0.5 else y for x, y in zip(a.blocks, b.blocks)))

    def check(self, genes: StageGenes, where: str) -> None:
        """The width, the layer count and each layer's operator."""
        check_choice(f"{where} width", genes.width, self.widths)
        check_choice(f"{where} depth", len(genes.blocks), self.depths)
        for b, gene in enumerate(genes.blocks):
            choices = self.block_choices(b)
            if gene not in choices:
                raise ArchError(
                    f"{where} block {b} operator {list(gene)} is not in the layer's choices {[c[0] for c in choices]}"
                )

    def size(self) -> int:
        """The product of the layers' operator counts."""
        total = 1
        for b in range(self.layers):
            total *= len(self.block_choices(b))
        return total

    def pinned(self, genes: StageGenes) -> list[StageSpec]:
        """This stage with each layer's operator fixed to the one in `genes`."""
        self.check(genes, "pinned stage")
        chosen = [g[0] for g in genes.blocks]
        return [self.model_copy(update={"ops": list(dict.fromkeys(chosen)), "layer_ops": [[op] for op in chosen]})]

    def restricted(self, kernel: int | None, depth: int | None, expand: int | None, width: int | None) -> ChoiceStage:
        """Unchanged: a choice stage has no elastic dimensions to shrink."""
        return self

    def describe(self) -> str:
        """`choice width 40 x4 ops {...} s2 relu`."""
        return f"choice width {self.width} x{self.layers} ops {fmt_choices(self.ops)} s{self.stride} {self.activation}"

    def genes_text(self, genes: StageGenes) -> str:
        """`w40 k3e6,s5,-,x`: MBConv as k<K>e<E>, ShuffleNetV2 as s<K>, Xception as x, Identity as -."""
        def short(name: str) -> str:
            op = parse_operator(name)
            if op.kind == "mbconv":
                return f"k{op.kernel}e{op.expand_ratio:g}" + ("se" if op.se else "")
            return {"shuffle": f"s{op.kernel}", "xception": "x", "identity": "-"}[op.kind]

        return f"w{genes.width} " + ",".join(short(g[0]) for g in genes.blocks)

    # -- modules -----------------------------------------------------------------------------------------
    def check_input(self, in_widths: list[int], where: str) -> None:
        """One fixed input width that every operator of the first layer can take."""
        if len(in_widths) != 1:
            raise SpaceError(
                f"{where}: a choice stage's blocks have fixed input widths, but the layer before it has widths "
                f"{in_widths}; give that layer a single width"
            )
        for b in range(self.layers):
            c_in = in_widths[0] if b == 0 else self.width
            for (name,) in self.block_choices(b):
                op = parse_operator(name)
                if op.kind in ("shuffle", "xception"):
                    _, _, main_out = shuffle_widths(c_in, self.width, self._block_stride(b))
                    if main_out <= 0 or (shuffle_split(c_in, self.width, self._block_stride(b)) and c_in % 2):
                        raise SpaceError(
                            f"{where}: operator {name} cannot go from {c_in} to {self.width} channels (ShuffleNetV2 "
                            "units keep an even width or widen it)"
                        )

    def dynamic_blocks(self, in_widths: list[int], kernel_transform: bool) -> list[nn.Module]:
        """One ChoiceBlock per layer holding every candidate operator."""
        blocks = []
        for b in range(self.layers):
            c_in = in_widths[0] if b == 0 else self.width
            blocks.append(ChoiceBlock({g[0]: self._operator(b, c_in, g) for g in self.block_choices(b)}))
        return blocks

    def _operator(self, b: int, c_in: int, gene: Gene) -> nn.Module | None:
        op = parse_operator(gene[0])
        if op.kind == "identity":
            return None
        return build_operator(op, c_in, self.width, self._block_stride(b), self.activation, self.shortcut)

    def configure(self, block: nn.Module, width: int, gene: Gene) -> None:
        """Pick the layer's operator."""
        block.configure(gene[0])  # type: ignore[operator]

    def static_block(self, b: int, c_in: int, width: int, gene: Gene) -> nn.Module:
        """A plain module of the operator (nn.Identity for Identity)."""
        return build_operator(parse_operator(gene[0]), c_in, width, self._block_stride(b), self.activation, self.shortcut)

    def copy_block(self, block: nn.Module, static: nn.Module, gene: Gene) -> None:
        """The chosen operator's own weights."""
        block.copy_to(static, gene[0])  # type: ignore[operator]

    # -- cost, latency, encoding -------------------------------------------------------------------------
    def block_cost(self, b: int, c_in: int, width: int, size: int, gene: Gene) -> tuple[int, int, int]:
        """The chosen operator's convs (Identity is free)."""
        return operator_cost(parse_operator(gene[0]), c_in, width, size, self._block_stride(b), self.shortcut)

    def block_layer(self, b: int, c_in: int, width: int, gene: Gene, side: int) -> tuple[LayerKey | None, int]:
        """A `choice(...)` table entry, none for Identity."""
        op = parse_operator(gene[0])
        if op.kind == "identity":
            return None, side
        stride = self._block_stride(b)
        out = operator_cost(op, c_in, width, side, stride, self.shortcut)[2]
        return ChoiceLayer(gene[0], c_in, width, stride, self.activation, self.shortcut, side), out

    def stage_layers(self, states: set[tuple[int, int]]) -> tuple[set[LayerKey], set[tuple[int, int]]]:
        """Every operator of every layer at every reachable input side (channels are fixed)."""
        layers: set[LayerKey] = set()
        out: set[tuple[int, int]] = set()
        for c, side in states:
            for b in range(self.layers):
                c_in = c if b == 0 else self.width
                for gene in self.block_choices(b):
                    layer, _ = self.block_layer(b, c_in, self.width, gene, side)
                    if layer is not None:
                        layers.add(layer)
                side = conv_out_size(side, 1, self._block_stride(b))  # every operator pads 'same' with odd kernels
            out.add((self.width, side))
        return layers, out

    def encode(self, genes: StageGenes) -> list[float]:
        """One-hot of each layer's operator."""
        values: list[float] = []
        for b, gene in enumerate(genes.blocks):
            values += [1.0 if c == gene else 0.0 for c in self.block_choices(b)]
        return values

    def encoding_size(self) -> int:
        """The sum of the layers' operator counts."""
        return sum(len(self.block_choices(b)) for b in range(self.layers))
