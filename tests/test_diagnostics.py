"""EnNAS's diagnostics: teacher vs student accuracy and pairwise logit distance, per epoch, in the records."""

from __future__ import annotations

import math

import pytest
import torch

from supernet.report import DIAGNOSTICS_PLOT, write_report
from supernet.training.diagnostics import (
    GroupDiagnostics,
    epoch_record,
    group_diagnostics,
    mean_pairwise_distance,
)
from supernet.training.loop import Trainer
from supernet.training.metrics import read_metrics
from training_helpers import quick_config, small_data


def test_pairwise_distance_is_the_mean_euclidean_distance_over_pairs_and_images() -> None:
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0]])  # distances to a: 5, 0
    c = torch.tensor([[0.0, 0.0], [1.0, 3.0]])  # to a: 0, 2; to b: 5, 2
    assert mean_pairwise_distance([a, b, c]) == pytest.approx(((5 + 0) / 2 + (0 + 2) / 2 + (5 + 2) / 2) / 3)
    assert mean_pairwise_distance([a, a.clone()]) == 0
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_distance([a])


def test_group_and_epoch_records() -> None:
    labels = torch.tensor([0, 1, 1, 0])
    right = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    wrong = -right
    g = group_diagnostics([right, wrong], labels, teacher_logits=right)
    assert g == GroupDiagnostics(teacher_top1=1.0, student_top1=0.5, logit_distance=2.0)  # |2 e_k| per image
    no_teacher = group_diagnostics([right, right], labels, None)
    record = epoch_record([g, no_teacher])
    assert record["diag_groups"] == 2 and record["diag_student_top1"] == 0.75
    assert record["diag_teacher_top1"] == 1.0 and record["diag_teacher_gap"] == 0.25  # over groups with a teacher
    assert "diag_teacher_top1" not in epoch_record([no_teacher])


def _run(tmp_path, recipe: str, *overrides: str) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(quick_config(recipe, "train.epochs=1", "train.max_steps_per_epoch=3", *overrides),
                      tmp_path / "run", data=small_data(), progress=False)
    trainer.run()
    return trainer, [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "eval"]


def test_ennas_logs_its_ensemble_teacher_and_students_and_the_report_draws_them(tmp_path) -> None:
    trainer, evals = _run(tmp_path, "ennas.yaml", "distill.start_epoch=0", "train.diagnostic_draws=2")
    (record,) = evals
    assert record["diag_groups"] == 2
    for key in ("diag_teacher_top1", "diag_student_top1", "diag_logit_distance"):
        assert math.isfinite(record[key])
    assert record["diag_logit_distance"] > 0
    assert record["diag_teacher_gap"] == pytest.approx(record["diag_teacher_top1"] - record["diag_student_top1"])
    index = write_report([trainer.run_dir.root], [], tmp_path / "report")
    assert (tmp_path / "report" / DIAGNOSTICS_PLOT).stat().st_size > 0
    assert DIAGNOSTICS_PLOT in index.read_text()


def test_diagnostics_leave_training_untouched(tmp_path) -> None:
    """The draws use their own random stream and no cost counter: weights and cost equal a run without them."""
    on, _ = _run(tmp_path / "on", "bignas.yaml", "train.diagnostic_draws=1")
    off, evals = _run(tmp_path / "off", "bignas.yaml", "train.diagnostic_draws=0")
    assert "diag_groups" not in evals[0]
    assert on.counters["train_macs"] == off.counters["train_macs"]
    for (name, a), b in zip(on.net.state_dict().items(), off.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert on.rng.getstate() == off.rng.getstate()


def test_inplace_teacher_is_the_largest_network(tmp_path) -> None:
    _, evals = _run(tmp_path, "bignas_kl.yaml", "train.diagnostic_draws=1")
    record = evals[0]
    # sandwich: largest (the teacher) + smallest + 2 random students
    assert record["diag_teacher_top1"] == pytest.approx(record["largest_top1"])
