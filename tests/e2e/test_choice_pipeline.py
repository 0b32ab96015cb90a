"""Choice-block supernets end to end on real Fashion-MNIST: SPOS trains, then latency table, search under
latency, export (ONNX checked) and report on its run; EnNAS trains on the same space (a tiny one here:
configs/spos.yaml and ennas.yaml name fmnist_choice, which tests/test_recipes.py checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import supernet
from supernet.cli import main
from supernet.report import arch_text
from supernet.training.metrics import read_metrics
from training_helpers import small_data

TINY_CHOICE = str(Path(__file__).parent.parent / "data" / "tiny_choice.yaml")
SMALL = ["--no-progress", "--set", f"space={TINY_CHOICE}", "--set", "data.limit=2048", "--set", "data.val_size=256", "--set", "data.batch_size=32",
         "--set", "train.recal_images=128", "--set", "train.eval_images=128", "--set", "train.log_every_steps=1",
         "--set", "train.diagnostic_draws=0", "--set", "optim.lr=1.6"]
TINY_SEARCH = ["--population", "8", "--parents", "4", "--mutations", "4", "--crossovers", "4", "--iterations", "1",
               "--recal-images", "128", "--no-progress"]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def spos_run(tmp_path_factory) -> Path:
    small_data(2048, 256)
    out = tmp_path_factory.mktemp("choice") / "spos"
    assert main(["train", "configs/spos.yaml", "--out", str(out), "--set", "train.epochs=2", *SMALL]) == 0
    return out


def test_spos_trains_one_path_per_step_and_its_loss_falls(spos_run: Path) -> None:
    records = [r for r in read_metrics(spos_run) if r["kind"] == "train"]
    assert all(r["networks"] == 1 and r["teacher_macs"] == 0 for r in records)  # one path, labels only
    losses = [r["loss"] for r in records]
    assert mean(losses[-30:]) < mean(losses[:30]) - 0.1, losses


def test_search_under_latency_export_and_report_on_a_choice_run(spos_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "latency.json"
    assert main(["latency", TINY_CHOICE, "--out", str(table), "--repeats", "3", "--warmup", "1",
                 "--held-out", "2"]) == 0
    entries = json.loads(table.read_text())["entries"]
    assert any(k.startswith("choice(op=xception") for k in entries) and not any("op=identity" in k for k in entries)
    search = tmp_path / "search"
    limit = sorted(entries.values())[len(entries) // 2] * 12  # a budget most sub-networks meet, not all
    assert main(["search", str(spos_run), "--out", str(search),
                 "--latency-table", str(table), "--constraint", f"latency<={limit:.3f}ms", *TINY_SEARCH]) == 0
    front = json.loads((search / "front.json").read_text())
    assert front["front"] and all(c["test_top1"] is not None for c in front["front"])
    space = supernet.spaces.get(TINY_CHOICE)
    chosen = supernet.Arch.from_dict(front["front"][0]["arch"])
    assert space.contains(chosen)
    capsys.readouterr()
    exported = tmp_path / "model"
    assert main(["export", str(spos_run), "--arch", str(_write(tmp_path / "arch.json", chosen)), "--out", str(exported),
                 "--recal-images", "128"]) == 0
    assert "ONNX max |diff|" in capsys.readouterr().out
    model = supernet.load_subnet(exported)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    card = (exported / "MODEL_CARD.md").read_text()
    assert "choice width 16 x2" in card
    report = tmp_path / "report"
    assert main(["report", str(spos_run), str(search), str(exported), "--out", str(report)]) == 0
    html = (report / "index.html").read_text()
    assert arch_text(chosen.to_dict()) in html


def _write(path: Path, arch: supernet.Arch) -> Path:
    path.write_text(arch.to_json())
    return path


def test_ennas_trains_on_the_choice_space(tmp_path: Path) -> None:
    small_data(2048, 256)
    out = tmp_path / "ennas"
    assert main(["train", "configs/ennas.yaml", "--out", str(out), "--set", "train.epochs=2", *SMALL,
                 "--set", "data.limit=1024", "--set", "train.epoch_fraction=1"]) == 0  # enough steps to see it learn
    records = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert all(r["networks"] == 4 for r in records) and records[-1]["preparation_macs"] > 0
    losses = [r["loss"] for r in records]
    assert mean(losses[-10:]) < mean(losses[:10]) - 0.1, losses


def test_dna_distils_block_wise_from_a_trained_run_then_searches_by_block_loss(spos_run: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "dna"
    assert main(["train", "configs/dna.yaml", "--out", str(out), "--set", "train.epochs=1",
                 "--set", f"teacher.checkpoint={spos_run}", *SMALL, "--set", "optim.lr=0.4"]) == 0
    records = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert all(r["networks"] == 1 and r["teacher_macs"] > 0 for r in records)  # one path, the teacher counted
    block = [r["loss_block1"] for r in records]  # tiny_choice is one block: the stem to the last stage
    assert mean(block[-10:]) < 0.8 * mean(block[:10]), block
    search = tmp_path / "search"
    assert main(["search", str(out), "--out", str(search), "--rank-by", "block_loss", "--block-images", "64",
                 *TINY_SEARCH]) == 0
    assert "ranked by block mse" in capsys.readouterr().out
    front = json.loads((search / "front.json").read_text())
    assert front["rank_by"] == "block_loss" and all(c["block_loss"] > 0 for c in front["evaluated"])
    losses = [c["block_loss"] for c in sorted(front["front"], key=lambda c: c["macs"])]
    assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)  # costlier: lower loss
    assert all(c["val_top1"] is not None and c["test_top1"] is not None for c in front["front"])
    exported = tmp_path / "export"
    budget = front["front"][-1]["macs"]
    assert main(["export", str(out), "--from-front", str(search), "--budget", f"macs<={budget}",
                 "--out", str(exported)]) == 0
    assert "ONNX max |diff|" in capsys.readouterr().out
    chosen = json.loads((exported / "arch.json").read_text())["arch"]
    assert chosen == front["front"][-1]["arch"]  # the lowest block loss within the budget
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
