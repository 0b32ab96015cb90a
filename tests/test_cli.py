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
    assert "sub-networks  2.045e+09" in out
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
