"""Run a study's units on this machine: one after another, or N at a time on disjoint shares of the cores.

Each unit is two subprocesses of this package's CLI (`train`, resumed when it has a checkpoint, then
`search`), so a killed study continues where it stopped and finished units (those with result.json)
are never rerun. Parallel units each get `cores / N` cores (pinned with sched_setaffinity), as many
OpenMP and torch threads, and OpenMP's passive wait policy: spinning threads of concurrent trainings
slow each other down 10-40x on a small machine.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supernet.fileio import atomic_write_text
from supernet.study.plan import Unit, recipe_path, trial_overrides
from supernet.study.spec import StudyError, StudySpec
from supernet.training.metrics import read_metrics

RESULT_FILE = "result.json"
UNIT_FILE = "unit.json"


@dataclass(frozen=True)
class Slot:
    """What one concurrently running unit may use: CPU cores, and a GPU when there are any."""

    index: int
    cores: tuple[int, ...]
    gpu: int | None = None


def make_slots(parallel: int, cores: Sequence[int] | None = None, gpus: int = 0) -> list[Slot]:
    """`parallel` slots over disjoint equal shares of `cores` (default: those this process may use)."""
    available = sorted(os.sched_getaffinity(0)) if cores is None else list(cores)
    if parallel < 1:
        raise StudyError(f"--parallel must be at least 1, got {parallel}")
    if parallel > len(available):
        raise StudyError(f"--parallel {parallel} needs at least {parallel} CPU cores; this process may use "
                         f"{len(available)}")
    share = len(available) // parallel
    return [Slot(i, tuple(available[i * share:(i + 1) * share]), i % gpus if gpus else None) for i in range(parallel)]


def slot_env(slot: Slot, parallel: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a unit's processes in `slot`: thread counts, wait policy, visible GPU."""
    env = dict(os.environ if base is None else base)
    threads = str(len(slot.cores))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    if parallel > 1:
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # an idle thread sleeps instead of spinning on a core another unit needs
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
    return env


def train_command(unit: Unit, run: Path, threads: int) -> list[str]:
    """`supernet train` of a unit into `run`, or `--resume` once it has a checkpoint."""
    cli = [sys.executable, "-m", "supernet", "train"]
    if (run / "checkpoints" / "latest.pt").is_file():
        argv = [*cli, "--resume", str(run)]
    else:
        argv = [*cli, str(unit.recipe), "--out", str(run), "--force"]
        for override in unit.overrides:
            argv += ["--set", override]
    return [*argv, "--no-progress", "--set", f"train.threads={threads}"]


def search_command(unit: Unit, run: Path, spec: StudySpec) -> list[str]:
    """`supernet search` of a unit's run with the study's protocol and the unit's seed."""
    s = spec.search
    argv = [sys.executable, "-m", "supernet", "search", str(run), "--out", str(run / "search"), "--no-progress",
            "--seed", str(unit.seed), "--population", str(s.population), "--iterations", str(s.iterations),
            "--parents", str(s.parents), "--mutations", str(s.mutations), "--crossovers", str(s.crossovers),
            "--parent-selection", s.parent_selection, "--pareto-reading", s.pareto_reading]
    for constraint in s.constraints:
        argv += ["--constraint", constraint]
    if s.recal_images is not None:
        argv += ["--recal-images", str(s.recal_images)]
    if s.predictor:
        argv.append("--predictor")
    return argv


def unit_commands(unit: Unit, out: Path, spec: StudySpec, threads: int) -> list[list[str]]:
    """The CLI calls of a unit: train (or resume) its run, then search it with the study's protocol."""
    run = unit.folder(out)
    return [train_command(unit, run, threads), search_command(unit, run, spec)]


class UnitFailed(RuntimeError):
    """A unit's subprocess exited with an error; the message names the unit, the command and its log."""


def _run(argv: list[str], env: dict[str, str], cores: tuple[int, ...], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(argv[2:]) + "\n")
        fh.flush()
        code = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False,
                              preexec_fn=lambda: os.sched_setaffinity(0, cores)).returncode
    if code != 0:
        lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise UnitFailed(f"`supernet {argv[3]}` exited with {code}: {lines[-1] if lines else 'no output'} "
                         f"(log: {log})")


def last_train_record(run: Path) -> dict[str, Any]:
    """The last `train` record of a run's metrics.jsonl (cumulative cost counters)."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "train"]
    if not records:
        raise StudyError(f"{run} logged no training record; its metrics.jsonl is empty or damaged")
    return records[-1]


def _point(c: dict[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"macs": c["macs"], "params": c["params"], "val_top1": c.get("val_top1"), "test_top1": c.get("test_top1"),
            "arch": c["arch"]}


def collect_result(unit: Unit, out: Path) -> dict[str, Any]:
    """A finished unit's figures: the search's front, extremes, buckets, mean Pareto accuracy; training cost."""
    run = unit.folder(out)
    front = json.loads((run / "search" / "front.json").read_text(encoding="utf-8"))
    cost = last_train_record(run)
    return {
        "trial": unit.trial, "seed": unit.seed, "budget": unit.budget, "epochs": unit.epochs,
        "recipe": str(unit.recipe), "overrides": list(unit.overrides), "run_dir": str(run),
        "space": front["space"], "range": front["range"], "images": front["images"],
        "pareto_reading": front["pareto_reading"],
        "mean_pareto_test": front["mean_pareto_accuracy"], "mean_pareto_val": front["mean_pareto_accuracy_val"],
        "smallest": _point(front["smallest"]), "largest": _point(front["largest"]),
        "front": [_point(c) for c in front["front"]],
        "buckets": [{"low": b["low"], "high": b["high"], "best": _point(b["best"])} for b in front["buckets"]],
        "train_macs": cost.get("train_macs"), "wall_time": cost.get("wall_time"), "elapsed": cost.get("elapsed"),
        "gpu_hours": cost.get("gpu_hours"), "steps": cost.get("step"),
    }


def _check_unit_record(unit: Unit, out: Path) -> None:
    """Refuse to continue a unit folder that an earlier, different version of the study wrote."""
    path = unit.folder(out) / UNIT_FILE
    record = {"recipe": str(unit.recipe), "overrides": list(unit.overrides)}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != record:
            raise StudyError(f"{unit.folder(out)} was run with {saved['overrides']} from {saved['recipe']}, but the "
                             f"study now gives {record['overrides']}; use another --out, or delete that folder to "
                             "rerun it")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def run_units(units: Sequence[Unit], out: Path, spec: StudySpec, parallel: int = 1,
              cores: Sequence[int] | None = None, gpus: int = 0,
              report: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the units that have no result yet; (every unit's result, the failures' messages)."""
    for unit in units:
        _check_unit_record(unit, out)
    todo = [u for u in units if not (u.folder(out) / RESULT_FILE).is_file()]
    if len(todo) < len(units):
        report(f"{len(units) - len(todo)} of {len(units)} units already finished; running {len(todo)}")
    width = min(parallel, max(1, len(todo)))  # no more slots than units to run
    slots: queue.Queue[Slot] = queue.Queue()
    for slot in make_slots(width, cores, gpus):
        slots.put(slot)
    failures: list[str] = []

    def work(unit: Unit) -> None:
        slot = slots.get()
        try:
            env = slot_env(slot, width)
            log = out / "logs" / f"{unit.trial}-budget{unit.budget}-seed{unit.seed}.log"
            for argv in unit_commands(unit, out, spec, len(slot.cores)):
                _run(argv, env, slot.cores, log)
            atomic_write_text(unit.folder(out) / RESULT_FILE, json.dumps(collect_result(unit, out), indent=2) + "\n")
            report(f"finished {unit.trial} (budget {unit.budget}, {unit.epochs} epochs, seed {unit.seed})")
        except UnitFailed as err:
            failures.append(f"{unit.trial} budget {unit.budget} seed {unit.seed}: {err}")
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=width) as pool:
        list(pool.map(work, todo))
    results = [json.loads((u.folder(out) / RESULT_FILE).read_text(encoding="utf-8")) for u in units
               if (u.folder(out) / RESULT_FILE).is_file()]
    return results, failures


def calibrate(spec: StudySpec, base: Path, out: Path, cores: Sequence[int] | None = None,
              report: Callable[[str], None] = print) -> dict[str, float]:
    """Budget rule cost: each trial's counted training MACs per epoch, from a short run on a data subset
    (`budget.calibration_epochs` epochs on `budget.calibration_images` images, so phases keep their proportions)."""
    b = spec.budget
    costs: dict[str, float] = {}
    slot = make_slots(1, cores)[0]
    for trial in spec.trials:
        folder = out / "calibration" / trial.name
        saved = folder / "cost.json"
        if saved.is_file():
            costs[trial.name] = json.loads(saved.read_text(encoding="utf-8"))["macs_per_epoch"]
            continue
        report(f"calibrating {trial.name}: {b.calibration_epochs} epochs on {b.calibration_images} images")
        overrides = (*trial_overrides(spec, trial), f"seed={spec.seeds[0]}", f"train.epochs={b.calibration_epochs}",
                     f"data.limit={b.calibration_images}")
        unit = Unit(trial.name, spec.seeds[0], 0, b.calibration_epochs, recipe_path(trial, base), overrides)
        run = folder / "run"
        _run(train_command(unit, run, len(slot.cores)), slot_env(slot, 1), slot.cores,
             out / "logs" / f"calibration-{trial.name}.log")
        costs[trial.name] = last_train_record(run)["train_macs"] / b.calibration_epochs
        atomic_write_text(saved, json.dumps({"macs_per_epoch": costs[trial.name], "epochs": b.calibration_epochs,
                                             "images": b.calibration_images}, indent=2) + "\n")
    return costs
