"""Cost model: published AlphaNet counts and analytic counts equal to hook-based ones."""

from __future__ import annotations

import random

import pytest
import torch

from net_helpers import elastic_arch
from supernet import Supernet, spaces
from supernet.cost import conv_out_size, cost, count_macs_by_hooks, count_params, macs, params

# AlphaNet / AttentiveNAS published models and their reported MFLOPs (multiply-adds), 1000 classes.
PUBLISHED = {
    "A0": (
        203,
        {
            "resolution": 192,
            "width": [16, 16, 24, 32, 64, 112, 192, 216, 1792],
            "depth": [1, 3, 3, 3, 3, 3, 1],
            "kernel_size": [3, 3, 3, 3, 3, 3, 3],
            "expand_ratio": [1, 4, 4, 4, 4, 6, 6],
        },
    ),
    "A1": (
        279,
        {
            "resolution": 224,
            "width": [16, 16, 24, 32, 64, 112, 192, 216, 1984],
            "depth": [1, 3, 3, 3, 3, 3, 1],
            "kernel_size": [3, 3, 3, 5, 3, 5, 3],
            "expand_ratio": [1, 4, 4, 4, 4, 6, 6],
        },
    ),
    "A2": (
        317,
        {
            "resolution": 224,
            "width": [16, 16, 24, 32, 64, 112, 200, 224, 1984],
            "depth": [1, 3, 3, 3, 3, 4, 1],
            "kernel_size": [3, 3, 3, 3, 3, 5, 3],
            "expand_ratio": [1, 4, 5, 4, 4, 6, 6],
        },
    ),
    "A3": (
        357,
        {
            "resolution": 224,
            "width": [16, 16, 24, 32, 64, 112, 208, 224, 1984],
            "depth": [2, 3, 3, 4, 3, 5, 1],
            "kernel_size": [3, 3, 3, 3, 3, 3, 3],
            "expand_ratio": [1, 4, 4, 4, 4, 6, 6],
        },
    ),
    "A6": (
        709,
        {
            "resolution": 288,
            "width": [16, 16, 24, 32, 64, 112, 216, 224, 1984],
            "depth": [1, 3, 3, 4, 4, 6, 1],
            "kernel_size": [3, 3, 3, 3, 3, 5, 3],
            "expand_ratio": [1, 4, 6, 5, 4, 6, 6],
        },
    ),
}


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_published_alphanet_macs(model: str) -> None:
    space = spaces.get("alphanet")
    reported, d = PUBLISHED[model]
    arch = space.arch_from_attentivenas(d)
    assert macs(space, arch, 1000) / 1e6 == pytest.approx(reported, rel=0.01)


def test_a0_and_a6_exact_figures() -> None:
    space = spaces.get("alphanet")
    assert macs(space, space.arch_from_attentivenas(PUBLISHED["A0"][1]), 1000) == 203_389_568
    assert macs(space, space.arch_from_attentivenas(PUBLISHED["A6"][1]), 1000) == 709_007_232


@pytest.mark.parametrize("name", spaces.names())
def test_analytic_counts_equal_hook_counts(name: str) -> None:
    space = spaces.get(name)
    net = Supernet(space, num_classes=10)
    rng = random.Random(0)
    archs = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(3)]
    for arch in archs:
        static = net.extract(arch)
        shape = (1, space.in_channels, arch.resolution, arch.resolution)
        assert macs(space, arch, 10) == count_macs_by_hooks(static, shape)
        assert params(space, arch, 10) == count_params(static)


def test_in_channels_override() -> None:
    space = spaces.get("fmnist")
    arch = space.largest()
    grey, rgb = cost(space, arch, 10), cost(space, arch, 10, in_channels=3)
    k2w = space.spec.stem.kernel**2 * arch.stem_width
    assert rgb.params - grey.params == 2 * k2w
    assert rgb.macs - grey.macs == 2 * k2w * arch.resolution**2  # stem stride 1 keeps the resolution


def test_conv_out_size_is_ceil_for_odd_kernels() -> None:
    assert [conv_out_size(s, 3, 2) for s in (7, 8, 28, 29)] == [4, 4, 14, 15]
    assert conv_out_size(28, 5, 1) == 28


def test_proxyless_gpu_space_reproduces_the_published_proxylessnas_gpu_network() -> None:
    """ProxylessNAS-GPU (Cai et al., ICLR 2019): 465 M MACs and 7.1 M parameters at 224 px, 1000 classes.

    Its stages hold one block where the preset (OFA's choices) starts at two, so it is checked on the
    preset's own layers with depth 1 allowed; the skipped (zero) blocks of the published net cost nothing.
    """
    space = spaces.get("proxyless_gpu")
    d = space.to_dict()
    for st in d["stages"][1:6]:
        st["depths"] = [1, 2, 3, 4]
    wider = spaces.from_dict(d)
    gpu = elastic_arch(resolution=224, stem_width=40, widths=(24, 32, 56, 112, 128, 256, 432), depths=(1, 1, 2, 2, 3, 4, 1),
               kernels=((3,), (5,), (7, 3), (7, 5), (5, 3, 5), (7, 7, 7, 5), (7,)),
               expand_ratios=((1,), (3,), (3, 3), (6, 3), (6, 3, 3), (6, 6, 6, 6), (6,)), head_width=1728)
    c = cost(wider, wider.validate(gpu), 1000)
    assert c.macs == pytest.approx(465e6, rel=0.01) and c.params == pytest.approx(7.1e6, rel=0.01)
    # the analytic count is what the network computes: hooks on the extracted module agree exactly
    net = Supernet(wider, 1000)
    assert count_macs_by_hooks(net.extract(gpu), (1, 3, 224, 224)) == c.macs
    assert count_params(net.extract(gpu)) == c.params


def test_executed_macs_counts_what_runs_with_backward_as_twice_the_forward() -> None:
    from supernet.cost import ExecutedMacs

    space = spaces.get("fmnist")
    arch = space.sample(random.Random(3))
    net = Supernet(space, 10).extract(arch)
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    with ExecutedMacs() as run, torch.no_grad():
        net(x)
    assert run.total == 2 * macs(space, arch, 10)
    with ExecutedMacs() as run:
        net(x)
    assert run.total == 3 * 2 * macs(space, arch, 10)


def test_counting_macs_by_hooks_leaves_every_module_in_its_own_mode() -> None:
    frozen = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
    outer = torch.nn.Sequential(frozen, torch.nn.Conv2d(2, 2, 1))  # a training wrapper around a frozen part
    assert count_macs_by_hooks(outer, (1, 1, 8, 8)) == 36 * 9 * 2 + 36 * 2 * 2
    assert outer.training and outer[1].training and not any(m.training for m in frozen.modules())
