"""Studies: the papers' comparisons as one resumable run of trials x seeds x budgets, aggregated."""

from supernet.study.aggregate import (
    accuracy_under,
    at_targets,
    compare,
    cost_to_equal_front,
    mean_std,
    summarise,
)
from supernet.study.plan import Unit, equal_cost_epochs, plan_units
from supernet.study.ray_runner import RayResources, run_units_ray
from supernet.study.runner import Slot, UnitFailed, make_slots, slot_env
from supernet.study.spec import StudyError, StudySpec, load_study
from supernet.study.study import StudyOutcome, aggregate_finished, aggregate_study, run_study

__all__ = [
    "RayResources",
    "Slot",
    "StudyError",
    "StudyOutcome",
    "StudySpec",
    "Unit",
    "UnitFailed",
    "accuracy_under",
    "aggregate_finished",
    "aggregate_study",
    "at_targets",
    "compare",
    "cost_to_equal_front",
    "equal_cost_epochs",
    "load_study",
    "make_slots",
    "mean_std",
    "plan_units",
    "run_study",
    "run_units_ray",
    "slot_env",
    "summarise",
]
