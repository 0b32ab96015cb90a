"""The `supernet` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import supernet
from supernet import spaces
from supernet.allocator import retain_freed_memory
from supernet.cost import cost
from supernet.training.checkpoint import RunDirError
from supernet.training.config import ConfigError, load_config

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
        print(space.summary(num_classes))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from supernet.distributed import init_from_env, shutdown
    from supernet.training.loop import Trainer, TrainingStopped

    if args.resume and (args.config or args.overrides):
        raise ConfigError("--resume continues a run with its saved config; drop CONFIG and --set")
    if not args.resume and not args.config:
        raise ConfigError("give a recipe (e.g. configs/alphanet.yaml) or --resume RUN_DIR")
    config = None if args.resume else load_config(args.config, args.overrides)
    ctx = init_from_env()
    trainer = None
    try:
        if args.resume:
            trainer = Trainer(None, args.resume, resume=True, progress=not args.no_progress, dist=ctx)
        else:
            out = args.out or f"runs/{Path(args.config).stem}"
            trainer = Trainer(config, out, force=args.force, progress=not args.no_progress, dist=ctx)
        if ctx.is_main:
            print(f"run directory: {trainer.run_dir.root}", file=sys.stderr)
        result = trainer.run(until_step=args.max_steps)
    except TrainingStopped as err:
        print(f"supernet train: stopped: {err}", file=sys.stderr)
        return 3
    finally:
        if trainer is not None:
            trainer.close()
        shutdown(ctx)
    if not ctx.is_main:
        return 0
    state = "finished" if result.finished else "paused (resume with --resume)"
    print(f"{state} at step {result.global_step}/{result.total_steps}; checkpoints in {trainer.run_dir.checkpoints}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from supernet.search.job import open_run

    opened = open_run(args.run_dir, batch_size=args.batch_size, recalibration_images=args.recal_images,
                      cache_path=Path(args.run_dir) / "eval_cache.json")
    arch = opened.resolve_arch(args.arch)
    result = opened.evaluator.evaluate(arch, args.split)
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


def _cmd_search(args: argparse.Namespace) -> int:
    from supernet.distributed import init_from_env, shutdown
    from supernet.search.evolution import SearchSettings
    from supernet.search.job import open_run, run_search

    out = Path(args.out or Path(args.run_dir) / "search")
    if (out / "front.json").exists() and not (args.force or (out / "search_state.json").exists()):
        raise RunDirError(f"{out} already holds a finished search; choose another --out or pass --force")
    ctx = init_from_env()
    try:
        if args.force and ctx.is_main:
            for name in ("front.json", "search_state.json"):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        opened = open_run(args.run_dir, batch_size=args.batch_size, recalibration_images=args.recal_images,
                          cache_path=out / "eval_cache.json", dist=ctx)
        latency = None
        if args.latency_table:
            from supernet.search.latency import LatencyTable

            latency = LatencyTable.load(args.latency_table).predict
        settings = SearchSettings(
            population=args.population, parents_per_bucket=args.parents, mutations=args.mutations,
            mutation_prob=args.mutation_prob, crossovers=args.crossovers, iterations=args.iterations,
            seed=args.seed, prescreen_keep=args.prescreen_keep if args.predictor else None,
        )
        report = run_search(opened, out, constraints=args.constraint, budgets=args.budgets, settings=settings,
                            predictor=args.predictor, latency=latency, progress=not args.no_progress, dist=ctx)
    finally:
        shutdown(ctx)
    if ctx.is_main:
        _print_front(report)
        print(f"wrote {out / 'front.json'}")
    return 0


def _print_front(report: dict) -> None:
    print(f"{len(report['front'])} sub-networks on the front, {report['search']['evaluations']} evaluated; "
          f"mean Pareto accuracy {report['mean_pareto_accuracy']:.2%}")
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
              f"{best['macs'] / 1e6:.2f} MMACs, val {best['val_top1']:.2%}, test {best.get('test_top1') or 0:.2%}"))


def _cmd_export(args: argparse.Namespace) -> int:
    from supernet.search.job import best_under, deliver, open_run
    from supernet.search.objectives import Constraint
    from supernet.search.pareto import Candidate

    opened = open_run(args.run_dir, batch_size=args.batch_size, recalibration_images=args.recal_images,
                      cache_path=Path(args.run_dir) / "eval_cache.json")
    if bool(args.arch) == bool(args.from_front):
        raise ConfigError("give exactly one of --arch ARCH.json|largest|smallest and --from-front SEARCH_DIR")
    budget = None
    if args.arch:
        arch = opened.resolve_arch(args.arch)
    else:
        if not args.budget:
            raise ConfigError("--from-front needs --budget, e.g. --budget 'macs<=30e6'")
        budget = Constraint.parse(args.budget)
        front_path = Path(args.from_front) / "front.json"
        if not front_path.is_file():
            raise FileNotFoundError(f"{front_path} not found; run `supernet search {args.run_dir} --out {args.from_front}`")
        best = best_under([Candidate.from_dict(c) for c in json.loads(front_path.read_text())["front"]], budget)
        if best is None:
            raise ConfigError(f"no front member of {front_path} satisfies {budget}; relax the budget")
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

    runs, searches = split_inputs([Path(p) for p in args.paths])
    index = write_report(runs, searches, Path(args.out), title=args.title)
    print(f"wrote {index}")
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    import random

    from supernet.search.latency import LatencyTable, evaluate_table

    space = spaces.get(args.space)
    num_classes = space.spec.num_classes if args.num_classes is None else args.num_classes
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from supernet.demo import run_demo

    run_demo(Path(args.out), recipe=Path(args.config) if args.config else None, overrides=args.overrides,
             progress=not args.no_progress)
    return 0


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch (default: the run's)")
    p.add_argument("--recal-images", type=int, default=None,
                   help="training images for BN recalibration (default: the run's train.recal_images)")


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

    space = commands.add_parser(
        "space",
        help="print a search space's summary: stages, choices, size, MACs/params range",
        description="Print a search space's stages and choices, its number of sub-networks, and the MACs "
        "and parameters of its smallest and largest sub-network.",
    )
    space.add_argument("name", help=f"a preset ({', '.join(spaces.names())}) or a path to a space .yaml file")
    space.add_argument("--num-classes", type=int, default=None, help="classes of the classifier (default: the number the preset is designed for)")
    space.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    space.set_defaults(handler=_cmd_space)

    train = commands.add_parser(
        "train",
        help="train a supernet with a recipe (AlphaNet, DepS, EnNAS, BigNAS, OFA, CompOFA, AttentiveNAS, ...)",
        description="Train a supernet. The run directory receives the resolved config, metrics.jsonl, "
        "TensorBoard events and checkpoints (latest.pt, epoch_NNN.pt), all written atomically. "
        "An interrupted run continues bit-exactly with --resume.",
    )
    train.add_argument("config", nargs="?", help="a recipe YAML (see configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.lr=0.05 --set train.epochs=2")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.add_argument("--force", action="store_true", help="start over in an existing run directory")
    train.add_argument("--max-steps", type=int, default=None,
                       help="pause after this global step (checkpointed; continue with --resume)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_cmd_train)

    ev = commands.add_parser(
        "eval", help="accuracy of one sub-network after BN recalibration (cached per checkpoint)",
        description="Recalibrate BN statistics of a sub-network on training images, then measure top-1/top-5 "
        "on the held-out val split (or the official test split). Results are cached in RUN_DIR/eval_cache.json.",
    )
    ev.add_argument("run_dir", help="a run directory of `supernet train`")
    ev.add_argument("--arch", default="largest", help="largest, smallest or an ARCH.json (default: largest)")
    ev.add_argument("--split", choices=["val", "test"], default="val")
    ev.add_argument("--json", action="store_true", help="print JSON")
    _add_eval_options(ev)
    ev.set_defaults(handler=_cmd_eval)

    search = commands.add_parser(
        "search", help="evolutionary search of the accuracy-vs-MACs Pareto front (or the best per budget)",
        description="Evolutionary search (AlphaNet/AttentiveNAS) of the accuracy-vs-MACs Pareto front under "
        "constraints; with --budgets, the best sub-network under each budget. Writes OUT/front.json with "
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
                        help="pre-screen children with an accuracy predictor fit on the evaluations so far")
    search.add_argument("--prescreen-keep", type=int, default=32, help="children kept per generation by the predictor")
    search.add_argument("--latency-table", help="a latency lookup table JSON (enables latency constraints)")
    search.add_argument("--population", type=int, default=512)
    search.add_argument("--parents", type=int, default=128, help="parents per MACs bucket")
    search.add_argument("--mutations", type=int, default=128)
    search.add_argument("--mutation-prob", type=float, default=0.2)
    search.add_argument("--crossovers", type=int, default=128)
    search.add_argument("--iterations", type=int, default=20)
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--force", action="store_true", help="discard a finished search in --out and start over")
    search.add_argument("--no-progress", action="store_true")
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
    export.add_argument("--weights", choices=["safetensors", "torch"], default="safetensors")
    export.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    _add_eval_options(export)
    export.set_defaults(handler=_cmd_export)

    report = commands.add_parser(
        "report", help="HTML page + PNG plots: fronts, training curves, bucket table, training cost",
        description="Write an HTML report with PNG plots: accuracy vs MACs of every evaluated sub-network and "
        "the front (several runs overlaid), training curves of the smallest and largest networks, the MACs "
        "bucket table, mean Pareto accuracy and training cost.",
    )
    report.add_argument("paths", nargs="+", metavar="DIR", help="run directories and/or search directories")
    report.add_argument("--out", required=True, help="output directory for index.html and the plots")
    report.add_argument("--title", default=None)
    report.set_defaults(handler=_cmd_report)

    latency = commands.add_parser(
        "latency", help="build a per-layer latency lookup table on this device (for --latency-table)",
        description="Profile every distinct layer of a search space on this machine (torch eager or onnxruntime) "
        "and write a lookup table that predicts any sub-network's latency; run it on the target device and "
        "copy the JSON back. Reports the prediction error on held-out sub-networks measured whole.",
    )
    latency.add_argument("space", help="a preset or a space YAML")
    latency.add_argument("--out", required=True, help="the table JSON to write")
    latency.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    latency.add_argument("--batch", type=int, default=1)
    latency.add_argument("--threads", type=int, default=1)
    latency.add_argument("--warmup", type=int, default=5)
    latency.add_argument("--repeats", type=int, default=20)
    latency.add_argument("--num-classes", type=int, default=None)
    latency.add_argument("--in-channels", type=int, default=None)
    latency.add_argument("--held-out", type=int, default=20, help="sub-networks measured to report the error (0: skip)")
    latency.add_argument("--seed", type=int, default=0)
    latency.set_defaults(handler=_cmd_latency)

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
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by input (config, data, architecture, checkpoint): printed as one line, no traceback."""
    from supernet.data import DatasetError
    from supernet.export import ExportError
    from supernet.report import ReportError
    from supernet.search.evaluate import CacheError
    from supernet.search.evolution import SearchError
    from supernet.search.latency import LatencyError, MissingLayerError
    from supernet.search.objectives import ConstraintError
    from supernet.space import ArchError, SpaceError

    return (SpaceError, ArchError, ConfigError, DatasetError, RunDirError, ExportError, CacheError, SearchError,
            ConstraintError, LatencyError, MissingLayerError, ReportError, FileNotFoundError)


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
    try:
        return handler(args)
    except _user_errors() as err:
        print(f"supernet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
