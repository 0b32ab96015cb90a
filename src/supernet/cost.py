"""Cost model: analytic MACs and parameter counts of a sub-network, and a hook-based reference count.

Convention (AttentiveNAS/AlphaNet): multiply-adds of convolutions (including squeeze-excite and
shortcut convs) and linear layers; BatchNorm, activations, pooling, residual adds and biases are free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from supernet.families.base import family_stages
from supernet.nn.widths import conv_out_size, head_mid_channels
from supernet.space import Arch, SearchSpace


@dataclass(frozen=True)
class Cost:
    """MACs and parameters of one sub-network."""

    macs: int
    params: int


def stem_cost(space: SearchSpace, resolution: int, width: int, in_channels: int) -> tuple[int, int, int]:
    """(MACs, params, output side) of the stem conv."""
    k, s = space.spec.stem.kernel, space.spec.stem.stride
    size = conv_out_size(resolution, k, s)
    macs, params = in_channels * width * k * k * size * size, in_channels * width * k * k + 2 * width
    return macs, params, size


def cost(space: SearchSpace, arch: Arch, num_classes: int, in_channels: int | None = None) -> Cost:
    """Analytic MACs and parameter count of `arch`, without building or running it.

    Each stage's blocks are counted by their block family (`FamilyStage.block_cost`).
    """
    spec = space.spec
    c_in = space.in_channels if in_channels is None else in_channels
    macs, params, size = stem_cost(space, arch.resolution, arch.stem_width, c_in)
    c = arch.stem_width
    for s, st in enumerate(family_stages(space)):
        for b, gene in enumerate(arch.blocks[s]):
            block_macs, block_params, size = st.block_cost(b, c, arch.widths[s], size, gene)
            macs += block_macs
            params += block_params
            c = arch.widths[s]
    head = spec.head
    mid = head_mid_channels(head.mix, head.expand_ratio, c, arch.head_width)
    if head.conv:
        macs += c * mid * size * size
        params += c * mid + 2 * mid
    macs += arch.head_width * num_classes
    params += arch.head_width * num_classes + num_classes
    if head.mix:  # the MobileNetV3 head's 1x1 conv after pooling
        macs += mid * arch.head_width
        params += mid * arch.head_width
    return Cost(macs=macs, params=params)


def macs(space: SearchSpace, arch: Arch, num_classes: int, in_channels: int | None = None) -> int:
    """Multiply-adds of one forward pass of `arch` on one image."""
    return cost(space, arch, num_classes, in_channels).macs


def params(space: SearchSpace, arch: Arch, num_classes: int, in_channels: int | None = None) -> int:
    """Number of parameters of the extracted `arch` (BN running statistics excluded)."""
    return cost(space, arch, num_classes, in_channels).params


def summary(space: SearchSpace, num_classes: int | None = None) -> str:
    """The space's description followed by its smallest and largest sub-networks' MACs and params."""
    num_classes = space.spec.num_classes if num_classes is None else num_classes
    lines = [space.describe()]
    members = [("smallest", space.smallest()), ("largest", space.largest())]
    wm = space.spec.width_multiplier
    if wm is not None:  # a slimmable space: its usual widths, as the MobileNet papers tabulate them
        shown = sorted({wm.low, *(m for m in (0.25, 0.35, 0.5, 0.75, 1.0) if wm.low <= m <= wm.high), wm.high})
        members = [(f"{m:.2f}x", space.at_width(m)) for m in shown]
    for label, arch in members:
        lines.append(
            f"  {label:<9} {macs(space, arch, num_classes) / 1e6:9.2f} MMACs  "
            f"{params(space, arch, num_classes) / 1e6:7.3f} M params  (resolution {arch.resolution}, "
            f"{num_classes} classes)"
        )
    return "\n".join(lines)


def count_macs_by_hooks(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass measured with hooks on Conv2d and Linear layers (batch must be 1)."""
    total = 0

    def on_conv(m: nn.Conv2d, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def on_linear(m: nn.Linear, _inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(on_linear))
    modes = [(m, m.training) for m in module.modules()]  # each module's own mode, restored as it was
    try:
        module.eval()
        ref = next(module.parameters())
        with torch.no_grad():
            module(torch.zeros(input_shape, device=ref.device, dtype=ref.dtype))
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    return total


def count_params(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


class ExecutedMacs(TorchFunctionMode):
    """Context that adds up the multiply-adds of every conv2d and linear call as it runs (any module).

    Calls under autograd with a trainable weight count 3x (forward + backward), others 1x: the
    convention of the training loop's cost counters, measured instead of derived.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (F.conv2d, F.linear):
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            factor = 3 if torch.is_grad_enabled() and weight.requires_grad else 1
            self.total += factor * out.numel() * weight[0].numel()  # in_channels/groups x kernel, or in_features
        return out
