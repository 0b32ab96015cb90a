"""EnNAS diversity sampler: feature-map diversity estimates, calibrated marginals, diverse sets, resume."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy.stats import chisquare
from torch import nn

from net_helpers import kernels_of, randomise_bn, ratios_of, with_genes
from supernet import Arch, SearchSpace, Supernet, spaces
from supernet.training.diversity import (
    DiversitySampler,
    DiversityTable,
    block_ops,
    calibrate,
    draw_operators,
    estimate_diversity,
    expected_counts,
    mean_pairwise_diversity,
    stage_ops,
)
from supernet.training.samplers import SampleContext

SPACE = spaces.get("fmnist")


def randomise(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN parameters: a fresh supernet zero-inits each block's last BN, so all ops coincide."""
    randomise_bn(net, seed)


def images(n: int, seed: int, side: int = 28) -> torch.Tensor:
    return torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def skewed(t: int, seed: int) -> torch.Tensor:
    """A strongly non-uniform diversity matrix: op 0 far from all others, the others close together."""
    g = torch.Generator().manual_seed(seed)
    d = 0.02 + 0.1 * torch.rand(t, t, generator=g, dtype=torch.float64)
    d[0, :] = 1.8
    d = torch.triu(d, 1)
    return d + d.T


def random_matrix(t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = torch.triu(2 * torch.rand(t, t, generator=g, dtype=torch.float64) ** 2, 1)
    return d + d.T


def table_of(space: SearchSpace, make, seed: int = 0) -> DiversityTable:
    mats = [
        [make(len(block_ops(st, b)), seed + 10 * s + b) for b in range(max(st.depths))]
        for s, st in enumerate(space.stages)
    ]
    return DiversityTable.from_space(space, mats)


def ctx(seed: int, space: SearchSpace = SPACE) -> SampleContext:
    return SampleContext(space=space, rng=random.Random(seed), num_classes=10)


@pytest.fixture(scope="module")
def trained_like() -> tuple[Supernet, DiversityTable]:
    torch.manual_seed(0)
    net = Supernet(SPACE, num_classes=10)
    randomise(net)
    return net, estimate_diversity(net, [images(6, 1), images(5, 2)], SPACE, inputs="largest")


# -- estimate_diversity --------------------------------------------------------------------------------


def test_stage_ops_are_every_kernel_ratio_pair() -> None:
    assert block_ops(SPACE.stages[1], 0) == [(3, 3), (3, 4), (3, 6), (5, 3), (5, 4), (5, 6)]
    assert stage_ops(SPACE.stages[1]) == (tuple(block_ops(SPACE.stages[1], 0)),) * max(SPACE.stages[1].depths)
    assert block_ops(SPACE.stages[0], 1) == [(3, 1), (5, 1)]


def test_estimate_shapes_and_matrix_properties(trained_like) -> None:
    _, table = trained_like
    assert len(table.matrices) == len(SPACE.stages)
    for st, ops, blocks in zip(SPACE.stages, table.ops, table.matrices):
        t = len(st.kernels) * len(st.expand_ratios)
        assert all(len(o) == t for o in ops) and len(ops) == len(blocks) == max(st.depths)
        for d in blocks:
            assert d.shape == (t, t) and d.dtype == torch.float64
            assert torch.equal(d.diagonal(), torch.zeros(t, dtype=torch.float64))
            assert torch.equal(d, d.T)
            assert d.min() >= 0 and d.max() <= 2
            off = d[~torch.eye(t, dtype=torch.bool)]
            assert off.min() > 0  # distinct ops of a randomised net never give identical maps


def test_estimate_equals_direct_cosine_of_block_outputs(trained_like) -> None:
    """D[t,u] of block (1,0) is the mean 1 - cos of that block's outputs when only its op changes."""
    net, table = trained_like
    base = SPACE.largest()
    x = nn.functional.interpolate(
        torch.cat([images(6, 1), images(5, 2)]),
        size=(base.resolution,) * 2,
        mode="bilinear",
        align_corners=False,
    )
    captured = {}
    handle = net.stages[1][0].register_forward_hook(lambda m, args, out: captured.__setitem__("y", out))

    def block_output(kernel: int, ratio: float) -> torch.Tensor:
        ks, es = kernels_of(base), ratios_of(base)
        kernels = (ks[0], (kernel,) + ks[1][1:], *ks[2:])
        ratios = (es[0], (ratio,) + es[1][1:], *es[2:])
        net.set_active(with_genes(base, kernels=kernels, expand_ratios=ratios))
        with torch.no_grad():
            net.eval()(x)
        return captured["y"].flatten(1).double()

    try:
        a, b = block_output(5, 6), block_output(3, 4)
    finally:
        handle.remove()
        net.set_active(base)
    expected = (1 - nn.functional.cosine_similarity(a, b, dim=1)).mean().item()
    t, u = table.index(1, 0, (5, 6)), table.index(1, 0, (3, 4))
    assert table.matrices[1][0][t, u].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_spread_inputs_are_the_previous_layers_outputs_dealt_over_its_operators() -> None:
    """EnNAS section 3.3: layer l's inputs are layer l-1's operators' outputs, image i from operator i mod T."""
    net = Supernet(SPACE, num_classes=10)
    randomise(net, seed=6)
    base = SPACE.largest()
    x = images(6, 3, side=base.resolution)
    table = estimate_diversity(net, [x], SPACE, inputs="spread")
    st = SPACE.stages[0]
    first, second = net.stages[0][0], net.stages[0][1]
    with torch.no_grad():
        net.eval()
        h = net.stem(x, base.stem_width)
        outs = []
        for k, e in block_ops(st, 0):
            first.configure(base.widths[0], k, e)
            outs.append(first(h))
        merged = torch.stack([outs[i % len(outs)][i] for i in range(x.shape[0])])
        (k1, e1), (k2, e2) = block_ops(st, 1)[:2]
        second.configure(base.widths[0], k1, e1)
        a = second(merged).flatten(1).double()
        second.configure(base.widths[0], k2, e2)
        b = second(merged).flatten(1).double()
    expected = (1 - nn.functional.cosine_similarity(a, b, dim=1)).mean().item()
    assert table.matrices[0][1][0, 1].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    unspread = estimate_diversity(net, [x], SPACE, inputs="largest")
    assert not torch.allclose(unspread.matrices[0][1], table.matrices[0][1])  # the inputs do differ


def test_diversity_on_a_choice_space_covers_every_layers_operators() -> None:
    space = spaces.get("fmnist_choice")
    net = Supernet(space, num_classes=10)
    randomise(net, seed=2)
    sampler = DiversitySampler(num_networks=4)
    table = sampler.prepare(net, [images(4, 0)], space)
    assert table.matches(space)
    identity = table.ops[0][1].index(("identity",))
    assert ("identity",) not in table.ops[0][0] and table.matrices[0][1][identity].sum() > 0
    for arch in sampler.sample(ctx(0, space)):
        space.validate(arch)
    state = sampler.state_dict()
    again = DiversitySampler(num_networks=4)
    again.load_state_dict(state)
    assert again.sample(ctx(1, space)) == sampler.sample(ctx(1, space))


def test_estimate_restores_active_arch_block_settings_and_mode() -> None:
    net = Supernet(SPACE, num_classes=10)
    randomise(net, seed=3)
    arch = SPACE.sample(random.Random(5))
    net.set_active(arch)
    net.train()
    before = [(blk.active_out, blk.active_kernel, blk.active_expand) for st in net.stages for blk in st]
    table = estimate_diversity(net, [(images(4, 0), torch.zeros(4, dtype=torch.long))], SPACE)
    assert net.active_arch == arch and net.training
    assert [
        (blk.active_out, blk.active_kernel, blk.active_expand) for st in net.stages for blk in st
    ] == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert table.matches(SPACE)


def test_estimate_with_a_shallow_base_covers_every_block() -> None:
    net = Supernet(SPACE, num_classes=10)
    randomise(net, seed=4)
    table = estimate_diversity(net, [images(4, 0, side=20)], SPACE, base=SPACE.smallest())
    for st, blocks in zip(SPACE.stages, table.matrices):
        assert len(blocks) == max(st.depths)
        for d in blocks:
            assert torch.isfinite(d).all() and d.sum() > 0


def test_untrained_supernet_has_zero_diversity_and_samples_uniformly() -> None:
    """A fresh supernet's blocks are all identities (zero-init last BN): D = 0, the sampler stays uniform."""
    net = Supernet(SPACE, num_classes=10)
    sampler = DiversitySampler()
    table = sampler.prepare(net, [images(4, 0)], SPACE)
    assert all(torch.equal(d, torch.zeros_like(d)) for blocks in table.matrices for d in blocks)
    assert sampler.calibration_error < 1e-12
    assert all(len(set(w)) == 1 for ws in sampler.weights for w in ws)


def test_single_operator_stage_gets_a_1x1_zero_matrix() -> None:
    spec = SPACE.to_dict()
    spec["stages"][0]["kernels"] = [3]
    space = spaces.from_dict(spec)
    net = Supernet(space, num_classes=10)
    randomise(net)
    table = estimate_diversity(net, [images(3, 0)], space)
    assert all(torch.equal(d, torch.zeros(1, 1, dtype=torch.float64)) for d in table.matrices[0])
    archs = DiversitySampler().sample(ctx(0, space))
    assert all(space.contains(a) for a in archs)


def test_estimate_rejects_no_images() -> None:
    with pytest.raises(ValueError, match="non-empty batch"):
        estimate_diversity(Supernet(SPACE, num_classes=10), [], SPACE)


# -- calibration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("make", [skewed, random_matrix])
def test_calibrated_expected_counts_are_exactly_m_over_t(m: int, make) -> None:
    d = make(6, seed=m).tolist()
    weights, err = calibrate(d, m)
    counts = expected_counts(d, weights, m)
    assert torch.allclose(counts, torch.full((6,), m / 6, dtype=torch.float64), atol=1e-9)
    assert err < 1e-9


def test_uncalibrated_draw_is_biased_towards_the_diverse_op() -> None:
    counts = expected_counts(skewed(6, 0).tolist(), [1.0] * 6, 4)
    assert counts[0] > 0.95  # op 0 is in almost every set instead of 2/3 of them


def test_monte_carlo_calibration_is_close() -> None:
    d = skewed(6, 1).tolist()
    weights, err = calibrate(d, 3, max_enumerate=0, mc_samples=4000)
    exact = expected_counts(d, weights, 3) / 3
    assert (exact - 1 / 6).abs().max() < 0.01 and err < 0.01
    assert (expected_counts(d, [1.0] * 6, 3) / 3 - 1 / 6).abs().max() > 0.1


@settings(max_examples=60, deadline=None)
@given(
    t=hst.integers(1, 9),
    m=hst.integers(1, 12),
    seed=hst.integers(0, 2**31),
    zero=hst.booleans(),
)
def test_draws_repeat_an_op_only_once_all_are_used(t: int, m: int, seed: int, zero: bool) -> None:
    d = torch.zeros(t, t) if zero else random_matrix(t, seed)
    ops = draw_operators(d.tolist(), [1.0] * t, m, random.Random(seed))
    assert len(ops) == m and all(0 <= o < t for o in ops)
    counts = Counter(ops)
    assert max(counts.values()) - min(counts.get(o, 0) for o in range(t)) <= 1 if m >= t else len(counts) == m


# -- the sampler ---------------------------------------------------------------------------------------


def slot_counts(sampler: DiversitySampler, draws: int, seed: int) -> dict[tuple[int, int, int], Counter]:
    """Per (stage, block, slot): how often each operator index was drawn, over `draws` steps."""
    c = ctx(seed)
    table = sampler.table
    counts: dict[tuple[int, int, int], Counter] = {}
    for _ in range(draws):
        for i, arch in enumerate(sampler.sample(c)):
            for s in range(len(arch.depths)):
                for b in range(arch.depths[s]):
                    op = table.index(s, b, arch.blocks[s][b])
                    counts.setdefault((s, b, i), Counter())[op] += 1
    return counts


def p_values(counts: dict[tuple[int, int, int], Counter], table: DiversityTable) -> list[float]:
    return [chisquare([c[o] for o in range(len(table.ops[s][b]))]).pvalue for (s, b, _), c in counts.items()]


def test_marginals_are_uniform_in_every_slot_and_calibration_is_needed() -> None:
    table = table_of(SPACE, skewed)
    calibrated = DiversitySampler(num_networks=4)
    calibrated.set_diversity(table)
    assert calibrated.calibration_error < 1e-9
    uncalibrated = DiversitySampler(num_networks=4)
    uncalibrated.set_diversity(table)
    uncalibrated.weights = [[[1.0] * len(w) for w in ws] for ws in uncalibrated.weights]

    good = p_values(slot_counts(calibrated, 2000, seed=0), table)
    bad = p_values(slot_counts(uncalibrated, 2000, seed=0), table)
    assert len(good) == 4 * sum(max(st.depths) for st in SPACE.stages)  # 40 (block, slot) cells
    # Bonferroni: all 40 chi-square tests together at family-wise level 0.001 (each at 0.001 / 40).
    assert min(good) > 0.001 / len(good)
    assert min(bad) < 1e-9


def test_sets_are_more_diverse_than_uniform_random_ones() -> None:
    table = table_of(SPACE, random_matrix, seed=7)
    sampler = DiversitySampler(num_networks=4)
    sampler.set_diversity(table)
    c = ctx(1)
    ours = sum(mean_pairwise_diversity(sampler.sample(c), table) for _ in range(400)) / 400
    rand = (
        sum(mean_pairwise_diversity([SPACE.sample(c.rng) for _ in range(4)], table) for _ in range(400)) / 400
    )
    assert ours > 1.2 * rand  # about 1.3 for this table


def test_mean_pairwise_diversity_closed_form() -> None:
    d = torch.tensor([[0.0, 0.5, 1.5], [0.5, 0.0, 1.0], [1.5, 1.0, 0.0]], dtype=torch.float64)
    spec = SPACE.to_dict()
    spec["stages"] = [{**spec["stages"][0], "kernels": [3], "expand_ratios": [2, 4, 6], "depths": [1, 2]}]
    space = spaces.from_dict(spec)
    table = DiversityTable.from_space(space, [[d, 2 * d]])
    base = space.largest()

    def arch(ratios: tuple) -> Arch:
        return with_genes(base, depths=(len(ratios),), kernels=((3,) * len(ratios),), expand_ratios=(ratios,))

    archs = [arch((2, 4)), arch((4, 6)), arch((6,))]
    # block 0: ops 0,1,2 -> pairs 0.5, 1.5, 1.0; block 1: ops 1,2 -> 2 * 1.0 (the third arch lacks it)
    assert mean_pairwise_diversity(archs, table) == pytest.approx((1.0 + 2.0) / 2)
    assert mean_pairwise_diversity(archs[:1], table) == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=hst.integers(0, 2**31), m=hst.integers(1, 5), prepared=hst.booleans())
def test_every_sampled_arch_is_in_the_space(seed: int, m: int, prepared: bool) -> None:
    sampler = DiversitySampler(num_networks=m)
    if prepared:
        sampler.set_diversity(table_of(SPACE, random_matrix, seed=seed % 1000))
    archs = sampler.sample(ctx(seed))
    assert len(archs) == m and all(SPACE.contains(a) for a in archs)


def test_same_seed_same_samples() -> None:
    sampler = DiversitySampler()
    sampler.set_diversity(table_of(SPACE, random_matrix))
    a, b = ctx(3), ctx(3)
    first = [sampler.sample(a) for _ in range(5)]
    assert first == [sampler.sample(b) for _ in range(5)]
    assert first != [sampler.sample(ctx(4)) for _ in range(5)]


def test_state_dict_round_trip_reproduces_samples(trained_like) -> None:
    _, table = trained_like
    sampler = DiversitySampler(num_networks=3)
    sampler.set_diversity(table)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    buffer.seek(0)
    resumed = DiversitySampler(num_networks=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.weights == sampler.weights and resumed.calibration_error == sampler.calibration_error
    a, b = ctx(9), ctx(9)
    assert [sampler.sample(a) for _ in range(20)] == [resumed.sample(b) for _ in range(20)]

    fresh = DiversitySampler(num_networks=3)
    fresh.load_state_dict(DiversitySampler(num_networks=3).state_dict())
    assert fresh.table is None
    with pytest.raises(ValueError, match="num_networks=3"):
        DiversitySampler(num_networks=4).load_state_dict(sampler.state_dict())


def test_sampling_a_space_the_table_does_not_cover_raises() -> None:
    sampler = DiversitySampler()
    sampler.set_diversity(table_of(SPACE, random_matrix))
    spec = SPACE.to_dict()
    spec["stages"][1]["kernels"] = [3]
    with pytest.raises(ValueError, match="prepare"):
        sampler.sample(ctx(0, spaces.from_dict(spec)))
