"""One fixed network on the training loop: pinned spaces, fine-tuning, retraining, transfer and distillation."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from net_helpers import randomise_bn
from supernet import spaces
from supernet.checkpoint import RunDir, load_checkpoint
from supernet.cli import main
from supernet.config import ConfigError
from supernet.cost import macs, params
from supernet.data import resize_batch
from supernet.exported import load_export
from supernet.model import Supernet, build_static
from supernet.retrain import distill_config, export_network, finetune_config, network_source
from supernet.runs import load_network
from supernet.space import SpaceError
from supernet.training.loop import Trainer, layer_lr_scales
from training_helpers import QUICK, TINY_SPACE, small_data

SMALL_RUN = ["data.limit=512", "data.val_size=256", "train.eval_every_epochs=0", *QUICK]
NETWORK_RUN = [s for s in SMALL_RUN if not s.startswith("space=")]  # the fixed network brings its own space


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained supernet (2 epochs) and its smallest sub-network exported: what fine-tuning starts from."""
    small_data()
    root = tmp_path_factory.mktemp("retrain")
    run = root / "run"
    assert main(["train", "configs/bignas.yaml", "--out", str(run), "--no-progress", "--set", "train.epochs=2",
                 "--set", "optim.lr=0.8", *_sets(SMALL_RUN)]) == 0
    assert main(["export", str(run), "--arch", "smallest", "--out", str(root / "export"), "--recal-images", "128"]) == 0
    return root / "export"


# -- pinned spaces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fmnist", "fmnist_choice", "fmnist_slimmable", "alphanet", TINY_SPACE])
def test_pinned_space_holds_exactly_the_network(name: str) -> None:
    space = spaces.get(name)
    rng = random.Random(1)
    for _ in range(3):
        arch = space.sample(rng)
        pinned = space.pinned(arch)
        assert pinned.size() == 1 and pinned.largest() == pinned.smallest()
        assert spaces.from_dict(pinned.to_dict()).to_dict() == pinned.to_dict()
        assert space.pinned(arch).to_dict() == pinned.pinned(pinned.largest()).to_dict()  # pinning twice: the same
        original = build_static(space, arch, 10, space.spec.in_channels).state_dict()
        rebuilt = build_static(pinned, pinned.largest(), 10, space.spec.in_channels).state_dict()
        assert {k: v.shape for k, v in original.items()} == {k: v.shape for k, v in rebuilt.items()}
        assert macs(space, arch, 10) == macs(pinned, pinned.largest(), 10)
        assert params(space, arch, 10) == params(pinned, pinned.largest(), 10)


def test_choice_layer_ops_are_checked() -> None:
    doc = spaces.get("fmnist_choice").to_dict()
    stage = doc["stages"][0]
    for bad, message in (([[stage["ops"][0]]], "layer_ops lists 1 layers"),
                         ([["nope"]] * stage["layers"], "layer_ops\\[0\\]")):
        broken = copy.deepcopy(doc)
        broken["stages"][0]["layer_ops"] = bad
        with pytest.raises(SpaceError, match=message):
            spaces.from_dict(broken)


@pytest.mark.parametrize("name", ["fmnist", "fmnist_choice", "fmnist_slimmable"])
def test_loaded_extraction_equals_the_supernet_at_the_arch(name: str) -> None:
    space = spaces.get(name)
    torch.manual_seed(0)
    net = Supernet(space, 10, 1)
    randomise_bn(net)
    arch = space.sample(random.Random(3))
    pinned = space.pinned(arch)
    one = Supernet(pinned, 10, 1)
    one.load_extracted(net.extract(arch).state_dict())
    x = torch.randn(4, 1, 28, 28)
    net.eval().set_active(arch)
    one.eval().set_active(pinned.largest())
    with torch.no_grad():
        assert torch.allclose(one(resize_batch(x, arch.resolution)), net(resize_batch(x, arch.resolution)), atol=1e-5)
    with pytest.raises(ValueError, match="one-network space"):
        net.load_extracted(net.extract(arch).state_dict())


def test_layer_lr_decay_grows_with_depth_and_freezing_keeps_the_classifier() -> None:
    space = spaces.get(TINY_SPACE)
    pinned = space.pinned(space.largest())
    net = Supernet(pinned, 10, 1)
    scales = layer_lr_scales(net, 0.5, freeze_backbone=False)
    blocks = sum(len(stage) for stage in net.stages)
    assert scales["head.classifier.weight"] == 1.0
    assert min(scales.values()) == scales[next(k for k in scales if k.startswith("stem."))] == 0.5 ** (blocks + 1)
    first, last = (min((k for k in scales if k.startswith(f"stages.{s}.")), key=scales.get) for s in (0, 1))
    assert scales[first] < scales[last] < 1.0
    frozen = layer_lr_scales(net, 1.0, freeze_backbone=True)
    assert set(frozen) == {"head.classifier.weight", "head.classifier.bias"}


# -- fine-tuning ------------------------------------------------------------------------------------


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunDir(run).latest)["model"]


def test_finetune_from_the_cli_resumes_bit_exactly_and_records_its_lineage(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    args = ["finetune", str(exported), "--epochs", "2", "--no-progress", "--no-onnx"]
    assert main([*args, "--out", str(straight)]) == 0
    out = capsys.readouterr().out
    assert "before: test top-1" in out and "after: test top-1" in out
    assert main([*args, "--out", str(paused), "--max-steps", "5"]) == 0
    assert "paused" in capsys.readouterr().out and not (paused / "export").exists()
    assert main(["finetune", "--resume", str(paused), "--no-progress", "--no-onnx"]) == 0
    a, b = _weights(straight), _weights(paused)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    start = load_export(exported)
    tuned = load_export(straight / "export")
    assert tuned.arch == start.arch and tuned.space.to_dict() == start.space.to_dict()  # the original space
    assert any(not torch.equal(v, start.net.state_dict()[k]) for k, v in tuned.net.state_dict().items())
    card = json.loads((straight / "export" / "arch.json").read_text())["card"]
    before = json.loads((exported / "arch.json").read_text())["card"]["test"]
    assert card["before"] == before
    assert card["lineage"]["method"] == "fine-tune" and card["lineage"]["init"] == str(exported)
    assert card["lineage"]["supernet_run"] == str(exported.parent / "run")
    assert card["lineage"]["settings"] == str(exported.parent / "run" / "config.yaml")
    config = yaml.safe_load((straight / "config.yaml").read_text())
    run_lr = yaml.safe_load((exported.parent / "run" / "config.yaml").read_text())["optim"]["lr"]
    assert config["optim"]["lr"] == pytest.approx(run_lr / 10) and config["optim"]["warmup_epochs"] == 0
    text = (straight / "export" / "MODEL_CARD.md").read_text()
    assert "## Lineage" in text and "test, before" in text
    # fine-tuning the fine-tuned export keeps the history
    assert main(["finetune", str(straight / "export"), "--epochs", "0.25", "--out", str(tmp_path / "again"),
                 "--no-progress", "--no-onnx"]) == 0
    again = json.loads((tmp_path / "again" / "export" / "arch.json").read_text())["card"]
    assert again["lineage"]["previous"] == card["lineage"] and again["lineage"]["supernet_run"] == str(
        exported.parent / "run")
    assert again["before"] == card["test"]


def test_from_scratch_retrains_fresh_weights(exported: Path, tmp_path: Path) -> None:
    config = finetune_config(exported, epochs=1, from_scratch=True, overrides=NETWORK_RUN)
    assert config.network is not None and config.network.init == "scratch"
    assert config.network.lineage["method"] == "retrain from scratch"
    trainer = Trainer(config, tmp_path / "run", progress=False)
    start = load_export(exported).net.state_dict()
    fresh = trainer.net.extract(trainer.space.largest()).state_dict()
    assert not torch.equal(fresh["stem.0.weight"], start["stem.0.weight"])
    inherited = Trainer(finetune_config(exported, epochs=1), tmp_path / "run2", progress=False)
    assert torch.equal(inherited.net.extract(inherited.space.largest()).state_dict()["stem.0.weight"],
                       start["stem.0.weight"])


def test_a_fixed_network_trains_with_the_configured_dropout(exported: Path, tmp_path: Path, monkeypatch) -> None:
    """The fixed network is its space's largest (and only) network: `train.dropout` applies to it (AlphaNet
    section 4.3 fine-tunes with dropout 0.5)."""
    rates: list[float] = []
    original = Trainer._forward

    def forward(self: Trainer, arch, images, regularise: bool = False):  # type: ignore[no-untyped-def]
        out = original(self, arch, images, regularise)
        if torch.is_grad_enabled():
            rates.append(self.net.dropout_rate)
        return out

    monkeypatch.setattr(Trainer, "_forward", forward)
    trainer = Trainer(finetune_config(exported, epochs=1, overrides=["train.dropout=0.3"]), tmp_path / "run",
                      progress=False)
    trainer.run(until_step=2)
    trainer.close()
    assert rates == [0.3, 0.3]


def test_transfer_to_five_classes_replaces_only_the_head(exported: Path, tmp_path: Path) -> None:
    config = finetune_config(exported, epochs=1, classes=[0, 1, 2, 3, 4], freeze_backbone=True)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert trainer.num_classes == 5 and trainer.replaced_classifier
    assert int(trainer.data.train.labels.max()) == 4 and int(trainer.data.test.labels.max()) == 4
    assert trainer.run().finished
    trainer.close()
    done = export_network(tmp_path / "run", onnx=False)
    out = done.path
    start, moved = load_export(exported).net.state_dict(), load_export(out).net.state_dict()
    assert start.keys() == moved.keys()
    changed_shape = {k for k in start if start[k].shape != moved[k].shape}
    assert changed_shape == {"head.classifier.weight", "head.classifier.bias"}
    trained = {k for k in start if k not in changed_shape and "running" not in k and "num_batches" not in k
               and not torch.equal(start[k], moved[k])}
    assert trained == set()  # a frozen backbone: every inherited weight unchanged (BN statistics adapt)
    card = json.loads((out / "arch.json").read_text())["card"]
    assert "before" not in card and card["lineage"]["classes"] == [0, 1, 2, 3, 4]
    assert 0.0 <= done.test.top1 <= 1.0 and done.test.images == 5000  # 5 of the 10 classes of the test split


# -- distillation -----------------------------------------------------------------------------------


def test_distill_loss_is_the_configured_formula(exported: Path, tmp_path: Path, monkeypatch) -> None:
    """(1 - lambda) CE + lambda T^2 KL(teacher || student) at T = 2, as AlphaNet's Appendix C writes it."""
    teacher_run = exported.parent / "run"
    config = distill_config(TINY_SPACE, str(teacher_run), arch="smallest", epochs=1,
                            overrides=[*NETWORK_RUN, "distill.options.temperature=2", "train.dropout=0"])
    assert (config.distill.kd_weight, config.distill.ce_weight) == (0.9, 0.1) and config.network.init == "scratch"
    teacher, resolution = load_network(teacher_run)
    seen: list[tuple[float, float]] = []
    original = Trainer.train_step

    def train_step(self: Trainer, images, labels, plan, epoch):  # type: ignore[no-untyped-def]
        arch = self.space.largest()
        student = copy.deepcopy(self.net).train()
        student.set_active(arch)
        with torch.no_grad():
            logits = student(resize_batch(images, arch.resolution)).float()
            target = teacher(resize_batch(images, resolution)).float()
        t = 2.0
        kl = (F.softmax(target / t, 1) * (F.log_softmax(target / t, 1) - F.log_softmax(logits / t, 1))).sum(1).mean()
        ce = F.cross_entropy(logits, labels, label_smoothing=self.config.optim.label_smoothing)
        result = original(self, images, labels, plan, epoch)
        seen.append(((0.9 * t * t * kl + 0.1 * ce).item(), result["loss"]))
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.run(until_step=3)
    trainer.close()
    assert len(seen) == 3
    for expected, logged in seen:
        assert logged == pytest.approx(expected, rel=1e-4)


def test_distill_a_width_of_a_slimmable_space_from_the_cli(exported: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "student"
    assert main(["distill", "fmnist_slimmable", "--arch", "0.25x", "--teacher", str(exported.parent / "run"),
                 "--config", "configs/distill_adaptive.yaml", "--epochs", "1", "--out", str(run), "--no-progress",
                 "--no-onnx", "--max-steps", "2", *_sets(["data.limit=512", "data.val_size=256",
                                                          "data.batch_size=32", "train.recal_images=128"])]) == 0
    assert "paused" in capsys.readouterr().out
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["distill"]["divergence"] == "adaptive_alpha" and config["teacher"]["name"] == "external"
    assert config["space"]["name"] == "fmnist_slimmable-pinned"
    assert main(["distill", "--resume", str(run), "--no-progress", "--no-onnx"]) == 0
    assert "after: test top-1" in capsys.readouterr().out
    student = load_export(run / "export")
    assert student.space.name == "fmnist_slimmable" and student.arch == spaces.get("fmnist_slimmable").at_width(0.25)


# -- bad input --------------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (["finetune", str(exported)], "--epochs"),
        (["finetune", str(tmp_path / "nowhere"), "--epochs", "1"], "nowhere"),
        (["finetune", str(exported), "--epochs", "1", "--classes", "a,b"], "--classes"),
        (["finetune", str(exported), "--epochs", "1", "--classes", "0,99", "--out", str(tmp_path / "c")],
         "data.classes"),
        (["distill", "fmnist", "--epochs", "1"], "--teacher"),
        (["distill", str(exported), "--arch", "largest", "--teacher", str(exported)], "--arch"),
        (["distill", "fmnist", "--arch", "0.5x", "--teacher", str(exported)], "width multiplier"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0 and "Traceback" not in err, (args, err)


def test_hand_written_network_configs_are_checked(exported: Path, tmp_path: Path) -> None:
    config = finetune_config(exported, epochs=1)
    wrong = config.model_copy(update={"space": TINY_SPACE})
    with pytest.raises(ConfigError, match="holds"):
        Trainer(wrong, tmp_path / "a", progress=False)
    other = spaces.get(TINY_SPACE)
    mismatch = config.model_copy(update={"space": other.pinned(other.largest()).to_dict()})
    with pytest.raises(ConfigError, match="network.space pinned"):
        Trainer(mismatch, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="an export"):
        network_source(exported, arch="largest")
