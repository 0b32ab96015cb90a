"""Preset search spaces shipped with the package (`alphanet`, `ofa_mbv3`, `proxyless_gpu`, `fmnist`)."""

from __future__ import annotations

from importlib import resources

from supernet.space import SearchSpace, SpaceError


def names() -> list[str]:
    """Names of the preset search spaces."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def get(name: str) -> SearchSpace:
    """The preset search space called `name`, or a user YAML file when `name` ends in .yaml/.yml."""
    if name.endswith((".yaml", ".yml")):
        return SearchSpace.from_yaml(name)
    if name not in names():
        raise SpaceError(f"unknown search space {name!r}; presets are {names()} (or pass a path to a .yaml file)")
    with resources.as_file(resources.files(__name__) / f"{name}.yaml") as path:
        return SearchSpace.from_yaml(path)
