"""Schedules: per optimizer step, what is trained (full model or sub-networks), how hard, at which lr.

Every schedule is a pure function of the global step, so a resumed run needs nothing but the step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from supernet.config import Config, DelayedEpsConfig, PhaseConfig, ProgressiveConfig
from supernet.space import SearchSpace


def cosine_lr(step: int, total: int, peak: float, warmup: int, start_factor: float, min_factor: float) -> float:
    """Linear warm-up from `start_factor * peak` over `warmup` steps, then cosine decay to `min_factor * peak`."""
    if warmup > 0 and step < warmup:
        return peak * (start_factor + (1.0 - start_factor) * step / warmup)
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return peak * (min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def linear_lr(step: int, total: int, peak: float, warmup: int, start_factor: float, min_factor: float) -> float:
    """Linear warm-up as `cosine_lr`, then linear annealing to `min_factor * peak` at `total` (EnNAS)."""
    if warmup > 0 and step < warmup:
        return peak * (start_factor + (1.0 - start_factor) * step / warmup)
    progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    return peak * (1.0 - (1.0 - min_factor) * progress)


def step_lr(step: int, warmup: int, peak: float, start_factor: float, every: int, rate: float) -> float:
    """Linear warm-up as `cosine_lr`, then `peak` times `rate` once per `every` steps after it (DNA's step decay)."""
    if warmup > 0 and step < warmup:
        return peak * (start_factor + (1.0 - start_factor) * step / warmup)
    return peak * rate ** ((step - warmup) // max(every, 1))


def epsilon(step: int, shrink_start: int, ramp_steps: int, eps_start: float) -> float:
    """DepS's sub-network gradient scale: eps_start at the shrink start, linearly up to 1 over `ramp_steps`."""
    if step < shrink_start:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, eps_start + (1.0 - eps_start) * (step - shrink_start) / ramp_steps)


@dataclass(frozen=True)
class StepPlan:
    """What one optimizer step does."""

    phase: str
    space: SearchSpace  # the space sub-networks are drawn from (a restricted one in OFA phases)
    lr: float
    shrinking: bool  # False: only the full model trains (FM-Warmup, OFA's first phase)
    sub_scale: float  # gradient scale of every sub-network except the full model (DepS's epsilon)
    distill: bool  # whether students distil from the teacher
    num_random: int | None = None  # overrides the sampler's count (OFA phases)
    phase_start: bool = False  # first step of a phase
    reorder_channels: bool = False  # re-order channels by importance before this step
    compound: bool = False  # OFA phases: draw CompOFA compound samples instead of uniform ones


@dataclass(frozen=True)
class _Phase:
    config: PhaseConfig
    start: int
    steps: int
    space: SearchSpace


class Schedule:
    """Maps a global step to its StepPlan for one config (shrink_from_start, delayed_eps or progressive)."""

    def __init__(self, config: Config, space: SearchSpace, steps_per_epoch: int, global_batch: int):
        self.config = config
        self.space = space
        self.steps_per_epoch = steps_per_epoch
        optim = config.optim
        self.peak_lr = optim.lr * global_batch / optim.lr_reference_batch
        self.warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
        sched = config.schedule
        self.phases: list[_Phase] = []
        # the phases' stretch, once here: _plan reads it every step
        self.stretch = sched.stretch if isinstance(sched, ProgressiveConfig) else 1.0
        if isinstance(sched, ProgressiveConfig):
            start = 0
            for phase in sched.phases:
                steps = max(1, round(phase.epochs * self.stretch * steps_per_epoch))
                self.phases.append(_Phase(phase, start, steps, self._phase_space(phase)))
                start += steps
            self.total_steps = start
        else:
            self.total_steps = max(1, round(config.train.epochs * steps_per_epoch))
        self.distill_start = round(config.distill.start_epoch * steps_per_epoch)
        self.shrink_start = 0
        if isinstance(sched, DelayedEpsConfig):
            self.shrink_start = round(sched.fm_warmup * self.total_steps)
            self.ramp_steps = round(sched.eps_ramp * self.total_steps)

    @property
    def epochs(self) -> int:
        """Number of (possibly partial) epochs the schedule spans."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def _phase_space(self, phase: PhaseConfig) -> SearchSpace:
        def n(value: int | str) -> int | None:
            return None if value == "all" else int(value)

        return self.space.restrict(
            kernel=n(phase.kernel), depth=n(phase.depth), expand=n(phase.expand), width=n(phase.width),
            resolution=n(phase.resolution),
        )

    def _lr(self, step: int, total: int, peak: float, warmup: int | None = None) -> float:
        o = self.config.optim
        warmup = self.warmup_steps if warmup is None else warmup
        if o.lr_schedule == "step":
            every = round(o.step_decay_epochs * self.steps_per_epoch)
            return step_lr(step, warmup, peak, o.warmup_start_factor, every, o.step_decay_rate)
        decay = linear_lr if o.lr_schedule == "linear" else cosine_lr
        return decay(step, total, peak, warmup, o.warmup_start_factor, o.min_lr_factor)

    def plan(self, step: int) -> StepPlan:
        """The plan of global step `step` (0-based); distillation waits for `distill.start_epoch`."""
        plan = self._plan(step)
        if step < self.distill_start and plan.distill:
            return dataclasses.replace(plan, distill=False)
        return plan

    def _plan(self, step: int) -> StepPlan:
        sched = self.config.schedule
        if isinstance(sched, ProgressiveConfig):
            phase = next((p for p in reversed(self.phases) if step >= p.start), self.phases[0])
            local = step - phase.start
            # OFA: each phase its own cosine (and warm-up) at its own peak, scaled with the global batch
            scale = self.peak_lr / self.config.optim.lr
            peak = self.peak_lr if phase.config.lr is None else phase.config.lr * scale
            warmup = (None if phase.config.warmup_epochs is None else
                      round(phase.config.warmup_epochs * self.stretch * self.steps_per_epoch))
            full_only = phase.config.num_random == 0
            return StepPlan(
                phase=phase.config.name,
                space=phase.space,
                lr=self._lr(local, phase.steps, peak, warmup),
                shrinking=not full_only,
                sub_scale=1.0,
                distill=not full_only,
                num_random=phase.config.num_random,
                phase_start=local == 0,
                reorder_channels=local == 0 and phase.config.reorder_channels,
                compound=phase.config.compound,
            )
        lr = self._lr(step, self.total_steps, self.peak_lr)
        if isinstance(sched, DelayedEpsConfig):
            shrinking = step >= self.shrink_start
            return StepPlan(
                phase="shrink" if shrinking else "fm_warmup",
                space=self.space,
                lr=lr,
                shrinking=shrinking,
                sub_scale=epsilon(step, self.shrink_start, self.ramp_steps, sched.eps_start),
                distill=shrinking,
                phase_start=step in (0, self.shrink_start),
            )
        return StepPlan(phase="shrink", space=self.space, lr=lr, shrinking=True, sub_scale=1.0, distill=True,
                        phase_start=step == 0)
