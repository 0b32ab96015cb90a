"""Teachers: where the students' soft targets come from in one step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from supernet.cost import count_macs_by_hooks
from supernet.data import resize_batch
from supernet.distill import NoFiniteMinimiserError, ensemble_teacher
from supernet.space import Arch
from supernet.training.cream import CreamTeacher

FrozenForward = Callable[[Arch], Tensor]  # logits of an arch on the step's batch, no grad, BN stats untouched


class Teacher(Protocol):
    """Produces the step's soft targets (teacher logits), or None when students learn from labels only."""

    def before_step(self, archs: Sequence[Arch], images: Tensor, labels: Tensor, forward: FrozenForward) -> Tensor | None:
        """Targets known before any student trains (ensemble, external, in-place without the full model)."""
        ...

    def from_full(self, full_logits: Tensor, targets: Tensor | None) -> Tensor | None:
        """Targets once the full model has run in this step (in-place distillation)."""
        ...

    def external_macs(self, images: Tensor) -> int:
        """Multiply-adds this step's targets cost outside the supernet (a frozen external network)."""
        ...


class NoTeacher:
    """Students train on labels only (the 'no distillation' baseline)."""

    def before_step(self, archs: Sequence[Arch], images: Tensor, labels: Tensor, forward: FrozenForward) -> None:
        return None

    def from_full(self, full_logits: Tensor, targets: Tensor | None) -> None:
        return None

    def external_macs(self, images: Tensor) -> int:
        return 0


@dataclass
class InplaceTeacher:
    """The largest sub-network's detached logits of the same step (BigNAS, AlphaNet in-place KD)."""

    largest: Arch

    def before_step(self, archs: Sequence[Arch], images: Tensor, labels: Tensor, forward: FrozenForward) -> Tensor | None:
        if archs and archs[0] == self.largest:
            return None  # the loop trains it first and hands its logits to from_full
        return forward(self.largest)

    def from_full(self, full_logits: Tensor, targets: Tensor | None) -> Tensor:
        return full_logits.detach()

    def external_macs(self, images: Tensor) -> int:
        return 0  # its passes run through the supernet, which counts them


@dataclass
class EnsembleTeacher:
    """EnNAS: the CE-optimal weighted ensemble of the step's sampled sub-networks (EnNAS Eq. 2).

    The weights are unconstrained but for sum(w) = 1 unless `bound` or `nonnegative` says otherwise. A
    batch that some weighting separates has no finite optimum: that batch is solved with |w_i| <=
    `fallback_bound` instead and counted in `separable_batches` (logged with the training records).
    """

    weights: str = "optimal"
    nonnegative: bool = False
    bound: float | None = None
    fallback_bound: float = 10.0
    last_weights: Tensor | None = None
    separable_batches: int = 0

    def before_step(self, archs: Sequence[Arch], images: Tensor, labels: Tensor, forward: FrozenForward) -> Tensor:
        teacher, w, separable = self.combine([forward(a) for a in archs], labels)
        self.separable_batches += separable
        self.last_weights = w
        return teacher

    def combine(self, logits: Sequence[Tensor], labels: Tensor) -> tuple[Tensor, Tensor, bool]:
        """Teacher logits, weights, and whether the batch was separable (solved under `fallback_bound`)."""
        try:
            teacher, w = ensemble_teacher(logits, labels, weights=self.weights, nonnegative=self.nonnegative,
                                          bound=self.bound)
            return teacher, w, False
        except NoFiniteMinimiserError:
            teacher, w = ensemble_teacher(logits, labels, weights=self.weights, nonnegative=self.nonnegative,
                                          bound=self.fallback_bound)
            return teacher, w, True

    def from_full(self, full_logits: Tensor, targets: Tensor | None) -> Tensor | None:
        return targets

    def external_macs(self, images: Tensor) -> int:
        return 0  # its members run through the supernet, which counts them


@dataclass
class ExternalTeacher:
    """A frozen trained network (a checkpoint of this tool, a snapshot of the full model, or any module)."""

    module: nn.Module
    resolution: int | None = None
    _macs: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False)

    def before_step(self, archs: Sequence[Arch], images: Tensor, labels: Tensor, forward: FrozenForward) -> Tensor:
        self.module.eval()
        x = images if self.resolution is None else resize_batch(images, self.resolution)
        with torch.no_grad():
            return self.module(x).float()

    def from_full(self, full_logits: Tensor, targets: Tensor | None) -> Tensor | None:
        return targets

    def external_macs(self, images: Tensor) -> int:
        """The frozen network's multiply-adds on `images`: measured once per input shape with hooks."""
        side = images.shape[-1] if self.resolution is None else self.resolution
        shape = (1, images.shape[1], side, side)
        if shape not in self._macs:
            self._macs[shape] = count_macs_by_hooks(self.module, shape)
        return self._macs[shape] * images.shape[0]


def teacher_stats(teacher: Teacher) -> dict[str, float]:
    """What a teacher reports in the training records: the ensemble's separable batches so far; Cream's
    board size, this step's KD weight m (NaN while training on labels only) and meta-network updates."""
    if isinstance(teacher, EnsembleTeacher):
        return {"ensemble_separable_batches": float(teacher.separable_batches)}
    if isinstance(teacher, CreamTeacher):
        m = teacher.kd_scale
        return {"board_size": float(len(teacher.board.entries)), "kd_scale": float("nan") if m is None else m,
                "meta_updates": float(teacher.meta_updates)}
    return {}
