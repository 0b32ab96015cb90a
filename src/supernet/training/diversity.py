"""EnNAS diversity sampler: per block, m operator choices that differ in their feature maps.

Each block position gets a (T x T) matrix D of mean feature-map diversity (1 - cosine similarity of
the block's outputs under two operator choices, on the same input). A step's m networks are built
block by block: the block's m operators are drawn sequentially, the first in proportion to a
per-operator weight, each next in proportion to weight x mean diversity to the ones already drawn,
and the m draws are dealt to the m networks in random order. The weights are calibrated so that
every operator keeps probability exactly 1/T in every network, as under uniform sampling.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from supernet.cost import macs, stem_cost
from supernet.data.augment import resize_batch
from supernet.families.base import family_stages
from supernet.model import Supernet
from supernet.space import Arch, Gene, SearchSpace, StageSpec, as_gene
from supernet.training.samplers import SampleContext

Op = Gene  # a block's genes: (kernel, expand_ratio) for elastic MBConv, (operator,) for choice blocks
Matrix = Sequence[Sequence[float]]


def block_ops(stage: StageSpec, block: int) -> list[Op]:
    """Block `block`'s operator choices (its family's `block_choices`); index t is op t."""
    return stage.block_choices(block)


def stage_ops(stage: StageSpec) -> tuple[tuple[Op, ...], ...]:
    """Per possible block of the stage, its operator choices."""
    return tuple(tuple(block_ops(stage, b)) for b in range(max(stage.depths)))


@dataclass(frozen=True)
class DiversityTable:
    """Per block position `[stage][block]`, the (T x T) mean diversity between the block's operators."""

    ops: tuple[tuple[tuple[Op, ...], ...], ...]
    matrices: tuple[tuple[Tensor, ...], ...]

    def __post_init__(self) -> None:
        if len(self.ops) != len(self.matrices):
            raise ValueError(f"diversity table has {len(self.ops)} op lists but {len(self.matrices)} stages")
        for s, (stage, blocks) in enumerate(zip(self.ops, self.matrices)):
            if len(stage) < len(blocks):
                raise ValueError(f"stage {s}: {len(blocks)} diversity matrices but operators for {len(stage)} blocks")
            for b, d in enumerate(blocks):
                ops = stage[b]
                if d.shape != (len(ops), len(ops)):
                    raise ValueError(
                        f"stage {s} block {b}: diversity matrix has shape {tuple(d.shape)}, "
                        f"expected {len(ops)} x {len(ops)} (one row per operator choice)"
                    )

    @classmethod
    def from_space(cls, space: SearchSpace, matrices: Sequence[Sequence[Tensor]]) -> DiversityTable:
        """A table for `space` from per-block matrices (float64 copies), checking their shapes."""
        return cls(
            ops=tuple(stage_ops(st) for st in space.stages),
            matrices=tuple(
                tuple(torch.as_tensor(d, dtype=torch.float64).clone() for d in ms) for ms in matrices
            ),
        )

    @classmethod
    def uniform(cls, space: SearchSpace) -> DiversityTable:
        """Every pair of distinct operators equally diverse (diversity 1): the sampler is uniform."""
        mats = []
        for st in space.stages:
            ts = [len(ops) for ops in stage_ops(st)]
            mats.append([torch.ones(t, t, dtype=torch.float64) - torch.eye(t, dtype=torch.float64) for t in ts])
        return cls.from_space(space, mats)

    def index(self, stage: int, block: int, op: Op) -> int:
        """Index of operator `op` among the choices of block `block` of stage `stage`."""
        try:
            return self.ops[stage][block].index(tuple(op))
        except ValueError:
            raise ValueError(
                f"operator {list(op)} is not a choice of stage {stage} block {block}: "
                f"{[list(o) for o in self.ops[stage][block]]}"
            ) from None

    def matches(self, space: SearchSpace) -> bool:
        """Whether the table covers `space`: same operators per stage and a matrix for every block."""
        return len(self.ops) == len(space.stages) and all(
            stage_ops(st) == ops[: max(st.depths)] and len(ms) >= max(st.depths)
            for st, ops, ms in zip(space.stages, self.ops, self.matrices)
        )


DiversityInputs = Literal["spread", "largest"]


@torch.no_grad()
def estimate_diversity(
    net: Supernet,
    batches: Iterable[Tensor],
    space: SearchSpace,
    base: Arch | None = None,
    inputs: DiversityInputs = "spread",
) -> DiversityTable:
    """Mean 1 - cosine similarity between each block's outputs under every pair of its operator choices.

    `inputs` decides what each block is probed on. "spread" (EnNAS section 3.3): the images run through
    every block position in turn; at each, every operator processes all of the position's inputs, and
    the inputs of the next position are the operators' outputs dealt out evenly (image i takes operator
    i mod T). "largest": the inputs `base` (default: the space's largest sub-network) gives each block,
    blocks deeper than `base` reaches in a stage taking the stage's output. Blocks run at `base`'s stem
    and stage widths in eval mode on `batches` (image tensors or (images, labels) pairs, resized to
    `base.resolution` if needed). The network's active arch, block settings and train/eval mode are
    restored afterwards.
    """
    base = space.largest() if base is None else space.validate(base)
    if inputs not in ("spread", "largest"):
        raise ValueError(f"diversity inputs must be 'spread' or 'largest', got {inputs!r}")
    if len(net.stages) != len(space.stages) or any(
        max(st.depths) > len(blocks) for st, blocks in zip(space.stages, net.stages)
    ):
        raise ValueError("the search space does not fit the supernet (more stages or blocks than it has)")
    ops = [stage_ops(st) for st in space.stages]
    sums = [[torch.zeros(len(o), len(o), dtype=torch.float64) for o in stage] for stage in ops]
    saved_arch, saved_mode = net.active_arch, net.training
    saved_blocks = [_block_settings(blk) for st in net.stages for blk in st]
    captured: dict[tuple[int, int], Tensor] = {}
    handles = []
    ref = next(net.parameters())
    count = 0
    try:
        net.eval()
        net.set_active(base)
        if inputs == "largest":
            handles = _capture_block_inputs(net, space, base, captured)
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = resize_batch(images.to(device=ref.device, dtype=ref.dtype), base.resolution)
            if images.shape[0] == 0:
                continue
            if inputs == "spread":
                _spread(net, space, base, images, ops, sums)
            else:
                captured.clear()
                net(images)
                for s, st in enumerate(space.stages):
                    for b in range(max(st.depths)):
                        outs = _outputs(st, net.stages[s][b], captured[(s, b)], ops[s][b], base.widths[s])
                        sums[s][b] += _pairwise_diversity(outs)
            count += images.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.set_active(saved_arch)
        for blk, settings in zip((blk for st in net.stages for blk in st), saved_blocks):
            for name, value in settings.items():
                setattr(blk, name, value)
        net.train(saved_mode)
    if count == 0:
        raise ValueError("estimate_diversity needs at least one non-empty batch of images")
    mats = []
    for stage_sums in sums:
        row = []
        for total in stage_sums:
            d = total / count
            d = ((d + d.T) / 2).clamp_(0.0, 2.0)
            d.fill_diagonal_(0.0)
            row.append(d)
        mats.append(row)
    return DiversityTable.from_space(space, mats)


def _capture_block_inputs(
    net: Supernet, space: SearchSpace, base: Arch, store: dict[tuple[int, int], Tensor]
) -> list[Any]:
    """Hooks recording each block's input when `base` runs; blocks deeper than it see the stage's output."""
    handles = []
    for s, st in enumerate(space.stages):
        last = base.depths[s] - 1
        for b in range(base.depths[s]):
            handles.append(net.stages[s][b].register_forward_pre_hook(_capture_input(store, (s, b))))
        tail = [(s, b) for b in range(base.depths[s], max(st.depths))]
        if tail:
            handles.append(net.stages[s][last].register_forward_hook(_capture_output(store, tail)))
    return handles


def _spread(net: Supernet, space: SearchSpace, base: Arch, images: Tensor, ops: list, sums: list) -> None:
    """EnNAS's estimate on one batch: every operator of a layer on all its inputs, outputs dealt to the next."""
    x = images.contiguous(memory_format=torch.channels_last) if net.channels_last else images
    x = net.stem(x, base.stem_width)
    rows = torch.arange(x.shape[0], device=x.device)
    for s, st in enumerate(space.stages):
        for b in range(max(st.depths)):
            outs = _outputs(st, net.stages[s][b], x, ops[s][b], base.widths[s])
            sums[s][b] += _pairwise_diversity(outs)
            x = torch.stack(outs, dim=1)[rows, rows % len(outs)]


def estimation_macs(
    space: SearchSpace, base: Arch, num_classes: int, in_channels: int | None = None, inputs: DiversityInputs = "spread"
) -> int:
    """Multiply-adds per image of `estimate_diversity`: every block position under every operator.

    "spread": the stem, then each position runs each operator of its own on the merged outputs of the
    one before (no head). "largest": one pass of `base`, then each position once per operator on the
    input `base` gives it (blocks deeper than `base` reaches take the stage's output). Widths are `base`'s.
    """
    c_in = space.in_channels if in_channels is None else in_channels
    stem_macs, _, size = stem_cost(space, base.resolution, base.stem_width, c_in)
    c = base.stem_width
    total = stem_macs if inputs == "spread" else macs(space, base, num_classes, c_in)
    for s, st in enumerate(family_stages(space)):
        width, genes = base.widths[s], base.blocks[s]
        for b in range(max(st.depths)):
            total += sum(st.block_cost(b, c, width, size, op)[0] for op in block_ops(st, b))
            if inputs == "spread" or b < len(genes):  # the next position's input: merged outputs, or base's block
                size = st.block_cost(b, c, width, size, genes[min(b, len(genes) - 1)])[2]
                c = width
    return total


def _block_settings(block: torch.nn.Module) -> dict[str, Any]:
    """A dynamic block's configuration (its `active*` attributes), to restore after probing it."""
    return {k: v for k, v in vars(block).items() if k.startswith("active")}


def _capture_input(store: dict[tuple[int, int], Tensor], key: tuple[int, int]) -> Any:
    def hook(module: torch.nn.Module, args: tuple) -> None:
        store[key] = args[0]

    return hook


def _capture_output(store: dict[tuple[int, int], Tensor], keys: list[tuple[int, int]]) -> Any:
    def hook(module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        for key in keys:
            store[key] = output

    return hook


def _outputs(stage: StageSpec, block: torch.nn.Module, x: Tensor, ops: Sequence[Op], width: int) -> list[Tensor]:
    """The block's output on `x` under each operator."""
    outs = []
    for op in ops:
        stage.configure(block, width, op)  # type: ignore[attr-defined]
        outs.append(block(x))
    return outs


def _pairwise_diversity(outs: Sequence[Tensor]) -> Tensor:
    """Sum over the batch of 1 - cos(output under op t, under op u), as a (T x T) float64 matrix."""
    y = torch.stack([o.flatten(1).to(torch.float64) for o in outs], dim=1)  # (N, T, features)
    # 1 - cos(a, b) = |a/|a| - b/|b||^2 / 2, which is exactly 0 for identical outputs (no cancellation).
    dist = torch.cdist(
        F.normalize(y, dim=2), F.normalize(y, dim=2), compute_mode="donot_use_mm_for_euclid_dist"
    )
    zero = y.abs().amax(dim=2) == 0  # cos with a zero map counts as 0 (torch's convention): diversity 1
    d = 0.5 * dist.square() + 0.5 * (zero.unsqueeze(2) ^ zero.unsqueeze(1))
    return d.clamp_(0.0, 2.0).sum(dim=0)


# -- the sequential draw and its calibration ---------------------------------------------------------


def _factors(diversity: Matrix, chosen: Sequence[int]) -> list[float]:
    """Per-operator factor of the next draw: mean diversity to `chosen`, zero for ops of the current round.

    Draws go in rounds of T without repeats, so an operator repeats only once all T are taken (m > T).
    When no candidate has positive diversity (e.g. an untrained supernet) the candidates are equal.
    """
    t = len(diversity)
    if not chosen:
        return [1.0] * t
    taken = set(chosen[len(chosen) - len(chosen) % t :])
    div = [0.0 if c in taken else sum(diversity[c][j] for j in chosen) / len(chosen) for c in range(t)]
    if max(div) <= 0.0:
        return [0.0 if c in taken else 1.0 for c in range(t)]
    return div


def draw_operators(diversity: Matrix, weights: Sequence[float], m: int, rng: random.Random) -> list[int]:
    """m operator indices drawn in sequence, each with probability proportional to weight x factor."""
    chosen: list[int] = []
    for _ in range(m):
        p = [f * w for f, w in zip(_factors(diversity, chosen), weights)]
        u = rng.random() * sum(p)
        pick = max(i for i, v in enumerate(p) if v > 0)  # guards against rounding at the top end
        for i, v in enumerate(p):
            if v > 0 and u < v:
                pick = i
                break
            u -= v
        chosen.append(pick)
    return chosen


def num_sequences(t: int, m: int) -> int:
    """Number of ordered m-draws from T operators without repeats inside a round of T."""
    return math.prod(t - k % t for k in range(m))


@dataclass(frozen=True)
class _Enumeration:
    """Every possible ordered draw with its per-step factor rows, for exact expected counts."""

    seqs: Tensor  # (N, m) operator indices
    factors: Tensor  # (N, m, T) factor rows at each step
    counts: Tensor  # (N, T) how often each operator appears in the draw

    @classmethod
    def build(cls, diversity: Matrix, m: int) -> _Enumeration:
        t = len(diversity)
        seqs: list[list[int]] = []
        rows: list[list[list[float]]] = []

        def extend(prefix: list[int], prefix_rows: list[list[float]]) -> None:
            if len(prefix) == m:
                seqs.append(prefix)
                rows.append(prefix_rows)
                return
            f = _factors(diversity, prefix)
            for c in range(t):
                if f[c] > 0:  # zero-factor draws have probability 0 whatever the weights
                    extend(prefix + [c], prefix_rows + [f])

        extend([], [])
        seq_t = torch.tensor(seqs, dtype=torch.long)
        counts = F.one_hot(seq_t, t).sum(dim=1).to(torch.float64)
        return cls(seq_t, torch.tensor(rows, dtype=torch.float64), counts)

    def expected_counts(self, weights: Tensor) -> Tensor:
        w = weights / weights.max()
        picked = self.factors.gather(2, self.seqs.unsqueeze(2)).squeeze(2) * w[self.seqs]
        prob = (picked / (self.factors @ w)).prod(dim=1)
        return prob @ self.counts


def expected_counts(diversity: Matrix, weights: Sequence[float], m: int) -> Tensor:
    """Exact expected number of times each operator is drawn in one m-draw (enumerates all draws)."""
    return _Enumeration.build(diversity, m).expected_counts(torch.tensor(weights, dtype=torch.float64))


def _monte_carlo_counts(diversity: Tensor, weights: Tensor, m: int, samples: int, seed: int) -> Tensor:
    """Expected operator counts from `samples` simulated draws (each step adds its pick probabilities)."""
    g = torch.Generator().manual_seed(seed)
    t = diversity.shape[0]
    rows = torch.arange(samples)
    div_sum = torch.zeros(samples, t, dtype=torch.float64)
    free = torch.ones(samples, t, dtype=torch.bool)
    counts = torch.zeros(t, dtype=torch.float64)
    for k in range(m):
        if k == 0:
            f = torch.ones(samples, t, dtype=torch.float64)
        else:
            f = div_sum / k * free
            flat = f.max(dim=1).values <= 0
            f[flat] = free[flat].to(torch.float64)
        p = f * weights
        p = p / p.sum(dim=1, keepdim=True)
        counts += p.mean(dim=0)  # Rao-Blackwellised: the step's probabilities, not just its pick
        pick = torch.multinomial(p, 1, generator=g).squeeze(1)
        div_sum += diversity[:, pick].T
        free[rows, pick] = False
        if (k + 1) % t == 0:
            free.fill_(True)
    return counts


def calibrate(
    diversity: Matrix | Tensor,
    m: int,
    max_enumerate: int = 20_000,
    mc_samples: int = 20_000,
    max_iters: int = 1000,
    tol: float = 1e-12,
    seed: int = 0,
) -> tuple[list[float], float]:
    """Operator weights under which each operator is drawn m/T times on average, and the remaining error.

    Fixed-point iteration w <- w * (m/T) / E[count](w), with E[count] exact by enumerating every
    ordered draw when there are at most `max_enumerate`, else estimated from `mc_samples` simulated
    draws (seeded by `seed`). The error is the largest |E[count_t]/m - 1/T| at the returned weights
    (exact, or estimated on draws seeded by `seed + 1`).
    """
    d = torch.as_tensor(diversity, dtype=torch.float64)
    t = d.shape[0]
    if t == 1 or m % t == 0:  # every operator is drawn exactly m/T times whatever the weights
        return [1.0] * t, 0.0
    exact = num_sequences(t, m) <= max_enumerate
    if exact:
        counts_of = _Enumeration.build(d.tolist(), m).expected_counts
    else:

        def counts_of(w: Tensor) -> Tensor:
            return _monte_carlo_counts(d, w, m, mc_samples, seed)

    target = m / t
    stop = tol if exact else max(tol, 1e-7)  # Monte Carlo: far below its own noise, no need to go further
    log_w = torch.zeros(t, dtype=torch.float64)
    best_w, best_err = log_w, math.inf
    for _ in range(max_iters):
        counts = counts_of(torch.exp(log_w))
        err = (counts - target).abs().max().item() / m
        if err < best_err:
            best_w, best_err = log_w, err
        if err < stop:
            break
        log_w = log_w + torch.log(target / counts)
        log_w = log_w - log_w.max()
    weights = torch.exp(best_w)
    if not exact:  # the iteration fits its own draws; judge the result on fresh ones
        best_err = (_monte_carlo_counts(d, weights, m, mc_samples, seed + 1) - target).abs().max().item() / m
    return weights.tolist(), best_err


# -- the sampler -------------------------------------------------------------------------------------


class DiversitySampler:
    """EnNAS: `num_networks` sub-networks whose per-block operators are diverse, each op kept at 1/T.

    Resolution, stem, stage and head widths and stage depths are uniform and independent per network.
    Until `prepare` (or `set_diversity`) is called all operators count as equally diverse, so each
    block's m operators are a uniform draw without repeats (repeats only once all T are used).
    `inputs` is how `prepare` probes the blocks (`estimate_diversity`).
    """

    def __init__(
        self,
        num_networks: int = 4,
        inputs: DiversityInputs = "spread",
        max_enumerate: int = 20_000,
        mc_samples: int = 20_000,
        max_iters: int = 1000,
        calibration_seed: int = 0,
    ) -> None:
        if num_networks < 1:
            raise ValueError(f"num_networks must be at least 1, got {num_networks}")
        self.num_networks = num_networks
        self.inputs = inputs
        self.max_enumerate = max_enumerate
        self.mc_samples = mc_samples
        self.max_iters = max_iters
        self.calibration_seed = calibration_seed
        self.table: DiversityTable | None = None
        self.weights: list[list[list[float]]] | None = None  # [stage][block] -> per-operator weight
        self.calibration_error = 0.0  # largest |P(op in a slot) - 1/T| over blocks
        self._rows: list[list[list[list[float]]]] = []  # the table as nested lists, for fast drawing

    def prepare(self, net: Supernet, batches: Iterable[Tensor], space: SearchSpace) -> DiversityTable:
        """Re-estimate the diversity matrices on `batches` (start of every epoch) and recalibrate."""
        table = estimate_diversity(net, batches, space, inputs=self.inputs)
        self.set_diversity(table)
        return table

    def set_diversity(self, table: DiversityTable) -> None:
        """Use `table` from now on, computing the calibrated weights of every block."""
        weights, worst = [], 0.0
        for blocks in table.matrices:
            stage_weights = []
            for d in blocks:
                w, err = calibrate(
                    d,
                    self.num_networks,
                    self.max_enumerate,
                    self.mc_samples,
                    self.max_iters,
                    seed=self.calibration_seed,
                )
                stage_weights.append(w)
                worst = max(worst, err)
            weights.append(stage_weights)
        self.table, self.weights, self.calibration_error = table, weights, worst
        self._rows = _as_rows(table)

    def sample(self, ctx: SampleContext) -> list[Arch]:
        """`num_networks` architectures of `ctx.space`; network i takes operator slot i of every block."""
        space, rng, m = ctx.space, ctx.rng, self.num_networks
        table, weights, rows = self.table, self.weights, self._rows
        if table is None or weights is None:
            table = DiversityTable.uniform(space)
            weights = [[[1.0] * len(ops) for ops in stage] for stage in table.ops]
            rows = _as_rows(table)
        elif not table.matches(space):
            raise ValueError(
                "the diversity table was estimated for other operator choices or depths than the space "
                "being sampled; call prepare(net, batches, space) with the current space"
            )
        slots = []  # [stage][block] -> m operator indices, one per network
        for s, st in enumerate(space.stages):
            stage_slots = []
            for b in range(max(st.depths)):
                ops = draw_operators(rows[s][b], weights[s][b], m, rng)
                rng.shuffle(ops)
                stage_slots.append(ops)
            slots.append(stage_slots)
        archs = []
        for i in range(m):
            depths = tuple(rng.choice(st.depths) for st in space.stages)
            chosen = [tuple(table.ops[s][b][slots[s][b][i]] for b in range(d)) for s, d in enumerate(depths)]
            archs.append(
                Arch(
                    resolution=rng.choice(space.spec.resolutions),
                    stem_width=rng.choice(space.spec.stem.widths),
                    widths=tuple(rng.choice(st.widths) for st in space.stages),
                    depths=depths,
                    blocks=tuple(chosen),
                    head_width=rng.choice(space.spec.head.widths),
                )
            )
        return archs

    def state_dict(self) -> dict[str, Any]:
        """Diversity matrices and calibrated weights as plain tensors and lists (torch.save-able)."""
        if self.table is None or self.weights is None:
            return {"num_networks": self.num_networks, "ops": None, "diversity": None, "weights": None}
        return {
            "num_networks": self.num_networks,
            "ops": [[[list(op) for op in ops] for ops in stage] for stage in self.table.ops],
            "diversity": [[d.clone() for d in ms] for ms in self.table.matrices],
            "weights": [[torch.tensor(w, dtype=torch.float64) for w in ws] for ws in self.weights],
            "calibration_error": self.calibration_error,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved, without recalibrating (so resumed runs draw identically)."""
        if state["num_networks"] != self.num_networks:
            raise ValueError(
                f"state was calibrated for {state['num_networks']} networks, this sampler draws "
                f"{self.num_networks}; build the sampler with num_networks={state['num_networks']}"
            )
        if state["diversity"] is None:
            self.table, self.weights, self.calibration_error, self._rows = None, None, 0.0, []
            return
        self.table = DiversityTable(
            ops=tuple(tuple(tuple(as_gene(op) for op in ops) for ops in _per_block(stage, len(mats)))
                      for stage, mats in zip(state["ops"], state["diversity"])),
            matrices=tuple(tuple(d.to(torch.float64).clone() for d in ms) for ms in state["diversity"]),
        )
        self.weights = [[w.tolist() for w in ws] for ws in state["weights"]]
        self.calibration_error = float(state["calibration_error"])
        self._rows = _as_rows(self.table)


def _as_rows(table: DiversityTable) -> list[list[list[list[float]]]]:
    return [[d.tolist() for d in ms] for ms in table.matrices]


def _per_block(stage: list, blocks: int) -> list:
    """A stage's saved operators per block; states saved before block families held one list per stage."""
    if stage and stage[0] and not isinstance(stage[0][0], (list, tuple)):
        return [stage] * blocks
    return stage


def mean_pairwise_diversity(archs: Sequence[Arch], table: DiversityTable) -> float:
    """Mean over blocks active in two or more archs of the mean diversity D[t_i, t_j] over their pairs."""
    per_block = []
    for s, blocks in enumerate(table.matrices):
        for b, d in enumerate(blocks):
            ops = [table.index(s, b, a.blocks[s][b]) for a in archs if a.depths[s] > b]
            pairs = [d[ops[i], ops[j]].item() for i in range(len(ops)) for j in range(i + 1, len(ops))]
            if pairs:
                per_block.append(sum(pairs) / len(pairs))
    return sum(per_block) / len(per_block) if per_block else 0.0
