"""Supernet: running sub-networks, exact extraction, weight sharing, regularisation."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from net_helpers import randomise_bn
from supernet import Supernet, spaces
from supernet.model import build_static
from supernet.space import ArchError

# Extraction is resolution-agnostic; large spaces run at a smaller input to keep the suite fast.
INPUT_SIDE = {"fmnist": None, "fmnist_choice": None, "ofa_mbv3": 64, "ofa_mbv3_w12": 64, "alphanet": 64, "proxyless_gpu": 64,
              "spos_shufflenet": 64, "ennas_s1": 64, "ennas_s2": 64, "ennas_s3": 64,
              "fmnist_slimmable": None, "slimmable_mbv1": 64, "slimmable_mbv2": 64, "mobilenet_v2": 64}


def randomise(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN layers and kernel transforms so equivalence checks mean something."""
    randomise_bn(net, seed, perturb=lambda name: "transforms" in name)


def side(name: str, arch) -> int:
    return INPUT_SIDE[name] or arch.resolution


# OFA's kernel transform applies to elastic MBConv kernels only: choice-block presets run without it.
CASES = [(n, kt) for n in spaces.names() for kt in (False, True) if kt is False or spaces.get(n).families()[0] != "choice"]


@pytest.mark.parametrize(("name", "kernel_transform"), CASES)
def test_extracted_equals_supernet_in_eval(name: str, kernel_transform: bool) -> None:
    space = spaces.get(name)
    net = Supernet(space, num_classes=10, kernel_transform=kernel_transform).eval()
    randomise(net)
    rng = random.Random(1)
    for arch in [space.smallest(), space.largest(), space.sample(rng), space.sample(rng)]:
        x = torch.randn(2, space.in_channels, side(name, arch), side(name, arch))
        net.set_active(arch)
        expected = net(x)
        static = net.extract(arch)
        assert not static.training
        got = static(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_extracted_module_is_plain_and_independent() -> None:
    space = spaces.get("fmnist")
    net = Supernet(space, num_classes=10).eval()
    randomise(net)
    arch = space.sample(random.Random(5))
    static = net.extract(arch)
    for m in static.modules():
        assert m.__class__.__module__.startswith(("torch.nn", "supernet.nn.static")), type(m)
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    before = static(x)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.5)
    torch.testing.assert_close(static(x), before, rtol=0, atol=0)
    # its state dict loads into a freshly built network of the same architecture
    fresh = build_static(space, arch, 10).eval()
    fresh.load_state_dict(static.state_dict())
    torch.testing.assert_close(fresh(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fmnist", "alphanet"])
def test_train_mode_gradients_are_those_of_the_active_slice(name: str) -> None:
    space = spaces.get(name)
    net = Supernet(space, num_classes=10).train()
    randomise(net, seed=3)
    draws = (space.sample(random.Random(seed)) for seed in range(2, 100))  # one with a stage not at full depth
    arch = next(a for a in draws if any(d < max(st.depths) for d, st in zip(a.depths, space.stages)))
    net.set_active(arch)
    static = net.extract(arch).train()
    x = torch.randn(4, space.in_channels, side(name, arch), side(name, arch))
    net(x).square().sum().backward()
    static(x).square().sum().backward()
    for n, p in net.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n
    static_params = list(static.parameters())
    sliced = _gradient_slices(net, arch)
    assert len(sliced) == len(static_params)
    for g, tp in zip(sliced, static_params):
        torch.testing.assert_close(g, tp.grad, rtol=1e-4, atol=1e-6)
    # Weights outside the active slice receive exactly zero gradient.
    stage = next(s for s, d in enumerate(arch.depths) if d < max(space.stages[s].depths))
    unused = net.stages[stage][arch.depths[stage]]
    assert all(p.grad is None or not p.grad.any() for p in unused.parameters())


def _gradient_slices(net: Supernet, arch) -> list[torch.Tensor]:
    """The supernet's gradients sliced as extraction slices weights (no kernel transform: slicing is linear)."""
    grads = Supernet(net.space, net.num_classes, net.in_channels)
    with torch.no_grad():
        for p, q in zip(net.parameters(), grads.parameters()):
            q.copy_(torch.zeros_like(p) if p.grad is None else p.grad)
    return list(grads.extract(arch).parameters())


def test_bn_running_stats_update_only_the_active_slice() -> None:
    space = spaces.get("fmnist")
    net = Supernet(space, num_classes=10).train()
    arch = space.smallest()
    net.set_active(arch)
    bn = net.stem.bn
    before = bn.running_mean.clone()
    net(torch.randn(8, 1, arch.resolution, arch.resolution))
    w = arch.stem_width
    assert not torch.equal(bn.running_mean[:w], before[:w])
    assert torch.equal(bn.running_mean[w:], before[w:])


def test_set_active_rejects_out_of_space() -> None:
    space = spaces.get("fmnist")
    net = Supernet(space, num_classes=10)
    with pytest.raises(ArchError):
        net.set_active(spaces.get("alphanet").smallest())


def test_dropout_and_drop_connect_apply_in_training_only() -> None:
    space = spaces.get("fmnist")
    net = Supernet(space, num_classes=10)
    randomise(net)
    arch = space.largest()
    net.set_active(arch)
    x = torch.randn(8, 1, 32, 32)
    net.eval()
    plain = net(x)
    net.dropout_rate, net.drop_connect_rate = 0.5, 0.5
    torch.testing.assert_close(net(x), plain, rtol=0, atol=0)
    net.train()
    net.noise_generator = torch.Generator().manual_seed(0)
    a = net(x)
    net.noise_generator = torch.Generator().manual_seed(0)
    b = net(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # noise comes from the given generator
    net.dropout_rate, net.drop_connect_rate = 0.0, 0.0
    c = net(x)
    assert not torch.allclose(a, c)


def test_ofa_blocks_without_shortcut_keep_signal() -> None:
    space = spaces.get("ofa_mbv3")
    net = Supernet(space, num_classes=10).eval()
    net.set_active(space.smallest())
    out = net(torch.randn(2, 3, 64, 64))
    assert out.std() > 0


def test_relu6_space_builds_and_extracts_exactly() -> None:
    """ReLU6 (MobileNetV2 / ProxylessNAS, DepS's second space) works in every position of a space."""

    space = spaces.from_dict({
        "stem": {"widths": [8], "activation": "relu6"},
        "stages": [{"widths": [8, 16], "depths": [1, 2], "kernels": [3, 5], "expand_ratios": [3, 6], "stride": 2,
                    "activation": "relu6", "shortcut": "identity"}],
        "head": {"widths": [32], "activation": "relu6"}, "resolutions": [16],
    })
    net = randomise_bn(Supernet(space, num_classes=10), 0).eval()
    arch = space.sample(random.Random(0))
    x = 4 * torch.randn(2, 3, 16, 16)
    net.set_active(arch)
    with torch.no_grad():
        assert torch.equal(net.extract(arch).eval()(x), net(x))
    assert any(isinstance(m, nn.ReLU6) for m in net.modules())


def test_shortcut_pools_differ_only_on_odd_sides() -> None:
    from supernet.nn.static import shortcut_pool

    odd = torch.ones(1, 1, 3, 3)
    assert torch.equal(shortcut_pool(odd, 2, "ceil"), torch.ones(1, 1, 2, 2))  # padding not counted
    # AttentiveNAS: one zero each side, counted: the corner window holds 1 pixel of 4
    assert torch.equal(shortcut_pool(odd, 2, "zero_pad"), torch.tensor([[[[0.25, 0.5], [0.5, 1.0]]]]))
    even = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(shortcut_pool(even, 2, "ceil"), shortcut_pool(even, 2, "zero_pad"))
    with pytest.raises(ValueError, match="unknown shortcut pool"):
        shortcut_pool(even, 2, "max")
