"""Preset search spaces shipped with the package, and parsing of user spaces with the package's block families."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from supernet.families import FAMILIES
from supernet.space import SearchSpace, SpaceError


def names() -> list[str]:
    """Names of the preset search spaces."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def from_dict(d: dict[str, Any], source: str = "search space") -> SearchSpace:
    """A search space from its dict form (`SearchSpace.to_dict`, a parsed YAML), with the package's families."""
    return SearchSpace.from_dict(d, FAMILIES, source=source)


def from_yaml(path: str | Path) -> SearchSpace:
    """A search space from a YAML file, with the package's families."""
    return SearchSpace.from_yaml(path, FAMILIES)


def get(name: str) -> SearchSpace:
    """The preset search space called `name`, or a user YAML file when `name` ends in .yaml/.yml."""
    if name.endswith((".yaml", ".yml")):
        return from_yaml(name)
    if name not in names():
        raise SpaceError(f"unknown search space {name!r}; presets are {names()} (or pass a path to a .yaml file)")
    with resources.as_file(resources.files(__name__) / f"{name}.yaml") as path:
        return from_yaml(path)


def resolve(space: str | dict[str, Any]) -> SearchSpace:
    """A config's `space`: a preset name, a YAML path, or a space mapping (`SearchSpace.to_dict`)."""
    return from_dict(space, source="config space") if isinstance(space, dict) else get(space)
