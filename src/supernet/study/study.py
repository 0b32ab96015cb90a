"""`supernet study`: run every unit of a study (resumably), then aggregate it into study.json and study.md."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supernet.fileio import atomic_write_text
from supernet.study.aggregate import at_targets, compare, cost_to_equal_front, default_targets, summarise
from supernet.study.page import write_page
from supernet.study.plan import plan_units
from supernet.study.ray_runner import RayResources, run_units_ray
from supernet.study.reuse import adopt_units
from supernet.study.runner import (
    RESULT_FILE,
    calibrate,
    finished_results,
    prepare_runs,
    prepared_costs,
    read_results,
    run_units,
    saved_costs,
)
from supernet.study.spec import StudyError, StudySpec, load_study
from supernet.study.tables import budget_sections, equal_front_table, markdown, prepared_note


@dataclass(frozen=True)
class StudyOutcome:
    """What a study run produced: per-unit results, the aggregated rows, the comparisons, failures."""

    out: Path
    results: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    failures: list[str]
    units: int


def aggregate_study(spec: StudySpec, out: Path, results: Sequence[dict[str, Any]],
                    costs: dict[str, float] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write out/study.json, study.md and study.html (with its plots) from the unit results; (rows, comparisons)."""
    trials = [t.name for t in spec.trials]
    rows = summarise(results, trials)
    comparisons = compare(rows)
    targets = spec.tables.macs_targets or default_targets(results)
    target_rows = at_targets(results, trials, targets)
    equal = cost_to_equal_front(rows, trials, spec.tables.equal_front_level)
    prepared = prepared_costs(spec, out)
    doc = {"name": spec.name, "description": spec.description, "spec": spec.model_dump(mode="json"),
           "calibration": costs, "prepared": prepared, "rows": rows, "comparisons": comparisons,
           "at_targets": target_rows, "equal_front": equal, "units": list(results)}
    atomic_write_text(out / "study.json", json.dumps(doc, indent=2) + "\n")
    rule = {"epochs": "equal epochs", "recipe": "the epochs their recipes give",
            "cost": f"equal counted training MACs to {spec.budget.reference} at the listed epochs"}[spec.budget.rule]
    protocol = (f"Trials trained for {rule}; seeds {spec.seeds}; every trial searched with the same protocol "
                f"(population {spec.search.population}, {spec.search.iterations} generations); accuracies are test "
                "top-1 of sub-networks selected on val (mean ± std over seeds).")
    sections = budget_sections(rows, comparisons, target_rows)
    equal_table = equal_front_table(equal) if len(trials) > 1 else None
    intro = [spec.description, protocol, *(prepared_note(p) for p in prepared)]
    head = [f"# Study {spec.name}", "", *(line for text in intro for line in (text, "")), ""]
    atomic_write_text(out / "study.md", "\n".join(head) + markdown(sections, equal_table) + "\n")
    write_page(out, f"Study {spec.name}", intro, sections, equal_table, results, rows, trials)
    return rows, comparisons


def run_study(path: str | os.PathLike[str], out: str | os.PathLike[str], parallel: int = 1,
              cores: Sequence[int] | None = None, gpus: int = 0, engine: str = "local",
              ray: RayResources | None = None, ray_address: str | None = None, ray_cpus: int | None = None,
              ray_retries: int = 2, reuse: Sequence[str | os.PathLike[str]] = (),
              report: Callable[[str], None] = print) -> StudyOutcome:
    """Run (or continue) the study in file `path` into `out`, then aggregate what has finished.

    engine "local": this machine, `parallel` units at a time on disjoint cores (one GPU each of `gpus`);
    engine "ray": Ray Tune trials on the cluster at `ray_address` (default: a local instance of `ray_cpus`
    CPUs), each asking for `ray` resources, a failed one retried `ray_retries` times. The budget rule's
    calibration and the prepared runs run on this machine either way. Units that a study directory in
    `reuse` finished alike (same recipe settings, overrides, search protocol) are adopted, not rerun.
    """
    if engine not in ("local", "ray"):
        raise StudyError(f"unknown engine {engine!r}; use local or ray")
    spec, base = load_study(path)
    out = Path(out)
    _refuse_another_study(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    prepare_runs(spec, base, out, cores, report)
    costs = calibrate(spec, base, out, cores, report) if spec.budget.rule == "cost" else None
    units = plan_units(spec, base, costs)
    if reuse:
        adopt_units(units, out, spec, [Path(r) for r in reuse], report)
    if engine == "ray":
        failures = run_units_ray(units, out, spec, ray or RayResources(), ray_address, max_failures=ray_retries,
                                 num_cpus=ray_cpus, report=report)
        results = read_results(units, out)
    else:
        results, failures = run_units(units, out, spec, parallel, cores, gpus, report)
    rows, comparisons = aggregate_study(spec, out, results, costs)
    return StudyOutcome(out, results, rows, comparisons, failures, len(units))


def aggregate_finished(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> StudyOutcome:
    """Aggregate the units of the study in file `path` that have finished in `out`, running none (a study
    run in parts, published part-way)."""
    spec, base = load_study(path)
    out = Path(out)
    if not out.is_dir():
        raise StudyError(f"{out} does not exist; run the study first (without --aggregate-only)")
    _refuse_another_study(spec, out)
    costs = saved_costs(spec, out) if spec.budget.rule == "cost" else None
    units = plan_units(spec, base, costs)
    results = finished_results(units, out)
    if not results:
        raise StudyError(f"no unit of study {spec.name!r} has finished in {out} yet; run the study (without "
                         "--aggregate-only) first")
    rows, comparisons = aggregate_study(spec, out, results, costs)
    return StudyOutcome(out, results, rows, comparisons, [], len(units))


def _refuse_another_study(spec: StudySpec, out: Path) -> None:
    """Refuse a study directory whose study.json names another study."""
    previous = out / "study.json"
    if not previous.is_file():
        return
    try:
        name = json.loads(previous.read_text(encoding="utf-8")).get("name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        name = None
    if name != spec.name:
        raise StudyError(f"{out} holds another study ({name!r}), not {spec.name!r}; use another --out")


__all__ = ["RESULT_FILE", "StudyOutcome", "aggregate_finished", "aggregate_study", "run_study"]
