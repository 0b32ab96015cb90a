"""Cream of the Crop (Peng et al., NeurIPS 2020): distil each student from a prioritized board of the best paths.

The board keeps the `size` paths with the best training-batch top-1 seen so far (a path is admitted while
the board is not full, or when it beats the board's worst by more than `gap` points, or beats it with
fewer MACs). A meta-matching network scores each board member against the student (a linear layer on the
difference of their softmax outputs on the member's stored images); the best-scoring member teaches the
step, and its score sets the loss (m KD + (2 - m) CE) / 2 with m = sigmoid(-score). The meta network
learns by a one-step look-ahead: the validation loss of the student after a simulated SGD step on its
KD loss, differentiated with respect to the meta network's weights.

Rules and defaults follow the official code (microsoft/Cream, lib/core and lib/utils): board size 10, 4
stored images, a 5-point gap, a meta update every 200 steps on two slices of the step's batch.
Differences, on purpose: the look-ahead uses every weight of the student path (the code backpropagates
through its first weight tensor only) and the simulated step descends (w - lr g; the code adds lr g); the
look-ahead's KD step is not also applied to the supernet, and the training loss does not train the meta
network (the code does both, as a side effect of sharing one optimizer); m is the chosen member's score
(the code takes the last member's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from supernet.data import resize_batch
from supernet.model import Supernet
from supernet.nn.batchnorm import frozen_bn_statistics
from supernet.space import Arch

FrozenForwardOn = Callable[[Arch, Tensor], Tensor]  # logits of an arch on given images, no grad, BN untouched


@dataclass
class BoardEntry:
    """One prioritized path: its training-batch top-1 (percent) and MACs when admitted, and what it teaches."""

    top1: float
    macs: int
    arch: Arch
    images: Tensor  # the first `slice` images of the batch it was admitted on
    soft: Tensor  # softmax targets on them: the path's own outputs at the first admission, else its teacher's


@dataclass
class PrioritizedBoard:
    """The best paths so far, sorted by top-1 (then MACs) from best to worst."""

    size: int = 10
    gap: float = 5.0
    entries: list[BoardEntry] = field(default_factory=list)

    def admits(self, top1: float, macs: int) -> bool:
        """Cream's rule: room left, or more than `gap` points above the worst, or above it with fewer MACs."""
        if len(self.entries) < self.size:
            return True
        worst = self.entries[-1]
        return top1 > worst.top1 + self.gap or (top1 > worst.top1 and macs < worst.macs)

    def offer(self, entry: BoardEntry) -> bool:
        """Admit `entry` if the rule allows (dropping the worst when full); whether it was admitted."""
        if not self.admits(entry.top1, entry.macs):
            return False
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (e.top1, e.macs), reverse=True)
        del self.entries[self.size :]
        return True

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and tensors (torch.save-able)."""
        return {"entries": [{"top1": e.top1, "macs": e.macs, "arch": e.arch.to_dict(), "images": e.images.cpu(),
                             "soft": e.soft.cpu()} for e in self.entries]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        """Restore what `state_dict` saved."""
        self.entries = [BoardEntry(float(e["top1"]), int(e["macs"]), Arch.from_dict(e["arch"]),
                                   e["images"].to(device), e["soft"].to(device)) for e in state["entries"]]


class MetaMatchingNetwork(nn.Module):
    """Matching score of a (student, teacher) pair from the difference of their softmax outputs on `slice` images."""

    def __init__(self, num_classes: int, slice_size: int, seed: int = 0) -> None:
        super().__init__()
        self.layer = nn.Linear(num_classes * slice_size, 1)
        bound = 1 / (num_classes * slice_size) ** 0.5  # torch's default Linear init, from the run's seed
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.layer.weight.uniform_(-bound, bound, generator=g)
            self.layer.bias.uniform_(-bound, bound, generator=g)

    def forward(self, difference: Tensor) -> Tensor:
        return self.layer(difference.reshape(1, -1)).squeeze()


def _full(x: Tensor) -> Tensor:
    """Half-precision outputs (bf16 training) in float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Mean over the batch of -sum p_teacher log p_student (Cream's KD loss)."""
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class CreamTeacher:
    """Cream's teacher: a board member picked per step by the meta-matching network (or the best, `pick='top1'`)."""

    def __init__(
        self,
        num_classes: int,
        device: torch.device,
        forward_on: FrozenForwardOn,
        size: int = 10,
        slice_size: int = 4,
        gap: float = 5.0,
        pick: Literal["meta", "top1"] = "meta",
        update_every: int = 200,
        meta_lr: float | None = None,
        seed: int = 0,
    ) -> None:
        self.board = PrioritizedBoard(size, gap)
        self.slice = slice_size
        self.pick = pick
        self.update_every = update_every
        self.meta_lr = meta_lr
        self.forward_on = forward_on
        self.device = device
        self.meta = MetaMatchingNetwork(num_classes, slice_size, seed).to(device)
        self.meta_optimizer = torch.optim.SGD(self.meta.parameters(), lr=meta_lr or 0.0, momentum=0.9)
        self.kd_scale: float | None = None  # this step's m, None while the board is empty
        self.meta_updates = 0

    # -- the Teacher protocol ------------------------------------------------------------------------
    def before_step(self, archs: list[Arch], images: Tensor, labels: Tensor, forward: Callable[[Arch], Tensor]) -> Tensor | None:
        """The chosen member's logits on the batch (None while the board is empty: labels only)."""
        if not self.board.entries:
            self.kd_scale = None
            return None
        m, entry = self.select(archs[0])
        self.kd_scale = float(m)
        return forward(entry.arch)

    def from_full(self, full_logits: Tensor, targets: Tensor | None) -> Tensor | None:
        return targets

    def external_macs(self, images: Tensor) -> int:
        return 0  # every pass runs through the supernet, which counts it

    def loss_weights(self) -> tuple[float, float] | None:
        """(KD weight, CE weight) of this step: (m / 2, (2 - m) / 2), or None for labels only."""
        return None if self.kd_scale is None else (self.kd_scale / 2, (2 - self.kd_scale) / 2)

    # -- Cream's rules -------------------------------------------------------------------------------
    def select(self, student: Arch, differentiable: bool = False) -> tuple[Tensor, BoardEntry]:
        """The teaching member and m = sigmoid(-its matching score); with grad through the meta network if asked."""
        if self.pick == "top1":
            return torch.tensor(0.5, device=self.device), self.board.entries[0]
        with torch.set_grad_enabled(differentiable):
            scores = []
            for entry in self.board.entries:
                probs = F.softmax(self.forward_on(student, entry.images), dim=1)
                scores.append(self.meta(probs - entry.soft))
            best = max(range(len(scores)), key=lambda i: float(scores[i].detach()))
            return torch.sigmoid(-scores[best]), self.board.entries[best]

    def after_step(self, student: Arch, logits: Tensor, labels: Tensor, images: Tensor, targets: Tensor | None,
                   top1: float, macs: int) -> bool:
        """Offer the step's student to the board (`top1`: its batch accuracy in percent, averaged over ranks)."""
        if not self.board.admits(top1, macs):
            return False
        features = logits if targets is None else targets  # the code stores the teacher's outputs once it has one
        soft = F.softmax(features[: self.slice].detach().float(), dim=1)
        entry = BoardEntry(top1, macs, student, images[: self.slice].detach().clone(), soft)
        return self.board.offer(entry)

    def update_due(self, step: int, batch: int) -> bool:
        """A meta update every `update_every` steps once the board has members and the batch has two slices."""
        return self.pick == "meta" and step > 0 and step % self.update_every == 0 and bool(self.board.entries) and (
            batch >= 2 * self.slice)

    def look_ahead(self, net: Supernet, student: Arch, images: Tensor, labels: Tensor, lr: float,
                   reduce: Callable[[list[float]], list[float]] = lambda v: v) -> float:
        """One meta-network update by Cream's look-ahead on slices of the batch; returns the validation loss.

        `reduce` averages the meta gradients over ranks. The supernet's weights are left as they were.
        """
        s = self.slice
        x_train, x_val, y_val = images[:s], images[s : 2 * s], labels[s : 2 * s]
        m, entry = self.select(student, differentiable=True)
        with torch.no_grad():
            soft = F.softmax(self.forward_on(entry.arch, x_train), dim=1)
        params = dict(net.named_parameters())
        active, rates = net.active_arch, (net.dropout_rate, net.drop_connect_rate)
        net.dropout_rate = net.drop_connect_rate = 0.0
        try:
            with frozen_bn_statistics(net):
                net.set_active(student)
                kd = m * soft_cross_entropy(_full(net(resize_batch(x_train, student.resolution))), soft)
                grads = torch.autograd.grad(kd, list(params.values()), create_graph=True, allow_unused=True)
                stepped = {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}
                out = functional_call(net, stepped, (resize_batch(x_val, student.resolution),))
                val = F.cross_entropy(_full(out), y_val)
                meta_grads = torch.autograd.grad(val, list(self.meta.parameters()))
        finally:
            net.set_active(active)
            net.dropout_rate, net.drop_connect_rate = rates
        flat = reduce(torch.cat([g.flatten() for g in meta_grads]).tolist())
        offset = 0
        for p, g in zip(self.meta.parameters(), meta_grads):
            p.grad = torch.tensor(flat[offset : offset + g.numel()], dtype=p.dtype, device=p.device).reshape(p.shape)
            offset += g.numel()
        for group in self.meta_optimizer.param_groups:
            group["lr"] = lr if self.meta_lr is None else self.meta_lr
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.meta_updates += 1
        return float(val.detach())

    def state_dict(self) -> dict[str, Any]:
        """Board, meta network and its optimizer (for a bit-exact resume)."""
        return {"board": self.board.state_dict(), "meta": self.meta.state_dict(),
                "meta_optimizer": self.meta_optimizer.state_dict(), "meta_updates": self.meta_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.board.load_state_dict(state["board"], self.device)
        self.meta.load_state_dict(state["meta"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.meta_updates = int(state["meta_updates"])
