"""A study: trials (a recipe plus overrides each), seeds, a budget rule and one search protocol for all."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supernet.space import describe_validation_error


class StudyError(ValueError):
    """A study file that cannot be run as written, or a study directory that does not match it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrialSpec(_Section):
    """One arm of the comparison: a recipe and the `--set` overrides that make it this arm."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="used as a folder name")
    recipe: str = Field(description="a recipe YAML, relative to the study file or absolute")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides of this trial only")


class PrepareSpec(_Section):
    """A run trained once before the trials (e.g. DNA's teacher), which trials name as {prepare:NAME}."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    recipe: str = Field(description="a recipe YAML, relative to the study file or absolute")
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides of this run")


class BudgetSpec(_Section):
    """How long each trial trains: equal epochs, equal counted training MACs (all passes) to a reference, or
    as each trial's recipe says (the papers' own budgets)."""

    rule: Literal["epochs", "cost", "recipe"] = "epochs"
    epochs: list[int] = Field(default_factory=list, description="the reference budget(s); a list sweeps the "
                              "budget (none with rule recipe)")
    reference: str | None = Field(None, description="rule cost: the trial whose epochs the list gives")
    calibration_epochs: int = Field(4, gt=0, description="rule cost: epochs of the short run that measures "
                                    "each trial's MACs per training image (phases in the same proportions)")
    calibration_images: int = Field(1024, gt=0, description="rule cost: training images of that run")

    @field_validator("epochs", mode="before")
    @classmethod
    def _listed(cls, v: object) -> object:
        return [v] if isinstance(v, int) else v

    @field_validator("epochs")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(e < 1 for e in v) or len(set(v)) != len(v):
            raise ValueError(f"give distinct positive epoch counts, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _rule_and_epochs(self) -> BudgetSpec:
        if self.rule == "recipe" and self.epochs:
            raise ValueError("budget rule recipe trains each trial as its recipe says; give no budget.epochs")
        if self.rule != "recipe" and not self.epochs:
            raise ValueError(f"budget rule {self.rule} needs budget.epochs, e.g. [2] or [2, 6, 12]")
        return self


class SearchProtocol(_Section):
    """The one search and evaluation every trial gets (AlphaNet's protocol by default; see `supernet search`)."""

    population: int = Field(512, gt=0)
    iterations: int = Field(19, ge=0)
    parents: int = Field(128, gt=0)
    mutations: int = Field(128, ge=0)
    crossovers: int = Field(128, ge=0)
    parent_selection: Literal["top", "per_cost_step", "buckets"] = "top"
    constraints: list[str] = Field(default_factory=list)
    pareto_reading: Literal["staircase", "trapezoid"] = "staircase"
    recal_images: int | None = Field(None, gt=0, description="BN recalibration images (default: the run's)")
    predictor: bool = False


class TablesSpec(_Section):
    """The paper-style tables drawn from the results."""

    macs_targets: list[float] = Field(default_factory=list, description="model sizes of the accuracy-at-size "
                                      "table (AlphaNet's A0-A6 style); default: the 6 buckets' upper edges")
    equal_front_level: float | None = Field(None, gt=0, le=1, description="mean Pareto test accuracy of the "
                                            "cost-to-equal-front table; default: the highest every trial reaches")


class StudySpec(_Section):
    """A whole study file."""

    name: str
    description: str = ""
    trials: list[TrialSpec]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    set: list[str] = Field(default_factory=list, description="KEY=VALUE overrides of every trial")
    prepare: list[PrepareSpec] = Field(default_factory=list, description="runs trained once, with the first seed, "
                                       "before the trials; a trial's override value {prepare:NAME} is its folder")
    budget: BudgetSpec
    search: SearchProtocol = SearchProtocol()
    tables: TablesSpec = TablesSpec()

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: object) -> object:
        return list(range(v)) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        names = [t.name for t in self.trials]
        if not names:
            raise ValueError("a study needs at least one trial")
        if len(set(names)) != len(names):
            raise ValueError(f"trial names must be distinct, got {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"give distinct seeds, got {self.seeds}")
        prepared = [p.name for p in self.prepare]
        if len(set(prepared)) != len(prepared):
            raise ValueError(f"prepare names must be distinct, got {prepared}")
        for trial in self.trials:
            for name in re.findall(r"\{prepare:([^}]*)\}", " ".join(trial.set + self.set)):
                if name not in prepared:
                    raise ValueError(f"trial {trial.name!r} names {{prepare:{name}}}, but prepare has {prepared}")
        if self.budget.rule == "cost":
            if self.budget.reference is None:
                raise ValueError("budget rule cost needs budget.reference, the trial whose epochs budget.epochs gives")
            if self.budget.reference not in names:
                raise ValueError(f"budget.reference {self.budget.reference!r} is not a trial ({names})")
        return self


def load_study(path: str | Path) -> tuple[StudySpec, Path]:
    """Parse and validate a study YAML; (spec, the folder its recipe paths are relative to)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise StudyError(f"study {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise StudyError(f"study {path} is not valid UTF-8 YAML: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise StudyError(f"study {path}: expected a mapping with name, trials, budget (and seeds, search)")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise StudyError(f"study {path}: {describe_validation_error(err)}") from None
    base = path.resolve().parent
    for kind, entry in [*(("trial", t) for t in spec.trials), *(("prepare", p) for p in spec.prepare)]:
        recipe = Path(entry.recipe) if Path(entry.recipe).is_absolute() else base / entry.recipe
        if not recipe.is_file():
            raise StudyError(f"study {path}: {kind} {entry.name!r}: recipe {recipe} not found")
    return spec, base
