"""Channel and size arithmetic of MobileNet-style blocks: divisible rounding, expanded, SE and head widths, conv sides."""

from __future__ import annotations

from supernet.rounding import make_divisible

__all__ = ["block_mid_channels", "conv_out_size", "expanded_width", "head_mid_channels", "make_divisible", "se_width"]


def expanded_width(in_channels: int, expand_ratio: float) -> int:
    """Width of an MBConv block's expanded (depthwise) layer."""
    return make_divisible(round(in_channels * expand_ratio), 8)


def head_mid_channels(mix: bool, expand_ratio: float, in_channels: int, width: int) -> int:
    """Channels of the head's expand conv: ratio x input (MobileNetV3 head), or the head width (no mix conv)."""
    return expanded_width(in_channels, expand_ratio) if mix else width


def block_mid_channels(in_channels: int, expand_ratio: float) -> int:
    """Channels of a block's depthwise layer: the input's when the ratio is 1 (no expansion conv)."""
    return in_channels if expand_ratio == 1 else expanded_width(in_channels, expand_ratio)


def se_width(mid_channels: int) -> int:
    """Width of the squeeze-excite bottleneck for a block with `mid_channels` expanded channels."""
    return make_divisible(mid_channels / 4, 8)


def conv_out_size(size: int, kernel: int, stride: int) -> int:
    """Output side of a 'same'-padded conv (padding kernel // 2): ceil(size / stride) for odd kernels."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1
