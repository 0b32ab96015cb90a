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

from supernet.nn.widths import block_mid_channels, head_mid_channels, se_width
from supernet.space import Arch, SearchSpace, StageSpec


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output side of a 'same'-padded conv (padding kernel // 2): ceil(size / stride) for odd kernels."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class Cost:
    """MACs and parameters of one sub-network."""

    macs: int
    params: int


def block_cost(stage: StageSpec, block: int, c_in: int, width: int, size: int, kernel: int, ratio: float) -> tuple[int, int, int]:
    """(MACs, params, output side) of block `block` of a stage on a `size` x `size` input of `c_in` channels."""
    stride = stage.stride if block == 0 else 1
    mid = block_mid_channels(c_in, ratio)
    out_size = conv_out_size(size, kernel, stride)
    macs = params = 0
    if ratio != 1:
        macs += c_in * mid * size * size
        params += c_in * mid + 2 * mid
    macs += mid * kernel * kernel * out_size * out_size
    params += mid * kernel * kernel + 2 * mid
    if stage.se:
        r = se_width(mid)
        macs += 2 * mid * r
        params += 2 * mid * r + mid + r
    macs += mid * width * out_size * out_size
    params += mid * width + 2 * width
    if stage.shortcut == "conv" and c_in != width:
        macs += c_in * width * out_size * out_size
        params += c_in * width
    return macs, params, out_size


def cost(space: SearchSpace, arch: Arch, num_classes: int, in_channels: int | None = None) -> Cost:
    """Analytic MACs and parameter count of `arch`, without building or running it."""
    spec = space.spec
    c_in = space.in_channels if in_channels is None else in_channels
    k, s = spec.stem.kernel, spec.stem.stride
    size = conv_out_size(arch.resolution, k, s)
    c = arch.stem_width
    macs = c_in * c * k * k * size * size
    params = c_in * c * k * k + 2 * c
    for st, width, depth, kernels, ratios in zip(
        spec.stages, arch.widths, arch.depths, arch.kernels, arch.expand_ratios
    ):
        for b in range(depth):
            block_macs, block_params, size = block_cost(st, b, c, width, size, kernels[b], ratios[b])
            macs += block_macs
            params += block_params
            c = width
    head = spec.head
    mid = head_mid_channels(head.mix, head.expand_ratio, c, arch.head_width)
    macs += c * mid * size * size + arch.head_width * num_classes
    params += c * mid + 2 * mid + arch.head_width * num_classes + num_classes
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
    for label, arch in (("smallest", space.smallest()), ("largest", space.largest())):
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
    was_training = module.training
    try:
        module.eval()
        ref = next(module.parameters())
        with torch.no_grad():
            module(torch.zeros(input_shape, device=ref.device, dtype=ref.dtype))
    finally:
        module.train(was_training)
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
