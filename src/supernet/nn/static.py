"""Static networks built from plain torch layers: what `Supernet.extract` returns and users deploy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supernet.nn.activations import hard_sigmoid, make_activation
from supernet.nn.widths import block_mid_channels, se_width


def conv_bn_act(in_c: int, out_c: int, kernel: int, stride: int, activation: str | None, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_c),
    ]
    if activation is not None:
        layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global pool, 1x1 reduce + ReLU, 1x1 expand + hard-sigmoid, rescale."""

    def __init__(self, channels: int):
        super().__init__()
        reduced = se_width(channels)
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = x.mean((2, 3), keepdim=True)
        return x * hard_sigmoid(self.expand(self.relu(self.reduce(y))))


SHORTCUT_POOLS = ("ceil", "zero_pad")


def shortcut_pool(x: Tensor, stride: int, mode: str = "ceil") -> Tensor:
    """Average-pool a strided block's residual to the block's output side (ceil(side / stride)).

    `ceil`: ceil-mode windows that do not count the padding; `zero_pad`: AttentiveNAS's and AlphaNet's code,
    an odd side padded by one zero on each side, the zeros counted. The two differ only on odd sides.
    """
    if mode == "zero_pad":
        return F.avg_pool2d(x, stride, stride, padding=x.shape[-1] % 2)
    if mode != "ceil":
        raise ValueError(f"unknown shortcut pool {mode!r}; choose one of {SHORTCUT_POOLS}")
    return F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)


class Shortcut(nn.Module):
    """Residual branch for a shape change: average-pool when strided, then 1x1 conv when widths differ."""

    def __init__(self, in_c: int, out_c: int, stride: int, pool: str = "ceil"):
        super().__init__()
        self.stride, self.pool_mode = stride, pool
        self.conv = nn.Conv2d(in_c, out_c, 1, bias=False) if in_c != out_c else None

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = shortcut_pool(x, self.stride, self.pool_mode)
        if self.conv is not None:
            x = self.conv(x)
        return x


class MBConv(nn.Module):
    """Inverted-residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project, plus shortcut."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int,
        expand_ratio: float,
        stride: int,
        se: bool,
        activation: str,
        shortcut: str = "conv",
        shortcut_pool_mode: str = "ceil",
    ):
        super().__init__()
        mid = block_mid_channels(in_c, expand_ratio)
        self.expand = conv_bn_act(in_c, mid, 1, 1, activation) if expand_ratio != 1 else None
        self.depthwise = conv_bn_act(mid, mid, kernel, stride, activation, groups=mid)
        self.se = SqueezeExcite(mid) if se else None
        self.project = conv_bn_act(mid, out_c, 1, 1, None)
        self.identity = in_c == out_c and stride == 1
        self.shortcut = (Shortcut(in_c, out_c, stride, shortcut_pool_mode) if shortcut == "conv" and not self.identity
                         else None)
        self.residual = self.identity or self.shortcut is not None

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        if self.identity:
            return y + x
        if self.shortcut is not None:
            return y + self.shortcut(x)
        return y


class SeparableConv(nn.Module):
    """MobileNetV1's depthwise-separable block: kxk depthwise (BN + act), then 1x1 pointwise (BN + act); no shortcut."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int, activation: str):
        super().__init__()
        self.depthwise = conv_bn_act(in_c, in_c, kernel, stride, activation, groups=in_c)
        self.pointwise = conv_bn_act(in_c, out_c, 1, 1, activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class Head(nn.Module):
    """1x1 expand conv (BN + act), global average pool, 1x1 conv (act, no BN), dropout, linear.

    Without `mix` (MobileNetV2 / ProxylessNAS) the expand conv goes to `width` channels and the pooled
    features feed the classifier directly; `mid_c` must then equal `width`. Without `conv` as well
    (MobileNetV1) there is no expand conv: the last stage's features are pooled into the classifier, and
    `in_c`, `mid_c` and `width` must all be equal.
    """

    def __init__(self, in_c: int, mid_c: int, width: int, num_classes: int, activation: str, dropout: float = 0.0,
                 mix: bool = True, conv: bool = True):
        super().__init__()
        if not mix and mid_c != width:
            raise ValueError(f"a head without the mix conv expands to its width: mid_c {mid_c} != width {width}")
        if not conv and (mix or in_c != width):
            raise ValueError(f"a head without convs needs mix=False and its input's width: in_c {in_c}, width {width}")
        self.expand = conv_bn_act(in_c, mid_c, 1, 1, activation) if conv else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mix = nn.Conv2d(mid_c, width, 1, bias=False) if mix else None
        self.mix_act = make_activation(activation) if mix else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x if self.expand is None else self.expand(x))
        if self.mix is not None:
            x = self.mix_act(self.mix(x))
        return self.classifier(self.dropout(torch.flatten(x, 1)))


class StaticNet(nn.Module):
    """A plain sub-network: stem, blocks (MBConv, ShuffleNetV2, ...), head. No reference to any supernet."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: Head):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))
