"""Print timings for supernet.distill: the EnNAS ensemble-weight solver and adaptive alpha-divergence cost.

Run: PYTHONPATH=src python benchmarks/ensemble_solver.py [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from supernet.distill import adaptive_alpha_divergence, ensemble_teacher, kl_divergence


def _timings(fn: Callable[[], object], repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _members(
    generator: torch.Generator, m: int, batch: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Members of decreasing quality around the labels, like sub-networks of one supernet."""
    labels = torch.randint(0, classes, (batch,), generator=generator)
    quality = torch.linspace(3.0, 1.0, m)
    noise = 1.5 * torch.randn(m, batch, classes, generator=generator)
    return quality[:, None, None] * F.one_hot(labels, classes) + noise, labels


def bench_solver(generator: torch.Generator, batch: int = 256, repeats: int = 200) -> None:
    """Wall time of one ensemble_teacher(..., weights='optimal') call: median and best of `repeats`."""
    print(f"ensemble_teacher(weights='optimal'), batch {batch}: time per solve, median (best) of {repeats}")
    print(f"  {'m':>2} {'classes':>7} {'w of free sign':>22} {'w >= 0':>22}")
    for m in (2, 4, 8):
        for classes in (10, 100):
            members, labels = _members(generator, m, batch, classes)
            cells = []
            for nonnegative in (False, True):
                solve = functools.partial(ensemble_teacher, members, labels, nonnegative=nonnegative)
                times = _timings(solve, repeats)
                cells.append(f"{statistics.median(times) * 1e3:8.3f} ms ({min(times) * 1e3:.3f})")
            print(f"  {m:>2} {classes:>7} {cells[0]:>22} {cells[1]:>22}")


def bench_divergences(
    generator: torch.Generator, batch: int = 256, classes: int = 1000, rounds: int = 40
) -> None:
    """Forward+backward of adaptive_alpha_divergence vs kl_divergence, measured interleaved."""
    student = torch.randn(batch, classes, generator=generator).requires_grad_(True)
    teacher = torch.randn(batch, classes, generator=generator)

    def step(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        student.grad = None
        fn(student, teacher).backward()

    kl_times, adaptive_times = [], []
    for _ in range(rounds):  # alternate so that both see the same machine load
        kl_times += _timings(functools.partial(step, kl_divergence), 5, warmup=1)
        adaptive_times += _timings(functools.partial(step, adaptive_alpha_divergence), 5, warmup=1)
    kl, adaptive = statistics.median(kl_times), statistics.median(adaptive_times)
    print(f"forward+backward, batch {batch} x {classes} classes, float32, median (best) of {len(kl_times)}")
    print(f"  kl_divergence             {kl * 1e3:8.3f} ms ({min(kl_times) * 1e3:.3f})")
    print(
        f"  adaptive_alpha_divergence {adaptive * 1e3:8.3f} ms ({min(adaptive_times) * 1e3:.3f})"
        f"   median ratio {adaptive / kl:.2f}x"
    )


def main() -> None:
    """Print all figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads"
    )
    tiny = torch.ones(10)
    overhead = statistics.median(_timings(functools.partial(torch.add, tiny, tiny), 2000))
    print(f"(machine calibration: torch.add on 10 elements takes {overhead * 1e6:.2f} us)")
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    bench_solver(generator)
    bench_divergences(generator)
    print(f"(benchmark wall time {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
