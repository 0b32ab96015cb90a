"""Tests for supernet.distill: closed forms, limits, invariants, stability, and the ensemble solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from torch import Tensor

from supernet.distill import (
    DIVERGENCES,
    NoFiniteMinimiserError,
    adaptive_alpha_divergence,
    alpha_divergence,
    ensemble_teacher,
    get_divergence,
    kl_divergence,
    reverse_kl_divergence,
    soft_cross_entropy,
    symmetric_kl_divergence,
)
from supernet.training.teachers import EnsembleTeacher

TEMPERATURE_DIVERGENCES = {
    "kl": kl_divergence,
    "reverse_kl": reverse_kl_divergence,
    "symmetric_kl": symmetric_kl_divergence,
    "soft_ce": soft_cross_entropy,
}


def _logits(seed: int, batch: int = 8, classes: int = 10, scale: float = 2.0, dtype=torch.float64) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, classes, generator=generator, dtype=torch.float64)).to(dtype)


def _pair(seed: int, **kwargs) -> tuple[Tensor, Tensor]:
    return _logits(2 * seed, **kwargs), _logits(2 * seed + 1, **kwargs)


def _reference_divergences(student: Tensor, teacher: Tensor, temperature: float) -> dict[str, Tensor]:
    """Per-sample closed forms from plain softmax probabilities (float64)."""
    p = torch.softmax(teacher / temperature, 1)
    q = torch.softmax(student / temperature, 1)
    scale = temperature**2
    return {
        "kl": scale * (p * (p / q).log()).sum(1),
        "reverse_kl": scale * (q * (q / p).log()).sum(1),
        "symmetric_kl": scale * ((p - q) * (p / q).log()).sum(1),
        "soft_ce": -scale * (p * q.log()).sum(1),
    }


def _reference_alpha(student: Tensor, teacher: Tensor, alpha: float) -> Tensor:
    """Per-sample AlphaNet Eq. 3 from plain probabilities (float64, differentiable)."""
    p, q = torch.softmax(teacher, 1), torch.softmax(student, 1)
    return ((q * (p / q) ** alpha).sum(1) - 1) / (alpha * (alpha - 1))


def _student_grad(fn, student: Tensor, teacher: Tensor, **kwargs) -> Tensor:
    student = student.clone().requires_grad_(True)
    fn(student, teacher, **kwargs).backward()
    return student.grad


# --- KL family ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_family_matches_closed_forms(temperature: float) -> None:
    student, teacher = _pair(0)
    reference = _reference_divergences(student, teacher, temperature)
    for name, fn in TEMPERATURE_DIVERGENCES.items():
        per_sample = fn(student, teacher, temperature, reduction="none")
        torch.testing.assert_close(per_sample, reference[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fn(student, teacher, temperature), reference[name].mean())


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kl_gradient_is_temperature_times_q_minus_p(temperature: float) -> None:
    student, teacher = _pair(1)
    p, q = torch.softmax(teacher / temperature, 1), torch.softmax(student / temperature, 1)
    expected = temperature * (q - p) / student.shape[0]
    torch.testing.assert_close(
        _student_grad(kl_divergence, student, teacher, temperature=temperature), expected
    )
    # soft cross-entropy differs from KL by the teacher entropy only, so the gradients agree
    torch.testing.assert_close(
        _student_grad(soft_cross_entropy, student, teacher, temperature=temperature), expected
    )


def test_high_temperature_limit_is_centred_logit_matching() -> None:
    """Hinton et al.: T^2 KL -> sum_i (d_i - mean d)^2 / (2C) with d = z - t as T -> infinity."""
    student, teacher = _pair(2, scale=1.0)
    diff = student - teacher
    limit = ((diff - diff.mean(1, keepdim=True)) ** 2).sum(1) / (2 * student.shape[1])
    value = kl_divergence(student, teacher, temperature=1e3, reduction="none")
    torch.testing.assert_close(value, limit, rtol=1e-2, atol=0)


def test_soft_cross_entropy_is_kl_plus_teacher_entropy() -> None:
    student, teacher = _pair(3)
    p = torch.softmax(teacher / 2.0, 1)
    entropy = -(p * p.log()).sum(1).mean()
    expected = kl_divergence(student, teacher, 2.0) + 4.0 * entropy
    torch.testing.assert_close(soft_cross_entropy(student, teacher, 2.0), expected)


# --- alpha-divergence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [-2.0, -1.0, -0.5, 0.3, 0.5, 0.7, 1.5, 2.0, 3.0])
def test_alpha_value_matches_eq3(alpha: float) -> None:
    student, teacher = _pair(4)
    value = alpha_divergence(student, teacher, alpha, reduction="none")
    torch.testing.assert_close(value, _reference_alpha(student, teacher, alpha), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alpha_limits_are_kl_and_reverse_kl_and_continuous(dtype: torch.dtype) -> None:
    student, teacher = _pair(5, dtype=dtype)
    forward_kl = kl_divergence(student, teacher, reduction="none")
    backward_kl = reverse_kl_divergence(student, teacher, reduction="none")
    torch.testing.assert_close(alpha_divergence(student, teacher, 1.0, reduction="none"), forward_kl)
    torch.testing.assert_close(alpha_divergence(student, teacher, 0.0, reduction="none"), backward_kl)
    for eps in (1e-4, -1e-4, 1e-6, -1e-6):
        near_one = alpha_divergence(student, teacher, 1.0 + eps, reduction="none")
        near_zero = alpha_divergence(student, teacher, eps, reduction="none")
        torch.testing.assert_close(near_one, forward_kl, rtol=2e-3, atol=1e-6)
        torch.testing.assert_close(near_zero, backward_kl, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("alpha", [-1.0, -0.5, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("clip", [None, 1.5, 5.0])
def test_clipped_gradient_matches_eq5_closed_form(alpha: float, clip: float | None) -> None:
    student, teacher = _pair(6, batch=16, scale=3.0)
    p, q = torch.softmax(teacher, 1), torch.softmax(student, 1)
    ratio_power = (p / q) ** alpha
    w = ratio_power if clip is None else ratio_power.clamp(max=clip)
    if clip is not None:
        assert (ratio_power > clip).any(), "the test problem should exercise the clip"
    expected = -(q * w - q * (q * w).sum(1, keepdim=True)) / alpha / student.shape[0]
    grad = _student_grad(alpha_divergence, student, teacher, alpha=alpha, clip=clip)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [-1.0, 0.5, 2.0, 1.0 + 1e-3])
def test_unclipped_gradient_is_exact_gradient_of_value(alpha: float) -> None:
    student, teacher = _pair(7)
    autograd_student = student.clone().requires_grad_(True)
    _reference_alpha(autograd_student, teacher, alpha).mean().backward()
    grad = _student_grad(alpha_divergence, student, teacher, alpha=alpha)
    torch.testing.assert_close(grad, autograd_student.grad, rtol=1e-7, atol=1e-12)


def test_alpha_zero_is_reverse_kl_and_ignores_clip() -> None:
    student, teacher = _pair(8, scale=3.0)
    expected = _student_grad(reverse_kl_divergence, student, teacher)
    for clip in (None, 1.1):
        torch.testing.assert_close(
            _student_grad(alpha_divergence, student, teacher, alpha=0.0, clip=clip), expected
        )


def test_clip_changes_gradient_not_value() -> None:
    student, teacher = _pair(9, scale=3.0)
    torch.testing.assert_close(
        alpha_divergence(student, teacher, 1.0, clip=1.5), alpha_divergence(student, teacher, 1.0)
    )
    clipped = _student_grad(alpha_divergence, student, teacher, alpha=1.0, clip=1.5)
    assert not torch.allclose(clipped, _student_grad(alpha_divergence, student, teacher, alpha=1.0))


def test_adaptive_picks_larger_side_per_sample() -> None:
    student, teacher = _pair(10, batch=64, scale=3.0)
    low = alpha_divergence(student, teacher, -1.0, clip=5.0, reduction="none")
    high = alpha_divergence(student, teacher, 1.0, clip=5.0, reduction="none")
    loss, max_side_won = adaptive_alpha_divergence(student, teacher, return_choice=True)
    assert max_side_won.dtype == torch.bool and 0 < int(max_side_won.sum()) < 64, "need both sides to win"
    torch.testing.assert_close(max_side_won, high >= low)
    torch.testing.assert_close(loss, torch.maximum(low, high).mean())
    # the gradient of each sample is the (clipped) gradient of the side that won
    grad_low = _student_grad(alpha_divergence, student, teacher, alpha=-1.0, clip=5.0)
    grad_high = _student_grad(alpha_divergence, student, teacher, alpha=1.0, clip=5.0)
    expected = torch.where(max_side_won[:, None], grad_high, grad_low)
    torch.testing.assert_close(_student_grad(adaptive_alpha_divergence, student, teacher), expected)


# --- invariants and stability -------------------------------------------------------------------------


def _all_divergences() -> list:
    return [
        get_divergence("kl", temperature=2.0),
        get_divergence("reverse_kl"),
        get_divergence("symmetric_kl"),
        get_divergence("alpha", alpha=-1.0),
        get_divergence("alpha", alpha=0.0),
        get_divergence("alpha", alpha=0.5, clip=2.0),
        get_divergence("alpha", alpha=1.0, clip=5.0),
        get_divergence("alpha", alpha=2.5),
        get_divergence("adaptive_alpha"),
    ]


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 20.0),
    alpha=st.floats(-3.0, 4.0),
    clip=st.one_of(st.none(), st.floats(1.01, 10.0)),
)
def test_divergences_are_nonnegative(seed: int, scale: float, alpha: float, clip: float | None) -> None:
    student, teacher = _pair(seed, batch=4, classes=6, scale=scale, dtype=torch.float32)
    for fn in [*_all_divergences(), get_divergence("alpha", alpha=alpha, clip=clip)]:
        value = fn(student, teacher, reduction="none")
        assert torch.isfinite(value).all() and (value >= 0).all()
        if scale >= 0.5:  # clearly different distributions give a strictly positive divergence
            assert (value > 0).all()


@settings(max_examples=50, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.0, 50.0), alpha=st.floats(-3.0, 4.0))
def test_divergences_vanish_at_equal_distributions(seed: int, scale: float, alpha: float) -> None:
    logits = _logits(seed, batch=4, classes=6, scale=scale, dtype=torch.float32)
    # a per-sample shift leaves the softmax unchanged, so p == q up to rounding
    shifted = logits + 3.0
    for fn in [*_all_divergences(), get_divergence("alpha", alpha=alpha)]:
        assert fn(logits, logits).item() == 0.0
        assert fn(logits, shifted).item() < 1e-5
        grad = _student_grad(fn, logits, logits)
        assert grad.abs().max() < 1e-6


def test_entropy_is_soft_cross_entropy_at_equal_distributions() -> None:
    logits = _logits(11)
    p = torch.softmax(logits, 1)
    torch.testing.assert_close(soft_cross_entropy(logits, logits), -(p * p.log()).sum(1).mean())


def _extreme_pair(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(12)
    batch, classes = 16, 100
    student = 80.0 * torch.sign(torch.randn(batch, classes, generator=generator))
    labels = torch.randint(0, classes, (batch,), generator=generator)
    teacher = torch.full((batch, classes), -80.0)
    teacher[torch.arange(batch), labels] = 80.0  # one-hot: the other teacher probabilities underflow to 0
    teacher[:4] = student[:4]  # and some samples where the student agrees exactly
    return student.to(dtype), teacher.to(dtype)


@pytest.mark.parametrize("autocast", [False, True])
def test_extreme_logits_give_finite_values_and_gradients(autocast: bool) -> None:
    dtype = torch.bfloat16 if autocast else torch.float32
    student, teacher = _extreme_pair(dtype)
    fns = [*_all_divergences(), get_divergence("alpha", alpha=3.0, clip=5.0)]
    fns += [get_divergence("alpha", alpha=a) for a in (-2.0, 1e-5, 1.0 - 1e-5)]
    for fn in [*fns, get_divergence("soft_ce")]:
        leaf = student.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = fn(leaf, teacher, reduction="none")
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all() and (value >= 0).all()
        assert (value[:4] == 0).all() or fn.func is soft_cross_entropy  # not a divergence: entropy remains
        value.mean().backward()
        assert torch.isfinite(leaf.grad.float()).all()


def test_teacher_receives_no_gradient() -> None:
    student, teacher = _pair(13, dtype=torch.float32)
    for name in DIVERGENCES:
        kwargs = {"alpha": 0.5, "clip": 3.0} if name == "alpha" else {}
        leaf_student, leaf_teacher = (
            student.clone().requires_grad_(True),
            teacher.clone().requires_grad_(True),
        )
        get_divergence(name, **kwargs)(leaf_student, leaf_teacher).backward()
        assert leaf_teacher.grad is None and leaf_student.grad is not None


def test_reduction_none_returns_per_sample_values() -> None:
    student, teacher = _pair(14)
    for fn in _all_divergences():
        per_sample = fn(student, teacher, reduction="none")
        assert per_sample.shape == (8,)
        torch.testing.assert_close(per_sample.mean(), fn(student, teacher))


def test_registry_and_validation() -> None:
    assert set(DIVERGENCES) == {"kl", "reverse_kl", "symmetric_kl", "soft_ce", "alpha", "adaptive_alpha"}
    student, teacher = _pair(15)
    torch.testing.assert_close(
        get_divergence("alpha", alpha=0.5, clip=2.0)(student, teacher),
        alpha_divergence(student, teacher, 0.5, clip=2.0),
    )
    with pytest.raises(ValueError, match="unknown divergence"):
        get_divergence("js")
    with pytest.raises(ValueError, match="invalid arguments"):
        get_divergence("kl", alpha=0.5)
    with pytest.raises(ValueError, match="invalid arguments"):
        get_divergence("alpha")
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(student, teacher[:, :5])
    with pytest.raises(ValueError, match="temperature"):
        kl_divergence(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="clip"):
        alpha_divergence(student, teacher, 0.5, clip=0.0)
    with pytest.raises(ValueError, match="reduction"):
        kl_divergence(student, teacher, reduction="sum")


# --- ensemble teacher ---------------------------------------------------------------------------------


def _ensemble_problem(seed: int, m: int, batch: int = 96, classes: int = 10) -> tuple[Tensor, Tensor]:
    """Members of decreasing quality, the last ones anti-informative (negative optimal weights)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    quality = torch.linspace(2.5, -1.0, m, dtype=torch.float64)
    noise = 1.5 * torch.randn(m, batch, classes, generator=generator, dtype=torch.float64)
    members = quality[:, None, None] * F.one_hot(labels, classes) + noise
    return members.float(), labels


def _ce_and_grad(w: np.ndarray, members: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    logits = np.einsum("m,mnc->nc", w, members)
    logits = logits - logits.max(1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    rows = np.arange(len(labels))
    value = np.mean(np.log(np.exp(logits).sum(1)) - logits[rows, labels])
    probs[rows, labels] -= 1.0
    return float(value), np.einsum("nc,mnc->m", probs, members) / len(labels)


@pytest.mark.parametrize("seed, m", [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 8)])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_optimal_weights_match_scipy(seed: int, m: int, nonnegative: bool) -> None:
    members, labels = _ensemble_problem(seed, m)
    teacher, w = ensemble_teacher(list(members), labels, nonnegative=nonnegative, bound=None)
    z, y = members.double().numpy(), labels.numpy()
    reference = minimize(
        _ce_and_grad,
        np.full(m, 1.0 / m),
        args=(z, y),
        jac=True,
        method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1.0, "jac": lambda v: np.ones_like(v)}],
        bounds=[(0.0, None)] * m if nonnegative else None,
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    ours = _ce_and_grad(w.double().numpy(), z, y)[0]
    assert ours == pytest.approx(reference.fun, rel=1e-6)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(teacher, torch.einsum("m,mnc->nc", w.float(), members))
    if nonnegative:
        assert (w >= 0).all()
        if m >= 3:
            assert (w == 0).any(), "the test problem should make the non-negativity constraint active"
    else:
        assert (w < 0).any() or m == 2


@pytest.mark.parametrize("nonnegative", [False, True])
def test_optimal_weights_satisfy_kkt(nonnegative: bool) -> None:
    members, labels = _ensemble_problem(20, 5, batch=256, classes=100)
    _, w = ensemble_teacher(members, labels, nonnegative=nonnegative, bound=None)
    grad = _ce_and_grad(w.double().numpy(), members.double().numpy(), labels.numpy())[1]
    free = w.numpy() > 0 if nonnegative else np.ones(5, dtype=bool)
    multiplier = grad[free].mean()
    np.testing.assert_allclose(grad[free], multiplier, atol=1e-5)
    assert (grad[~free] >= multiplier - 1e-5).all()


def test_mean_weights_and_single_member() -> None:
    members, labels = _ensemble_problem(21, 4)
    teacher, w = ensemble_teacher(members, weights="mean")
    torch.testing.assert_close(w, torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(teacher, members.mean(0))
    teacher, w = ensemble_teacher([members[0]], labels)
    torch.testing.assert_close(w, torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(teacher, members[0])


def test_identical_members_are_handled() -> None:
    members, labels = _ensemble_problem(22, 2)
    stacked = torch.stack([members[0], members[0], members[1]])
    _, w = ensemble_teacher(stacked, labels, nonnegative=True)
    assert torch.isfinite(w).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    _, w_pair = ensemble_teacher(members, labels, nonnegative=True)
    assert float(w[:2].sum()) == pytest.approx(float(w_pair[0]), abs=1e-4)


def test_bound_keeps_separable_batches_finite() -> None:
    """If some weighting separates the batch, CE has no minimiser: the bound keeps the weights finite."""
    members, labels = _ensemble_problem(23, 2)
    members[1] = members[0] - 3.0 * F.one_hot(labels, 10)  # members[0] - members[1] separates every sample
    _, w = ensemble_teacher(members, labels, bound=5.0)
    assert torch.isfinite(w).all() and float(w.abs().max()) == pytest.approx(5.0)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    # unbounded (the default, EnNAS Eq. 2) the solver says there is no finite minimiser
    with pytest.raises(NoFiniteMinimiserError, match="no finite minimiser: a weighting of the 2 members separates"):
        ensemble_teacher(members, labels)
    _, w = ensemble_teacher(members, labels, nonnegative=True)  # the simplex always has a minimiser
    assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-9)
    # the training teacher solves such a batch within its fallback box and counts it
    teacher = EnsembleTeacher()
    targets = teacher.before_step([0, 1], torch.zeros(1), labels, lambda i: members[i])  # type: ignore[list-item]
    assert teacher.separable_batches == 1 and float(teacher.last_weights.abs().max()) == pytest.approx(10.0)
    assert torch.isfinite(targets).all()


def test_no_box_by_default_and_a_box_changes_answers() -> None:
    """The ensemble weights are EnNAS's unconstrained optimum unless a bound is asked for."""
    changed = 0
    for seed in range(24):
        members, labels = _ensemble_problem(100 + seed, 4)
        members = members[:1] + 0.05 * members  # nearly equal members: the optimum extrapolates, large weights
        _, free = ensemble_teacher(members, labels)
        _, boxed = ensemble_teacher(members, labels, bound=2.0)
        z, y = members.double().numpy(), labels.numpy()
        ce_free, ce_boxed = _ce_and_grad(free.numpy(), z, y)[0], _ce_and_grad(boxed.numpy(), z, y)[0]
        assert ce_free <= ce_boxed + 1e-9
        changed += not torch.allclose(free, boxed, atol=1e-6)
    assert changed >= 1  # a box is not harmless: it moves some answers away from the optimum


def test_ensemble_teacher_is_detached_float32_under_autocast() -> None:
    members, labels = _ensemble_problem(24, 3)
    leaves = [member.to(torch.bfloat16).requires_grad_(True) for member in members]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        teacher, w = ensemble_teacher(leaves, labels)
    assert not teacher.requires_grad and teacher.dtype == torch.float32 and w.dtype == torch.float64
    assert torch.isfinite(teacher).all()
    with pytest.raises(ValueError, match="labels"):
        ensemble_teacher(leaves, None)
    with pytest.raises(ValueError, match="weights"):
        ensemble_teacher(leaves, labels, weights="median")  # type: ignore[arg-type]


def test_reference_cross_entropy_helper() -> None:
    """The reference CE helper agrees with torch's cross-entropy."""
    members, labels = _ensemble_problem(25, 3)
    w = np.array([0.5, 0.3, 0.2])
    value = _ce_and_grad(w, members.double().numpy(), labels.numpy())[0]
    logits = torch.einsum("m,mnc->nc", torch.from_numpy(w), members.double())
    assert math.isclose(value, float(F.cross_entropy(logits, labels)), rel_tol=1e-12)


def _released_adaptive_loss(student: torch.Tensor, teacher: torch.Tensor, alpha_min: float, alpha_max: float,
                            clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AlphaNet's released rule, written out from its description: per side a value and a surrogate whose
    gradient is the update; the side with the larger value wins; ratios clipped except on the KL side."""
    q = torch.softmax(student, 1).detach()
    p = torch.softmax(teacher, 1)
    log_q = torch.log_softmax(student, 1)
    values, surrogates = [], []
    for alpha in (alpha_min, alpha_max):
        ratio = p / q
        if alpha == 1.0:
            f, rho = ratio * ratio.log(), ratio
            base = 0.0
        else:
            w = ratio.pow(alpha).clamp(0, clip)
            f, base = w / alpha / (alpha - 1), 1 / alpha / (alpha - 1)
            rho = w / alpha + base
        values.append((q * (f - base)).sum(1))
        surrogates.append(-(q * rho * log_q).sum(1))
    high_wins = ~(values[0] > values[1])
    return torch.where(high_wins, surrogates[1], surrogates[0]), torch.where(high_wins, values[1], values[0]), high_wins


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_alpha_official_variant_matches_the_released_rule(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(32, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = 3 * torch.randn(32, 10, generator=gen, dtype=torch.float64)
    surrogate, value, high_wins = _released_adaptive_loss(student, teacher, -1.0, 1.0, 5.0)
    (expected,) = torch.autograd.grad(surrogate.mean(), student)
    loss, chosen = adaptive_alpha_divergence(student, teacher, -1.0, 1.0, 5.0, return_choice=True, official=True)
    (got,) = torch.autograd.grad(loss, student)
    assert torch.equal(chosen, high_wins)
    assert torch.allclose(loss, value.mean(), rtol=1e-10)
    assert torch.allclose(got, expected, rtol=1e-8, atol=1e-12)
    # the paper's reading (the default) differs: both sides clipped, the side chosen by the true values
    paper = adaptive_alpha_divergence(student, teacher, -1.0, 1.0, 5.0)
    (paper_grad,) = torch.autograd.grad(paper, student)
    assert not torch.allclose(paper_grad, got)
