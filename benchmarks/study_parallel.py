"""Local study runner: N units one after another vs N at once on disjoint core shares, same study.

Each unit trains `configs/nokd.yaml` for one epoch on `--images` Fashion-MNIST images and searches it
(population 8, one generation). `--parallel N` gives each unit cores / N pinned cores, as many threads
and OpenMP's passive wait policy. With `--naive` it also times N trainings started at once with the
defaults (every process all cores, spinning OpenMP threads), the slowdown the runner avoids; that part
trains only `--naive-steps` steps each, as it can be 10-40x slower.

    python benchmarks/study_parallel.py [--units 2] [--images 4096] [--naive]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def study_file(folder: Path, units: int, images: int) -> Path:
    spec = {"name": "parallel-benchmark", "trials": [{"name": "nokd", "recipe": str(CONFIGS / "nokd.yaml")}],
            "seeds": units, "budget": {"rule": "epochs", "epochs": 1},
            "set": [f"data.limit={images}", "data.val_size=1024", "train.recal_images=256", "train.eval_images=1024",
                    "train.diagnostic_draws=0"],
            "search": {"population": 8, "iterations": 1, "parents": 4, "mutations": 4, "crossovers": 4,
                       "recal_images": 256}}
    path = folder / "study.yaml"
    path.write_text(json.dumps(spec))
    return path


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=2, help="units (seeds) of the study, and the parallelism")
    parser.add_argument("--images", type=int, default=4096, help="training images per unit")
    parser.add_argument("--naive", action="store_true", help="also time unpinned concurrent trainings")
    parser.add_argument("--naive-steps", type=int, default=10)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    cli = [sys.executable, "-m", "supernet"]
    print(f"{args.units} units of nokd (1 epoch on {args.images} images + a 12-evaluation search), {cores} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study = study_file(folder, args.units, args.images)
        sequential = timed([*cli, "study", str(study), "--out", str(folder / "sequential")])
        parallel = timed([*cli, "study", str(study), "--out", str(folder / "parallel"), "--parallel",
                          str(args.units)])
        print(f"one after another: {sequential:.1f} s; --parallel {args.units}: {parallel:.1f} s "
              f"(parallel / sequential {parallel / sequential:.2f}, goal <= 1.00)")
        if args.naive:
            train = [*cli, "train", str(CONFIGS / "nokd.yaml"), "--no-progress", "--max-steps", str(args.naive_steps),
                     "--set", f"data.limit={args.images}", "--set", "data.val_size=1024"]
            alone = timed([*train, "--out", str(folder / "alone")])
            start = time.perf_counter()
            procs = [subprocess.Popen([*train, "--out", str(folder / f"naive{i}")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) for i in range(args.units)]
            for p in procs:
                p.wait()
            together = time.perf_counter() - start
            print(f"{args.naive_steps} training steps: one process alone {alone:.1f} s; {args.units} at once with "
                  f"the defaults {together:.1f} s ({together / (args.units * alone):.1f}x the time of running "
                  "them one after another)")


if __name__ == "__main__":
    main()
