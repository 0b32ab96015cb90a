"""Tests for supernet.export: round trips of exported sub-networks (PyTorch and ONNX), files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from net_helpers import elastic_arch
from supernet import spaces
from supernet.checkpoint import RunDir, RunDirError, checkpoint_digest, save_checkpoint
from supernet.config import config_from_dict
from supernet.cost import cost, count_params
from supernet.data import build_data
from supernet.evaluation import EvalResult, Evaluator, accuracy
from supernet.export import (
    ExportedPaths,
    ExportError,
    export_subnet,
    load_subnet,
    verify_onnx,
)
from supernet.model import Supernet
from supernet.runs import load_supernet
from supernet.space import Arch, SearchSpace

FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = 10
CHANNELS = 1
SPACE = spaces.get("fmnist")


def mixed_arch(space: SearchSpace) -> Arch:
    """Deepest blocks, kernels and ratios alternating per block, a stem narrower than stage 1 (conv shortcut)."""
    spec = space.spec
    depths = tuple(max(st.depths) for st in space.stages)
    return elastic_arch(
        resolution=sorted(spec.resolutions)[len(spec.resolutions) // 2],
        stem_width=min(spec.stem.widths),
        widths=tuple(max(st.widths) for st in space.stages),
        depths=depths,
        kernels=tuple(
            tuple(st.kernels[b % len(st.kernels)] for b in range(d)) for st, d in zip(space.stages, depths)
        ),
        expand_ratios=tuple(
            tuple(st.expand_ratios[-1 - b % len(st.expand_ratios)] for b in range(d))
            for st, d in zip(space.stages, depths)
        ),
        head_width=min(spec.head.widths),
    )


# Derived from the preset rather than spelled out, so the tests follow changes to the preset's choices.
ARCH = mixed_arch(SPACE)
CARD = {
    "source": "runs/fmnist-alphanet",
    "checkpoint_id": "ab12" * 16,
    "dataset": "fashion_mnist",
    "budget": "macs<=30e6",
    "val": EvalResult(top1=0.8516, top5=0.9902, loss=0.41, images=5000),
    "test": {"top1": 0.8437, "top5": 0.9875, "images": 10000},
    "mean": (0.2860,),
    "std": (0.3530,),
}


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SPACE


def random_supernet(space: SearchSpace, seed: int = 0, kernel_transform: bool = False) -> Supernet:
    """A fresh supernet whose BN statistics and affine parameters are random, so every layer matters."""
    generator = torch.Generator().manual_seed(seed)
    net = Supernet(space, CLASSES, CHANNELS, kernel_transform=kernel_transform)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                m.num_batches_tracked.fill_(7)
        net.head.classifier.weight.normal_(0, 0.1, generator=generator)
    return net.eval()


@pytest.fixture(scope="module")
def extracted(space: SearchSpace) -> nn.Module:
    return random_supernet(space).extract(ARCH).eval()


def export(module: nn.Module, space: SearchSpace, out: Path, **kwargs) -> ExportedPaths:
    kwargs.setdefault("card", CARD)
    kwargs.setdefault("onnx", False)
    return export_subnet(module, space, ARCH, CLASSES, CHANNELS, out, **kwargs)


def images(n: int = 4, resolution: int = ARCH.resolution) -> torch.Tensor:
    return torch.randn(n, CHANNELS, resolution, resolution, generator=torch.Generator().manual_seed(3))


# -- PyTorch round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("weights_format", ["safetensors", "torch"])
def test_round_trip_reproduces_the_extracted_module(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path, weights_format: str
) -> None:
    paths = export(extracted, space, tmp_path / "out", weights_format=weights_format)
    assert paths.weights.name == {"safetensors": "model.safetensors", "torch": "model.pt"}[weights_format]
    assert sorted(p.name for p in paths.root.iterdir()) == sorted(
        ["arch.json", paths.weights.name, "MODEL_CARD.md"]
    )
    rng_before = torch.get_rng_state()
    loaded = load_subnet(paths.root)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert not any(m.training for m in loaded.modules())
    expected, got = extracted.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:  # weights and every BN buffer (running mean/var, batch count), bit for bit
        assert torch.equal(expected[key], got[key]), key
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), extracted(x), rtol=0, atol=1e-6)


def test_torch_weights_load_weights_only(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    paths = export(extracted, space, tmp_path / "out", weights_format="torch")
    state = torch.load(paths.weights, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert any(k.endswith("running_var") for k in state)


def test_loaded_module_is_plain_torch(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    loaded = load_subnet(export(extracted, space, tmp_path / "out").root)
    for m in loaded.modules():
        origin = type(m).__module__
        assert origin.startswith("torch.nn.") or origin == "supernet.nn.static", type(m)


def test_arch_json_holds_everything_to_rebuild(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path
) -> None:
    paths = export(extracted, space, tmp_path / "out", card={})
    doc = json.loads(paths.arch.read_text())
    assert Arch.from_dict(doc["arch"]) == ARCH
    assert spaces.from_dict(doc["space"]) == space
    assert (doc["num_classes"], doc["in_channels"]) == (CLASSES, CHANNELS)
    c = cost(space, ARCH, CLASSES, CHANNELS)
    assert doc["cost"] == {"macs": c.macs, "params": c.params}
    assert c.params == count_params(load_subnet(paths.root))


def test_export_of_another_arch_is_refused(space: SearchSpace, tmp_path: Path) -> None:
    other = random_supernet(space).extract(space.largest())
    with pytest.raises(ExportError, match="do not fit the given architecture"):
        export(other, space, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- ONNX --------------------------------------------------------------------------------------------


def test_onnx_matches_pytorch(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    paths = export(extracted, space, tmp_path / "out", onnx=True)
    assert verify_onnx(paths.root, atol=1e-4) <= 1e-4
    graph = onnx.load(str(paths.onnx)).graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("images", "logits")
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [
        CHANNELS,
        ARCH.resolution,
        ARCH.resolution,
    ]
    x = images(5)  # a batch size the export never saw
    session = ort.InferenceSession(str(paths.onnx), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(logits, extracted(x), rtol=0, atol=1e-4)


def test_verify_onnx_detects_a_mismatch(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    paths = export(extracted, space, tmp_path / "out", onnx=True, weights_format="torch")
    state = torch.load(paths.weights, weights_only=True)
    state["head.classifier.bias"] += 1.0
    torch.save(state, paths.weights)
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        verify_onnx(paths.root)


def test_verify_onnx_reports_a_corrupt_onnx_file(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    paths = export(extracted, space, tmp_path / "out", onnx=True)
    paths.onnx.write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match="onnxruntime cannot run .*model.onnx") as info:
        verify_onnx(paths.root)
    assert "\n" not in str(info.value)


def test_verify_onnx_needs_an_onnx_file(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    paths = export(extracted, space, tmp_path / "out", onnx=False)
    with pytest.raises(ExportError, match="without ONNX"):
        verify_onnx(paths.root)


# -- model card ---------------------------------------------------------------------------------------


def test_model_card_states_cost_accuracy_source_and_use(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path
) -> None:
    paths = export(extracted, space, tmp_path / "out", onnx=True)
    text = paths.card.read_text()
    c = cost(space, ARCH, CLASSES, CHANNELS)
    for needle in (
        "MACs",
        f"{c.macs:,}",
        f"{c.params:,}",
        "85.16%",
        "99.02%",
        "84.37%",
        "98.75%",  # val and test top-1 / top-5
        CARD["source"],
        CARD["checkpoint_id"],
        CARD["budget"],
        "supernet.load_subnet(",
        "onnxruntime",
        "model.onnx",
        "[0.286]",
        "[0.353]",
        f"(batch, {CHANNELS}, {ARCH.resolution}, {ARCH.resolution})",
    ):
        assert needle in text, needle
    doc = json.loads(paths.arch.read_text())
    assert doc["card"]["val"]["top1"] == 0.8516 and doc["input"]["mean"] == [0.286]


def test_model_card_without_measurements(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    text = export(extracted, space, tmp_path / "out", card={}).card.read_text()
    assert "Not measured." in text and "not recorded" in text and "onnxruntime" not in text


@pytest.mark.parametrize(
    ("card", "match"),
    [
        ({"top1": 0.9}, "unknown model card keys"),
        ({"mean": (0.1, 0.2)}, "one number per input channel"),
        ({"val": 0.9}, "EvalResult or a dict"),
    ],
)
def test_bad_card_is_refused_before_writing(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path, card: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        export(extracted, space, tmp_path / "out", card=card)
    assert not (tmp_path / "out").exists()


# -- the output directory ----------------------------------------------------------------------------


def test_non_empty_out_dir_is_refused(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty.*overwrit"):
        export(extracted, space, out)
    with pytest.raises(ExportError, match="not part of an export.*notes.txt"):
        export(extracted, space, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_out_dir_is_used(extracted: nn.Module, space: SearchSpace, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    load_subnet(export(extracted, space, tmp_path / "out").root)


def test_overwrite_replaces_a_previous_export(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    export(extracted, space, out, weights_format="torch")
    with pytest.raises(ExportError, match="not empty"):
        export(extracted, space, out)
    export(extracted, space, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "arch.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup folder left


def test_failure_leaves_no_partial_export(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    export(extracted, space, out, card={})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export(extracted, space, tmp_path / "fresh", onnx=True)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export(extracted, space, out, onnx=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- load errors ---------------------------------------------------------------------------------------


def test_missing_or_corrupt_exports_give_clear_errors(
    extracted: nn.Module, space: SearchSpace, tmp_path: Path
) -> None:
    def assert_error(path: Path, match: str) -> None:
        with pytest.raises(ExportError, match=match) as info:
            load_subnet(path)
        assert "\n" not in str(info.value)

    assert_error(tmp_path / "nowhere", "export directory .*nowhere not found")
    (tmp_path / "empty").mkdir()
    assert_error(tmp_path / "empty", "arch.json not found")

    paths = export(extracted, space, tmp_path / "st")
    paths.weights.write_bytes(b"\x00not safetensors at all")
    assert_error(paths.root, "model.safetensors is not a valid safetensors file")
    paths.weights.unlink()
    assert_error(paths.root, "model.safetensors not found")

    paths = export(extracted, space, tmp_path / "pt", weights_format="torch")
    paths.weights.write_bytes(b"garbage")
    assert_error(paths.root, "model.pt is not a weights-only torch file")
    torch.save(random_supernet(space).extract(space.smallest()).state_dict(), paths.weights)
    assert_error(paths.root, "model.pt does not match the architecture in arch.json")

    paths.arch.write_text("{ truncated")
    assert_error(paths.root, "arch.json cannot be read as JSON")
    paths.arch.write_text(json.dumps({"format": 1, "arch": {}}))
    assert_error(paths.root, "arch.json lacks")


# -- accuracy against the evaluator ------------------------------------------------------------------


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_loaded_accuracy_equals_the_evaluators(space: SearchSpace, tmp_path: Path) -> None:
    data = build_data("fashion_mnist", val_size=256, limit=512)
    evaluator = Evaluator(random_supernet(space, seed=1), data, 128, "test-run", recalibration_images=256)
    expected = evaluator.evaluate(ARCH, "val")
    paths = export(evaluator.extract(ARCH), space, tmp_path / "out", card={"val": expected})
    loaded = load_subnet(paths.root)
    got = accuracy(loaded, evaluator.split_batches("val"), ARCH.resolution, CLASSES)
    assert got.images == expected.images == 256
    assert (got.top1, got.top5) == (expected.top1, expected.top5)
    assert got.loss == pytest.approx(expected.loss, rel=1e-5)
    assert json.loads(paths.arch.read_text())["card"]["val"]["top1"] == expected.top1


# -- loading a trained run ---------------------------------------------------------------------------


def make_run(space: SearchSpace, root: Path, net: Supernet, config: dict | None = None) -> Path:
    state = {
        "config": {"kernel_transform": net.kernel_transform} if config is None else config,
        "space": space.to_dict(),
        "num_classes": CLASSES,
        "in_channels": CHANNELS,
        "model": net.state_dict(),
    }
    save_checkpoint(RunDir(root).latest, state)
    return root


@pytest.mark.parametrize("kernel_transform", [False, True])
def test_load_supernet_from_a_run_directory(
    space: SearchSpace, tmp_path: Path, kernel_transform: bool
) -> None:
    net = random_supernet(space, seed=2, kernel_transform=kernel_transform)
    run = make_run(space, tmp_path / "run", net)
    latest = RunDir(run).latest
    for source in (run, latest):
        loaded = load_supernet(source)
        assert loaded.checkpoint_path == latest
        assert loaded.checkpoint_id == checkpoint_digest(latest)
        assert loaded.space == space and (loaded.num_classes, loaded.in_channels) == (CLASSES, CHANNELS)
        # the saved config comes back validated, every default filled in
        assert loaded.config == config_from_dict({"kernel_transform": kernel_transform}).model_dump(mode="json")
        assert loaded.net.kernel_transform is kernel_transform and not loaded.net.training
        for key, value in net.state_dict().items():
            assert torch.equal(loaded.net.state_dict()[key], value), key
    x = images()
    with torch.no_grad():
        assert torch.equal(loaded.net.extract(ARCH).eval()(x), net.extract(ARCH).eval()(x))


def test_load_supernet_errors(space: SearchSpace, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="is not a run directory .it has neither config.yaml nor checkpoints/latest.pt"):
        load_supernet(tmp_path / "empty")
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {"model": {}})
    with pytest.raises(RunDirError, match="lacks"):
        load_supernet(bad)
    other = Supernet(space, CLASSES + 1, CHANNELS)  # a classifier of the wrong size
    make_run(space, tmp_path / "mismatch", other, config={})
    with pytest.raises(RunDirError, match="do not fit its saved search space"):
        load_supernet(tmp_path / "mismatch")


def test_card_lineage_and_before_are_recorded(space: SearchSpace, tmp_path: Path) -> None:
    """A fine-tuned network's card: its lineage (JSON values only) and the accuracy it started from."""
    arch = space.smallest()
    net = Supernet(space, 10, 1).extract(arch)
    lineage = {"method": "fine-tune", "from": "runs/x/export", "epochs": 1.0, "classes": None}
    card = {"test": {"top1": 0.5}, "before": {"top1": 0.25}, "lineage": lineage}
    export_subnet(net, space, arch, 10, 1, tmp_path / "e", card=card, onnx=False)
    doc = json.loads((tmp_path / "e" / "arch.json").read_text())["card"]
    assert doc["lineage"] == lineage and doc["before"] == {"top1": 0.25}
    text = (tmp_path / "e" / "MODEL_CARD.md").read_text()
    assert "- method: `fine-tune`" in text and "| test, before (the network it came from) | 25.00%" in text
    with pytest.raises(ValueError, match="JSON values"):
        export_subnet(net, space, arch, 10, 1, tmp_path / "f", card={"lineage": {"x": object()}}, onnx=False)
