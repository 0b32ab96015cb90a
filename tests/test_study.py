"""`supernet study`: the study file, the budget rule, aggregation, the local runner's slots, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supernet.cli import main
from supernet.study import (
    RayResources,
    StudyError,
    accuracy_under,
    aggregate_finished,
    aggregate_study,
    at_targets,
    compare,
    cost_to_equal_front,
    equal_cost_epochs,
    load_study,
    make_slots,
    mean_std,
    plan_units,
    run_study,
    slot_env,
    summarise,
)
from supernet.study.page import mean_front
from supernet.study.reuse import adopt_units
from supernet.study.runner import (
    RESULT_FILE,
    UnitFailed,
    calibrate,
    final_cost_record,
    pending_units,
    run_logged,
    train_command,
    unit_record,
)
from supernet.study.tables import equal_front_table, pct, tmacs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["data.limit=256", "data.val_size=128", "train.recal_images=64", "train.eval_images=128",
        "train.diagnostic_draws=0", "data.batch_size=64"]


def write_study(path: Path, **changes: object) -> Path:
    spec = {
        "name": "tiny",
        "description": "a test study",
        "trials": [{"name": "nokd", "recipe": str(CONFIGS / "nokd.yaml")}],
        "seeds": 2,
        "set": TINY,
        "budget": {"rule": "epochs", "epochs": 1},
        "search": {"population": 3, "iterations": 0, "parents": 2, "mutations": 1, "crossovers": 1,
                   "recal_images": 64},
    }
    spec.update(changes)
    path.write_text(json.dumps(spec))
    return path


def test_study_file_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        ({"trials": []}, "at least one trial"),
        ({"trials": [{"name": "a", "recipe": str(CONFIGS / "nokd.yaml")}] * 2}, "distinct"),
        ({"trials": [{"name": "a", "recipe": "missing.yaml"}]}, "recipe .*missing.yaml not found"),
        ({"budget": {"rule": "cost", "epochs": [2]}}, "needs budget.reference"),
        ({"budget": {"rule": "cost", "epochs": [2], "reference": "x"}}, "'x' is not a trial"),
        ({"budget": {"rule": "epochs", "epochs": [0]}}, "positive epoch counts"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ]
    for change, needle in cases:
        with pytest.raises(StudyError, match=needle):
            load_study(write_study(tmp_path / "s.yaml", **change))


def test_equal_cost_epochs_match_the_reference_cost() -> None:
    # reference: 10 epochs at 3 units per epoch = 30; a trial costing 2 per epoch gets 15 epochs
    assert equal_cost_epochs(10, 3.0, 2.0) == 15
    assert equal_cost_epochs(10, 3.0, 4.0) == 8  # 7.5 rounds to 8
    assert equal_cost_epochs(1, 1.0, 10.0) == 1  # at least one epoch
    with pytest.raises(ValueError, match="positive"):
        equal_cost_epochs(10, 0.0, 1.0)


def test_plan_units_applies_the_rule_per_budget_point(tmp_path: Path) -> None:
    trials = [{"name": "ref", "recipe": str(CONFIGS / "nokd.yaml")},
              {"name": "cheap", "recipe": str(CONFIGS / "nokd.yaml"), "set": ["sampler.num_random=0"]}]
    spec, base = load_study(write_study(tmp_path / "s.yaml", trials=trials, seeds=[0, 5],
                                        budget={"rule": "cost", "epochs": [2, 6], "reference": "ref"}))
    units = plan_units(spec, base, {"ref": 4.0, "cheap": 2.0})
    by = {(u.trial, u.budget, u.seed): u for u in units}
    assert len(units) == 8
    # seed by seed, so a study stopped part-way has compared every trial on its first seeds
    assert [(u.budget, u.seed, u.trial) for u in units[:4]] == [(2, 0, "ref"), (2, 0, "cheap"), (2, 5, "ref"),
                                                                (2, 5, "cheap")]
    assert by[("ref", 2, 0)].epochs == 2 and by[("cheap", 2, 0)].epochs == 4
    assert by[("ref", 6, 5)].epochs == 6 and by[("cheap", 6, 5)].epochs == 12
    cheap = by[("cheap", 6, 5)].overrides
    assert cheap[:len(TINY)] == tuple(TINY) and cheap[-3:] == ("sampler.num_random=0", "seed=5", "train.epochs=12")
    with pytest.raises(ValueError, match="training MACs per epoch"):
        plan_units(spec, base)


def unit_result(trial: str, seed: int, small: float, large: float, pareto: float, buckets: list) -> dict:
    point = lambda acc: {"macs": 1, "params": 1, "val_top1": acc, "test_top1": acc, "arch": {}}
    return {"trial": trial, "seed": seed, "budget": 3, "epochs": 3, "smallest": point(small),
            "largest": point(large), "mean_pareto_test": pareto, "mean_pareto_val": pareto - 0.01,
            "buckets": [{"low": 0, "high": 1, "best": None if b is None else point(b)} for b in buckets],
            "train_macs": 1e12 * (seed + 1), "wall_time": 10.0 * (seed + 1), "gpu_hours": 0.0}


def test_aggregation_against_hand_computed_figures() -> None:
    results = [
        unit_result("a", 0, 0.70, 0.80, 0.75, [0.70, None]),
        unit_result("a", 1, 0.72, 0.84, 0.77, [0.74, 0.90]),
        unit_result("a", 2, 0.74, 0.82, 0.79, [0.72, 0.92]),
        unit_result("b", 0, 0.60, 0.80, 0.70, [0.60, 0.80]),
        unit_result("b", 1, 0.62, 0.80, 0.71, [0.62, 0.82]),
    ]
    rows = summarise(results, ["a", "b"])
    a, b = rows
    assert a["trial"] == "a" and a["seeds"] == [0, 1, 2]
    assert a["smallest_test"]["mean"] == pytest.approx(0.72) and a["smallest_test"]["std"] == pytest.approx(0.02)
    assert a["largest_test"]["mean"] == pytest.approx(0.82) and a["largest_test"]["std"] == pytest.approx(0.02)
    assert a["mean_pareto_test"]["mean"] == pytest.approx(0.77)
    assert a["train_macs"]["mean"] == pytest.approx(2e12) and a["wall_time"]["mean"] == pytest.approx(20.0)
    # a bucket without a member for one seed averages over the seeds that have one
    assert a["buckets"][1]["test_top1"] == {"mean": pytest.approx(0.91), "std": pytest.approx(0.0141421356), "n": 2}
    assert b["mean_pareto_test"]["std"] == pytest.approx(0.00707106781)
    (c,) = compare(rows)
    assert (c["higher"], c["lower"]) == ("a", "b") and c["difference"] == pytest.approx(0.065)
    assert c["spread"] == pytest.approx(0.02 + 0.00707106781) and c["clear"] and c["seeds"] == 2
    close = compare(summarise([*results[:3], unit_result("b", 0, 0, 0, 0.76, [0]),
                               unit_result("b", 1, 0, 0, 0.78, [0])], ["a", "b"]))
    assert not close[0]["clear"]
    assert mean_std([None, None]) == {"mean": None, "std": None, "n": 0}


def test_parallel_slots_split_the_cores_and_stop_openmp_spinning() -> None:
    slots = make_slots(2, cores=[0, 1, 2, 3, 4])
    assert [s.cores for s in slots] == [(0, 1), (2, 3)] and all(s.gpu is None for s in slots)
    env = slot_env(slots[1], 2, base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    alone = slot_env(make_slots(1, cores=[0, 1])[0], 1, base={})
    assert alone == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}  # one unit keeps OpenMP's default waiting
    gpu = make_slots(3, cores=list(range(6)), gpus=2)
    assert [s.gpu for s in gpu] == [0, 1, 0] and slot_env(gpu[2], 3, base={})["CUDA_VISIBLE_DEVICES"] == "0"
    with pytest.raises(StudyError, match="needs at least 3 CPU cores"):
        make_slots(3, cores=[0, 1])


def test_study_runs_in_parallel_aggregates_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = write_study(tmp_path / "tiny.yaml", set=[*TINY, "train.diagnostic_draws=1"])
    out = tmp_path / "out"
    spec, base = load_study(study)
    first, second = plan_units(spec, base)
    # a study killed during its first unit's training: that run has a checkpoint but no result
    partial = train_command(first, first.folder(out), 1)
    assert main([*partial[3:], "--max-steps", "1"]) == 0
    capsys.readouterr()
    cores = len(os.sched_getaffinity(0))
    assert main(["study", str(study), "--out", str(out), "--parallel", str(min(2, cores))]) == 0
    err = capsys.readouterr().err
    assert "finished nokd (budget 1, 1 epochs, seed 0)" in err and "seed 1" in err
    log = (out / "logs" / "nokd-budget1-seed0.log").read_text()
    assert "train --resume" in log  # the killed unit continued instead of starting over
    threads = 1 if cores >= 2 else cores
    for unit in (first, second):
        config = (unit.folder(out) / "config.yaml").read_text()
        assert f"threads: {threads}" in config
    doc = json.loads((out / "study.json").read_text())
    (row,) = doc["rows"]
    results = [json.loads((u.folder(out) / RESULT_FILE).read_text()) for u in (first, second)]
    tests = [r["mean_pareto_test"] for r in results]
    assert row["mean_pareto_test"]["mean"] == pytest.approx(sum(tests) / 2)
    assert row["seeds"] == [0, 1] and results[0]["steps"] == results[1]["steps"]
    assert "| nokd | 1 | 2 |" in (out / "study.md").read_text()
    # the per-epoch diagnostics reach the result, and the page and its plots are written
    assert [d["epoch"] for d in results[0]["diagnostics"]] == [1] and results[0]["diagnostics"][0]["logit_distance"] > 0
    assert row["logit_distance"]["n"] == 2
    page = (out / "study.html").read_text()
    for plot in ("study_fronts.png", "study_budget.png", "study_diagnostics.png"):
        assert f'src="{plot}"' in page and (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # rerun: finished units are never rerun
    stamps = {u: (u.folder(out) / RESULT_FILE).stat().st_mtime_ns for u in (first, second)}
    assert main(["study", str(study), "--out", str(out)]) == 0
    assert "2 of 2 units already finished; running 0" in capsys.readouterr().err
    assert stamps == {u: (u.folder(out) / RESULT_FILE).stat().st_mtime_ns for u in (first, second)}

    # another study adopts the units it shares (same settings, overrides, protocol) instead of rerunning them
    other = write_study(tmp_path / "other.yaml", name="other", set=[*TINY, "train.diagnostic_draws=1"],
                        trials=[{"name": "sandwich", "recipe": str(CONFIGS / "nokd.yaml")}])
    assert main(["study", str(other), "--out", str(tmp_path / "other"), "--reuse", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"adopted 2 finished units from {out}" in err and "running 0" in err
    adopted = json.loads((tmp_path / "other" / "study.json").read_text())["units"]
    assert [u["trial"] for u in adopted] == ["sandwich", "sandwich"]
    assert [u["mean_pareto_test"] for u in adopted] == tests
    assert adopted[1]["reused_from"] == "tiny:runs/nokd/budget1/seed1"
    assert adopted[1]["run_dir"] == "runs/sandwich/budget1/seed1"
    changed, _ = load_study(write_study(tmp_path / "lr.yaml", name="lr", set=[*TINY, "optim.lr=0.5"]))
    assert adopt_units(plan_units(changed, base), tmp_path / "lr", changed, [out], report=print) == 0
    protocol = {"population": 4, "iterations": 0, "parents": 2, "mutations": 1, "crossovers": 1, "recal_images": 64}
    write_study(other, name="other2", search=protocol)
    assert main(["study", str(other), "--out", str(tmp_path / "other2"), "--reuse", str(out)]) == 2
    assert "searched with another protocol" in capsys.readouterr().err

    # a changed study must not reuse a unit trained with other settings
    write_study(study, set=[*TINY, "optim.lr=0.5"])
    assert main(["study", str(study), "--out", str(out)]) == 2
    assert "use another --out, or delete that folder" in capsys.readouterr().err
    write_study(study, name="other")
    assert main(["study", str(study), "--out", str(out)]) == 2
    assert "holds another study ('tiny')" in capsys.readouterr().err


def test_aggregate_only_publishes_the_finished_units_and_runs_none(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    study = write_study(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    only = ["study", str(study), "--out", str(out), "--aggregate-only"]
    assert main(only) == 2
    assert "does not exist; run the study first" in capsys.readouterr().err
    spec, base = load_study(study)
    first, second = plan_units(spec, base)
    first.folder(out).mkdir(parents=True)
    assert main(only) == 2
    assert "no unit of study 'tiny' has finished" in capsys.readouterr().err

    # seed 0 finished, seed 1 not started: seed 0 alone is aggregated, and nothing is trained
    result = {**unit_result("nokd", 0, 0.6, 0.8, 0.7, [0.7]), "budget": first.budget, "epochs": first.epochs,
              "front": [front_point(1e6, 0.69, 0.7)]}
    (first.folder(out) / RESULT_FILE).write_text(json.dumps(result))
    assert main(only) == 0
    assert "aggregated the 1 of 2 units finished so far (none run)" in capsys.readouterr().out
    (row,) = json.loads((out / "study.json").read_text())["rows"]
    assert row["seeds"] == [0] and row["mean_pareto_test"]["mean"] == pytest.approx(0.7)
    assert "| nokd | 1 | 1 |" in (out / "study.md").read_text() and (out / "study.html").is_file()
    assert not second.folder(out).exists() and not (out / "logs").exists()
    outcome = aggregate_finished(study, out)
    assert (outcome.units, len(outcome.results), outcome.failures) == (2, 1, [])
    # options that only matter when units run are refused rather than silently ignored
    assert main([*only, "--parallel", "2", "--reuse", str(tmp_path)]) == 2
    assert "--parallel, --reuse would be ignored; drop --aggregate-only" in capsys.readouterr().err
    assert main([*only, "--engine", "ray"]) == 2
    assert "--engine would be ignored" in capsys.readouterr().err
    assert not second.folder(out).exists()

    # a unit folder that another version of the study wrote is refused, not aggregated
    record = {**unit_record(first), "overrides": ["seed=9"]}
    (first.folder(out) / "unit.json").write_text(json.dumps(record))
    assert main(only) == 2
    assert "use another --out, or delete that folder" in capsys.readouterr().err
    # an equal-cost study that never calibrated has no epochs to plan with
    write_study(study, budget={"rule": "cost", "epochs": [4], "reference": "nokd"})
    assert main(only) == 2
    assert "holds no calibrated cost for trial 'nokd' yet" in capsys.readouterr().err


def test_calibration_measures_each_trials_cost_per_epoch(tmp_path: Path) -> None:
    trials = [{"name": "sandwich", "recipe": str(CONFIGS / "nokd.yaml")},
              {"name": "ends", "recipe": str(CONFIGS / "nokd.yaml"), "set": ["sampler.num_random=0"]}]
    spec, base = load_study(write_study(tmp_path / "s.yaml", trials=trials, seeds=[0],
                                        budget={"rule": "cost", "epochs": [4], "reference": "sandwich",
                                                "calibration_epochs": 1, "calibration_images": 128}))
    costs = calibrate(spec, base, tmp_path / "out", report=lambda line: None)
    # the sandwich trains 4 networks a step (largest, smallest, 2 random), the other 2 (largest, smallest)
    assert costs["sandwich"] > 1.2 * costs["ends"]
    saved = json.loads((tmp_path / "out" / "calibration" / "ends" / "cost.json").read_text())
    assert saved == {"macs_per_epoch": costs["ends"], "epochs": 1, "images": 128}
    epochs = {u.trial: u.epochs for u in plan_units(spec, base, costs)}
    assert epochs == {"sandwich": 4, "ends": equal_cost_epochs(4, costs["sandwich"], costs["ends"])}
    assert epochs["ends"] > 4
    # measured once: a second call reads the saved figures
    assert calibrate(spec, base, tmp_path / "out", report=lambda line: None) == costs


def test_a_failing_unit_is_named_and_the_others_still_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trials = [{"name": "broken", "recipe": str(CONFIGS / "nokd.yaml"), "set": ["optim.lr=-1"]}]
    study = write_study(tmp_path / "s.yaml", trials=trials, seeds=[0])
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "failed: broken budget 1 seed 0: `supernet train` exited with 2" in err and "optim.lr" in err
    assert "run the same command again" in err and "Traceback" not in err


def test_a_stopped_unit_command_is_reported_as_resumable_not_as_an_error(tmp_path: Path) -> None:
    log = tmp_path / "unit.log"
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "train"]
    with pytest.raises(UnitFailed, match=r"`supernet train` was stopped by SIGTERM before it finished; the unit "
                                         r"resumes from its last checkpoint"):
        run_logged(killed, dict(os.environ), log)
    interrupted = [sys.executable, "-c", "raise SystemExit(130)", "search"]
    with pytest.raises(UnitFailed, match="`supernet search` was interrupted before it finished"):
        run_logged(interrupted, dict(os.environ), log)
    broken = [sys.executable, "-c", "print('bad option x'); raise SystemExit(2)", "train"]
    with pytest.raises(UnitFailed, match="`supernet train` exited with 2: bad option x"):
        run_logged(broken, dict(os.environ), log)


def test_ctrl_c_stops_a_study_its_running_unit_saves_and_no_other_unit_starts(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", budget={"rule": "epochs", "epochs": 200})
    out = tmp_path / "out"
    first, second = (out / "runs" / "nokd" / "budget200" / f"seed{seed}" for seed in (0, 1))
    study_process = subprocess.Popen([sys.executable, "-m", "supernet", "study", str(study), "--out", str(out)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (first / "checkpoints").is_dir() or not any((first / "checkpoints").iterdir()):
        assert study_process.poll() is None and time.monotonic() < deadline, "the first unit never trained"
        time.sleep(0.2)
    # SIGINT to the study alone (as `kill -INT`); a terminal's Ctrl-C also reaches the unit itself
    study_process.send_signal(signal.SIGINT)
    _, err = study_process.communicate(timeout=120)
    assert study_process.returncode == 130
    assert "interrupted; run the same command again to continue" in err and "Traceback" not in err
    assert "interrupted before it finished" not in err  # an interruption is not reported as a failed unit
    assert not (first / RESULT_FILE).exists() and not (second / "config.yaml").exists()
    log = (out / "logs" / "nokd-budget200-seed0.log").read_text()
    assert "interrupted" in log  # the unit's `supernet train` got the SIGINT and saved its progress
    leftover = [c for c in Path("/proc").glob("[0-9]*/cmdline") if str(out) in _read_quietly(c)]
    assert leftover == []


def _read_quietly(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_a_units_cost_is_read_at_its_last_step(tmp_path: Path) -> None:
    # runs from before every last step was logged: the final eval record holds the whole cost
    records = [{"kind": "train", "step": 900, "train_macs": 90, "wall_time": 9.0},
               {"kind": "eval", "step": 936, "epoch": 6, "train_macs": 93.6, "wall_time": 9.4},
               {"kind": "eval", "step": 936, "epoch": 6, "smallest_top1": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert final_cost_record(tmp_path)["train_macs"] == 93.6
    # at the same step, the train record is the one read
    records.append({"kind": "train", "step": 936, "train_macs": 93.6, "wall_time": 9.3})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert final_cost_record(tmp_path)["wall_time"] == 9.3
    (tmp_path / "metrics.jsonl").write_text(json.dumps(records[1]) + "\n")
    with pytest.raises(StudyError, match="logged no training record"):
        final_cost_record(tmp_path)


def front_point(macs: float, val: float, test: float) -> dict:
    return {"macs": macs, "params": 1, "val_top1": val, "test_top1": test, "arch": {}}


def test_accuracy_at_a_size_is_chosen_on_val_and_reported_on_test() -> None:
    front = [front_point(1e6, 0.50, 0.52), front_point(2e6, 0.60, 0.58), front_point(3e6, 0.70, 0.71)]
    assert accuracy_under(front, 2.5e6)["test_top1"] == 0.58
    assert accuracy_under(front, 3e6)["macs"] == 3e6 and accuracy_under(front, 0.5e6) is None
    # a member better on test but worse on val is not the one chosen
    assert accuracy_under([front_point(1e6, 0.6, 0.9), front_point(2e6, 0.7, 0.1)], 2e6)["test_top1"] == 0.1
    results = [{**unit_result("a", seed, 0, 0, 0, []), "front": front} for seed in (0, 1)]
    results[1]["front"] = [front_point(1e6, 0.50, 0.56), front_point(2e6, 0.60, 0.62)]
    (row,) = at_targets(results, ["a"], [1.5e6, 2.5e6, 3.5e6])
    low, mid, high = row["cells"]
    assert low["test_top1"]["mean"] == pytest.approx(0.54) and low["test_top1"]["n"] == 2
    assert mid["test_top1"]["mean"] == pytest.approx(0.60)
    assert high["test_top1"]["mean"] == pytest.approx((0.71 + 0.62) / 2) and high["macs"]["mean"] == 2.5e6
    # the mean front is drawn where every seed has a member: from 1 M, at each seed's MACs values
    xs, means, stds = mean_front([r["front"] for r in results])
    assert xs == [1e6, 2e6, 3e6] and means == pytest.approx([0.54, 0.60, 0.665])
    assert stds[0] == pytest.approx(0.0282842712)


def test_cost_to_equal_front_against_hand_computed_ratios() -> None:
    def unit(trial: str, budget: int, macs: float, acc: float) -> dict:
        return {**unit_result(trial, 0, 0, 0, acc, []), "budget": budget, "train_macs": macs, "wall_time": macs / 1e11}

    results = [unit("a", 2, 1e12, 0.70), unit("a", 6, 3e12, 0.80), unit("b", 2, 2e12, 0.60), unit("b", 6, 4e12, 0.76)]
    equal = cost_to_equal_front(summarise(results, ["a", "b"]), ["a", "b"])
    assert equal["level"] == pytest.approx(0.76)  # the best b reaches, below a's best
    a, b = equal["trials"]
    # a crosses 0.76 between 1e12 (0.70) and 3e12 (0.80): 1e12 + 2e12 * 0.06 / 0.10
    assert a["train_macs"] == pytest.approx(2.2e12) and not a["upper_bound"] and a["ratio"] == pytest.approx(1.0)
    assert b["train_macs"] == pytest.approx(4e12) and b["ratio"] == pytest.approx(4 / 2.2)
    assert a["wall_time"] == pytest.approx(22.0)
    # at a level a trial reaches at its cheapest point the cost is only an upper bound; one never reached has none
    low = cost_to_equal_front(summarise(results, ["a", "b"]), ["a", "b"], level=0.65)
    assert low["trials"][0]["upper_bound"] and low["trials"][0]["train_macs"] == 1e12
    high = cost_to_equal_front(summarise(results, ["a", "b"]), ["a", "b"], level=0.79)
    assert high["trials"][1]["train_macs"] is None and high["trials"][1]["ratio"] is None
    table = equal_front_table(high)
    assert ("b", "not reached", "-", "-") in table.rows and table.rows[0][2] == "1.00x"


def test_one_seeds_figure_says_so_instead_of_a_zero_spread() -> None:
    assert pct(mean_std([0.9037])) == "90.37 (1 seed)"
    assert pct(mean_std([0.9, 0.9])) == "90.00 ± 0.00" and pct(mean_std([None])) == "-"


def test_training_macs_read_as_tmacs_at_every_scale() -> None:
    assert [tmacs(m) for m in (3.6e12, 4.2034e12, 99.994e12)] == ["3.60", "4.20", "99.99"]
    # an ImageNet run's millions of TMACs, not 1.23e+06
    assert tmacs(1.2345e18) == "1,234,500" and tmacs(250.4e12) == "250"


def test_aggregated_files_hold_the_paper_style_tables(tmp_path: Path) -> None:
    front = [front_point(1e6, 0.50, 0.52), front_point(3e6, 0.70, 0.71)]

    def unit(trial: str, seed: int, budget: int, acc: float) -> dict:
        diagnostics = [{"epoch": e, "teacher_top1": acc + 0.05, "student_top1": acc, "teacher_gap": 0.05,
                        "logit_distance": 1.0 + seed} for e in (1, 2)]
        return {**unit_result(trial, seed, acc, acc, acc, [acc]), "budget": budget, "train_macs": budget * 1e12,
                "front": front, "diagnostics": diagnostics}

    results = [unit(t, s, b, acc + 0.01 * s) for t, acc in (("a", 0.7), ("b", 0.6)) for b in (2, 6) for s in (0, 1)]
    spec, _ = load_study(write_study(tmp_path / "s.yaml", trials=[{"name": "a", "recipe": str(CONFIGS / "nokd.yaml")},
                                                                 {"name": "b", "recipe": str(CONFIGS / "nokd.yaml")}],
                                     tables={"macs_targets": [2e6, 4e6]}))
    aggregate_study(spec, tmp_path, results)
    md = (tmp_path / "study.md").read_text()
    assert "| trial | <= 2 M | <= 4 M |" in md and "| a | 52.00 ± 0.00 | 71.00 ± 0.00 |" in md
    # teacher, student, gap, distance
    assert "| a | 75.50 ± 0.71 | 70.50 ± 0.71 | 5.00 ± 0.00 | 1.500 ± 0.707 |" in md
    assert "## Cost to an equal front" in md and "| b | not reached | - | - |" not in md
    doc = json.loads((tmp_path / "study.json").read_text())
    assert doc["equal_front"]["level"] == pytest.approx(0.605) and doc["at_targets"][0]["cells"][0]["target"] == 2e6
    page = (tmp_path / "study.html").read_text()
    assert "<h2>Cost to an equal front</h2>" in page and "<td>52.00 ± 0.00</td>" in page
    assert page.count("<img ") == 3


def test_a_study_on_local_ray_equals_the_local_runner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray", reason="the dev extra installs Ray: pip install -e '.[dev]'")
    study = write_study(tmp_path / "tiny.yaml", set=[*TINY, "train.diagnostic_draws=1"])
    # one thread per unit both ways, so the two runs compute the same numbers
    local = run_study(study, tmp_path / "local", parallel=1, cores=[min(os.sched_getaffinity(0))],
                      report=lambda line: None)
    on_ray = run_study(study, tmp_path / "ray", engine="ray", ray=RayResources(processes=1, cpus=1), ray_cpus=2,
                       report=lambda line: None)
    assert not local.failures and not on_ray.failures and len(on_ray.results) == 2
    figures = ("smallest_test", "largest_test", "mean_pareto_test", "mean_pareto_val", "train_macs", "teacher_top1",
               "logit_distance")
    assert [{k: r[k] for k in figures} for r in on_ray.rows] == [{k: r[k] for k in figures} for r in local.rows]
    assert [r["front"] for r in on_ray.results] == [r["front"] for r in local.results]
    assert (tmp_path / "ray" / "study.html").is_file() and (tmp_path / "ray" / "ray").is_dir()
    # a second run finds every unit finished and starts no Ray trial
    again = run_study(study, tmp_path / "ray", engine="ray", ray_cpus=2, report=print)
    assert "2 of 2 units already finished; running 0" in capsys.readouterr().out and again.rows == on_ray.rows


STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_shipped_studies_load_and_plan() -> None:
    files = sorted(STUDIES.glob("*.yaml")) + sorted(STUDIES.glob("imagenet/*.yaml"))
    assert {f.stem for f in files} >= {"alphanet_table3", "deps_table2", "ennas_table1", "fmnist_budget"}
    planned = {}
    for path in files:
        spec, base = load_study(path)
        planned[f"{path.parent.name}/{path.stem}"] = {(u.trial, u.epochs) for u in plan_units(spec, base)}
        assert len(spec.seeds) >= 2
    # OFA's phases are stretched to the budget; rule recipe keeps the papers' own epochs
    deps = load_study(STUDIES / "deps_table2.yaml")
    ofa = next(u for u in plan_units(*deps) if u.trial == "ofa" and u.budget == 6)
    assert ofa.overrides[-2:] == ("train.epochs=6", "schedule.total_epochs=6")
    assert {("ofa", 590.0), ("bignas", 400.0), ("deps", 270.0)} <= planned["imagenet/deps_table2"]
    assert ("adaptive_alpha", 360.0) in planned["imagenet/alphanet_table3"]


def test_budget_rule_and_prepare_errors_are_one_line(tmp_path: Path) -> None:
    trial = {"name": "a", "recipe": str(CONFIGS / "nokd.yaml"), "set": ["teacher.checkpoint={prepare:t}"]}
    cases = [
        ({"budget": {"rule": "recipe", "epochs": [2]}}, "give no budget.epochs"),
        ({"budget": {"rule": "epochs"}}, "needs budget.epochs"),
        ({"trials": [trial]}, r"names \{prepare:t\}, but prepare has \[\]"),
        ({"prepare": [{"name": "t", "recipe": "gone.yaml"}]}, "prepare 't': recipe .*gone.yaml not found"),
    ]
    for change, needle in cases:
        with pytest.raises(StudyError, match=needle):
            load_study(write_study(tmp_path / "s.yaml", **change))


def test_unit_records_survive_a_moved_checkout_but_not_changed_settings(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    for folder in (here, there):
        folder.mkdir()
        (folder / "r.yaml").write_text((CONFIGS / "nokd.yaml").read_text())
    (there / "r.yaml").write_text("# a comment that changes nothing\n" + (there / "r.yaml").read_text())
    out = tmp_path / "out"
    for folder in (here, there):  # the same study from another checkout continues the same units
        spec, base = load_study(write_study(folder / "s.yaml", trials=[{"name": "a", "recipe": "r.yaml"}]))
        pending_units(plan_units(spec, base), out, report=lambda line: None)
    record = json.loads((out / "runs" / "a" / "budget1" / "seed0" / "unit.json").read_text())
    assert record["recipe"] == "r.yaml" and str(tmp_path) not in json.dumps(record)
    (there / "r.yaml").write_text((there / "r.yaml").read_text().replace("lr: 0.2", "lr: 0.3"))
    with pytest.raises(StudyError, match="other settings in recipe r.yaml"):
        pending_units(plan_units(*load_study(there / "s.yaml")), out, report=lambda line: None)


def test_a_prepared_teacher_serves_a_dna_trial(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s.yaml", seeds=[0],
                        prepare=[{"name": "teacher", "recipe": str(CONFIGS / "dna_teacher.yaml")}],
                        trials=[{"name": "dna", "recipe": str(CONFIGS / "dna.yaml"),
                                 "set": ["teacher.checkpoint={prepare:teacher}"]}])
    lines: list[str] = []
    outcome = run_study(study, tmp_path / "out", report=lines.append)
    assert not outcome.failures and len(outcome.results) == 1 and "preparing teacher" in lines[0]
    config = (tmp_path / "out" / "runs" / "dna" / "budget1" / "seed0" / "config.yaml").read_text()
    assert str((tmp_path / "out" / "prepare" / "teacher").resolve()) in config
    assert json.loads((tmp_path / "out" / "runs" / "dna" / "budget1" / "seed0" / "unit.json").read_text())[
        "overrides"][-3] == "teacher.checkpoint={prepare:teacher}"  # the record keeps the placeholder
    # the teacher's training is reported beside the trial's cost, not hidden
    records = [json.loads(line) for line in (tmp_path / "out" / "prepare" / "teacher" / "metrics.jsonl").open()]
    teacher_macs = [r for r in records if r.get("kind") == "train"][-1]["train_macs"]
    (prepared,) = json.loads((tmp_path / "out" / "study.json").read_text())["prepared"]
    assert prepared["name"] == "teacher" and prepared["used_by"] == ["dna"]
    assert prepared["train_macs"] == teacher_macs > 0
    assert (f"Prepared run teacher (dna_teacher.yaml, used by dna) trained once for the whole study: "
            f"{tmacs(teacher_macs)} TMACs") in (tmp_path / "out" / "study.md").read_text()
    assert outcome.results[0]["train_macs"] != teacher_macs
    lines.clear()
    run_study(study, tmp_path / "out", report=lines.append)
    assert not any("preparing" in line for line in lines)  # prepared once


def test_a_multi_process_unit_runs_as_a_ray_train_ddp_job(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the dev extra installs Ray: pip install -e '.[dev]'")
    import torch

    study = write_study(tmp_path / "tiny.yaml", seeds=[0])
    # from the CLI, on a local Ray instance of this machine's CPUs
    assert main(["study", str(study), "--out", str(tmp_path / "out"), "--engine", "ray", "--ray-processes", "2",
                 "--ray-cpus", "1"]) == 0
    run = tmp_path / "out" / "runs" / "nokd" / "budget1" / "seed0"
    assert (run / RESULT_FILE).is_file() and (tmp_path / "out" / "study.html").is_file()
    state = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)
    assert state["global_batch"] == 2 * 64  # two ranks of data.batch_size 64 trained it
    assert (tmp_path / "out" / "logs" / "nokd-budget1-seed0.rank1.log").is_file()


def test_ray_engine_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    study = str(write_study(tmp_path / "s.yaml"))
    assert main(["study", study, "--out", str(tmp_path / "o"), "--engine", "ray", "--ray-gpus", "2"]) == 2
    assert "give 0 or 1 GPU per process" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
        assert main(["study", study, "--out", str(tmp_path / "o"), "--engine", "ray"]) == 2
        assert "pip install 'supernet[ray]'" in capsys.readouterr().err
    pytest.importorskip("ray")
    with pytest.raises(StudyError, match="each unit asks for 4 CPUs, but the Ray cluster has 2"):
        run_study(study, tmp_path / "o", engine="ray", ray=RayResources(processes=2, cpus=2), ray_cpus=2,
                  report=lambda line: None)
    assert not list((tmp_path / "o" / "runs").rglob("result.json"))
