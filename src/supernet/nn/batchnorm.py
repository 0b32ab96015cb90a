"""BatchNorm helpers shared by the training loop and its teachers: frozen statistics, and statistics
synchronised over every process of a distributed run (SyncBatchNorm, also on CPU with gloo)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn


@contextlib.contextmanager
def frozen_bn_statistics(net: nn.Module) -> Iterator[None]:
    """Forward passes inside keep BN in batch-statistics mode but leave running statistics untouched."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


def update_factor(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """Running-statistics update factor of one training forward (cumulative when momentum is None)."""
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def synchronized_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training-mode BN of `x` over the first x.shape[1] channels of `bn`, with statistics over all ranks."""
    c, factor = x.shape[1], update_factor(bn)
    local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), x.new_tensor([x.numel() / c])])
    total = dist_nn.all_reduce(local)  # differentiable: gradients flow through every rank's statistics
    count = total[-1]
    mean = total[:c] / count
    var = (total[c : 2 * c] / count - mean * mean).clamp_min(0.0)
    with torch.no_grad():
        bn.running_mean[:c].mul_(1 - factor).add_(factor * mean)
        bn.running_var[:c].mul_(1 - factor).add_(factor * var * count / (count - 1).clamp_min(1))
    scale = bn.weight[:c] * torch.rsqrt(var + bn.eps)
    return x * scale[None, :, None, None] + (bn.bias[:c] - mean * scale)[None, :, None, None]


def synchronizing(bn: nn.Module) -> bool:
    """Whether `bn`'s training forward should use statistics over all ranks now."""
    return bool(getattr(bn, "synchronized", False)) and bn.training and dist.is_available() and dist.is_initialized()


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose training statistics span every rank's batch while `synchronized` is set."""

    synchronized: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if synchronizing(self):
            return synchronized_batch_norm(self, x)
        return super().forward(x)


def make_synchronizable(net: nn.Module) -> None:
    """Replace every plain BatchNorm2d in `net` (choice-block operators) by a SyncedBatchNorm2d with its state."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                synced = SyncedBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats)
                synced.load_state_dict(child.state_dict())
                setattr(parent, name, synced.to(child.weight.device))


@contextlib.contextmanager
def synchronized_statistics(net: nn.Module) -> Iterator[None]:
    """BNs of `net` that can synchronise do so inside (training steps), and keep local statistics outside
    (evaluation and recalibration run on one rank)."""
    norms = [m for m in net.modules() if hasattr(m, "synchronized")]
    for m in norms:
        m.synchronized = True
    try:
        yield
    finally:
        for m in norms:
            m.synchronized = False
