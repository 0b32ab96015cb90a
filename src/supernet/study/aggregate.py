"""Aggregate a study's unit results: per trial and budget point, mean and spread over seeds, and which
differences are larger than the seed spread."""

from __future__ import annotations

import math
from collections.abc import Sequence
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
}


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (n - 1; 0 for one value) and count of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(xs)}


def summarise(results: Sequence[dict[str, Any]], trial_order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (budget point, trial), in budget then `trial_order` order."""
    rows = []
    for budget in sorted({r["budget"] for r in results}):
        for trial in trial_order:
            group = [r for r in results if r["budget"] == budget and r["trial"] == trial]
            if not group:
                continue
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


def _pct(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown(rows: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]]) -> str:
    """The study's tables and its comparisons in words."""
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        at = [r for r in rows if r["budget"] == budget]
        lines += [f"### Budget {budget}", "",
                  ("| trial | epochs | seeds | smallest (test) | largest (test) | mean Pareto (test) | "
                  "mean Pareto (val) | training TMACs | wall time (s) |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in at:
            tmacs = r["train_macs"]["mean"]
            wall = r["wall_time"]["mean"]
            lines.append(f"| {r['trial']} | {r['epochs']} | {len(r['seeds'])} | {_pct(r['smallest_test'])} | "
                         f"{_pct(r['largest_test'])} | {_pct(r['mean_pareto_test'])} | {_pct(r['mean_pareto_val'])} | "
                         f"{'-' if tmacs is None else f'{tmacs / 1e12:.3g}'} | "
                         f"{'-' if wall is None else f'{wall:.0f}'} |")
        buckets = at[0]["buckets"]
        if buckets:
            lines += ["", "Best sub-network per MACs bucket (test top-1, mean ± std over seeds):", "",
                      "| trial | " + " | ".join(f"{b['low'] / 1e6:.3g}-{b['high'] / 1e6:.3g} M" for b in buckets) + " |",
                      "|---|" + "---:|" * len(buckets)]
            for r in at:
                lines.append(f"| {r['trial']} | " + " | ".join(_pct(b["test_top1"]) for b in r["buckets"]) + " |")
        words = [c for c in comparisons if c["budget"] == budget]
        if words:
            lines += ["", ("Mean Pareto test accuracy, pair by pair (spread: the sum of the two standard "
                      "deviations over seeds):"), ""]
            for c in words:
                verdict = "larger than the seed spread" if c["clear"] else "within the seed spread"
                lines.append(f"- {c['higher']} above {c['lower']} by {100 * c['difference']:.2f} points, "
                             f"{verdict} ({100 * c['spread']:.2f}, {c['seeds']} seeds)")
        lines.append("")
    return "\n".join(lines)
