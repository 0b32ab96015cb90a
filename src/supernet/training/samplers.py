"""Architecture samplers: which sub-networks one optimizer step trains.

A sampler returns a list of architectures for each step. When the list contains the space's
largest sub-network it comes first: the loop trains it on labels and uses it as in-place teacher.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from supernet.cost import macs
from supernet.families.elastic_mbconv import ElasticMBConvStage
from supernet.space import Arch, SearchSpace, StageGenes

Scorer = Callable[[Sequence[Arch]], list[float]]
PRIOR_SEED = 0  # the AttentiveNAS MACs prior is estimated from a fixed stream: the same on every rank and resume


@dataclass
class SampleContext:
    """What a sampler may use for one step: the (possibly restricted) space, the rng, a batch scorer."""

    space: SearchSpace
    rng: random.Random
    num_classes: int
    score: Scorer | None = None  # loss of each arch on the current batch, without gradients
    epoch: int = 0
    step: int = 0


class Sampler(Protocol):
    """Chooses the sub-networks of one training step."""

    def sample(self, ctx: SampleContext) -> list[Arch]:
        """The architectures to train on this step, largest first when included."""
        ...


@dataclass
class SandwichSampler:
    """Largest, smallest and `num_random` uniformly sampled sub-networks (BigNAS, AlphaNet)."""

    num_random: int = 2

    def sample(self, ctx: SampleContext) -> list[Arch]:
        return [ctx.space.largest(), ctx.space.smallest()] + [
            ctx.space.sample(ctx.rng) for _ in range(self.num_random)
        ]


@dataclass(frozen=True)
class MacsBins:
    """MACs intervals [low + i step, low + (i + 1) step) below `high`, in MACs; SPOS draws one uniformly per path."""

    low: float
    high: float
    step: float
    tries: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high or self.step <= 0:
            raise ValueError(f"MACs bins need 0 <= low < high and step > 0, got {self.low}, {self.high}, {self.step}")

    def bins(self) -> list[tuple[float, float]]:
        """The intervals, in order."""
        edges, out = self.low, []
        while edges < self.high - 1e-9 * self.step:
            out.append((edges, min(edges + self.step, self.high)))
            edges += self.step
        return out

    def sample(self, ctx: SampleContext) -> Arch:
        """A bin uniformly, then uniform sub-networks until one lies in it (`tries` at most, then any)."""
        lo, hi = ctx.rng.choice(self.bins())
        for _ in range(self.tries):
            arch = ctx.space.sample(ctx.rng)
            if lo <= macs(ctx.space, arch, ctx.num_classes) <= hi:
                return arch
        return ctx.space.sample(ctx.rng)  # as SPOS: an empty or unlucky bin falls back to any path


@dataclass
class UniformSampler:
    """`num_random` uniformly sampled sub-networks, optionally preceded by the largest.

    With the largest included, the others are drawn from the space without it (DepS Eq. 4: the full
    model plus k-1 sub-networks from A minus the full model), so it never trains twice in one step.
    With `macs_bins` each draw first picks one of the bins uniformly, then draws sub-networks until one
    falls inside it (SPOS's official FLOPs-constrained sampling).
    """

    num_random: int = 1
    include_largest: bool = False
    max_redraws: int = 100
    macs_bins: MacsBins | None = None

    def sample(self, ctx: SampleContext) -> list[Arch]:
        if not self.include_largest:
            return [self._draw(ctx) for _ in range(self.num_random)]
        largest = ctx.space.largest()
        return [largest] + [self._other_than(largest, ctx) for _ in range(self.num_random)]

    def _draw(self, ctx: SampleContext) -> Arch:
        if self.macs_bins is None:
            return ctx.space.sample(ctx.rng)
        return self.macs_bins.sample(ctx)

    def _other_than(self, largest: Arch, ctx: SampleContext) -> Arch:
        arch = self._draw(ctx)
        for _ in range(self.max_redraws):  # a space of one sub-network has nothing else to offer
            if arch != largest:
                break
            arch = self._draw(ctx)
        return arch


def sample_compound(space: SearchSpace, rng: random.Random) -> Arch:
    """A CompOFA sample: per stage one level couples depth and expand ratio (shared by the stage's blocks).

    Only elastic MBConv stages have the two dimensions; other stages are sampled by their family.
    """
    stages = []
    for st in space.stages:
        if not isinstance(st, ElasticMBConvStage):
            stages.append(st.sample(rng))
            continue
        levels = max(len(st.depths), len(st.expand_ratios))
        level = rng.randrange(levels)

        def at(choices: list, lv: int = level, n: int = levels) -> Any:
            return choices[round(lv * (len(choices) - 1) / (n - 1))] if n > 1 else choices[-1]

        d, ratio = at(st.depths), at(st.expand_ratios)
        width = rng.choice(st.widths)
        stages.append(StageGenes(width, tuple((rng.choice(st.kernels), ratio) for _ in range(d))))
    resolution = rng.choice(space.spec.resolutions)
    stem = rng.choice(space.spec.stem.widths)
    return Arch.of_stages(resolution, stem, stages, rng.choice(space.spec.head.widths))


@dataclass
class CompoundSampler:
    """Largest, smallest and `num_random` compound samples (CompOFA: depth and expand ratio coupled)."""

    num_random: int = 2
    sandwich: bool = True

    def sample(self, ctx: SampleContext) -> list[Arch]:
        head = [ctx.space.largest(), ctx.space.smallest()] if self.sandwich else []
        return head + [sample_compound(ctx.space, ctx.rng) for _ in range(self.num_random)]


@dataclass
class AttentiveSampler:
    """AttentiveNAS: largest, smallest, and `num_random` picks each best (or worst) of `candidates`.

    Each pick draws a target MACs value from the space's MACs prior, as the AttentiveNAS paper (section
    3.2, pi(tau)) and its released sampler do: the empirical distribution of the MACs of `prior_samples`
    uniformly drawn sub-networks (a fixed seed, so a resumed run rebuilds the same prior), discretised
    into `num_buckets` equal MACs intervals. It then draws `candidates` sub-networks inside the target's
    interval, scores them on the current batch and keeps the lowest-loss one (`mode='best'`, BestUp) or
    the highest-loss one (`'worst'`, WorstUp). `target='uniform'` draws the interval uniformly instead
    (this package's earlier rule, which rarely reaches the costliest intervals).
    """

    num_random: int = 2
    candidates: int = 3
    mode: str = "best"
    num_buckets: int = 10
    max_tries: int = 200
    target: str = "prior"
    prior_samples: int = 2000
    _prior: tuple[SearchSpace, list[float]] | None = field(default=None, init=False, repr=False, compare=False)

    def prior(self, space: SearchSpace, num_classes: int) -> list[float]:
        """Probability of each MACs interval under uniform sampling of `space` (the AttentiveNAS prior)."""
        if self._prior is None or self._prior[0] is not space:
            lo, hi = macs(space, space.smallest(), num_classes), macs(space, space.largest(), num_classes)
            rng = random.Random(PRIOR_SEED)
            counts = [0] * self.num_buckets
            for _ in range(self.prior_samples):
                m = macs(space, space.sample(rng), num_classes)
                counts[min(self.num_buckets - 1, int((m - lo) / (hi - lo) * self.num_buckets)) if hi > lo else 0] += 1
            self._prior = (space, [c / self.prior_samples for c in counts])
        return self._prior[1]

    def sample(self, ctx: SampleContext) -> list[Arch]:
        if ctx.score is None:
            raise ValueError("the attentive sampler needs a scorer (the training loop provides one)")
        space = ctx.space
        lo = macs(space, space.smallest(), ctx.num_classes)
        hi = macs(space, space.largest(), ctx.num_classes)
        weights = self.prior(space, ctx.num_classes) if self.target == "prior" else None
        picks = []
        for _ in range(self.num_random):
            if weights is None:
                bucket = ctx.rng.randrange(self.num_buckets)
            else:
                bucket = ctx.rng.choices(range(self.num_buckets), weights=weights)[0]
            low = lo + (hi - lo) * bucket / self.num_buckets
            high = lo + (hi - lo) * (bucket + 1) / self.num_buckets
            pool = [self._draw_in(space, ctx, low, high) for _ in range(self.candidates)]
            scores = ctx.score(pool)
            pick = min if self.mode == "best" else max
            picks.append(pool[pick(range(len(pool)), key=scores.__getitem__)])
        return [space.largest(), space.smallest(), *picks]

    def _draw_in(self, space: SearchSpace, ctx: SampleContext, low: float, high: float) -> Arch:
        """A uniform sample whose MACs fall in [low, high], or the closest of `max_tries` draws."""
        best, best_gap = None, float("inf")
        for _ in range(self.max_tries):
            arch = space.sample(ctx.rng)
            m = macs(space, arch, ctx.num_classes)
            gap = max(low - m, m - high, 0.0)
            if gap == 0.0:
                return arch
            if gap < best_gap:
                best, best_gap = arch, gap
        return best
