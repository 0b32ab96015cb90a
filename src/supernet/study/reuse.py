"""Adopt finished units of other studies: a unit trained from the same recipe settings with the same overrides
(seed and epochs included) and searched with the same protocol is the same computation, so its result is
copied instead of rerun (e.g. AlphaNet's Table 3 arms that the budget sweep has already run)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from supernet.fileio import atomic_write_text
from supernet.study.plan import Unit
from supernet.study.runner import RESULT_FILE, UNIT_FILE, unit_record
from supernet.study.spec import StudyError, StudySpec


def _key(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudyError(f"{path} cannot be read: {err}".replace("\n", " ")) from None


def source_units(source: Path, spec: StudySpec) -> dict[str, tuple[str, Path]]:
    """The finished units of the study directory `source`, by their unit record: (origin, folder), the origin
    naming the study and the unit's run directory in it ("NAME:runs/TRIAL/budgetB/seedS").

    Refuses a directory that is not an aggregated study, or whose study searched with another protocol."""
    summary = source / "study.json"
    if not summary.is_file():
        raise StudyError(f"--reuse {source}: no study.json there; give a study's --out directory")
    doc = _read_json(summary)
    theirs = (doc.get("spec") or {}).get("search") if isinstance(doc, dict) else None
    if theirs != spec.search.model_dump(mode="json"):
        raise StudyError(f"--reuse {source}: its study {doc.get('name')!r} searched with another protocol "
                         f"({theirs}); only units searched alike can be reused")
    found: dict[str, tuple[str, Path]] = {}
    for record_path in sorted((source / "runs").glob(f"*/*/*/{UNIT_FILE}")):
        folder = record_path.parent
        if (folder / RESULT_FILE).is_file():
            found.setdefault(_key(_read_json(record_path)), (f"{doc.get('name')}:{folder.relative_to(source)}", folder))
    return found


def adopt_units(units: Sequence[Unit], out: Path, spec: StudySpec, sources: Sequence[Path],
                report: Callable[[str], None] = print) -> int:
    """Copy into `out` the result of every unit without one that a study in `sources` finished alike; how many.

    A unit whose overrides name a prepared run ({prepare:NAME}) is never adopted: its teacher is another
    study's. The adopted result names its origin in `reused_from`."""
    found: dict[str, tuple[str, Path]] = {}
    for source in sources:
        for key, origin in source_units(Path(source), spec).items():
            found.setdefault(key, origin)
    adopted = 0
    for unit in units:
        folder = unit.folder(out)
        if (folder / RESULT_FILE).is_file() or any("{prepare:" in o for o in unit.overrides):
            continue
        record = unit_record(unit)
        origin = found.get(_key(record))
        saved = folder / UNIT_FILE
        if origin is None or (saved.is_file() and _read_json(saved) != record):
            continue  # not run elsewhere, or this folder holds another version (pending_units refuses it)
        label, source_folder = origin
        result = _read_json(source_folder / RESULT_FILE)
        result.update(trial=unit.trial, budget=unit.budget, epochs=unit.epochs, run_dir=str(folder.relative_to(out)),
                      reused_from=result.get("reused_from") or label)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, json.dumps(record, indent=2) + "\n")
        atomic_write_text(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        adopted += 1
    if adopted:
        report(f"adopted {adopted} finished units from {', '.join(str(s) for s in sources)}")
    return adopted
