"""The main job: train (DepS + adaptive alpha-divergence), search, export three budgets, fine-tune one briefly,
report — resumable."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from supernet.config import load_config
from supernet.report import write_report
from supernet.retrain import export_network, finetune_config
from supernet.search.evolution import SearchSettings
from supernet.search.front_file import read_front
from supernet.search.job import best_under, deliver, open_run, run_search
from supernet.search.objectives import Constraint
from supernet.search.pareto import Candidate
from supernet.training.loop import Trainer

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
BUDGETS = ("macs<=1.5M", "macs<=3M", "macs<=6M")
FINETUNE = "macs<=3M"  # the export fine-tuned at the end, for FINETUNE_EPOCHS with its run's settings at lr / 10
FINETUNE_EPOCHS = 1.0
# A small search for 2 CPU cores; parents per MACs bucket keep the cheap end of the front breeding.
DEMO_SEARCH = SearchSettings(population=64, parents=16, parent_selection="buckets", mutations=32, crossovers=32,
                             iterations=4, prescreen_keep=16)


@dataclass(frozen=True)
class DemoRow:
    """One exported budget's line of the summary table."""

    budget: str
    macs: int
    val_top1: float
    test_top1: float
    path: Path
    finetuned_test_top1: float | None = None  # after the brief fine-tune (only the FINETUNE budget)


def run_demo(out: Path, *, recipe: Path | None = None, overrides: list[str] | None = None, progress: bool = True,
             search: SearchSettings = DEMO_SEARCH, budgets: tuple[str, ...] = BUDGETS,
             finetune: str | None = FINETUNE, finetune_epochs: float = FINETUNE_EPOCHS) -> list[DemoRow]:
    """Run (or continue) the whole pipeline under `out`; returns the summary rows. The export of budget
    `finetune` (None: none) is then fine-tuned for `finetune_epochs` into `out/finetune`."""
    run_dir, search_dir, report_dir = out / "run", out / "search", out / "report"
    if (run_dir / "checkpoints" / "latest.pt").is_file():
        print(f"[demo] continuing the run in {run_dir}")
        trainer = Trainer(None, run_dir, resume=True, progress=progress)
    else:
        config = load_config(recipe or _recipe(), overrides or [])
        print(f"[demo] training {config.schedule.name} + {config.distill.divergence} on {config.data.name} "
              f"into {run_dir}")
        trainer = Trainer(config, run_dir, force=True, progress=progress)
    trainer.run()
    search_dir.mkdir(parents=True, exist_ok=True)
    front_path = search_dir / "front.json"
    opened = open_run(run_dir, cache_path=search_dir / "eval_cache.json")
    if front_path.is_file() and not (search_dir / "search_state.json").is_file():
        report = read_front(search_dir)
    else:
        print(f"[demo] searching the Pareto front into {search_dir}")
        report = run_search(opened, search_dir, settings=search, predictor=True, progress=progress)
    front = [Candidate.from_dict(c) for c in report["front"]]
    rows = []
    for text in budgets:
        budget = Constraint.parse(text)
        best = best_under(front, budget)
        if best is None:
            print(f"[demo] no front member satisfies {budget}; skipped")
            continue
        target = out / "export" / str(budget).replace("<=", "_le_").replace(".", "p")
        done = deliver(opened, best.arch, target, budget=budget, overwrite=True)
        rows.append(DemoRow(str(budget), best.macs, done.val.top1, done.test.top1, target))
    chosen = next((i for i, r in enumerate(rows) if finetune and r.budget == str(Constraint.parse(finetune))), None)
    if chosen is not None:
        rows[chosen] = replace(rows[chosen], finetuned_test_top1=_finetune(rows[chosen].path, out / "finetune",
                                                                           finetune_epochs, progress))

    index = write_report([run_dir], [search_dir], report_dir, title="supernet demo: DepS + adaptive alpha on Fashion-MNIST",
                         export_dirs=[r.path for r in rows])
    print(summary(rows, report, run_dir, search_dir, index))
    return rows


def _finetune(export: Path, run_dir: Path, epochs: float, progress: bool) -> float:
    """Fine-tune `export` (resuming an interrupted fine-tune), export it into run_dir/export: its test top-1."""
    if (run_dir / "checkpoints" / "latest.pt").is_file():
        print(f"[demo] continuing the fine-tune in {run_dir}")
        trainer = Trainer(None, run_dir, resume=True, progress=progress)
    else:
        print(f"[demo] fine-tuning {export} for {epochs:g} epoch(s) into {run_dir}")
        trainer = Trainer(finetune_config(export, epochs=epochs), run_dir, force=True, progress=progress)
    trainer.run()
    trainer.close()
    return export_network(run_dir, overwrite=True).test.top1


def _recipe() -> Path:
    if not RECIPE.is_file():
        raise FileNotFoundError(f"demo recipe {RECIPE} not found; run from a source checkout or pass --config")
    return RECIPE


def summary(rows: list[DemoRow], report: dict, run_dir: Path, search_dir: Path, index: Path) -> str:
    """The closing table: where everything went and each budget's MACs and accuracies."""
    lines = [
        "",
        f"run (checkpoints, metrics, TensorBoard): {run_dir}",
        f"search (front.json):                     {search_dir}",
        f"report:                                  {index}",
        (
            f"smallest: val {report['smallest']['val_top1']:.2%} test {report['smallest']['test_top1']:.2%}   "
            f"largest: val {report['largest']['val_top1']:.2%} test {report['largest']['test_top1']:.2%}   "
            f"mean Pareto accuracy {report['mean_pareto_accuracy']:.2%} test "
            f"(val {report.get('mean_pareto_accuracy_val', float('nan')):.2%}, {report.get('pareto_reading', 'staircase')})"
        ),
        "",
        f"{'budget':<14} {'MMACs':>7} {'val top-1':>10} {'test top-1':>11}  exported to",
    ]
    for r in rows:
        lines.append(f"{r.budget:<14} {r.macs / 1e6:7.2f} {r.val_top1:10.2%} {r.test_top1:11.2%}  {r.path}")
    for r in rows:
        if r.finetuned_test_top1 is not None:
            lines.append(f"fine-tuned {r.budget}: test top-1 {r.test_top1:.2%} before, {r.finetuned_test_top1:.2%} "
                         f"after ({r.path.parent.parent / 'finetune' / 'export'})")
    return "\n".join(lines)
