"""The units of work of a study: one training + search per trial, seed and budget, and the budget rule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from supernet.study.spec import StudySpec, TrialSpec


@dataclass(frozen=True)
class Unit:
    """One trial trained with one seed at one budget point, then searched."""

    trial: str
    seed: int
    budget: int  # the budget point: the reference's epochs (rule cost) or the epochs (rule epochs)
    epochs: int  # this trial's epochs at that point
    recipe: Path
    overrides: tuple[str, ...]

    def folder(self, out: Path) -> Path:
        """Where the unit's run directory (and its search, result.json) live."""
        return out / "runs" / self.trial / f"budget{self.budget}" / f"seed{self.seed}"


def recipe_path(trial: TrialSpec, base: Path) -> Path:
    """The trial's recipe, relative to the study file's folder unless absolute."""
    path = Path(trial.recipe)
    return path if path.is_absolute() else base / path


def trial_overrides(spec: StudySpec, trial: TrialSpec) -> list[str]:
    """The study's overrides, then the trial's (the trial wins)."""
    return [*spec.set, *trial.set]


def equal_cost_epochs(reference_epochs: int, reference_cost: float, cost: float) -> int:
    """Epochs whose counted training MACs match `reference_epochs` of the reference (costs per epoch), rounded."""
    if reference_cost <= 0 or cost <= 0:
        raise ValueError(f"training costs per epoch must be positive, got {reference_cost} and {cost}")
    return max(1, round(reference_epochs * reference_cost / cost))


def plan_units(spec: StudySpec, base: Path, costs: dict[str, float] | None = None) -> list[Unit]:
    """Every unit, budget point by budget point, trial by trial, seed by seed.

    Rule `cost` needs `costs`: each trial's counted training MACs per epoch from its calibration run.
    """
    units = []
    for budget in spec.budget.epochs:
        for trial in spec.trials:
            if spec.budget.rule == "cost":
                if costs is None:
                    raise ValueError("budget rule cost: give each trial's training MACs per epoch")
                epochs = equal_cost_epochs(budget, costs[spec.budget.reference], costs[trial.name])
            else:
                epochs = budget
            for seed in spec.seeds:
                overrides = (*trial_overrides(spec, trial), f"seed={seed}", f"train.epochs={epochs}")
                units.append(Unit(trial.name, seed, budget, epochs, recipe_path(trial, base), overrides))
    return units
