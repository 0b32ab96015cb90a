"""Schedules: cosine lr with warm-up, DepS's delayed epsilon-shrinking, OFA's progressive phases."""

from __future__ import annotations

import itertools
import math

import pytest

from supernet import spaces
from supernet.config import load_config
from supernet.training.schedules import Schedule, cosine_lr, epsilon, linear_lr, step_lr
from training_helpers import CONFIGS


def test_cosine_lr_closed_form() -> None:
    assert cosine_lr(0, 100, 1.0, 10, 0.1, 0.0) == pytest.approx(0.1)
    assert cosine_lr(5, 100, 1.0, 10, 0.1, 0.0) == pytest.approx(0.55)
    assert cosine_lr(10, 100, 1.0, 10, 0.1, 0.0) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, 10, 0.1, 0.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, 10, 0.1, 0.2) == pytest.approx(0.2)
    assert cosine_lr(40, 100, 2.0, 0, 1.0, 0.0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.4)))


def test_lr_scales_with_global_batch() -> None:
    config = load_config(None, ["optim.lr=0.1", "optim.lr_reference_batch=256"])
    assert Schedule(config, spaces.get("fmnist"), 10, 512).peak_lr == pytest.approx(0.2)
    assert Schedule(config, spaces.get("fmnist"), 10, 64).peak_lr == pytest.approx(0.025)


def test_deps_full_model_only_then_epsilon_ramp() -> None:
    config = load_config(CONFIGS / "deps.yaml", ["train.epochs=10", "schedule.eps_ramp=0.2"])
    sched = Schedule(config, spaces.get("fmnist"), steps_per_epoch=10, global_batch=128)
    assert sched.total_steps == 100 and sched.shrink_start == 50 and sched.ramp_steps == 20
    for step in range(50):
        plan = sched.plan(step)
        assert (plan.shrinking, plan.distill, plan.phase) == (False, False, "fm_warmup")
    first = sched.plan(50)
    assert first.shrinking and first.distill and first.phase_start
    assert first.sub_scale == pytest.approx(1e-4)  # eps_start when shrinking starts
    assert sched.plan(60).sub_scale == pytest.approx(1e-4 + (1 - 1e-4) * 10 / 20)
    assert sched.plan(70).sub_scale == 1.0 and sched.plan(99).sub_scale == 1.0
    # the learning rate follows one cosine over the whole run; shrinking does not restart it
    assert sched.plan(50).lr == pytest.approx(cosine_lr(50, 100, sched.peak_lr, sched.warmup_steps, 0.01, 0.0))


def test_epsilon_function() -> None:
    assert epsilon(4, 5, 10, 1e-4) == 0.0
    assert epsilon(5, 5, 10, 1e-4) == pytest.approx(1e-4)
    assert epsilon(15, 5, 10, 1e-4) == 1.0
    assert epsilon(5, 5, 0, 1e-4) == 1.0


def test_shrink_from_start_trains_subnetworks_at_full_rate() -> None:
    sched = Schedule(load_config(CONFIGS / "bignas.yaml"), spaces.get("fmnist"), 10, 128)
    assert all(sched.plan(s).shrinking and sched.plan(s).sub_scale == 1.0 for s in range(sched.total_steps))


def test_ofa_phases_happen_in_order_with_growing_spaces() -> None:
    config = load_config(CONFIGS / "ofa.yaml")
    space = spaces.get("fmnist")
    sched = Schedule(config, space, steps_per_epoch=20, global_batch=128)
    seen = []
    for step in range(sched.total_steps):
        plan = sched.plan(step)
        if not seen or seen[-1][0] != plan.phase:
            assert plan.phase_start
            seen.append((plan.phase, plan))
    names = [name for name, _ in seen]
    assert names == ["full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2", "width"]
    sizes = [plan.space.size() for _, plan in seen]
    assert sizes == sorted(sizes) and sizes[-1] == space.size()
    full, kernel, depth_1 = seen[0][1], seen[1][1], seen[2][1]
    assert not full.shrinking and not full.distill
    assert all(st.kernels == [3, 5] and st.depths == [max(st.depths)] for st in kernel.space.stages)
    assert all(st.depths == space.stages[i].depths[-2:] for i, st in enumerate(depth_1.space.stages))
    reorders = [name for name, plan in seen if plan.reorder_channels]
    assert reorders == ["expand_1", "width"]
    # each phase restarts its own cosine at its own peak, scaled with the global batch as optim.lr is,
    # after its own warm-up (OFA: 5 of 120 epochs in the kernel and phase-2 steps, none in phase 1)
    start = {name: plan for name, plan in seen}
    scale = 128 / config.optim.lr_reference_batch
    phases = {p.name: p for p in config.schedule.phases}
    kernel_warmup = round(phases["kernel"].warmup_epochs * 20)
    kernel_start = next(s for s in range(sched.total_steps) if sched.plan(s).phase == "kernel")
    assert kernel_warmup >= 0 and kernel.lr == pytest.approx(phases["kernel"].lr * scale * (0.01 if kernel_warmup else 1))
    assert sched.plan(kernel_start + kernel_warmup).lr == pytest.approx(phases["kernel"].lr * scale)
    assert start["depth_1"].lr == pytest.approx(phases["depth_1"].lr * scale)  # no warm-up in phase 1
    assert phases["depth_1"].lr == pytest.approx(phases["kernel"].lr / 12, rel=0.01)  # OFA's ratios
    assert phases["depth_2"].lr == pytest.approx(phases["kernel"].lr / 4, rel=0.01)
    assert sched.total_steps == sum(max(1, round(p.epochs * 20)) for p in config.schedule.phases)


def test_imagenet_compofa_is_the_fixed_kernel_compound_schedule_deps_counts() -> None:
    """CompOFA's default run (train_ofa_net.py --task compound --fixed_kernel): full network 180 epochs, then
    two compound phases (25 + 120 epochs) of 4 samples with the kernel fixed at 7; 325 epochs, DepS Table 2's 330."""
    config = load_config(CONFIGS / "imagenet" / "compofa.yaml")
    space = spaces.get(config.space)
    sched = Schedule(config, space, steps_per_epoch=1, global_batch=256)
    phases = {p.name: p for p in config.schedule.phases}  # type: ignore[union-attr]
    assert [p.epochs for p in phases.values()] == [180, 25, 120] and sched.total_steps == 325
    assert (phases["compound_1"].lr, phases["compound_2"].lr) == (0.01, 0.03)
    plan = sched.plan(250)
    assert plan.phase == "compound_2" and plan.compound and plan.num_random == 4
    assert all(st.kernels == [max(space.stages[i].kernels)] for i, st in enumerate(plan.space.stages))
    assert plan.space.size() > 1 and all(st.depths == space.stages[i].depths for i, st in enumerate(plan.space.stages))


def test_linear_annealing_and_late_distillation() -> None:
    """EnNAS: linear lr annealing, and distillation only from `distill.start_epoch` on."""
    assert linear_lr(0, 100, 0.5, 0, 0.01, 0.0) == 0.5
    assert linear_lr(50, 100, 0.5, 0, 0.01, 0.0) == pytest.approx(0.25)
    assert linear_lr(100, 100, 0.5, 0, 0.01, 0.1) == pytest.approx(0.05)
    config = load_config(None, ["optim.lr_schedule=linear", "optim.warmup_epochs=0", "train.epochs=6",
                                "distill.start_epoch=1", "optim.lr=0.256"])
    schedule = Schedule(config, spaces.get("fmnist"), steps_per_epoch=10, global_batch=256)
    assert [schedule.plan(s).distill for s in (0, 9, 10, 59)] == [False, False, True, True]
    lrs = [schedule.plan(s).lr for s in range(60)]
    assert all(b - a == pytest.approx(-0.256 / 60) for a, b in itertools.pairwise(lrs))
    ennas = load_config(CONFIGS / "ennas.yaml")
    assert ennas.optim.lr_schedule == "linear" and ennas.distill.start_epoch == pytest.approx(ennas.train.epochs / 6)
    big = load_config(CONFIGS / "imagenet" / "ennas.yaml")
    assert (big.train.epochs, big.distill.start_epoch, big.optim.lr, big.optim.weight_decay) == (120, 20, 0.5, 4e-5)


def test_step_decay_multiplies_the_lr_once_per_decay_period() -> None:
    """DNA: the lr times 0.9 after every epoch (and after any warm-up)."""
    config = load_config(None, ["optim.lr_schedule=step", "optim.warmup_epochs=0", "train.epochs=3",
                                "optim.lr=0.256", "optim.step_decay_epochs=1", "optim.step_decay_rate=0.9"])
    schedule = Schedule(config, spaces.get("fmnist"), steps_per_epoch=10, global_batch=256)
    assert [schedule.plan(s).lr for s in (0, 9, 10, 19, 20, 29)] == pytest.approx(
        [0.256, 0.256, 0.2304, 0.2304, 0.20736, 0.20736])
    assert step_lr(15, 5, 1.0, 0.01, 4, 0.5) == pytest.approx(0.25) and step_lr(0, 5, 1.0, 0.01, 4, 0.5) == 0.01
    dna = load_config(CONFIGS / "imagenet" / "dna.yaml")
    assert (dna.optim.name, dna.optim.lr, dna.optim.lr_schedule, dna.optim.step_decay_rate, dna.train.epochs,
            dna.optim.weight_decay, dna.optim.grad_clip.kind) == ("adam", 0.002, "step", 0.9, 20, 1e-4, "none")


def test_progressive_total_epochs_stretches_every_phase_and_its_warmup() -> None:
    config = load_config(CONFIGS / "ofa.yaml", ["schedule.total_epochs=6"])
    written = load_config(CONFIGS / "ofa.yaml")
    assert sum(p.epochs for p in written.schedule.phases) == pytest.approx(2.0)
    assert config.schedule.stretch == pytest.approx(3.0)
    sched = Schedule(config, spaces.get("fmnist"), steps_per_epoch=20, global_batch=128)
    assert [p.steps for p in sched.phases] == [round(p.epochs * 3 * 20) for p in written.schedule.phases]
    assert sched.total_steps == 120
    kernel = next(p for p in sched.phases if p.config.name == "kernel")
    warmup = round(kernel.config.warmup_epochs * 3 * 20)  # 0.0125 epochs -> 0.75 -> 1 step
    assert warmup == 1 and sched.plan(kernel.start).lr < sched.plan(kernel.start + warmup).lr
