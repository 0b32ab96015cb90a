"""Recovery from kills, interrupts and stale state: every path a user can take leads somewhere that works."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from supernet.checkpoint import RunDir, load_checkpoint
from supernet.cli import main
from supernet.search.job import _PredictorScreen
from supernet.training.loop import Trainer
from supernet.training.metrics import MetricsLog, read_metrics
from training_helpers import QUICK, small_data

RECIPE = "configs/bignas.yaml"
# 256 training images in batches of 32: 8 steps per epoch on the tiny space, about a second per epoch.
TRAIN_SETTINGS = ["data.limit=256", "data.val_size=256", "train.eval_every_epochs=0", "train.keep_epoch_checkpoints=true",
                  *QUICK]
SEARCH = ["--population", "12", "--parents", "4", "--mutations", "6", "--crossovers", "6", "--iterations", "3",
          "--recal-images", "128", "--no-progress"]


def train_args(out: Path, *overrides: str) -> list[str]:
    args = ["train", RECIPE, "--out", str(out), "--no-progress"]
    for item in [*TRAIN_SETTINGS, *overrides]:
        args += ["--set", item]
    return args


def model_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunDir(run).latest)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = model_state(a), model_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and lines, err
    assert len(lines) == 1 or lines[-2].startswith("run directory:"), err
    return lines[-1]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two uninterrupted epochs (16 steps): what every recovered run must end equal to."""
    small_data()
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_args(out, "train.epochs=2")) == 0
    return out


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int, presses: int = 1) -> None:
    """Press Ctrl-C `presses` times while training step `step` runs."""
    original = Trainer.train_step

    def train_step(self: Trainer, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.global_step == step:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)


# -- training ---------------------------------------------------------------------------------------


def test_ctrl_c_checkpoints_the_step_and_resume_is_exact(
    tmp_path: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    interrupt_at(monkeypatch, 5)
    assert main(train_args(out, "train.epochs=2")) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 6/16; checkpoint written, continue with `supernet train --resume {out}`" in err
    assert "Traceback" not in err
    assert load_checkpoint(RunDir(out).latest)["global_step"] == 6  # the step that was running finished
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert_same_weights(out, reference_run)


def test_second_ctrl_c_stops_at_once_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    small_data()
    interrupt_at(monkeypatch, 2, presses=2)
    assert main(train_args(tmp_path / "run", "train.epochs=1")) == 130
    line = one_error_line(capsys.readouterr().err)
    assert "interrupted; the run continues from its last checkpoint with `supernet train --resume" in line


def test_run_killed_before_its_first_checkpoint_names_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small_data()
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")  # what a kill before the first checkpoint leaves
    assert main(["train", "--resume", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "stopped before its first checkpoint" in line and f"--out {out} --force" in line
    assert main(train_args(out, "train.epochs=1")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "holds no checkpoint to resume" in line and "--force" in line and "--resume" not in line
    assert main([*train_args(out, "train.epochs=1"), "--force"]) == 0


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_max_steps_must_be_a_positive_step(steps: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", RECIPE, "--max-steps", steps])
    assert exit_info.value.code == 2
    assert "--max-steps: must be at least 1" in capsys.readouterr().err


def test_max_steps_behind_the_run_is_refused(reference_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(reference_run), "--max-steps", "4", "--no-progress"]) == 2
    assert "--max-steps 4 is not beyond the run's step 16" in capsys.readouterr().err


def test_resume_with_overrides_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small_data()
    out = tmp_path / "run"
    assert main([*train_args(out, "train.epochs=1"), "--max-steps", "4"]) == 0
    assert main(["train", "--resume", str(out), "--no-progress", "--set", "optim.lr=0.05",
                 "--set", "train.epochs=2"]) == 0
    assert "finished at step 16/16" in capsys.readouterr().out
    resumed = [r for r in read_metrics(out) if r["kind"] == "resume"]
    assert resumed == [{"kind": "resume", "step": 4, "overrides": {"optim.lr": 0.05, "train.epochs": 2},
                        "from_epoch": None}]
    saved = load_checkpoint(RunDir(out).latest)["config"]
    assert saved["optim"]["lr"] == 0.05 and saved["train"]["epochs"] == 2
    assert "lr: 0.05" in (out / "config.yaml").read_text()
    assert main(["train", "--resume", str(out), "--set", "space=alphanet"]) == 2
    assert "--set space cannot change on --resume" in capsys.readouterr().err


def test_nonfinite_stop_gives_advice_that_works(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small_data()
    out = tmp_path / "run"
    assert main(train_args(out, "train.epochs=1", "train.max_nonfinite_steps=2", "optim.label_smoothing=0")) == 0
    # a second epoch at an absurd learning rate diverges and stops the run
    assert main(["train", "--resume", str(out), "--no-progress", "--set", "train.epochs=2",
                 "--set", "optim.lr=1e30"]) == 3
    advice = capsys.readouterr().err
    assert f"`supernet train --resume {out} --set optim.lr=5e+29`" in advice
    assert "add --from-epoch N to restart from an earlier epoch's checkpoint (kept: 1)" in advice
    # the advised command, with a sane rate and the epoch it names, finishes the run
    assert main(["train", "--resume", str(out), "--set", "optim.lr=0.05", "--from-epoch", "1", "--no-progress"]) == 0
    resumed = [r for r in read_metrics(out) if r["kind"] == "resume"][-1]
    assert resumed["overrides"] == {"optim.lr": 0.05, "train.epochs": 2} and resumed["from_epoch"] == 1
    assert "finished at step 16/16" in capsys.readouterr().out


def test_from_epoch_retrains_from_an_epoch_checkpoint_exactly(
    tmp_path: Path, reference_run: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = model_state(out)
    assert main(["train", "--resume", str(out), "--from-epoch", "1", "--no-progress"]) == 0
    assert "finished at step 16/16" in capsys.readouterr().out
    assert_same_weights(out, reference_run)  # epoch 2 trained again, bit for bit
    superseded = list((out / "checkpoints").glob("superseded-step8-*"))
    assert len(superseded) == 1
    kept = superseded[0]
    assert sorted(p.name for p in kept.iterdir()) == ["epoch_002.pt", "latest.pt", "metrics.jsonl"]
    assert all(torch.equal(v, load_checkpoint(kept / "latest.pt")["model"][k]) for k, v in before.items())
    assert next(r for r in read_metrics(out) if r["kind"] == "resume")["from_epoch"] == 1
    assert main(["train", "--resume", str(out), "--from-epoch", "7"]) == 2
    assert "epoch checkpoints kept in" in capsys.readouterr().err
    assert main(["train", RECIPE, "--out", str(tmp_path / "x"), "--from-epoch", "1"]) == 2
    assert "--from-epoch N goes with --resume" in capsys.readouterr().err


def test_orphaned_temporary_files_are_removed_on_start(tmp_path: Path, reference_run: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    orphans = [out / "checkpoints" / ".latest.pt.a1b2c3.tmp", out / ".metrics.jsonl.d4e5f6.tmp"]
    for path in orphans:
        path.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(out), "--no-progress", "--set", "train.epochs=3"]) == 0
    assert not any(path.exists() for path in orphans)


def test_force_checks_the_whole_directory_before_deleting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    small_data()
    out, elsewhere = tmp_path / "run", tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep.pt").write_bytes(b"someone else's file")
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    assert main([*train_args(out, "train.epochs=1"), "--force"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoints is a symbolic link" in line
    assert (out / "config.yaml").read_text() == "seed: 0\n" and (out / "metrics.jsonl").exists()
    assert (elsewhere / "keep.pt").read_bytes() == b"someone else's file"


def test_resume_from_another_directory_uses_the_saved_space(
    tmp_path: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    monkeypatch.chdir(tmp_path)  # the config names the space by a path relative to the repository
    assert main(["train", "--resume", str(out), "--no-progress", "--set", "train.epochs=3"]) == 0


def test_tensorboard_keeps_the_scalars_of_the_resumed_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path)
    log = MetricsLog(run)
    for step in (1, 2, 3):
        log.write({"kind": "eval", "step": step, "top1": step / 10})
    log.flush()
    resumed = MetricsLog(run, truncate_after=2)  # the checkpoint was written at step 2; step 3 is redone
    resumed.write({"kind": "eval", "step": 3, "top1": 0.9})
    resumed.flush()
    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("eval/top1")] == [(1, 0.1), (2, 0.2), (3, 0.9)]


# -- search ------------------------------------------------------------------------------------------


def search_args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["search", str(run), "--out", str(out), "--predictor", "--prescreen-keep", "4", *SEARCH, *extra]


def test_killed_predictor_search_continues_to_the_same_front(
    tmp_path: Path, reference_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert main(search_args(reference_run, tmp_path / "whole")) == 0
    whole = json.loads((tmp_path / "whole" / "front.json").read_text())
    fits = []
    original = _PredictorScreen.__call__

    def screen(self, children, k, evaluated):  # type: ignore[no-untyped-def]
        fits.append(len(evaluated))
        if len(fits) == 2:  # killed in the second generation, after one was saved
            raise KeyboardInterrupt
        return original(self, children, k, evaluated)

    monkeypatch.setattr(_PredictorScreen, "__call__", screen)
    assert main(search_args(reference_run, tmp_path / "killed")) == 130
    assert "run the same command again to continue" in one_error_line(capsys.readouterr().err)
    state = json.loads((tmp_path / "killed" / "search_state.json").read_text())
    assert state["generation"] == 1
    monkeypatch.setattr(_PredictorScreen, "__call__", lambda self, c, k, e: (fits.append(len(e)), original(self, c, k, e))[1])
    assert main(search_args(reference_run, tmp_path / "killed")) == 0
    assert fits[2] == fits[1] > 12  # the resumed screen is fit on the restored evaluations
    resumed = json.loads((tmp_path / "killed" / "front.json").read_text())
    for key in ("front", "evaluated", "buckets", "mean_pareto_accuracy", "smallest", "largest"):
        assert resumed[key] == whole[key], key


def test_search_state_is_tied_to_its_checkpoint(tmp_path: Path, reference_run: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    out = tmp_path / "search"
    assert main(search_args(run, out)) == 0
    assert main(search_args(run, out)) == 0  # the same checkpoint: the saved search is reused
    assert main(["train", "--resume", str(run), "--no-progress", "--set", "train.epochs=3"]) == 0
    capsys.readouterr()
    assert main(search_args(run, out)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "its accuracies are stale; pass --force to start the search over" in line
    before = json.loads((out / "front.json").read_text())
    assert main([*search_args(run, out), "--force"]) == 0
    after = json.loads((out / "front.json").read_text())
    assert after["checkpoint"] != before["checkpoint"]
    assert after["evaluated"] != before["evaluated"]  # measured again on the new weights
    assert main(search_args(reference_run, out)) == 2  # another run into the same directory
    assert "stale" in capsys.readouterr().err


def test_search_progress_moves_during_the_population_and_the_test_split(reference_run: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    args = search_args(reference_run, tmp_path / "s", "--population", "40", "--iterations", "1")
    args.remove("--no-progress")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "initial population 32/40" in captured.err and "initial population 40/40" in captured.err
    assert "test split" in captured.err
    assert "predictor: held-out Kendall tau" in captured.out
    front = json.loads((tmp_path / "s" / "front.json").read_text())
    assert -1.0 <= front["search"]["predictor"]["kendall_tau"] <= 1.0
    assert front["images"] == {"val": 256, "test": 10000}


def test_every_option_help_shows_its_default() -> None:
    import re

    from supernet.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        options = sub.format_help().split("options:", 1)[1]
        blocks = re.split(r"\n(?=  -)", options)  # one block per option: its flags, then its wrapped help
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, [], "==SUPPRESS=="):
                block = next(b for b in blocks if b.strip().startswith(action.option_strings[0]))
                assert "default" in block, (name, action.option_strings, block)
