"""Accuracy-vs-cost metrics: candidates, the Pareto front, DepS's bucket table, mean Pareto accuracy.

Mean Pareto accuracy (DepS, section 5.1: "the area under the curve of accuracy and normalized FLOPs") is
defined here once, for every command and table:

- **Selection.** The front is chosen on the val split (`pareto_front`); its members are then read on the
  split asked for. On `test` (the headline figure, as DepS reports) the curve at a budget is the test
  accuracy of the member val would deploy there, so no test figure selects anything.
- **Normalisation.** x = (cost - low) / (high - low), where [low, high] is the space's cost range
  (smallest to largest sub-network), so fronts of one space share one axis.
- **Reading.** `staircase` (the default): A(x) is the accuracy of the costliest member with cost <= x
  (what a deployment under budget x gets). `trapezoid`: straight lines between consecutive members
  (the usual AUC of a plotted curve). Both hold the last member's accuracy from it up to x = 1.
- **Range ends.** The mean runs over [x0, 1], x0 being the cheapest member's x::

      mean_pareto_accuracy = 1 / (1 - x0) * integral_{x0}^{1} A(x) dx

  so a front of one network gives that network's accuracy, and members [(x=0, 0.6), (x=0.5, 0.8)]
  give 0.7 (staircase) or 0.75 (trapezoid). The region below the cheapest member is left out rather
  than counted as 0, so a front whose cheapest network sits above `low` is not punished for a part of
  the space no network reaches; to compare fronts, give each one the space's smallest network (x0 = 0).

The two readings of one front differ by more than the differences DepS reports between methods, so a
table never mixes them: every figure names its reading.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from supernet.space import Arch

Metric = Literal["macs", "params", "latency"]
METRICS: tuple[str, ...] = ("macs", "params", "latency")
_CANDIDATE_KEYS = {"arch", "macs", "params", "latency_ms", "val_top1", "test_top1", "test_top5", "block_loss"}


def check_metric(metric: str) -> str:
    """Return `metric` if it names a cost (macs, params, latency), else raise ValueError."""
    if metric not in METRICS:
        raise ValueError(f"unknown cost metric {metric!r}; use one of {list(METRICS)}")
    return metric


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Candidate:
    """One evaluated sub-network: arch, analytic cost, measured latency (ms), accuracies (fractions).

    A search ranked by DNA's block losses records `block_loss` (summed block losses on val, lower is better)
    and ranks by it; its candidates carry accuracies only where they were measured (the chosen ones).
    """

    arch: Arch
    macs: int
    params: int
    latency_ms: float | None
    val_top1: float | None
    test_top1: float | None = None
    test_top5: float | None = None
    block_loss: float | None = None

    def cost(self, metric: str = "macs") -> float:
        """The candidate's value of a cost metric (macs, params or latency in ms)."""
        check_metric(metric)
        if metric == "latency":
            if self.latency_ms is None:
                raise ValueError("candidate has no measured latency; give the search a latency function")
            return self.latency_ms
        return self.macs if metric == "macs" else self.params

    def accuracy(self) -> float:
        """Validation top-1, or ValueError when the candidate has not been evaluated."""
        if self.val_top1 is None:
            raise ValueError("candidate has no val_top1; evaluate it before ranking it")
        return self.val_top1

    def score(self) -> float:
        """What searches rank by, higher is better: minus the block loss where there is one, else val top-1."""
        return -self.block_loss if self.block_loss is not None else self.accuracy()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict with the arch as its dict (inverse of `from_dict`)."""
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
        if self.block_loss is None:
            del d["block_loss"]  # accuracy-ranked searches write the records they always wrote
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        """Build from `to_dict` output; raises ValueError naming missing or unknown keys."""
        if not isinstance(d, dict):
            raise TypeError(f"a candidate must be a JSON object, got {type(d).__name__}")
        required = {"arch", "macs", "params", "latency_ms", "val_top1"}
        missing, unknown = required - d.keys(), d.keys() - _CANDIDATE_KEYS
        if missing or unknown:
            raise ValueError(
                f"candidate keys: missing {sorted(missing)}, unknown {sorted(unknown)}; "
                f"expected {sorted(_CANDIDATE_KEYS)}"
            )
        return cls(
            arch=Arch.from_dict(d["arch"]),
            macs=int(d["macs"]),
            params=int(d["params"]),
            latency_ms=_optional_float(d["latency_ms"]),
            val_top1=_optional_float(d["val_top1"]),
            test_top1=_optional_float(d.get("test_top1")),
            test_top5=_optional_float(d.get("test_top5")),
            block_loss=_optional_float(d.get("block_loss")),
        )


def pareto_front(cands: Iterable[Candidate], cost: str = "macs") -> list[Candidate]:
    """Candidates no other beats on both lower cost and higher score (val_top1, or minus block loss), by cost.

    Cost and score both rise strictly along the result: of several candidates with equal cost only
    the best stays, and of equal (cost, score) points only the first given.
    """
    check_metric(cost)
    ranked = sorted(enumerate(cands), key=lambda ic: (ic[1].cost(cost), -ic[1].score(), ic[0]))
    front: list[Candidate] = []
    for _, cand in ranked:
        # the sort puts the best of equal costs first, so `>` also drops costlier ties
        if not front or cand.score() > front[-1].score():
            front.append(cand)
    return front


@dataclass(frozen=True)
class Bucket:
    """A cost interval [low, high) (the last one closed) and its most accurate candidate, if any."""

    low: float
    high: float
    best: Candidate | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "low": self.low,
            "high": self.high,
            "best": None if self.best is None else self.best.to_dict(),
        }


def bucket_index(value: float, low: float, high: float, n: int) -> int:
    """Which of `n` equal intervals of [low, high] holds `value` (values outside go to the end ones)."""
    if high <= low:
        return 0
    return min(n - 1, max(0, math.floor((value - low) / (high - low) * n)))


def bucket_table(
    cands: Iterable[Candidate], low: float, high: float, n: int = 6, cost: str = "macs"
) -> list[Bucket]:
    """The best-scored (most accurate) candidate in each of `n` equal cost intervals of [low, high] (DepS's table).

    Candidates outside [low, high] are ignored; ties on score go to the cheaper, then the first given.
    """
    check_metric(cost)
    if n < 1:
        raise ValueError(f"a bucket table needs at least 1 bucket, got {n}")
    if not high > low:
        raise ValueError(f"bucket range needs low < high, got [{low}, {high}]")
    best: list[Candidate | None] = [None] * n
    for cand in cands:
        value = cand.cost(cost)
        if not low <= value <= high:
            continue
        i = bucket_index(value, low, high, n)
        cur = best[i]
        if cur is None or (cand.score(), -value) > (cur.score(), -cur.cost(cost)):
            best[i] = cand
    width = (high - low) / n
    edges = [low + i * width for i in range(n)] + [high]
    return [Bucket(edges[i], edges[i + 1], best[i]) for i in range(n)]


READINGS = ("staircase", "trapezoid")
SPLITS = ("val", "test")


def curve_mean(points: Sequence[tuple[float, float]], reading: str = "staircase") -> float:
    """Mean of A(x) over [x0, 1] for (x, accuracy) points sorted by x in [0, 1] (module docstring)."""
    if reading not in READINGS:
        raise ValueError(f"unknown Pareto reading {reading!r}; use one of {list(READINGS)}")
    if not points:
        raise ValueError("a Pareto curve needs at least one point")
    x0, a0 = points[0]
    if x0 >= 1.0 or len(points) == 1:
        return a0
    area = 0.0
    for (x, acc), (x_next, acc_next) in itertools.pairwise(points):
        area += (x_next - x) * (acc if reading == "staircase" else (acc + acc_next) / 2)
    area += (1.0 - points[-1][0]) * points[-1][1]
    return area / (1.0 - x0)


def mean_pareto_accuracy(
    front: Sequence[Candidate],
    low: float,
    high: float,
    cost: str = "macs",
    *,
    split: str = "val",
    reading: str = "staircase",
) -> float:
    """Mean Pareto accuracy of the val-selected front of `front`, read on `split` (module docstring)."""
    if not high > low:
        raise ValueError(f"mean Pareto accuracy needs low < high, got [{low}, {high}]")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    members = [c for c in pareto_front(front, cost) if (c.cost(cost) - low) / (high - low) <= 1.0]
    if not members:
        raise ValueError(f"mean Pareto accuracy needs a front member with {cost} <= {high:g}, got none")
    if split == "test" and any(c.test_top1 is None for c in members):
        raise ValueError("mean Pareto accuracy on test needs the test accuracy of every front member")
    points = [
        (max(0.0, (c.cost(cost) - low) / (high - low)), c.accuracy() if split == "val" else float(c.test_top1))
        for c in members
    ]
    return curve_mean(points, reading)


def pareto_summary(front: Sequence[Candidate], low: float, high: float, cost: str = "macs") -> dict[str, dict[str, float]]:
    """Every reading of the mean Pareto accuracy on every split that all front members have: {reading: {split: value}}."""
    members = pareto_front(front, cost)
    splits = [s for s in SPLITS if s == "val" or all(c.test_top1 is not None for c in members)]
    return {
        reading: {split: mean_pareto_accuracy(front, low, high, cost, split=split, reading=reading) for split in splits}
        for reading in READINGS
    }
