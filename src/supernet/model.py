"""The weight-sharing supernet: run any sub-network of a search space, extract it as a plain module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from supernet.families.base import family_stages
from supernet.nn.dynamic_blocks import DynamicConvBnAct, DynamicHead
from supernet.nn.static import Head, StaticNet, conv_bn_act
from supernet.nn.widths import expanded_width, head_mid_channels
from supernet.space import Arch, SearchSpace


class Supernet(nn.Module):
    """All sub-networks of `space` in one module; `set_active(arch)` picks the one `forward` runs.

    Each stage's blocks come from its block family (`supernet.families`). Regularisation for training
    (the trainer sets these for the largest sub-network only): `dropout_rate` before the classifier,
    `drop_connect_rate` on residual blocks (scaled by block depth as in AttentiveNAS), drawing from
    `noise_generator` when given.
    """

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        in_channels: int | None = None,
        kernel_transform: bool = False,
    ):
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.in_channels = space.in_channels if in_channels is None else in_channels
        self.kernel_transform = kernel_transform
        spec = space.spec
        self.stem = DynamicConvBnAct(
            self.in_channels, max(spec.stem.widths), spec.stem.kernel, spec.stem.stride, spec.stem.activation
        )
        self.families = family_stages(space)
        stages, prev_widths = [], spec.stem.widths
        for st in self.families:
            stages.append(nn.ModuleList(st.dynamic_blocks(prev_widths, kernel_transform)))
            prev_widths = st.widths
        self.stages = nn.ModuleList(stages)
        last = max(prev_widths)
        self.head = DynamicHead(
            last,
            max(expanded_width(w, spec.head.expand_ratio) for w in prev_widths),
            max(spec.head.widths),
            num_classes,
            spec.head.activation,
            mix=spec.head.mix,
        )
        self.dropout_rate = 0.0
        self.drop_connect_rate = 0.0
        self.noise_generator: torch.Generator | None = None
        self.channels_last = False
        self._reset_parameters()
        self.active_arch = space.largest()
        self.set_active(self.active_arch)

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for st, blocks in zip(self.families, self.stages):
            st.reset_parameters(list(blocks))
        nn.init.normal_(self.head.classifier.weight, std=0.01)
        nn.init.zeros_(self.head.classifier.bias)

    def set_active(self, arch: Arch) -> None:
        """Make `arch` the sub-network that `forward` runs (raises ArchError if it is out of space)."""
        self.space.validate(arch)
        for s, (st, stage) in enumerate(zip(self.families, self.stages)):
            for b, gene in enumerate(arch.blocks[s]):
                st.configure(stage[b], arch.widths[s], gene)
        self.active_arch = arch

    def set_channels_last(self, enabled: bool = True) -> Supernet:
        """Store weights and run inputs in channels-last (NHWC) layout: about 2x faster on CPU for MBConvs."""
        self.channels_last = enabled
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)
        x = self.forward_stages(x, 0, len(self.stages))
        return self.forward_head(x)

    def forward_stem(self, x: Tensor) -> Tensor:
        """The active sub-network's stem on input images."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stem(x, self.active_arch.stem_width)

    def forward_stages(self, x: Tensor, first: int, stop: int) -> Tensor:
        """Stages `first` to `stop - 1` of the active sub-network on the features entering stage `first`."""
        arch = self.active_arch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        total = sum(arch.depths)
        index = sum(arch.depths[:first])  # drop-connect grows with a block's depth in the whole network
        for stage, depth in zip(self.stages[first:stop], arch.depths[first:stop]):
            for b in range(depth):
                rate = self.drop_connect_rate * index / total
                x = stage[b](x, rate, self.noise_generator)
                index += 1
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        """The active sub-network's head (expand conv, pool, classifier) on the last stage's features."""
        arch = self.active_arch
        head = self.space.spec.head
        mid = head_mid_channels(head.mix, head.expand_ratio, x.shape[1], arch.head_width)
        return self.head(x, mid, arch.head_width, self.dropout_rate, self.noise_generator)

    @torch.no_grad()
    def extract(self, arch: Arch | None = None) -> StaticNet:
        """A standalone plain-torch network of `arch` (default: the active one) with copied weights."""
        arch = self.active_arch if arch is None else arch
        with torch.random.fork_rng(devices=[]):  # the fresh init is overwritten; keep the global RNG untouched
            net = build_static(self.space, arch, self.num_classes, self.in_channels)
        self.stem.copy_to(net.stem)
        blocks = iter(net.blocks)
        for s, (st, stage) in enumerate(zip(self.families, self.stages)):
            for b, gene in enumerate(arch.blocks[s]):
                st.copy_block(stage[b], next(blocks), gene)
        self.head.copy_to(net.head)
        ref = next(self.parameters())
        return net.to(device=ref.device, dtype=ref.dtype).train(self.training)


def build_static(
    space: SearchSpace, arch: Arch, num_classes: int, in_channels: int | None = None, dropout: float = 0.0
) -> StaticNet:
    """A freshly initialised static network of `arch` (weights are copied in by `Supernet.extract`)."""
    space.validate(arch)
    in_channels = space.in_channels if in_channels is None else in_channels
    spec = space.spec
    stem = conv_bn_act(in_channels, arch.stem_width, spec.stem.kernel, spec.stem.stride, spec.stem.activation)
    blocks, c = [], arch.stem_width
    for s, st in enumerate(family_stages(space)):
        for b, gene in enumerate(arch.blocks[s]):
            blocks.append(st.static_block(b, c, arch.widths[s], gene))
            c = arch.widths[s]
    head_spec = spec.head
    mid = head_mid_channels(head_spec.mix, head_spec.expand_ratio, c, arch.head_width)
    head = Head(c, mid, arch.head_width, num_classes, head_spec.activation, dropout, mix=head_spec.mix)
    return StaticNet(stem, blocks, head)
