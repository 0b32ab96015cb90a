"""The `supernet` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import supernet
from supernet import spaces
from supernet.cost import cost
from supernet.data import DatasetError
from supernet.space import ArchError, SpaceError
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
    from supernet.training.loop import Trainer, TrainingStopped

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its saved config; drop CONFIG and --set")
        trainer = Trainer(None, args.resume, resume=True, progress=not args.no_progress)
    else:
        if not args.config:
            raise ConfigError("give a recipe (e.g. configs/alphanet.yaml) or --resume RUN_DIR")
        config = load_config(args.config, args.overrides)
        out = args.out or f"runs/{Path(args.config).stem}"
        trainer = Trainer(config, out, force=args.force, progress=not args.no_progress)
    print(f"run directory: {trainer.run_dir.root}", file=sys.stderr)
    try:
        result = trainer.run(until_step=args.max_steps)
    except TrainingStopped as err:
        print(f"supernet train: stopped: {err}", file=sys.stderr)
        return 3
    state = "finished" if result.finished else "paused (resume with --resume)"
    print(f"{state} at step {result.global_step}/{result.total_steps}; checkpoints in {trainer.run_dir.checkpoints}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `supernet` command."""
    parser = argparse.ArgumentParser(
        prog="supernet",
        description="Once-for-all training: train one weight-sharing supernet, then extract specialised "
        "sub-networks for many deployment budgets without retraining.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"supernet {supernet.__version__}")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `supernet` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except (SpaceError, ArchError, ConfigError, DatasetError, RunDirError, FileNotFoundError) as err:
        print(f"supernet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
