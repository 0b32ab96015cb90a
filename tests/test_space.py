"""Search spaces and architectures: presets, validation, sampling, evolution operators, JSON, import."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supernet import spaces
from supernet.nn.widths import make_divisible
from supernet.space import Arch, ArchError, SpaceError

PRESETS = spaces.names()
seeds = st.integers(min_value=0, max_value=2**32 - 1)

A0 = {
    "resolution": 192,
    "width": [16, 16, 24, 32, 64, 112, 192, 216, 1792],
    "depth": [1, 3, 3, 3, 3, 3, 1],
    "kernel_size": [3, 3, 3, 3, 3, 3, 3],
    "expand_ratio": [1, 4, 4, 4, 4, 6, 6],
}


def tiny_space_dict() -> dict:
    return {
        "name": "tiny",
        "in_channels": 1,
        "stem": {"widths": [8], "stride": 1},
        "stages": [
            {"widths": [8, 16], "depths": [1, 2], "kernels": [3, 5], "expand_ratios": [1, 2], "stride": 2},
            {"widths": [16], "depths": [1], "kernels": [3], "expand_ratios": [3], "se": True},
        ],
        "head": {"expand_ratio": 2, "widths": [32]},
        "resolutions": [16, 20],
    }


def test_presets_are_listed_and_load() -> None:
    assert PRESETS == ["alphanet", "ennas_s1", "ennas_s2", "ennas_s3", "fmnist", "fmnist_choice", "fmnist_slimmable",
                       "mobilenet_v2", "ofa_mbv3", "ofa_mbv3_w12", "proxyless_gpu", "slimmable_mbv1", "slimmable_mbv2",
                       "spos_shufflenet"]
    for name in PRESETS:
        assert spaces.get(name).name == name


def test_alphanet_preset_matches_table_7() -> None:
    space = spaces.get("alphanet")
    assert space.spec.stem.widths == [16, 24] and space.spec.stem.stride == 2
    expected = [
        ([16, 24], [1, 2], [1], 1, False),
        ([24, 32], [3, 4, 5], [4, 5, 6], 2, False),
        ([32, 40], [3, 4, 5, 6], [4, 5, 6], 2, True),
        ([64, 72], [3, 4, 5, 6], [4, 5, 6], 2, False),
        ([112, 120, 128], [3, 4, 5, 6, 7, 8], [4, 5, 6], 1, True),
        ([192, 200, 208, 216], [3, 4, 5, 6, 7, 8], [6], 2, True),
        ([216, 224], [1, 2], [6], 1, True),
    ]
    got = [(s.widths, s.depths, s.expand_ratios, s.stride, s.se) for s in space.stages]
    assert got == expected
    assert all(s.kernels == [3, 5] and s.activation == "swish" and s.shortcut == "conv" for s in space.stages)
    assert space.spec.head.widths == [1792, 1984] and space.spec.head.expand_ratio == 6
    assert space.spec.resolutions == [192, 224, 256, 288]


def test_ofa_preset_size_matches_paper() -> None:
    space = spaces.get("ofa_mbv3")
    # OFA reports ((3x3)^2 + (3x3)^3 + (3x3)^4)^5 ~ 2e19 sub-networks per resolution.
    assert space.size() == ((9**2 + 9**3 + 9**4) ** 5) * len(space.spec.resolutions)
    assert len([s for s in space.stages if len(s.depths) > 1]) == 5


def test_size_counts_distinct_subnetworks_exhaustively() -> None:
    space = spaces.from_dict(tiny_space_dict())
    rng = random.Random(0)
    seen = {space.sample(rng) for _ in range(4000)}
    # 2 res * (2 widths * (4 + 16)) * (1 * 1) = 80 distinct sub-networks
    assert space.size() == 80
    assert len(seen) == 80


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"bogus": 1}, "unknown key 'bogus'"),
        ({"resolutions": []}, "resolutions: resolutions must list at least one choice"),
        ({"stem": {"widths": [0]}}, "stem.widths: widths must be positive"),
        ({"stages": []}, "stages must list at least one stage"),
        ({"head": {"widths": [8], "typo": 2}}, "unknown key 'head.typo'"),
    ],
)
def test_space_validation_errors_name_the_key(patch: dict, message: str) -> None:
    d = tiny_space_dict() | patch
    with pytest.raises(SpaceError, match=message.replace(".", r"\.").replace("(", r"\(")):
        spaces.from_dict(d)


def test_stage_errors_name_the_stage() -> None:
    d = tiny_space_dict()
    d["stages"][1]["kernels"] = [4]
    with pytest.raises(SpaceError, match=r"stages\.1\.kernels: kernels must be odd"):
        spaces.from_dict(d)
    d["stages"][1]["kernels"] = [3]
    d["stages"][0]["widths"] = []
    with pytest.raises(SpaceError, match=r"stages\.0\.widths: widths must list at least one choice"):
        spaces.from_dict(d)
    del d["stages"][0]["widths"]
    with pytest.raises(SpaceError, match=r"missing key 'stages\.0\.widths'"):
        spaces.from_dict(d)


def test_from_yaml_round_trip_and_errors(tmp_path) -> None:
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(tiny_space_dict()))
    space = spaces.from_yaml(path)
    assert space == spaces.from_dict(space.to_dict())
    assert spaces.get(str(path)) == space
    with pytest.raises(SpaceError, match="missing.yaml"):
        spaces.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("stem: [unclosed")
    with pytest.raises(SpaceError, match="not valid YAML"):
        spaces.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(SpaceError, match="unknown search space 'nope'"):
        spaces.get("nope")


def test_largest_and_smallest_are_extremes() -> None:
    space = spaces.get("alphanet")
    big, small = space.largest(), space.smallest()
    assert big.depths == (2, 5, 6, 6, 8, 8, 2) and big.resolution == 288 and big.head_width == 1984
    assert small.depths == (1, 3, 3, 3, 3, 3, 1) and small.resolution == 192
    assert all(g[0] == 5 for bs in big.blocks for g in bs)
    assert all(g[0] == 3 for bs in small.blocks for g in bs)


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_sample_mutate_crossover_stay_in_space(name: str, seed: int) -> None:
    space = spaces.get(name)
    rng = random.Random(seed)
    a, b = space.sample(rng), space.sample(rng)
    assert space.contains(a) and space.contains(b)
    assert space.contains(space.mutate(a, 0.3, rng))
    child = space.crossover(a, b, rng)
    assert space.contains(child)
    for s in range(len(space.stages)):
        assert child.depths[s] in (a.depths[s], b.depths[s])
        for i, gene in enumerate(child.blocks[s]):
            for g in range(len(gene)):
                assert gene[g] in [p.blocks[s][i][g] for p in (a, b) if i < p.depths[s]]


@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_arch_json_round_trip(seed: int) -> None:
    space = spaces.get("alphanet")
    arch = space.sample(random.Random(seed))
    again = Arch.from_json(json.dumps(json.loads(arch.to_json())))
    assert again == arch and hash(again) == hash(arch)
    assert Arch.from_dict(arch.to_dict()) == arch


def test_mutation_probability_extremes() -> None:
    space = spaces.get("fmnist")
    rng = random.Random(1)
    arch = space.sample(rng)
    assert space.mutate(arch, 0.0, rng) == arch
    changed = sum(space.mutate(arch, 1.0, rng) != arch for _ in range(50))
    assert changed >= 45


def test_sampling_is_uniform_per_dimension() -> None:
    space = spaces.get("alphanet")
    rng = random.Random(3)
    draws = [space.sample(rng) for _ in range(3000)]
    res_counts = {r: sum(a.resolution == r for a in draws) for r in space.spec.resolutions}
    assert all(abs(c / 3000 - 0.25) < 0.04 for c in res_counts.values())
    depth_counts = {d: sum(a.depths[4] == d for a in draws) for d in space.stages[4].depths}
    assert all(abs(c / 3000 - 1 / 6) < 0.04 for c in depth_counts.values())


def test_sampling_is_deterministic_for_a_seed() -> None:
    space = spaces.get("ofa_mbv3")
    assert [space.sample(random.Random(7)) for _ in range(3)] == [space.sample(random.Random(7)) for _ in range(3)]


def test_validate_explains_what_is_out_of_space() -> None:
    space = spaces.get("alphanet")
    arch = space.smallest().to_dict()
    arch["resolution"] = 100
    with pytest.raises(ArchError, match=r"resolution 100 is not in the space's choices \[192, 224, 256, 288\]"):
        space.validate(Arch.from_dict(arch))
    arch = space.smallest().to_dict()
    arch["blocks"][2][1][0] = 7
    with pytest.raises(ArchError, match=r"stage 2 block 1 kernel 7"):
        space.validate(Arch.from_dict(arch))
    with pytest.raises(ArchError, match="7 stages"):
        spaces.get("fmnist").validate(space.smallest())


def test_arch_construction_errors() -> None:
    with pytest.raises(ArchError, match="stage 0 has depth 2 but 1 blocks"):
        Arch(224, 16, (16,), (2,), (((3, 1),),), 100)
    with pytest.raises(ArchError, match="block's genes must be a list"):
        Arch(224, 16, (16,), (1,), ((3,),), 100)
    with pytest.raises(ArchError, match=r"missing \['head_width'\]"):
        Arch.from_dict({k: v for k, v in spaces.get("fmnist").smallest().to_dict().items() if k != "head_width"})
    with pytest.raises(ArchError, match="arch_from_attentivenas"):
        Arch.from_dict(A0)


def test_attentivenas_import() -> None:
    space = spaces.get("alphanet")
    arch = space.arch_from_attentivenas(A0)
    assert arch.resolution == 192 and arch.stem_width == 16 and arch.head_width == 1792
    assert arch.widths == (16, 24, 32, 64, 112, 192, 216)
    assert arch.blocks[1] == ((3, 4),) * 3 and arch.blocks[5] == ((3, 6),) * 3
    bad = dict(A0, depth=[1, 3, 3])
    with pytest.raises(ArchError, match="depth/kernel_size/expand_ratio of length 7"):
        space.arch_from_attentivenas(bad)
    with pytest.raises(ArchError, match="not in the space"):
        space.arch_from_attentivenas(dict(A0, resolution=100))


def test_ratios_are_normalised_for_hashing() -> None:
    a = Arch(28, 8, (8,), (1,), (((3, 4.0),),), 32)
    b = Arch(28, 8, (8,), (1,), (((3, 4),),), 32)
    assert a == b and hash(a) == hash(b) and a.to_dict()["blocks"] == [[[3, 4]]]


def test_archs_saved_before_block_families_still_load() -> None:
    legacy = {"resolution": 28, "stem_width": 16, "widths": [16, 32], "depths": [2, 1], "kernels": [[3, 5], [3]],
              "expand_ratios": [[4, 6], [3]], "head_width": 128}
    arch = Arch.from_dict(legacy)
    assert arch.blocks == (((3, 4), (5, 6)), ((3, 3),)) and Arch.from_json(arch.to_json()) == arch
    with pytest.raises(ArchError, match="do not pair up"):
        Arch.from_dict({**legacy, "kernels": [[3], [3]]})


def test_make_divisible() -> None:
    assert make_divisible(16 * 4) == 64
    assert make_divisible(20) == 24  # rounds half up to a multiple of 8
    assert make_divisible(12) == 16
    assert make_divisible(3) == 8
    assert make_divisible(100 * 0.75) == 72
    assert make_divisible(11) == 16  # 8 would drop more than 10%
