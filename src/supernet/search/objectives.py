"""Search objectives in one place: analytic cost, measured latency, their bounds, and feasibility checks.

Cheap objectives (analytic MACs and parameters, ~50 us) are checked before measured latency, and both
before any accuracy is spent on an architecture; every value is cached per arch::

    objectives = Objectives(space, num_classes=10, constraints=[Constraint.parse("macs<=5M")])
    objectives.feasible(arch)            # analytic bounds first, latency last
    objectives.candidate(arch, 0.91)     # Candidate with macs, params, latency and val_top1
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from supernet.cost import Cost, cost
from supernet.search.pareto import METRICS, Candidate, Metric, check_metric
from supernet.space import Arch, SearchSpace

_EXAMPLES = "e.g. 'macs<=50M', 'params>=1e6', '30M<=macs<=50M' or 'latency<=20ms'"
_COUNT_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME_UNITS = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3}
_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_OPERATOR = re.compile(r"(<=|>=|=<|=>|==|<|>|=)")


class ConstraintError(ValueError):
    """A constraint is malformed or cannot be checked."""


@dataclass(frozen=True)
class Constraint:
    """Inclusive bounds on one cost metric: macs, params, or latency in milliseconds (None: unbounded)."""

    metric: Metric
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConstraintError(f"unknown constraint metric {self.metric!r}; use one of {list(METRICS)}")
        if self.low is None and self.high is None:
            raise ConstraintError(f"constraint on {self.metric} needs a lower or an upper bound")
        for bound in (self.low, self.high):
            if bound is not None and not math.isfinite(bound):
                raise ConstraintError(f"constraint on {self.metric} has a non-finite bound {bound}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConstraintError(
                f"constraint on {self.metric} admits nothing: lower bound {self.low:g} > "
                f"upper bound {self.high:g}"
            )

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """Parse 'macs<=50M', 'params>=1e6', '30M<=macs<=50M', 'latency<=20ms' (bounds are inclusive)."""
        parts = _OPERATOR.split(text.replace(" ", ""))
        ops = parts[1::2]
        if len(parts) not in (3, 5) or any(not p for p in parts[::2]):
            raise ConstraintError(f"cannot parse constraint {text!r}; expected {_EXAMPLES}")
        if any(op not in ("<=", ">=") for op in ops):
            bad = next(op for op in ops if op not in ("<=", ">="))
            raise ConstraintError(
                f"constraint {text!r} uses {bad!r}; bounds are inclusive, so write <= or >= ({_EXAMPLES})"
            )
        if len(parts) == 3:
            left, op, right = parts
            if left in METRICS:
                bound = _number(right, left, text)
                return cls(left, *((None, bound) if op == "<=" else (bound, None)))  # type: ignore[arg-type]
            if right in METRICS:
                bound = _number(left, right, text)
                return cls(right, *((bound, None) if op == "<=" else (None, bound)))  # type: ignore[arg-type]
            raise ConstraintError(
                f"constraint {text!r} names no metric; use one of {list(METRICS)} ({_EXAMPLES})"
            )
        first, op1, metric, op2, last = parts
        if metric not in METRICS:
            raise ConstraintError(
                f"constraint {text!r} needs a metric in the middle, one of {list(METRICS)} ({_EXAMPLES})"
            )
        if op1 != op2:
            raise ConstraintError(f"constraint {text!r} mixes <= and >=; write e.g. '30M<=macs<=50M'")
        a, b = _number(first, metric, text), _number(last, metric, text)
        return cls(metric, *((a, b) if op1 == "<=" else (b, a)))  # type: ignore[arg-type]

    def admits(self, value: float) -> bool:
        """Whether `value` lies within the bounds."""
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        fmt = _format_time if self.metric == "latency" else _format_count
        if self.low is None:
            return f"{self.metric}<={fmt(self.high)}"  # type: ignore[arg-type]
        if self.high is None:
            return f"{self.metric}>={fmt(self.low)}"
        return f"{fmt(self.low)}<={self.metric}<={fmt(self.high)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (inverse of `from_dict`)."""
        return {"metric": self.metric, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Constraint:
        """Build from `to_dict` output."""
        if not isinstance(d, dict) or not {"metric", "low", "high"} >= d.keys() or "metric" not in d:
            raise ConstraintError(f"a constraint dict has keys metric, low, high; got {d!r}")
        low, high = d.get("low"), d.get("high")
        return cls(d["metric"], None if low is None else float(low), None if high is None else float(high))


def _number(text: str, metric: str, whole: str) -> float:
    match = _NUMBER.match(text)
    units = _TIME_UNITS if metric == "latency" else _COUNT_UNITS
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in units:
        accepted = "ms, s, us" if metric == "latency" else "K, M, G"
        raise ConstraintError(
            f"cannot read bound {text!r} of constraint {whole!r}: use a number with an optional unit "
            f"({accepted}) for {metric}, {_EXAMPLES}"
        )
    return float(match.group(1)) * units[unit]


def _format_count(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        text = f"{value / scale:g}"
        if abs(value) >= scale and float(text) * scale == value:
            return text + unit
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


def _format_time(value: float) -> str:
    return (f"{value:g}" if float(f"{value:g}") == value else repr(value)) + "ms"


class Objectives:
    """Costs (analytic MACs/params, optional measured latency), their constraints and feasibility, cached."""

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        in_channels: int | None = None,
        constraints: Iterable[Constraint] = (),
        latency: Callable[[Arch], float] | None = None,
    ) -> None:
        self.space = space
        self.num_classes = num_classes
        self.in_channels = space.in_channels if in_channels is None else in_channels
        self.constraints = tuple(constraints)
        self.latency = latency
        needs_latency = [str(c) for c in self.constraints if c.metric == "latency"]
        if needs_latency and latency is None:
            raise ConstraintError(
                f"constraint {needs_latency[0]} needs measured latency, but no latency function was given "
                "(measure on the target device or pass a lookup table)"
            )
        self._costs: dict[Arch, Cost] = {}
        self._latencies: dict[Arch, float] = {}

    def with_constraints(self, extra: Iterable[Constraint]) -> Objectives:
        """The same objectives with `extra` constraints added, sharing this object's caches."""
        derived = Objectives(
            self.space, self.num_classes, self.in_channels, self.constraints + tuple(extra), self.latency
        )
        derived._costs, derived._latencies = self._costs, self._latencies
        return derived

    def analytic(self, arch: Arch) -> Cost:
        """MACs and parameters of `arch` (validated against the space; cached)."""
        found = self._costs.get(arch)
        if found is None:
            self.space.validate(arch)
            found = self._costs[arch] = cost(self.space, arch, self.num_classes, self.in_channels)
        return found

    def latency_ms(self, arch: Arch) -> float:
        """Measured latency of `arch` in milliseconds (cached; ConstraintError without a latency function)."""
        if self.latency is None:
            raise ConstraintError("no latency function was given, so latency cannot be measured")
        found = self._latencies.get(arch)
        if found is None:
            self.analytic(arch)  # validates the arch before anything is measured
            found = self._latencies[arch] = float(self.latency(arch))
        return found

    def value(self, arch: Arch, metric: str) -> float:
        """One cost metric of `arch`: macs, params or latency (ms)."""
        check_metric(metric)
        if metric == "latency":
            return self.latency_ms(arch)
        c = self.analytic(arch)
        return c.macs if metric == "macs" else c.params

    def cheap(self, arch: Arch) -> dict[str, float]:
        """macs, params and (with a latency function) latency of `arch`, cached."""
        c = self.analytic(arch)
        values: dict[str, float] = {"macs": c.macs, "params": c.params}
        if self.latency is not None:
            values["latency"] = self.latency_ms(arch)
        return values

    def feasible(self, arch: Arch) -> bool:
        """Whether `arch` meets every constraint; analytic bounds are checked before latency is measured."""
        ordered = sorted(self.constraints, key=lambda c: c.metric == "latency")
        return all(c.admits(self.value(arch, c.metric)) for c in ordered)

    def candidate(self, arch: Arch, val_top1: float | None) -> Candidate:
        """A Candidate carrying `arch`'s costs and its validation accuracy."""
        c = self.analytic(arch)
        latency = None if self.latency is None else self.latency_ms(arch)
        return Candidate(arch, c.macs, c.params, latency, None if val_top1 is None else float(val_top1))

    def space_range(self, metric: str = "macs") -> tuple[float, float]:
        """`metric` of the space's smallest and largest sub-networks."""
        return self.value(self.space.smallest(), metric), self.value(self.space.largest(), metric)

    def feasible_range(self, metric: str = "macs") -> tuple[float, float]:
        """The space's range of `metric` narrowed by the constraints on that metric."""
        low, high = self.space_range(metric)
        for c in self.constraints:
            if c.metric == metric:
                low = low if c.low is None else max(low, c.low)
                high = high if c.high is None else min(high, c.high)
        return low, high

    def to_dict(self) -> dict[str, Any]:
        """What decides feasibility, as JSON (a search state records it to refuse a mismatched resume)."""
        return {
            "space": self.space.to_dict(),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "constraints": [c.to_dict() for c in self.constraints],
            "latency": self.latency is not None,
        }
