"""ShuffleNetV2 blocks as SPOS uses them: a kxk block and the Xception-style block (three 3x3 depthwise convs).

With stride 1 and equal widths the input is split into its even and odd channels (the channel shuffle
folded into the split, as SPOS does); the even half passes through and the odd half feeds the main branch.
Otherwise (stride 2, or a width change) a projection branch (kxk depthwise + 1x1) keeps all input channels
and the main branch adds `out_c - in_c` more. The main branch's middle width is `out_c // 2`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from supernet.nn.activations import make_activation


def _conv_bn(in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out_c)]


def shuffle_split(in_c: int, out_c: int, stride: int) -> bool:
    """Whether a block of these widths splits its input (stride 1, equal widths) instead of projecting it."""
    return stride == 1 and in_c == out_c


def shuffle_widths(in_c: int, out_c: int, stride: int) -> tuple[int, int, int]:
    """(main-branch input, middle, output) channels of a ShuffleNetV2 block."""
    main_in = in_c // 2 if shuffle_split(in_c, out_c, stride) else in_c
    return main_in, out_c // 2, out_c - main_in


class ShuffleBlock(nn.Module):
    """A ShuffleNetV2 unit: kxk (`xception=False`) or Xception-style 3x3-3x3-3x3 main branch."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int, activation: str = "relu", xception: bool = False):
        super().__init__()
        main_in, mid, main_out = shuffle_widths(in_c, out_c, stride)
        if main_out <= 0 or (shuffle_split(in_c, out_c, stride) and in_c % 2):
            raise ValueError(
                f"a ShuffleNetV2 block from {in_c} to {out_c} channels (stride {stride}) needs an even width when "
                "it keeps it, or more output than input channels when it changes it"
            )
        self.split = shuffle_split(in_c, out_c, stride)
        act = make_activation(activation)
        if xception:
            main = [
                *_conv_bn(main_in, main_in, 3, stride, groups=main_in), *_conv_bn(main_in, mid, 1), act,
                *_conv_bn(mid, mid, 3, groups=mid), *_conv_bn(mid, mid, 1), make_activation(activation),
                *_conv_bn(mid, mid, 3, groups=mid), *_conv_bn(mid, main_out, 1), make_activation(activation),
            ]
            kernel = 3
        else:
            main = [
                *_conv_bn(main_in, mid, 1), act,
                *_conv_bn(mid, mid, kernel, stride, groups=mid),
                *_conv_bn(mid, main_out, 1), make_activation(activation),
            ]
        self.main = nn.Sequential(*main)
        self.proj = None if self.split else nn.Sequential(
            *_conv_bn(in_c, in_c, kernel, stride, groups=in_c), *_conv_bn(in_c, in_c, 1), make_activation(activation)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.split:
            passed, x = x[:, 0::2], x[:, 1::2]
            return torch.cat((passed, self.main(x)), 1)
        return torch.cat((self.proj(x), self.main(x)), 1)  # type: ignore[misc]
