"""The report: HTML page + PNG plots from fake run directories and front.json files."""

from __future__ import annotations

import itertools
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from supernet.report import (
    ACCURACY_PLOT,
    COST_PLOT,
    CURVES_PLOT,
    ReportError,
    Style,
    accuracy_figure,
    load_run,
    load_search,
    split_inputs,
    write_report,
)

RECIPES = {
    "bignas_kl": ("sandwich", "inplace", "kl", "shrink_from_start"),
    "deps_alpha": ("sandwich", "inplace", "adaptive_alpha", "delayed_eps"),
}


def make_run(
    root: Path, recipe: tuple[str, str, str, str], *, evals: bool = True, quality: float = 0.0
) -> Path:
    """A run directory with config.yaml and metrics.jsonl (two epochs, a torn last line)."""
    root.mkdir(parents=True)
    sampler, teacher, divergence, schedule = recipe
    config = {
        "seed": 0,
        "space": "fmnist",
        "data": {"name": "fashion_mnist"},
        "optim": {"lr": 0.2},
        "train": {"epochs": 2},
        "sampler": {"name": sampler, "num_random": 2},
        "teacher": {"name": teacher},
        "distill": {"divergence": divergence},
        "schedule": {"name": schedule},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for step in range(1, 41, 4):
        macs = step * 2.5e10 * (1 + 20 * quality)
        lines.append(
            {
                "kind": "train",
                "step": step,
                "epoch": 1 + step // 20,
                "phase": "train",
                "lr": 0.1,
                "eps": 1.0,
                "loss": 2.0 / step**0.3,
                "loss_full": None if step == 5 else (1.8 - 5 * quality) / step**0.3,
                "loss_students": 0.5,
                "networks": 4,
                "train_macs": macs,
                "wall_time": step * 3.0,
                "skipped_steps": int(step > 5),
            }
        )
        if evals and step in (17, 37):
            epoch = 1 if step == 17 else 2
            lines.append(
                {
                    "kind": "eval",
                    "step": step + 3,
                    "epoch": epoch,
                    "smallest_top1": 0.70 + 0.05 * epoch + quality,
                    "largest_top1": 0.80 + 0.04 * epoch + quality,
                    "smallest_loss": 0.9,
                    "largest_loss": 0.6,
                    "train_macs": macs * (step + 3) / step,
                    "wall_time": (step + 3) * 3.0,
                }
            )
    (root / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st'
    )
    return root


def candidate(macs: int, val: float, test: float | None) -> dict[str, Any]:
    return {
        "arch": {"resolution": 28, "widths": [8, 16], "depths": [1, 2]},
        "macs": macs,
        "params": macs // 40,
        "latency_ms": None,
        "val_top1": val,
        "test_top1": test,
        "test_top5": None if test is None else test + 0.1,
    }


def best_of(candidates: list[dict[str, Any]], low: int, high: int) -> dict[str, Any] | None:
    """The most accurate candidate with low <= MACs < high."""
    inside = [c for c in candidates if low <= c["macs"] < high]
    return max(inside, key=lambda c: c["val_top1"]) if inside else None


def make_search(root: Path, run_dir: Path, *, offset: float, with_test: bool) -> Path:
    """A search directory whose front.json names `run_dir`."""
    root.mkdir(parents=True)
    evaluated = [
        candidate(
            1_000_000 + 150_000 * i,
            0.70 + offset + 0.01 * (i % 7) + 0.002 * i,
            (0.69 + offset + 0.002 * i) if with_test else None,
        )
        for i in range(40)
    ]
    front = [
        c
        for c in evaluated
        if not any(o["macs"] <= c["macs"] and o["val_top1"] > c["val_top1"] for o in evaluated)
    ]
    edges = [1_000_000 + 1_200_000 * k for k in range(7)]  # six buckets, the last one empty
    buckets = [
        {"low": lo, "high": hi, "best": best_of(evaluated, lo, hi)} for lo, hi in itertools.pairwise(edges)
    ]
    data = {
        "format": 1,
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / "checkpoints/latest.pt"),
        "space": "fmnist",
        "num_classes": 10,
        "cost": "macs",
        "constraints": ["macs<=7e6"],
        "front": front,
        "evaluated": evaluated,
        "buckets": buckets,
        "mean_pareto_accuracy": 0.7654 + offset,
        "smallest": evaluated[0],
        "largest": evaluated[-1],
        "budgets": [
            {"budget": "macs<=3e6", "best": best_of(evaluated, 0, 3_000_001)},
            {"budget": "macs<=1e5", "best": None},
        ],
        "search": {"evaluations": 40, "generations": 3, "wall_time": 12.5, "predictor": None},
    }
    (root / "front.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    runs = [
        make_run(tmp_path / "runs" / name, recipe, quality=0.01 * i)
        for i, (name, recipe) in enumerate(RECIPES.items())
    ]
    searches = [
        make_search(tmp_path / "search" / run.name, run, offset=0.02 * i, with_test=i == 0)
        for i, run in enumerate(runs)
    ]
    return runs, searches


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_files_exist_and_html_references_every_plot(tmp_path: Path, two_runs) -> None:
    runs, searches = two_runs
    index = write_report(runs, searches, tmp_path / "report")
    assert index == tmp_path / "report" / "index.html"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == sorted([ACCURACY_PLOT, CURVES_PLOT, COST_PLOT])
    page = index.read_text()
    for name in pngs:
        width, height = png_size(index.parent / name)
        assert width >= 400 and height >= 300
        assert (index.parent / name).stat().st_size > 10_000
        assert f'<img src="{name}"' in page
    assert not re.search(r"<script|https?://", page), "the page must be self-contained"
    assert not list(index.parent.glob(".*.tmp")), "atomic writes leave no temporary files"


def test_html_holds_runs_buckets_and_mean_pareto_accuracy(tmp_path: Path, two_runs) -> None:
    runs, searches = two_runs
    page = write_report(runs, searches, tmp_path / "report", title="KL vs adaptive alpha").read_text()
    assert "<title>KL vs adaptive alpha</title>" in page
    assert "bignas_kl: sandwich/inplace/kl/shrink_from_start" in page
    assert "deps_alpha: sandwich/inplace/adaptive_alpha/delayed_eps" in page
    assert "76.54%" in page and "78.54%" in page  # mean Pareto accuracy of each search
    assert "1 M – 2.2 M" in page and "7 M – 8.2 M" in page and "no sub-network in range" in page
    for search in searches:
        for bucket in json.loads((search / "front.json").read_text())["buckets"]:
            if bucket["best"] is not None:
                best = bucket["best"]
                assert f"{best['macs'] / 1e6:.4g} M" in page and f"{100 * best['val_top1']:.2f}%" in page
                assert best["test_top1"] is None or f"{100 * best['test_top1']:.2f}%" in page
    assert page.count("<h4>Best sub-network per MACs bucket</h4>") == 2
    assert "macs&lt;=3e6" in page and "none meets the budget" in page
    assert "measured no test accuracy" in page  # the second search has none
    assert "81.00%" in page and "89.00%" in page  # final smallest / largest val top-1 of the second run
    assert "2.0 min (training steps only)" in page  # no elapsed counter logged: time inside steps, said so


def test_several_runs_overlaid_in_the_front_plot(two_runs) -> None:
    _, searches = two_runs
    loaded = [load_search(s) for s in searches]
    styles = [
        Style("a: sandwich/inplace/kl/shrink_from_start", "#1f77b4"),
        Style("b: sandwich/inplace/adaptive_alpha/delayed_eps", "#ff7f0e"),
    ]
    fig = accuracy_figure(list(zip(loaded, styles, strict=True)), [])
    assert fig is not None
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[:2] == [s.label for s in styles]
    assert "evaluated sub-networks" in texts and "test top-1 of front members" in texts


def test_run_without_evals_still_reports(tmp_path: Path) -> None:
    run = make_run(tmp_path / "noeval", RECIPES["bignas_kl"], evals=False)
    index = write_report([run, tmp_path / "noeval"], [], tmp_path / "report")
    page = index.read_text()
    assert page.count("<td>noeval</td>") == 1, "a run given twice is reported once"
    assert {p.name for p in index.parent.glob("*.png")} == {CURVES_PLOT, COST_PLOT}
    assert f'<img src="{ACCURACY_PLOT}"' not in page
    assert "no evaluation records" in page and "No search given" in page
    assert "smallest: last per-epoch val top-1" in page and "—" in page


def test_search_alone_pulls_in_its_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs" / "deps_alpha", RECIPES["deps_alpha"])
    search = make_search(tmp_path / "search", run, offset=0.0, with_test=True)
    page = write_report([], [search], tmp_path / "report").read_text()
    assert "deps_alpha: sandwich/inplace/adaptive_alpha/delayed_eps" in page
    assert "was added because search" in page and f'<img src="{COST_PLOT}"' in page


def test_stale_plots_are_removed_and_text_is_escaped(tmp_path: Path, two_runs) -> None:
    runs, searches = two_runs
    out = tmp_path / "report"
    write_report(runs, searches, out)
    page = write_report(runs[:1], [], out, title="<b>x & y</b>").read_text()
    assert not (out / ACCURACY_PLOT).exists()
    assert "&lt;b&gt;x &amp; y&lt;/b&gt;" in page and "<b>x" not in page


def test_missing_inputs_give_clear_errors(tmp_path: Path, two_runs) -> None:
    runs, _ = two_runs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match=r"empty has no metrics\.jsonl; train first"):
        write_report([empty], [], tmp_path / "report")
    with pytest.raises(ReportError, match=r"empty has no front\.json; run `supernet search`"):
        write_report(runs, [empty], tmp_path / "report")
    with pytest.raises(ValueError, match="nothing to report"):
        write_report([], [], tmp_path / "report")
    (empty / "front.json").write_text('{"format": 1, "front": [')
    with pytest.raises(ReportError, match="not valid JSON"):
        load_search(empty)
    (empty / "front.json").write_text(
        '{"format": 1, "front": [{"macs": 1}], "evaluated": [], "buckets": [], "mean_pareto_accuracy": 0.5}'
    )
    with pytest.raises(ReportError, match=r"front\[0\] is not a sub-network record"):
        load_search(empty)
    with pytest.raises(ReportError, match="is a file"):
        write_report(runs, [], runs[0] / "config.yaml")
    assert not (tmp_path / "report").exists()


def test_load_run_ignores_torn_line_and_split_inputs(two_runs) -> None:
    runs, searches = two_runs
    info = load_run(runs[0])
    assert len(info.train) == 10 and len(info.evals) == 2
    assert info.latest("wall_time") == 120.0
    assert split_inputs([searches[1], runs[0]]) == ([runs[0]], [searches[1]], [])
    with pytest.raises(ReportError, match="neither a run directory"):
        split_inputs([runs[0].parent])


def test_every_accuracy_names_its_split_and_images_and_the_page_shows_data_time_exports(tmp_path: Path) -> None:
    from supernet.report import arch_text, load_run, loss_names

    run = make_run(tmp_path / "run", RECIPES["deps_alpha"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update({"val_size": 5000, "limit": 20000})
    config["optim"]["label_smoothing"] = 0.1
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with (run / "metrics.jsonl").open("a") as fh:  # after the torn line: a newer run's eval record
        fh.write('\n{"kind": "eval", "step": 44, "epoch": 3, "smallest_top1": 0.5, "largest_top1": 0.85, '
                 '"val_images": 128, "elapsed": 600.0, "wall_time": 420.0, "train_macs": 4e12, '
                 '"gradient_macs": 3e12, "teacher_macs": 1e12}\n')
    search = make_search(tmp_path / "search", run, offset=0.0, with_test=True)
    front = json.loads((search / "front.json").read_text())
    front["images"] = {"val": 5000, "test": 10000}
    arch = {"resolution": 28, "stem_width": 16, "widths": [16, 32], "depths": [2, 1], "kernels": [[3, 5], [3]],
            "expand_ratios": [[4, 6], [3]], "head_width": 128}
    front["smallest"]["arch"] = arch
    (search / "front.json").write_text(json.dumps(front))
    export = tmp_path / "export"
    export.mkdir()
    (export / "arch.json").write_text(json.dumps({
        "format": 1, "arch": arch, "onnx": "model.onnx", "cost": {"macs": 2_500_000, "params": 60_000},
        "card": {"budget": "macs<=3M", "source": str(run), "val": {"top1": 0.83, "images": 5000},
                 "test": {"top1": 0.82, "images": 10000}},
    }))
    page = write_report([run], [search], tmp_path / "report", export_dirs=[export]).read_text()
    assert "85.00% <small>(128 val images)</small>" in page  # per-epoch evaluation on a subset, said so
    assert "(5000 val images)" in page and "(10000 test images)" in page  # the search's figures
    assert "val top-1 (5000 images)" in page and "test top-1 (10000 images)" in page
    assert "fashion_mnist, limit 20000, val 5000 held out of train" in page
    assert "10.0 min" in page and "training steps only" not in page  # run time: everything the run spent
    assert "<h2>Exported models</h2>" in page and "macs&lt;=3M" in page and "82.00% <small>(10000 test images)" in page
    readable = "28px · stem 16 · [d2 w16 k3,5 e4,6] [d1 w32 k3 e3] · head 128"
    assert arch_text(arch) == readable and readable in page
    assert loss_names(load_run(run)) == ("cross-entropy (label smoothing 0.1)", "adaptive_alpha to the inplace teacher")
    assert arch_text({"width": [1]}) == '{"width":[1]}'  # a dict of another shape stays readable JSON
    assert "training TMACs (every pass)" in page and ">4<" in page  # the total of all passes
    assert (tmp_path / "report" / COST_PLOT).stat().st_size > 10_000
