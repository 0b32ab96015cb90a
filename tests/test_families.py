"""Block families: the choice-block family's genes, modules, extraction, cost and layer keys; mixed spaces."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from supernet import spaces
from supernet.cost import cost, count_macs_by_hooks, count_params, macs
from supernet.families import ChoiceStage
from supernet.families.choice import operator_cost, parse_operator
from supernet.model import Supernet
from supernet.nn.shuffle import ShuffleBlock
from supernet.search.latency import arch_layers, space_layers
from supernet.search.predictor import encode, encoding_size
from supernet.space import Arch, ArchError, SpaceError

CHOICE_PRESETS = ["fmnist_choice", "spos_shufflenet", "ennas_s1", "ennas_s2", "ennas_s3"]

MIXED = {
    "name": "mixed",
    "in_channels": 1,
    "stem": {"widths": [8], "stride": 1},
    "stages": [
        {"family": "choice", "width": 16, "layers": 2, "stride": 2,
         "ops": ["mbconv_k3_e3_se", "shuffle_k3", "xception", "identity"]},
        {"widths": [24, 32], "depths": [1, 2], "kernels": [3, 5], "expand_ratios": [2, 4], "stride": 2},
    ],
    "head": {"expand_ratio": 2, "widths": [32, 48]},
    "resolutions": [16, 20],
}


def mixed() -> spaces.SearchSpace:
    return spaces.from_dict(MIXED)


def test_choice_presets_load_and_have_their_papers_shape() -> None:
    for name in CHOICE_PRESETS:
        assert name in spaces.names() and spaces.get(name).families()[-1] == "choice"
    spos = spaces.get("spos_shufflenet")
    assert [st.layers for st in spos.stages] == [4, 4, 8, 4] and [st.width for st in spos.stages] == [64, 160, 320, 640]
    assert spos.size() == 4**20  # SPOS: four choices in each of 20 layers
    s1, s2, s3 = (spaces.get(f"ennas_{s}") for s in ("s1", "s2", "s3"))
    mbconvs = {f"mbconv_k{k}_e{e}" for k in (3, 5, 7) for e in (1, 3, 6)}
    assert set(s1.stages[1].ops) == mbconvs | {"identity"}
    assert set(s2.stages[1].ops) == set(s1.stages[1].ops) | {"shuffle_k3", "shuffle_k5", "shuffle_k7", "xception"}
    assert sum(st.layers for st in s3.stages) > sum(st.layers for st in s2.stages)


def test_identity_is_never_a_stages_first_layer() -> None:
    st = spaces.get("fmnist_choice").stages[0]
    assert ("identity",) not in st.block_choices(0) and ("identity",) in st.block_choices(1)
    rng = random.Random(0)
    assert all(st.sample(rng).blocks[0] != ("identity",) for _ in range(200))
    space = spaces.get("fmnist_choice")
    arch = space.largest()
    bad = Arch(arch.resolution, arch.stem_width, arch.widths, arch.depths,
               ((("identity",), arch.blocks[0][1]),) + arch.blocks[1:], arch.head_width)
    with pytest.raises(ArchError, match="stage 0 block 0 operator"):
        space.validate(bad)


def test_choice_sampling_is_uniform_per_layer() -> None:
    st = spaces.get("fmnist_choice").stages[1]
    rng = random.Random(1)
    draws = [st.sample(rng).blocks[2][0] for _ in range(7000)]
    for op in st.ops:
        assert abs(draws.count(op) / len(draws) - 1 / len(st.ops)) < 0.02


def test_largest_and_smallest_are_the_costliest_and_cheapest() -> None:
    space = spaces.get("fmnist_choice")
    rng = random.Random(0)
    costs = [macs(space, space.sample(rng), 10) for _ in range(300)]
    assert macs(space, space.smallest(), 10) <= min(costs) and macs(space, space.largest(), 10) >= max(costs)


@pytest.mark.parametrize("name", ["fmnist_choice", "mixed"])
def test_extracted_network_equals_the_supernet_and_costs_match_hooks(name: str) -> None:
    space = mixed() if name == "mixed" else spaces.get(name)
    torch.manual_seed(0)
    net = Supernet(space, num_classes=10).eval()
    rng = random.Random(2)
    for arch in [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(6)]:
        net.set_active(arch)
        x = torch.randn(2, 1, arch.resolution, arch.resolution)
        static = net.extract(arch).eval()
        torch.testing.assert_close(static(x), net(x), rtol=0, atol=1e-6)
        counted = cost(space, arch, 10)
        assert counted.macs == count_macs_by_hooks(static, (1, 1, arch.resolution, arch.resolution))
        assert counted.params == count_params(static)
        assert all(type(m).__module__.startswith("torch.nn") or "supernet.nn.static" in type(m).__module__
                   or "supernet.nn.shuffle" in type(m).__module__ for m in static.modules())


def test_choice_operators_have_independent_weights() -> None:
    space = spaces.get("fmnist_choice")
    net = Supernet(space, num_classes=10)
    arch = space.largest()
    genes = list(arch.blocks[1])
    genes[1] = ("shuffle_k3",)
    arch = Arch(arch.resolution, arch.stem_width, arch.widths, arch.depths,
                (arch.blocks[0], tuple(genes), arch.blocks[2]), arch.head_width)
    net.set_active(arch)
    net(torch.randn(4, 1, 28, 28)).sum().backward()
    block = net.stages[1][1]
    assert all(p.grad is not None for p in block.candidates["shuffle_k3"].parameters())
    assert all(p.grad is None for p in block.candidates["xception"].parameters())  # not on the path: untouched


def test_shuffle_block_splits_even_and_odd_channels() -> None:
    block = ShuffleBlock(8, 8, 3, 1).eval()
    x = torch.randn(1, 8, 6, 6)
    out = block(x)
    torch.testing.assert_close(out[:, :4], x[:, 0::2])  # the even half passes through untouched
    assert ShuffleBlock(8, 16, 5, 2)(x).shape == (1, 16, 3, 3)
    with pytest.raises(ValueError, match="ShuffleNetV2 block"):
        ShuffleBlock(16, 8, 3, 2)


def test_operator_names_are_validated() -> None:
    assert parse_operator("mbconv_k5_e3_se").se and parse_operator("shuffle_k7").kernel == 7
    for bad in ("conv3x3", "mbconv_k4_e3", "shuffle_k2"):
        with pytest.raises(ValueError):
            parse_operator(bad)
    d = {**MIXED, "stages": [{**MIXED["stages"][0], "ops": ["mbconv_k3_e3", "sep_conv"]}]}
    with pytest.raises(SpaceError, match="stages.0.ops.*unknown operator 'sep_conv'"):
        spaces.from_dict(d)
    d = {**MIXED, "stages": [{**MIXED["stages"][0], "family": "darts"}]}
    with pytest.raises(SpaceError, match="unknown block family 'darts'"):
        spaces.from_dict(d)


def test_a_choice_stage_needs_a_fixed_input_width() -> None:
    d = {**MIXED, "stages": [MIXED["stages"][1], MIXED["stages"][0]]}
    with pytest.raises(SpaceError, match="stages.1: a choice stage's blocks have fixed input widths"):
        spaces.from_dict(d)
    narrowing = {**MIXED["stages"][0], "width": 6}  # a ShuffleNetV2 unit cannot go from 8 to 6 channels
    with pytest.raises(SpaceError, match="shuffle_k3 cannot go from 8 to 6"):
        spaces.from_dict({**MIXED, "stages": [narrowing]})


def test_mixed_space_round_trips_and_evolves() -> None:
    space = mixed()
    assert space.families() == ["choice", "elastic_mbconv"]
    assert spaces.from_dict(space.to_dict()) == space
    rng = random.Random(3)
    for _ in range(50):
        a, b = space.sample(rng), space.sample(rng)
        for child in (space.mutate(a, 0.5, rng), space.crossover(a, b, rng)):
            space.validate(child)
            assert Arch.from_json(child.to_json()) == child
    assert space.size() == (3 * 4) * (2 * (4 + 4**2)) * 2 * 2  # layers x elastic stage x resolutions x head widths


def test_crossover_takes_each_layer_from_a_parent() -> None:
    space = spaces.get("fmnist_choice")
    rng = random.Random(4)
    a, b = space.sample(rng), space.sample(rng)
    child = space.crossover(a, b, rng)
    for s in range(len(space.stages)):
        assert all(g in (x, y) for g, x, y in zip(child.blocks[s], a.blocks[s], b.blocks[s]))


def test_latency_layers_and_encoding_cover_choice_spaces() -> None:
    space = mixed()
    every = {layer.key for layer in space_layers(space, 10)}
    rng = random.Random(5)
    for _ in range(30):
        arch = space.sample(rng)
        keys = [layer.key for layer in arch_layers(space, arch, 10)]
        assert set(keys) <= every
        identities = sum(g == ("identity",) for g in arch.blocks[0])
        assert len(keys) == 2 + sum(arch.depths) - identities  # Identity costs nothing and has no entry
        vec = encode(space, arch)
        assert vec.shape == (encoding_size(space),) and vec.min() >= 0 and vec.max() <= 1
    assert any(k.startswith("choice(op=xception") for k in every)
    layer = next(la for la in space_layers(space, 10) if la.key.startswith("choice(op=shuffle_k3"))
    module = layer.module()
    assert isinstance(module, ShuffleBlock) and module(torch.zeros(layer.input_shape(1))).shape[1] == layer.out_c


def test_choice_operator_cost_matches_its_module() -> None:
    for name, c_in, width, stride in [("shuffle_k5", 16, 24, 2), ("xception", 24, 24, 1), ("mbconv_k3_e6_se", 16, 24, 2),
                                      ("shuffle_k7", 24, 24, 1), ("xception", 16, 40, 1)]:
        st = ChoiceStage(width=width, layers=1, ops=[name], stride=stride)
        module = st.static_block(0, c_in, width, (name,))
        m, p, _ = operator_cost(parse_operator(name), c_in, width, 8, stride, "identity")
        assert m == count_macs_by_hooks(module, (1, c_in, 8, 8)) and p == count_params(module)
        assert not isinstance(module, nn.Identity)
