"""The search's result file, front.json: its format and a reader that checks it before anyone trusts it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FRONT_FORMAT = 1
FRONT_FILE = "front.json"
_RERUN = "re-run `supernet search` (with --force) to rewrite it"


class FrontFileError(ValueError):
    """A search directory has no usable front.json."""


def _check_candidate(c: Any, where: str, path: Path, scored: bool = False) -> None:
    """A record with arch, macs and val_top1 (with `scored`: val_top1 or block_loss, as DNA's search leaves
    the sub-networks it only ranked)."""
    figures = ("val_top1", "block_loss") if scored else ("val_top1",)
    if not (
        isinstance(c, dict)
        and isinstance(c.get("arch"), dict)
        and isinstance(c.get("macs"), (int, float))
        and any(isinstance(c.get(key), (int, float)) for key in figures)
    ):
        raise FrontFileError(f"{path}: {where} is not a sub-network record with 'arch', 'macs' and "
                             f"{' or '.join(repr(k) for k in figures)}; {_RERUN}")


def read_front(search_dir: str | Path) -> dict[str, Any]:
    """The parsed front.json of a search directory, checked; FrontFileError naming the problem otherwise."""
    root = Path(search_dir)
    path = root / FRONT_FILE
    if not path.is_file():
        raise FrontFileError(f"search directory {root} has no {FRONT_FILE}; run `supernet search` on the trained run first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FrontFileError(f"{path} is not valid JSON ({err.msg}, line {err.lineno}; truncated?); {_RERUN}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise FrontFileError(f"{path} cannot be read ({err}); {_RERUN}") from None
    if not isinstance(data, dict) or data.get("format") != FRONT_FORMAT:
        raise FrontFileError(f"{path} is not a supernet front file of format {FRONT_FORMAT}; {_RERUN}")
    for key, kind in (("front", list), ("evaluated", list), ("buckets", list), ("mean_pareto_accuracy", (int, float))):
        if not isinstance(data.get(key), kind):
            raise FrontFileError(f"{path} lacks a valid '{key}'; {_RERUN}")
    for key in ("front", "evaluated"):
        for i, c in enumerate(data[key]):
            _check_candidate(c, f"{key}[{i}]", path, scored=key == "evaluated")
    for key in ("buckets", "budgets"):
        for i, entry in enumerate(data.get(key) or []):
            if not isinstance(entry, dict):
                raise FrontFileError(f"{path}: {key}[{i}] is not a mapping; {_RERUN}")
            if entry.get("best") is not None:
                _check_candidate(entry["best"], f"{key}[{i}].best", path)
    return data
