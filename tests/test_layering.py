"""The package's import graph flows one way: each floor imports only from the floors below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "supernet"

# module (or package prefix) -> prefixes it must never import
FORBIDDEN = {
    "supernet.rounding": ("supernet.",),  # plain arithmetic under everything
    "supernet.nn": ("supernet.space", "supernet.families", "supernet.spaces", "supernet.model", "supernet.cost",
                    "supernet.training", "supernet.search", "supernet.export", "supernet.runs", "supernet.evaluation"),
    # the space core knows no family: families register with it, never the other way round
    "supernet.space": ("supernet.nn", "supernet.families", "supernet.spaces", "supernet.model", "supernet.cost",
                       "supernet.training", "supernet.search", "supernet.export", "supernet.runs",
                       "supernet.evaluation"),
    "supernet.families": ("supernet.spaces", "supernet.model", "supernet.cost", "supernet.training",
                          "supernet.search", "supernet.export", "supernet.runs", "supernet.evaluation"),
    "supernet.spaces": ("supernet.model", "supernet.cost", "supernet.training", "supernet.search", "supernet.export",
                        "supernet.runs", "supernet.evaluation"),
    "supernet.cost": ("supernet.model", "supernet.training", "supernet.search", "supernet.export", "supernet.runs"),
    "supernet.checkpoint": ("supernet.training", "supernet.search", "supernet.export", "supernet.runs"),
    "supernet.config": ("supernet.training", "supernet.search", "supernet.export", "supernet.runs"),
    "supernet.runs": ("supernet.training", "supernet.search", "supernet.export"),
    # reading an export and DNA's blocks serve training and search alike: below both
    "supernet.exported": ("supernet.training", "supernet.search", "supernet.export", "supernet.runs",
                          "supernet.evaluation"),
    "supernet.blockwise": ("supernet.training", "supernet.search", "supernet.export", "supernet.runs",
                           "supernet.evaluation"),
    "supernet.evaluation": ("supernet.training", "supernet.search", "supernet.export", "supernet.runs"),
    "supernet.training": ("supernet.search", "supernet.export", "supernet.report", "supernet.demo", "supernet.cli",
                          "supernet.retrain"),
    "supernet.search": ("supernet.retrain", "supernet.demo", "supernet.cli"),
    # fine-tuning and distillation build on training, search (evaluation) and export; the demo and CLI use them
    "supernet.retrain": ("supernet.demo", "supernet.cli", "supernet.report"),
    # reading a published checkpoint builds a supernet and writes a run directory: below everything that reads one
    "supernet.published": ("supernet.training", "supernet.search", "supernet.export", "supernet.retrain",
                           "supernet.report", "supernet.demo", "supernet.cli", "supernet.runs",
                           "supernet.evaluation"),
    # the run-and-search report is below the study, whose page draws with its helpers
    "supernet.report": ("supernet.study", "supernet.demo", "supernet.cli"),
    # a study drives the CLI in subprocesses and reads what they wrote (metrics through training's reader);
    # nothing imports it but the CLI
    "supernet.study": ("supernet.search", "supernet.export", "supernet.retrain", "supernet.demo", "supernet.cli",
                       "supernet.model", "supernet.runs"),
}
ENTRY_POINTS = {"supernet.cli"}  # may import lazily, to keep `--help` fast


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of a supernet module in `tree`."""
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("supernet"):
            found.append((node.module, id(node) in top))
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("supernet")]
    return found


MODULES = _modules()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_only_downward(name: str) -> None:
    rules = [banned for prefix, banned in FORBIDDEN.items() if _within(name, prefix)]
    for imported, _ in _imports(MODULES[name]):
        for banned in rules:
            assert not any(_within(imported, b) for b in banned), f"{name} imports {imported}, a floor above it"


@pytest.mark.parametrize("name", sorted(set(MODULES) - ENTRY_POINTS))
def test_no_lazy_imports(name: str) -> None:
    lazy = [imported for imported, at_top in _imports(MODULES[name]) if not at_top]
    assert not lazy, f"{name} imports {lazy} inside a function; import at module level"


def test_the_rules_see_a_violation() -> None:
    tree = ast.parse("import torch\ndef f():\n    from supernet.export import load_subnet\n")
    assert _imports(tree) == [("supernet.export", False)]
