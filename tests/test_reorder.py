"""Channel re-ordering: functions kept, importance sorted, smaller sub-networks moved, optimizer in step."""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from net_helpers import randomise_bn, with_genes
from supernet import Arch, SearchSpace, Supernet, spaces
from supernet.training.reorder import channel_order, permute_channels, reorder_channels

# A space exercising the topologies the presets lack: mixed ratios {1, x}, a stem NOT tied to the
# first stage (stride-2 identity-kind block), and two stages tied through a stride-1 residual.
MIXED = {
    "name": "mixed",
    "in_channels": 3,
    "stem": {"widths": [8, 16], "stride": 1},
    "stages": [
        {
            "widths": [16],
            "depths": [1, 2],
            "kernels": [3, 5],
            "expand_ratios": [1, 3],
            "stride": 2,
            "se": True,
            "shortcut": "identity",
        },
        {"widths": [16, 24], "depths": [1, 2], "kernels": [3], "expand_ratios": [1, 2], "stride": 1},
        {"widths": [24], "depths": [2], "kernels": [3], "expand_ratios": [2, 3], "stride": 1, "se": True},
    ],
    "head": {"expand_ratio": 2, "widths": [32]},
    "resolutions": [12],
}


def space_of(name: str) -> SearchSpace:
    return spaces.from_dict(MIXED) if name == "mixed" else spaces.get(name)


def build(name: str, kernel_transform: bool = False, seed: int = 0) -> Supernet:
    """A supernet whose BN statistics, BN/SE biases and kernel transforms are all non-trivial."""
    net = Supernet(space_of(name), num_classes=10, kernel_transform=kernel_transform)
    return randomise_bn(
        net, seed, perturb=lambda n: "transforms" in n or n.endswith(("se.reduce.bias", "se.expand.bias"))
    )


def widest(space: SearchSpace, arch: Arch, ratios: bool) -> Arch:
    """`arch` with every width at its maximum (and every expand ratio too when `ratios`)."""
    stages = space.stages
    wide = dataclasses.replace(
        arch, stem_width=max(space.spec.stem.widths), widths=tuple(max(s.widths) for s in stages)
    )
    if not ratios:
        return wide
    return with_genes(wide, expand_ratios=tuple((max(s.expand_ratios),) * d for s, d in zip(stages, arch.depths)))


def run(net: Supernet, arch: Arch, x: Tensor) -> Tensor:
    net.set_active(arch)
    return net(x)


def batch(space: SearchSpace, side: int | None, n: int = 4, seed: int = 0) -> Tensor:
    side = side or space.largest().resolution
    return torch.randn(n, space.in_channels, side, side, generator=torch.Generator().manual_seed(seed))


def assert_same(got: Tensor, expected: Tensor) -> None:
    """Equal up to rounding: a permuted sum rounds differently, and deep nets in train-mode BN amplify it."""
    tol = 1e-5 if got.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * expected.abs().max().item())


def is_identity(perm: Tensor) -> bool:
    return torch.equal(perm, torch.arange(len(perm)))


# float32 where rounding stays far below 1e-5; float64 for the deep presets, whose train-mode BN over
# 4 samples at 1x1 resolution turns float32 rounding into ~1e-5 differences.
@pytest.mark.parametrize(
    ("name", "side", "dtype", "kernel_transform", "expand", "width"),
    [
        ("fmnist", None, torch.float32, False, True, False),
        ("fmnist", None, torch.float32, True, True, True),
        ("ofa_mbv3", 32, torch.float64, True, True, False),
        ("ofa_mbv3", 32, torch.float64, False, True, True),
        ("alphanet", 32, torch.float64, False, True, True),
        ("mixed", None, torch.float64, True, True, False),
        ("mixed", None, torch.float64, True, False, True),  # any ratio, so ratio 1 of mixed {1, x} too
    ],
)
def test_wide_subnets_compute_the_same_in_eval_and_train(
    name: str, side: int | None, dtype: torch.dtype, kernel_transform: bool, expand: bool, width: bool
) -> None:
    net = build(name, kernel_transform).to(dtype)
    before = copy.deepcopy(net)
    perms = reorder_channels(net, expand=expand, width=width)
    assert any(not is_identity(p) for p in perms.values())
    space, rng = net.space, random.Random(1)
    archs = [space.largest()] + [widest(space, space.sample(rng), ratios=expand) for _ in range(2)]
    x = batch(space, side).to(dtype)
    for mode in ("eval", "train"):
        before.train(mode == "train")
        net.train(mode == "train")
        for arch in archs:
            assert_same(run(net, arch, x), run(before, arch, x))


@pytest.mark.parametrize("name", ["fmnist", "ofa_mbv3"])
def test_expand_sorts_mid_and_squeeze_channels_by_importance(name: str) -> None:
    net = build(name)
    before = copy.deepcopy(net)
    perms = reorder_channels(net)
    specs = net.space.stages
    reordered = {(s, b) for s, stage in enumerate(net.stages) for b in range(len(stage)) if s > 0}
    assert all(1 not in specs[s].expand_ratios for s, _ in reordered)  # both presets: ratio 1 in stage 0 only
    assert 1 in specs[0].expand_ratios
    assert {k for k in perms if k.endswith(".mid")} == {f"stages.{s}.{b}.mid" for s, b in reordered}
    assert {k for k in perms if k.endswith(".se")} == {
        f"stages.{s}.{b}.se" for s, b in reordered if specs[s].se
    }
    for s, b in reordered:
        block = net.stages[s][b]
        mid = block.project.weight.double().abs().sum((0, 2, 3))
        assert torch.all(mid[:-1] >= mid[1:]), (s, b)
        if block.se is not None:
            squeeze = block.se.expand.weight.double().abs().sum((0, 2, 3))
            assert torch.all(squeeze[:-1] >= squeeze[1:]), (s, b)
    # stage 0 has expand ratio 1 only: its depthwise channels are the stem's, untouched by `expand`
    for (key, value), old in zip(net.stages[0].state_dict().items(), before.stages[0].state_dict().values()):
        assert torch.equal(value, old), key


def test_width_sorts_stage_channels_and_ties_stem_to_first_stage() -> None:
    net = build("fmnist")
    perms = reorder_channels(net, expand=False, width=True)
    assert set(perms) == {"stem.out"} | {f"stages.{s}.out" for s in range(len(net.stages))}
    # fmnist's first block adds its 24-channel input (the stem) to its output without a conv
    assert torch.equal(perms["stem.out"], perms["stages.0.out"])
    for s, stage in enumerate(net.stages):
        importance = sum(block.project.weight.double().abs().sum((1, 2, 3)) for block in stage)
        assert torch.all(importance[:-1] >= importance[1:]), s


def test_width_groups_follow_residual_ties() -> None:
    net = build("mixed")
    perms = reorder_channels(net, width=True)
    assert "stem.out" not in perms  # the stride-2 identity-kind block has no residual: stem left alone
    assert torch.equal(perms["stages.1.out"], perms["stages.2.out"])  # 24 -> 24, stride 1
    assert {k for k in perms if k.endswith(".mid")} == {"stages.2.0.mid", "stages.2.1.mid"}


@pytest.mark.parametrize(("expand", "width"), [(True, False), (False, True), (True, True)])
def test_reorder_moves_smaller_subnets_and_is_idempotent(expand: bool, width: bool) -> None:
    net = build("fmnist")
    before = copy.deepcopy(net).eval()
    space, x = net.space, batch(net.space, None)
    reorder_channels(net, expand=expand, width=width)
    net.eval()
    smaller = space.largest()  # narrower in whatever the phase sorted: the first channels are others now
    if expand:
        ratios = tuple((min(s.expand_ratios),) * d for s, d in zip(space.stages, smaller.depths))
        smaller = with_genes(smaller, expand_ratios=ratios)
    if width:
        widths = tuple(min(s.widths) for s in space.stages)
        smaller = dataclasses.replace(smaller, stem_width=min(space.spec.stem.widths), widths=widths)
    old, new = run(before, smaller, x), run(net, smaller, x)
    assert (new - old).abs().max() > 1e-2 * old.abs().max()
    snapshot = copy.deepcopy(net.state_dict())
    again = reorder_channels(net, expand=expand, width=width)
    assert again and all(is_identity(p) for p in again.values())
    for key, value in net.state_dict().items():
        assert torch.equal(value, snapshot[key]), key


Factory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS: dict[str, Factory] = {
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam_amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
}


def backward(net: Supernet, archs: list[Arch], x: Tensor, y: Tensor) -> None:
    net.train()
    for arch in archs:
        F.cross_entropy(run(net, arch, x), y).backward()


# Fresh gradients differ from permuted ones by rounding, which Adam would blow up where the true
# gradient is zero (a BN bias followed by train-mode BN), so Adam is checked with pending gradients.
@pytest.mark.parametrize("width", [False, True], ids=["expand", "expand_width"])
@pytest.mark.parametrize(
    ("opt_name", "fresh_grads"),
    [("sgd_nesterov", False), ("sgd_nesterov", True), ("adam_amsgrad", False)],
    ids=["sgd_grads_pending", "sgd_fresh_grads", "adam_grads_pending"],
)
def test_reorder_then_step_equals_step_then_reorder(opt_name: str, width: bool, fresh_grads: bool) -> None:
    net_a = build("fmnist")
    net_b = copy.deepcopy(net_a)
    opt_a, opt_b = (OPTIMIZERS[opt_name](list(n.parameters())) for n in (net_a, net_b))
    space = net_a.space
    x1, x2 = batch(space, None, seed=1), batch(space, None, seed=2)
    y1, y2 = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    for net, opt in ((net_a, opt_a), (net_b, opt_b)):  # a first step so that optimizer state exists
        opt.zero_grad()
        backward(net, [space.largest(), space.smallest()], x1, y1)
        opt.step()
        opt.zero_grad()
        if not fresh_grads:  # the second step's gradients exist when re-ordering happens
            backward(net, [space.largest()], x2, y2)

    perms = reorder_channels(net_a, opt_a, width=width)
    if fresh_grads:
        backward(net_a, [space.largest()], x2, y2)
    opt_a.step()

    if fresh_grads:
        backward(net_b, [space.largest()], x2, y2)
    opt_b.step()
    permute_channels(net_b, perms, opt_b)  # the same permutation: the step has changed the importances

    tol = {"rtol": 1e-5, "atol": 1e-6} if fresh_grads else {"rtol": 0.0, "atol": 0.0}
    for (key, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        torch.testing.assert_close(a, b, **tol, msg=key)
    for p_a, p_b in zip(net_a.parameters(), net_b.parameters()):
        assert opt_a.state[p_a].keys() == opt_b.state[p_b].keys()
        for key, value in opt_a.state[p_a].items():
            torch.testing.assert_close(value, opt_b.state[p_b][key], **tol)


def test_unsupported_optimizer_state_is_refused_before_anything_moves() -> None:
    net = build("fmnist")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    backward(net, [net.space.largest()], batch(net.space, None), torch.arange(4))
    opt.step()
    weight = net.stages[1][0].project.weight
    opt.state[weight]["row_var"] = torch.zeros(weight.shape[0])  # a factored (Adafactor-like) statistic
    snapshot = copy.deepcopy(net.state_dict())
    momentum = opt.state[weight]["momentum_buffer"].clone()
    with pytest.raises(NotImplementedError, match="row_var"):
        reorder_channels(net, opt, width=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    assert torch.equal(opt.state[weight]["momentum_buffer"], momentum)


@pytest.fixture(scope="module", params=["expand", "width"])
def reordered(request: pytest.FixtureRequest) -> tuple[str, Supernet, Supernet]:
    torch.manual_seed(0)
    before = build("fmnist", kernel_transform=True, seed=4).eval()
    after = copy.deepcopy(before)
    reorder_channels(after, expand=request.param == "expand", width=request.param == "width")
    return request.param, before, after


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_subnet_using_all_moved_channels_is_unchanged(
    reordered: tuple[str, Supernet, Supernet], seed: int
) -> None:
    phase, before, after = reordered
    space = before.space
    arch = widest(space, space.sample(random.Random(seed)), ratios=phase == "expand")
    x = batch(space, arch.resolution, n=2, seed=seed % 1000)
    with torch.no_grad():
        assert_same(run(after, arch, x), run(before, arch, x))


def test_channel_order_is_what_reorder_applies_and_permute_validates_its_input() -> None:
    net = build("fmnist").eval()
    before = copy.deepcopy(net)
    perms = channel_order(net, expand=True, width=True)
    for key, value in net.state_dict().items():  # planning moves nothing
        assert torch.equal(value, before.state_dict()[key]), key
    applied = reorder_channels(copy.deepcopy(net), width=True)
    assert perms.keys() == applied.keys() and all(torch.equal(perms[k], applied[k]) for k in perms)
    stage0 = max(net.space.stages[0].widths)  # the stem's widest choice equals it (tied by the residual)
    shuffled = torch.randperm(stage0)
    bad = [
        ({"stages.0.0.mid": torch.arange(stage0)}, "no channels"),  # stage 0 has ratio 1: no mid channels
        ({"stages.1.out": torch.arange(31)}, "range\\(32\\)"),
        ({"stages.1.out": torch.zeros(32, dtype=torch.long)}, "permutation"),
        ({"stages.1.out": torch.arange(32.0)}, "int64"),
        ({"stages.0.out": shuffled}, "residual"),  # the stem is tied to stage 0
        ({"stages.0.out": shuffled, "stem.out": torch.randperm(stage0)}, "residual"),
    ]
    for perms, message in bad:
        with pytest.raises(ValueError, match=message):
            permute_channels(net, perms)
    permute_channels(net, {"stages.0.out": shuffled, "stem.out": shuffled})
    x = batch(net.space, None)
    assert_same(run(net, net.space.largest(), x), run(before, net.space.largest(), x))


@pytest.mark.parametrize("name", ["fmnist", "mixed"])
def test_a_later_resort_keeps_every_trained_subnet(name: str) -> None:
    """OFA's width phase re-sorts after expand ratios were trained: within the trained ratios' nested
    groups, so a trained network with the smallest ratio (and any other) computes what it did."""
    net = build(name).eval()
    space = net.space
    trained = space.restrict(width=1)  # every kernel, depth and expand ratio, at the largest widths
    before = copy.deepcopy(net)
    smallest_ratio = with_genes(
        trained.largest(), expand_ratios=tuple((min(s.expand_ratios),) * d for s, d in zip(space.stages,
                                                                                       trained.largest().depths))
    )
    archs = [smallest_ratio] + [trained.sample(random.Random(seed)) for seed in range(4)]
    # what the width phase did before (a sort over all expanded channels) changes the smallest ratio
    flat = copy.deepcopy(net)
    reorder_channels(flat, expand=True, width=True)
    x = batch(space, smallest_ratio.resolution, n=2, seed=1)
    with torch.no_grad():
        assert (run(flat, smallest_ratio, x) - run(before, smallest_ratio, x)).abs().max() > 1e-3
    perms = reorder_channels(net, expand=True, width=True, trained=trained)
    assert any(not is_identity(p) for k, p in perms.items() if k.endswith(".mid"))  # it still sorts
    for arch in archs:
        x = batch(space, arch.resolution, n=2, seed=2)
        with torch.no_grad():
            assert_same(run(net, arch, x), run(before, arch, x))
