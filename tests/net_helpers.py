"""Shared test helper: supernets whose every layer matters."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from supernet.space import Arch


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


def elastic_arch(
    *,
    resolution: int,
    stem_width: int,
    widths: tuple,
    depths: tuple,
    kernels: tuple,
    expand_ratios: tuple,
    head_width: int,
) -> Arch:
    """An Arch of an elastic MBConv space from per-stage kernel and expand-ratio lists."""
    blocks = tuple(tuple(zip(ks, es, strict=True)) for ks, es in zip(kernels, expand_ratios, strict=True))
    return Arch(resolution, stem_width, widths, depths, blocks, head_width)


def kernels_of(arch: Arch) -> tuple[tuple[int, ...], ...]:
    """Per stage, each block's kernel (elastic MBConv genes)."""
    return tuple(tuple(g[0] for g in bs) for bs in arch.blocks)


def ratios_of(arch: Arch) -> tuple[tuple[float, ...], ...]:
    """Per stage, each block's expand ratio (elastic MBConv genes)."""
    return tuple(tuple(g[1] for g in bs) for bs in arch.blocks)


def with_genes(arch: Arch, *, depths: tuple | None = None, kernels: tuple | None = None,
               expand_ratios: tuple | None = None) -> Arch:
    """`arch` with some of its elastic MBConv genes replaced."""
    depths = arch.depths if depths is None else depths
    kernels = kernels_of(arch) if kernels is None else kernels
    expand_ratios = ratios_of(arch) if expand_ratios is None else expand_ratios
    return elastic_arch(resolution=arch.resolution, stem_width=arch.stem_width, widths=arch.widths, depths=depths,
                        kernels=kernels, expand_ratios=expand_ratios, head_width=arch.head_width)
