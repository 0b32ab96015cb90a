"""DNA's search figure against accuracy: how block losses rank sub-networks, and what one ranking costs.

On a trained DNA run (`supernet train configs/dna.yaml`), `--archs` sub-networks drawn at random are
measured both ways on the run's val split: summed block losses against the run's teacher (`mse`, DNA's
Eq. 3, and `relative_l1`, its search code's figure), and top-1 after BN recalibration (what every other
search ranks by). Prints Kendall's tau between each block figure and accuracy (a lower loss should mean
a higher accuracy: tau near -1) and the time per sub-network of each measurement.

    python benchmarks/block_ranking.py RUN_DIR [--archs 40] [--images 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from supernet.search.job import BlockRanking, block_ranker, open_run
from supernet.search.predictor import kendall_tau


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--archs", type=int, default=40)
    parser.add_argument("--images", type=int, default=1000, help="val images of the block losses")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    opened = open_run(args.run_dir)
    rng = random.Random(0)
    archs = list(dict.fromkeys(opened.run.space.sample(rng) for _ in range(args.archs)))
    start = time.perf_counter()
    accuracy = [opened.evaluator.evaluate(a, "val").top1 for a in archs]
    per_accuracy = (time.perf_counter() - start) / len(archs)
    print(f"{len(archs)} random sub-networks of {opened.run.space.name}; val accuracy {min(accuracy):.2%} to "
          f"{max(accuracy):.2%} ({len(opened.data.val)} images, {per_accuracy * 1e3:.0f} ms each with BN recalibration)")
    for measure in ("mse", "relative_l1"):
        ranker = block_ranker(opened, BlockRanking(images=args.images, measure=measure))
        start = time.perf_counter()
        losses = ranker(archs)
        per_loss = (time.perf_counter() - start) / len(archs)
        print(f"block {measure:<11}: Kendall tau vs val accuracy {kendall_tau(losses, accuracy):+.3f}; "
              f"{per_loss * 1e3:.0f} ms per sub-network ({args.images} images, {len(ranker.known)} block "
              f"configurations measured)")


if __name__ == "__main__":
    main()
