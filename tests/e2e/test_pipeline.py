"""Tiny end-to-end runs of every CLI command on real Fashion-MNIST: train, eval, search, export, report,
latency, demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import supernet
from supernet.cli import main
from supernet.cost import macs
from supernet.demo import run_demo
from supernet.search.evolution import SearchSettings
from training_helpers import QUICK, TINY_SPACE, small_data

TINY_SEARCH = ["--population", "12", "--parents", "4", "--mutations", "4", "--crossovers", "4", "--iterations", "2",
               "--recal-images", "128", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    small_data()
    out = tmp_path_factory.mktemp("pipeline") / "run"
    args = ["train", "configs/bignas.yaml", "--out", str(out), "--no-progress", "--set", "data.limit=512",
            "--set", "data.val_size=256", "--set", "train.epochs=2", "--set", "optim.lr=0.8"]
    for item in QUICK:
        args += ["--set", item]
    assert main(args) == 0
    return out


def test_eval_command(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(trained_run), "--arch", "largest", "--json", "--recal-images", "128"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "val" and out["images"] == 256 and 0.1 < out["top1"] <= 1.0
    assert (trained_run / "eval_cache.json").is_file()
    arch_file = trained_run.parent / "arch.json"
    arch_file.write_text(json.dumps(out["arch"]))
    assert main(["eval", str(trained_run), "--arch", str(arch_file), "--split", "test", "--recal-images", "128"]) == 0
    assert "test top-1" in capsys.readouterr().out
    assert main(["eval", str(trained_run), "--arch", "nowhere.json"]) == 2
    assert "nowhere.json not found" in capsys.readouterr().err


def test_search_export_and_report(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    search = tmp_path / "search"
    assert main(["search", str(trained_run), "--out", str(search), "--predictor", "--prescreen-keep", "3",
                 "--constraint", "macs<=0.8M", *TINY_SEARCH]) == 0
    printed = capsys.readouterr().out
    assert "mean Pareto accuracy" in printed and "MACs bucket" in printed
    front = json.loads((search / "front.json").read_text())
    assert front["front"] and all(c["macs"] <= 0.8e6 or c["arch"] in (front["smallest"]["arch"],
                                                                    front["largest"]["arch"]) for c in front["front"])
    assert all(c["test_top1"] is not None for c in front["front"])
    assert len(front["buckets"]) == 6 and 0.0 < front["mean_pareto_accuracy"] <= 1.0
    assert front["search"]["predictor"] is not None
    # the same options continue the saved search (nothing re-evaluated); other options are refused
    before = (search / "eval_cache.json").read_text()
    assert main(["search", str(trained_run), "--out", str(search), "--predictor", "--prescreen-keep", "3",
                 "--constraint", "macs<=0.8M", *TINY_SEARCH]) == 0
    assert json.loads((search / "front.json").read_text())["front"] == front["front"]
    assert (search / "eval_cache.json").read_text() == before
    capsys.readouterr()
    assert main(["search", str(trained_run), "--out", str(search), *TINY_SEARCH]) == 2
    assert "use a new --out" in capsys.readouterr().err

    budget = "macs<=0.6M"
    exported = tmp_path / "model"
    assert main(["export", str(trained_run), "--from-front", str(search), "--budget", budget, "--out", str(exported),
                 "--recal-images", "128"]) == 0
    assert "ONNX max |diff|" in capsys.readouterr().out
    model = supernet.load_subnet(exported)
    doc = json.loads((exported / "arch.json").read_text())
    space = supernet.spaces.from_dict(doc["space"])
    assert macs(space, supernet.Arch.from_dict(doc["arch"]), 10, 1) <= 0.6e6  # the budget holds
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert main(["export", str(trained_run), "--from-front", str(search), "--budget", "macs<=1", "--out",
                 str(tmp_path / "none")]) == 2
    assert "relax the budget" in capsys.readouterr().err

    report = tmp_path / "report"
    assert main(["report", str(trained_run), str(search), "--out", str(report)]) == 0
    html = (report / "index.html").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs and all(name in html for name in pngs)


def test_search_budget_mode(trained_run: Path, tmp_path: Path) -> None:
    search = tmp_path / "budgets"
    assert main(["search", str(trained_run), "--out", str(search), "--budgets", "macs<=0.3M", "macs<=0.6M",
                 *TINY_SEARCH]) == 0
    budgets = json.loads((search / "front.json").read_text())["budgets"]
    assert [b["budget"] for b in budgets] == ["macs<=300K", "macs<=600K"]
    for item, limit in zip(budgets, (0.3e6, 0.6e6)):
        assert item["best"] is None or item["best"]["macs"] <= limit


def test_latency_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "table.json"
    assert main(["latency", TINY_SPACE, "--out", str(table), "--repeats", "3", "--warmup", "1",
                 "--held-out", "3"]) == 0
    out = capsys.readouterr().out
    assert "prediction error on 3 held-out sub-networks" in out and table.is_file()


def test_demo_runs_and_continues(tmp_path: Path) -> None:
    small_data()
    overrides = [*QUICK, "data.limit=512", "data.val_size=256", "train.epochs=1", "optim.lr=0.8"]
    settings = SearchSettings(population=8, parents=4, parent_selection="buckets", mutations=4, crossovers=4, iterations=1,
                              prescreen_keep=3)
    budgets = ("macs<=0.4M", "macs<=0.9M")
    rows = run_demo(tmp_path, overrides=overrides, progress=False, search=settings, budgets=budgets,
                    finetune="macs<=0.9M")
    assert [r.budget for r in rows] == ["macs<=400K", "macs<=900K"]
    assert rows[0].finetuned_test_top1 is None and rows[1].finetuned_test_top1 is not None
    tuned = json.loads((tmp_path / "finetune" / "export" / "arch.json").read_text())["card"]
    assert tuned["before"]["top1"] == rows[1].test_top1 and tuned["test"]["top1"] == rows[1].finetuned_test_top1
    assert all(r.path.is_dir() and (r.path / "model.onnx").is_file() for r in rows)
    assert (tmp_path / "report" / "index.html").is_file()
    checkpoint = tmp_path / "run" / "checkpoints" / "latest.pt"
    stamp = checkpoint.stat().st_mtime_ns
    tuned_checkpoint = tmp_path / "finetune" / "checkpoints" / "latest.pt"
    tuned_stamp = tuned_checkpoint.stat().st_mtime_ns
    again = run_demo(tmp_path, progress=False, search=settings, budgets=budgets,  # continues, does not restart
                     finetune="macs<=0.9M")
    assert again[1].finetuned_test_top1 == rows[1].finetuned_test_top1
    assert tuned_checkpoint.stat().st_mtime_ns == tuned_stamp
    assert [(r.budget, r.macs) for r in again] == [(r.budget, r.macs) for r in rows]
    assert checkpoint.stat().st_mtime_ns == stamp  # training was already finished: nothing retrained
