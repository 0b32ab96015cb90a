"""The training loop end to end on real Fashion-MNIST: every recipe, DepS scaling, resume, failures."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from supernet.checkpoint import RunDirError, load_checkpoint
from supernet.export import export_subnet, load_subnet
from supernet.training.loop import Trainer, TrainingStopped
from supernet.training.metrics import read_metrics
from training_helpers import quick_config, small_data

RECIPES = ["alphanet.yaml", "bignas.yaml", "bignas_kl.yaml", "nokd.yaml", "attentivenas.yaml", "deps.yaml",
           "deps_alpha.yaml", "ennas.yaml", "ofa.yaml", "compofa.yaml"]  # SPOS, Cream: tests/e2e, test_cream.py


def train(tmp_path, recipe: str | None, *overrides: str, data=None, **kwargs) -> Trainer:
    trainer = Trainer(quick_config(recipe, *overrides), tmp_path / "run", data=data or small_data(),
                      progress=False, **kwargs)
    trainer.run()
    return trainer


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_and_its_loss_falls(tmp_path, recipe: str) -> None:
    extra = ["train.eval_every_epochs=0", "optim.lr=0.8"]
    if recipe in ("ofa.yaml", "compofa.yaml"):
        extra += ["optim.lr=1.6"]
    else:
        extra += ["train.epochs=3"]
    trainer = train(tmp_path, recipe, *extra)
    records = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"]
    assert len(records) == trainer.schedule.total_steps
    if recipe in ("ofa.yaml", "compofa.yaml"):  # no full model once shrinking: its own phase must learn
        assert all(r["loss"] is not None for r in records)
        records = [r for r in records if r["phase"] == "full"]
    key = "loss" if recipe == "ennas.yaml" else "loss_full"
    losses = [r[key] for r in records]
    assert all(v is not None for v in losses)
    assert mean(losses[-5:]) < mean(losses[:5]) - 0.1, losses


def test_deps_trains_full_model_first_and_scales_subnetwork_gradients(tmp_path) -> None:
    trainer = train(tmp_path, "deps.yaml", "train.epochs=2", "train.eval_every_epochs=0")
    records = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"]
    start = trainer.schedule.shrink_start
    assert start == trainer.schedule.total_steps // 2
    assert all(r["networks"] == 1 and r["phase"] == "fm_warmup" for r in records[:start])
    assert all(r["networks"] == 4 and r["phase"] == "shrink" for r in records[start:])
    assert records[start]["eps"] == pytest.approx(1e-4)

    # gradient of one step = full model's + eps * sub-networks': measured at eps 0, 1 and 0.3
    images, labels = next(iter(trainer_batches(trainer)))
    base = trainer.schedule.plan(start)
    grads = {}
    for eps in (0.0, 1.0, 0.3):
        plan = type(base)(**{**base.__dict__, "sub_scale": eps, "lr": 0.0})
        trainer.rng = random.Random(5)
        trainer.train_step(images, labels, plan, epoch=0)
        grads[eps] = torch.cat([p.grad.flatten() for p in trainer.net.parameters() if p.grad is not None])
    sub = grads[1.0] - grads[0.0]
    assert sub.abs().max() > 0
    torch.testing.assert_close(grads[0.3] - grads[0.0], 0.3 * sub, rtol=1e-3, atol=1e-6)


def trainer_batches(trainer: Trainer):
    from supernet.data import Loader

    return Loader(trainer.data.train, 32, seed=0, epoch=0, shuffle=True, augment=True)


@pytest.mark.parametrize("recipe", ["alphanet.yaml", "attentivenas.yaml", "ennas.yaml", "deps.yaml"])
def test_resume_is_bitwise_exact(tmp_path, recipe: str) -> None:
    data = small_data()
    overrides = ["train.epochs=2", "train.dropout=0.2", "train.drop_connect=0.2", "train.checkpoint_every_steps=5",
                 "train.eval_every_epochs=1"]
    straight = Trainer(quick_config(recipe, *overrides), tmp_path / "a", data=data, progress=False)
    straight.run()
    mid = straight.steps_per_epoch + 3  # inside the second epoch, between periodic checkpoints
    first = Trainer(quick_config(recipe, *overrides), tmp_path / "b", data=data, progress=False)
    result = first.run(until_step=mid)
    assert not result.finished and result.global_step == mid
    del first
    resumed = Trainer(None, tmp_path / "b", resume=True, data=data, progress=False)
    assert resumed.global_step == mid
    resumed.run()
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[k]["momentum_buffer"], ob[k]["momentum_buffer"]) for k in oa)
    steps_a = [r["step"] for r in read_metrics(tmp_path / "a")]
    steps_b = [r["step"] for r in read_metrics(tmp_path / "b")]
    assert steps_a == steps_b  # the metrics log has no duplicates or gaps after resuming


def test_epoch_evaluation_logs_extremes_and_cost(tmp_path) -> None:
    trainer = train(tmp_path, "bignas.yaml", "train.epochs=1")
    evals = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "eval"]
    assert len(evals) == 1
    e = evals[0]
    assert 0.0 <= e["smallest_top1"] <= 1.0 and 0.0 <= e["largest_top1"] <= 1.0
    from supernet.cost import macs

    space, n = trainer.space, trainer.steps_per_epoch
    # every sandwich step trains largest + smallest + 2 random: at least the two extremes' cost
    floor = n * 32 * 3 * (macs(space, space.largest(), 10) + macs(space, space.smallest(), 10))
    assert e["train_macs"] > floor and e["wall_time"] > 0
    assert (trainer.run_dir.checkpoints / "epoch_001.pt").is_file()
    assert any(trainer.run_dir.tensorboard.iterdir())
    assert (trainer.run_dir.config).read_text().startswith("seed: 0")


def test_external_teacher_from_a_checkpoint_of_this_tool(tmp_path) -> None:
    first = train(tmp_path / "t", "nokd.yaml", "train.epochs=1", "train.eval_every_epochs=0")
    second = train(tmp_path / "s", "bignas.yaml", "train.epochs=1", "train.eval_every_epochs=0",
                   "teacher.name=external", f"teacher.checkpoint={first.run_dir.root}")
    assert second.global_step == second.schedule.total_steps
    teacher = second.teacher.module
    assert not any(p.requires_grad for p in teacher.parameters())


def test_external_teacher_any_torch_module(tmp_path) -> None:
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    before = [p.clone() for p in module.parameters()]
    trainer = train(tmp_path, "bignas.yaml", "train.epochs=1", "train.eval_every_epochs=0",
                    "teacher.name=external", "teacher.checkpoint=module", teacher_module=module)
    assert trainer.global_step > 0
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # the teacher stays frozen


def test_nonfinite_losses_skip_then_stop_with_usable_checkpoint(tmp_path) -> None:
    trainer = Trainer(quick_config("bignas.yaml", "train.max_nonfinite_steps=3", "train.eval_every_epochs=0"),
                      tmp_path / "run", data=small_data(), progress=False)
    trainer.divergence = lambda student, teacher: student.sum() * float("nan")
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row"):
        trainer.run()
    state = load_checkpoint(trainer.run_dir.latest)
    assert state["counters"]["nonfinite_total"] == 3
    # skipped steps changed no weight
    assert all(torch.equal(before[k], v) for k, v in state["model"].items() if not k.endswith("num_batches_tracked")
               and "running" not in k)


def test_run_directory_is_never_overwritten(tmp_path) -> None:
    data = small_data()
    config = quick_config("bignas.yaml", "train.epochs=1", "train.eval_every_epochs=0")
    Trainer(config, tmp_path / "run", data=data, progress=False).run(until_step=2)
    with pytest.raises(RunDirError, match="already holds a run; continue it with .supernet train --resume"):
        Trainer(config, tmp_path / "run", data=data, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()
    Trainer(config, tmp_path / "run", data=data, progress=False, force=True)
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()
    with pytest.raises(RunDirError, match="does not exist"):
        Trainer(None, tmp_path / "nowhere", resume=True, data=data, progress=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path) -> None:
    data = small_data()
    config = quick_config("bignas.yaml", "train.epochs=1", "train.eval_every_epochs=0")
    trainer = Trainer(config, tmp_path / "run", data=data, progress=False)
    trainer.run(until_step=1)
    trainer.run_dir.latest.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match="cannot be read"):
        Trainer(None, tmp_path / "run", resume=True, data=data, progress=False)


def test_bf16_autocast_trains(tmp_path) -> None:
    trainer = train(tmp_path, "alphanet.yaml", "train.bf16=true", "train.epochs=1", "train.eval_every_epochs=0")
    records = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"]
    assert all(r["loss"] is not None for r in records)


def test_late_distillation_and_part_of_the_data_per_epoch(tmp_path, monkeypatch) -> None:
    """EnNAS: the ensemble teacher starts at distill.start_epoch; each epoch visits epoch_fraction of the data."""
    from supernet.training.teachers import EnsembleTeacher

    calls = []
    original = EnsembleTeacher.before_step

    def counted(self, archs, images, labels, forward):  # type: ignore[no-untyped-def]
        calls.append(len(archs))
        return original(self, archs, images, labels, forward)

    monkeypatch.setattr(EnsembleTeacher, "before_step", counted)
    data = small_data()
    trainer = Trainer(quick_config("ennas.yaml", "train.epochs=2", "distill.start_epoch=0.5",
                                   "train.epoch_fraction=0.5", "train.eval_every_epochs=0"),
                      tmp_path / "run", data=data, progress=False)
    full_steps = len(data.train) // 32
    assert trainer.steps_per_epoch == round(full_steps * 0.5)
    trainer.run()
    assert trainer.global_step == 2 * trainer.steps_per_epoch
    assert len(calls) == 2 * trainer.steps_per_epoch - round(0.5 * trainer.steps_per_epoch)
    records = [r for r in read_metrics(trainer.run_dir.root) if r["kind"] == "train"]
    assert all("ensemble_separable_batches" in r for r in records)


@pytest.mark.parametrize("recipe", ["ofa.yaml", "compofa.yaml"])
def test_ofa_phases_train_only_their_samples(tmp_path, recipe: str) -> None:
    """OFA's dynamic_batch_size: each step trains the phase's samples, not also the largest network."""
    trainer = Trainer(quick_config(recipe, "train.eval_every_epochs=0"), tmp_path / "run", data=small_data(),
                      progress=False)
    images, labels = next(iter(trainer._loader(0, 0)))
    seen = set()
    for step in range(trainer.schedule.total_steps):
        plan = trainer.schedule.plan(step)
        if plan.phase in seen or not plan.shrinking:
            continue
        seen.add(plan.phase)
        archs = trainer._archs(plan, images, labels, 0)
        assert len(archs) == plan.num_random, plan.phase
        assert all(plan.space.contains(a) for a in archs)
    assert seen and "full" not in seen


def run_straight_and_resumed(straight: Trainer, other: Path, overrides: list[str], data) -> Trainer:
    """Run `straight` to the end, and the same bignas config paused at step 3 and resumed in `other`;
    assert both end with the same weights bit for bit and return the resumed trainer."""
    straight.run()
    first = Trainer(quick_config("bignas.yaml", *overrides), other, data=data, progress=False)
    first.run(until_step=3)
    resumed = Trainer(None, other, resume=True, data=data, progress=False)
    resumed.run()
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return resumed


def test_rmsprop_trains_and_resumes_bit_exactly(tmp_path) -> None:
    """BigNAS as DepS's ImageNet table runs it: RMSProp (an optimizer option), resumable like SGD."""
    data = small_data()
    overrides = ["optim.name=rmsprop", "optim.lr=0.01", "train.epochs=1", "train.eval_every_epochs=0"]
    straight = Trainer(quick_config("bignas.yaml", *overrides), tmp_path / "a", data=data, progress=False)
    assert isinstance(straight.optimizer, torch.optim.RMSprop)
    group = straight.optimizer.param_groups[0]
    assert (group["alpha"], group["eps"], group["momentum"]) == (0.9, 1e-3, 0.9)
    resumed = run_straight_and_resumed(straight, tmp_path / "b", overrides, data)
    oa, ob = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(oa[k]["square_avg"], ob[k]["square_avg"]) for k in oa)
    losses = [r["loss_full"] for r in read_metrics(tmp_path / "a") if r["kind"] == "train"]
    assert mean(losses[-3:]) < mean(losses[:3])


def test_adam_trains_and_resumes_bit_exactly(tmp_path) -> None:
    """DNA's optimizer: Adam with L2 weight decay on the weights only, resumable like SGD."""
    data = small_data()
    overrides = ["optim.name=adam", "optim.lr=0.004", "optim.weight_decay=1e-4", "train.epochs=1",
                 "train.eval_every_epochs=0"]
    straight = Trainer(quick_config("bignas.yaml", *overrides), tmp_path / "a", data=data, progress=False)
    assert isinstance(straight.optimizer, torch.optim.Adam)
    decay, no_decay = straight.optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["eps"]) == (1e-4, 0.0, 1e-8)
    run_straight_and_resumed(straight, tmp_path / "b", overrides, data)
    losses = [r["loss_full"] for r in read_metrics(tmp_path / "a") if r["kind"] == "train"]
    assert mean(losses[-3:]) < mean(losses[:3])


def test_external_teacher_from_an_export(tmp_path) -> None:
    first = train(tmp_path / "t", "nokd.yaml", "train.epochs=1", "train.eval_every_epochs=0")
    arch = first.space.smallest()
    export_subnet(first.net.extract(arch), first.space, arch, 10, 1, tmp_path / "exp", card={"source": "test"},
                  onnx=False)
    second = train(tmp_path / "s", "bignas.yaml", "train.epochs=1", "train.eval_every_epochs=0",
                   "teacher.name=external", f"teacher.checkpoint={tmp_path / 'exp'}")
    teacher = second.teacher
    assert teacher.resolution == arch.resolution and not any(p.requires_grad for p in teacher.module.parameters())
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    assert torch.allclose(teacher.module(x), load_subnet(tmp_path / "exp")(x))
    with pytest.raises(RunDirError, match="pass an export directory"):
        train(tmp_path / "u", "bignas.yaml", "teacher.name=external", f"teacher.checkpoint={tmp_path / 'none'}")
