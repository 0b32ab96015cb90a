"""Pareto metrics: candidates' JSON, the non-dominated front, DepS's bucket table, mean Pareto accuracy."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supernet import spaces
from supernet.search.pareto import (
    Bucket,
    Candidate,
    bucket_table,
    mean_pareto_accuracy,
    pareto_front,
    pareto_summary,
)
from supernet.space import ArchError

SPACE = spaces.get("fmnist")
ARCHS = [SPACE.sample(random.Random(i)) for i in range(64)]


def cand(macs: float, acc: float | None, i: int = 0, latency: float | None = None) -> Candidate:
    return Candidate(ARCHS[i % len(ARCHS)], int(macs), int(macs) // 10, latency, acc)


# cost drawn from a small range and accuracy from a coarse grid so that ties are common
candidate_sets = st.lists(
    st.tuples(st.integers(0, 20), st.integers(0, 10), st.integers(0, len(ARCHS) - 1)), max_size=40
).map(lambda rows: [cand(m, a / 10, i) for m, a, i in rows])


# -- Candidate ------------------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1), st.floats(0, 1), st.none() | st.floats(0, 100), st.none() | st.floats(0, 1))
def test_candidate_json_round_trip(seed: int, acc: float, latency: float | None, test: float | None) -> None:
    arch = SPACE.sample(random.Random(seed))
    c = Candidate(arch, 123, 45, latency, acc, test_top1=test, test_top5=None)
    assert Candidate.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.to_dict()["arch"] == arch.to_dict()


def test_candidate_from_dict_names_bad_keys() -> None:
    d = cand(10, 0.5).to_dict()
    with pytest.raises(ValueError, match=r"missing \['val_top1'\]"):
        Candidate.from_dict({k: v for k, v in d.items() if k != "val_top1"})
    with pytest.raises(ValueError, match=r"unknown \['flops'\]"):
        Candidate.from_dict({**d, "flops": 1})
    with pytest.raises(ArchError):
        Candidate.from_dict({**d, "arch": {"resolution": 28}})


def test_candidate_cost_and_accuracy_errors() -> None:
    c = cand(100, None, latency=None)
    assert (c.cost("macs"), c.cost("params")) == (100, 10)
    with pytest.raises(ValueError, match="latency function"):
        c.cost("latency")
    with pytest.raises(ValueError, match="unknown cost metric 'flops'"):
        c.cost("flops")
    with pytest.raises(ValueError, match="evaluate it"):
        pareto_front([c])


# -- pareto_front ---------------------------------------------------------------------------------


def dominates(a: Candidate, b: Candidate) -> bool:
    return a.macs <= b.macs and a.val_top1 >= b.val_top1 and (a.macs, a.val_top1) != (b.macs, b.val_top1)


@settings(max_examples=200)
@given(candidate_sets)
def test_front_is_the_non_dominated_set(cands: list[Candidate]) -> None:
    front = pareto_front(cands)
    for a in front:
        assert any(a is c for c in cands)
        assert not any(dominates(c, a) for c in cands)
    for c in cands:  # everything left out is dominated by, or equal in (cost, accuracy) to, a front member
        assert any(dominates(f, c) or (f.macs, f.val_top1) == (c.macs, c.val_top1) for f in front)
    points = [(c.macs, c.val_top1) for c in front]
    brute = {(c.macs, c.val_top1) for c in cands if not any(dominates(o, c) for o in cands)}
    assert sorted(points) == points and set(points) == brute and len(points) == len(brute)
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(points))


def test_front_ties_and_duplicates() -> None:
    a, b, c = cand(10, 0.5, 0), cand(10, 0.7, 1), cand(20, 0.7, 2)
    assert pareto_front([a, b, c]) == [b]  # equal cost keeps the most accurate; equal accuracy the cheapest
    d1, d2 = cand(30, 0.9, 3), cand(30, 0.9, 4)
    assert pareto_front([d1, d1, d2, a]) == [a, d1]  # equal (cost, accuracy) points appear once, the first
    assert pareto_front([]) == []


def test_front_on_other_cost_axes() -> None:
    fast, slow = cand(10, 0.6, 0, latency=5.0), cand(5, 0.8, 1, latency=9.0)
    assert pareto_front([fast, slow], cost="latency") == [fast, slow]
    assert pareto_front([fast, slow], cost="macs") == [slow]


# -- bucket_table ---------------------------------------------------------------------------------


def test_bucket_table_hand_made() -> None:
    cs = [
        cand(0, 0.30, 0),
        cand(5, 0.35, 1),
        cand(5, 0.20, 2),  # bucket 0 [0, 10): best 0.35
        cand(10, 0.40, 3),  # bucket 1 starts at 10 (half-open intervals)
        cand(59, 0.50, 4),
        cand(60, 0.55, 5),  # the last bucket is closed: 60 belongs to it
        cand(61, 0.99, 6),
        cand(-1, 0.99, 7),  # outside the range: ignored
    ]
    table = bucket_table(cs, 0, 60, n=6)
    assert [(b.low, b.high) for b in table] == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60)]
    assert [None if b.best is None else b.best.val_top1 for b in table] == [
        0.35,
        0.40,
        None,
        None,
        None,
        0.55,
    ]
    assert table[0].to_dict()["best"]["val_top1"] == 0.35 and table[2].to_dict()["best"] is None


def test_bucket_table_ties_go_to_the_cheaper() -> None:
    table = bucket_table([cand(8, 0.5, 0), cand(2, 0.5, 1), cand(4, 0.5, 2)], 0, 10, n=1)
    assert table == [Bucket(0, 10, cand(2, 0.5, 1))]


def test_bucket_table_spans_the_space() -> None:
    from supernet.cost import macs

    low, high = macs(SPACE, SPACE.smallest(), 10), macs(SPACE, SPACE.largest(), 10)
    table = bucket_table([], low, high)
    assert len(table) == 6 and table[0].low == low and table[-1].high == high
    assert all(b.high - b.low == pytest.approx((high - low) / 6) for b in table)


def test_bucket_table_errors() -> None:
    with pytest.raises(ValueError, match="at least 1 bucket"):
        bucket_table([], 0, 1, n=0)
    with pytest.raises(ValueError, match="low < high"):
        bucket_table([], 1, 1)


# -- mean_pareto_accuracy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(0, 0.5)], 0.5),  # one network at the smallest: its accuracy
        ([(50, 0.8)], 0.8),  # one network anywhere: its accuracy (mean over the covered range)
        ([(100, 0.9)], 0.9),  # only the largest
        ([(0, 0.6), (50, 0.8)], 0.7),  # half the range at 0.6, half at 0.8
        ([(25, 0.4), (50, 0.8)], (0.25 * 0.4 + 0.5 * 0.8) / 0.75),
        ([(0, 0.2), (25, 0.4), (75, 0.6), (100, 1.0)], 0.25 * 0.2 + 0.5 * 0.4 + 0.25 * 0.6),
        ([(0, 0.6), (20, 0.5), (50, 0.8), (120, 0.99)], 0.7),  # dominated and over-budget points ignored
        ([(-10, 0.6), (50, 0.8)], 0.7),  # below `low`: counted from 0
    ],
)
def test_mean_pareto_accuracy_closed_forms(points: list[tuple[int, float]], expected: float) -> None:
    cs = [cand(m, a, i) for i, (m, a) in enumerate(points)]
    assert mean_pareto_accuracy(cs, 0, 100) == pytest.approx(expected)


def test_mean_pareto_accuracy_normalises_macs() -> None:
    cs = [cand(1000, 0.6, 0), cand(1500, 0.8, 1)]
    assert mean_pareto_accuracy(cs, 1000, 2000) == pytest.approx(0.7)


def test_mean_pareto_accuracy_errors() -> None:
    with pytest.raises(ValueError, match="low < high"):
        mean_pareto_accuracy([cand(1, 0.5)], 5, 5)
    with pytest.raises(ValueError, match="macs <= 100"):
        mean_pareto_accuracy([cand(101, 0.5)], 0, 100)
    with pytest.raises(ValueError, match="macs <= 100"):
        mean_pareto_accuracy([], 0, 100)


@settings(max_examples=100)
@given(candidate_sets.filter(bool))
def test_mean_pareto_accuracy_matches_a_fine_riemann_sum(cands: list[Candidate]) -> None:
    value = mean_pareto_accuracy(cands, 0, 20)
    front = pareto_front(cands)
    x0 = front[0].macs / 20
    if x0 == 1:
        assert value == front[0].val_top1
        return
    xs = np.linspace(x0, 1, 200_001)
    best = np.full_like(xs, -np.inf)
    for c in front:  # the best accuracy reachable with at most x normalised MACs
        best = np.where(xs >= c.macs / 20 - 1e-12, np.maximum(best, c.val_top1), best)
    assert value == pytest.approx(float(best.mean()), abs=1e-4)
    assert front[0].val_top1 - 1e-12 <= value <= front[-1].val_top1 + 1e-12
    assert mean_pareto_accuracy(cands + [cand(20, 0.0, 9)], 0, 20) == pytest.approx(
        value
    )  # dominated: no change


def test_readings_closed_forms_and_test_split_of_the_val_front() -> None:
    from dataclasses import replace

    members = [replace(cand(0, 0.6, 0), test_top1=0.58), replace(cand(50, 0.8, 1), test_top1=0.77)]
    worse_on_val = replace(cand(80, 0.7, 2), test_top1=0.99)  # never on the val front: test must not pick it
    front = [*members, worse_on_val]
    assert mean_pareto_accuracy(front, 0, 100) == pytest.approx(0.7)
    assert mean_pareto_accuracy(front, 0, 100, reading="trapezoid") == pytest.approx(0.5 * 0.7 + 0.5 * 0.8)
    assert mean_pareto_accuracy(front, 0, 100, split="test") == pytest.approx(0.5 * 0.58 + 0.5 * 0.77)
    summary = pareto_summary(front, 0, 100)
    assert set(summary) == {"staircase", "trapezoid"} and set(summary["trapezoid"]) == {"val", "test"}
    assert set(pareto_summary([cand(0, 0.6)], 0, 100)["staircase"]) == {"val"}  # no test figures: val only
    with pytest.raises(ValueError, match="test accuracy of every front member"):
        mean_pareto_accuracy([cand(0, 0.6)], 0, 100, split="test")
    with pytest.raises(ValueError, match="unknown Pareto reading"):
        mean_pareto_accuracy(front, 0, 100, reading="spline")


def test_the_two_readings_differ_by_more_than_deps_reports() -> None:
    """A synthetic front of 6 members rising steeply, then flat: the readings part by about 0.9 points."""
    accs = [0.60, 0.66, 0.70, 0.72, 0.73, 0.735]
    front = [cand(20 * i, a, i) for i, a in enumerate(accs)]
    stair = mean_pareto_accuracy(front, 0, 100)
    trap = mean_pareto_accuracy(front, 0, 100, reading="trapezoid")
    assert trap - stair == pytest.approx(sum(b - a for a, b in itertools.pairwise(accs)) * 0.2 / 2)
    assert trap - stair > 0.009  # DepS's Table 2 separates methods by 0.04 to 3 points
