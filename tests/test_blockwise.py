"""DNA's block-wise supervision: the teacher's cuts, what each student block reads and learns, the search figure."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F

from net_helpers import randomise_bn
from supernet import Supernet, spaces
from supernet.blockwise import (
    BlockLossRanker,
    BlockwiseError,
    BlockwiseStudent,
    TeacherBlocks,
    block_error,
    match_blocks,
    space_blocks,
)
from supernet.search.evolution import SearchSettings, measured, select_parents
from supernet.search.objectives import Objectives
from supernet.search.pareto import Candidate, pareto_front
from supernet.training.loop import Trainer
from training_helpers import quick_config, small_data

SPACE = spaces.get("fmnist_choice")  # stem 28, then stages at 14, 7, 4: three blocks


def teacher_net(seed: int = 0, space=SPACE):
    torch.manual_seed(seed)
    net = randomise_bn(Supernet(space, 10, 1), seed)
    return net.extract(space.largest()).eval()


def test_blocks_are_cut_where_the_resolution_changes_the_stem_joining_the_first() -> None:
    blocks = space_blocks(SPACE)
    assert [(b.first, b.stop, b.channels, b.side) for b in blocks] == [(0, 1, 24, 14), (1, 2, 40, 7), (2, 3, 64, 4)]
    teacher = TeacherBlocks(teacher_net(), 28, 1)
    # stem + 2 layers, 3 layers, 2 layers: the last layer at each resolution ends a block
    assert teacher.cuts == [2, 5, 7] and teacher.shapes == [(24, 14), (40, 7), (64, 4)]
    assert match_blocks(teacher, SPACE) == blocks


def test_block_targets_are_the_teachers_features() -> None:
    net = teacher_net()
    x = torch.randn(4, 1, 28, 28)
    features = TeacherBlocks(net, 28, 1)(x)
    with torch.no_grad():
        h = net.stem(x)
        expected = []
        for i, layer in enumerate(net.blocks, start=1):
            h = layer(h)
            if i in (2, 5, 7):
                expected.append(h.clone())
    assert len(features) == 3 and all(torch.equal(f, e) for f, e in zip(features, expected))
    teacher = TeacherBlocks(net.train(), 28, 1)  # frozen whatever mode it came in: targets per image
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    halves = [torch.cat(parts) for parts in zip(teacher(x[:2]), teacher(x[2:]))]
    assert all(torch.allclose(f, h, atol=1e-6) for f, h in zip(teacher(x), halves))


def test_each_student_block_maps_the_teachers_previous_block_output() -> None:
    torch.manual_seed(1)
    net = randomise_bn(Supernet(SPACE, 10, 1), 1).eval()
    student = BlockwiseStudent(net, space_blocks(SPACE))
    net.set_active(SPACE.sample(random.Random(0)))
    x = torch.randn(2, 1, 28, 28)
    features = [torch.randn(2, c, s, s) for c, s in [(24, 14), (40, 7), (64, 4)]]
    with torch.no_grad():
        outputs, logits = student(x, features)
        for j in range(3):  # perturbing the teacher's block j changes only student block j+1 (or the head)
            moved = [f + (1.0 if i == j else 0.0) for i, f in enumerate(features)]
            out2, logits2 = student(x, moved)
            for i in range(3):
                assert torch.equal(outputs[i], out2[i]) == (i != j + 1)
            assert torch.equal(logits, logits2) == (j != 2)
        assert torch.equal(outputs[0], net.forward_stages(net.forward_stem(x), 0, 1))
        assert torch.equal(outputs[2], net.forward_stages(features[1], 2, 3))
        assert torch.equal(logits, net.forward_head(features[2]))


def dna_trainer(tmp_path, *overrides: str) -> Trainer:
    config = quick_config("dna.yaml", "space=fmnist_choice", "train.epochs=1", "train.max_steps_per_epoch=6",
                          "train.eval_every_epochs=0", *overrides)
    return Trainer(config, tmp_path / "dna", data=small_data(), teacher_module=teacher_net(), progress=False)


def test_a_dna_step_is_the_summed_block_mse_plus_the_heads_cross_entropy(tmp_path) -> None:
    trainer = dna_trainer(tmp_path)
    arch = SPACE.sample(random.Random(3))
    trainer._archs = lambda *args: [arch]  # the step's one path, fixed
    images, labels = next(iter(trainer._loader(0, 0)))
    reference = copy.deepcopy(trainer.net).train()
    reference.set_active(arch)
    features = trainer.block_teacher(images)
    with torch.no_grad():
        outputs, logits = BlockwiseStudent(reference, space_blocks(SPACE))(images, features)
    mse = [F.mse_loss(o, f) for o, f in zip(outputs, features)]
    expected = sum(mse) + F.cross_entropy(logits, labels, label_smoothing=trainer.config.optim.label_smoothing)
    before = trainer.counters["teacher_macs"]
    out = trainer.train_step(images, labels, trainer.schedule.plan(0), 0)
    assert out["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert [out[f"loss_block{i}"] for i in (1, 2, 3)] == pytest.approx([m.item() for m in mse], rel=1e-5)
    assert trainer.counters["teacher_macs"] > before  # the teacher's passes are counted


def test_dna_training_lowers_the_block_losses_and_resumes_bit_exactly(tmp_path) -> None:
    straight = dna_trainer(tmp_path / "a", "optim.lr=0.4", "train.checkpoint_every_steps=2")
    straight.run()
    from supernet.training.metrics import read_metrics

    records = [r for r in read_metrics(tmp_path / "a" / "dna") if r["kind"] == "train"]
    assert records[-1]["loss_block1"] < records[0]["loss_block1"]
    half = dna_trainer(tmp_path / "b", "optim.lr=0.4", "train.checkpoint_every_steps=2")
    half.run(until_step=3)
    resumed = Trainer(None, tmp_path / "b" / "dna", resume=True, data=small_data(), teacher_module=teacher_net(),
                      progress=False)
    resumed.run()
    a, b = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_that_does_not_fit_the_space_is_refused_with_the_mismatch_named() -> None:
    other = spaces.from_dict({**SPACE.to_dict(), "name": "wide",
                              "stages": [{**s, "width": s["width"] + 8} for s in SPACE.to_dict()["stages"]]})
    with pytest.raises(BlockwiseError, match="ends with 32 channels in the teacher and 24"):
        match_blocks(TeacherBlocks(teacher_net(space=other), 28, 1), SPACE)
    with pytest.raises(BlockwiseError, match="one input resolution"):
        space_blocks(spaces.get("fmnist"))
    with pytest.raises(BlockwiseError, match="a teacher built by this tool"):
        TeacherBlocks(torch.nn.Conv2d(1, 1, 1), 28, 1)  # type: ignore[arg-type]
    with pytest.raises(BlockwiseError, match="takes 28x28 images"):
        match_blocks(TeacherBlocks(teacher_net(), 28, 1), spaces.from_dict({**SPACE.to_dict(), "resolutions": [32]}))


def test_the_ranker_sums_block_losses_and_measures_each_block_configuration_once() -> None:
    torch.manual_seed(2)
    net = randomise_bn(Supernet(SPACE, 10, 1), 2)
    teacher = TeacherBlocks(teacher_net(), 28, 1)
    batches = [torch.randn(8, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    ranker = BlockLossRanker(net, teacher, batches)
    a = SPACE.sample(random.Random(0))
    last = tuple(("mbconv_k3_e3",) if g != ("mbconv_k3_e3",) else ("xception",) for g in a.blocks[2])
    b = dataclasses.replace(a, blocks=(*a.blocks[:2], last))  # a's first two blocks, another third
    archs = [a, b]
    losses = ranker(archs)
    assert len(ranker.known) == 4  # b's first two blocks are a's: measured once
    for arch, loss in zip(archs, losses):
        expected = 0.0
        reference = copy.deepcopy(net).train()
        reference.set_active(arch)
        for i, block in enumerate(space_blocks(SPACE)):
            total = 0.0
            for x in batches:
                f = teacher(x)
                with torch.no_grad():
                    inp = reference.forward_stem(x) if i == 0 else f[i - 1]
                    total += F.mse_loss(reference.forward_stages(inp, block.first, block.stop), f[i]).item() * len(x)
            expected += total / 12
        assert loss == pytest.approx(expected, rel=1e-5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert ranker(archs) == losses  # remembered
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BN running statistics untouched
    out, target = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    assert block_error(out, target, "relative_l1").item() == pytest.approx(1.0 / target.std().item())


def test_searches_ranked_by_block_loss_prefer_the_lower_loss() -> None:
    objectives = Objectives(SPACE, 10, 1)
    rng = random.Random(0)
    archs = [SPACE.sample(rng) for _ in range(4)]
    cands = [measured(objectives, a, loss, "block_loss") for a, loss in zip(archs, [0.9, 0.2, 0.5, 0.4])]
    assert all(c.val_top1 is None and c.block_loss is not None for c in cands)
    settings = SearchSettings(parents=2, rank_by="block_loss")
    assert select_parents(cands, objectives, settings) == [archs[1], archs[3]]
    best = min(cands, key=lambda c: c.block_loss)
    assert best in pareto_front(cands) and Candidate.from_dict(best.to_dict()) == best
    assert "block_loss" not in measured(objectives, archs[0], 0.5).to_dict()  # accuracy searches write what they did
