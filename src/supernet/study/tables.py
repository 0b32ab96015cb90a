"""A study's tables as data (caption, header, rows of text), rendered as Markdown here and as HTML by the page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Table:
    """One table: what it shows, its column names, its cells as text."""

    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Section:
    """The tables of one budget point, and its comparisons in words."""

    heading: str
    tables: tuple[Table, ...]
    words: tuple[str, ...]


def pct(stat: dict[str, Any]) -> str:
    """A mean ± std of fractions, in percent."""
    return "-" if stat["mean"] is None else _mean_std(stat, 100, 2)


def _mean_std(stat: dict[str, Any], scale: float, digits: int) -> str:
    """mean ± std, scaled; one seed's value says so instead of showing a spread of 0."""
    mean = f"{scale * stat['mean']:.{digits}f}"
    return f"{mean} (1 seed)" if stat.get("n") == 1 else f"{mean} ± {scale * stat['std']:.{digits}f}"


def _macs(macs: float) -> str:
    return f"{macs / 1e6:.3g} M"


def tmacs(macs: float) -> str:
    """Training MACs in TMACs: two decimals for a small run, whole numbers with thousands separators for a
    large one (ImageNet's are in the millions)."""
    return f"{macs / 1e12:,.2f}" if macs < 1e14 else f"{macs / 1e12:,.0f}"


def _summary(at: Sequence[dict[str, Any]]) -> Table:
    rows = []
    for r in at:
        macs, wall = r["train_macs"]["mean"], r["wall_time"]["mean"]
        rows.append((r["trial"], f"{r['epochs']:g}", str(len(r["seeds"])), pct(r["smallest_test"]),
                     pct(r["largest_test"]),
                     pct(r["mean_pareto_test"]), pct(r["mean_pareto_val"]),
                     "-" if macs is None else tmacs(macs), "-" if wall is None else f"{wall:.0f}"))
    return Table("Per trial, mean ± std over seeds (top-1 in %)",
                 ("trial", "epochs", "seeds", "smallest (test)", "largest (test)", "mean Pareto (test)",
                  "mean Pareto (val)", "training TMACs", "wall time (s)"), tuple(rows))


def _buckets(at: Sequence[dict[str, Any]]) -> Table:
    edges = at[0]["buckets"]
    return Table("Best sub-network per MACs bucket (test top-1, mean ± std over seeds)",
                 ("trial", *(f"{_macs(b['low'])}-{_macs(b['high'])}" for b in edges)),
                 tuple((r["trial"], *(pct(b["test_top1"]) for b in r["buckets"])) for r in at))


def _targets(rows: Sequence[dict[str, Any]]) -> Table:
    return Table(("Accuracy at model sizes (AlphaNet's A0-A6 style): test top-1 of the best front member on val "
                  "under each MACs target, mean ± std over seeds"),
                 ("trial", *(f"<= {_macs(c['target'])}" for c in rows[0]["cells"])),
                 tuple((r["trial"], *(pct(c["test_top1"]) for c in r["cells"])) for r in rows))


def _diagnostics(at: Sequence[dict[str, Any]]) -> Table | None:
    shown = [r for r in at if r["logit_distance"]["mean"] is not None]
    if not shown:
        return None
    rows = tuple((r["trial"], pct(r["teacher_top1"]), pct(r["student_top1"]), pct(r["teacher_gap"]),
                  _mean_std(r["logit_distance"], 1, 3)) for r in shown)
    return Table(("Diagnostics at the last epoch (EnNAS section 4.2-4.3): val top-1 of the groups the recipe "
                  "draws, the teacher being the ensemble or the largest sub-network, and the students' diversity"),
                 ("trial", "teacher top-1", "mean student top-1", "teacher - student", "mean pairwise logit distance"),
                 rows)


def comparison_words(c: dict[str, Any]) -> str:
    """One pair's comparison on mean Pareto test accuracy, in words."""
    verdict = "larger than the seed spread" if c["clear"] else "within the seed spread"
    return (f"{c['higher']} above {c['lower']} by {100 * c['difference']:.2f} points, {verdict} "
            f"({100 * c['spread']:.2f}, {c['seeds']} seeds)")


def budget_sections(rows: Sequence[dict[str, Any]], comparisons: Sequence[dict[str, Any]],
                    target_rows: Sequence[dict[str, Any]]) -> list[Section]:
    """Per budget point: the summary, the bucket table, accuracy at the targets, diagnostics, comparisons."""
    sections = []
    for budget in sorted({r["budget"] for r in rows}):
        at = [r for r in rows if r["budget"] == budget]
        tables = [_summary(at)]
        if at[0]["buckets"]:
            tables.append(_buckets(at))
        targeted = [r for r in target_rows if r["budget"] == budget]
        if targeted and targeted[0]["cells"]:
            tables.append(_targets(targeted))
        diagnostics = _diagnostics(at)
        if diagnostics is not None:
            tables.append(diagnostics)
        words = tuple(comparison_words(c) for c in comparisons if c["budget"] == budget)
        sections.append(Section(f"Budget {budget}", tuple(tables), words))
    return sections


def equal_front_table(equal: dict[str, Any]) -> Table | None:
    """DepS style: each trial's training cost to one mean Pareto test accuracy, relative to the cheapest."""
    if not equal["trials"]:
        return None
    rows = []
    for t in equal["trials"]:
        if t["train_macs"] is None:
            rows.append((t["trial"], "not reached", "-", "-"))
            continue
        bound = "≤ " if t["upper_bound"] else ""
        wall = "-" if t["wall_time"] is None else f"{bound}{t['wall_time']:.0f}"
        rows.append((t["trial"], f"{bound}{tmacs(t['train_macs'])}", f"{bound}{t['ratio']:.2f}x", wall))
    return Table((f"Training cost to reach a mean Pareto test accuracy of {100 * equal['level']:.2f}%, read off each "
                  "trial's budget curve (linear between budget points; ≤: reached at its cheapest point already, "
                  "so at most that), relative to the cheapest trial"),
                 ("trial", "training TMACs", "ratio", "wall time (s)"), tuple(rows))


def _table_md(table: Table) -> list[str]:
    return [f"{table.caption}:", "", "| " + " | ".join(table.header) + " |",
            "|---|" + "---:|" * (len(table.header) - 1), *("| " + " | ".join(row) + " |" for row in table.rows), ""]


def prepared_note(prepared: dict[str, Any]) -> str:
    """One sentence on a prepared run's training cost, which its trials' training cost leaves out."""
    users = ", ".join(prepared["used_by"]) or "no trial"
    macs = "unknown" if prepared["train_macs"] is None else tmacs(prepared["train_macs"])
    wall = "" if prepared["wall_time"] is None else f", {prepared['wall_time']:.0f} s"
    return (f"Prepared run {prepared['name']} ({prepared['recipe']}, used by {users}) trained once for the whole "
            f"study: {macs} TMACs{wall}. It is not in the training cost of the trials that use it; add it to "
            "compare their total cost.")


def markdown(sections: Sequence[Section], equal: Table | None) -> str:
    """The study's tables and comparisons as Markdown."""
    lines: list[str] = []
    for section in sections:
        lines += [f"### {section.heading}", ""]
        for table in section.tables:
            lines += _table_md(table)
        if section.words:
            lines += [("Mean Pareto test accuracy, pair by pair (spread: the sum of the two standard deviations "
                       "over seeds):"), "", *(f"- {w}" for w in section.words), ""]
    if equal is not None:
        lines += ["## Cost to an equal front", "", *_table_md(equal)]
    return "\n".join(lines)
