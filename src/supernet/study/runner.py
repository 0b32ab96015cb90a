"""Run a study's units on this machine: one after another, or N at a time on disjoint shares of the cores.

Each unit is two subprocesses of this package's CLI (`train`, resumed when it has a checkpoint, then
`search`), so a killed study continues where it stopped and finished units (those with result.json)
are never rerun. Parallel units each get `cores / N` cores (pinned with sched_setaffinity), as many
OpenMP and torch threads, and OpenMP's passive wait policy: spinning threads of concurrent trainings
slow each other down 10-40x on a small machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from supernet.fileio import atomic_write_text
from supernet.study.plan import Unit, epoch_overrides, recipe_path, trial_overrides
from supernet.study.spec import StudyError, StudySpec
from supernet.training.metrics import read_metrics

RESULT_FILE = "result.json"
UNIT_FILE = "unit.json"
COST_FILE = "cost.json"


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


def thread_env(threads: int, concurrent: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment running torch with `threads` threads; with other units `concurrent`ly on the same
    cores' machine, OpenMP's passive wait policy (an idle thread sleeps instead of spinning on a core
    another unit needs)."""
    env = dict(os.environ if base is None else base)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    if concurrent:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def slot_env(slot: Slot, parallel: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a unit's processes in `slot`: thread counts, wait policy, visible GPU."""
    env = thread_env(len(slot.cores), parallel > 1, base)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
    return env


PREPARE_DIR = "prepare"


def prepared_folder(out: Path, name: str) -> Path:
    """Where the study's prepared run NAME lives."""
    return out / PREPARE_DIR / name


def resolve_prepared(override: str, out: Path) -> str:
    """An override with each {prepare:NAME} replaced by that prepared run's folder."""
    return re.sub(r"\{prepare:([^}]*)\}", lambda m: str(prepared_folder(out, m.group(1)).resolve()), override)


def train_command(unit: Unit, run: Path, threads: int, out: Path | None = None) -> list[str]:
    """`supernet train` of a unit into `run`, or `--resume` once it has a checkpoint; {prepare:NAME} in an
    override is the prepared run's folder under `out`."""
    cli = [sys.executable, "-m", "supernet", "train"]
    if (run / "checkpoints" / "latest.pt").is_file():
        argv = [*cli, "--resume", str(run)]
    else:
        argv = [*cli, str(unit.recipe), "--out", str(run), "--force"]
        for override in unit.overrides:
            argv += ["--set", override if out is None else resolve_prepared(override, out)]
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
    return [train_command(unit, run, threads, out), search_command(unit, run, spec)]


class UnitFailed(RuntimeError):
    """A unit's subprocess exited with an error; the message names the unit, the command and its log."""


class RunningCalls:
    """The CLI calls running for a study's units, from several threads; `stop` interrupts them all and
    refuses to start any other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: set[subprocess.Popen[bytes]] = set()
        self.stopped = False

    def start(self, argv: list[str], **popen: Any) -> subprocess.Popen[bytes] | None:
        """Start one call, or None once the study is stopping."""
        with self._lock:
            if self.stopped:
                return None
            process = subprocess.Popen(argv, **popen)
            self._processes.add(process)
            return process

    def done(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(process)

    def stop(self) -> None:
        """Start no other call; SIGINT the running ones (each saves its progress) and wait until they stop."""
        with self._lock:
            self.stopped = True
            processes = list(self._processes)
        interrupt(processes)


def run_logged(argv: list[str], env: dict[str, str], log: Path, cores: tuple[int, ...] | None = None,
               calls: RunningCalls | None = None) -> None:
    """Run one CLI call with its output appended to `log` (pinned to `cores` when given); UnitFailed if it fails
    or `calls` is stopping. Interrupted here (Ctrl-C in this thread), the call gets SIGINT, so that it saves
    its progress, and this waits for it to stop."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pin = None if cores is None else (lambda: os.sched_setaffinity(0, cores))
    calls = RunningCalls() if calls is None else calls
    with log.open("a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(argv[2:]) + "\n")
        fh.flush()
        process = calls.start(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=pin)
        if process is None:
            raise UnitFailed(f"`supernet {argv[3]}` was not started: the study is stopping")
        try:
            code = process.wait()
        except KeyboardInterrupt:
            interrupt([process])
            raise
        finally:
            calls.done(process)
    if code == 0:
        return
    if code < 0 or code == INTERRUPTED_EXIT:  # a signal, or Ctrl-C that the command caught and saved after
        how = "was interrupted" if code == INTERRUPTED_EXIT else f"was stopped by {_signal_name(-code)}"
        raise UnitFailed(f"`supernet {argv[3]}` {how} before it finished; the unit resumes from its last "
                         f"checkpoint when the study runs again (log: {log})")
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    raise UnitFailed(f"`supernet {argv[3]}` exited with {code}: {lines[-1] if lines else 'no output'} (log: {log})")


def interrupt(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Send SIGINT to running CLI calls (each saves its progress and exits) and wait until they have stopped."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        process.wait()


# the exit status of a CLI command that caught Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED_EXIT = 130


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def unit_log(unit: Unit, out: Path) -> Path:
    """Where a unit's CLI calls write their output."""
    return out / "logs" / f"{unit.trial}-budget{unit.budget}-seed{unit.seed}.log"


def final_cost_record(run: Path) -> dict[str, Any]:
    """The latest record of a run's metrics.jsonl that holds its cumulative cost counters: the last `train`
    record, or an `eval` record written at a later step (runs that logged training every N steps only)."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") in ("train", "eval")
               and "train_macs" in r]
    if not any(r.get("kind") == "train" for r in records):
        raise StudyError(f"{run} logged no training record; its metrics.jsonl is empty or damaged")
    return max(records, key=lambda r: (r.get("step", 0), r.get("kind") == "train"))


_DIAGNOSTICS = ("teacher_top1", "student_top1", "teacher_gap", "logit_distance")


def diagnostics_by_epoch(run: Path) -> list[dict[str, Any]]:
    """The per-epoch diagnostics a run logged with its evaluations (EnNAS section 4.2-4.3), epoch by epoch."""
    out = []
    for r in read_metrics(run / "metrics.jsonl"):
        if r.get("kind") == "eval" and "diag_logit_distance" in r:
            out.append({"epoch": r.get("epoch"), **{k: r.get(f"diag_{k}") for k in _DIAGNOSTICS}})
    return out


def _point(c: dict[str, Any] | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"macs": c["macs"], "params": c["params"], "val_top1": c.get("val_top1"), "test_top1": c.get("test_top1"),
            "arch": c["arch"]}


def collect_result(unit: Unit, out: Path) -> dict[str, Any]:
    """A finished unit's figures: the search's front, extremes, buckets, mean Pareto accuracy; training cost."""
    run = unit.folder(out)
    front = json.loads((run / "search" / "front.json").read_text(encoding="utf-8"))
    cost = final_cost_record(run)
    return {
        "trial": unit.trial, "seed": unit.seed, "budget": unit.budget, "epochs": unit.epochs,
        "recipe": unit.recipe.name, "overrides": list(unit.overrides), "run_dir": str(run.relative_to(out)),
        "space": front["space"], "range": front["range"], "images": front["images"],
        "pareto_reading": front["pareto_reading"],
        "mean_pareto_test": front["mean_pareto_accuracy"], "mean_pareto_val": front["mean_pareto_accuracy_val"],
        "smallest": _point(front["smallest"]), "largest": _point(front["largest"]),
        "front": [_point(c) for c in front["front"]],
        "buckets": [{"low": b["low"], "high": b["high"], "best": _point(b["best"])} for b in front["buckets"]],
        "train_macs": cost.get("train_macs"), "wall_time": cost.get("wall_time"), "elapsed": cost.get("elapsed"),
        "gpu_hours": cost.get("gpu_hours"), "steps": cost.get("step"), "diagnostics": diagnostics_by_epoch(run),
    }


def unit_record(unit: Unit) -> dict[str, Any]:
    """What makes a unit this unit, independent of where the checkout lives: the recipe's settings (its parsed
    YAML, so comments may change) and the overrides."""
    try:
        settings = yaml.safe_load(unit.recipe.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise StudyError(f"recipe {unit.recipe} cannot be read: {err}".replace("\n", " ")) from None
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {"recipe": unit.recipe.name, "recipe_settings": digest, "overrides": list(unit.overrides)}


def finish_unit(unit: Unit, out: Path) -> dict[str, Any]:
    """Collect a unit's figures and write its result.json (which marks it finished)."""
    result = collect_result(unit, out)
    atomic_write_text(unit.folder(out) / RESULT_FILE, json.dumps(result, indent=2) + "\n")
    return result


def pending_units(units: Sequence[Unit], out: Path, report: Callable[[str], None] = print) -> list[Unit]:
    """The units without a result, after refusing unit folders that an earlier, different version of the
    study wrote; says how many had finished already."""
    for unit in units:
        if not _check_unit_record(unit, out):
            path = unit.folder(out) / UNIT_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(unit_record(unit), indent=2) + "\n")
    todo = [u for u in units if not (u.folder(out) / RESULT_FILE).is_file()]
    if len(todo) < len(units):
        report(f"{len(units) - len(todo)} of {len(units)} units already finished; running {len(todo)}")
    return todo


def finished_results(units: Sequence[Unit], out: Path) -> list[dict[str, Any]]:
    """The results of the units that have finished, in plan order, after refusing unit folders that an
    earlier, different version of the study wrote; writes nothing."""
    for unit in units:
        _check_unit_record(unit, out)
    return read_results(units, out)


def _check_unit_record(unit: Unit, out: Path) -> bool:
    """Refuse a unit folder that an earlier, different version of the study wrote; whether it has a record."""
    path = unit.folder(out) / UNIT_FILE
    if not path.is_file():
        return False
    record = unit_record(unit)
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("recipe_settings") != record["recipe_settings"]:
        raise StudyError(f"{unit.folder(out)} was run with other settings in recipe {saved.get('recipe')}; use "
                         "another --out, or delete that folder to rerun it")
    if saved.get("overrides") != record["overrides"]:
        raise StudyError(f"{unit.folder(out)} was run with {saved.get('overrides')} from {saved.get('recipe')}, "
                         f"but the study now gives {record['overrides']}; use another --out, or delete that "
                         "folder to rerun it")
    return True


def run_units(units: Sequence[Unit], out: Path, spec: StudySpec, parallel: int = 1,
              cores: Sequence[int] | None = None, gpus: int = 0,
              report: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the units that have no result yet; (every unit's result, the failures' messages)."""
    todo = pending_units(units, out, report)
    width = min(parallel, max(1, len(todo)))  # no more slots than units to run
    slots: queue.Queue[Slot] = queue.Queue()
    for slot in make_slots(width, cores, gpus):
        slots.put(slot)
    failures: list[str] = []
    calls = RunningCalls()

    def work(unit: Unit) -> None:
        slot = slots.get()
        try:
            env = slot_env(slot, width)
            for argv in unit_commands(unit, out, spec, len(slot.cores)):
                run_logged(argv, env, unit_log(unit, out), slot.cores, calls)
            finish_unit(unit, out)
            report(f"finished {unit.trial} (budget {unit.budget}, {unit.epochs} epochs, seed {unit.seed})")
        except UnitFailed as err:
            if not calls.stopped:
                failures.append(f"{unit.trial} budget {unit.budget} seed {unit.seed}: {err}")
        finally:
            slots.put(slot)

    pool = ThreadPoolExecutor(max_workers=width)
    try:
        for future in [pool.submit(work, unit) for unit in todo]:
            future.result()
    except KeyboardInterrupt:
        # Ctrl-C: start no other unit, let the running ones save their progress, then report the interruption
        pool.shutdown(wait=False, cancel_futures=True)
        calls.stop()
        raise
    finally:
        pool.shutdown(wait=True)
    return read_results(units, out), failures


def read_results(units: Sequence[Unit], out: Path) -> list[dict[str, Any]]:
    """The results of the finished units, in plan order."""
    return [json.loads((u.folder(out) / RESULT_FILE).read_text(encoding="utf-8")) for u in units
            if (u.folder(out) / RESULT_FILE).is_file()]


def prepare_runs(spec: StudySpec, base: Path, out: Path, cores: Sequence[int] | None = None,
                 report: Callable[[str], None] = print) -> None:
    """Train the study's prepared runs (once, with the first seed; a killed one resumes)."""
    slot = make_slots(1, cores)[0]
    for entry in spec.prepare:
        run = prepared_folder(out, entry.name)
        unit = Unit(entry.name, spec.seeds[0], 0, 0, recipe_path(entry, base),
                    (*spec.set, *entry.set, f"seed={spec.seeds[0]}"))
        done = run / "prepared.json"
        record = unit_record(unit)
        if done.is_file():
            if json.loads(done.read_text(encoding="utf-8")) != record:
                raise StudyError(f"{run} was prepared with other settings; use another --out, or delete that folder "
                                 "to prepare it again")
            continue
        report(f"preparing {entry.name} ({entry.recipe})")
        run_logged(train_command(unit, run, len(slot.cores), out), slot_env(slot, 1),
                   out / "logs" / f"prepare-{entry.name}.log", slot.cores)
        atomic_write_text(done, json.dumps(record, indent=2) + "\n")


def prepared_costs(spec: StudySpec, out: Path) -> list[dict[str, Any]]:
    """The training cost of each prepared run that has finished, with the trials that use it: trained once and
    shared by every unit of those trials, so it is reported beside their training cost, not inside it."""
    costs = []
    for entry in spec.prepare:
        run = prepared_folder(out, entry.name)
        if not (run / "prepared.json").is_file():
            continue
        cost = final_cost_record(run)
        users = [t.name for t in spec.trials if any(f"{{prepare:{entry.name}}}" in o for o in (*spec.set, *t.set))]
        costs.append({"name": entry.name, "recipe": Path(entry.recipe).name, "used_by": users,
                      "train_macs": cost.get("train_macs"), "wall_time": cost.get("wall_time"),
                      "gpu_hours": cost.get("gpu_hours")})
    return costs


def calibration_folder(out: Path, trial: str) -> Path:
    """Where budget rule cost calibrates a trial: its short run and the cost.json it measured."""
    return out / "calibration" / trial


def calibrate(spec: StudySpec, base: Path, out: Path, cores: Sequence[int] | None = None,
              report: Callable[[str], None] = print) -> dict[str, float]:
    """Budget rule cost: each trial's counted training MACs per epoch, from a short run on a data subset
    (`budget.calibration_epochs` epochs on `budget.calibration_images` images, so phases keep their proportions)."""
    b = spec.budget
    costs: dict[str, float] = {}
    slot = make_slots(1, cores)[0]
    for trial in spec.trials:
        folder = calibration_folder(out, trial.name)
        saved = folder / COST_FILE
        if saved.is_file():
            costs[trial.name] = _read_cost(saved)
            continue
        report(f"calibrating {trial.name}: {b.calibration_epochs} epochs on {b.calibration_images} images")
        recipe, chosen = recipe_path(trial, base), trial_overrides(spec, trial)
        overrides = (*chosen, f"seed={spec.seeds[0]}", *epoch_overrides(recipe, chosen, b.calibration_epochs),
                     f"data.limit={b.calibration_images}")
        unit = Unit(trial.name, spec.seeds[0], 0, b.calibration_epochs, recipe, overrides)
        run = folder / "run"
        run_logged(train_command(unit, run, len(slot.cores), out), slot_env(slot, 1),
                   out / "logs" / f"calibration-{trial.name}.log", slot.cores)
        costs[trial.name] = final_cost_record(run)["train_macs"] / b.calibration_epochs
        atomic_write_text(saved, json.dumps({"macs_per_epoch": costs[trial.name], "epochs": b.calibration_epochs,
                                             "images": b.calibration_images}, indent=2) + "\n")
    return costs


def saved_costs(spec: StudySpec, out: Path) -> dict[str, float]:
    """Budget rule cost: the per-epoch costs an earlier run of the study calibrated into `out`, measuring none."""
    costs: dict[str, float] = {}
    for trial in spec.trials:
        saved = calibration_folder(out, trial.name) / COST_FILE
        if not saved.is_file():
            raise StudyError(f"{out} holds no calibrated cost for trial {trial.name!r} yet; run the study (without "
                             "--aggregate-only) to calibrate it")
        costs[trial.name] = _read_cost(saved)
    return costs


def _read_cost(path: Path) -> float:
    """A calibrated trial's counted training MACs per epoch."""
    return float(json.loads(path.read_text(encoding="utf-8"))["macs_per_epoch"])
