"""The `supernet` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

import supernet
from supernet import spaces
from supernet.cost import cost
from supernet.space import ArchError, SpaceError

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
    except (SpaceError, ArchError, FileNotFoundError) as err:
        print(f"supernet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
