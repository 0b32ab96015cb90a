"""Dynamic operators: layers holding the largest weights whose active slice is chosen per forward.

Weight sharing follows AttentiveNAS/OFA: the first channels, and the centre of the largest kernel
(optionally passed through OFA's learned kernel-transform matrices).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supernet.nn.activations import hard_sigmoid
from supernet.nn.batchnorm import synchronized_batch_norm, synchronizing, update_factor
from supernet.nn.slicing import crop
from supernet.nn.widths import se_width


class DynamicConv2d(nn.Module):
    """Dense conv whose input channels follow the input and whose output channels are chosen per call."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 1, stride: int = 1, bias: bool = False):
        super().__init__()
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def active_weight(self, in_channels: int, out_channels: int) -> Tensor:
        """The weight slice used for `in_channels` -> `out_channels`."""
        return crop(self.weight, (out_channels, in_channels))

    def active_bias(self, out_channels: int) -> Tensor | None:
        """The bias slice for `out_channels`, or None."""
        return None if self.bias is None else self.bias[:out_channels]

    def forward(self, x: Tensor, out_channels: int) -> Tensor:
        w = self.active_weight(x.shape[1], out_channels)
        return F.conv2d(x, w, self.active_bias(out_channels), self.stride, self.padding)

    def copy_to(self, conv: nn.Conv2d) -> None:
        """Copy the active slice into a static conv of the matching shape."""
        conv.weight.copy_(self.active_weight(conv.in_channels, conv.out_channels))
        if conv.bias is not None:
            conv.bias.copy_(self.active_bias(conv.out_channels))


class DynamicDepthwiseConv2d(nn.Module):
    """Depthwise conv over the first channels, with the kernel cropped from the centre of the largest."""

    def __init__(self, max_channels: int, kernel_sizes: list[int], stride: int = 1, kernel_transform: bool = False):
        super().__init__()
        self.kernel_sizes = sorted(kernel_sizes)
        self.max_kernel = self.kernel_sizes[-1]
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, self.max_kernel, self.max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # OFA's kernel transform: each smaller kernel = learned linear map of the next larger one's centre.
        self.transforms = nn.ParameterDict()
        if kernel_transform:
            for small in self.kernel_sizes[:-1]:
                self.transforms[f"to{small}"] = nn.Parameter(torch.eye(small * small))

    def active_weight(self, channels: int, kernel: int) -> Tensor:
        """The (channels, 1, kernel, kernel) weight used for this choice."""
        if not self.transforms or kernel == self.max_kernel:
            start = (self.max_kernel - kernel) // 2
            return crop(self.weight, (channels, 1, kernel, kernel), (0, 0, start, start))
        w = crop(self.weight, (channels,))
        for small in reversed(self.kernel_sizes):
            if small >= w.shape[-1]:
                continue
            start = (w.shape[-1] - small) // 2
            centre = w[:, :, start : start + small, start : start + small].reshape(channels, small * small)
            w = F.linear(centre, self.transforms[f"to{small}"]).reshape(channels, 1, small, small)
            if small == kernel:
                break
        return w

    def forward(self, x: Tensor, kernel: int) -> Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.active_weight(c, kernel), None, self.stride, kernel // 2, 1, c)

    def copy_to(self, conv: nn.Conv2d) -> None:
        """Copy the active kernel into a static depthwise conv of the matching shape."""
        conv.weight.copy_(self.active_weight(conv.out_channels, conv.kernel_size[0]))


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first channels of its parameters and running statistics.

    With `synchronized = True` and an initialised torch.distributed process group, training-mode
    batch statistics are computed over the global batch of all ranks (SyncBatchNorm).
    """

    synchronized: bool = False

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if synchronizing(self):
            return synchronized_batch_norm(self, x)
        if c == self.num_features:
            return super().forward(x)
        factor = update_factor(self) if self.training else 0.0
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            factor,
            self.eps,
        )

    def copy_to(self, bn: nn.BatchNorm2d) -> None:
        """Copy the active parameters and running statistics into a static BatchNorm."""
        c = bn.num_features
        bn.weight.copy_(self.weight[:c])
        bn.bias.copy_(self.bias[:c])
        bn.running_mean.copy_(self.running_mean[:c])
        bn.running_var.copy_(self.running_var[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        bn.momentum, bn.eps = self.momentum, self.eps


class DynamicLinear(nn.Linear):
    """Linear layer whose input features follow the input."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, crop(self.weight, (self.out_features, x.shape[1])), self.bias)

    def copy_to(self, linear: nn.Linear) -> None:
        """Copy the active slice into a static Linear."""
        linear.weight.copy_(self.weight[:, : linear.in_features])
        linear.bias.copy_(self.bias)


class DynamicSqueezeExcite(nn.Module):
    """Squeeze-excite whose bottleneck width follows the input: make_divisible(channels / 4, 8)."""

    def __init__(self, max_channels: int, max_reduced: int):
        super().__init__()
        self.reduce = DynamicConv2d(max_channels, max_reduced, 1, bias=True)
        self.expand = DynamicConv2d(max_reduced, max_channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        y = x.mean((2, 3), keepdim=True)
        y = F.relu(self.reduce(y, se_width(c)))
        return x * hard_sigmoid(self.expand(y, c))
