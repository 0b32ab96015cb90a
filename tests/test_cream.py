"""Cream: the prioritized board's admission rule, the meta-matching choice and KD/CE weighting, the look-ahead."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from net_helpers import randomise_bn
from supernet import Supernet, spaces
from supernet.data import resize_batch
from supernet.nn.batchnorm import frozen_bn_statistics
from supernet.training.cream import BoardEntry, CreamTeacher, PrioritizedBoard, soft_cross_entropy
from supernet.training.loop import Trainer
from supernet.training.metrics import read_metrics
from training_helpers import quick_config, small_data

SPACE = spaces.get("tests/data/tiny_choice.yaml")


def entry(top1: float, macs: int, seed: int = 0) -> BoardEntry:
    arch = SPACE.sample(random.Random(seed))
    return BoardEntry(top1, macs, arch, torch.zeros(4, 1, 28, 28), torch.full((4, 10), 0.1))


def test_board_admits_by_accuracy_gap_or_by_accuracy_and_fewer_macs() -> None:
    board = PrioritizedBoard(size=3, gap=5.0)
    for top1, macs in [(50, 100), (60, 100), (40, 100)]:
        assert board.offer(entry(top1, macs))  # room left: anything gets in
    assert [e.top1 for e in board.entries] == [60, 50, 40]  # best first
    assert not board.admits(44, 100)  # above the worst (40) by less than the gap, not cheaper
    assert not board.admits(40, 50)  # cheaper but not more accurate
    assert board.admits(41, 99)  # more accurate and cheaper than the worst
    assert board.admits(45.5, 200)  # more than 5 points above the worst, however costly
    assert board.offer(entry(45.5, 200))
    assert [e.top1 for e in board.entries] == [60, 50, 45.5] and len(board.entries) == 3  # the worst dropped


def stub_teacher(scores: dict[int, float]) -> CreamTeacher:
    """A teacher whose meta network scores member i as scores[i] (through a fixed linear layer)."""
    teacher = CreamTeacher(10, torch.device("cpu"), forward_on=lambda arch, x: torch.zeros(x.shape[0], 10), size=3)
    for i, score in scores.items():
        e = entry(50 + i, 100, seed=i)
        e.soft = torch.zeros(4, 10)
        e.soft[0, 0] = -score  # meta(probs - soft) with probs uniform 0.1: the weight picks out this cell
        teacher.board.offer(e)
    with torch.no_grad():
        teacher.meta.layer.weight.zero_()
        teacher.meta.layer.weight[0, 0] = 1.0
        teacher.meta.layer.bias.fill_(-0.1)
    return teacher


def test_meta_matching_picks_the_best_score_and_sets_the_kd_ce_weights() -> None:
    teacher = stub_teacher({0: 0.3, 1: 2.0, 2: -1.0})
    student = SPACE.smallest()
    m, chosen = teacher.select(student)
    assert chosen.top1 == 51  # member 1 scored highest
    assert float(m) == pytest.approx(torch.sigmoid(torch.tensor(-2.0)).item(), rel=1e-5)
    targets = teacher.before_step([student], torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long),
                                  lambda arch: torch.full((8, 10), float(arch == chosen.arch)))
    assert torch.equal(targets, torch.ones(8, 10))  # the chosen member's logits teach the step
    kd, ce = teacher.loss_weights()
    assert kd == pytest.approx(float(m) / 2) and ce == pytest.approx((2 - float(m)) / 2)  # (m KD + (2-m) CE) / 2
    empty = CreamTeacher(10, torch.device("cpu"), forward_on=lambda arch, x: torch.zeros(x.shape[0], 10))
    assert empty.before_step([student], torch.zeros(8, 1, 28, 28), torch.zeros(8), lambda a: None) is None
    assert empty.loss_weights() is None  # an empty board: labels only


def test_first_member_stores_its_own_outputs_later_ones_their_teachers() -> None:
    teacher = CreamTeacher(10, torch.device("cpu"), forward_on=lambda arch, x: torch.zeros(x.shape[0], 10), size=2)
    images, labels = torch.randn(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    own, taught = torch.randn(8, 10), torch.randn(8, 10)
    assert teacher.after_step(SPACE.smallest(), own, labels, images, None, 30.0, 100)
    torch.testing.assert_close(teacher.board.entries[0].soft, F.softmax(own[:4], dim=1))
    torch.testing.assert_close(teacher.board.entries[0].images, images[:4])
    assert teacher.after_step(SPACE.largest(), own, labels, images, taught, 20.0, 100)
    torch.testing.assert_close(teacher.board.entries[1].soft, F.softmax(taught[:4], dim=1))


def test_look_ahead_follows_the_validation_loss_after_a_simulated_step() -> None:
    """The meta update is -lr x d/d(theta) of CE on the second slice after w <- w - lr grad_w(m(theta) KD)."""
    torch.manual_seed(0)
    net = Supernet(SPACE, num_classes=10).train().double()  # float64: the finite difference below is exact enough
    randomise_bn(net, seed=1)
    def net_forward(arch, x):
        return _frozen(net, arch, x)

    teacher = CreamTeacher(10, torch.device("cpu"), forward_on=net_forward, size=2)
    teacher.meta.double()
    images, labels = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (8,))
    teacher.after_step(SPACE.largest(), net_forward(SPACE.largest(), images), labels, images, None, 50.0, 1)
    student, lr = SPACE.smallest(), 0.5
    bias = teacher.meta.layer.bias

    def val_loss(shift: float) -> float:  # the simulated step, written out, for a meta bias moved by `shift`
        with torch.no_grad():
            bias.add_(shift)
        try:
            m, chosen = teacher.select(student)
            soft = F.softmax(net_forward(chosen.arch, images[:4]), dim=1)
            with frozen_bn_statistics(net):
                net.set_active(student)
                params = dict(net.named_parameters())
                kd = m.detach() * soft_cross_entropy(net(images[:4]), soft)
                grads = torch.autograd.grad(kd, list(params.values()), allow_unused=True)
                stepped = {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}
                out = torch.func.functional_call(net, stepped, (images[4:8],))
                return F.cross_entropy(out, labels[4:8]).item()
        finally:
            with torch.no_grad():
                bias.sub_(shift)

    h = 1e-4
    numeric = (val_loss(h) - val_loss(-h)) / (2 * h)
    before = bias.detach().clone()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    teacher.look_ahead(net, student, images, labels, lr)
    assert teacher.meta_updates == 1
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())  # the supernet is untouched
    analytic = -(bias.detach() - before).item() / lr  # SGD's first momentum step moves by lr x gradient
    assert abs(numeric) > 1e-8 and analytic == pytest.approx(numeric, rel=1e-4)


def _frozen(net: Supernet, arch, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), frozen_bn_statistics(net):
        net.set_active(arch)
        return net(resize_batch(x, arch.resolution))


CREAM = ["train.epochs=2", "optim.lr=0.8", "teacher.meta_update_every=3", "distill.start_epoch=0.2", "train.checkpoint_every_steps=5",
         "train.eval_every_epochs=1"]


def test_cream_trains_fills_its_board_and_resumes_bit_exactly(tmp_path) -> None:
    data = small_data()
    straight = Trainer(quick_config("cream.yaml", *CREAM), tmp_path / "a", data=data, progress=False)
    straight.run()
    records = [r for r in read_metrics(tmp_path / "a") if r["kind"] == "train"]
    assert records[-1]["board_size"] == 10 and records[-1]["meta_updates"] > 0
    assert 0 < records[-1]["kd_scale"] < 1 and records[0]["board_size"] == 0  # labels only before distilling
    losses = [r["loss"] for r in records]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    mid = straight.steps_per_epoch + 4
    first = Trainer(quick_config("cream.yaml", *CREAM), tmp_path / "b", data=data, progress=False)
    first.run(until_step=mid)
    del first
    resumed = Trainer(None, tmp_path / "b", resume=True, data=data, progress=False)
    resumed.run()
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.teacher.meta.layer.weight, resumed.teacher.meta.layer.weight)
    assert [e.arch for e in straight.teacher.board.entries] == [e.arch for e in resumed.teacher.board.entries]


def test_board_teacher_needs_one_path_per_step() -> None:
    from supernet.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="one path per step"):
        load_config("configs/cream.yaml", ["sampler.num_random=2"])
