"""Constraints, objectives, evolutionary and budget search on the fmnist space with a synthetic accuracy."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supernet import spaces
from supernet.cost import cost
from supernet.search.evolution import (
    InfeasibleError,
    SearchError,
    SearchResult,
    SearchSettings,
    budget_search,
    budget_state_path,
    evolutionary_search,
    select_parents,
)
from supernet.search.objectives import Constraint, ConstraintError, Objectives
from supernet.search.pareto import Candidate, mean_pareto_accuracy, pareto_front
from supernet.space import Arch, ArchError

SPACE = spaces.get("fmnist")
SMALL = SearchSettings(
    population=24, parents=4, parent_selection="buckets", num_buckets=3, mutations=8, crossovers=8, iterations=3, seed=0
)
LOG_LOW = math.log(cost(SPACE, SPACE.smallest(), 10).macs)
LOG_HIGH = math.log(cost(SPACE, SPACE.largest(), 10).macs)


def synthetic_accuracy(arch: Arch) -> float:
    """Rises smoothly with log-MACs, plus a deterministic per-arch jitter of up to 0.05."""
    frac = (math.log(cost(SPACE, arch, 10).macs) - LOG_LOW) / (LOG_HIGH - LOG_LOW)
    jitter = int(hashlib.sha256(arch.to_json().encode()).hexdigest()[:8], 16) / 2**32
    return 0.5 + 0.4 * frac + 0.05 * jitter


class Killed(Exception):
    pass


class Recorder:
    """A batch evaluate function that records its calls and can simulate a kill on call `fail_at`."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[list[Arch]] = []
        self.fail_at = fail_at

    def __call__(self, archs: list[Arch]) -> list[float]:
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise Killed
        self.calls.append(list(archs))
        return [synthetic_accuracy(a) for a in archs]

    @property
    def archs(self) -> list[Arch]:
        return [a for call in self.calls for a in call]


def objectives(*constraints: str, latency: Callable[[Arch], float] | None = None) -> Objectives:
    return Objectives(SPACE, 10, None, [Constraint.parse(c) for c in constraints], latency=latency)


# -- Constraint -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("macs<=50e6", Constraint("macs", None, 50e6)),
        ("macs <= 50M", Constraint("macs", None, 50e6)),
        ("params>=1.5k", Constraint("params", 1500, None)),
        ("30e6<=macs<=50e6", Constraint("macs", 30e6, 50e6)),
        ("1.5G>=macs>=30M", Constraint("macs", 30e6, 1.5e9)),
        ("2M>=params", Constraint("params", None, 2e6)),
        ("latency<=20ms", Constraint("latency", None, 20.0)),
        ("latency<=0.5s", Constraint("latency", None, 500.0)),
        ("latency>=300us", Constraint("latency", 0.3, None)),
        ("5<=latency<=7", Constraint("latency", 5.0, 7.0)),
    ],
)
def test_constraint_parse(text: str, expected: Constraint) -> None:
    assert Constraint.parse(text) == expected
    assert Constraint.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("macs<50M", "inclusive, so write <= or >="),
        ("macs=50M", "inclusive"),
        ("flops<=50M", "names no metric"),
        ("macs<=50ms", r"unit \(K, M, G\)"),
        ("latency<=20M", r"unit \(ms, s, us\)"),
        ("macs<=fifty", "cannot read bound"),
        ("macs", "expected e.g. 'macs<=50M'"),
        ("10<=macs>=20", "mixes <= and >="),
        ("10<=20<=macs", "metric in the middle"),
        ("50M<=macs<=30M", "admits nothing"),
    ],
)
def test_constraint_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConstraintError, match=message):
        Constraint.parse(text)


bounds = st.none() | st.floats(0, 1e10) | st.integers(0, 10**10).map(float)


@given(st.sampled_from(["macs", "params", "latency"]), bounds, bounds)
def test_constraint_text_and_dict_round_trip(metric: str, low: float | None, high: float | None) -> None:
    if low is None and high is None or low is not None and high is not None and low > high:
        return
    c = Constraint(metric, low, high)  # type: ignore[arg-type]
    assert Constraint.parse(str(c)) == c
    assert Constraint.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    edge = c.low if c.high is None else c.high
    assert c.admits(edge) and not c.admits(edge + (1 if c.high is not None else -1) * max(1.0, abs(edge)))


def test_constraint_needs_a_bound() -> None:
    with pytest.raises(ConstraintError, match="lower or an upper bound"):
        Constraint("macs")
    with pytest.raises(ConstraintError, match="unknown constraint metric"):
        Constraint("flops", None, 1)  # type: ignore[arg-type]


# -- Objectives -----------------------------------------------------------------------------------


def test_objectives_cheap_is_cached_and_latency_measured_last() -> None:
    measured: list[Arch] = []

    def latency(arch: Arch) -> float:
        measured.append(arch)
        return cost(SPACE, arch, 10).macs / 1e6

    obj = objectives("macs<=2M", "latency<=1.5ms", latency=latency)
    rng = random.Random(0)
    archs = [SPACE.sample(rng) for _ in range(200)]
    verdicts = [obj.feasible(a) for a in archs]
    assert measured and all(cost(SPACE, a, 10).macs <= 2e6 for a in measured)  # analytic bound first
    assert verdicts == [cost(SPACE, a, 10).macs <= 1.5e6 for a in archs]
    n = len(measured)
    arch = measured[0]
    values = obj.cheap(arch)
    assert values == {
        "macs": cost(SPACE, arch, 10).macs,
        "params": cost(SPACE, arch, 10).params,
        "latency": values["latency"],
    }
    assert obj.cheap(arch) == values and len(measured) == n  # cached
    cand = obj.candidate(arch, 0.5)
    assert (cand.macs, cand.params, cand.latency_ms, cand.val_top1) == (
        values["macs"],
        values["params"],
        values["latency"],
        0.5,
    )


def test_objectives_errors_and_ranges() -> None:
    with pytest.raises(ConstraintError, match="needs measured latency"):
        objectives("latency<=5ms")
    obj = objectives("macs<=3M", "macs>=1M")
    assert obj.cheap(SPACE.smallest()).keys() == {"macs", "params"}
    assert obj.candidate(SPACE.smallest(), 0.4).latency_ms is None
    low, high = obj.space_range("macs")
    assert (low, high) == (cost(SPACE, SPACE.smallest(), 10).macs, cost(SPACE, SPACE.largest(), 10).macs)
    assert obj.feasible_range("macs") == (1e6, 3e6)
    assert obj.feasible_range("params") == obj.space_range("params")
    outside = Arch.from_dict({**SPACE.smallest().to_dict(), "resolution": 99})
    with pytest.raises(ArchError, match="resolution 99"):
        obj.feasible(outside)


def test_with_constraints_shares_the_cache() -> None:
    calls: list[Arch] = []
    obj = objectives(latency=lambda a: calls.append(a) or 1.0)
    tighter = obj.with_constraints([Constraint.parse("macs<=1M")])
    arch = SPACE.smallest()
    assert obj.cheap(arch)["latency"] == 1.0 and tighter.cheap(arch)["latency"] == 1.0 and len(calls) == 1
    assert tighter.constraints == (Constraint("macs", None, 1e6),) and not tighter.feasible(SPACE.largest())


# -- evolutionary_search --------------------------------------------------------------------------


def assert_valid(result: SearchResult, evaluate: Recorder, obj: Objectives) -> None:
    archs = [c.arch for c in result.evaluated]
    assert archs == evaluate.archs  # evaluation order, everything evaluated exactly once
    assert len(set(archs)) == len(archs) == result.evaluations
    for c in result.evaluated:
        assert SPACE.contains(c.arch) and obj.feasible(c.arch)
        assert c.val_top1 == synthetic_accuracy(c.arch)
    assert result.front == pareto_front(result.evaluated)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_search_respects_constraints_and_space(seed: int) -> None:
    obj = objectives("1.5M<=macs<=4M", "params<=450K")
    evaluate = Recorder()
    result = evolutionary_search(
        SPACE, obj, evaluate, SearchSettings(**{**SMALL.to_dict(), "seed": seed}), progress=False
    )
    assert_valid(result, evaluate, obj)
    assert result.generations == 3 and len(evaluate.calls) == 4
    assert result.evaluations == 24 + 3 * 16
    assert all(1.5e6 <= c.macs <= 4e6 and c.params <= 450e3 for c in result.evaluated)


def test_search_improves_on_the_initial_population() -> None:
    obj = objectives()
    evaluate = Recorder()
    result = evolutionary_search(SPACE, obj, evaluate, SMALL, progress=False)
    initial = pareto_front(result.evaluated[:24])
    low, high = obj.space_range()
    assert mean_pareto_accuracy(result.front, low, high) >= mean_pareto_accuracy(initial, low, high)
    assert any(c in result.front for c in result.evaluated[24:])


def test_search_is_deterministic_for_a_seed() -> None:
    obj = objectives("macs<=5M")
    first = evolutionary_search(SPACE, obj, Recorder(), SMALL, progress=False)
    again = evolutionary_search(SPACE, objectives("macs<=5M"), Recorder(), SMALL, progress=False)
    other = evolutionary_search(
        SPACE, obj, Recorder(), SearchSettings(**{**SMALL.to_dict(), "seed": 1}), progress=False
    )
    assert first.to_dict() == again.to_dict()
    assert [c.arch for c in first.evaluated] != [c.arch for c in other.evaluated]


def test_killed_search_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    full = evolutionary_search(
        SPACE, objectives("macs<=5M"), Recorder(), SMALL, state_path=tmp_path / "a.json", progress=False
    )
    path = tmp_path / "b.json"
    killed = Recorder(fail_at=2)  # initial population and generation 1 finish, generation 2 is killed
    with pytest.raises(Killed):
        evolutionary_search(SPACE, objectives("macs<=5M"), killed, SMALL, state_path=path, progress=False)
    state = json.loads(path.read_text())
    assert state["generation"] == 1 and len(state["evaluated"]) == 24 + 16
    resumed_eval = Recorder()
    resumed = evolutionary_search(
        SPACE, objectives("macs<=5M"), resumed_eval, SMALL, state_path=path, progress=False
    )
    assert resumed.to_dict() == full.to_dict()
    assert len(resumed_eval.calls) == 2 and not set(resumed_eval.archs) & set(killed.archs)
    assert killed.archs + resumed_eval.archs == [c.arch for c in full.evaluated]
    assert json.loads(path.read_text()) == json.loads((tmp_path / "a.json").read_text())
    done = Recorder()  # a finished search resumes to its result without evaluating anything
    assert (
        evolutionary_search(SPACE, objectives("macs<=5M"), done, SMALL, state_path=path, progress=False)
        == resumed
    )
    assert done.calls == []


def test_kill_during_the_initial_population_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with pytest.raises(Killed):
        evolutionary_search(SPACE, objectives(), Recorder(fail_at=0), SMALL, state_path=path, progress=False)
    assert not path.exists()
    resumed = evolutionary_search(SPACE, objectives(), Recorder(), SMALL, state_path=path, progress=False)
    assert resumed == evolutionary_search(SPACE, objectives(), Recorder(), SMALL, progress=False)


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    one = SearchSettings(**{**SMALL.to_dict(), "iterations": 1})
    evolutionary_search(SPACE, objectives(), Recorder(), one, state_path=path, progress=False)
    with pytest.raises(SearchError, match=r"settings\.population \(24 in the state, 30 now\).*new --out"):
        evolutionary_search(
            SPACE,
            objectives(),
            Recorder(),
            SearchSettings(**{**one.to_dict(), "population": 30}),
            state_path=path,
            progress=False,
        )
    with pytest.raises(SearchError, match="objectives.constraints"):
        evolutionary_search(SPACE, objectives("macs<=5M"), Recorder(), one, state_path=path, progress=False)
    path.write_text("{not json")
    with pytest.raises(SearchError, match="cannot be read"):
        evolutionary_search(SPACE, objectives(), Recorder(), one, state_path=path, progress=False)


def test_parents_are_the_best_of_each_bucket() -> None:
    obj = objectives()
    result = evolutionary_search(
        SPACE, obj, Recorder(), SearchSettings(**{**SMALL.to_dict(), "iterations": 0}), progress=False
    )
    parents = select_parents(result.evaluated, obj, SMALL)
    low, high = obj.feasible_range()
    width = (high - low) / 3
    chosen = [c for c in result.evaluated if c.arch in set(parents)]
    assert len(parents) == len(set(parents)) == len(chosen)
    for b in range(3):
        inside = [c for c in result.evaluated if min(2, int((c.macs - low) // width)) == b]
        picked = sorted((c for c in chosen if c in inside), key=lambda c: -c.val_top1)
        best = sorted(inside, key=lambda c: -c.val_top1)[:4]
        assert picked == best


def test_prescreen_keeps_what_the_hook_chooses() -> None:
    seen: list[tuple[int, int, int]] = []

    def prescreen(children: list[Arch], k: int, evaluated: Sequence[Candidate]) -> list[Arch]:
        seen.append((len(children), k, len(evaluated)))
        return sorted(children, key=synthetic_accuracy, reverse=True)[:k]

    keep = SearchSettings(**{**SMALL.to_dict(), "prescreen_keep": 5})
    evaluate = Recorder()
    result = evolutionary_search(SPACE, objectives(), evaluate, keep, progress=False, prescreen=prescreen)
    assert seen == [(16, 5, 24), (16, 5, 29), (16, 5, 34)]  # fit on everything evaluated before
    assert [len(call) for call in evaluate.calls] == [24, 5, 5, 5] and result.evaluations == 39
    with pytest.raises(SearchError, match="give both or neither"):
        evolutionary_search(SPACE, objectives(), Recorder(), keep, progress=False)
    with pytest.raises(SearchError, match="at most 5 distinct architectures taken from the 16 children"):
        evolutionary_search(
            SPACE, objectives(), Recorder(), keep, progress=False, prescreen=lambda c, k, e: [SPACE.largest()]
        )


def test_infeasible_constraints_are_a_clear_error() -> None:
    with pytest.raises(InfeasibleError, match=r"constraints \(macs<=100\) admit \(almost\) no sub-network"):
        evolutionary_search(SPACE, objectives("macs<=100"), Recorder(), SMALL, progress=False)


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(SearchError, match="mutation_prob must lie in"):
        SearchSettings(mutation_prob=1.5)
    with pytest.raises(SearchError, match="population must be at least 1"):
        SearchSettings(population=0)
    with pytest.raises(SearchError, match="unknown search settings"):
        SearchSettings.from_dict({"generations": 3})
    assert SearchSettings.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(SearchError, match="returned 1 accuracies for 24"):
        evolutionary_search(SPACE, objectives(), lambda archs: [0.5], SMALL, progress=False)
    with pytest.raises(SearchError, match="latency function"):
        evolutionary_search(SPACE, objectives(), Recorder(), SearchSettings(cost="latency"), progress=False)
    with pytest.raises(SearchError, match="built for space 'fmnist', not 'alphanet'"):
        evolutionary_search(spaces.get("alphanet"), objectives(), Recorder(), SMALL, progress=False)


def test_search_on_latency_with_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    obj = objectives("latency<=4ms", latency=lambda a: cost(SPACE, a, 10).macs / 1e6)
    lat = SearchSettings(**{**SMALL.to_dict(), "cost": "latency", "iterations": 1})
    result = evolutionary_search(SPACE, obj, Recorder(), lat, progress=True)
    assert all(c.latency_ms is not None and c.latency_ms <= 4 for c in result.evaluated)
    assert result.front == pareto_front(result.evaluated, cost="latency")
    err = capsys.readouterr().err
    assert "search" in err and "initial population 24/24" in err and "generation 1/1, front" in err
    assert "40/40" in err  # the bar counts evaluations: population + one generation of 16


# -- budget_search --------------------------------------------------------------------------------


def test_budget_search_finds_the_best_feasible_per_budget(tmp_path: Path) -> None:
    budgets = [Constraint.parse(t) for t in ("macs<=1.5M", "macs<=3M", "params<=1K")]
    evaluate = Recorder()
    found = budget_search(
        SPACE, objectives(), evaluate, budgets, SMALL, state_path=tmp_path / "s.json", progress=False
    )
    answers = found.answers
    assert {c.arch for c in found.evaluated} == set(evaluate.archs)  # every evaluation, for the front
    assert [b for b, _ in answers] == budgets
    archs = evaluate.archs
    assert len(archs) == len(set(archs))  # the evaluation cache is shared across budgets
    for budget, best in answers[:2]:
        fits = [a for a in archs if budget.admits(cost(SPACE, a, 10).macs)]
        assert best is not None and budget.admits(best.macs)
        assert best.val_top1 == max(synthetic_accuracy(a) for a in fits)
    assert answers[1][1].val_top1 >= answers[0][1].val_top1  # type: ignore[union-attr]
    assert answers[2][1] is None  # no sub-network has at most 1K parameters
    assert budget_state_path(tmp_path / "s.json", 1).exists()
    again = Recorder()  # resuming finished budget searches evaluates nothing and answers the same
    assert (
        budget_search(
            SPACE, objectives(), again, budgets, SMALL, state_path=tmp_path / "s.json", progress=False
        ).answers
        == answers
    )
    assert again.calls == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_predictor_search_killed_at_a_random_generation_resumes_to_the_same_front(tmp_path: Path, seed: int) -> None:
    """Fault injection: a search screened by an accuracy predictor fit on its own evaluations."""
    from supernet.search.predictor import AccuracyPredictor

    def screen(children: list[Arch], k: int, evaluated: Sequence[Candidate]) -> list[Arch]:
        predictor = AccuracyPredictor(SPACE).fit([c.arch for c in evaluated], [c.val_top1 for c in evaluated])
        return predictor.prescreen(children, k)

    settings = SearchSettings(**{**SMALL.to_dict(), "iterations": 5, "prescreen_keep": 6, "seed": seed})
    whole = evolutionary_search(SPACE, objectives(), Recorder(), settings, progress=False, prescreen=screen)
    kill_at = random.Random(seed).randrange(1, settings.iterations + 1)  # the call evaluating generation kill_at
    path = tmp_path / "state.json"
    with pytest.raises(Killed):
        evolutionary_search(SPACE, objectives(), Recorder(fail_at=kill_at), settings, state_path=path,
                            progress=False, prescreen=screen)
    assert json.loads(path.read_text())["generation"] == kill_at - 1
    resumed = evolutionary_search(SPACE, objectives(), Recorder(), settings, state_path=path, progress=False,
                                  prescreen=screen)
    assert resumed.evaluated == whole.evaluated and resumed.front == whole.front


def test_a_state_of_another_source_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    evolutionary_search(SPACE, objectives(), Recorder(), SMALL, state_path=path, progress=False, source="checkpoint a")
    with pytest.raises(SearchError, match="computed on checkpoint a, not on checkpoint b .* stale"):
        evolutionary_search(SPACE, objectives(), Recorder(), SMALL, state_path=path, progress=False,
                            source="checkpoint b")


def test_the_defaults_are_alphanets_protocol() -> None:
    """AlphaNet section 4.2: 512 random, then 128 mutations + 128 crossovers of the best 128, 5,376 in all."""
    settings = SearchSettings()
    assert (settings.population, settings.parents, settings.parent_selection) == (512, 128, "top")
    assert (settings.mutations, settings.crossovers, settings.mutation_prob) == (128, 128, 0.2)
    evaluate = Recorder()
    result = evolutionary_search(SPACE, objectives(), evaluate, settings, progress=False)
    assert result.evaluations == 5376 and result.generations == 19
    assert [len(c) for c in evaluate.calls[-19:]] == [256] * 19


def test_parent_selection_rules() -> None:
    obj = objectives()
    settings = SearchSettings(**{**SMALL.to_dict(), "iterations": 0, "population": 60})
    evaluated = evolutionary_search(SPACE, obj, Recorder(), settings, progress=False).evaluated
    best = sorted(evaluated, key=lambda c: -c.val_top1)
    top = select_parents(evaluated, obj, SearchSettings(**{**settings.to_dict(), "parent_selection": "top", "parents": 7}))
    assert top == [c.arch for c in best[:7]]
    steps = SearchSettings(**{**settings.to_dict(), "parent_selection": "per_cost_step", "cost_steps": 10})
    winners = select_parents(evaluated, obj, steps)
    low, high = obj.feasible_range()
    step_of = {c.arch: min(9, int((c.macs - low) / (high - low) * 10)) for c in evaluated}
    assert len({step_of[a] for a in winners}) == len(winners) <= 10  # one per occupied step
    for arch in winners:
        same_step = [c for c in evaluated if step_of[c.arch] == step_of[arch]]
        assert max(same_step, key=lambda c: c.val_top1).arch == arch
    with pytest.raises(SearchError, match="parent_selection must be one of"):
        SearchSettings(parent_selection="best")
