"""Multi-process training and search with torch.distributed (launched by torchrun): gloo on CPU, NCCL on GPU.

The training loop wraps the supernet in DistributedDataParallel and runs every sub-network of a step
but the last under `no_sync()`, so gradients are all-reduced once per optimizer step; this module
holds the process-group set-up and the small collectives the loop and the search need besides.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
R = TypeVar("R")


class RankMismatch(RuntimeError):
    """Ranks disagree on something they must agree on (e.g. the sampled architectures)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0


SINGLE = DistContext()


def init_from_env(device: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, ...), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return DistContext(device=chosen)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    chosen = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=chosen)


def digest(value: Any) -> int:
    """A 62-bit fingerprint of a picklable value, equal across processes for equal values."""
    return int.from_bytes(hashlib.sha256(pickle.dumps(value)).digest()[:8], "little") >> 2


def check_same(value: Any, what: str, ctx: DistContext) -> None:
    """Raise RankMismatch when ranks hold different `value`s (compared by fingerprint)."""
    if not ctx.enabled:
        return
    fp = torch.tensor([digest(value), -digest(value)], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(fp, op=dist.ReduceOp.MIN)
    if fp[0].item() != -fp[1].item():
        raise RankMismatch(
            f"rank {ctx.rank}: ranks disagree on {what}; every rank must draw from the same seeded generator "
            "(same config and seed on every rank, and no rank-dependent randomness)"
        )


def all_agree(flag: bool, ctx: DistContext) -> bool:
    """True only if `flag` is true on every rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def mean_over_ranks(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise mean of a list of floats across ranks."""
    if not ctx.enabled or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()


def broadcast_object(obj: T, ctx: DistContext) -> T:
    """Rank 0's `obj` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def sharded_map(fn: Callable[[list[T]], list[R]], items: list[T], ctx: DistContext) -> list[R]:
    """`fn(items)` computed with each rank taking every world_size-th item; results in the original order."""
    if not ctx.enabled:
        return fn(items)
    mine = fn(items[ctx.rank :: ctx.world_size])
    gathered: list[list[R] | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for rank, results in enumerate(gathered):
        out[rank :: ctx.world_size] = results
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
