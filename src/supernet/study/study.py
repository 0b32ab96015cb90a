"""`supernet study`: run every unit of a study (resumably), then aggregate it into study.json and study.md."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supernet.fileio import atomic_write_text
from supernet.study.aggregate import compare, markdown, summarise
from supernet.study.plan import plan_units
from supernet.study.runner import RESULT_FILE, calibrate, run_units
from supernet.study.spec import StudyError, StudySpec, load_study


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
    """Write out/study.json and out/study.md from the unit results; (rows, comparisons)."""
    rows = summarise(results, [t.name for t in spec.trials])
    comparisons = compare(rows)
    doc = {"name": spec.name, "description": spec.description, "spec": spec.model_dump(mode="json"),
           "calibration": costs, "rows": rows, "comparisons": comparisons, "units": list(results)}
    atomic_write_text(out / "study.json", json.dumps(doc, indent=2) + "\n")
    rule = ("equal epochs" if spec.budget.rule == "epochs" else
            f"equal counted training MACs to {spec.budget.reference} at the listed epochs")
    head = [f"# Study {spec.name}", "", spec.description, "",
            (f"Trials trained for {rule}; seeds {spec.seeds}; every trial searched with the same protocol "
            f"(population {spec.search.population}, {spec.search.iterations} generations); accuracies are test "
            "top-1 of sub-networks selected on val (mean ± std over seeds)."), "", ""]
    atomic_write_text(out / "study.md", "\n".join(head) + markdown(rows, comparisons) + "\n")
    return rows, comparisons


def run_study(path: str | os.PathLike[str], out: str | os.PathLike[str], parallel: int = 1,
              cores: Sequence[int] | None = None, gpus: int = 0,
              report: Callable[[str], None] = print) -> StudyOutcome:
    """Run (or continue) the study in file `path` into `out`, then aggregate what has finished."""
    spec, base = load_study(path)
    out = Path(out)
    previous = out / "study.json"
    if previous.is_file():
        try:
            name = json.loads(previous.read_text(encoding="utf-8")).get("name")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            name = None
        if name != spec.name:
            raise StudyError(f"{out} holds another study ({name!r}), not {spec.name!r}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    costs = calibrate(spec, base, out, cores, report) if spec.budget.rule == "cost" else None
    units = plan_units(spec, base, costs)
    results, failures = run_units(units, out, spec, parallel, cores, gpus, report)
    rows, comparisons = aggregate_study(spec, out, results, costs)
    return StudyOutcome(out, results, rows, comparisons, failures, len(units))


__all__ = ["RESULT_FILE", "StudyOutcome", "aggregate_study", "run_study"]
