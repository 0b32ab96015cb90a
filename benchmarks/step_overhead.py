"""Training-engine overhead: one sandwich step of the engine vs the bare sum of the same sub-networks.

Engine: `Trainer.train_step` (AlphaNet recipe: largest, smallest, 2 random; in-place adaptive
alpha-divergence; gradient value clip; SGD step on the supernet). Bare: the same four sub-networks
extracted as static modules, each forward + loss + backward, then an SGD step per module.
Rounds alternate A/B and B/A; the median per-round ratio is printed. Goal (issue #4): <= 1.10.

Peak memory: a 4-network engine step vs a step of the largest network alone (peak RSS growth of a
fresh process on CPU, torch.cuda.max_memory_allocated on GPU). Goal: <= 1.3.

    python benchmarks/step_overhead.py [--rounds 10] [--batch 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch
import torch.nn.functional as F

from supernet.allocator import retain_freed_memory
from supernet.config import load_config
from supernet.data import resize_batch
from supernet.distill import get_divergence
from supernet.training.loop import Trainer
from supernet.training.samplers import SampleContext, SandwichSampler


def build(batch: int, threads: int) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """A trainer on synthetic Fashion-MNIST-shaped data (no data set needed) and one batch."""
    from supernet.data import DataBundle, TensorImageDataset
    from supernet.data.augment import Normalizer, PadCropFlip

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * 4, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (batch * 4,), generator=g)
    norm = Normalizer((0.5,), (0.25,))
    train = TensorImageDataset(images, labels, norm, PadCropFlip(padding=2, flip=True))
    test = TensorImageDataset(images, labels, norm, None)
    data = DataBundle("synthetic", train, None, test, 10, 1, 28, tuple(str(i) for i in range(10)))
    config = load_config("configs/alphanet.yaml", [f"data.batch_size={batch}", f"train.threads={threads}",
                                                   "train.eval_every_epochs=0"])
    trainer = Trainer(config, tempfile.mkdtemp() + "/run", data=data, progress=False)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return trainer, x, y


def engine_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> float:
    plan = trainer.schedule.plan(0)
    trainer.rng = random.Random(0)  # the same four architectures every round
    start = time.perf_counter()
    trainer.train_step(x, y, plan, epoch=0)
    return time.perf_counter() - start


def bare_step(modules: list, optimizers: list, resolutions: list[int], x: torch.Tensor, y: torch.Tensor,
              divergence, layout: torch.memory_format) -> float:
    start = time.perf_counter()
    teacher = None
    for module, opt, res in zip(modules, optimizers, resolutions):
        opt.zero_grad(set_to_none=True)
        logits = module(resize_batch(x, res).contiguous(memory_format=layout))
        if teacher is None:
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            teacher = logits.detach()
        else:
            loss = divergence(logits, teacher)
        loss.backward()
        torch.nn.utils.clip_grad_value_(module.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_child(which: str, batch: int, threads: int) -> None:
    """Run in a fresh process: print the peak memory growth during one step over the memory before it."""
    trainer, x, y = build(batch, threads)
    if which == "largest":
        trainer._archs = lambda plan, images, labels, epoch: [plan.space.largest()]
    engine_step(trainer, x, y)  # allocate optimizer state and warm up
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed activations back so the baseline is honest
    base, peak, done = rss_bytes(), [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0005)

    watcher = threading.Thread(target=poll)
    watcher.start()
    engine_step(trainer, x, y)
    done.set()
    watcher.join()
    print(json.dumps({"growth": max(peak[0] - base, 0), "base": base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc malloc at its defaults (the supernet command's --system-malloc)")
    parser.add_argument("--child", choices=["largest", "sandwich"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.system_malloc:
        retain_freed_memory()
    if args.child:
        peak_memory_child(args.child, args.batch, args.threads)
        return
    trainer, x, y = build(args.batch, args.threads)
    ctx = SampleContext(trainer.space, random.Random(0), 10, None)
    archs = SandwichSampler(num_random=2).sample(ctx)
    # Same memory layout on both sides: the engine runs channels-last (train.channels_last, the default).
    layout = torch.channels_last if trainer.config.train.channels_last else torch.contiguous_format
    modules = [trainer.net.extract(a).train().to(memory_format=layout) for a in archs]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True) for m in modules]
    divergence = get_divergence("adaptive_alpha", alpha_min=-1.0, alpha_max=1.0, clip=5.0)
    resolutions = [a.resolution for a in archs]
    for _ in range(2):
        engine_step(trainer, x, y)
        bare_step(modules, optimizers, resolutions, x, y, divergence, layout)
    ratios, engine, bare = [], [], []
    for r in range(args.rounds):
        if r % 2:
            tb = bare_step(modules, optimizers, resolutions, x, y, divergence, layout)
            te = engine_step(trainer, x, y)
        else:
            te = engine_step(trainer, x, y)
            tb = bare_step(modules, optimizers, resolutions, x, y, divergence, layout)
        ratios.append(te / tb)
        engine.append(te)
        bare.append(tb)
    print(f"step overhead: fmnist sandwich (4 networks), batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}")
    print(f"  engine step {statistics.median(engine) * 1e3:.1f} ms, bare sum {statistics.median(bare) * 1e3:.1f} ms, "
          f"median ratio {statistics.median(ratios):.3f}")
    growth = {}
    for which in ("largest", "sandwich"):
        out = subprocess.run([sys.executable, __file__, "--child", which, "--batch", str(args.batch),
                              "--threads", str(args.threads)] + (["--system-malloc"] if args.system_malloc else []),
                             capture_output=True, text=True, check=True)
        growth[which] = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    print(f"  peak memory growth of one step: largest alone {growth['largest'] / 2**20:.1f} MiB, "
          f"4-network step {growth['sandwich'] / 2**20:.1f} MiB, ratio "
          f"{growth['sandwich'] / max(growth['largest'], 1):.2f}")


if __name__ == "__main__":
    main()
