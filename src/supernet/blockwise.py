"""DNA's block-wise supervision (Li et al., CVPR 2020): a teacher cut into blocks, students trained per block.

The teacher (a plain network of this tool: an export or a run's largest sub-network) and the supernet are
both cut where their feature resolution changes; the stem belongs to the first block. Student block i
maps the teacher's block i-1 output (the images, for block 0) to the teacher's block i output, with the
mean squared error ||Y_i - Y^_i(Y_{i-1})||^2 / K of DNA's Eq. (3) (K: the elements of Y_i); the head
learns the labels from the teacher's last block output (the official code's last stage). The blocks
share no input, so one step trains all of them in parallel, each on its own path of the sampled arch.

A search ranks architectures by the sum of their blocks' losses on held-out images (DNA section 3.4).
As DNA's potential evaluation does, those losses are measured with batch statistics in BN (no running
statistics, hence no recalibration), and each distinct block configuration is measured once.

DNA's students keep the teacher's channels where blocks meet: every stage that ends a block has one
width, the teacher's there. A space with elastic widths at those stages, more than one resolution, or
another number of resolution changes than the teacher is refused with the mismatch named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supernet.cost import count_macs_by_hooks
from supernet.model import Supernet
from supernet.nn.batchnorm import frozen_bn_statistics
from supernet.nn.static import StaticNet
from supernet.nn.widths import conv_out_size
from supernet.space import Arch, SearchSpace


class BlockwiseError(ValueError):
    """A teacher and a search space cannot be matched block by block."""


@dataclass(frozen=True)
class Block:
    """One block of the supernet: stages [first, stop), the stem too for block 0, and its output's shape."""

    first: int
    stop: int
    channels: int
    side: int


def _groups(sides: Sequence[int]) -> list[list[int]]:
    """Indices of consecutive equal output sides; a leading group of the stem alone joins the next one."""
    groups: list[list[int]] = []
    for i, side in enumerate(sides):
        if groups and sides[groups[-1][-1]] == side:
            groups[-1].append(i)
        else:
            groups.append([i])
    if len(groups) > 1 and groups[0] == [0]:
        groups[1].insert(0, 0)
        groups.pop(0)
    return groups


def space_blocks(space: SearchSpace) -> list[Block]:
    """The supernet's blocks: stages grouped by output resolution (DNA's cut), with their output width."""
    spec = space.spec
    if len(spec.resolutions) != 1:
        raise BlockwiseError(
            f"block-wise distillation trains at one input resolution, but space {space.name!r} has resolutions "
            f"{spec.resolutions}; give the space the teacher's resolution alone"
        )
    side = conv_out_size(spec.resolutions[0], spec.stem.kernel, spec.stem.stride)
    sides = [side]
    for stage in spec.stages:
        side = conv_out_size(side, 3, stage.stride)
        sides.append(side)
    blocks = []
    for group in _groups(sides):
        stages = [i - 1 for i in group if i > 0]  # index 0 is the stem
        last = spec.stages[stages[-1]]
        if len(last.widths) != 1:
            raise BlockwiseError(
                f"stage {stages[-1] + 1} ends a block (resolution {sides[group[-1]]}) but has widths {last.widths}; "
                "DNA's students keep the teacher's channels where blocks meet: give that stage one width"
            )
        blocks.append(Block(stages[0], stages[-1] + 1, last.widths[0], sides[group[-1]]))
    return blocks


class TeacherBlocks(nn.Module):
    """A frozen plain network cut where its feature resolution changes: `forward` returns each block's output."""

    def __init__(self, net: StaticNet, resolution: int, in_channels: int):
        super().__init__()
        if not isinstance(net, StaticNet):
            raise BlockwiseError(
                f"block-wise distillation needs a teacher built by this tool (an export or a run), got a "
                f"{type(net).__name__}"
            )
        super().train(False)
        self.net = net.eval().requires_grad_(False)
        self.resolution = resolution
        layers = [net.stem, *net.blocks]
        ref = next(net.parameters())
        x = torch.zeros(1, in_channels, resolution, resolution, device=ref.device, dtype=ref.dtype)
        shapes = []
        with torch.no_grad():
            for layer in layers:
                x = layer(x)
                shapes.append((x.shape[1], x.shape[-1]))
        self.cuts = [group[-1] for group in _groups([side for _, side in shapes])]
        self.shapes = [shapes[i] for i in self.cuts]  # (channels, side) of each block's output
        self.stack = nn.Sequential(*layers).eval()
        # what one image costs it (stem and blocks; the head never runs), counted once here
        self.macs_per_image = count_macs_by_hooks(self.stack, (1, in_channels, resolution, resolution))

    def forward(self, images: Tensor) -> list[Tensor]:
        """Each block's output for `images`, without gradients (BN in eval mode: per image, batch-independent)."""
        out, x = [], images
        with torch.no_grad():
            for i, layer in enumerate(self.stack):
                x = layer(x)
                if i in self.cuts:
                    out.append(x.float())
        return out

    def train(self, mode: bool = True) -> TeacherBlocks:
        """Always frozen: BN keeps the teacher's running statistics whatever the caller asks."""
        return super().train(False)


def match_blocks(teacher: TeacherBlocks, space: SearchSpace) -> list[Block]:
    """The supernet's blocks, checked against the teacher's: same resolutions, the teacher's channels at each cut."""
    blocks = space_blocks(space)
    if space.spec.resolutions[0] != teacher.resolution:
        raise BlockwiseError(
            f"the teacher takes {teacher.resolution}x{teacher.resolution} images but space {space.name!r} "
            f"{space.spec.resolutions[0]}; give the space the teacher's resolution"
        )
    ours = [(b.channels, b.side) for b in blocks]
    if [side for _, side in ours] != [side for _, side in teacher.shapes]:
        raise BlockwiseError(
            f"the teacher's blocks end at resolutions {[s for _, s in teacher.shapes]} and space {space.name!r}'s "
            f"at {[b.side for b in blocks]}; DNA needs the same cuts: use a teacher of the space's layout"
        )
    for i, (block, (channels, side)) in enumerate(zip(blocks, teacher.shapes)):
        if block.channels != channels:
            raise BlockwiseError(
                f"block {i + 1} (resolution {side}) ends with {channels} channels in the teacher and "
                f"{block.channels} in space {space.name!r} (stage {block.stop}); DNA's students keep the "
                "teacher's channels there: set that stage's width to the teacher's"
            )
    return blocks


class BlockwiseStudent(nn.Module):
    """The supernet's active sub-network run block by block on the teacher's features (what DDP wraps).

    `forward(images, features)` returns each student block's output (block 0 from the images, block i
    from the teacher's block i-1 output) and the head's logits on the teacher's last block output.
    """

    def __init__(self, net: Supernet, blocks: Sequence[Block]):
        super().__init__()
        self.net = net
        self.blocks = list(blocks)

    def forward(self, images: Tensor, features: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        outputs = [run_block(self.net, block, i, images, features) for i, block in enumerate(self.blocks)]
        return outputs, self.net.forward_head(features[-1])


def run_block(net: Supernet, block: Block, index: int, images: Tensor, features: Sequence[Tensor]) -> Tensor:
    """Student block `index` of the active sub-network: from the images for block 0, else from the teacher's
    previous block output."""
    x = net.forward_stem(images) if index == 0 else features[index - 1]
    return net.forward_stages(x, block.first, block.stop)


def block_losses(outputs: Sequence[Tensor], features: Sequence[Tensor]) -> list[Tensor]:
    """DNA's Eq. (3) per block: the mean squared error between a student block's output and the teacher's."""
    return [block_error(out, target) for out, target in zip(outputs, features)]


def block_key(arch: Arch, block: Block, index: int) -> tuple[object, ...]:
    """What determines a block's function within an arch: its stages' genes (and the stem width for block 0)."""
    stages = tuple((arch.widths[s], arch.depths[s], tuple(arch.blocks[s][: arch.depths[s]]))
                   for s in range(block.first, block.stop))
    return (index, arch.stem_width if index == 0 else None, stages)


MEASURES = ("mse", "relative_l1")


def block_error(out: Tensor, target: Tensor, measure: str = "mse") -> Tensor:
    """A block's error: `mse` (DNA's Eq. 3) or `relative_l1`, mean |error| over the target's std (DNA's code)."""
    if measure == "relative_l1":
        return (out.float() - target).abs().mean() / (target.std() + 1e-9)
    return F.mse_loss(out.float(), target)


class BlockLossRanker:
    """DNA's search figure: an arch's summed block losses on held-out images (lower is better).

    Teacher features are computed once per batch for every arch asked for in one call; each block
    configuration is measured once and remembered, since blocks are independent. `measure` is DNA's
    paper's `mse` (the default) or its search code's `relative_l1`.
    """

    def __init__(self, net: Supernet, teacher: TeacherBlocks, batches: Sequence[Tensor], *, measure: str = "mse",
                 source: str = "teacher"):
        if measure not in MEASURES:
            raise BlockwiseError(f"unknown block-loss measure {measure!r}; use one of {list(MEASURES)}")
        self.net = net
        self.teacher = teacher
        self.blocks = match_blocks(teacher, net.space)
        self.batches = list(batches)
        if not self.batches:
            raise BlockwiseError("ranking by block losses needs at least one batch of held-out images")
        self.measure, self.source = measure, source
        self.known: dict[tuple[object, ...], float] = {}

    def describe(self) -> str:
        """What the figures were measured on and how (part of a saved search state's fingerprint)."""
        images = sum(b.shape[0] for b in self.batches)
        return f"block {self.measure} against {self.source} on {images} val images"

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        todo: dict[tuple[object, ...], tuple[Arch, int]] = {}
        for arch in archs:
            for i, block in enumerate(self.blocks):
                key = block_key(arch, block, i)
                if key not in self.known:
                    todo.setdefault(key, (arch, i))
        if todo:
            self._measure(todo)
        return [sum(self.known[block_key(a, b, i)] for i, b in enumerate(self.blocks)) for a in archs]

    def _measure(self, todo: dict[tuple[object, ...], tuple[Arch, int]]) -> None:
        net, totals, images = self.net, dict.fromkeys(todo, 0.0), 0
        active, training = net.active_arch, net.training
        rates = net.dropout_rate, net.drop_connect_rate
        net.dropout_rate = net.drop_connect_rate = 0.0
        device = next(net.parameters()).device
        try:
            net.train()  # batch statistics in BN, as DNA's potential evaluation; running statistics untouched
            with torch.no_grad(), frozen_bn_statistics(net):
                for x in self.batches:
                    x = x.to(device)
                    features = self.teacher(x)
                    for key, (arch, i) in todo.items():
                        net.set_active(arch)
                        out = run_block(net, self.blocks[i], i, x, features)
                        totals[key] += block_error(out, features[i], self.measure).item() * x.shape[0]
                    images += x.shape[0]
        finally:
            net.set_active(active)
            net.train(training)
            net.dropout_rate, net.drop_connect_rate = rates
        self.known.update({key: total / images for key, total in totals.items()})
