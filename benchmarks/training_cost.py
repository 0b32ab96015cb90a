"""Executed vs logged training cost per recipe: every conv2d and linear call counted as it runs.

Each shipped Fashion-MNIST recipe trains a short schedule (`--steps` steps per epoch over its own number
of epochs, so OFA's and DepS's phases all occur) under a torch function mode that adds up the
multiply-adds of every convolution and linear layer (3x under autograd: forward + backward). It prints
the logged `train_macs` (every kind of pass) against that, each kind's share, and what the gradient
passes alone (the only passes counted before issue 10) amount to.

    python benchmarks/training_cost.py [--steps 20] [--threads 2] [--recipes dna ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from supernet.allocator import retain_freed_memory
from supernet.config import load_config
from supernet.cost import ExecutedMacs
from supernet.training.loop import Trainer
from supernet.training.metrics import PASS_KINDS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ["alphanet", "bignas_kl", "symmetric_kl", "nokd", "attentivenas", "bignas", "deps", "deps_alpha", "ennas",
           "ennas_wo_ds", "spos", "cream", "dna_teacher", "dna", "ofa", "compofa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch of every recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=RECIPES, help="a subset (dna brings dna_teacher)")
    args = parser.parse_args()
    names = [n for n in RECIPES if n in args.recipes or (n == "dna_teacher" and "dna" in args.recipes)]
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"training cost, {args.steps} steps per epoch, batch 128, torch {torch.__version__}")
    print(f"{'recipe':<14} {'steps':>5} {'logged TMACs':>12} {'executed':>9} {'logged/executed':>15} "
          f"{'gradient only/executed':>22}  shares ({', '.join(PASS_KINDS)})")
    with tempfile.TemporaryDirectory() as keep:  # dna distils from the dna_teacher run trained just before it
        for name in names:
            overrides = [f"train.max_steps_per_epoch={args.steps}", "train.eval_every_epochs=0"]
            if name == "dna":
                overrides.append(f"teacher.checkpoint={Path(keep) / 'dna_teacher'}")
            config = load_config(CONFIGS / f"{name}.yaml", overrides)
            trainer = Trainer(config, Path(keep) / name, progress=False)
            with ExecutedMacs() as executed:
                trainer.run()
            report(name, trainer, executed.total)


def report(name: str, trainer: Trainer, executed: float) -> None:
    """One row: logged vs executed MACs and each kind's share."""
    c = trainer.counters
    shares = " / ".join(f"{c[f'{kind}_macs'] / c['train_macs']:.3f}" for kind in PASS_KINDS)
    print(f"{name:<14} {trainer.global_step:5d} {c['train_macs'] / 1e12:12.4f} {executed / 1e12:9.4f} "
          f"{c['train_macs'] / executed:15.4f} {c['gradient_macs'] / executed:22.3f}  {shares}")


if __name__ == "__main__":
    main()
