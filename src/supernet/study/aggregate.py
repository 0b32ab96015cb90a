"""Aggregate a study's unit results: per trial and budget point, mean and spread over seeds, and which
differences are larger than the seed spread."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

# figures of a unit result summarised per trial: name -> how to read it (fractions stay fractions)
_FIGURES = {
    "smallest_test": lambda r: (r["smallest"] or {}).get("test_top1"),
    "largest_test": lambda r: (r["largest"] or {}).get("test_top1"),
    "mean_pareto_test": lambda r: r.get("mean_pareto_test"),
    "mean_pareto_val": lambda r: r.get("mean_pareto_val"),
    "train_macs": lambda r: r.get("train_macs"),
    "wall_time": lambda r: r.get("wall_time"),
    "gpu_hours": lambda r: r.get("gpu_hours"),
    # EnNAS's diagnostics at the last per-epoch evaluation (section 4.2-4.3): teacher and mean student val
    # top-1 of the groups the recipe's sampler draws, and the mean pairwise logit distance of the students
    "teacher_top1": lambda r: _last_diagnostic(r, "teacher_top1"),
    "student_top1": lambda r: _last_diagnostic(r, "student_top1"),
    "teacher_gap": lambda r: _last_diagnostic(r, "teacher_gap"),
    "logit_distance": lambda r: _last_diagnostic(r, "logit_distance"),
}


def _last_diagnostic(result: dict[str, Any], key: str) -> float | None:
    epochs = result.get("diagnostics") or []
    return epochs[-1].get(key) if epochs else None


def accuracy_under(front: Sequence[dict[str, Any]], macs: float) -> dict[str, Any] | None:
    """The front member a user would deploy under `macs`: the best on val among those that fit (test accuracy
    is reported, never used to choose); None when none fits."""
    fits = [c for c in front if c["macs"] <= macs and c.get("val_top1") is not None]
    return max(fits, key=lambda c: (c["val_top1"], -c["macs"])) if fits else None


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (n - 1; 0 for one value) and count of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(xs)}


def groups(results: Sequence[dict[str, Any]],
           trial_order: Sequence[str]) -> Iterator[tuple[int, str, list[dict[str, Any]]]]:
    """(budget point, trial, its results over seeds) in budget then `trial_order` order, empty groups left out."""
    for budget in sorted({r["budget"] for r in results}):
        for trial in trial_order:
            group = [r for r in results if r["budget"] == budget and r["trial"] == trial]
            if group:
                yield budget, trial, group


def summarise(results: Sequence[dict[str, Any]], trial_order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (budget point, trial), in budget then `trial_order` order."""
    rows = []
    for budget, trial, group in groups(results, trial_order):
        row: dict[str, Any] = {"budget": budget, "trial": trial, "epochs": group[0]["epochs"],
                               "seeds": sorted(r["seed"] for r in group)}
        for name, read in _FIGURES.items():
            row[name] = mean_std([read(r) for r in group])
        n_buckets = max(len(r["buckets"]) for r in group)
        row["buckets"] = []
        for i in range(n_buckets):
            cells = [r["buckets"][i] for r in group if i < len(r["buckets"])]
            row["buckets"].append({"low": cells[0]["low"], "high": cells[0]["high"],
                                   "test_top1": mean_std([(c["best"] or {}).get("test_top1") for c in cells])})
        rows.append(row)
    return rows


def default_targets(results: Sequence[dict[str, Any]]) -> list[float]:
    """MACs targets when the study names none: the upper edges of the 6-bucket table of the first result."""
    return [b["high"] for b in results[0]["buckets"]] if results else []


def at_targets(results: Sequence[dict[str, Any]], trial_order: Sequence[str],
               targets: Sequence[float]) -> list[dict[str, Any]]:
    """AlphaNet's A0-A6 style: per (budget point, trial), the test top-1 of the best front member (on val)
    under each MACs target, and its MACs, mean and spread over seeds."""
    rows = []
    for budget, trial, group in groups(results, trial_order):
        cells = []
        for target in targets:
            picks = [accuracy_under(r["front"], target) for r in group]
            cells.append({"target": target,
                          "test_top1": mean_std([p["test_top1"] if p else None for p in picks]),
                          "macs": mean_std([p["macs"] if p else None for p in picks])})
        rows.append({"budget": budget, "trial": trial, "cells": cells})
    return rows


def _interpolated_cost(points: Sequence[tuple[float, float]], level: float) -> tuple[float, bool] | None:
    """The cost at which a budget curve [(cost, accuracy)] first reaches `level`, linear between points;
    (cost, whether it is only an upper bound: reached at the cheapest point already); None if never."""
    previous = None
    for cost, acc in sorted(points):
        if acc >= level:
            if previous is None:
                return cost, True
            (c0, a0) = previous
            return c0 + (cost - c0) * (level - a0) / (acc - a0), False
        previous = (cost, acc)
    return None


def cost_to_equal_front(rows: Sequence[dict[str, Any]], trial_order: Sequence[str],
                        level: float | None = None) -> dict[str, Any]:
    """DepS style: each trial's training cost (counted MACs, and wall time) to reach one mean Pareto test accuracy,
    relative to the cheapest trial that reaches it. The level defaults to the highest every trial reaches (the
    lowest of the trials' best means), read off each trial's budget curve of mean figures over seeds."""
    curves = {}
    for trial in trial_order:
        at = [r for r in rows if r["trial"] == trial and r["mean_pareto_test"]["mean"] is not None
              and r["train_macs"]["mean"] is not None]
        if at:
            curves[trial] = at
    if not curves:
        return {"level": level, "trials": []}
    if level is None:
        level = min(max(r["mean_pareto_test"]["mean"] for r in at) for at in curves.values())
    out = []
    for trial, at in curves.items():
        macs = _interpolated_cost([(r["train_macs"]["mean"], r["mean_pareto_test"]["mean"]) for r in at], level)
        wall = _interpolated_cost([(r["wall_time"]["mean"], r["mean_pareto_test"]["mean"]) for r in at
                                   if r["wall_time"]["mean"] is not None], level)
        out.append({"trial": trial, "train_macs": None if macs is None else macs[0],
                    "upper_bound": None if macs is None else macs[1], "wall_time": None if wall is None else wall[0]})
    reached = [t["train_macs"] for t in out if t["train_macs"] is not None]
    cheapest = min(reached) if reached else None
    for t in out:
        t["ratio"] = None if t["train_macs"] is None or not cheapest else t["train_macs"] / cheapest
    return {"level": level, "trials": out}


def compare(rows: Sequence[dict[str, Any]], figure: str = "mean_pareto_test") -> list[dict[str, Any]]:
    """Every pair of trials at each budget point on `figure`: the difference of the means against the seed
    spread (the sum of the two standard deviations); `clear` when the difference is larger."""
    out = []
    for budget in sorted({r["budget"] for r in rows}):
        at = [r for r in rows if r["budget"] == budget and r[figure]["mean"] is not None]
        at.sort(key=lambda r: -r[figure]["mean"])
        for i, a in enumerate(at):
            for b in at[i + 1:]:
                diff = a[figure]["mean"] - b[figure]["mean"]
                spread = a[figure]["std"] + b[figure]["std"]
                out.append({"budget": budget, "figure": figure, "higher": a["trial"], "lower": b["trial"],
                            "difference": diff, "spread": spread, "clear": diff > spread,
                            "seeds": min(a[figure]["n"], b[figure]["n"])})
    return out
