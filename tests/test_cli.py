"""The `supernet` command line: help, version, `space`, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import supernet
from supernet.cli import main


def test_space_prints_summary(capsys: pytest.CaptureFixture) -> None:
    assert main(["space", "fmnist"]) == 0
    out = capsys.readouterr().out
    assert "search space 'fmnist'" in out
    assert "sub-networks  1.534e+09" in out
    assert "smallest" in out and "largest" in out and "MMACs" in out and "10 classes" in out


def test_space_json_is_machine_readable(capsys: pytest.CaptureFixture) -> None:
    assert main(["space", "alphanet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["smallest"]["macs"] == 203_389_568  # the smallest AlphaNet sub-network is A0's shape
    assert data["largest"]["macs"] > data["smallest"]["macs"]
    assert data["size"] == supernet.spaces.get("alphanet").size()


def test_space_from_yaml_and_num_classes(tmp_path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "stem: {widths: [8]}\nstages: [{widths: [8], depths: [1], kernels: [3], expand_ratios: [1]}]\n"
        "head: {widths: [16]}\nresolutions: [16]\n"
    )
    assert main(["space", str(path), "--num-classes", "7"]) == 0
    assert "7 classes" in capsys.readouterr().out


def test_bad_space_is_one_line_error(tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert main(["space", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown search space 'nope'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("stem: {widths: [8]}\nstages: []\nhead: {widths: [16]}\nresolutions: [16]\n")
    assert main(["space", str(bad)]) == 2
    assert "stages must list at least one stage" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "usage: supernet" in capsys.readouterr().out


def test_module_entry_point_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "supernet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"supernet {supernet.__version__}"
    out = subprocess.run([sys.executable, "-m", "supernet", "space", "--help"], capture_output=True, text=True, check=True)
    assert "MACs" in out.stdout


def test_train_pause_and_resume_from_the_cli(tmp_path, capsys: pytest.CaptureFixture) -> None:
    from training_helpers import QUICK, small_data

    small_data()
    out = tmp_path / "run"
    args = ["train", "configs/bignas.yaml", "--out", str(out), "--no-progress", "--max-steps", "2",
            "--set", "data.limit=256", "--set", "train.epochs=1", "--set", "train.eval_every_epochs=0"]
    for item in QUICK:
        args += ["--set", item]
    assert main(args) == 0
    assert "paused" in capsys.readouterr().out
    assert main(args) == 2  # the run directory exists: refuse to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "finished at step 8/8" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "--set", "data.batch_size=8"]) == 2
    assert "--set data.batch_size cannot change on --resume" in capsys.readouterr().err
    assert main(["train", "configs/bignas.yaml", "--resume", str(out)]) == 2
    assert "drop CONFIG" in capsys.readouterr().err


def test_train_bad_config_is_one_line_error(tmp_path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 0.1, momentun: 0.9}\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key 'optim.momentun'" in err and err.count("\n") == 0
    assert not (tmp_path / "r").exists()  # nothing written for a bad config
    assert main(["train", "configs/bignas.yaml", "--set", "data.root=/nowhere", "--out", str(tmp_path / "r2")]) == 2
    assert "/nowhere" in capsys.readouterr().err
    leftover = tmp_path / "r2"
    assert not leftover.exists() or not any(leftover.iterdir())  # nothing half-written to trip a retry


def test_search_defaults_are_alphanets_protocol() -> None:
    """512 random sub-networks, then 19 generations of 128 mutations and 128 crossovers: 5,376 evaluations."""
    from supernet.cli import build_parser
    from supernet.search.evolution import SearchSettings

    args = build_parser().parse_args(["search", "runs/x"])
    settings = SearchSettings()
    assert (args.population, args.iterations, args.mutations, args.crossovers, args.parents) == (
        settings.population, settings.iterations, settings.mutations, settings.crossovers, settings.parents)
    assert args.population + args.iterations * (args.mutations + args.crossovers) == 5376
    assert (args.rank_by, args.block_images, args.block_measure) == ("val_top1", 1000, "mse")
