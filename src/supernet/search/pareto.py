"""Accuracy-vs-cost metrics: candidates, the Pareto front, DepS's bucket table, mean Pareto accuracy.

Mean Pareto accuracy (DepS) is the area under the front's staircase on normalised MACs, averaged over the
range the front covers. With x = (macs - low) / (high - low) and A(x) = the best validation accuracy
reachable with at most x, it is::

    mean_pareto_accuracy = 1 / (1 - x0) * integral_{x0}^{1} A(x) dx      (x0: the cheapest member's x)

so a front holding one network gives that network's accuracy, and [(x=0, 0.6), (x=0.5, 0.8)] gives 0.7.
The region below the cheapest member is left out rather than counted as 0, so a front whose cheapest
network sits above `low` is not punished for a part of the space no network reaches. The price: adding a
cheaper, less accurate network widens the range and can lower the value. To compare fronts, give each one
the space's smallest network (x0 = 0); the value is then the normalised hypervolume with reference point
(high, accuracy 0), which never decreases when a front improves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from supernet.space import Arch

Metric = Literal["macs", "params", "latency"]
METRICS: tuple[str, ...] = ("macs", "params", "latency")
_CANDIDATE_KEYS = {"arch", "macs", "params", "latency_ms", "val_top1", "test_top1", "test_top5"}


def check_metric(metric: str) -> str:
    """Return `metric` if it names a cost (macs, params, latency), else raise ValueError."""
    if metric not in METRICS:
        raise ValueError(f"unknown cost metric {metric!r}; use one of {list(METRICS)}")
    return metric


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Candidate:
    """One evaluated sub-network: arch, analytic cost, measured latency (ms), accuracies (fractions)."""

    arch: Arch
    macs: int
    params: int
    latency_ms: float | None
    val_top1: float | None
    test_top1: float | None = None
    test_top5: float | None = None

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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict with the arch as its dict (inverse of `from_dict`)."""
        d = asdict(self)
        d["arch"] = self.arch.to_dict()
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
        )


def pareto_front(cands: Iterable[Candidate], cost: str = "macs") -> list[Candidate]:
    """Candidates no other beats on both lower cost and higher val_top1, by increasing cost.

    Cost and accuracy both rise strictly along the result: of several candidates with equal cost only
    the most accurate stays, and of equal (cost, accuracy) points only the first given.
    """
    check_metric(cost)
    ranked = sorted(enumerate(cands), key=lambda ic: (ic[1].cost(cost), -ic[1].accuracy(), ic[0]))
    front: list[Candidate] = []
    for _, cand in ranked:
        # the sort puts the most accurate of equal costs first, so `>` also drops costlier ties
        if not front or cand.accuracy() > front[-1].accuracy():
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
    """The most accurate candidate in each of `n` equal cost intervals spanning [low, high] (DepS's table).

    Candidates outside [low, high] are ignored; ties on accuracy go to the cheaper, then the first given.
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
        if cur is None or (cand.accuracy(), -value) > (cur.accuracy(), -cur.cost(cost)):
            best[i] = cand
    width = (high - low) / n
    edges = [low + i * width for i in range(n)] + [high]
    return [Bucket(edges[i], edges[i + 1], best[i]) for i in range(n)]


def mean_pareto_accuracy(front: Sequence[Candidate], low: float, high: float, cost: str = "macs") -> float:
    """Mean of the best reachable val_top1 over normalised cost from the cheapest member to 1 (module doc)."""
    if not high > low:
        raise ValueError(f"mean Pareto accuracy needs low < high, got [{low}, {high}]")
    points = [
        (max(0.0, (c.cost(cost) - low) / (high - low)), c.accuracy()) for c in pareto_front(front, cost)
    ]
    points = [(x, a) for x, a in points if x <= 1.0]
    if not points:
        raise ValueError(f"mean Pareto accuracy needs a front member with {cost} <= {high:g}, got none")
    x0, a0 = points[0]
    if x0 >= 1.0 or len(points) == 1:
        return a0
    area = 0.0
    for (x, acc), (x_next, _) in zip(points, points[1:] + [(1.0, 0.0)]):
        area += (x_next - x) * acc
    return area / (1.0 - x0)
