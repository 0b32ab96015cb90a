"""`supernet study`: the study file, the budget rule, aggregation, the local runner's slots, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from supernet.cli import main
from supernet.study import (
    StudyError,
    compare,
    equal_cost_epochs,
    load_study,
    make_slots,
    mean_std,
    plan_units,
    slot_env,
    summarise,
)
from supernet.study.runner import RESULT_FILE, calibrate, train_command

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
    study = write_study(tmp_path / "tiny.yaml")
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

    # rerun: finished units are never rerun
    stamps = {u: (u.folder(out) / RESULT_FILE).stat().st_mtime_ns for u in (first, second)}
    assert main(["study", str(study), "--out", str(out)]) == 0
    assert "2 of 2 units already finished; running 0" in capsys.readouterr().err
    assert stamps == {u: (u.folder(out) / RESULT_FILE).stat().st_mtime_ns for u in (first, second)}

    # a changed study must not reuse a unit trained with other settings
    write_study(study, set=[*TINY, "optim.lr=0.5"])
    assert main(["study", str(study), "--out", str(out)]) == 2
    assert "use another --out, or delete that folder" in capsys.readouterr().err
    write_study(study, name="other")
    assert main(["study", str(study), "--out", str(out)]) == 2
    assert "holds another study ('tiny')" in capsys.readouterr().err


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
