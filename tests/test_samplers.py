"""Samplers: sandwich, uniform, compound (CompOFA) and attentive (AttentiveNAS) choices."""

from __future__ import annotations

import random

import pytest

from net_helpers import ratios_of
from supernet import spaces
from supernet.cost import macs
from supernet.training.samplers import (
    AttentiveSampler,
    CompoundSampler,
    SampleContext,
    SandwichSampler,
    UniformSampler,
    sample_compound,
)

SPACE = spaces.get("fmnist")


def ctx(seed: int = 0, score=None) -> SampleContext:
    return SampleContext(SPACE, random.Random(seed), 10, score)


def test_sandwich_is_largest_smallest_then_random() -> None:
    archs = SandwichSampler(num_random=2).sample(ctx())
    assert len(archs) == 4 and archs[0] == SPACE.largest() and archs[1] == SPACE.smallest()
    assert all(SPACE.contains(a) for a in archs)


def test_uniform_optionally_includes_largest() -> None:
    assert len(UniformSampler(3).sample(ctx())) == 3
    archs = UniformSampler(2, include_largest=True).sample(ctx())
    assert archs[0] == SPACE.largest() and len(archs) == 3


def test_compound_couples_depth_and_expand_ratio() -> None:
    rng = random.Random(0)
    for _ in range(200):
        arch = sample_compound(SPACE, rng)
        assert SPACE.contains(arch)
        for s, st in enumerate(SPACE.stages):
            ratios = set(ratios_of(arch)[s])
            assert len(ratios) == 1  # one ratio per stage
            levels = max(len(st.depths), len(st.expand_ratios))
            d_level = st.depths.index(arch.depths[s])
            e_level = st.expand_ratios.index(ratios.pop())
            # both indices come from the same level: deeper never pairs with a smaller ratio
            if levels > 1 and len(st.depths) == len(st.expand_ratios):
                assert d_level == e_level
    archs = CompoundSampler(num_random=2).sample(ctx())
    assert archs[:2] == [SPACE.largest(), SPACE.smallest()]


@pytest.mark.parametrize("mode", ["best", "worst"])
def test_attentive_picks_by_score_inside_a_macs_bucket(mode: str) -> None:
    scored = []

    def score(archs):  # a deterministic stand-in for the batch loss: larger networks score lower
        values = [-macs(SPACE, a, 10) for a in archs]
        scored.append((list(archs), values))
        return values

    sampler = AttentiveSampler(num_random=2, candidates=4, mode=mode, num_buckets=5)
    archs = sampler.sample(ctx(3, score))
    assert archs[:2] == [SPACE.largest(), SPACE.smallest()] and len(archs) == 4
    assert len(scored) == 2
    for pick, (pool, values) in zip(archs[2:], scored):
        want = min if mode == "best" else max
        assert pick == pool[values.index(want(values))]
        lo, hi = macs(SPACE, SPACE.smallest(), 10), macs(SPACE, SPACE.largest(), 10)
        spread = max(macs(SPACE, a, 10) for a in pool) - min(macs(SPACE, a, 10) for a in pool)
        assert spread <= (hi - lo) / 5 + 1  # all candidates from one bucket


def test_attentive_needs_a_scorer() -> None:
    with pytest.raises(ValueError, match="scorer"):
        AttentiveSampler().sample(ctx())


def test_attentive_targets_follow_the_spaces_macs_prior() -> None:
    """AttentiveNAS draws target MACs from the space's empirical prior: the picks' MACs follow it."""
    lo, hi = macs(SPACE, SPACE.smallest(), 10), macs(SPACE, SPACE.largest(), 10)
    draws = random.Random(99)
    uniform = sorted(macs(SPACE, SPACE.sample(draws), 10) for _ in range(3000))
    deciles = [uniform[len(uniform) * k // 10] for k in range(1, 10)]

    def decile_shares(sampler: AttentiveSampler) -> list[float]:
        rng = random.Random(5)
        context = SampleContext(SPACE, rng, 10, score=lambda archs: [0.0] * len(archs))
        picks = [macs(SPACE, a, 10) for _ in range(400) for a in sampler.sample(context)[2:]]
        counts = [0] * 10
        for m in picks:
            counts[sum(m >= d for d in deciles)] += 1
        return [c / len(picks) for c in counts]

    prior = decile_shares(AttentiveSampler(num_random=2, candidates=1, num_buckets=10))
    assert all(0.05 < share < 0.15 for share in prior), prior  # every decile of the prior is reached, ~10% each
    tv_prior = sum(abs(s - 0.1) for s in prior) / 2
    old = decile_shares(AttentiveSampler(num_random=2, candidates=1, num_buckets=10, target="uniform"))
    tv_uniform = sum(abs(s - 0.1) for s in old) / 2
    assert tv_prior < 0.08 and tv_uniform > 0.3, (tv_prior, tv_uniform)
    assert lo < deciles[0] and deciles[-1] < hi
