"""Evolutionary search for the accuracy-vs-cost Pareto front of a trained supernet (AttentiveNAS / AlphaNet).

The default protocol is AlphaNet's (ICML 2021, section 4.2): evaluate 512 random sub-networks, then 19
times breed 128 mutants and 128 crosses of the best 128 evaluated so far and evaluate them: 5,376
evaluations. One generation: choose parents by `parent_selection`, then breed `mutations` mutants of
random parents and `crossovers` crosses of random parent pairs. Parent selection:

- "top" (AlphaNet's paper, the default): the `parents` most accurate candidates evaluated so far.
- "per_cost_step" (AlphaNet's and AttentiveNAS's official search code): the most accurate candidate of
  each of `cost_steps` equal steps of the feasible cost range (the code rounds FLOPs to steps of 10 M);
  mutation and crossover draw from these step winners.
- "buckets" (this package's earlier rule): the `parents` most accurate of each of `num_buckets` equal
  cost buckets of the feasible range, so cheap and costly regions both breed.

Every child is redrawn until it meets the
constraints and is new (never evaluated, not a duplicate within the generation), so no architecture is
evaluated twice. An optional `prescreen(children, k, evaluated)` hook (an accuracy predictor fit on the
candidates evaluated so far) keeps the k most promising children before evaluation; the initial population
is always evaluated in full.

The search is deterministic for a seed: every draw goes through one `random.Random(seed)` whose state is
saved with the evaluated candidates after the initial population and after every generation, so a killed
search resumes from its last finished generation and ends exactly where an uninterrupted one would. The
state records what it was computed on (settings, objectives and a `source` such as the checkpoint's
digest): a state of another source is refused, since its accuracies no longer describe the network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from supernet.fileio import atomic_write_text
from supernet.search.objectives import Constraint, Objectives
from supernet.search.pareto import Candidate, bucket_index, check_metric, pareto_front
from supernet.space import Arch, SearchSpace

STATE_FORMAT = 1
PARENT_SELECTIONS = ("top", "per_cost_step", "buckets")
RANKINGS = ("val_top1", "block_loss")  # what `evaluate` returns: val accuracy (higher better) or DNA's block loss
Evaluate = Callable[[list[Arch]], Sequence[float]]
Prescreen = Callable[[list[Arch], int, Sequence[Candidate]], Sequence[Arch]]
EVAL_CHUNK = 32  # initial-population archs per evaluate call: the progress bar moves while it runs


class SearchError(ValueError):
    """A search cannot start, continue or resume with the given settings."""


class InfeasibleError(SearchError):
    """The constraints admit too few architectures to draw an initial population."""


@dataclass(frozen=True)
class SearchSettings:
    """Every number of the evolutionary search (AlphaNet's paper: defaults); `cost` is the front's axis.

    `parent_selection` is "top", "per_cost_step" or "buckets" (module docstring); `parents` counts the
    parents of "top" and the parents per bucket of "buckets"; `num_buckets` = 6 matches DepS's six equal
    MACs intervals; `cost_steps` is the number of steps of "per_cost_step". `prescreen_keep` (None: off)
    is how many children per generation a prescreen hook keeps; `max_redraws` bounds the draws per child.
    """

    population: int = 512
    parents: int = 128
    parent_selection: str = "top"
    num_buckets: int = 6
    cost_steps: int = 100
    mutations: int = 128
    mutation_prob: float = 0.2
    crossovers: int = 128
    iterations: int = 19
    seed: int = 0
    max_redraws: int = 1000
    prescreen_keep: int | None = None
    cost: str = "macs"
    rank_by: str = "val_top1"

    def __post_init__(self) -> None:
        if self.parent_selection not in PARENT_SELECTIONS:
            raise SearchError(
                f"search setting parent_selection must be one of {list(PARENT_SELECTIONS)}, got {self.parent_selection!r}"
            )
        for name in ("population", "parents", "num_buckets", "cost_steps", "max_redraws"):
            if getattr(self, name) < 1:
                raise SearchError(f"search setting {name} must be at least 1, got {getattr(self, name)}")
        for name in ("mutations", "crossovers", "iterations"):
            if getattr(self, name) < 0:
                raise SearchError(f"search setting {name} must be at least 0, got {getattr(self, name)}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise SearchError(f"search setting mutation_prob must lie in [0, 1], got {self.mutation_prob}")
        if self.prescreen_keep is not None and self.prescreen_keep < 1:
            raise SearchError(
                f"search setting prescreen_keep must be at least 1 or None, got {self.prescreen_keep}"
            )
        if self.rank_by not in RANKINGS:
            raise SearchError(f"search setting rank_by must be one of {list(RANKINGS)}, got {self.rank_by!r}")
        try:
            check_metric(self.cost)
        except ValueError as err:
            raise SearchError(f"search setting cost: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (inverse of `from_dict`); rank_by only when not the default val_top1,
        so states and fronts written before it existed still match."""
        d = asdict(self)
        if d["rank_by"] == "val_top1":
            del d["rank_by"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        """Build from `to_dict` output; raises SearchError naming unknown keys."""
        unknown = d.keys() - {f.name for f in fields(cls)}
        if unknown:
            raise SearchError(
                f"unknown search settings {sorted(unknown)}; known: {[f.name for f in fields(cls)]}"
            )
        return cls(**d)


@dataclass(frozen=True)
class SearchResult:
    """Every evaluated candidate in evaluation order, their Pareto front, and how far the search got."""

    evaluated: list[Candidate]
    front: list[Candidate]
    generations: int
    evaluations: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {
            "evaluated": [c.to_dict() for c in self.evaluated],
            "front": [c.to_dict() for c in self.front],
            "generations": self.generations,
            "evaluations": self.evaluations,
        }


class _Run:
    """The mutable state of one search: its random stream, the evaluated candidates and the generation."""

    def __init__(self, settings: SearchSettings) -> None:
        self.rng = random.Random(settings.seed)
        self.evaluated: list[Candidate] = []
        self.accuracy: dict[Arch, float] = {}
        self.generation = 0

    def to_json(self, fingerprint: dict[str, Any]) -> str:
        version, internal, gauss = self.rng.getstate()
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "fingerprint": fingerprint,
                "generation": self.generation,
                "rng": [version, list(internal), gauss],
                "evaluated": [c.to_dict() for c in self.evaluated],
            }
        )

    def restore(self, data: dict[str, Any]) -> None:
        version, internal, gauss = data["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.evaluated = [Candidate.from_dict(c) for c in data["evaluated"]]
        self.accuracy = {c.arch: c.score() for c in self.evaluated}
        self.generation = int(data["generation"])


def _load_state(path: Path, fingerprint: dict[str, Any], run: _Run) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SearchError(
            f"search state {path} cannot be read ({err}); delete it or use a new --out"
        ) from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise SearchError(f"search state {path} is not a format-{STATE_FORMAT} search state; use a new --out")
    saved = data.get("fingerprint", {})
    if isinstance(saved, dict) and saved.get("source") != fingerprint.get("source"):
        raise SearchError(
            f"search state {path} was computed on {saved.get('source') or 'an unrecorded checkpoint'}, not on "
            f"{fingerprint.get('source')} (the run trained further, or another run is searched into this "
            "directory): its accuracies are stale; pass --force to start the search over, or use a new --out"
        )
    if saved != fingerprint:
        changed = _differences(saved, fingerprint)
        raise SearchError(
            f"search state {path} was written by a search with different {', '.join(changed)}; "
            "resume with the same settings or use a new --out"
        )
    try:
        run.restore(data)
    except (KeyError, TypeError, ValueError) as err:
        raise SearchError(f"search state {path} is corrupt ({err}); delete it or use a new --out") from None


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = sorted(saved.keys() | now.keys())
        return [d for k in keys for d in _differences(saved.get(k), now.get(k), f"{prefix}{k}.")]
    if saved == now:
        return []
    where = prefix.rstrip(".")
    if not isinstance(saved, (dict, list)) and not isinstance(now, (dict, list)):
        return [f"{where} ({saved!r} in the state, {now!r} now)"]
    return [where]


def _draw(make: Callable[[], Arch], seen: set[Arch], objectives: Objectives, tries: int) -> Arch | None:
    """A new feasible arch from `make` within `tries` draws (added to `seen`), or None."""
    for _ in range(tries):
        arch = make()
        if arch not in seen and objectives.feasible(arch):
            seen.add(arch)
            return arch
    return None


def select_parents(
    evaluated: Sequence[Candidate], objectives: Objectives, settings: SearchSettings
) -> list[Arch]:
    """The parents of the next generation under `settings.parent_selection` (module docstring)."""
    # stable sorts: equally accurate, equally costly candidates keep their evaluation order
    def ranked(cands: Iterable[Candidate]) -> list[Candidate]:
        return sorted(cands, key=lambda c: (-c.score(), c.cost(settings.cost)))

    if settings.parent_selection == "top":
        return [c.arch for c in ranked(evaluated)[: settings.parents]]
    low, high = objectives.feasible_range(settings.cost)
    groups = settings.num_buckets if settings.parent_selection == "buckets" else settings.cost_steps
    keep = settings.parents if settings.parent_selection == "buckets" else 1
    buckets: list[list[Candidate]] = [[] for _ in range(groups)]
    for cand in evaluated:
        buckets[bucket_index(cand.cost(settings.cost), low, high, groups)].append(cand)
    return [c.arch for bucket in buckets for c in ranked(bucket)[:keep]]


def measured(objectives: Objectives, arch: Arch, value: float, rank_by: str = "val_top1") -> Candidate:
    """The candidate of `arch` with what `evaluate` returned for it: its val top-1 or its block loss."""
    if rank_by == "block_loss":
        return dataclasses.replace(objectives.candidate(arch, None), block_loss=float(value))
    return objectives.candidate(arch, value)


def _evaluate(run: _Run, archs: list[Arch], objectives: Objectives, evaluate: Evaluate, settings: SearchSettings) -> None:
    if not archs:
        return
    accuracies = list(evaluate(list(archs)))
    if len(accuracies) != len(archs):
        raise SearchError(f"evaluate returned {len(accuracies)} accuracies for {len(archs)} architectures")
    for arch, acc in zip(archs, accuracies):
        acc = float(acc)
        if not math.isfinite(acc):
            raise SearchError(f"evaluate returned {acc} for an architecture; accuracies must be finite")
        run.evaluated.append(measured(objectives, arch, acc, settings.rank_by))
        run.accuracy[arch] = acc


def _initial_population(
    space: SearchSpace, objectives: Objectives, settings: SearchSettings, run: _Run
) -> list[Arch]:
    seen = set(run.accuracy)
    population = []
    for i in range(settings.population):
        arch = _draw(lambda: space.sample(run.rng), seen, objectives, settings.max_redraws)
        if arch is None:
            constraints = ", ".join(str(c) for c in objectives.constraints) or "none"
            raise InfeasibleError(
                f"no new feasible architecture in {settings.max_redraws} random draws (population member "
                f"{i + 1} of {settings.population}): the constraints ({constraints}) admit (almost) no "
                f"sub-network of space {space.name!r}; loosen them or lower the population"
            )
        population.append(arch)
    return population


def _children(space: SearchSpace, objectives: Objectives, settings: SearchSettings, run: _Run) -> list[Arch]:
    parents = select_parents(run.evaluated, objectives, settings)
    seen = set(run.accuracy)
    rng, tries = run.rng, settings.max_redraws
    children = []
    for _ in range(settings.mutations):
        child = _draw(
            lambda: space.mutate(rng.choice(parents), settings.mutation_prob, rng), seen, objectives, tries
        )
        if child is not None:  # the neighbourhood may be exhausted; the next generation tries again
            children.append(child)
    if len(parents) >= 2:
        for _ in range(settings.crossovers):
            child = _draw(lambda: space.crossover(*rng.sample(parents, 2), rng), seen, objectives, tries)
            if child is not None:
                children.append(child)
    return children


def _prescreened(children: list[Arch], prescreen: Prescreen, keep: int, evaluated: list[Candidate]) -> list[Arch]:
    chosen = list(prescreen(list(children), keep, list(evaluated)))
    kept = set(chosen)
    if len(kept) != len(chosen) or len(chosen) > keep or not kept <= set(children):
        raise SearchError(
            f"prescreen must return at most {keep} distinct architectures taken from the {len(children)} "
            f"children it was given, got {len(chosen)}"
        )
    return [c for c in children if c in kept]  # evaluation order does not depend on the hook's ordering


def evolutionary_search(
    space: SearchSpace,
    objectives: Objectives,
    evaluate: Evaluate,
    settings: SearchSettings = SearchSettings(),
    *,
    state_path: Path | None = None,
    progress: bool = True,
    prescreen: Prescreen | None = None,
    source: str | None = None,
) -> SearchResult:
    """Evolve feasible sub-networks of `space` and return every evaluated one and their Pareto front.

    `evaluate` maps a batch of new archs to validation top-1 accuracies; with `state_path` the search
    saves its state after every generation and continues from that file when it exists, provided it was
    written with the same settings, objectives and `source` (what the accuracies were measured on).
    """
    if objectives.space != space:
        raise SearchError(f"objectives were built for space {objectives.space.name!r}, not {space.name!r}")
    if (prescreen is None) != (settings.prescreen_keep is None):
        raise SearchError("a prescreen hook and the prescreen_keep setting go together; give both or neither")
    if settings.cost == "latency" and objectives.latency is None:
        raise SearchError("searching on latency needs a latency function in the objectives")
    fingerprint = json.loads(json.dumps(
        {"settings": settings.to_dict(), "objectives": objectives.to_dict(), "source": source}
    ))
    run = _Run(settings)
    resumed = False
    if state_path is not None and state_path.exists():
        _load_state(state_path, fingerprint, run)
        resumed = True

    def save() -> None:
        if state_path is not None:
            atomic_write_text(state_path, run.to_json(fingerprint))

    per_generation = settings.prescreen_keep or settings.mutations + settings.crossovers
    expected = settings.population + settings.iterations * per_generation
    with tqdm(
        total=expected, initial=len(run.evaluated), disable=not progress, desc="search", unit="eval",
        dynamic_ncols=True,
    ) as bar:

        def report(stage: str) -> None:
            front = pareto_front(run.evaluated, settings.cost)
            bar.set_postfix_str(f"{stage}, front {len(front)}", refresh=False)
            bar.n = len(run.evaluated)
            bar.refresh()

        if not resumed:
            population = _initial_population(space, objectives, settings, run)
            for start in range(0, len(population), EVAL_CHUNK):
                _evaluate(run, population[start : start + EVAL_CHUNK], objectives, evaluate, settings)
                report(f"initial population {len(run.evaluated)}/{len(population)}")
            save()
        report(f"generation {run.generation}/{settings.iterations}")
        while run.generation < settings.iterations:
            children = _children(space, objectives, settings, run)
            if prescreen is not None and settings.prescreen_keep is not None:  # checked: both or neither
                children = _prescreened(children, prescreen, settings.prescreen_keep, run.evaluated)
            _evaluate(run, children, objectives, evaluate, settings)
            run.generation += 1
            save()
            report(f"generation {run.generation}/{settings.iterations}")
    return SearchResult(
        evaluated=list(run.evaluated),
        front=pareto_front(run.evaluated, settings.cost),
        generations=run.generation,
        evaluations=len(run.evaluated),
    )


@dataclass(frozen=True)
class BudgetResult:
    """Each budget with its best candidate (None where none fits), and every candidate evaluated for any budget."""

    answers: list[tuple[Constraint, Candidate | None]]
    evaluated: list[Candidate]


def budget_state_path(state_path: Path, index: int) -> Path:
    """Where `budget_search` keeps the state of its `index`-th budget's search (beside `state_path`)."""
    return state_path.with_name(f"{state_path.stem}.budget{index}{state_path.suffix}")


def budget_search(
    space: SearchSpace,
    objectives: Objectives,
    evaluate: Evaluate,
    budgets: Sequence[Constraint],
    settings: SearchSettings = SearchSettings(),
    *,
    state_path: Path | None = None,
    progress: bool = True,
    prescreen: Prescreen | None = None,
    source: str | None = None,
) -> BudgetResult:
    """The most accurate sub-network found under each budget (None where none was found), and every evaluated one.

    Each budget runs its own evolution (same settings and seed) with the budget as an extra constraint;
    accuracies are shared, so an arch met under one budget is never evaluated again under another, and each
    budget's answer is the best of every evaluated arch that fits it, whichever run found it. A budget that
    admits too few archs for a population is skipped by evolution but still answered from the others' finds.
    """
    memo: dict[Arch, float] = {}

    def shared(archs: list[Arch]) -> list[float]:
        new = [a for a in archs if a not in memo]
        if new:
            accuracies = list(evaluate(new))
            if len(accuracies) != len(new):
                raise SearchError(
                    f"evaluate returned {len(accuracies)} accuracies for {len(new)} architectures"
                )
            memo.update(zip(new, (float(a) for a in accuracies)))
        return [memo[a] for a in archs]

    pool: dict[Arch, Candidate] = {}
    for i, budget in enumerate(budgets):
        try:
            result = evolutionary_search(
                space,
                objectives.with_constraints([budget]),
                shared,
                settings,
                state_path=None if state_path is None else budget_state_path(state_path, i),
                progress=progress,
                prescreen=prescreen,
                source=source,
            )
        except InfeasibleError:
            continue
        for cand in result.evaluated:
            pool.setdefault(cand.arch, cand)
            memo.setdefault(cand.arch, cand.block_loss if cand.block_loss is not None else cand.accuracy())
    answers: list[tuple[Constraint, Candidate | None]] = []
    for budget in budgets:
        fits = objectives.with_constraints([budget])
        admitted = [c for c in pool.values() if fits.feasible(c.arch)]
        best = max(admitted, key=lambda c: (c.score(), -c.cost(budget.metric)), default=None)
        answers.append((budget, best))
    return BudgetResult(answers, list(pool.values()))
