"""A study's HTML report: its tables, and PNG plots of the fronts (seed spread shaded), the budget curves
(mean Pareto test accuracy against training cost) and the per-epoch diagnostics, one colour per trial."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from supernet.fileio import atomic_write_text
from supernet.report import PAGE_CSS, html_table, new_figure, save_png
from supernet.study.aggregate import accuracy_under, mean_std
from supernet.study.tables import Section, Table

FRONTS_PLOT = "study_fronts.png"
BUDGET_PLOT = "study_budget.png"
DIAGNOSTICS_PLOT = "study_diagnostics.png"

_CAPTIONS = {
    FRONTS_PLOT: ("Pareto fronts per budget point: for each MACs value, the test top-1 of the best front member "
                  "on val that fits (what a user would deploy), mean over seeds as a step line, mean ± std "
                  "shaded, over the MACs range every seed's front covers."),
    BUDGET_PLOT: ("Budget curves: mean Pareto test accuracy against counted training MACs (left) and wall time "
                  "(right), one point per budget point, mean over seeds with ± std bars in both directions."),
    DIAGNOSTICS_PLOT: ("Per-epoch diagnostics at the largest budget point (EnNAS Figures 1-2): val top-1 of "
                       "the teacher (solid) and mean student (dashed) of the groups the recipe draws, and the "
                       "students' mean pairwise logit distance; mean over seeds, ± std shaded."),
}


def trial_colours(trials: Sequence[str]) -> dict[str, str]:
    """One colour per trial, in study order."""
    palette = colormaps["tab10"]
    return {t: to_hex(palette(i % 10)) for i, t in enumerate(trials)}


def mean_front(fronts: Sequence[Sequence[dict[str, Any]]]) -> tuple[list[float], list[float], list[float]]:
    """Seeds' fronts on one MACs grid: (MACs, mean test top-1, std) of the deployed member under each MACs
    value, over the range where every seed has a member."""
    usable = [f for f in fronts if f]
    if not usable:
        return [], [], []
    low = max(min(c["macs"] for c in f) for f in usable)
    grid = sorted({c["macs"] for f in usable for c in f if c["macs"] >= low})
    xs, means, stds = [], [], []
    for macs in grid:
        picks = [accuracy_under(f, macs) for f in usable]
        stat = mean_std([p["test_top1"] if p else None for p in picks])
        if stat["n"] == len(usable):
            xs.append(macs)
            means.append(stat["mean"])
            stds.append(stat["std"])
    return xs, means, stds


def fronts_figure(results: Sequence[dict[str, Any]], trials: Sequence[str], colours: dict[str, str]) -> Figure | None:
    """One panel per budget point, the trials' mean fronts with their seed spread."""
    budgets = sorted({r["budget"] for r in results})
    if not budgets:
        return None
    fig = new_figure(max(6.0, 4.6 * len(budgets)), 4.4)
    axes = fig.subplots(1, len(budgets), squeeze=False)[0]
    for ax, budget in zip(axes, budgets, strict=True):
        for trial in trials:
            group = [r for r in results if r["budget"] == budget and r["trial"] == trial]
            xs, means, stds = mean_front([r["front"] for r in group])
            if not xs:
                continue
            mx = [x / 1e6 for x in xs]
            ax.step(mx, [100 * m for m in means], where="post", color=colours[trial], label=f"{trial} ({len(group)})")
            ax.fill_between(mx, [100 * (m - s) for m, s in zip(means, stds, strict=True)],
                            [100 * (m + s) for m, s in zip(means, stds, strict=True)], step="post",
                            color=colours[trial], alpha=0.18, linewidth=0)
        ax.set_title(f"budget {budget}")
        ax.set_xlabel("MMACs")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", title="trial (seeds)", title_fontsize=8)
    return fig


def budget_figure(rows: Sequence[dict[str, Any]], trials: Sequence[str], colours: dict[str, str]) -> Figure | None:
    """Mean Pareto test accuracy against training MACs and against wall time, per trial over budget points."""
    if not any(r["mean_pareto_test"]["mean"] is not None for r in rows):
        return None
    fig = new_figure(11, 4.4)
    axes = fig.subplots(1, 2)
    for ax, key, scale, label in ((axes[0], "train_macs", 1e12, "training TMACs (every pass counted)"),
                                  (axes[1], "wall_time", 3600.0, "training wall time (h)")):
        for trial in trials:
            at = sorted((r for r in rows if r["trial"] == trial and r[key]["mean"] is not None
                         and r["mean_pareto_test"]["mean"] is not None), key=lambda r: r[key]["mean"])
            if not at:
                continue
            ax.errorbar([r[key]["mean"] / scale for r in at], [100 * r["mean_pareto_test"]["mean"] for r in at],
                        xerr=[r[key]["std"] / scale for r in at], yerr=[100 * r["mean_pareto_test"]["std"] for r in at],
                        color=colours[trial], marker="o", markersize=4, capsize=3, label=trial)
        ax.set_xlabel(label)
        ax.set_ylabel("mean Pareto test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    return fig


def _epoch_series(group: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float], list[float]]:
    epochs = sorted({d["epoch"] for r in group for d in r.get("diagnostics") or [] if d.get(key) is not None})
    xs, means, stds = [], [], []
    for epoch in epochs:
        stat = mean_std([d.get(key) for r in group for d in r.get("diagnostics") or [] if d["epoch"] == epoch])
        xs.append(epoch)
        means.append(stat["mean"])
        stds.append(stat["std"])
    return xs, means, stds


def diagnostics_figure(results: Sequence[dict[str, Any]], trials: Sequence[str],
                       colours: dict[str, str]) -> Figure | None:
    """Teacher and student val top-1 and the students' logit distance per epoch, at the largest budget point."""
    with_diagnostics = [r for r in results if r.get("diagnostics")]
    if not with_diagnostics:
        return None
    budget = max(r["budget"] for r in with_diagnostics)
    fig = new_figure(11, 4.2)
    accuracy, diversity = fig.subplots(1, 2)
    for trial in trials:
        group = [r for r in with_diagnostics if r["budget"] == budget and r["trial"] == trial]
        labelled: set[int] = set()  # one legend entry per trial and panel
        for ax, key, style, factor in ((accuracy, "teacher_top1", "-", 100), (accuracy, "student_top1", "--", 100),
                                       (diversity, "logit_distance", "-", 1)):
            xs, means, stds = _epoch_series(group, key)
            if not xs:
                continue
            label = None if id(ax) in labelled else trial
            labelled.add(id(ax))
            ax.plot(xs, [factor * m for m in means], linestyle=style, marker="o", markersize=3,
                    color=colours[trial], label=label)
            ax.fill_between(xs, [factor * (m - s) for m, s in zip(means, stds, strict=True)],
                            [factor * (m + s) for m, s in zip(means, stds, strict=True)], color=colours[trial],
                            alpha=0.15, linewidth=0)
    accuracy.set_ylabel("val top-1 (%): teacher solid, mean student dashed")
    diversity.set_ylabel("mean pairwise logit distance")
    for ax in (accuracy, diversity):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"budget {budget}", fontsize=10)
    return fig


def _table_html(table: Table) -> str:
    return (f"<p>{html.escape(table.caption)}:</p>"
            + html_table([html.escape(h) for h in table.header],
                         [[html.escape(c) for c in row] for row in table.rows]))


def write_page(out: Path, title: str, intro: Sequence[str], sections: Sequence[Section], equal: Table | None,
               results: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], trials: Sequence[str]) -> Path:
    """Write out/study.html and its plots; the page's path. Self-contained: no scripts or external resources."""
    colours = trial_colours(trials)
    figures = {FRONTS_PLOT: fronts_figure(results, trials, colours), BUDGET_PLOT: budget_figure(rows, trials, colours),
               DIAGNOSTICS_PLOT: diagnostics_figure(results, trials, colours)}
    plots = []
    for name, fig in figures.items():
        if fig is not None:
            save_png(fig, out / name)
            plots.append(name)
        else:
            (out / name).unlink(missing_ok=True)  # an earlier aggregate's plot no longer applies
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
             f"<style>{PAGE_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             *(f"<p>{html.escape(p)}</p>" for p in intro if p)]
    if not results:
        parts.append('<p class="note">No unit has finished yet.</p>')
    for name in plots:
        parts.append(f'<figure><img src="{name}" alt="{name}"><figcaption>{html.escape(_CAPTIONS[name])}'
                     "</figcaption></figure>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        parts += [_table_html(t) for t in section.tables]
        if section.words:
            parts.append("<p>Mean Pareto test accuracy, pair by pair (spread: the sum of the two standard deviations "
                         "over seeds):</p><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in section.words)
                         + "</ul>")
    if equal is not None:
        parts += ["<h2>Cost to an equal front</h2>", _table_html(equal)]
    parts.append("</body></html>")
    path = out / "study.html"
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
