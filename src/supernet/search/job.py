"""The search job: a trained run -> evaluated sub-networks -> Pareto front, buckets, budgets -> front.json."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from supernet.blockwise import BlockLossRanker, TeacherBlocks
from supernet.data import DataBundle, DatasetError, build_data
from supernet.distributed import SINGLE, DistContext, sharded_map
from supernet.evaluation import EvalResult, Evaluator
from supernet.export import export_subnet, verify_onnx
from supernet.fileio import atomic_write_text
from supernet.runs import LoadedRun, load_network, load_supernet, read_arch
from supernet.search.evolution import (
    SearchError,
    SearchSettings,
    budget_search,
    evolutionary_search,
    measured,
)
from supernet.search.front_file import FRONT_FORMAT
from supernet.search.objectives import Constraint, Objectives
from supernet.search.pareto import READINGS, Candidate, bucket_table, pareto_front, pareto_summary
from supernet.search.predictor import AccuracyPredictor
from supernet.space import Arch

NUM_BUCKETS = 6  # DepS's table
TEST_CHUNK = 8  # test-split evaluations per progress-bar update


@dataclass
class OpenRun:
    """A trained run ready for evaluation: the supernet, its data and a cached evaluator."""

    run: LoadedRun
    data: DataBundle
    evaluator: Evaluator
    source: Path

    def resolve_arch(self, text: str) -> Arch:
        """'largest', 'smallest', a width like '0.5x' or an architecture JSON file, validated (`runs.read_arch`)."""
        return read_arch(self.run.space, text)


def open_run(
    run_dir: str | Path,
    *,
    batch_size: int | None = None,
    recalibration_images: int | None = None,
    cache_path: Path | None = None,
    dist: DistContext = SINGLE,
) -> OpenRun:
    """Load a run's latest checkpoint and rebuild its data splits exactly as training carved them."""
    run = load_supernet(run_dir, map_location=dist.device)
    cfg = run.config
    data_cfg = cfg["data"]
    data = build_data(
        data_cfg["name"],
        data_cfg.get("root"),
        val_size=data_cfg["val_size"],
        seed=cfg["seed"],
        image_size=data_cfg.get("image_size"),
        classes=data_cfg.get("classes"),
    )
    if data.num_classes != run.num_classes:
        raise DatasetError(
            f"{run_dir}: the supernet has {run.num_classes} classes but its data ({data_cfg['name']} at "
            f"{data_cfg.get('root') or 'the default location'}) has {data.num_classes}; evaluate on data with the "
            "same classes in the same order (an imported ImageNet supernet needs an ImageFolder of all 1000 "
            "classes), or fine-tune an export for this data with `supernet finetune EXPORT --data-root DIR`"
        )
    evaluator = Evaluator(
        run.net,
        data,
        batch_size or data_cfg["eval_batch_size"],
        run.checkpoint_id,
        recalibration_images=recalibration_images or cfg["train"]["recal_images"],
        seed=cfg["seed"],
        cache_path=cache_path if dist.is_main else None,
    )
    return OpenRun(run, data, evaluator, Path(run_dir))


@dataclass(frozen=True)
class BlockRanking:
    """How DNA's search measures block losses: the teacher (default: the run's `teacher.checkpoint`), the
    number of val images, and the measure (`mse`, DNA's Eq. 3, or `relative_l1`, its code's |error| / std)."""

    teacher: str | None = None
    images: int = 1000
    measure: str = "mse"


def block_ranker(opened: OpenRun, ranking: BlockRanking) -> BlockLossRanker:
    """The ranker of `ranking` on the run's val split, the teacher cut into blocks as in training."""
    source = ranking.teacher or opened.run.config.get("teacher", {}).get("checkpoint")
    if not source or source == "snapshot":
        raise SearchError("ranking by block losses needs a teacher: this run was not trained with one (DNA's "
                          "`teacher: {name: blocks, checkpoint: ...}`); pass --block-teacher EXPORT_OR_RUN")
    if opened.data.val is None:
        raise SearchError("ranking by block losses measures on the val split, which this run has none of; "
                          "train with data.val_size > 0")
    if ranking.images < 1:
        raise SearchError(f"block-loss ranking needs at least one image, got {ranking.images}")
    device = next(opened.run.net.parameters()).device
    module, resolution = load_network(source, device)
    teacher = TeacherBlocks(module, resolution, opened.run.in_channels)
    batches, seen = [], 0
    for images, _ in opened.evaluator.split_batches("val"):
        if seen >= ranking.images:
            break
        batches.append(images[: ranking.images - seen])
        seen += batches[-1].shape[0]
    return BlockLossRanker(opened.run.net, teacher, batches, measure=ranking.measure, source=str(source))


def best_under(front: Sequence[Candidate], budget: Constraint) -> Candidate | None:
    """The best front member (most accurate, or lowest block loss) within a MACs, params or latency budget
    (None when none fits).

    A latency budget matches nothing on a front searched without latency figures.
    """
    if budget.metric == "latency" and any(c.latency_ms is None for c in front):
        return None
    fitting = [c for c in front if budget.admits(c.cost(budget.metric))]
    return max(fitting, key=lambda c: c.score()) if fitting else None


@dataclass(frozen=True)
class Delivered:
    """An exported sub-network's accuracies (val is None without a val split) and ONNX check."""

    val: EvalResult | None
    test: EvalResult
    onnx_diff: float | None


def deliver(opened: OpenRun, arch: Arch, out_dir: Path, *, budget: Constraint | None = None,
            weights_format: str = "safetensors", onnx: bool = True, overwrite: bool = False) -> Delivered:
    """Export `arch` with recalibrated BN statistics and a model card of its val/test accuracy; check the ONNX."""
    ev, data = opened.evaluator, opened.data
    val = ev.evaluate(arch, "val") if data.val is not None else None
    test = ev.evaluate(arch, "test")
    card = {"source": str(opened.source), "checkpoint_id": opened.run.checkpoint_id, "dataset": data.name,
            "test": test, "mean": data.train.normalizer.mean, "std": data.train.normalizer.std}
    if val is not None:
        card["val"] = val
    if budget is not None:
        card["budget"] = str(budget)
    export_subnet(ev.extract(arch), opened.run.space, arch, opened.run.num_classes, opened.run.in_channels, out_dir,
                  card=card, weights_format=weights_format, onnx=onnx, overwrite=overwrite)
    return Delivered(val, test, verify_onnx(out_dir) if onnx else None)


def _evaluate_many(opened: OpenRun, archs: Sequence[Arch], split: str, dist: DistContext) -> list[EvalResult]:
    return sharded_map(lambda part: [opened.evaluator.evaluate(a, split) for a in part], list(archs), dist)


class _PredictorScreen:
    """Prescreen hook: refit the accuracy predictor on the search's evaluated candidates, keep the top k.

    It fits on what the search hands it (restored from its state after a resume), never on a record of
    its own, so a resumed search screens exactly as an uninterrupted one.
    """

    def __init__(self, opened: OpenRun):
        self.predictor = AccuracyPredictor(opened.run.space)

    def __call__(self, children: list[Arch], k: int, evaluated: Sequence[Candidate]) -> list[Arch]:
        self.predictor.fit([c.arch for c in evaluated], [c.score() for c in evaluated])
        return self.predictor.prescreen(children, k)


def predictor_report(
    opened: OpenRun, evaluated: Sequence[Candidate], held_out: float = 0.2
) -> dict[str, Any] | None:
    """Rank correlation (Kendall tau) of a predictor fit on the first evaluations, on the last `held_out` share."""
    n_test = int(len(evaluated) * held_out)
    if n_test < 3 or len(evaluated) - n_test < 3:
        return None
    train, test = evaluated[:-n_test], evaluated[-n_test:]
    predictor = AccuracyPredictor(opened.run.space).fit([c.arch for c in train], [c.score() for c in train])
    return {
        "kendall_tau": predictor.rank_correlation([c.arch for c in test], [c.score() for c in test]),
        "fit_on": len(train),
        "held_out": n_test,
    }


def run_search(
    opened: OpenRun,
    out_dir: Path,
    *,
    constraints: Sequence[str] = (),
    budgets: Sequence[str] = (),
    settings: SearchSettings | None = None,
    predictor: bool = False,
    latency: Callable[[Arch], float] | None = None,
    progress: bool = True,
    dist: DistContext = SINGLE,
    pareto_reading: str = "staircase",
    block_ranking: BlockRanking | None = None,
) -> dict[str, Any]:
    """Search the run's space on val, measure the chosen sub-networks on test, write out_dir/front.json.

    The headline figures (mean Pareto accuracy in `pareto_reading`, buckets, smallest and largest) are test
    accuracies of sub-networks selected on val; the val figures stand beside them. With `settings.rank_by`
    "block_loss" (DNA) candidates are ranked by their summed block losses against a teacher on val images
    (`block_ranking`: which teacher, how many images, which measure); the chosen ones are then measured
    for accuracy on val and test.
    """
    if pareto_reading not in READINGS:
        raise SearchError(f"unknown Pareto reading {pareto_reading!r}; use one of {list(READINGS)}")
    started = time.perf_counter()
    settings = settings or SearchSettings()
    run = opened.run
    objectives = Objectives(
        run.space, run.num_classes, run.in_channels, [Constraint.parse(c) for c in constraints], latency
    )

    by_blocks = settings.rank_by == "block_loss"
    ranker = block_ranker(opened, block_ranking or BlockRanking()) if by_blocks else None

    def evaluate(archs: list[Arch]) -> list[float]:
        if ranker is not None:
            return sharded_map(ranker, list(archs), dist)
        return [r.top1 for r in _evaluate_many(opened, archs, "val", dist)]

    screen = _PredictorScreen(opened) if predictor else None
    state_path = out_dir / "search_state.json"
    show = progress and dist.is_main
    source = f"checkpoint {run.checkpoint_id[:16]}"  # a different checkpoint makes a saved state stale
    if ranker is not None:
        source += f", {ranker.describe()}"
    budget_results: list[tuple[Constraint, Candidate | None]] = []
    if budgets:
        found = budget_search(
            run.space, objectives, evaluate, [Constraint.parse(b) for b in budgets], settings,
            state_path=state_path, progress=show, prescreen=screen, source=source,
        )
        budget_results, evaluated = found.answers, found.evaluated
    else:
        result = evolutionary_search(
            run.space, objectives, evaluate, settings, state_path=state_path, progress=show, prescreen=screen,
            source=source,
        )
        evaluated = list(result.evaluated)
    extremes = [run.space.smallest(), run.space.largest()]
    everything = {c.arch: c for c in evaluated}
    for arch, value in zip(extremes, evaluate(extremes)):
        everything.setdefault(arch, measured(objectives, arch, value, settings.rank_by))
    front = pareto_front(everything.values())
    low, high = objectives.space_range("macs")
    buckets = bucket_table(everything.values(), low, high, NUM_BUCKETS)
    chosen = (
        {c.arch for c in front}
        | set(extremes)
        | {c.arch for _, c in budget_results if c is not None}
        | {b.best.arch for b in buckets if b.best is not None}
    )
    ordered = sorted(chosen, key=lambda a: a.to_json())  # the same order on every rank
    tests: dict[Arch, EvalResult] = {}
    vals: dict[Arch, EvalResult] = {}  # block-loss ranking: the chosen sub-networks' val accuracy
    splits = ("val", "test") if by_blocks else ("test",)
    for split in splits:
        found = vals if split == "val" else tests
        with tqdm(total=len(ordered), disable=not show, desc=f"{split} split", unit="eval",
                  dynamic_ncols=True) as bar:
            for start in range(0, len(ordered), TEST_CHUNK):
                part = ordered[start : start + TEST_CHUNK]
                found.update(zip(part, _evaluate_many(opened, part, split, dist)))
                bar.update(len(part))
    if by_blocks:
        everything = {a: dataclasses.replace(c, val_top1=vals[a].top1) if a in vals else c
                      for a, c in everything.items()}
        front = [everything[c.arch] for c in front]
        buckets = [dataclasses.replace(b, best=None if b.best is None else everything[b.best.arch]) for b in buckets]
        budget_results = [(b, None if c is None else everything[c.arch]) for b, c in budget_results]

    def tested(c: Candidate) -> Candidate:
        if c.arch not in tests:
            return c
        return dataclasses.replace(c, test_top1=tests[c.arch].top1, test_top5=tests[c.arch].top5)

    def with_test(c: Candidate) -> dict[str, Any]:
        return tested(c).to_dict()

    # selected on val, reported on test: every reading of both splits, the chosen one as the headline
    summary = pareto_summary([tested(c) for c in front], low, high)

    report = {
        "format": FRONT_FORMAT,
        "run_dir": str(opened.source),
        "checkpoint": run.checkpoint_id,
        "space": run.space.name,
        "num_classes": run.num_classes,
        "cost": settings.cost,
        "rank_by": settings.rank_by,
        "block_ranking": None if ranker is None else ranker.describe(),
        "constraints": list(constraints),
        "front": [with_test(c) for c in front],
        "evaluated": [c.to_dict() for c in everything.values()],
        "buckets": [
            {"low": b.low, "high": b.high, "best": None if b.best is None else with_test(b.best)}
            for b in buckets
        ],
        "mean_pareto_accuracy": summary[pareto_reading]["test"],
        "mean_pareto_accuracy_val": summary[pareto_reading]["val"],
        "pareto_reading": pareto_reading,
        "mean_pareto_accuracies": summary,
        "range": {"low": low, "high": high},
        "smallest": with_test(everything[extremes[0]]),
        "largest": with_test(everything[extremes[1]]),
        "budgets": [
            {"budget": str(b), "best": None if c is None else with_test(c)} for b, c in budget_results
        ],
        "images": {"val": len(opened.data.val) if opened.data.val is not None else 0,
                   "test": len(opened.data.test)},
        "search": {
            "evaluations": len(evaluated),
            "generations": settings.iterations,
            "wall_time": time.perf_counter() - started,
            "settings": settings.to_dict(),
            "predictor": predictor_report(opened, evaluated) if predictor else None,
        },
    }
    if dist.is_main:
        atomic_write_text(out_dir / "front.json", json.dumps(report, indent=1))
    return report
