"""Knowledge-distillation maths: KL-family and alpha-divergences, and ensemble teachers.

Every divergence takes logits of shape (batch, classes), treats the teacher as a constant, computes in at
least float32 (also under autocast) and by default returns the mean over the batch.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Literal, overload

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "NoFiniteMinimiserError",
    "Reduction",
    "adaptive_alpha_divergence",
    "alpha_divergence",
    "ensemble_teacher",
    "get_divergence",
    "kl_divergence",
    "reverse_kl_divergence",
    "soft_cross_entropy",
    "symmetric_kl_divergence",
]

Reduction = Literal["mean", "none"]
Divergence = Callable[[Tensor, Tensor], Tensor]

# Terms q_i (p_i/q_i)^alpha are saturated at exp(_LOG_CAP): such a divergence is astronomically large
# anyway, and without the cap float32 overflows to inf (e.g. alpha = -1 with a teacher probability of 0).
_LOG_CAP = 50.0


def _working_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "expected student and teacher logits of the same shape (batch, classes), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def _log_probs(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Return (log q, log p): student and (detached) teacher log-probabilities at this temperature."""
    _check_pair(student_logits, teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    dtype = torch.promote_types(_working_dtype(student_logits), _working_dtype(teacher_logits))
    student, teacher = student_logits.to(dtype), teacher_logits.detach().to(dtype)
    if temperature != 1.0:
        student, teacher = student / temperature, teacher / temperature
    return torch.log_softmax(student, dim=1), torch.log_softmax(teacher, dim=1)


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _no_autocast(x: Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def kl_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """T^2 * KL(p || q), p = teacher and q = student probabilities softened by the temperature T."""
    with _no_autocast(student_logits):
        log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
        per_sample = (log_p.exp() * (log_p - log_q)).sum(1).clamp_min(0)
        return _reduce(per_sample * temperature**2, reduction)


def reverse_kl_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """T^2 * KL(q || p), q = student and p = teacher probabilities softened by the temperature T."""
    with _no_autocast(student_logits):
        log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
        per_sample = (log_q.exp() * (log_q - log_p)).sum(1).clamp_min(0)
        return _reduce(per_sample * temperature**2, reduction)


def symmetric_kl_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """T^2 * (KL(p || q) + KL(q || p)) for teacher p and student q softened by the temperature T."""
    with _no_autocast(student_logits):
        log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
        per_sample = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(1).clamp_min(0)
        return _reduce(per_sample * temperature**2, reduction)


def soft_cross_entropy(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """T^2 * (-sum_i p_i log q_i), the cross-entropy against soft teacher labels (AttentiveNAS/BigNAS KD)."""
    with _no_autocast(student_logits):
        log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
        per_sample = -(log_p.exp() * log_q).sum(1)
        return _reduce(per_sample * temperature**2, reduction)


def _base_times_expm1(log_base: Tensor, base: Tensor, y: Tensor) -> Tensor:
    """Elementwise base * (exp(y) - 1), base = exp(log_base): accurate for small y, log base + y capped."""
    y = torch.minimum(y, _LOG_CAP - log_base)
    return torch.where(y > 1.0, torch.exp(log_base + y) - base, base * torch.expm1(y.clamp(max=1.0)))


def _alpha_forward(
    log_q: Tensor, log_p: Tensor, alpha: float, clip: float | None, with_grad: bool, official: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Per-sample D_alpha(p || q) and, if asked, the gradient v to pass back to log q.

    `official` reproduces AlphaNet's released loss_ops.py instead of the paper's text: the KL side
    (alpha = 1) is never clipped, and on the other sides the value is computed from the clipped
    importance weights as well (the value the code compares to choose a side).
    """
    if official:
        return _official_alpha_forward(log_q, log_p, alpha, clip, with_grad)
    # D = (sum_i q_i (w_i - 1)) / (alpha (alpha - 1)) with w = (p/q)^alpha. AlphaNet's Eq. 5 gradient with
    # respect to the logits is -(1/alpha) (q w~ - q sum_j q_j w~_j), w~ = min(w, clip); it is the
    # log-softmax pull-back (v - q sum(v)) of v = -(1/alpha) q (w~ - 1), whose -1 keeps expm1 accuracy.
    log_ratio = log_p - log_q
    q = log_q.exp()
    grad = None
    if alpha == 0.0:  # KL(q || p), whose gradient the clip does not touch
        q_log_ratio = q * log_ratio
        value = -q_log_ratio.sum(1)
        if with_grad:
            grad = -q_log_ratio
    elif alpha == 1.0:  # KL(p || q); here q (w - 1) = p - q exactly
        p = log_p.exp()
        value = (p * log_ratio).sum(1)
        if with_grad:
            grad = q - p if clip is None else torch.where(log_ratio > math.log(clip), q * (1.0 - clip), q - p)
    else:
        exponent = alpha * log_ratio
        q_term = _base_times_expm1(log_q, q, exponent)
        if alpha >= 0.5:
            # sum_i q_i (w_i - 1) = sum_i p_i ((p_i/q_i)^(alpha-1) - 1): expm1 of a small exponent near 1
            total = _base_times_expm1(log_p, log_p.exp(), (alpha - 1.0) * log_ratio).sum(1)
        else:
            total = q_term.sum(1)
        value = total / (alpha * (alpha - 1.0))
        if with_grad:
            if clip is not None:
                q_term = torch.where(exponent > math.log(clip), q * (clip - 1.0), q_term)
            grad = q_term / -alpha
    return value.clamp_min(0), grad


def _official_alpha_forward(
    log_q: Tensor, log_p: Tensor, alpha: float, clip: float | None, with_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """AlphaNet's released f_divergence: clipped weights in value and gradient, the KL side unclipped."""
    if alpha == 1.0 or clip is None:
        return _alpha_forward(log_q, log_p, alpha, None if alpha == 1.0 else clip, with_grad)
    log_ratio = log_p - log_q
    q = log_q.exp()
    if alpha == 0.0:  # the code clamps the ratio itself: f = -log min(p/q, clip)
        clipped_log_ratio = log_ratio.clamp(max=math.log(clip))
        q_log_ratio = q * clipped_log_ratio
        return (-q_log_ratio.sum(1)), (-q_log_ratio if with_grad else None)
    exponent = (alpha * log_ratio).clamp(max=math.log(clip))  # log of the clipped weight min(w, clip)
    q_term = _base_times_expm1(log_q, q, exponent)  # q (w~ - 1)
    value = q_term.sum(1) / (alpha * (alpha - 1.0))
    return value, (q_term / -alpha if with_grad else None)


class _AlphaDivergence(torch.autograd.Function):
    """Per-sample D_alpha(p || q) from log-probabilities, with the (optionally clipped) Eq. 5 gradient."""

    @staticmethod
    def forward(ctx, log_q: Tensor, log_p: Tensor, alpha: float, clip: float | None, official: bool = False) -> Tensor:
        value, grad = _alpha_forward(log_q, log_p, alpha, clip, with_grad=ctx.needs_input_grad[0], official=official)
        if grad is not None:
            ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None, None, None]:
        (grad_log_q,) = ctx.saved_tensors
        return grad_log_q * grad_output[:, None], None, None, None, None


def _checked_alpha(alpha: float, clip: float | None) -> float:
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    # within 1e-12 of a limit the limit is exact to far below float precision, and 1/alpha would underflow
    for limit in (0.0, 1.0):
        if abs(alpha - limit) < 1e-12:
            return limit
    return float(alpha)


def alpha_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float,
    clip: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """D_alpha(p || q) (AlphaNet Eq. 3); with clip=beta its gradient is Eq. 5 (ratio weights clipped)."""
    alpha = _checked_alpha(alpha, clip)
    with _no_autocast(student_logits):
        log_q, log_p = _log_probs(student_logits, teacher_logits, 1.0)
        return _reduce(_AlphaDivergence.apply(log_q, log_p, alpha, clip), reduction)


@overload
def adaptive_alpha_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha_min: float = ...,
    alpha_max: float = ...,
    clip: float | None = ...,
    reduction: Reduction = ...,
    return_choice: Literal[False] = ...,
    official: bool = ...,
) -> Tensor: ...


@overload
def adaptive_alpha_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha_min: float = ...,
    alpha_max: float = ...,
    clip: float | None = ...,
    reduction: Reduction = ...,
    *,
    return_choice: Literal[True],
    official: bool = ...,
) -> tuple[Tensor, Tensor]: ...


def adaptive_alpha_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha_min: float = -1.0,
    alpha_max: float = 1.0,
    clip: float | None = 5.0,
    reduction: Reduction = "mean",
    return_choice: bool = False,
    official: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per sample the larger of D_alpha_min and D_alpha_max (AlphaNet Eq. 4); optionally which side won.

    By default (AlphaNet's text, Eq. 5) both sides' gradients use importance weights clipped at `clip`
    and the side is chosen by the true divergences. `official=True` follows AlphaNet's released
    loss_ops.py: the KL side (alpha = 1) is unclipped, the other is clipped in value and gradient, and
    the side is chosen by those clipped values (which this then returns).
    """
    alpha_min, alpha_max = _checked_alpha(alpha_min, clip), _checked_alpha(alpha_max, clip)
    with _no_autocast(student_logits):
        log_q, log_p = _log_probs(student_logits, teacher_logits, 1.0)
        low = _AlphaDivergence.apply(log_q, log_p, alpha_min, clip, bool(official))
        high = _AlphaDivergence.apply(log_q, log_p, alpha_max, clip, bool(official))
        max_side_won = high >= low
        loss = _reduce(torch.where(max_side_won, high, low), reduction)
    return (loss, max_side_won) if return_choice else loss


DIVERGENCES: MappingProxyType[str, Callable[..., Tensor]] = MappingProxyType(
    {
        "kl": kl_divergence,
        "reverse_kl": reverse_kl_divergence,
        "symmetric_kl": symmetric_kl_divergence,
        "soft_ce": soft_cross_entropy,
        "alpha": alpha_divergence,
        "adaptive_alpha": adaptive_alpha_divergence,
    }
)


def get_divergence(name: str, **kwargs: object) -> Divergence:
    """The divergence registered under `name`, with `kwargs` bound: a function (student, teacher) -> loss."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {sorted(DIVERGENCES)}")
    fn = DIVERGENCES[name]
    if "return_choice" in kwargs:
        raise ValueError("return_choice cannot be bound through get_divergence; call the function directly")
    try:
        inspect.signature(fn).bind(None, None, **kwargs)
    except TypeError as err:
        raise ValueError(f"invalid arguments for divergence {name!r}: {err}") from None
    return functools.partial(fn, **kwargs)


def _stack_members(logits_list: Sequence[Tensor] | Tensor) -> Tensor:
    if not isinstance(logits_list, Tensor) and len(logits_list) == 0:
        raise ValueError("ensemble_teacher needs at least one member's logits")
    members = logits_list if isinstance(logits_list, Tensor) else torch.stack(list(logits_list))
    if members.dim() != 3 or 0 in members.shape:
        raise ValueError(
            f"expected m >= 1 non-empty logits (batch, classes), got shape {tuple(members.shape)}"
        )
    return members.detach().to(_working_dtype(members))


def _kkt_step(grad: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """The Newton step d minimising grad.d + d.hess.d/2 subject to sum(d) = 0."""
    m = grad.size
    kkt = np.ones((m + 1, m + 1))
    kkt[:m, :m] = hess
    kkt[m, m] = 0.0
    return np.linalg.solve(kkt, np.append(-grad, 0.0))[:m]


def _box_qp_step(grad: np.ndarray, hess: np.ndarray, w: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Minimise grad.d + d.hess.d/2 s.t. sum(d) = 0 and lower <= w + d <= upper (primal active set)."""
    if lower < w.min() and w.max() < upper:  # the usual case: no bound is active and the step fits
        d = _kkt_step(grad, hess)
        if lower <= (w + d).min() and (w + d).max() <= upper:
            return d
    m = grad.size
    lo, hi = lower - w, upper - w
    # state: -1 held at the lower bound, +1 held at the upper bound, 0 free
    state = np.where(lo >= 0, -1, np.where(hi <= 0, 1, 0))
    d = np.where(state < 0, lo, np.where(state > 0, hi, 0.0))
    tol = 1e-12 * (1.0 + np.abs(grad).max())
    for _ in range(3 * m + 5):
        held = state != 0
        free = np.flatnonzero(~held)
        k = free.size
        if k == 0:
            break
        kkt = np.ones((k + 1, k + 1))
        kkt[:k, :k] = hess[np.ix_(free, free)]
        kkt[k, k] = 0.0
        rhs = np.append(-(grad[free] + hess[free][:, held] @ d[held]), -d[held].sum())
        solution = np.linalg.solve(kkt, rhs)
        move = solution[:k] - d[free]
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(move < 0, (lo[free] - d[free]) / move, (hi[free] - d[free]) / move)
        room = np.where(move == 0, np.inf, room)
        blocking = int(np.argmin(room))
        if room[blocking] < 1.0:
            d[free] += max(room[blocking], 0.0) * move
            j = free[blocking]
            state[j] = -1 if move[blocking] < 0 else 1
            d[j] = lo[j] if state[j] < 0 else hi[j]
            continue
        d[free] = solution[:k]
        # multipliers of the held bounds: residual + nu must be >= 0 at a lower, <= 0 at an upper bound
        multiplier = (grad + hess @ d + solution[k]) * -state
        violated = held & (multiplier < -tol)
        if not violated.any():
            break
        state[np.argmin(np.where(violated, multiplier, np.inf))] = 0
    return d


class NoFiniteMinimiserError(ValueError):
    """The batch cross-entropy of the ensemble keeps falling as its weights grow: no finite optimum."""


def _optimal_weights(
    members: np.ndarray, labels: np.ndarray, lower: float, upper: float, max_iter: int
) -> tuple[np.ndarray, bool]:
    """Weights w (sum 1, lower <= w <= upper) minimising the batch cross-entropy of sum_i w_i z_i.

    Returns the weights and whether Newton's method converged within `max_iter` steps.

    `members` is float64 of shape (m, classes, batch): class-major, so that reductions over classes run as
    vectorised operations across the batch.
    """
    # Newton's method with the exact Hessian and backtracking, in numpy: at these sizes per-call overhead
    # dominates the solve, and numpy's is a fraction of torch's.
    m, c, n = members.shape
    z = members.reshape(m, c * n)
    samples = np.arange(n)
    label_mean = members[:, labels, samples].mean(1)
    weighted = np.empty_like(z)

    def evaluate(w: np.ndarray) -> tuple[float, np.ndarray]:
        logits = (w @ z).reshape(c, n)
        shift = logits.max(0)
        probs = np.exp(logits - shift)
        total = probs.sum(0)
        probs /= total
        # CE_n = log(total) + shift - label logit; log1p keeps relative accuracy when CE_n -> 0, which it
        # does when the weights separate the batch
        return float((np.log1p(total - 1.0) + (shift - logits[labels, samples])).mean()), probs

    w = np.full(m, 1.0 / m)
    f, probs = evaluate(w)
    converged = False
    for _ in range(max_iter):
        np.multiply(z, probs.reshape(-1), out=weighted)
        moments = weighted.reshape(m, c, n).sum(1)
        grad = moments.mean(1) - label_mean
        # Hessian of the mean CE in w: the mean over samples of Z_n (diag(s_n) - s_n s_n^T) Z_n^T
        hess = (weighted @ z.T - moments @ moments.T) / n
        # a tiny ridge keeps the Newton system solvable when members coincide (a flat direction)
        hess.flat[:: m + 1] += 1e-10 * hess.trace() / m + 1e-14
        step_dir = _box_qp_step(grad, hess, w, lower, upper)
        decrement = -float(grad @ step_dir)
        if decrement <= 1e-12 * f:
            converged = True
            break
        for halving in range(40):
            step = 0.5**halving
            candidate = np.clip(w + step * step_dir, lower, upper)
            f_new, probs_new = evaluate(candidate)
            if f_new <= f - 1e-4 * step * decrement:
                break
        else:
            converged = True  # no decrease beyond rounding: w is optimal to working precision
            break
        w, f, probs = candidate, f_new, probs_new
        # f - f* is about decrement / 2 before a full Newton step and far smaller after it: no need to
        # pay for another Hessian just to confirm convergence
        if step == 1.0 and decrement <= 1e-7 * f:
            converged = True
            break
    return w, converged


def _solve_weights(
    members: Tensor, labels: Tensor | None, nonnegative: bool, bound: float | None, max_iter: int
) -> Tensor:
    """Validate the inputs and return the CE-optimal weights (float64, CPU)."""
    m, n, c = members.shape
    if labels is None or labels.shape != (n,) or labels.is_floating_point():
        raise ValueError(f"weights='optimal' needs integer labels of shape ({n},)")
    if not 0 <= int(labels.min()) <= int(labels.max()) < c:
        raise ValueError(f"labels must lie in [0, {c}), got {int(labels.min())}..{int(labels.max())}")
    if bound is not None and not bound >= 1.0:
        raise ValueError(f"bound must be >= 1 or None, got {bound}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    lower, upper = (0.0, math.inf) if nonnegative else (-(bound or math.inf), bound or math.inf)
    if m == 1:
        return torch.ones(1, dtype=torch.float64)
    class_major = np.ascontiguousarray(members.cpu().numpy().transpose(0, 2, 1), dtype=np.float64)
    solved, converged = _optimal_weights(class_major, labels.cpu().numpy(), lower, upper, max_iter)
    # Newton's method with the exact Hessian converges in a handful of steps wherever a minimiser exists;
    # running out of steps with unbounded weights means the cross-entropy falls forever along some
    # weighting that separates the batch (a box or non-negativity always has a minimiser).
    if not converged and not nonnegative and bound is None:
        raise NoFiniteMinimiserError(
            f"the ensemble cross-entropy of this batch has no finite minimiser: a weighting of the {m} members "
            f"separates the batch, so the weights grow without limit (max |w| {np.abs(solved).max():.3g} after "
            f"{max_iter} Newton steps); pass bound=B to cap them, nonnegative=True, or weights='mean'"
        )
    return torch.from_numpy(solved)


def ensemble_teacher(
    logits_list: Sequence[Tensor] | Tensor,
    labels: Tensor | None = None,
    weights: Literal["optimal", "mean"] = "optimal",
    *,
    nonnegative: bool = False,
    bound: float | None = None,
    max_iter: int = 50,
) -> tuple[Tensor, Tensor]:
    """Detached teacher logits sum_i w_i z_i and weights w (sum 1): CE-optimal for `labels`, or the mean.

    "optimal" is EnNAS Eq. 2: unconstrained apart from sum(w) = 1 by default. `nonnegative` keeps w >= 0;
    `bound` caps |w_i| (a box the paper does not have: it changes the answer whenever the optimum lies
    outside it). When a weighting separates the batch the unconstrained cross-entropy has no finite
    minimiser and NoFiniteMinimiserError says so; a bound or non-negativity then gives finite weights.
    """
    # The weights come back as float64 on the CPU: sum(w) = 1 holds to 1e-15 even for large weights.
    members = _stack_members(logits_list)
    with _no_autocast(members):
        if weights == "mean":
            w = torch.full((members.shape[0],), 1.0 / members.shape[0], dtype=torch.float64)
        elif weights == "optimal":
            w = _solve_weights(members, labels, nonnegative, bound, max_iter)
        else:
            raise ValueError(f"weights must be 'optimal' or 'mean', got {weights!r}")
        teacher = torch.tensordot(w.to(device=members.device, dtype=members.dtype), members, dims=1)
        return teacher, w
