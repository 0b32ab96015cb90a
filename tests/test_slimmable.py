"""Width-multiplier (slimmable) spaces: the separable family, tied widths, published MACs, extraction at every width."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from net_helpers import randomise_bn
from supernet import spaces
from supernet.cost import count_macs_by_hooks, count_params, macs, params, summary
from supernet.model import Supernet
from supernet.nn.static import SeparableConv
from supernet.search.latency import arch_layers, space_layers
from supernet.space import ArchError, SpaceError

# Published MobileNet MACs (millions) at 224x224: MobileNetV1 (Howard et al. 2017, Table 6/7 and the
# slimmable papers' tables) and MobileNetV2 (Sandler et al. 2018, Table 6 / the official model zoo).
PUBLISHED = {
    "slimmable_mbv1": {1.0: 569, 0.75: 325, 0.5: 149, 0.25: 41},
    "slimmable_mbv2": {1.0: 300, 0.75: 209, 0.5: 97, 0.35: 59},
}

SMALL = {
    "name": "tiny_slim",
    "in_channels": 1,
    "stem": {"widths": [16], "stride": 1},
    "stages": [
        {"family": "separable", "widths": [16], "depths": [1], "stride": 1},
        {"family": "separable", "widths": [32], "depths": [2], "stride": 2},
    ],
    "head": {"widths": [32], "mix": False, "conv": False},
    "resolutions": [12],
    "width_multiplier": {"range": [0.25, 1.0], "divisor": 8},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_match_published_mobilenet_macs_within_one_percent(name: str) -> None:
    space = spaces.get(name)
    for m, published in PUBLISHED[name].items():
        got = macs(space, space.at_width(m, 224), num_classes=1000) / 1e6
        assert abs(got - published) / published < 0.01, (m, got, published)


def test_summary_prints_macs_at_the_standard_widths() -> None:
    text = summary(spaces.get("slimmable_mbv1"), num_classes=1000)
    for label, value in [("0.25x", "41.0"), ("0.50x", "149.5"), ("1.00x", "568.7")]:
        line = next(ln for ln in text.splitlines() if label in ln)
        assert value in line, line


def test_one_multiplier_moves_every_width() -> None:
    space = spaces.get("fmnist_slimmable")
    half = space.at_width(0.5)
    assert (half.stem_width, *half.widths, half.head_width) == (16, 16, 32, 64, 128, 128)
    quarter = space.at_width(0.25)
    assert (quarter.stem_width, *quarter.widths) == (8, 8, 16, 32, 64)
    assert space.largest() == space.at_width(1.0) and space.smallest() == quarter
    assert space.multiplier_of(half) == 0.5 and space.multiplier_of(space.at_width(0.7)) == 0.7
    assert space.arch_text(half).startswith("0.5x")


def test_mobilenet_v2_head_keeps_1280_below_one_times() -> None:
    space = spaces.get("slimmable_mbv2")
    assert space.at_width(0.35).head_width == 1280
    assert space.at_width(1.0).head_width == 1280
    assert space.at_width(0.35).widths[0] == 8  # 16 x 0.35 rounded to a multiple of 8


def test_sampling_mutation_and_crossover_stay_tied() -> None:
    space = spaces.get("fmnist_slimmable")
    rng = random.Random(0)
    tied = set(space.tied_multipliers())
    seen = set()
    for _ in range(200):
        a, b = space.sample(rng), space.sample(rng)
        for arch in (a, b, space.mutate(a, 1.0, rng), space.crossover(a, b, rng)):
            m = space.multiplier_of(arch)
            assert m in tied, arch
            assert space.at_width(m) == arch
            seen.add(m)
        assert space.crossover(a, b, rng) in (a, b)
    assert len(seen) > 20  # continuous sampling reaches many widths
    assert space.mutate(a, 0.0, rng) == a


def test_untied_arch_is_rejected() -> None:
    space = spaces.get("fmnist_slimmable")
    half, quarter = space.at_width(0.5), space.at_width(0.25)
    mixed = half.__class__.of_stages(28, half.stem_width, [half.stage(0), quarter.stage(1), half.stage(2),
                                                           half.stage(3)], half.head_width)
    with pytest.raises(ArchError, match="multiplier"):
        space.validate(mixed)
    with pytest.raises(ArchError, match=r"outside the space's \[0.25, 1\]"):
        space.at_width(0.2)
    with pytest.raises(ArchError, match="no width multiplier"):
        spaces.get("fmnist").at_width(0.5)


def test_extraction_equals_supernet_at_every_width() -> None:
    space = spaces.get("fmnist_slimmable")
    net = Supernet(space, num_classes=10).eval()
    randomise_bn(net, 3)
    x = torch.randn(2, 1, 28, 28)
    multipliers = space.tied_multipliers()
    assert len(multipliers) == 43
    for m in multipliers:
        arch = space.at_width(m)
        net.set_active(arch)
        expected = net(x)
        static = net.extract(arch)
        torch.testing.assert_close(static(x), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
        assert count_params(static) == params(space, arch, num_classes=10)
        assert count_macs_by_hooks(static, (1, 1, 28, 28)) == macs(space, arch, num_classes=10)


def test_separable_blocks_and_pool_head_in_the_export() -> None:
    space = spaces.get("fmnist_slimmable")
    static = Supernet(space, num_classes=10).extract(space.at_width(0.5))
    blocks = [m for m in static.modules() if isinstance(m, SeparableConv)]
    assert len(blocks) == 7
    convs = [m for m in blocks[1].modules() if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [16, 1]  # depthwise, then pointwise
    assert not any(m.__class__.__name__ == "ResidualBlock" for m in static.modules())
    head_convs = [m for m in static.head.modules() if isinstance(m, nn.Conv2d)]
    assert head_convs == []


def test_yaml_round_trip_keeps_the_declared_base_widths() -> None:
    space = spaces.from_dict(SMALL)
    d = space.to_dict()
    assert d["stages"][1]["widths"] == [32] and d["width_multiplier"]["range"] == [0.25, 1.0]
    assert d["head"]["conv"] is False
    again = spaces.from_dict(d)
    assert again == space and again.tied_multipliers() == space.tied_multipliers()
    assert "conv" not in spaces.get("fmnist").to_dict()["head"]  # default heads dump as before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["stages"][1].update(widths=[24, 32]), "one base"),
        (lambda d: d["stages"][1].update(depths=[1, 2]), "varies only the width"),
        (lambda d: d["head"].update(widths=[64]), "without its conv"),
        (lambda d: d["head"].update(mix=True), "conv"),
        (lambda d: d["width_multiplier"].update(range=[1.0, 0.5]), "low < high"),
        (lambda d: d["width_multiplier"].update(choices=[0.5, 1.0]), "exactly one"),
    ],
)
def test_bad_width_multiplier_spaces_say_what_to_fix(change, message: str) -> None:
    d = {k: (v.copy() if isinstance(v, dict) else v) for k, v in SMALL.items()}
    d["stages"] = [dict(st) for st in SMALL["stages"]]
    d["head"], d["width_multiplier"] = dict(SMALL["head"]), dict(SMALL["width_multiplier"])
    change(d)
    with pytest.raises(SpaceError, match=message):
        spaces.from_dict(d)


def test_listed_multipliers_sample_only_those() -> None:
    d = dict(SMALL, width_multiplier={"choices": [0.5, 1.0]})
    space = spaces.from_dict(d)
    rng = random.Random(0)
    assert space.tied_multipliers() == [0.5, 1.0]
    assert {space.multiplier_of(space.sample(rng)) for _ in range(50)} == {0.5, 1.0}
    assert space.size() == 2


def test_latency_layers_cover_every_width_without_per_layer_combinations() -> None:
    space = spaces.get("fmnist_slimmable")
    layers = space_layers(space, num_classes=10)
    for m in space.tied_multipliers():
        assert set(arch_layers(space, space.at_width(m), 10, 1)) <= layers
    kinds = {layer.kind for layer in layers}
    assert {"separable", "classifier"} <= kinds
    assert len(layers) <= 43 * 9  # stem + 7 blocks + classifier per width, no cross-width mixtures


def test_parse_widths_reads_lists_and_inclusive_ranges() -> None:
    from supernet.search.widths import parse_widths

    table1 = parse_widths("0.25:0.75:0.05")
    assert len(table1) == 11 and table1[0] == 0.25 and table1[-1] == 0.75
    assert parse_widths("1.0, 0.25:0.35:0.05,0.5") == [0.25, 0.3, 0.35, 0.5, 1.0]
    for bad in ("", "0.5:0.25:0.05", "0.25:0.75:0", "a,b", "-0.5"):
        with pytest.raises(ArchError, match="--widths"):
            parse_widths(bad)


def test_eval_widths_from_the_cli_writes_table_one(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """A tiny slimmable run, then `supernet eval --widths`: one recalibrated row per width, or a clear error."""
    import json

    from supernet.cli import main
    from training_helpers import small_data

    small_data()
    space = tmp_path / "slim.yaml"
    import yaml

    space.write_text(yaml.safe_dump(SMALL | {"in_channels": 1, "resolutions": [28]}))
    run = tmp_path / "run"
    sets = [f"space={space}", "data.limit=256", "data.val_size=128", "data.batch_size=32", "train.epochs=1",
            "train.eval_every_epochs=0", "train.recal_images=64", "train.eval_images=64", "optim.warmup_epochs=0",
            "train.diagnostic_draws=0"]
    args = ["train", "configs/slimmable_adaptive.yaml", "--out", str(run), "--no-progress", "--max-steps", "3"]
    assert main([*args, *(x for s in sets for x in ("--set", s))]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--widths", "0.25:0.75:0.25,1.0", "--split", "val", "--json",
                 "--recal-images", "64"]) == 0
    rows = json.loads(capsys.readouterr().out)["widths"]
    assert [r["width"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert rows[0]["macs"] < rows[1]["macs"] < rows[2]["macs"] < rows[3]["macs"]
    assert all(0.0 <= r["top1"] <= 1.0 for r in rows)
    assert main(["eval", str(run), "--widths", "0.5,1.0", "--split", "val", "--recal-images", "64"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| width | MMACs") and table[2].startswith("| 0.5x") and len(table) == 4
    assert main(["eval", str(run), "--widths", "0.1", "--split", "val"]) == 2
    err = capsys.readouterr().err.strip()
    assert "0.1" in err and err.count("\n") == 0


def test_mobilenet_v2_preset_is_slimmable_mbv2_down_to_a_quarter() -> None:
    """AlphaNet Table 6's MobileNetV2 0.25x student: the same layout as slimmable_mbv2, a wider range."""
    wide, slim = spaces.get("mobilenet_v2"), spaces.get("slimmable_mbv2")
    for m in (0.35, 0.5, 0.75, 1.0):
        assert macs(wide, wide.at_width(m), 1000) == macs(slim, slim.at_width(m), 1000)
    quarter = wide.at_width(0.25)
    assert quarter.widths[0] == 8 and quarter.head_width == 1280 and wide.smallest() == quarter
    with pytest.raises(ArchError, match="outside"):
        slim.at_width(0.25)
