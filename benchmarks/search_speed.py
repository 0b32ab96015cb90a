"""Search speed on the fmnist preset: evaluated sub-networks per minute, and whole searches with and
without the accuracy predictor (their mean Pareto accuracy compared).

Needs a trained run (default: the demo's, `make demo` writes runs/demo/run). Each evaluation is BN
recalibration on `--recal-images` training images plus accuracy on the 5000-image val split.

    python benchmarks/search_speed.py [RUN_DIR] [--threads 2] [--full] [--only with|without]

Without --full the two searches use a reduced schedule (population 64, 3 generations of 32+32
children) so the script ends in minutes; --full runs the default search (512 + 20 x 256 children)
with the predictor (keeping 16 children per generation) and without it.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from supernet.allocator import retain_freed_memory
from supernet.search.evolution import SearchSettings
from supernet.search.job import open_run, run_search


def evals_per_minute(run_dir: Path, n: int, recal_images: int) -> float:
    """Fresh (uncached) evaluations of random sub-networks per minute."""
    opened = open_run(run_dir, recalibration_images=recal_images)
    rng = random.Random(123)
    archs = [opened.run.space.sample(rng) for _ in range(n)]
    start = time.perf_counter()
    for arch in archs:
        opened.evaluator.evaluate(arch, "val")
    return n / (time.perf_counter() - start) * 60


def one_search(run_dir: Path, settings: SearchSettings, predictor: bool, recal_images: int) -> dict:
    """Run one search into a temporary directory; return its front.json content and wall time."""
    opened = open_run(run_dir, recalibration_images=recal_images)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = run_search(opened, Path(out), settings=settings, predictor=predictor, progress=False)
        report["wall"] = time.perf_counter() - start
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default="runs/demo/run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc malloc at its defaults (the supernet command's --system-malloc)")
    parser.add_argument("--recal-images", type=int, default=1024)
    parser.add_argument("--full", action="store_true", help="the default search (512 + 20 x 256)")
    parser.add_argument("--only", choices=["with", "without"], help="run only the search with (or without) the predictor")
    args = parser.parse_args()
    if not args.system_malloc:
        retain_freed_memory()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    if not (run_dir / "checkpoints" / "latest.pt").is_file():
        raise SystemExit(f"no trained run in {run_dir}; run `make demo` first or pass a run directory")
    print(f"search speed: {run_dir}, {args.threads} threads, recalibration on {args.recal_images} images, "
          f"torch {torch.__version__}")
    print(f"  evaluations per minute (random fmnist sub-networks): {evals_per_minute(run_dir, 12, args.recal_images):.1f}")
    if args.full:
        base = SearchSettings()
    else:
        base = SearchSettings(population=64, parents=16, parent_selection="buckets", mutations=32, crossovers=32, iterations=3)
    plain = SearchSettings.from_dict({**base.to_dict(), "prescreen_keep": None})
    screened = SearchSettings.from_dict({**base.to_dict(), "prescreen_keep": 16})
    results = {}
    runs = [("with predictor", screened, True), ("without predictor", plain, False)]
    for label, settings, predictor in runs:
        if args.only and predictor != (args.only == "with"):
            continue
        r = one_search(run_dir, settings, predictor, args.recal_images)
        results[label] = r
        tau = (r["search"]["predictor"] or {}).get("kendall_tau")
        print(f"  {label:<18} {r['search']['evaluations']:5d} evaluations in {r['wall'] / 60:6.1f} min, "
              f"mean Pareto accuracy {r['mean_pareto_accuracy']:.2%}, front size {len(r['front'])}"
              + ("" if tau is None else f", predictor Kendall tau {tau:.3f} on held-out evaluations"))
    if len(results) == 2:
        gap = results["without predictor"]["mean_pareto_accuracy"] - results["with predictor"]["mean_pareto_accuracy"]
        print(f"  mean Pareto accuracy gap (without - with predictor): {gap * 100:+.2f} points")


if __name__ == "__main__":
    main()
