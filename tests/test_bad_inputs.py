"""No command ends in a traceback: a table of bad inputs and faulty environments, each one clear line.

Every case runs the real command in-process (an uncaught exception fails the test) and checks the exit
status, that standard error ends in one line naming the problem, and that nothing already written is lost.
"""

from __future__ import annotations

import errno
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from supernet.checkpoint import RunDir, load_checkpoint, save_checkpoint
from supernet.cli import main
from training_helpers import QUICK, small_data

TRAIN = ["--no-progress", "--set", "data.limit=256", "--set", "data.val_size=256", "--set", "train.epochs=1",
         "--set", "train.eval_every_epochs=0"]
for _item in QUICK:
    TRAIN += ["--set", _item]
TINY_SEARCH = ["--population", "8", "--parents", "4", "--mutations", "2", "--crossovers", "2", "--iterations", "1",
               "--recal-images", "64", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    small_data()
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    assert main(["train", "configs/bignas.yaml", "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def search(run: Path) -> Path:
    out = run.parent / "search"
    assert main(["search", str(run), "--out", str(out), *TINY_SEARCH]) == 0
    return out


def copy_run(run: Path, where: Path, checkpoint: Callable[[dict], object] | bytes | None = None) -> Path:
    """A copy of the run whose latest.pt is replaced by raw bytes or a modified state."""
    import shutil

    shutil.copytree(run, where)
    latest = RunDir(where).latest
    if isinstance(checkpoint, bytes):
        latest.write_bytes(checkpoint)
    elif checkpoint is not None:
        state = load_checkpoint(latest)
        state.pop("format")
        result = checkpoint(state)
        save_checkpoint(latest, state if result is None else result)  # type: ignore[arg-type]
    return where


def test_any_bytes_are_an_unreadable_checkpoint(tmp_path: Path) -> None:
    """Random bytes fail inside torch's unpickler in many ways (IndexError, KeyError, ...): always one error."""
    from supernet.checkpoint import RunDirError

    path = tmp_path / "latest.pt"
    for seed in range(200):
        rng = random.Random(seed)
        path.write_bytes(rng.randbytes(rng.randrange(1, 3000)))
        with pytest.raises(RunDirError, match="cannot be read"):
            load_checkpoint(path)


def reshaped(state: dict) -> None:
    key = next(k for k, v in state["model"].items() if v.ndim == 4)
    state["model"][key] = torch.zeros(1, 1, 1, 1)


def broken_optimizer(state: dict) -> None:
    state["optimizer"] = {"state": {}, "param_groups": [{"params": [0]}]}


CHECKPOINT_CASES = {
    "random bytes": (random.Random(0).randbytes(2000), "cannot be read"),
    "foreign dict": (lambda state: {"weights": torch.zeros(3)}, "lacks config"),
    "reshaped tensor": (reshaped, "its weights do not fit its saved search space (shape"),
    "damaged optimizer": (broken_optimizer, "damaged training state"),
}


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("run directory:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("supernet "), err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_on_every_path_that_loads_one(run: Path, tmp_path: Path, case: str, capsys) -> None:
    damage, needle = CHECKPOINT_CASES[case]
    bad = copy_run(run, tmp_path / "bad", damage)
    before = RunDir(bad).latest.read_bytes()
    commands = [
        ["train", "--resume", str(bad), "--no-progress"],
        ["eval", str(bad), "--recal-images", "64"],
        ["search", str(bad), "--out", str(tmp_path / "s"), *TINY_SEARCH],
        ["export", str(bad), "--arch", "smallest", "--out", str(tmp_path / "x")],
        ["train", "configs/bignas.yaml", "--out", str(tmp_path / "student"), *TRAIN,
         "--set", "teacher.name=external", "--set", f"teacher.checkpoint={bad}"],
    ]
    for argv in commands:
        if case == "damaged optimizer" and argv[1] != "--resume":
            continue  # only resuming reads the optimizer state; the other paths load the weights fine
        assert main(argv) == 2, argv
        line = error_line(capsys)
        assert needle in line and str(RunDir(bad).latest) in line, (argv, line)
    assert RunDir(bad).latest.read_bytes() == before  # nothing was overwritten
    assert not (tmp_path / "x").exists()


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def config_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    out = str(tmp_path / "new")
    return [
        (["train", str(write(tmp_path, "latin1.yaml", b"seed: 0\nspace: caf\xe9\n")), "--out", out],
         "is not UTF-8 text"),
        (["train", str(write(tmp_path, "opts.yaml", "distill: {divergence: kl, options: {nope: 1}}\n")), "--out", out],
         "unexpected keyword argument 'nope'"),
        (["train", "configs/bignas.yaml", "--out", out, "--set",
          f"space={write(tmp_path, 'space.yaml', b'name: caf' + bytes([0xE9]) + b'')}"], "is not UTF-8 text"),
        (["train", "configs/bignas.yaml", "--out", out, "--set", "data.val_size=70000"],
         "data.val_size=70000 leaves no training images"),
        (["train", "configs/bignas.yaml", "--out", out, "--set", "data.limit=100", "--set", "data.val_size=10"],
         "fewer than one batch of 128 (data.batch_size x 1 processes); lower data.batch_size to at most 100"),
    ]


def test_bad_configs_and_data_fail_before_a_run_directory_exists(tmp_path: Path, capsys) -> None:
    small_data()
    for argv, needle in config_cases(tmp_path):
        assert main(argv) == 2, argv
        assert needle in error_line(capsys), argv
        assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir()), argv


def test_search_of_a_missing_run_creates_nothing(tmp_path: Path, capsys) -> None:
    assert main(["search", str(tmp_path / "nowhere"), *TINY_SEARCH]) == 2
    assert "nowhere not found; pass a run directory of `supernet train`" in error_line(capsys)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "is not a run directory (it has neither config.yaml nor checkpoints/latest.pt)" in error_line(capsys)


def test_bad_architecture_files(run: Path, tmp_path: Path, capsys) -> None:
    cases = {
        "truncated.json": ('{"arch": {"resolution": 28', "is not valid JSON"),
        "list.json": ("[1, 2]", "an architecture must be a JSON object, got list"),
        "latin1.json": (b"\xff\xfe{}", "is not valid JSON"),
        "partial.json": ('{"resolution": 28}', "architecture keys: missing"),
    }
    for name, (content, needle) in cases.items():
        path = write(tmp_path, name, content)
        assert main(["eval", str(run), "--arch", str(path), "--recal-images", "64"]) == 2, name
        assert needle in error_line(capsys), name


def test_bad_front_files_for_export(run: Path, search: Path, tmp_path: Path, capsys) -> None:
    import shutil

    text = (search / "front.json").read_text()
    cases = {
        "truncated": (text[: len(text) // 2], "is not valid JSON"),
        "not a front": ('{"format": 1}', "lacks a valid 'front'"),
        "bad member": (json.dumps({**json.loads(text), "front": [{"macs": 1}]}), "front[0] is not a sub-network record"),
    }
    for name, (content, needle) in cases.items():
        copy = tmp_path / name.replace(" ", "_")
        shutil.copytree(search, copy)
        (copy / "front.json").write_text(content)
        assert main(["export", str(run), "--from-front", str(copy), "--budget", "macs<=1M",
                     "--out", str(tmp_path / "x")]) == 2, name
        assert needle in error_line(capsys), name
    assert main(["export", str(run), "--from-front", str(search), "--budget", "latency<=1ms",
                 "--out", str(tmp_path / "x")]) == 2
    assert "has no latency figures (its search ran without --latency-table)" in error_line(capsys)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["eval", "RUN", "--recal-images", "-5"], "--recal-images: must be at least 1, got -5"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
        (["search", "RUN", "--population", "0"], "--population: must be at least 1, got 0"),
        (["search", "RUN", "--mutation-prob", "2"], "--mutation-prob: must lie in [0, 1], got 2.0"),
        (["latency", "fmnist", "--out", "t.json", "--repeats", "zero"], "--repeats: expected a whole number"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(argv: list[str], needle: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Every atomic write and every metrics append fails as on a full or read-only disk."""
    from supernet import fileio
    from supernet.training import metrics

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code), str(kwargs.get("dir") or (args[0] if args else "")))

    original_open = metrics.Path.open

    def refuse_appends(self, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if "a" in mode or "w" in mode:
            raise OSError(code, os.strerror(code), str(self))
        return original_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(metrics.Path, "open", refuse_appends)


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only")])
def test_full_and_read_only_disks(run: Path, search: Path, tmp_path: Path, monkeypatch, capsys, code: int,
                                  advice: str) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    fail_writes(monkeypatch, code)
    commands = [
        ["train", "configs/bignas.yaml", "--out", str(tmp_path / "new"), *TRAIN],
        ["train", "--resume", str(copy), "--no-progress", "--set", "train.epochs=2"],
        ["search", str(copy), "--out", str(tmp_path / "s"), *TINY_SEARCH],
        ["export", str(copy), "--arch", "smallest", "--out", str(tmp_path / "x"), "--recal-images", "64"],
        ["report", str(copy), str(search), "--out", str(tmp_path / "report")],
        ["latency", "fmnist", "--out", str(tmp_path / "t.json"), "--repeats", "1", "--warmup", "0", "--held-out", "0"],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        line = error_line(capsys)
        assert advice in line and "files written before were kept" in line, (argv, line)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    # eval measures, prints its result, and only warns that its cache could not be saved
    assert main(["eval", str(copy), "--recal-images", "64"]) == 0
    captured = capsys.readouterr()
    assert "val top-1" in captured.out
    assert "warning: evaluation cache" in captured.err and "kept in memory only" in captured.err


def test_report_skips_bad_metrics_records_and_says_so(run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with (copy / "metrics.jsonl").open("ab") as fh:
        fh.write(b'[1, 2]\n{"kind": "train", "step": "three"}\n\xff\xfe\n{"kind": "train", "step": 9, "loss"')
    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "skipped 4 malformed record(s) of metrics.jsonl" in page


def test_imagefolder_symlink_cycle_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from PIL import Image

    root = tmp_path / "folder"
    for split in ("train", "val"):
        (root / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / "cat" / "a.png")
    (root / "train" / "cat" / "loop").symlink_to(root / "train", target_is_directory=True)
    assert main(["train", "configs/bignas.yaml", "--out", str(tmp_path / "r"), "--set", "data.name=imagefolder",
                 "--set", f"data.root={root}", "--set", "data.val_size=0"]) == 2
    assert "a symbolic-link cycle" in error_line(capsys)


def test_command_errors_end_in_one_line_in_a_real_process(tmp_path: Path) -> None:
    """The console entry point itself: a bad input prints one line, no traceback, exit status 2."""
    import subprocess
    import sys

    bad = write(tmp_path, "latin1.yaml", b"seed: \xff\n")
    done = subprocess.run([sys.executable, "-m", "supernet", "train", str(bad), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is not UTF-8 text" in done.stderr
