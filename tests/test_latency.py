"""Tests for supernet.search.latency: measured latency, per-layer lookup tables and their prediction error.

Timings on a shared 2-core machine are noisy, so these tests check structure and sanity (positive, finite,
errors reported), never absolute numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import pytest
import torch
from torch import nn

from supernet import spaces
from supernet.model import build_static
from supernet.search.latency import (
    BlockLayer,
    HeadLayer,
    LatencyError,
    LatencyStats,
    LatencyTable,
    MissingLayerError,
    StemLayer,
    arch_latency,
    arch_layers,
    evaluate_table,
    measure_latency,
    space_layers,
)
from supernet.space import Arch

FAST = {"warmup": 1, "repeats": 3}


@pytest.fixture(scope="module")
def space():
    return spaces.get("fmnist")


@pytest.fixture(scope="module")
def full_table(space):
    """A torch table of every layer of the fmnist space (a few hundred layers, about a second)."""
    torch.set_num_threads(1)
    return LatencyTable.build(space, 10, backend="torch", calibrate=3, seed=0, **FAST)


def held_out(space, n: int, seed: int = 123) -> list[Arch]:
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def _sane(stats: LatencyStats, repeats: int) -> None:
    assert stats.repeats == repeats
    assert math.isfinite(stats.median_ms) and stats.median_ms > 0
    assert math.isfinite(stats.p90_ms) and stats.p90_ms >= stats.median_ms


# -- measuring ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_arch_latency_is_positive_and_finite_on_both_backends(space, backend):
    stats = arch_latency(space, space.smallest(), 10, backend=backend, threads=1, **FAST)
    _sane(stats, FAST["repeats"])


def test_batch_is_part_of_the_measured_input(space):
    stats = arch_latency(space, space.smallest(), 10, batch=4, **FAST)
    _sane(stats, FAST["repeats"])


def test_measure_latency_restores_threads_training_flag_and_global_rng(space):
    net = build_static(space, space.smallest(), 10).train()
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    torch.set_num_threads(2)  # measure with 1 thread, not 2: two would contend with other jobs on 2 cores
    try:
        measure_latency(net, (1, 1, 20, 20), threads=1, **FAST)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    arch_latency(space, space.largest(), 10, **FAST)
    assert net.training
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "tflite"}, "unknown latency backend 'tflite'"),
        ({"repeats": 0}, "repeats >= 1"),
        ({"threads": 0}, "threads >= 1"),
        ({"warmup": -1}, "warmup >= 0"),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_latency(nn.Conv2d(1, 1, 1), (1, 1, 4, 4), **kwargs)


# -- layers ------------------------------------------------------------------------------------------


def test_arch_layers_chain_into_the_extracted_network(space):
    """Each layer's key describes the tensor that really reaches it, and the layers add up to the network."""
    for arch in [space.smallest(), space.largest(), *held_out(space, 5)]:
        layers = arch_layers(space, arch, 10)
        assert len(layers) == 2 + sum(arch.depths)
        assert isinstance(layers[0], StemLayer) and isinstance(layers[-1], HeadLayer)
        net = build_static(space, arch, 10)
        parts = [net.stem, *net.blocks, net.head]
        x = torch.zeros(1, 1, arch.resolution, arch.resolution)
        with torch.no_grad():
            for layer, part in zip(layers, parts):
                assert tuple(x.shape) == layer.input_shape(1)
                assert sum(p.numel() for p in layer.module().parameters()) == sum(
                    p.numel() for p in part.parameters()
                )
                x = part(x)
        assert x.shape == (1, 10)


def all_archs(space) -> list[Arch]:
    """Every sub-network of a (small) space."""
    per_stage = []
    for st in space.stages:
        options = []
        for width, depth in itertools.product(st.widths, st.depths):
            for genes in itertools.product(*(st.block_choices(b) for b in range(depth))):
                options.append((width, depth, genes))
        per_stage.append(options)
    spec = space.spec
    return [
        Arch(r, stem, tuple(o[0] for o in stages), tuple(o[1] for o in stages), tuple(o[2] for o in stages), head)
        for r, stem, head, stages in itertools.product(
            spec.resolutions, spec.stem.widths, spec.head.widths, itertools.product(*per_stage)
        )
    ]


def test_space_layers_are_exactly_the_layers_of_all_sub_networks():
    """Brute force on a small space with odd resolutions, an identity-shortcut stage and fractional ratios."""
    small = spaces.from_dict(
        {
            "name": "small",
            "in_channels": 3,
            "stem": {"widths": [8, 12], "kernel": 3, "stride": 2},
            "stages": [
                {
                    "widths": [8, 16],
                    "depths": [1, 2],
                    "kernels": [3, 5],
                    "expand_ratios": [1, 2.5],
                    "stride": 2,
                },
                {
                    "widths": [16],
                    "depths": [1, 2],
                    "kernels": [3],
                    "expand_ratios": [3, 4],
                    "stride": 1,
                    "se": True,
                    "activation": "h_swish",
                    "shortcut": "identity",
                },
            ],
            "head": {"expand_ratio": 2, "widths": [32]},
            "resolutions": [15, 16, 21],
        }
    )
    archs = all_archs(small)
    assert len(archs) == small.size()
    brute = {layer for a in archs for layer in arch_layers(small, a, 5)}
    assert space_layers(small, 5) == brute


def test_space_layers_cover_sampled_sub_networks_of_the_presets():
    for name in ["fmnist", "ofa_mbv3"]:
        space = spaces.get(name)
        layers = space_layers(space, 10)
        for arch in [space.smallest(), space.largest(), *held_out(space, 30)]:
            assert set(arch_layers(space, arch, 10)) <= layers


def test_keys_distinguish_stride_se_resolution_and_activation(space):
    block = BlockLayer(16, 24, 3, 4, 2, False, "swish", "conv", 14)
    variants = [
        dataclasses.replace(block, stride=1),
        dataclasses.replace(block, se=True),
        dataclasses.replace(block, side=12),
        dataclasses.replace(block, activation="h_swish"),
        dataclasses.replace(block, shortcut="identity"),
        dataclasses.replace(block, expand_ratio=6),
    ]
    assert len({block.key, *(v.key for v in variants)}) == 1 + len(variants)
    assert (
        BlockLayer(8, 8, 3, 4.0, 1, False, "relu", "conv", 7).key
        == BlockLayer(8, 8, 3, 4, 1, False, "relu", "conv", 7).key
    )
    small = space.smallest()
    bigger_input = dataclasses.replace(small, resolution=28)
    assert arch_layers(space, small, 10)[0].key != arch_layers(space, bigger_input, 10)[0].key
    assert "side=28" in arch_layers(space, bigger_input, 10)[0].key


# -- lookup table ------------------------------------------------------------------------------------


def test_table_built_from_archs_covers_exactly_their_layers(space):
    archs = held_out(space, 2, seed=7)
    table = LatencyTable.build(space, 10, archs=archs, calibrate=1, **FAST)
    expected = {layer.key for a in archs for layer in arch_layers(space, a, 10)}
    assert set(table.entries) == expected
    assert all(math.isfinite(v) and v > 0 for v in table.entries.values())
    assert math.isfinite(table.overhead_ms) and table.call_ms > 0
    for arch in archs:
        assert not table.missing(arch)
        assert table.predict(arch) > 0


def test_missing_layer_raises_a_key_error_naming_it_or_is_measured_on_demand(space):
    table = LatencyTable.build(space, 10, archs=[space.smallest()], calibrate=0, **FAST)
    assert table.overhead_ms == table.call_ms  # no calibration: one call's cost per network
    largest = space.largest()
    missing = table.missing(largest)
    assert missing
    with pytest.raises(MissingLayerError, match="no entry for layer stem") as info:
        table.predict(largest)
    assert isinstance(info.value, KeyError)
    assert missing[0].key in str(info.value) and f"and {len(missing) - 1} more" in str(info.value)
    assert "\n" not in str(info.value) and "measure_missing=True" in str(info.value)
    assert table.predict(largest, measure_missing=True) > 0
    assert not table.missing(largest)


def test_on_demand_measuring_refuses_another_device(space):
    table = LatencyTable.build(space, 10, archs=[space.smallest()], calibrate=0, **FAST)
    table.settings = dataclasses.replace(table.settings, device="Snapdragon 888 (aarch64, 8 cpus)")
    with pytest.raises(LatencyError, match="built on 'Snapdragon 888"):
        table.predict(space.largest(), measure_missing=True)
    assert table.predict(space.smallest()) > 0  # lookups work anywhere


def test_full_table_predicts_held_out_archs_and_reports_its_error(space, full_table):
    assert len(full_table) == len(space_layers(space, 10))
    archs = held_out(space, 4)
    assert all(full_table.predict(a) > 0 for a in archs)
    error = evaluate_table(full_table, archs)
    assert error.n == 4 and len(error.predicted_ms) == len(error.measured_ms) == 4
    assert math.isfinite(error.mean_abs_pct) and math.isfinite(error.max_abs_pct)
    assert 0 <= error.mean_abs_pct <= error.max_abs_pct
    assert -1 <= error.rank_correlation <= 1
    assert all(m > 0 for m in error.measured_ms)


def test_evaluate_table_needs_archs(full_table):
    with pytest.raises(ValueError, match="at least one"):
        evaluate_table(full_table, [])


def test_onnxruntime_table(space):
    arch = space.smallest()
    table = LatencyTable.build(space, 10, archs=[arch], backend="onnxruntime", calibrate=1, **FAST)
    assert table.settings.backend == "onnxruntime" and table.settings.runtime.startswith("onnxruntime ")
    assert len(table) == len(arch_layers(space, arch, 10))
    assert table.predict(arch) > 0


def test_save_load_round_trip(space, full_table, tmp_path):
    path = tmp_path / "tables" / "fmnist.json"
    full_table.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == full_table.to_dict()
    assert loaded.space == space and loaded.settings == full_table.settings
    for arch in held_out(space, 3):
        assert loaded.predict(arch) == full_table.predict(arch)
    assert not list(path.parent.glob(".*.tmp"))


def test_load_rejects_what_is_not_a_table(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(LatencyError, match="not valid JSON"):
        LatencyTable.load(bad_json)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": 99}))
    with pytest.raises(LatencyError, match="not a latency table of format 1"):
        LatencyTable.load(other)
    with pytest.raises(LatencyError, match="No such file"):
        LatencyTable.load(tmp_path / "missing.json")


def test_pool_head_spaces_have_their_own_layer_kind() -> None:
    """The MobileNetV2 / ProxylessNAS head (no mix conv) is a layer of its own in latency tables."""
    from supernet.search.latency import PoolHeadLayer, arch_layers, space_layers

    space = spaces.get("proxyless_gpu")
    layers = arch_layers(space, space.smallest(), 1000)
    assert isinstance(layers[-1], PoolHeadLayer) and layers[-1].key.startswith("pool_head(")
    assert layers[-1] in space_layers(space, 1000)
    head = layers[-1].module().eval()
    assert head(torch.randn(1, layers[-1].in_c, 4, 4)).shape == (1, 1000) and head.mix is None
