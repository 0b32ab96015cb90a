"""EnNAS's training diagnostics (EnNAS section 4.2-4.3, Figures 1 and 2), measured on the val split.

Per epoch, draw groups of sub-networks with the recipe's own sampler (as one training step would);
per group, measure the teacher's top-1 against the mean top-1 of its students, and the diversity of the
students: the Euclidean distance between the logits of each pair, averaged over pairs and images. The
paper draws 100 groups per epoch on ImageNet's val set (`train.diagnostic_draws`).

The teacher of a group is what the recipe distils from: the CE-optimal ensemble of the group (EnNAS),
or its largest sub-network (in-place KD). The ensemble's weights are solved on a training batch and
applied to val, so the reported accuracy is not fitted to the labels it is measured on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

TeacherOf = Callable[[Sequence[Tensor]], Tensor | None]


@dataclass(frozen=True)
class GroupDiagnostics:
    """One group of sampled sub-networks: teacher and mean student top-1, mean pairwise logit distance."""

    teacher_top1: float | None
    student_top1: float
    logit_distance: float


def top1(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose arg-max is the label."""
    return float((logits.argmax(dim=1) == labels).double().mean())


def mean_pairwise_distance(logits: Sequence[Tensor]) -> float:
    """Euclidean distance between two members' logits of one image, averaged over images and member pairs."""
    if len(logits) < 2:
        raise ValueError(f"diversity needs at least 2 sub-networks, got {len(logits)}")
    distances = [torch.linalg.vector_norm(a.double() - b.double(), dim=1).mean() for a, b in
                 itertools.combinations(logits, 2)]
    return float(torch.stack(distances).mean())


def group_diagnostics(student_logits: Sequence[Tensor], labels: Tensor, teacher_logits: Tensor | None) -> GroupDiagnostics:
    """The diagnostics of one group from its members' val logits (and its teacher's, when it has one)."""
    return GroupDiagnostics(
        teacher_top1=None if teacher_logits is None else top1(teacher_logits, labels),
        student_top1=sum(top1(z, labels) for z in student_logits) / len(student_logits),
        logit_distance=mean_pairwise_distance(student_logits),
    )


def epoch_record(groups: Sequence[GroupDiagnostics]) -> dict[str, float]:
    """Means over an epoch's groups, as logged with the per-epoch evaluation."""
    if not groups:
        raise ValueError("no groups were measured")
    record = {
        "diag_groups": float(len(groups)),
        "diag_student_top1": sum(g.student_top1 for g in groups) / len(groups),
        "diag_logit_distance": sum(g.logit_distance for g in groups) / len(groups),
    }
    teachers = [g.teacher_top1 for g in groups if g.teacher_top1 is not None]
    if teachers:
        record["diag_teacher_top1"] = sum(teachers) / len(teachers)
        record["diag_teacher_gap"] = record["diag_teacher_top1"] - record["diag_student_top1"]
    if not all(math.isfinite(v) for v in record.values()):
        raise ValueError(f"non-finite diagnostics {record}")
    return record
