"""Overhead of running a sub-network through the supernet vs. the same sub-network extracted.

One train step = forward, cross-entropy, backward, SGD step. The two variants alternate (A/B, B/A)
over many rounds and the median of the per-round ratios is printed, so machine noise hits both.
Goals: ratio <= 1.05 for alphanet A0 at batch 32 and fmnist largest/smallest at batch 256 (issue #2), for
alphanet A0 at batch 8, and for a choice-block sub-network of fmnist_choice and of ennas_s1 (issue #11).

    python benchmarks/dynamic_overhead.py [--rounds 30] [--threads 2] [--system-malloc]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from supernet import Supernet, spaces
from supernet.allocator import retain_freed_memory
from supernet.cost import macs

A0 = {
    "resolution": 192,
    "width": [16, 16, 24, 32, 64, 112, 192, 216, 1792],
    "depth": [1, 3, 3, 3, 3, 3, 1],
    "kernel_size": [3, 3, 3, 3, 3, 3, 3],
    "expand_ratio": [1, 4, 4, 4, 4, 6, 6],
}


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Time one forward/backward/SGD step in seconds."""
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def measure(space_name: str, which: str, batch: int, rounds: int, num_classes: int, channels_last: bool) -> dict:
    """Median supernet/extracted step-time ratio for one sub-network (both sides in the same memory layout)."""
    space = spaces.get(space_name)
    arch = {"largest": space.largest(), "smallest": space.smallest(), "random": space.sample(random.Random(0))}.get(
        which) or space.arch_from_attentivenas(A0)
    net = Supernet(space, num_classes).train().set_channels_last(channels_last)
    net.set_active(arch)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    static = net.extract(arch).train().to(memory_format=layout)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, space.in_channels, arch.resolution, arch.resolution, generator=g).contiguous(
        memory_format=layout)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    opt_dyn = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    opt_static = torch.optim.SGD(static.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    for _ in range(2):  # warm-up: allocator, momentum buffers, oneDNN primitives
        train_step(net, opt_dyn, x, y)
        train_step(static, opt_static, x, y)
    ratios, dyn_times, static_times = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            td = train_step(net, opt_dyn, x, y)
            ts = train_step(static, opt_static, x, y)
        else:
            ts = train_step(static, opt_static, x, y)
            td = train_step(net, opt_dyn, x, y)
        ratios.append(td / ts)
        dyn_times.append(td)
        static_times.append(ts)
    return {
        "case": f"{space_name} {which} batch {batch}" + (" NHWC" if channels_last else ""),
        "mmacs": macs(space, arch, num_classes) / 1e6,
        "supernet_ms": statistics.median(dyn_times) * 1e3,
        "extracted_ms": statistics.median(static_times) * 1e3,
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc malloc at its defaults (the supernet command's --system-malloc)")
    args = parser.parse_args()
    if not args.system_malloc:
        retain_freed_memory()
    torch.set_num_threads(args.threads)
    cases = [("alphanet", "A0", 32, 1000, False), ("alphanet", "A0", 8, 1000, False),
             ("fmnist", "largest", 256, 10, False), ("fmnist", "smallest", 256, 10, False),
             ("fmnist", "largest", 256, 10, True), ("fmnist", "smallest", 256, 10, True),
             ("fmnist_choice", "random", 256, 10, False), ("fmnist_choice", "largest", 256, 10, False),
             ("ennas_s1", "random", 32, 1000, False)]
    malloc = "system malloc" if args.system_malloc else "malloc keeping freed memory (the CLI's default)"
    print(f"dynamic overhead: supernet vs extracted train step, {args.rounds} interleaved rounds, "
          f"{args.threads} threads, {malloc}, torch {torch.__version__}")
    print(f"{'case':<33} {'MMACs':>8} {'supernet ms':>12} {'extracted ms':>13} {'median ratio':>13}")
    for space_name, which, batch, num_classes, channels_last in cases:
        r = measure(space_name, which, batch, args.rounds, num_classes, channels_last)
        print(f"{r['case']:<33} {r['mmacs']:8.2f} {r['supernet_ms']:12.1f} {r['extracted_ms']:13.1f} {r['ratio']:13.3f}")
    print(f"analytic cost (MACs + params, no forward pass): {analytic_cost_us():.0f} us per alphanet sub-network")


def analytic_cost_us(n: int = 1000) -> float:
    """Mean time of the analytic MACs/params count per random alphanet sub-network, in microseconds."""
    from supernet.cost import cost

    space = spaces.get("alphanet")
    archs = [space.sample(random.Random(i)) for i in range(n)]
    start = time.perf_counter()
    for arch in archs:
        cost(space, arch, 1000)
    return (time.perf_counter() - start) / n * 1e6


if __name__ == "__main__":
    main()
