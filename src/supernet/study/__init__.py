"""Studies: the papers' comparisons as one resumable run of trials x seeds x budgets, aggregated."""

from supernet.study.aggregate import compare, mean_std, summarise
from supernet.study.plan import Unit, equal_cost_epochs, plan_units
from supernet.study.runner import Slot, UnitFailed, make_slots, slot_env
from supernet.study.spec import StudyError, StudySpec, load_study
from supernet.study.study import StudyOutcome, aggregate_study, run_study

__all__ = [
    "Slot",
    "StudyError",
    "StudyOutcome",
    "StudySpec",
    "Unit",
    "UnitFailed",
    "aggregate_study",
    "compare",
    "equal_cost_epochs",
    "load_study",
    "make_slots",
    "mean_std",
    "plan_units",
    "run_study",
    "slot_env",
    "summarise",
]
