"""Dynamic blocks of the supernet: each holds its largest weights and runs its active configuration."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from supernet.nn.activations import make_activation
from supernet.nn.dynamic_ops import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicDepthwiseConv2d,
    DynamicLinear,
    DynamicSqueezeExcite,
)
from supernet.nn.static import Head, MBConv, SeparableConv, shortcut_pool
from supernet.nn.widths import block_mid_channels, se_width


def drop_path(x: Tensor, rate: float, generator: torch.Generator | None) -> Tensor:
    """Zero whole samples with probability `rate` and rescale the rest (drop-connect)."""
    keep = 1.0 - rate
    mask = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=x.device, dtype=x.dtype) < keep
    return x * mask / keep


class DynamicConvBnAct(nn.Module):
    """Conv + BN + optional activation with elastic output width (the stem, the head's expand layer)."""

    def __init__(self, max_in: int, max_out: int, kernel: int, stride: int, activation: str | None):
        super().__init__()
        self.conv = DynamicConv2d(max_in, max_out, kernel, stride)
        self.bn = DynamicBatchNorm2d(max_out)
        self.act = make_activation(activation) if activation else None

    def forward(self, x: Tensor, out_channels: int) -> Tensor:
        x = self.bn(self.conv(x, out_channels))
        return x if self.act is None else self.act(x)

    def copy_to(self, seq: nn.Sequential) -> None:
        """Copy the active slice into a static `conv_bn_act` sequence."""
        self.conv.copy_to(seq[0])
        self.bn.copy_to(seq[1])


class DynamicMBConv(nn.Module):
    """MBConv block with elastic input/output width, expand ratio and kernel size."""

    def __init__(
        self,
        in_widths: list[int],
        out_widths: list[int],
        kernels: list[int],
        expand_ratios: list[float],
        stride: int,
        se: bool,
        activation: str,
        shortcut: str,
        kernel_transform: bool = False,
        shortcut_pool_mode: str = "ceil",
    ):
        super().__init__()
        max_in, max_out = max(in_widths), max(out_widths)
        mids = {block_mid_channels(i, e) for i in in_widths for e in expand_ratios}
        max_mid = max(mids)
        self.stride = stride
        self.shortcut_kind = shortcut
        self.shortcut_pool_mode = shortcut_pool_mode
        self.act = make_activation(activation)
        self.expand_conv = self.expand_bn = None
        if any(e != 1 for e in expand_ratios):
            self.expand_conv = DynamicConv2d(max_in, max_mid, 1)
            self.expand_bn = DynamicBatchNorm2d(max_mid)
        self.depthwise = DynamicDepthwiseConv2d(max_mid, kernels, stride, kernel_transform)
        self.depthwise_bn = DynamicBatchNorm2d(max_mid)
        self.se = DynamicSqueezeExcite(max_mid, max(se_width(m) for m in mids)) if se else None
        self.project = DynamicConv2d(max_mid, max_out, 1)
        self.project_bn = DynamicBatchNorm2d(max_out)
        needs_conv = shortcut == "conv" and any(i != o for i in in_widths for o in out_widths)
        self.shortcut_conv = DynamicConv2d(max_in, max_out, 1) if needs_conv else None
        self.active_out = max_out
        self.active_kernel = max(kernels)
        self.active_expand = max(expand_ratios)

    def configure(self, out_channels: int, kernel: int, expand_ratio: float) -> None:
        """Choose the active output width, kernel and expand ratio."""
        self.active_out, self.active_kernel, self.active_expand = out_channels, kernel, expand_ratio

    def forward(self, x: Tensor, drop_connect: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        in_c, out_c = x.shape[1], self.active_out
        y = x
        if self.active_expand != 1:
            y = self.act(self.expand_bn(self.expand_conv(y, block_mid_channels(in_c, self.active_expand))))
        y = self.act(self.depthwise_bn(self.depthwise(y, self.active_kernel)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y, out_c))
        if in_c == out_c and self.stride == 1:
            residual = x
        elif self.shortcut_kind == "conv":
            residual = x
            if self.stride > 1:
                residual = shortcut_pool(residual, self.stride, self.shortcut_pool_mode)
            if in_c != out_c:
                residual = self.shortcut_conv(residual, out_c)
        else:
            return y
        if drop_connect > 0.0 and self.training:
            y = drop_path(y, drop_connect, generator)
        return y + residual

    def copy_to(self, block: MBConv) -> None:
        """Copy the active slices into a static MBConv built for the same configuration."""
        if block.expand is not None:
            self.expand_conv.copy_to(block.expand[0])
            self.expand_bn.copy_to(block.expand[1])
        self.depthwise.copy_to(block.depthwise[0])
        self.depthwise_bn.copy_to(block.depthwise[1])
        if block.se is not None:
            self.se.reduce.copy_to(block.se.reduce)
            self.se.expand.copy_to(block.se.expand)
        self.project.copy_to(block.project[0])
        self.project_bn.copy_to(block.project[1])
        if block.shortcut is not None and block.shortcut.conv is not None:
            self.shortcut_conv.copy_to(block.shortcut.conv)


class DynamicSeparableConv(nn.Module):
    """MobileNetV1's depthwise-separable block with elastic input and output width (no shortcut)."""

    def __init__(self, in_widths: list[int], out_widths: list[int], kernel: int, stride: int, activation: str):
        super().__init__()
        max_in, max_out = max(in_widths), max(out_widths)
        self.kernel = kernel
        self.depthwise = DynamicDepthwiseConv2d(max_in, [kernel], stride)
        self.depthwise_bn = DynamicBatchNorm2d(max_in)
        self.pointwise = DynamicConv2d(max_in, max_out, 1)
        self.pointwise_bn = DynamicBatchNorm2d(max_out)
        self.act = make_activation(activation)
        self.active_out = max_out

    def configure(self, out_channels: int) -> None:
        """Choose the active output width."""
        self.active_out = out_channels

    def forward(self, x: Tensor, drop_connect: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        y = self.act(self.depthwise_bn(self.depthwise(x, self.kernel)))
        return self.act(self.pointwise_bn(self.pointwise(y, self.active_out)))

    def copy_to(self, block: SeparableConv) -> None:
        """Copy the active slices into a static SeparableConv built for the same widths."""
        self.depthwise.copy_to(block.depthwise[0])
        self.depthwise_bn.copy_to(block.depthwise[1])
        self.pointwise.copy_to(block.pointwise[0])
        self.pointwise_bn.copy_to(block.pointwise[1])


class DynamicHead(nn.Module):
    """Head with elastic input width, expand width (ratio x input) and last-conv width.

    Without `mix` (MobileNetV2 / ProxylessNAS head) the expand conv's elastic width is the head width and
    the pooled features go straight to the classifier.
    """

    def __init__(self, max_in: int, max_mid: int, max_width: int, num_classes: int, activation: str,
                 mix: bool = True, conv: bool = True):
        super().__init__()
        self.expand = DynamicConvBnAct(max_in, max_mid if mix else max_width, 1, 1, activation) if conv else None
        self.mix = DynamicConv2d(max_mid, max_width, 1) if mix else None
        self.mix_act = make_activation(activation) if mix else None
        self.classifier = DynamicLinear(max_width, num_classes)

    def forward(
        self, x: Tensor, mid: int, width: int, dropout: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        if self.expand is not None:
            x = self.expand(x, mid)
        x = x.mean((2, 3), keepdim=True)
        if self.mix is not None:
            x = self.mix_act(self.mix(x, width))
        x = torch.flatten(x, 1)
        if dropout > 0.0 and self.training:
            keep = 1.0 - dropout
            x = x * (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) < keep) / keep
        return self.classifier(x)

    def copy_to(self, head: Head) -> None:
        """Copy the active slices into a static Head."""
        if self.expand is not None:
            self.expand.copy_to(head.expand)
        if self.mix is not None:
            self.mix.copy_to(head.mix)
        self.classifier.copy_to(head.classifier)
