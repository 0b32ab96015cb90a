"""The units of work of a study: one training + search per trial, seed and budget, and the budget rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from supernet.config import ConfigError, ProgressiveConfig, load_config
from supernet.study.spec import PrepareSpec, StudyError, StudySpec, TrialSpec


@dataclass(frozen=True)
class Unit:
    """One trial trained with one seed at one budget point, then searched."""

    trial: str
    seed: int
    budget: int  # the budget point: the reference's epochs (rule cost), the epochs (rule epochs), 0 (rule recipe)
    epochs: float  # this trial's epochs at that point
    recipe: Path
    overrides: tuple[str, ...]

    def folder(self, out: Path) -> Path:
        """Where the unit's run directory (and its search, result.json) live."""
        return out / "runs" / self.trial / f"budget{self.budget}" / f"seed{self.seed}"


def recipe_path(trial: TrialSpec | PrepareSpec, base: Path) -> Path:
    """The trial's recipe, relative to the study file's folder unless absolute."""
    path = Path(trial.recipe)
    return path if path.is_absolute() else base / path


def trial_overrides(spec: StudySpec, trial: TrialSpec) -> list[str]:
    """The study's overrides, then the trial's (the trial wins)."""
    return [*spec.set, *trial.set]


def is_progressive(recipe: Path, overrides: Sequence[str]) -> bool:
    """Whether the recipe (after `overrides`) uses OFA's progressive schedule, whose phases set its length."""
    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # the training itself reports the broken recipe
    name = (data.get("schedule") or {}).get("name") if isinstance(data, dict) else None
    for override in overrides:
        if override.startswith("schedule.name="):
            name = override.split("=", 1)[1]
    return name == "progressive"


def epoch_overrides(recipe: Path, overrides: Sequence[str], epochs: float) -> tuple[str, ...]:
    """The overrides that make a trial train `epochs` epochs: train.epochs, and for progressive recipes
    schedule.total_epochs (its phases stretched in proportion)."""
    if is_progressive(recipe, overrides):
        return (f"train.epochs={epochs}", f"schedule.total_epochs={epochs}")
    return (f"train.epochs={epochs}",)


def equal_cost_epochs(reference_epochs: int, reference_cost: float, cost: float) -> int:
    """Epochs whose counted training MACs match `reference_epochs` of the reference (costs per epoch), rounded."""
    if reference_cost <= 0 or cost <= 0:
        raise ValueError(f"training costs per epoch must be positive, got {reference_cost} and {cost}")
    return max(1, round(reference_epochs * reference_cost / cost))


def plan_units(spec: StudySpec, base: Path, costs: dict[str, float] | None = None) -> list[Unit]:
    """Every unit, budget point by budget point, seed by seed, trial by trial: a study stopped part-way has
    compared every trial on its first seeds rather than some trials on all of them.

    Rule `cost` needs `costs`: each trial's counted training MACs per epoch from its calibration run.
    """
    if spec.budget.rule == "recipe":
        return _recipe_units(spec, base)
    if spec.budget.rule == "cost" and costs is None:
        raise ValueError("budget rule cost: give each trial's training MACs per epoch")
    units = []
    for budget in spec.budget.epochs:
        # per trial once (the recipe is read here), then seed by seed
        planned = []
        for trial in spec.trials:
            epochs = (equal_cost_epochs(budget, costs[spec.budget.reference], costs[trial.name])
                      if spec.budget.rule == "cost" and costs is not None else budget)
            recipe, chosen = recipe_path(trial, base), trial_overrides(spec, trial)
            planned.append((trial.name, epochs, recipe, chosen, epoch_overrides(recipe, chosen, epochs)))
        for seed in spec.seeds:
            for name, epochs, recipe, chosen, length in planned:
                units.append(Unit(name, seed, budget, epochs, recipe, (*chosen, f"seed={seed}", *length)))
    return units


def recipe_epochs(recipe: Path, overrides: Sequence[str]) -> float:
    """How many epochs a recipe trains with `overrides`: its phases' (stretched) length, or train.epochs."""
    try:
        config = load_config(recipe, list(overrides))
    except ConfigError as err:
        raise StudyError(f"recipe {recipe} with {list(overrides)}: {err}") from None
    sched = config.schedule
    return sched.length if isinstance(sched, ProgressiveConfig) else config.train.epochs


def _recipe_units(spec: StudySpec, base: Path) -> list[Unit]:
    """Rule recipe: one budget point (0), each trial as long as its recipe and overrides say."""
    units = []
    for trial in spec.trials:
        recipe, chosen = recipe_path(trial, base), trial_overrides(spec, trial)
        epochs = recipe_epochs(recipe, chosen)
        units += [Unit(trial.name, seed, 0, epochs, recipe, (*chosen, f"seed={seed}")) for seed in spec.seeds]
    return sorted(units, key=lambda u: spec.seeds.index(u.seed))  # seed by seed, as plan_units
