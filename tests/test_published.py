"""Published supernets: OFA MobileNetV3 (w1.0, w1.2) and AttentiveNAS/AlphaNet checkpoints imported tensor for
tensor, checked against logits the original code computed (tests/fixtures/published, see generate.py there)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from supernet import spaces
from supernet.cli import main
from supernet.cost import cost
from supernet.exported import load_subnet
from supernet.published import (
    PUBLISHED_MODELS,
    PublishedFormatError,
    canonical_key,
    detect_format,
    import_checkpoint,
    ofa_arch,
    source_arch,
)
from supernet.runs import load_supernet
from supernet.search.latency import LatencyTable
from supernet.space import Arch

FIXTURES = Path(__file__).parent / "fixtures" / "published"
sys.path.insert(0, str(FIXTURES))
from weights_rule import decode, fixture_input, fixture_state, fixture_tensor

NAMES = ["ofa_mbv3_w1.0", "ofa_mbv3_w1.2", "attentivenas"]
PRESETS = {"ofa_mbv3_w1.0": "ofa_mbv3", "ofa_mbv3_w1.2": "ofa_mbv3_w12", "attentivenas": "alphanet"}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def rel_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def published_file(name: str, path: Path, legacy: bool = False) -> Path:
    """The fixture's source weights saved the way the authors distribute them.

    OFA: {"state_dict": ...} with the current code's names, or (legacy) the 2019 names (`mobile_inverted_conv`,
    single `bn.`/`conv.` wrappers); AttentiveNAS/AlphaNet: DDP's `module.` prefix plus optimizer and epoch.
    """
    f = fixture(name)
    state = fixture_state(f["keys"], f["seed"])
    if f["format"] == "attentivenas":
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 360,
                   "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0]}]}}
    elif legacy:
        payload = {"state_dict": {
            k.replace(".conv.", ".mobile_inverted_conv.", 1).replace(".bn.bn.", ".bn.").replace(".conv.conv.", ".conv.")
            if k.startswith("blocks.") else k: v for k, v in state.items()}}
    else:
        payload = {"state_dict": state}
    torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each fixture imported through the Python API (OFA w1.0 from its legacy key names)."""
    root = tmp_path_factory.mktemp("published")
    runs = {}
    for name in NAMES:
        source = published_file(name, root / f"{name}.pth", legacy=name == "ofa_mbv3_w1.0")
        resolutions = sorted({c["resolution"] for c in fixture(name)["cases"]})
        runs[name] = import_checkpoint(source, root / name, data_root=str(root), resolutions=resolutions).run_dir
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_imported_supernet_computes_the_source_networks_logits(imported: dict[str, Path], name: str) -> None:
    f = fixture(name)
    for key, values in f["values"].items():  # the weights were rebuilt exactly as generate.py made them
        index = [k for k, _ in f["keys"]].index(key)
        shape = dict(f["keys"])[key]
        assert fixture_tensor(key, shape, index, f["seed"]).flatten()[:6].tolist() == pytest.approx(values)
    run = load_supernet(imported[name])
    assert run.space.name == PRESETS[name] and run.num_classes == 1000
    saved = {k: v.clone() for k, v in run.net.state_dict().items()}
    for case in f["cases"]:
        arch = source_arch(f["format"], run.space, case["arch"])
        x = fixture_input(f["input_seed"], f["batch"], case["resolution"])
        net = run.net
        net.set_active(arch)
        with torch.no_grad():
            static = net.extract(arch).eval()(x)
            net.eval()
            dynamic_eval = net(x)
            net.train()
            dynamic_train = net(x)
        eval_ref = decode(case["eval"], static.shape)
        assert rel_error(static, eval_ref) < 1e-4, case["arch"]
        assert rel_error(dynamic_eval, eval_ref) < 1e-4, case["arch"]
        assert rel_error(dynamic_train, decode(case["train"], dynamic_train.shape)) < 1e-4, case["arch"]
        net.load_state_dict(saved)  # training mode moved the running statistics


def test_every_tensor_is_placed_or_named_unused(imported: dict[str, Path]) -> None:
    for name in NAMES:
        f = fixture(name)
        record = json.loads((imported[name] / "import.json").read_text())
        ours = load_supernet(imported[name]).net.state_dict()
        assert record["tensors"] == len(ours)
        assert record["tensors"] + len(record["unused"]) == len(f["keys"])
        if name == "attentivenas":  # only the BN tracking statistics no forward pass reads
            assert record["unused"] and all(".bn_tracking." in k for k in record["unused"])
            assert len(record["unused"]) == sum(".bn_tracking." in k for k, _ in f["keys"])
        else:
            assert record["unused"] == {}


def test_kernel_transforms_come_from_the_checkpoint(imported: dict[str, Path]) -> None:
    f = fixture("ofa_mbv3_w1.0")
    state = fixture_state(f["keys"], f["seed"])
    net = load_supernet(imported["ofa_mbv3_w1.0"]).net
    assert net.kernel_transform
    ours = net.state_dict()
    assert torch.equal(ours["stages.1.0.depthwise.transforms.to5"], state["blocks.1.conv.depth_conv.conv.7to5_matrix"])
    assert torch.equal(ours["stages.5.3.depthwise.transforms.to3"], state["blocks.20.conv.depth_conv.conv.5to3_matrix"])


def test_published_models_match_their_reported_mflops() -> None:
    space = spaces.get("alphanet")
    for name, model in PUBLISHED_MODELS.items():
        macs = cost(space, space.arch_from_attentivenas(model["arch"]), 1000).macs / 1e6
        assert macs == pytest.approx(model["mflops"], rel=0.005), name


def test_attentivenas_import_writes_the_published_archs(imported: dict[str, Path]) -> None:
    folder = imported["attentivenas"] / "archs"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(PUBLISHED_MODELS)
    a0 = json.loads((folder / "alphanet_a0.json").read_text())
    assert a0["resolution"] == 192 and a0["stem_width"] == 16 and a0["head_width"] == 1792
    assert a0["depths"] == [1, 3, 3, 3, 3, 3, 1] and a0["blocks"][5] == [[3, 6]] * 3


def test_ofa_arch_reads_only_the_active_block_slots() -> None:
    space = spaces.get("ofa_mbv3")
    ks = [3, 5, 7, 7] * 5
    arch = ofa_arch(space, {"ks": ks, "e": [4] * 20, "d": [2, 3, 4, 2, 2], "r": [160]})
    assert arch.resolution == 160 and arch.depths == (1, 2, 3, 4, 2, 2)
    assert arch.blocks[2] == ((3, 4), (5, 4), (7, 4)) and arch.blocks[0] == ((3, 1),)
    with pytest.raises(ValueError, match="'ks' must be a list of 20"):
        ofa_arch(space, {"ks": [3], "e": [4] * 20, "d": [2] * 5, "r": 160})


def test_canonical_keys_read_both_ofa_generations_and_ddp_alike() -> None:
    new = "blocks.1.conv.depth_conv.conv.conv.weight"
    old = "module.blocks.1.mobile_inverted_conv.depth_conv.conv.weight"
    assert canonical_key(new) == canonical_key(old) == "blocks.1.conv.depth_conv.conv.weight"
    assert canonical_key("first_conv.bn.bn.running_var") == "first_conv.bn.running_var"
    assert canonical_key("blocks.3.conv.depth_conv.conv.7to5_matrix") == "blocks.3.conv.depth_conv.conv.7to5_matrix"


def tiny(keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(1) for k in keys}


@pytest.mark.parametrize(("keys", "needle"), [
    (["input_stem.0.conv.weight", "blocks.0.conv1.conv.weight", "classifier.linear.weight"], "OFA ResNet50"),
    (["first_conv.conv.weight", "blocks.0.conv.depth_conv.conv.weight", "feature_mix_layer.conv.weight",
      "classifier.linear.weight"], "OFA ProxylessNAS"),
    (["first_conv.conv.weight", "final_expand_layer.conv.weight", "feature_mix_layer.conv.weight",
      "classifier.linear.weight"], "specialised sub-network"),
    (["last_conv.conv.weight", "blocks.0.shortcut.conv.weight"], "without the MobileNetV3 head"),
    (["fc.weight", "conv1.weight"], "not a checkpoint of a supported supernet"),
])
def test_foreign_checkpoints_are_named(keys: list[str], needle: str) -> None:
    with pytest.raises(PublishedFormatError, match=needle):
        detect_format(tiny(keys))


def test_detects_both_formats(imported: dict[str, Path]) -> None:
    for name in NAMES:
        f = fixture(name)
        assert detect_format({canonical_key(k): torch.zeros(1) for k, _ in f["keys"]}) == f["format"]


def test_missing_extra_and_misshaped_tensors_are_errors_naming_them(tmp_path: Path) -> None:
    f = fixture("ofa_mbv3_w1.0")
    state = fixture_state(f["keys"], f["seed"])

    def attempt(broken: dict[str, torch.Tensor], needle: str) -> None:
        torch.save({"state_dict": broken}, tmp_path / "broken.pth")
        with pytest.raises(PublishedFormatError, match=needle):
            import_checkpoint(tmp_path / "broken.pth", tmp_path / "run", data_root=str(tmp_path))
        assert not (tmp_path / "run").exists()  # nothing written for a refused checkpoint

    attempt({k: v for k, v in state.items() if k != "blocks.7.conv.point_linear.conv.conv.weight"},
            r"lacks 1 tensor\(s\).*'stages.2.2.project.weight'")
    attempt({**state, "blocks.7.conv.extra.weight": torch.zeros(3)}, r"'blocks.7.conv.extra.weight' has no place")
    attempt({**state, "blocks.99.conv.point_linear.conv.weight": torch.zeros(3)}, r"'blocks.99")
    bad = dict(state)
    bad["blocks.7.conv.point_linear.conv.conv.weight"] = torch.zeros(40, 100, 1, 1)
    attempt(bad, r"'blocks.7.conv.point_linear.conv.weight' has shape \(40, 100, 1, 1\).*\(40, 240, 1, 1\)")
    old_torch = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # saved before 0.4.1
    torch.save({"state_dict": old_torch}, tmp_path / "old.pth")
    import_checkpoint(tmp_path / "old.pth", tmp_path / "old", data_root=str(tmp_path))
    record = json.loads((tmp_path / "old" / "import.json").read_text())
    assert record["tensors"] == len(old_torch) and len(record["filled"]) == len(state) - len(old_torch) > 0
    other_width = dict(state)
    other_width["first_conv.conv.weight"] = torch.zeros(32, 3, 3, 3)
    attempt(other_width, "stem width 32: only w1.0")


def test_unreadable_and_wrong_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")

    # training scripts that pickle their argparse options: weights-only loading refuses any Python object
    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "pickled.pth")
    f = fixture("ofa_mbv3_w1.0")
    torch.save({"state_dict": fixture_state(f["keys"], f["seed"])}, tmp_path / "ofa.pth")
    cases = [
        (["import", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "r1"), "--data-root", "."], "not found"),
        (["import", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "r2"), "--data-root", "."], "weights-only"),
        (["import", str(tmp_path / "pickled.pth"), "--out", str(tmp_path / "r3"), "--data-root", "."],
         "weights-only"),
        (["import", str(tmp_path / "ofa.pth"), "--format", "attentivenas", "--out", str(tmp_path / "r4"),
          "--data-root", "."], "looks like a ofa_mbv3 checkpoint; pass --format ofa_mbv3"),
        (["import", str(tmp_path / "ofa.pth"), "--out", str(tmp_path / "r5")], "give --data-root"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not Path(argv[argv.index("--out") + 1]).exists()


def test_import_refuses_a_used_directory_and_replaces_with_force(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = published_file("ofa_mbv3_w1.2", tmp_path / "w12.pth")
    out = tmp_path / "run"
    (out / "search").mkdir(parents=True)
    (out / "search" / "front.json").write_text("{}")
    argv = ["import", str(source), "--out", str(out), "--data-root", str(tmp_path)]
    assert main(argv) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert main([*argv, "--force", "--resolutions", "224,160"]) == 0
    assert "ofa_mbv3_w12" in capsys.readouterr().out
    assert (out / "search" / "front.json").read_text() == "{}"  # --force keeps searches and exports
    run = load_supernet(out)
    assert run.space.spec.resolutions == [160, 224] and run.config["data"]["root"] == str(tmp_path)
    assert main(["train", "--resume", str(out)]) == 2
    assert "published supernet read in by `supernet import`" in capsys.readouterr().err


def write_imagenet_like(root: Path, classes: int = 1000) -> Path:
    """An ImageFolder tree with ImageNet's 1000 classes, one tiny image each, and a 4-image val/."""
    rng = np.random.default_rng(0)
    for split, names in (("train", range(classes)), ("val", range(4))):
        for c in names:
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "0.png")
    return root


def test_imported_run_searches_under_latency_exports_and_reports(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = write_imagenet_like(tmp_path / "imagenet")
    source = published_file("ofa_mbv3_w1.0", tmp_path / "ofa_mbv3_d234_e346_k357_w1.0")
    run, table = tmp_path / "run", tmp_path / "table.json"
    assert main(["import", str(source), "--out", str(run), "--data-root", str(data), "--resolutions", "128",
                 "--set", "data.val_size=4", "--set", "data.image_size=128", "--set", "data.eval_batch_size=4",
                 "--set", "data.batch_size=4"]) == 0
    assert main(["latency", str(run), "--out", str(table), "--warmup", "0", "--repeats", "1", "--held-out", "0"]) == 0
    capsys.readouterr()
    lat = LatencyTable.load(table)
    space = load_supernet(run).space
    budget = (lat.predict(space.smallest()) + lat.predict(space.largest())) / 2
    search = run / "search"
    assert main(["search", str(run), "--population", "4", "--iterations", "1", "--mutations", "2", "--crossovers",
                 "2", "--parents", "2", "--recal-images", "8", "--latency-table", str(table), "--constraint",
                 f"latency<={budget:.6f}ms", "--no-progress"]) == 0
    front = json.loads((search / "front.json").read_text())
    assert front["front"] and all(lat.predict(Arch.from_dict(m["arch"])) <= budget for m in front["front"])
    export = tmp_path / "export"
    assert main(["export", str(run), "--from-front", str(search), "--budget", "macs<=600e6", "--out", str(export),
                 "--recal-images", "8"]) == 0
    report = tmp_path / "report"
    assert main(["report", str(run), str(search), str(export), "--out", str(report)]) == 0
    html = (report / "index.html").read_text()
    assert "was imported from" in html and "ofa_mbv3" in html
    finetuned = tmp_path / "finetune"
    assert main(["finetune", str(export), "--epochs", "1", "--max-steps", "1", "--out", str(finetuned),
                 "--no-progress"]) == 0
    assert "settings from" in capsys.readouterr().err and (finetuned / "checkpoints" / "latest.pt").is_file()

    # the export reproduces the source network's logits: in training mode BN uses the batch's statistics,
    # so the recalibrated running statistics do not enter and the export must equal the original code
    f = fixture("ofa_mbv3_w1.0")
    case = next(c for c in f["cases"] if c["resolution"] == 128)
    arch_file = tmp_path / "smallest.json"
    arch = source_arch("ofa_mbv3", space, case["arch"])
    arch_file.write_text(json.dumps(arch.to_dict()))
    exported = tmp_path / "smallest_export"
    assert main(["export", str(run), "--arch", str(arch_file), "--out", str(exported), "--recal-images", "8",
                 "--no-onnx"]) == 0
    net = load_subnet(exported).train()
    x = fixture_input(f["input_seed"], f["batch"], 128)
    with torch.no_grad():
        assert rel_error(net(x), decode(case["train"], (f["batch"], 1000))) < 1e-4


def test_attentivenas_run_evaluates_a_published_model(imported: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = write_imagenet_like(tmp_path / "imagenet")
    source = published_file("attentivenas", tmp_path / "alphanet_pretrained.pth.tar")
    run = tmp_path / "run"
    assert main(["import", str(source), "--format", "attentivenas", "--out", str(run), "--data-root", str(data),
                 "--resolutions", "192,200", "--set", "data.val_size=4", "--set", "data.image_size=192",
                 "--set", "data.eval_batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert "AttentiveNAS / AlphaNet" in out and "alphanet_a0" in out
    assert main(["eval", str(run), "--arch", str(run / "archs" / "alphanet_a0.json"), "--recal-images", "8",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["macs"] == pytest.approx(203e6, rel=0.005)
    # at 200 px strided blocks see odd sides, where AttentiveNAS's zero-padded shortcut pooling differs from
    # ceil-mode pooling: the ONNX export (checked against PyTorch inside `export`) must pool the same way
    a0_200 = tmp_path / "a0_200.json"
    a0_200.write_text(json.dumps(json.loads((run / "archs" / "alphanet_a0.json").read_text()) | {"resolution": 200}))
    assert main(["export", str(run), "--arch", str(a0_200), "--out", str(tmp_path / "a0"), "--recal-images", "8"]) == 0
    assert "ONNX max |diff|" in capsys.readouterr().out
