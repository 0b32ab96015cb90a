"""The weight-sharing supernet: run any sub-network of a search space, extract it as a plain module."""

from __future__ import annotations

from collections.abc import Collection, Mapping

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
            conv=spec.head.conv,
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

    @torch.no_grad()
    def load_extracted(self, state: Mapping[str, Tensor], skip: Collection[str] = ()) -> None:
        """Write a static network's weights (keys as `extract()` names them) into a one-network (pinned) space's
        supernet, the inverse of `extract`; keys in `skip` keep the supernet's own values (a fresh classifier).

        Each static tensor is traced to the supernet tensor it is copied from; raises ValueError when
        `extract` would not give back exactly `state` (the space has more than one network, or shapes differ).
        """
        if self.space.size() != 1:
            raise ValueError(f"load_extracted needs a one-network space (SearchSpace.pinned), {self.space.name!r} "
                             f"has {self.space.size():.3g} networks")
        own = {k: v for k, v in self.state_dict().items() if v.is_floating_point()}
        saved = {k: v.clone() for k, v in own.items()}
        for i, tensor in enumerate(own.values()):
            tensor.fill_(i + 1)  # exact in float32 for up to 2^24 tensors
        names = list(own)
        traced = {k: v for k, v in self.extract(self.space.largest()).state_dict().items() if v.is_floating_point()}
        for k, v in own.items():
            v.copy_(saved[k])
        wanted = {k: v for k, v in state.items() if k not in skip}
        for key, marker in traced.items():
            if key in skip:
                continue
            if key not in wanted:
                raise ValueError(f"the weights lack {key!r}, which this network has")
            source = names[int(marker.flatten()[0].item()) - 1]
            if own[source].shape != wanted[key].shape or not bool((marker == marker.flatten()[0]).all()):
                raise ValueError(f"{key!r}: shape {tuple(wanted[key].shape)} does not fit this network's "
                                 f"{tuple(own[source].shape)}")
            own[source].copy_(wanted[key].to(own[source].dtype))
        extra = sorted(set(wanted) - set(traced) - {k for k in wanted if not wanted[k].is_floating_point()})
        if extra:
            raise ValueError(f"the weights hold {extra[:3]}, which this network has no place for")
        back = self.extract(self.space.largest()).state_dict()
        for key, value in wanted.items():
            if value.is_floating_point() and not torch.equal(back[key], value.to(back[key].dtype)):
                raise ValueError(f"{key!r} does not come back unchanged from the supernet's weights")


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
    head = Head(c, mid, arch.head_width, num_classes, head_spec.activation, dropout, mix=head_spec.mix,
                conv=head_spec.conv)
    return StaticNet(stem, blocks, head)
