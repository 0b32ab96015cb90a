"""Shared test helper: supernets whose every layer matters."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def randomise_bn(net: nn.Module, seed: int = 0, perturb: Callable[[str], bool] | None = None) -> nn.Module:
    """Random BN affine parameters and running statistics, plus small offsets on parameters `perturb` names.

    A fresh supernet zero-inits each block's last BN, which makes many blocks identities and lets
    equivalence checks pass trivially; this gives every layer a visible effect.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        if perturb is not None:
            for name, p in net.named_parameters():
                if perturb(name):
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net
