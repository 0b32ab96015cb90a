"""Training cost counts everything a recipe runs: every convolution and linear layer, measured as it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from supernet import Supernet, spaces
from supernet.cost import ExecutedMacs
from supernet.training.loop import Trainer
from supernet.training.metrics import PASS_KINDS, read_metrics
from training_helpers import quick_config, small_data

RECIPES = ["alphanet.yaml", "bignas.yaml", "nokd.yaml", "attentivenas.yaml", "deps.yaml", "ennas.yaml", "ofa.yaml",
           "compofa.yaml", "cream.yaml", "dna.yaml"]
TINY_CHOICE = str(Path(__file__).parent / "data" / "tiny_choice.yaml")
# Cream's board fills and its meta network updates within the one epoch; DNA needs one resolution
EXTRA = {"cream.yaml": ["teacher.meta_update_every=3", "distill.start_epoch=0.2"], "dna.yaml": [f"space={TINY_CHOICE}"]}


def block_teacher() -> torch.nn.Module:
    space = spaces.get(TINY_CHOICE)
    return Supernet(space, 10, 1).extract(space.largest()).eval()


@pytest.mark.parametrize("recipe", RECIPES)
def test_logged_training_macs_match_what_ran(tmp_path, recipe: str) -> None:
    overrides = ["train.eval_every_epochs=0"] + ([] if recipe in ("ofa.yaml", "compofa.yaml") else ["train.epochs=1"])
    overrides += EXTRA.get(recipe, [])
    teacher = block_teacher() if recipe == "dna.yaml" else None
    trainer = Trainer(quick_config(recipe, *overrides), tmp_path / "run", data=small_data(), teacher_module=teacher,
                      progress=False)
    with ExecutedMacs() as executed:
        trainer.run()
    logged = trainer.counters["train_macs"]
    assert logged == pytest.approx(executed.total, rel=0.02), (recipe, logged, executed.total)
    assert logged == sum(trainer.counters[f"{kind}_macs"] for kind in PASS_KINDS)
    expected_kinds = {
        "attentivenas.yaml": {"gradient", "scoring"},  # in-place teacher: the largest trains in the step
        "ennas.yaml": {"gradient", "teacher", "preparation"},  # ensemble members; diversity estimation
        "ofa.yaml": {"gradient", "teacher"},  # the frozen full network
        "compofa.yaml": {"gradient", "teacher"},
        "cream.yaml": {"gradient", "teacher"},  # the chosen board member, the matching scores, the look-ahead
        "dna.yaml": {"gradient", "teacher"},  # the teacher up to its last block
    }.get(recipe, {"gradient"})
    if recipe == "cream.yaml":
        assert trainer.teacher.meta_updates > 0 and trainer.teacher.board.entries
    assert {kind for kind in PASS_KINDS if trainer.counters[f"{kind}_macs"] > 0} == expected_kinds, recipe
    last = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"][-1]
    assert last["train_macs"] <= logged and all(f"{kind}_macs" in last for kind in PASS_KINDS)
    assert last["elapsed"] >= last["wall_time"] > 0 and last["gpu_hours"] == 0.0  # no GPU here


def test_the_last_logged_record_holds_the_whole_runs_cost(tmp_path) -> None:
    # logging every 1000 steps: the first step and the last are still logged, the last with the full cost
    config = quick_config("nokd.yaml", "train.epochs=1", "train.eval_every_epochs=0", "train.log_every_steps=1000")
    trainer = Trainer(config, tmp_path / "run", data=small_data(), progress=False)
    trainer.run()
    steps = [r["step"] for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"]
    assert steps == [1, trainer.schedule.total_steps] and trainer.schedule.total_steps > 2
    last = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"][-1]
    assert last["train_macs"] == trainer.counters["train_macs"] and last["wall_time"] == trainer.counters["wall_time"]
