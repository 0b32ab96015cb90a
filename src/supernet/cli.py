"""The `supernet` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import supernet
from supernet import spaces
from supernet.allocator import retain_freed_memory
from supernet.checkpoint import RunDir, RunDirError, load_checkpoint, require_keys
from supernet.config import RESUME_OVERRIDES, Config, ConfigError, load_config
from supernet.cost import cost, summary
from supernet.space import SearchSpace

if TYPE_CHECKING:
    from supernet.search.job import OpenRun

EPILOG = "Run `supernet COMMAND --help` for a command's options."


def _cmd_space(args: argparse.Namespace) -> int:
    space = spaces.get(args.name)
    num_classes = space.spec.num_classes if args.num_classes is None else args.num_classes
    if args.json:
        out = {"space": space.to_dict(), "size": space.size()}
        for label, arch in (("smallest", space.smallest()), ("largest", space.largest())):
            c = cost(space, arch, num_classes)
            out[label] = {"arch": arch.to_dict(), "macs": c.macs, "params": c.params}
        print(json.dumps(out, indent=2))
    else:
        print(summary(space, num_classes))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume and args.config:
        raise ConfigError("--resume continues a run with its saved config; drop CONFIG "
                          "(a few settings may change with --set, see --help)")
    if not args.resume and not args.config:
        raise ConfigError("give a recipe (e.g. configs/alphanet.yaml) or --resume RUN_DIR")
    if args.from_epoch is not None and not args.resume:
        raise ConfigError("--from-epoch N goes with --resume RUN_DIR")
    config = None if args.resume else load_config(args.config, args.overrides)
    code, _ = _train(config, args)
    return code


def _train(config: Config | None, args: argparse.Namespace, note: str | None = None) -> tuple[int, Path | None]:
    """Train `config` (or resume `args.resume`) in one process or under torchrun; (exit code, the run
    directory once training finished on the main process, else None)."""
    from supernet.distributed import init_from_env, shutdown
    from supernet.training.loop import Trainer, TrainingInterrupted, TrainingStopped

    ctx = init_from_env()
    trainer = None
    try:
        if args.resume:
            trainer = Trainer(None, args.resume, resume=True, progress=not args.no_progress, dist=ctx,
                              resume_overrides=args.overrides, from_epoch=getattr(args, "from_epoch", None))
        else:
            out = args.out or f"runs/{Path(args.config).stem}"
            trainer = Trainer(config, out, force=args.force, progress=not args.no_progress, dist=ctx)
        if ctx.is_main:
            print(f"run directory: {trainer.run_dir.root}", file=sys.stderr)
            if note:
                print(note, file=sys.stderr)
        if args.max_steps is not None and args.max_steps <= trainer.global_step:
            raise ConfigError(f"--max-steps {args.max_steps} is not beyond the run's step {trainer.global_step}; "
                              "give a later step or leave it out to train to the end")
        result = trainer.run(until_step=args.max_steps)
    except TrainingInterrupted as err:
        print(f"supernet {args.command}: {err}", file=sys.stderr)
        return 130, None
    except TrainingStopped as err:
        print(f"supernet {args.command}: stopped: {err}", file=sys.stderr)
        return 3, None
    finally:
        if trainer is not None:
            trainer.close()
        shutdown(ctx)
    if not ctx.is_main:
        return 0, None
    state = "finished" if result.finished else "paused (resume with --resume)"
    print(f"{state} at step {result.global_step}/{result.total_steps}; checkpoints in {trainer.run_dir.checkpoints}")
    return 0, trainer.run_dir.root if result.finished else None


def _parse_classes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        classes = []
    if not classes or min(classes) < 0:
        raise ConfigError(f"--classes {text!r}: give class indices separated by commas, like 0,1,2,3,4")
    return classes


def _fixed_network_run(args: argparse.Namespace, build: Callable[[], Config], default_out: str) -> int:
    """distill / finetune: build the fixed network's config (unless resuming), train it, export it."""
    from supernet.retrain import export_network

    if args.resume and args.source:
        raise ConfigError(f"--resume continues the run with its saved settings; drop {args.source}")
    if not args.resume and not args.source:
        raise ConfigError(f"give what to train (see `supernet {args.command} --help`) or --resume RUN_DIR")
    config = None if args.resume else build()
    if not args.resume and args.out is None:
        args.out = default_out
    note = None
    if config is not None and config.network is not None:
        lineage = config.network.lineage
        note = f"{lineage['method']} {lineage['from']}: settings from {lineage['settings']}"
    code, run_dir = _train(config, args, note)
    if code or run_dir is None:
        return code
    done = export_network(run_dir, onnx=not args.no_onnx, overwrite=True)
    after = f"test top-1 {done.test.top1:.2%}"
    if done.before is not None:
        print(f"before: test top-1 {done.before['top1']:.2%} (the export it started from); after: {after}")
    else:
        print(f"after: {after}")
    onnx = "" if done.onnx_diff is None else f"; ONNX matches PyTorch within {done.onnx_diff:.1e}"
    print(f"exported to {done.path} (MODEL_CARD.md records its lineage){onnx}")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from supernet.retrain import finetune_config

    if not args.resume and args.epochs is None:
        raise ConfigError("give --epochs N: how long to fine-tune")

    def build() -> Config:
        return finetune_config(args.source, epochs=args.epochs, recipe=args.config, from_scratch=args.from_scratch,
                               teacher=args.teacher, data=args.data, data_root=args.data_root,
                               classes=_parse_classes(args.classes), freeze_backbone=args.freeze_backbone,
                               layer_lr_decay=args.layer_lr_decay, overrides=args.overrides)

    tag = "retrain" if args.from_scratch else "finetune"
    return _fixed_network_run(args, build, f"runs/{tag}-{Path(str(args.source)).name}")


def _cmd_distill(args: argparse.Namespace) -> int:
    from supernet.retrain import distill_config

    if not args.resume and args.teacher is None:
        raise ConfigError("give --teacher: an export directory, or a run whose largest network teaches")

    def build() -> Config:
        return distill_config(args.source, args.teacher, recipe=args.config, arch=args.arch,
                              from_scratch=args.from_scratch, epochs=args.epochs, data=args.data,
                              data_root=args.data_root, classes=_parse_classes(args.classes),
                              overrides=args.overrides)

    return _fixed_network_run(args, build, f"runs/distill-{Path(str(args.source)).stem}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from supernet.search.job import open_run

    opened = open_run(args.run_dir, batch_size=args.batch_size, recalibration_images=args.recal_images,
                      cache_path=Path(args.run_dir) / "eval_cache.json")
    if args.widths is not None:
        return _eval_widths(opened, args)
    arch = opened.resolve_arch(args.arch)
    result = opened.evaluator.evaluate(arch, args.split)
    _warn_cache(opened.evaluator.cache_problem)
    c = cost(opened.run.space, arch, opened.run.num_classes, opened.run.in_channels)
    out = {"arch": arch.to_dict(), "split": args.split, "top1": result.top1, "top5": result.top5,
           "loss": result.loss, "images": result.images, "macs": c.macs, "params": c.params}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        top5 = "" if result.top5 is None else f"  top-5 {result.top5:.2%}"
        print(f"{args.arch}: {args.split} top-1 {result.top1:.2%}{top5}  loss {result.loss:.4f}  "
              f"({result.images} images; {c.macs / 1e6:.2f} MMACs, {c.params / 1e6:.3f} M params)")
    return 0


def _eval_widths(opened: OpenRun, args: argparse.Namespace) -> int:
    from supernet.search.widths import evaluate_widths, parse_widths, widths_table

    run = opened.run
    rows = evaluate_widths(opened.evaluator, run.space, parse_widths(args.widths), args.split, run.num_classes,
                           run.in_channels)
    _warn_cache(opened.evaluator.cache_problem)
    if args.json:
        print(json.dumps({"split": args.split, "widths": [r.to_dict() for r in rows]}, indent=2))
    else:
        print(widths_table(rows, args.split))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from supernet.distributed import init_from_env, shutdown
    from supernet.search.evolution import SearchSettings
    from supernet.search.job import BlockRanking, open_run, run_search

    out = Path(args.out or Path(args.run_dir) / "search")
    states = sorted(out.glob("search_state*.json")) if out.is_dir() else []
    if (out / "front.json").exists() and not (args.force or states):
        raise RunDirError(f"{out} already holds a finished search; choose another --out or pass --force")
    ctx = init_from_env()
    try:
        # the run is loaded first: a bad run directory fails before anything is created or deleted
        opened = open_run(args.run_dir, batch_size=args.batch_size, recalibration_images=args.recal_images,
                          cache_path=out / "eval_cache.json", dist=ctx)
        if args.force and ctx.is_main:
            for path in [out / "front.json", *states]:
                path.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        latency = None
        if args.latency_table:
            from supernet.search.latency import LatencyTable

            latency = LatencyTable.load(args.latency_table).predict
        settings = SearchSettings(
            population=args.population, parents=args.parents, parent_selection=args.parent_selection,
            num_buckets=args.buckets, cost_steps=args.cost_steps, mutations=args.mutations,
            mutation_prob=args.mutation_prob, crossovers=args.crossovers, iterations=args.iterations,
            seed=args.seed, prescreen_keep=args.prescreen_keep if args.predictor else None, rank_by=args.rank_by,
        )
        ranking = BlockRanking(args.block_teacher, args.block_images, args.block_measure)
        report = run_search(opened, out, constraints=args.constraint, budgets=args.budgets, settings=settings,
                            predictor=args.predictor, latency=latency, progress=not args.no_progress, dist=ctx,
                            pareto_reading=args.pareto_reading, block_ranking=ranking)
    finally:
        shutdown(ctx)
    if ctx.is_main:
        _print_front(report)
        print(f"wrote {out / 'front.json'}")
        _warn_cache(opened.evaluator.cache_problem)
    return 0


def _warn_cache(problem: str | None) -> None:
    if problem:
        print(f"supernet: warning: {problem}", file=sys.stderr)


def _print_front(report: dict) -> None:
    images = report.get("images", {})
    print(f"{len(report['front'])} sub-networks on the front (selected on {images.get('val', '?')} val images), "
          f"{report['search']['evaluations']} evaluated")
    print(f"mean Pareto accuracy ({report['pareto_reading']} reading): test {report['mean_pareto_accuracy']:.2%} "
          f"on {images.get('test', '?')} images, val {report['mean_pareto_accuracy_val']:.2%}")
    if report.get("block_ranking"):
        print(f"ranked by {report['block_ranking']} (DNA); the chosen sub-networks' accuracies below")
    screen = report["search"].get("predictor")
    if screen:
        print(f"predictor: held-out Kendall tau {screen['kendall_tau']:.3f} (fit on {screen['fit_on']}, "
              f"tested on {screen['held_out']} evaluations)")
    print(f"{'MACs bucket (M)':<20} {'MMACs':>8} {'val top-1':>10} {'test top-1':>11}")
    for b in report["buckets"]:
        best = b["best"]
        span = f"{b['low'] / 1e6:.2f}-{b['high'] / 1e6:.2f}"
        if best is None:
            print(f"{span:<20} {'-':>8}")
            continue
        test = "-" if best.get("test_top1") is None else f"{best['test_top1']:.2%}"
        print(f"{span:<20} {best['macs'] / 1e6:8.2f} {best['val_top1']:10.2%} {test:>11}")
    for item in report["budgets"]:
        best = item["best"]
        print(f"budget {item['budget']}: " + ("nothing found" if best is None else
              f"{best['macs'] / 1e6:.2f} MMACs, val {best['val_top1']:.2%}, test "
              + ("-" if best.get("test_top1") is None else f"{best['test_top1']:.2%}")))


def _cmd_export(args: argparse.Namespace) -> int:
    from supernet.search.front_file import read_front
    from supernet.search.job import best_under, deliver, open_run
    from supernet.search.objectives import Constraint
    from supernet.search.pareto import Candidate

    if bool(args.arch) == bool(args.from_front):
        raise ConfigError("give exactly one of --arch ARCH.json|largest|smallest and --from-front SEARCH_DIR")
    if args.from_front and not args.budget:
        raise ConfigError("--from-front needs --budget, e.g. --budget 'macs<=30e6'")
    budget = None
    front: list[Candidate] = []
    if args.from_front:  # read and check the front before the (slow) run is loaded
        budget = Constraint.parse(args.budget)
        try:
            front = [Candidate.from_dict(c) for c in read_front(args.from_front)["front"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{Path(args.from_front) / 'front.json'}: {err}") from None
        if budget.metric == "latency" and any(c.latency_ms is None for c in front):
            raise ConfigError(f"{Path(args.from_front) / 'front.json'} has no latency figures (its search ran "
                              "without --latency-table); search again with --latency-table TABLE, or give a "
                              "macs or params budget")
    opened = open_run(args.run_dir, batch_size=args.batch_size, recalibration_images=args.recal_images,
                      cache_path=Path(args.run_dir) / "eval_cache.json")
    if args.arch:
        arch = opened.resolve_arch(args.arch)
    else:
        best = best_under(front, budget)
        if best is None:
            raise ConfigError(f"no front member of {Path(args.from_front) / 'front.json'} satisfies {budget}; "
                              "relax the budget")
        arch = opened.run.space.validate(best.arch)
    done = deliver(opened, arch, Path(args.out), budget=budget, weights_format=args.weights, onnx=not args.no_onnx,
                   overwrite=args.overwrite)
    c = cost(opened.run.space, arch, opened.run.num_classes, opened.run.in_channels)
    print(f"exported to {args.out}: {c.macs / 1e6:.2f} MMACs, {c.params / 1e6:.3f} M params, "
          + (f"val top-1 {done.val.top1:.2%}, " if done.val else "") + f"test top-1 {done.test.top1:.2%}"
          + ("" if done.onnx_diff is None else f"; ONNX max |diff| {done.onnx_diff:.1e}"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from supernet.report import split_inputs, write_report

    runs, searches, exports = split_inputs([Path(p) for p in args.paths])
    index = write_report(runs, searches, Path(args.out), title=args.title, export_dirs=exports,
                         pareto_reading=args.pareto_reading)
    print(f"wrote {index}")
    return 0


def _space_or_run(text: str) -> tuple[SearchSpace, int]:
    """A preset, a space YAML, or a run directory's saved space; with its number of classes."""
    if Path(text).is_dir():
        run = RunDir(Path(text))
        run.require_existing()
        state = load_checkpoint(run.latest)
        require_keys(state, run.latest)
        return spaces.from_dict(state["space"], source=f"{run.latest} (saved space)"), int(state["num_classes"])
    space = spaces.get(text)
    return space, space.spec.num_classes


def _cmd_latency(args: argparse.Namespace) -> int:
    import random

    from supernet.search.latency import LatencyTable, evaluate_table

    space, run_classes = _space_or_run(args.space)
    num_classes = run_classes if args.num_classes is None else args.num_classes
    table = LatencyTable.build(space, num_classes, args.in_channels, backend=args.backend, batch=args.batch,
                               threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    table.save(args.out)
    print(f"profiled {len(table)} layers of {space.name!r} ({args.backend}, batch {args.batch}, "
          f"{args.threads} threads); wrote {args.out}")
    if args.held_out:
        rng = random.Random(args.seed + 1)
        err = evaluate_table(table, [space.sample(rng) for _ in range(args.held_out)])
        print(f"prediction error on {err.n} held-out sub-networks: mean {err.mean_abs_pct:.1f}%, "
              f"max {err.max_abs_pct:.1f}%, Kendall tau {err.rank_correlation:.3f}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from supernet.study import RayResources, UnitFailed, aggregate_finished, run_study

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    if args.aggregate_only:
        ignored = ["--" + dest.replace("_", "-") for dest in _STUDY_RUN_OPTIONS
                   if getattr(args, dest) != args.run_defaults[dest]]
        if ignored:
            print(f"supernet study: error: --aggregate-only runs nothing, so {', '.join(ignored)} would be ignored; "
                  "drop --aggregate-only to run the study, or drop those options", file=sys.stderr)
            return 2
        outcome = aggregate_finished(args.study, args.out)
        print(f"aggregated the {len(outcome.results)} of {outcome.units} units finished so far (none run); wrote "
              f"{outcome.out / 'study.json'}, {outcome.out / 'study.md'} and {outcome.out / 'study.html'}")
        return 0
    ray = RayResources(args.ray_processes, args.ray_cpus, args.ray_gpus)
    try:
        outcome = run_study(args.study, args.out, parallel=args.parallel, gpus=args.gpus, engine=args.engine,
                            ray=ray, ray_address=args.ray_address, ray_retries=args.ray_retries, reuse=args.reuse,
                            report=say)
    except UnitFailed as err:
        print(f"supernet study: error: {err}; run the same command again to continue", file=sys.stderr)
        return 1
    finished = len(outcome.results)
    print(f"{finished} of {outcome.units} units finished; wrote {outcome.out / 'study.json'}, "
          f"{outcome.out / 'study.md'} and {outcome.out / 'study.html'}")
    for failure in outcome.failures:
        print(f"failed: {failure}", file=sys.stderr)
    if outcome.failures:
        print("supernet study: fix the failures above and run the same command again; finished units are kept",
              file=sys.stderr)
        return 1
    return 0


# the study options that only matter when units run (their argparse names)
_STUDY_RUN_OPTIONS = ("parallel", "gpus", "engine", "ray_address", "ray_processes", "ray_cpus", "ray_gpus",
                      "ray_retries", "reuse")


def _cmd_import(args: argparse.Namespace) -> int:
    from supernet.published import import_checkpoint

    config = load_config(args.config) if args.config else None
    result = import_checkpoint(args.checkpoint, args.out, args.source_format, config, args.data_root, args.force,
                               args.resolutions, args.overrides)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    unused = f"; {len(result.unused)} unused by any forward pass (listed in import.json)" if result.unused else ""
    print(f"imported {result.format} ({result.variant}) as space {result.space!r}, {result.num_classes} classes: "
          f"{result.tensors} tensors placed{unused}")
    if result.archs:
        print(f"published sub-networks: {result.archs[0].parent}/ ({', '.join(p.stem for p in result.archs)})")
    print(f"run directory: {result.run_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from supernet.demo import run_demo

    run_demo(Path(args.out), recipe=Path(args.config) if args.config else None, overrides=args.overrides,
             progress=not args.no_progress)
    return 0


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _int_list(text: str) -> list[int]:
    """`160,224` -> [160, 224]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, like 160,224; got {text!r}")
    return values


def _probability(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _unit_interval(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
    return value


class _HelpWithDefaults(argparse.HelpFormatter):
    """Appends '(default: X)' to every option's help that has a real default and does not state one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default == argparse.SUPPRESS
                or not action.option_strings or default == []):
            return text
        return f"{text} (default: %(default)s)".strip()


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_positive_int, default=None, help="evaluation batch (default: the run's)")
    p.add_argument("--recal-images", type=_positive_int, default=None,
                   help="training images for BN recalibration (default: the run's train.recal_images)")


def _add_fixed_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a recipe YAML for the optimizer, data, regularisation and distill loss")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set optim.lr=0.01; with --resume only "
                   f"{', '.join(RESUME_OVERRIDES)}")
    p.add_argument("--data", choices=["fashion_mnist", "cifar10", "cifar100", "imagefolder"],
                   help="another data set (transfer): the classifier is replaced when its classes differ")
    p.add_argument("--data-root", help="its directory (default: the data set's standard location)")
    p.add_argument("--classes", metavar="I,J,...", help="train on these classes only, relabelled 0..k-1 (a new head)")
    p.add_argument("--out", help="run directory (default: runs/<command>-<source name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR, then export it")
    p.add_argument("--force", action="store_true", help="start over in an existing run directory")
    p.add_argument("--max-steps", type=_positive_int, default=None,
                   help="pause after this global step (checkpointed; continue with --resume)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX file of the export")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `supernet` command."""
    parser = argparse.ArgumentParser(
        prog="supernet",
        description="Once-for-all training: train one weight-sharing supernet, then extract specialised "
        "sub-networks for many deployment budgets without retraining.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"supernet {supernet.__version__}")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc malloc at its defaults; by default supernet makes it keep freed memory for reuse, "
        "which avoids page faults: CPU training steps get faster and no-grad forward passes up to 2x faster",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    original_add = commands.add_parser

    def add_parser(name: str, **kwargs: object) -> argparse.ArgumentParser:
        return original_add(name, formatter_class=_HelpWithDefaults, **kwargs)

    commands.add_parser = add_parser  # type: ignore[method-assign]

    space = commands.add_parser(
        "space",
        help="print a search space's summary: stages, choices, size, MACs/params range",
        description="Print a search space's stages and choices, its number of sub-networks, and the MACs "
        "and parameters of its smallest and largest sub-network.",
    )
    space.add_argument("name", help=f"a preset ({', '.join(spaces.names())}) or a path to a space .yaml file")
    space.add_argument("--num-classes", type=_positive_int, default=None, help="classes of the classifier (default: the number the preset is designed for)")
    space.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    space.set_defaults(handler=_cmd_space)

    train = commands.add_parser(
        "train",
        help="train a supernet with a recipe (AlphaNet, DepS, EnNAS, SPOS, Cream, DNA, BigNAS, OFA, CompOFA, "
        "AttentiveNAS, ...)",
        description="Train a supernet. The run directory receives the resolved config, metrics.jsonl, "
        "TensorBoard events and checkpoints (latest.pt, epoch_NNN.pt), all written atomically. "
        "An interrupted run continues bit-exactly with --resume.",
    )
    train.add_argument("config", nargs="?", help="a recipe YAML (see configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.lr=0.05 --set train.epochs=2; with --resume "
                       f"only {', '.join(RESUME_OVERRIDES)} may change (recorded in metrics.jsonl and config.yaml)")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--from-epoch", type=_positive_int, metavar="N",
                       help="with --resume: continue from checkpoints/epoch_N.pt instead of the latest; later "
                       "checkpoints and the metrics so far are moved to checkpoints/superseded-stepS-TIME/")
    train.add_argument("--force", action="store_true",
                       help="start over in an existing run directory (deletes its checkpoints, metrics, config "
                       "and TensorBoard events; other files stay)")
    train.add_argument("--max-steps", type=_positive_int, default=None,
                       help="pause after this global step (checkpointed; continue with --resume)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_cmd_train)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune an exported sub-network, retrain it from scratch, or transfer it to other data",
        description="Continue training an exported sub-network with the weights it inherited from the supernet "
        "(settings: --config, else its run's with a tenth of the lr and no warm-up), or retrain it from scratch; "
        "with --data / --classes it transfers to another task with a fresh classifier. The run directory is a "
        "normal run (resume, metrics, TensorBoard); when training ends the network is exported to RUN/export "
        "with a model card of its lineage and its test accuracy before and after.",
    )
    finetune.add_argument("source", nargs="?", metavar="EXPORT_DIR", help="an export of `supernet export` / search")
    finetune.add_argument("--epochs", type=_positive_float, help="epochs to train")
    finetune.add_argument("--from-scratch", action="store_true",
                          help="re-initialise the weights and retrain the architecture (EnNAS's protocol; the control "
                          "for whether weight sharing helps), with the base settings' own lr and warm-up")
    finetune.add_argument("--teacher", help="add distillation from a frozen network: an export, or a run (its largest "
                          "network, e.g. the supernet the export came from); the loss is the config's distill")
    finetune.add_argument("--freeze-backbone", action="store_true",
                          help="train only the classifier (BN statistics still adapt)")
    finetune.add_argument("--layer-lr-decay", type=_unit_interval, default=1.0,
                          help="lr x DECAY^d for a layer d blocks below the head (stem deepest); 1 trains all at one lr")
    _add_fixed_network_options(finetune)
    finetune.set_defaults(handler=_cmd_finetune)

    distill = commands.add_parser(
        "distill",
        help="train one network from a frozen teacher (KL at a temperature or adaptive alpha-divergence)",
        description="Train one static network from a frozen teacher: loss kd_weight x divergence(student, "
        "teacher) + ce_weight x CE, from --config (without one: AlphaNet's 0.9 x T^2 KL(T = 1) + 0.1 x CE, "
        "Appendix C; configs/distill_adaptive.yaml uses the adaptive alpha-divergence). Same run directory, "
        "resume, logging and torchrun as train; the network is exported to RUN/export when training ends.",
    )
    distill.add_argument("source", nargs="?", metavar="STUDENT",
                         help="an export (its weights inherited unless --from-scratch), a run directory, or a space "
                         "preset / YAML (with --arch; trained from scratch)")
    distill.add_argument("--teacher", help="an export directory, or a run directory / checkpoint (its largest network)")
    distill.add_argument("--arch", help="the student in a run or space: largest, smallest, a width like 0.5x "
                         "(slimmable spaces) or an ARCH.json (default: largest)")
    distill.add_argument("--epochs", type=_positive_float, help="epochs to train (default: the config's)")
    distill.add_argument("--from-scratch", action="store_true", help="an export student: start from fresh weights")
    _add_fixed_network_options(distill)
    distill.set_defaults(handler=_cmd_distill)

    ev = commands.add_parser(
        "eval", help="accuracy of one sub-network after BN recalibration (cached per checkpoint)",
        description="Recalibrate BN statistics of a sub-network on training images, then measure top-1/top-5 "
        "on the held-out val split (or the official test split). Results are cached in RUN_DIR/eval_cache.json.",
    )
    ev.add_argument("run_dir", help="a run directory of `supernet train`")
    ev.add_argument("--arch", default="largest", help="largest, smallest or an ARCH.json (default: largest)")
    ev.add_argument("--split", choices=["val", "test"], default="val",
                    help="held-out val split (selection) or the official test split (final numbers)")
    ev.add_argument("--widths", metavar="SPEC",
                    help="slimmable spaces: a table of the width multipliers in SPEC: comma-separated values or start:stop:step "
                    "ranges, both ends included (AlphaNet's Table 1: 0.25:0.75:0.05; or 0.25,0.5,1.0); each width's BN "
                    "statistics are recalibrated before it is measured")
    ev.add_argument("--json", action="store_true", help="print JSON")
    _add_eval_options(ev)
    ev.set_defaults(handler=_cmd_eval)

    search = commands.add_parser(
        "search", help="evolutionary search of the accuracy-vs-MACs Pareto front (or the best per budget)",
        description="Evolutionary search of the accuracy-vs-MACs Pareto front under constraints, by default "
        "AlphaNet's protocol (section 4.2): 512 random sub-networks, then 19 generations of 128 mutations and "
        "128 crossovers of the best 128, 5,376 evaluations; with --budgets, the best sub-network under each budget. Writes OUT/front.json with "
        "every evaluated sub-network, the front (val and test accuracy), the 6-bucket table and mean Pareto "
        "accuracy. A killed search continues from its last generation when run again with the same options. "
        "Under torchrun, evaluations are sharded across processes.",
    )
    search.add_argument("run_dir", help="a run directory of `supernet train`")
    search.add_argument("--out", help="search directory (default: RUN_DIR/search)")
    search.add_argument("--constraint", action="append", default=[], metavar="EXPR",
                        help="e.g. 'macs<=50e6', 'params<=1M', '10M<=macs<=30M', 'latency<=5ms' (repeatable)")
    search.add_argument("--budgets", nargs="+", default=[], metavar="EXPR",
                        help="budget mode: the best sub-network under each, e.g. --budgets 'macs<=2M' 'macs<=4M'")
    search.add_argument("--predictor", action="store_true",
                        help="pre-screen children with an accuracy predictor fit on the evaluations so far "
                        "(its held-out Kendall tau is printed and saved in front.json)")
    search.add_argument("--prescreen-keep", type=_positive_int, default=32,
                        help="children kept per generation by the predictor")
    search.add_argument("--latency-table", help="a latency lookup table JSON (enables latency constraints)")
    search.add_argument("--population", type=_positive_int, default=512, help="random sub-networks evaluated first")
    search.add_argument("--parents", type=_positive_int, default=128,
                        help="parents per generation (top) or per bucket (buckets)")
    search.add_argument("--parent-selection", choices=["top", "per_cost_step", "buckets"], default="top",
                        help="top: the best --parents so far (AlphaNet's paper); per_cost_step: the best of each of "
                        "--cost-steps equal MACs steps (AlphaNet's and AttentiveNAS's code); buckets: the best "
                        "--parents of each of --buckets equal MACs buckets")
    search.add_argument("--cost-steps", type=_positive_int, default=100, help="steps of per_cost_step")
    search.add_argument("--buckets", type=_positive_int, default=6, help="buckets of the buckets selection")
    search.add_argument("--mutations", type=_count, default=128, help="mutated children per generation")
    search.add_argument("--mutation-prob", type=_probability, default=0.2, help="probability that a gene mutates")
    search.add_argument("--crossovers", type=_count, default=128, help="crossed children per generation")
    search.add_argument("--iterations", type=_count, default=19, help="generations after the initial population")
    search.add_argument("--seed", type=int, default=0, help="seed of the search's random draws")
    search.add_argument("--pareto-reading", choices=["staircase", "trapezoid"], default="staircase",
                        help="how mean Pareto accuracy reads the front between its members (both are saved)")
    search.add_argument("--rank-by", choices=["val_top1", "block_loss"], default="val_top1",
                        help="val_top1: accuracy after BN recalibration; block_loss: DNA's summed block losses "
                        "against the run's block teacher (the chosen sub-networks are then measured on val and test)")
    search.add_argument("--block-teacher", metavar="EXPORT_OR_RUN",
                        help="block_loss: the teacher (default: the run's teacher.checkpoint)")
    search.add_argument("--block-images", type=_positive_int, default=1000,
                        help="block_loss: val images the losses are measured on")
    search.add_argument("--block-measure", choices=["mse", "relative_l1"], default="mse",
                        help="block_loss: mse (DNA's Eq. 3) or relative_l1 (mean |error| / std, DNA's search code)")
    search.add_argument("--force", action="store_true",
                        help="discard a finished or saved search in --out (front.json, search_state*.json) and start over")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_eval_options(search)
    search.set_defaults(handler=_cmd_search)

    export = commands.add_parser(
        "export", help="write a standalone sub-network: arch JSON, weights, ONNX, model card",
        description="Export one sub-network with recalibrated BN statistics as a plain PyTorch model "
        "(safetensors or weights-only .pt), an ONNX file checked against PyTorch with onnxruntime, its "
        "architecture JSON and a model card. Load it with supernet.load_subnet(DIR).",
    )
    export.add_argument("run_dir", help="a run directory of `supernet train`")
    export.add_argument("--arch", help="largest, smallest or an ARCH.json")
    export.add_argument("--from-front", metavar="SEARCH_DIR", help="pick from a search's front.json ...")
    export.add_argument("--budget", help="... the most accurate member satisfying e.g. 'macs<=30e6'")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument("--weights", choices=["safetensors", "torch"], default="safetensors", help="weights file format")
    export.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    _add_eval_options(export)
    export.set_defaults(handler=_cmd_export)

    report = commands.add_parser(
        "report", help="HTML page + PNG plots: fronts, training curves, bucket table, training cost",
        description="Write an HTML report with PNG plots: accuracy vs MACs of every evaluated sub-network and "
        "the front (several runs overlaid), training curves of the smallest and largest networks, the MACs "
        "bucket table, mean Pareto accuracy, training cost and the exported models. Every accuracy names "
        "its split and number of images. Malformed metrics records are skipped and listed in the notes.",
    )
    report.add_argument("paths", nargs="+", metavar="DIR",
                        help="run directories, search directories and/or export directories (any mix)")
    report.add_argument("--out", required=True, help="output directory for index.html and the plots")
    report.add_argument("--title", default=None, help="page title (default: the runs' names)")
    report.add_argument("--pareto-reading", choices=["staircase", "trapezoid"], default="staircase",
                        help="the one reading every search's mean Pareto accuracy is shown in")
    report.set_defaults(handler=_cmd_report)

    latency = commands.add_parser(
        "latency", help="build a per-layer latency lookup table on this device (for --latency-table)",
        description="Profile every distinct layer of a search space on this machine (torch eager or onnxruntime) "
        "and write a lookup table that predicts any sub-network's latency; run it on the target device and "
        "copy the JSON back. Reports the prediction error on held-out sub-networks measured whole.",
    )
    latency.add_argument("space", help="a preset, a space YAML or a run directory (its saved space)")
    latency.add_argument("--out", required=True, help="the table JSON to write")
    latency.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch", help="runtime to time")
    latency.add_argument("--batch", type=_positive_int, default=1, help="images per timed call")
    latency.add_argument("--threads", type=_positive_int, default=1, help="CPU threads of the runtime")
    latency.add_argument("--warmup", type=_count, default=5, help="untimed calls per layer")
    latency.add_argument("--repeats", type=_positive_int, default=20, help="timed calls per layer (median)")
    latency.add_argument("--num-classes", type=_positive_int, default=None, help="classes (default: the space's)")
    latency.add_argument("--in-channels", type=_positive_int, default=None, help="image channels (default: the space's)")
    latency.add_argument("--held-out", type=_count, default=20, help="sub-networks measured to report the error (0: skip)")
    latency.add_argument("--seed", type=int, default=0, help="seed of the held-out sub-networks")
    latency.set_defaults(handler=_cmd_latency)

    study = commands.add_parser(
        "study", help="run a comparison: trials x seeds x budgets, each trained and searched alike, aggregated",
        description="Run every trial of a study file (a recipe plus --set overrides each) with every seed at every "
        "budget point (equal epochs, or epochs set so that each trial's counted training MACs match a reference "
        "trial's), search each with the study's protocol, and aggregate: study.json, study.md and study.html "
        "with mean and standard deviation over seeds of the smallest and largest networks' and mean Pareto test "
        "accuracy, the 6-bucket table, accuracy at MACs targets, training cost, the cost to an equal front, "
        "EnNAS's diagnostics, which differences are larger than the seed spread, and plots of the fronts and "
        "budget curves. A killed study continues where it stopped; finished units are never rerun. Units run on "
        "this machine (--parallel) or as Ray Tune trials (--engine ray).",
    )
    study.add_argument("study", help="the study YAML (trials, seeds, budget, search; see the README's Studies "
                       "section)")
    study.add_argument("--out", required=True, help="the study directory")
    study.add_argument("--parallel", type=_positive_int, default=1,
                       help="units run at once, each on its share of the CPU cores (and one GPU when --gpus)")
    study.add_argument("--gpus", type=_count, default=0, help="GPUs to spread parallel units over (default: none)")
    study.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this machine's runner; ray: Ray Tune trials (pip install 'supernet[ray]')")
    study.add_argument("--ray-address", default=None,
                       help="engine ray: a running cluster ('auto', 'ray://HOST:10001'); default: start a local one")
    study.add_argument("--ray-processes", type=_positive_int, default=1,
                       help="engine ray: processes per unit; more than one runs the unit as a Ray Train "
                       "TorchTrainer DDP job (default: 1)")
    study.add_argument("--ray-cpus", type=_positive_int, default=1,
                       help="engine ray: CPUs (and torch threads) per process (default: 1)")
    study.add_argument("--ray-gpus", type=_count, default=0, help="engine ray: GPUs per process, 0 or 1 (default: 0)")
    study.add_argument("--ray-retries", type=_count, default=2,
                       help="engine ray: times a failed unit is retried, resuming from its checkpoint (default: 2)")
    study.add_argument("--reuse", action="append", default=[], metavar="DIR",
                       help="another study's directory whose finished units are adopted where they match one of "
                       "this study's exactly (recipe settings, overrides, seed, epochs, search protocol) instead "
                       "of being rerun; repeatable")
    study.add_argument("--aggregate-only", action="store_true",
                       help="run nothing: aggregate the units finished so far into study.json, study.md and "
                       "study.html (a study run in parts, published part-way); refuses --parallel, --reuse, --engine and "
                       "--ray-*")
    study.set_defaults(handler=_cmd_study,
                       run_defaults={dest: study.get_default(dest) for dest in _STUDY_RUN_OPTIONS})

    imp = commands.add_parser(
        "import", help="read a published OFA or AttentiveNAS/AlphaNet supernet checkpoint into a run directory",
        description="Map every tensor of a published supernet checkpoint (OFA's ofa_mbv3_d234_e346_k357_w1.0 / "
        "w1.2, AttentiveNAS's or AlphaNet's supernet) onto our supernet of the matching preset (ofa_mbv3, "
        "ofa_mbv3_w12, alphanet) and write a run directory that eval, search, export, latency, report and "
        "finetune accept. Loads weights only; an unmapped, missing or mis-shaped tensor is an error naming it. "
        "AttentiveNAS-format imports also get archs/NAME.json for the authors' published A0-A6 models.",
    )
    imp.add_argument("checkpoint", help="the checkpoint file as its authors distribute it")
    imp.add_argument("--format", dest="source_format", choices=["ofa_mbv3", "attentivenas"], default=None,
                     help="the checkpoint's code base (default: detected from its tensor names)")
    imp.add_argument("--out", required=True, help="the run directory to write")
    imp.add_argument("--data-root", default=None,
                     help="ImageFolder tree (train/ and val/) that eval, search and export of the run read")
    imp.add_argument("--config", default=None,
                     help="a recipe whose settings the run keeps for fine-tuning (default: the defaults on an "
                     "ImageFolder tree); its space is replaced by the checkpoint's")
    imp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting of the run's config (repeatable)")
    imp.add_argument("--resolutions", type=_int_list, default=None, metavar="R[,R...]",
                     help="search and evaluate at these input sides only (default: the preset's, e.g. 128..224)")
    imp.add_argument("--force", action="store_true", help="replace an earlier import in --out")
    imp.set_defaults(handler=_cmd_import)

    demo = commands.add_parser(
        "demo", help="the main job: train (DepS + adaptive alpha), search, export 3 budgets, report",
        description="Run the whole once-for-all pipeline on Fashion-MNIST with the fmnist space: train with "
        "DepS's schedule and AlphaNet's adaptive alpha-divergence, search the Pareto front, export the best "
        "sub-network under three MACs budgets and write the report. Run again to continue where it stopped.",
    )
    demo.add_argument("--out", default="runs/demo", help="where everything goes (default: runs/demo)")
    demo.add_argument("--config", help="another recipe instead of configs/demo.yaml")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override the recipe (first run only)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (config, data, architecture, checkpoint): printed as one line, no traceback."""
    from supernet.blockwise import BlockwiseError
    from supernet.data import DatasetError
    from supernet.evaluation import CacheError
    from supernet.export import ExportError
    from supernet.published import PublishedFormatError
    from supernet.report import ReportError
    from supernet.search.evolution import SearchError
    from supernet.search.front_file import FrontFileError
    from supernet.search.latency import LatencyError, MissingLayerError
    from supernet.search.objectives import ConstraintError
    from supernet.space import ArchError, SpaceError
    from supernet.study import StudyError

    return (SpaceError, ArchError, ConfigError, DatasetError, RunDirError, ExportError, CacheError, SearchError,
            ConstraintError, LatencyError, MissingLayerError, ReportError, FrontFileError, BlockwiseError,
            PublishedFormatError, StudyError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `supernet` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    if not args.system_malloc:
        retain_freed_memory()
    from supernet.training.loop import TrainingInterrupted, TrainingStopped

    try:
        return handler(args)
    except _user_errors() as err:
        # an OS error with a number (a missing folder on a write) gets the disk advice; our own one-line
        # FileNotFoundErrors carry no number and say what to do themselves
        text = describe_os_error(err) if isinstance(err, OSError) and err.errno else str(err)
        print(f"supernet {args.command}: error: {text}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:  # `train` reports its own; this is the demo's training
        print(f"supernet {args.command}: {err}; then run `supernet {args.command}` again", file=sys.stderr)
        return 130
    except TrainingStopped as err:
        print(f"supernet {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"supernet {args.command}: interrupted; {_AFTER_INTERRUPT.get(args.command, 'nothing was lost')}",
              file=sys.stderr)
        return 130
    except OSError as err:
        print(f"supernet {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2


_AFTER_INTERRUPT = {
    "train": "the run continues from its last checkpoint with `supernet train --resume RUN_DIR`",
    "search": "run the same command again to continue from the last finished generation",
    "demo": "run it again to continue where it stopped",
    "study": "run the same command again to continue: finished units are kept, killed ones resume",
    "export": "the export directory was left as it was (exports are renamed into place when complete)",
}
_DISK_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere (--out)",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere (--out)",
    errno.EROFS: "the file system is read-only: write elsewhere (--out)",
    errno.EACCES: "permission denied: write elsewhere (--out) or fix the permissions",
    errno.EPERM: "permission denied: write elsewhere (--out) or fix the permissions",
    errno.ENOENT: "a folder on the way does not exist or cannot hold files: check the path",
}


def describe_os_error(err: OSError) -> str:
    """One line naming the file and what to do about an error of the operating system (disk, permissions)."""
    where = f" {err.filename}" if err.filename else ""
    advice = _DISK_ADVICE.get(err.errno or 0, "check the path and try again")
    return f"cannot access{where} ({err.strerror or err}); {advice}; files written before were kept"


if __name__ == "__main__":
    sys.exit(main())
