"""Report: an HTML page with PNG plots comparing training runs and the Pareto fronts searched from them."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from supernet.fileio import atomic_write_bytes, atomic_write_text
from supernet.search.front_file import FrontFileError, read_front
from supernet.search.pareto import READINGS
from supernet.space import Arch, ArchError
from supernet.training.metrics import PASS_KINDS, read_metrics_checked

ACCURACY_PLOT = "accuracy_vs_macs.png"
CURVES_PLOT = "training_curves.png"
COST_PLOT = "training_cost.png"
DIAGNOSTICS_PLOT = "teacher_and_diversity.png"
PLOTS = (ACCURACY_PLOT, CURVES_PLOT, COST_PLOT, DIAGNOSTICS_PLOT)
_LINESTYLES = ("-", "--", ":", "-.")
_MISSING = "—"
EXPORT_DOC = "arch.json"  # what `supernet export` writes beside the weights (supernet.export.ARCH_FILE)


class ReportError(ValueError):
    """A report input is missing or malformed."""


@dataclass(frozen=True)
class RunInfo:
    """One training run: its name, recipe (None without config.yaml) and metrics records."""

    root: Path
    name: str
    recipe: tuple[str, str, str, str] | None
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    config: dict[str, Any] | None = None
    skipped_lines: tuple[int, ...] = ()
    imported: dict[str, Any] | None = None  # the `supernet import` record of a published supernet

    def untrained_note(self, what: str) -> str:
        """Why this run has no `what` (curves, loss curve, training cost): imported, or not trained yet."""
        if self.imported is not None:
            return (f"Run {self.name} was imported from {self.imported.get('checkpoint', 'a checkpoint')} "
                    f"({self.imported.get('format', '?')}); it was trained elsewhere, so it has no {what} here.")
        return f"Run {self.name} has no training records yet; it has no {what}."

    @property
    def label(self) -> str:
        """'<run name>: <sampler>/<teacher>/<divergence>/<schedule>'."""
        return _label(self.name, self.recipe)

    def latest(self, key: str) -> float | None:
        """The largest logged value of a cumulative counter (wall_time, train_macs), None if never logged."""
        values = [r[key] for r in self.train + self.evals if isinstance(r.get(key), (int, float))]
        return max(values) if values else None

    def run_time(self) -> tuple[float | None, bool]:
        """Seconds the whole run took (evaluation and checkpoints included) and whether that was logged.

        Runs from before the `elapsed` counter logged only the time inside training steps; that is
        returned with False so the page can say so.
        """
        elapsed = self.latest("elapsed")
        return (elapsed, True) if elapsed is not None else (self.latest("wall_time"), False)

    def setting(self, section: str, key: str) -> Any:
        """A value of the run's config.yaml, None when absent."""
        value = (self.config or {}).get(section)
        return value.get(key) if isinstance(value, dict) else None


@dataclass(frozen=True)
class SearchInfo:
    """One search directory: its name, the run directory its front.json names, and the parsed front.json."""

    root: Path
    name: str
    run_dir: Path | None
    data: dict[str, Any]


@dataclass(frozen=True)
class Style:
    """How one run or search is drawn: legend label, colour, line style."""

    label: str
    colour: str
    linestyle: str = "-"


def _label(name: str, recipe: tuple[str, str, str, str] | None) -> str:
    return f"{name}: {'/'.join(recipe)}" if recipe else name


def read_run_config(config_path: Path) -> dict[str, Any] | None:
    """A run's config.yaml as a mapping; None if the file is absent."""
    if not config_path.is_file():
        return None
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ReportError(
            f"{config_path} is not valid YAML ({err}); restore the config the run wrote".replace("\n", " ")
        ) from None
    if not isinstance(config, dict):
        raise ReportError(f"{config_path} does not hold a config mapping; restore the config the run wrote")
    return config


def read_recipe(config_path: Path) -> tuple[str, str, str, str] | None:
    """(sampler, teacher, divergence, schedule) names from a run's config.yaml; None if the file is absent."""
    config = read_run_config(config_path)
    return None if config is None else _recipe_of(config)


def _recipe_of(config: dict[str, Any]) -> tuple[str, str, str, str]:
    """(sampler, teacher, divergence, schedule) names of a config mapping ('?' where absent)."""

    def name(section: str, key: str) -> str:
        value = config.get(section)
        return str(value.get(key, "?")) if isinstance(value, dict) else "?"

    return (
        name("sampler", "name"),
        name("teacher", "name"),
        name("distill", "divergence"),
        name("schedule", "name"),
    )


def load_run(path: str | Path) -> RunInfo:
    """Read a run directory's recipe and metrics; ReportError if it has no metrics.jsonl."""
    root = Path(path)
    if not (root / "metrics.jsonl").is_file():
        raise ReportError(
            f"run directory {root} has no metrics.jsonl; train first "
            f"(`supernet train CONFIG --out {root}`) or pass the directory a run wrote"
        )
    records, skipped = read_metrics_checked(root / "metrics.jsonl")

    def by_step(kind: str) -> list[dict[str, Any]]:
        return sorted((r for r in records if r.get("kind") == kind), key=lambda r: r.get("step", 0))

    config = read_run_config(root / "config.yaml")
    imports = by_step("import")
    return RunInfo(
        root, root.resolve().name, None if config is None else _recipe_of(config), by_step("train"),
        by_step("eval"), config, tuple(skipped), imports[-1] if imports else None,
    )


def load_search(path: str | Path) -> SearchInfo:
    """Read and check a search directory's front.json; ReportError if it is missing or malformed."""
    root = Path(path)
    try:
        data = read_front(root)
    except FrontFileError as err:
        raise ReportError(str(err)) from None
    run_dir = Path(data["run_dir"]) if isinstance(data.get("run_dir"), str) else None
    return SearchInfo(root, root.resolve().name, run_dir, data)


@dataclass(frozen=True)
class ExportInfo:
    """One export directory of `supernet export`: its arch.json description."""

    root: Path
    doc: dict[str, Any]


def load_export(path: str | Path) -> ExportInfo:
    """Read an export directory's arch.json (no weights are loaded); ReportError if it is not one."""
    root = Path(path)
    doc_path = root / EXPORT_DOC
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"{root} has no {EXPORT_DOC}; pass a directory written by `supernet export`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{doc_path} cannot be read as JSON ({err}); re-export it with `supernet export`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("arch"), dict):
        raise ReportError(f"{doc_path} is not a supernet export description; re-export it with `supernet export`")
    return ExportInfo(root, doc)


def split_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """Sort directories into runs (metrics.jsonl), searches (front.json) and exports (arch.json)."""
    runs, searches, exports = [], [], []
    for p in map(Path, paths):
        is_search, is_run = (p / "front.json").is_file(), (p / "metrics.jsonl").is_file()
        is_export = (p / EXPORT_DOC).is_file()
        if not (is_search or is_run or is_export):
            raise ReportError(
                f"{p} is neither a run directory (metrics.jsonl), a search directory (front.json) nor an export "
                f"({EXPORT_DOC}); train with `supernet train`, search with `supernet search` or export first"
            )
        if is_run:
            runs.append(p)
        if is_search:
            searches.append(p)
        if is_export:
            exports.append(p)
    return runs, searches, exports


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _link_searches(
    runs: list[RunInfo], searches: list[SearchInfo], notes: list[str]
) -> tuple[list[RunInfo], list[int | None]]:
    """Attach each search to its run (same path, else a unique name), loading runs that were not given."""
    runs = list(runs)
    owners: list[int | None] = []
    for s in searches:
        owner = None
        if s.run_dir is not None:
            owner = next((i for i, r in enumerate(runs) if _same_dir(r.root, s.run_dir)), None)
            if owner is None:
                same_name = [i for i, r in enumerate(runs) if r.root.resolve().name == s.run_dir.name]
                owner = same_name[0] if len(same_name) == 1 else None
            if owner is None and (s.run_dir / "metrics.jsonl").is_file():
                runs.append(load_run(s.run_dir))
                owner = len(runs) - 1
                notes.append(f"Run {s.run_dir} was added because search {s.name} names it.")
        if owner is None:
            notes.append(
                f"Search {s.name}: its run ({s.run_dir or 'not named'}) was not given and was not found, "
                "so its training curves and cost are not shown."
            )
        owners.append(owner)
    return runs, owners


def _unique_names(runs: list[RunInfo]) -> list[RunInfo]:
    """Runs with distinct display names (parent/name where base names collide)."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    out = []
    for i, r in enumerate(runs):
        name = r.name if counts[r.name] == 1 else f"{r.root.resolve().parent.name}/{r.name}"
        if any(name == o.name for o in out):
            name = f"{name} #{i + 1}"
        out.append(replace(r, name=name))
    return out


def _styles(
    runs: list[RunInfo], searches: list[SearchInfo], owners: list[int | None]
) -> tuple[list[Style], list[Style]]:
    """One colour per run, shared by its searches (told apart by line style); other searches get their own."""
    palette = colormaps["tab10"]
    run_styles = [Style(r.label, to_hex(palette(i % 10))) for i, r in enumerate(runs)]
    per_run = [owners.count(i) for i in range(len(runs))]
    seen = [0] * len(runs)
    search_styles, extra = [], len(runs)
    for s, owner in zip(searches, owners, strict=True):
        if owner is None:
            recipe = None
            if s.run_dir is not None:
                try:
                    recipe = read_recipe(s.run_dir / "config.yaml")
                except ReportError:
                    recipe = None
            name = s.run_dir.name if s.run_dir is not None else s.name
            search_styles.append(Style(f"{_label(name, recipe)} [{s.name}]", to_hex(palette(extra % 10))))
            extra += 1
            continue
        label = run_styles[owner].label + (f" [{s.name}]" if per_run[owner] > 1 else "")
        style = _LINESTYLES[seen[owner] % len(_LINESTYLES)]
        seen[owner] += 1
        search_styles.append(Style(label, run_styles[owner].colour, style))
    return run_styles, search_styles


def _macs_unit(largest: float) -> tuple[float, str]:
    """The scale and prefix (K, M, G) that suit MACs counts up to `largest`."""
    return (1e9, "G") if largest >= 1e9 else (1e6, "M") if largest >= 1e6 else (1e3, "K")


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # explicit Agg canvas: no pyplot, no global backend state
    return fig


def accuracy_figure(searches: Sequence[tuple[SearchInfo, Style]], notes: list[str]) -> Figure | None:
    """Val top-1 vs MACs: every evaluated sub-network as a faint point and each front as a step line."""
    items = [(s, st) for s, st in searches if s.data["front"] or s.data["evaluated"]]
    notes.extend(
        f"Search {s.name} has no evaluated sub-networks; it is not plotted."
        for s, _ in searches
        if not (s.data["front"] or s.data["evaluated"])
    )
    if not items:
        return None
    fig = new_figure(8.5, 5.5)
    ax = fig.add_subplot()
    any_test = False
    all_macs = [c["macs"] for s, _ in items for c in s.data["front"] + s.data["evaluated"]]
    scale, unit = _macs_unit(max(all_macs, default=0))
    for s, st in items:
        evaluated = [c for c in s.data["evaluated"] if isinstance(c.get("val_top1"), (int, float))]  # DNA ranks most
        ax.scatter(
            [c["macs"] / scale for c in evaluated],
            [100 * c["val_top1"] for c in evaluated],
            s=9,
            alpha=0.25,
            color=st.colour,
            linewidths=0,
        )
        front = sorted(s.data["front"], key=lambda c: c["macs"])
        ax.step(
            [c["macs"] / scale for c in front],
            [100 * c["val_top1"] for c in front],
            where="post",
            color=st.colour,
            linestyle=st.linestyle,
            marker="o",
            markersize=3.5,
            label=st.label,
        )
        tested = [c for c in front if isinstance(c.get("test_top1"), (int, float))]
        if tested:
            any_test = True
            ax.plot(
                [c["macs"] / scale for c in tested],
                [100 * c["test_top1"] for c in tested],
                linestyle="none",
                marker="x",
                markersize=4,
                color=st.colour,
            )
    positive = [m for m in all_macs if m > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=4, alpha=0.4, color="grey"))
    labels.append("evaluated sub-networks")
    if any_test:
        handles.append(Line2D([], [], linestyle="none", marker="x", color="grey"))
        labels.append("test top-1 of front members")
    ax.legend(handles, labels, fontsize=8, loc="lower right")
    ax.set_xlabel(f"{unit}MACs")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Accuracy vs MACs: evaluated sub-networks and Pareto fronts")
    ax.grid(alpha=0.3)
    return fig


def _series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """x, y of the records that have both (a null loss marks a skipped non-finite step)."""
    pairs = [
        (r[x], r[y])
        for r in records
        if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def curves_figure(runs: Sequence[tuple[RunInfo, Style]], notes: list[str]) -> Figure | None:
    """Val top-1 of the smallest and largest sub-networks per epoch, and training loss per step, per run."""
    if not any(r.train or r.evals for r, _ in runs):
        notes.extend(r.untrained_note("curves") for r, _ in runs)
        return None
    fig = new_figure(12, 4.8)
    acc, loss = fig.subplots(1, 2)
    for r, st in runs:
        if not r.evals:
            notes.append(
                f"Run {r.name} has no evaluation records (per-epoch evaluation off, or stopped before "
                "an epoch ended); its accuracy curves are not shown."
            )
            continue
        epochs, largest = _series(r.evals, "epoch", "largest_top1")
        acc.plot(
            epochs, [100 * v for v in largest], color=st.colour, marker="o", markersize=3, label=st.label
        )
        epochs, smallest = _series(r.evals, "epoch", "smallest_top1")
        acc.plot(
            epochs, [100 * v for v in smallest], color=st.colour, marker="o", markersize=3, linestyle="--"
        )
    if any(r.evals for r, _ in runs):
        handles, labels = acc.get_legend_handles_labels()
        handles += [Line2D([], [], color="black"), Line2D([], [], color="black", linestyle="--")]
        labels += ["largest sub-network", "smallest sub-network"]
        acc.legend(handles, labels, fontsize=8)
    else:
        acc.text(0.5, 0.5, "no evaluation records", ha="center", va="center", transform=acc.transAxes)
    acc.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc.set(xlabel="epoch", ylabel="val top-1 (%)", title="Val accuracy of the smallest and largest networks")
    acc.grid(alpha=0.3)
    for r, st in runs:
        if not r.train:
            notes.append(r.untrained_note("loss curve"))
            continue
        full_name, student_name = loss_names(r)
        steps, full = _series(r.train, "step", "loss_full")
        if full:
            loss.plot(steps, full, color=st.colour, linewidth=1, label=f"{r.name}: largest, {full_name}")
        steps, students = _series(r.train, "step", "loss_students")
        if students:
            loss.plot(steps, students, color=st.colour, linewidth=1, linestyle="--",
                      label=f"{r.name}: sub-networks, {student_name}")
        if not full and not students:  # records from before the split into largest and sub-networks
            steps, mean = _series(r.train, "step", "loss")
            loss.plot(steps, mean, color=st.colour, linewidth=1, label=f"{r.name}: mean over sub-networks")
    if any(r.train for r, _ in runs):
        loss.legend(fontsize=7)
    else:
        loss.text(0.5, 0.5, "no training records", ha="center", va="center", transform=loss.transAxes)
    loss.set(xlabel="step", ylabel="loss", title="Training losses")
    loss.grid(alpha=0.3)
    return fig


def diagnostics_figure(runs: Sequence[tuple[RunInfo, Style]]) -> Figure | None:
    """EnNAS Figures 1-2 per run: teacher vs mean student val top-1, and mean pairwise logit distance, per epoch."""
    measured = [(r, st) for r, st in runs if any("diag_student_top1" in e for e in r.evals)]
    if not measured:
        return None
    fig = new_figure(12, 4.8)
    acc, div = fig.subplots(1, 2)
    for r, st in measured:
        epochs, teacher = _series(r.evals, "epoch", "diag_teacher_top1")
        if teacher:
            acc.plot(epochs, [100 * v for v in teacher], color=st.colour, marker="o", markersize=3, label=st.label)
        epochs, students = _series(r.evals, "epoch", "diag_student_top1")
        acc.plot(epochs, [100 * v for v in students], color=st.colour, marker="o", markersize=3, linestyle="--",
                 label=None if teacher else st.label)
        epochs, distance = _series(r.evals, "epoch", "diag_logit_distance")
        div.plot(epochs, distance, color=st.colour, marker="o", markersize=3, label=st.label)
    handles, labels = acc.get_legend_handles_labels()
    handles += [Line2D([], [], color="black"), Line2D([], [], color="black", linestyle="--")]
    labels += ["teacher", "mean of its students"]
    acc.legend(handles, labels, fontsize=8)
    acc.set(xlabel="epoch", ylabel="val top-1 (%)", title="Teacher and student accuracy (EnNAS Fig. 1)")
    div.legend(fontsize=8)
    div.set(xlabel="epoch", ylabel="mean pairwise logit distance",
            title="Diversity of the sampled sub-networks (EnNAS Fig. 2)")
    for ax in (acc, div):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


def loss_names(r: RunInfo) -> tuple[str, str]:
    """What the logged losses of a run are: (the largest network's, the other sub-networks')."""
    smoothing = r.setting("optim", "label_smoothing")
    ce = "cross-entropy" + (f" (label smoothing {smoothing:g})" if isinstance(smoothing, (int, float)) and smoothing else "")
    teacher = r.setting("teacher", "name")
    divergence = r.setting("distill", "divergence") or "?"
    kd, ce_weight = r.setting("distill", "kd_weight"), r.setting("distill", "ce_weight")
    if teacher in (None, "none"):
        return ce, ce
    student = f"{kd:g} x {divergence}" if isinstance(kd, (int, float)) and kd != 1 else str(divergence)
    if isinstance(ce_weight, (int, float)) and ce_weight:
        student += f" + {ce_weight:g} x {ce}"
    return ce, f"{student} to the {teacher} teacher"


def _time_unit(seconds: float) -> tuple[float, str]:
    return (3600.0, "h") if seconds >= 7200 else (60.0, "min") if seconds >= 120 else (1.0, "s")


def cost_figure(runs: Sequence[tuple[RunInfo, Style]], notes: list[str]) -> Figure | None:
    """Bars of wall time and training TMACs per run."""
    costed = []
    for r, st in runs:
        if r.latest("wall_time") is None and r.latest("train_macs") is None:
            notes.append(r.untrained_note("training cost in the cost plot") if r.imported is not None
                         else f"Run {r.name} logged no training cost yet; it is left out of the cost plot.")
        else:
            costed.append((r, st))
    if not costed:
        return None
    fig = new_figure(max(9.0, 1.8 * len(costed) + 4), 4.2)
    wall, macs = fig.subplots(1, 2)
    names = [r.name for r, _ in costed]
    colours = [st.colour for _, st in costed]
    scale, unit = _time_unit(max(r.run_time()[0] or 0.0 for r, _ in costed))
    wall.bar(names, [(r.run_time()[0] or 0.0) / scale for r, _ in costed], color=colours)
    wall.set(ylabel=f"run time ({unit})", title="Run time")
    bottom = [0.0] * len(costed)
    for kind, hatch in zip(PASS_KINDS, ("", "//", "..", "xx")):
        values = [(r.latest(f"{kind}_macs") or 0.0) / 1e12 for r, _ in costed]
        if any(values):
            macs.bar(names, values, bottom=bottom, color=colours, hatch=hatch, edgecolor="white",
                     label=f"{kind} passes")
            bottom = [b + v for b, v in zip(bottom, values)]
    rest = [(r.latest("train_macs") or 0.0) / 1e12 - b for (r, _), b in zip(costed, bottom)]
    if any(v > 1e-12 for v in rest):  # runs from before the per-kind counters: their total only
        macs.bar(names, rest, bottom=bottom, color=colours, alpha=0.5, label="not broken down")
    macs.set(ylabel="TMACs", title="Training MACs: every pass (gradient passes 3x)")
    macs.legend(fontsize=7)
    wall.bar_label(wall.containers[0], fmt="%.3g", fontsize=8)
    macs.bar_label(macs.containers[-1], labels=[f"{(r.latest('train_macs') or 0) / 1e12:.3g}" for r, _ in costed],
                   fontsize=8)
    for ax in (wall, macs):
        ax.tick_params(axis="x", labelrotation=20 if len(costed) > 3 else 0, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return fig


def save_png(fig: Figure, path: Path) -> None:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=110))


# --- HTML -------------------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else _MISSING


def _macs(value: Any) -> str:
    """A MACs or parameter count with a K, M or G prefix."""
    if not isinstance(value, (int, float)):
        return _MISSING
    scale, unit = _macs_unit(value)
    return f"{value / scale:.4g} {unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return _MISSING
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; cells must already be escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numbers(values: Any) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _stage_text(width: int, genes: tuple) -> str:
    if all(len(g) == 2 and not any(isinstance(v, str) for v in g) for g in genes):  # elastic MBConv (kernel, ratio)
        return f"d{len(genes)} w{width} k{_numbers(g[0] for g in genes)} e{_numbers(g[1] for g in genes)}"
    return f"d{len(genes)} w{width} " + ",".join("/".join(str(v) for v in g) for g in genes)


def arch_text(arch: dict[str, Any]) -> str:
    """A readable one-line summary of an architecture dict: resolution, stem, one bracket per stage, head.

    An elastic MBConv stage reads `d<depth> w<width> k<kernel per block> e<expand ratio per block>`, a
    choice stage `d<depth> w<width> <operator per block>`; a dict of another shape is shown as compact JSON.
    """
    try:
        parsed = Arch.from_dict(arch)
    except ArchError:
        return json.dumps(arch, separators=(",", ":"))
    stages = [f"[{_stage_text(w, genes)}]" for w, genes in zip(parsed.widths, parsed.blocks)]
    return f"{parsed.resolution}px · stem {parsed.stem_width} · {' '.join(stages)} · head {parsed.head_width}"


def _arch(c: dict[str, Any] | None) -> str:
    if not c or not c.get("arch"):
        return _MISSING
    full = json.dumps(c["arch"], separators=(",", ":"))
    return f'<code title="{_e(full)}">{_e(arch_text(c["arch"]))}</code>'


def _pct_on(value: Any, images: Any, split: str) -> str:
    """A percentage with the split and number of images it was measured on."""
    if not isinstance(value, (int, float)):
        return _MISSING
    count = f"{images} {split} images" if isinstance(images, int) else f"{split}, images not recorded"
    return f"{_pct(value)} <small>({_e(count)})</small>"


def _data_text(r: RunInfo) -> str:
    name = r.setting("data", "name") or "?"
    parts = [str(name)]
    if r.setting("data", "limit"):
        parts.append(f"limit {r.setting('data', 'limit')}")
    if r.setting("data", "val_size") is not None:
        parts.append(f"val {r.setting('data', 'val_size')} held out of train")
    return ", ".join(parts)


def _runs_html(runs: list[RunInfo]) -> str:
    rows = []
    for r in runs:
        last = r.evals[-1] if r.evals else {}
        steps = max((x.get("step", 0) for x in r.train + r.evals), default=None)
        epoch = max((x.get("epoch", 0) for x in r.train + r.evals), default=None)
        tmacs = r.latest("train_macs")
        recipe = r.recipe or ("?",) * 4
        seconds, whole = r.run_time()
        rows.append(
            [
                _e(r.name),
                _e(_data_text(r)),
                *map(_e, recipe),
                _e(_MISSING if epoch is None else epoch),
                _e(_MISSING if steps is None else steps),
                _e(_duration(seconds) + ("" if whole or seconds is None else " (training steps only)")),
                _e(_MISSING if tmacs is None else f"{tmacs / 1e12:.3g}"),
                _pct_on(last.get("smallest_top1"), last.get("val_images"), "val"),
                _pct_on(last.get("largest_top1"), last.get("val_images"), "val"),
            ]
        )
    header = [
        "run",
        "data",
        "sampler",
        "teacher",
        "divergence",
        "schedule",
        "epochs",
        "steps",
        "run time",
        "training TMACs (every pass)",
        "smallest: last per-epoch val top-1",
        "largest: last per-epoch val top-1",
    ]
    return html_table(header, rows)


def _searches_html(searches: list[SearchInfo], styles: list[Style], reading: str) -> str:
    rows = []
    for s, st in zip(searches, styles, strict=True):
        d, meta = s.data, s.data.get("search") or {}
        n_val, n_test = _images(d, "val"), _images(d, "test")
        smallest, largest = d.get("smallest") or {}, d.get("largest") or {}
        rows.append(
            [
                _e(s.name),
                _e(st.label),
                _pareto_cell(d, reading),
                _e(len(d["front"])),
                _e(meta.get("evaluations", len(d["evaluated"]))),
                _e(_duration(meta.get("wall_time"))),
                _pct_on(smallest.get("val_top1"), n_val, "val") + "<br>" + _pct_on(smallest.get("test_top1"), n_test, "test"),
                _pct_on(largest.get("val_top1"), n_val, "val") + "<br>" + _pct_on(largest.get("test_top1"), n_test, "test"),
            ]
        )
    return html_table(
        [
            "search",
            "run: recipe",
            f"mean Pareto accuracy ({_e(reading)} reading; front selected on val)",
            "front size",
            "evaluations",
            "search time",
            "smallest: val / test top-1",
            "largest: val / test top-1",
        ],
        rows,
    )


def pareto_figure(front: dict[str, Any], reading: str) -> tuple[float, str, str]:
    """A search's mean Pareto accuracy in `reading`: (value, split, reading actually used).

    Front files hold every reading on val and test; older ones held one val figure in the staircase
    reading, which is returned as such so that the page says what it shows.
    """
    every = front.get("mean_pareto_accuracies")
    if isinstance(every, dict) and isinstance(every.get(reading), dict):
        figures = every[reading]
        split = "test" if isinstance(figures.get("test"), (int, float)) else "val"
        if isinstance(figures.get(split), (int, float)):
            return float(figures[split]), split, reading
    return float(front["mean_pareto_accuracy"]), "val", "staircase"


def _pareto_cell(front: dict[str, Any], reading: str) -> str:
    value, split, used = pareto_figure(front, reading)
    text = _pct_on(value, _images(front, split), split)
    return text if used == reading else f"{text} <small>({_e(used)} reading: an older front file)</small>"


def _images(front: dict[str, Any], split: str) -> int | None:
    """How many images a search's `split` accuracies were measured on (None in older front files)."""
    count = (front.get("images") or {}).get(split)
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _candidate_cells(c: dict[str, Any] | None, latency: bool) -> list[str]:
    c = c or {}
    cells = [
        _e(_macs(c.get("macs"))),
        _e(_macs(c.get("params"))),
    ]
    if latency:
        ms = c.get("latency_ms")
        cells.append(_e(f"{ms:.3g} ms" if isinstance(ms, (int, float)) else _MISSING))
    return cells + [_pct(c.get("val_top1")), _pct(c.get("test_top1")), _arch(c)]


def _search_html(s: SearchInfo, style: Style, reading: str) -> str:
    d = s.data
    members = d["front"] + d["evaluated"] + [b.get("best") for b in d["buckets"] + (d.get("budgets") or [])]
    members = [c for c in members if c]
    latency = any(isinstance(c.get("latency_ms"), (int, float)) for c in members)
    has_test = any(isinstance(c.get("test_top1"), (int, float)) for c in members)
    n_val, n_test = _images(d, "val"), _images(d, "test")
    cand_header = ["MACs", "params"] + (["latency"] if latency else []) + [
        "val top-1" + ("" if n_val is None else f" ({n_val} images)"),
        "test top-1" + ("" if n_test is None else f" ({n_test} images)"),
        "architecture",
    ]
    meta = d.get("search") or {}
    facts = [
        ("run", d.get("run_dir", _MISSING)),
        ("checkpoint", d.get("checkpoint", _MISSING)),
        ("space", d.get("space", _MISSING)),
        ("cost", d.get("cost", _MISSING)),
        ("constraints", ", ".join(map(str, d.get("constraints") or [])) or "none"),
        ("evaluations", meta.get("evaluations", _MISSING)),
        ("generations", meta.get("generations", _MISSING)),
        ("search time", _duration(meta.get("wall_time"))),
        ("predictor", json.dumps(meta["predictor"], sort_keys=True) if meta.get("predictor") else "none"),
    ]
    parts = [
        f"<h3>Search {_e(s.name)} <small>({_e(style.label)})</small></h3>",
        (
            f'<p class="mpa">Mean Pareto accuracy ({_e(reading)} reading, front selected on val): '
            f"<strong>{_pareto_cell(d, reading)}</strong></p>"
        ),
        '<ul class="facts">' + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in facts) + "</ul>",
    ]
    if not has_test:
        parts.append('<p class="note">This search measured no test accuracy; test columns show —.</p>')
    buckets = []
    for i, b in enumerate(d["buckets"]):
        empty = [_e("no sub-network in range")] + [""] * (len(cand_header) - 1)
        cells = _candidate_cells(b["best"], latency) if b.get("best") else empty
        buckets.append([_e(i + 1), _e(f"{_macs(b.get('low'))} – {_macs(b.get('high'))}"), *cells])
    parts += [
        "<h4>Best sub-network per MACs bucket</h4>",
        html_table(["#", "MACs range", *cand_header], buckets) if buckets else '<p class="note">No buckets.</p>',
    ]
    budgets = [
        [
            _e(b.get("budget", _MISSING)),
            *(
                _candidate_cells(b["best"], latency)
                if b.get("best")
                else [_e("none meets the budget")] + [""] * (len(cand_header) - 1)
            ),
        ]
        for b in d.get("budgets") or []
    ]
    if budgets:
        parts += ["<h4>Budgets</h4>", html_table(["budget", *cand_header], budgets)]
    ends = [[_e(k), *_candidate_cells(d.get(k), latency)] for k in ("smallest", "largest") if d.get(k)]
    if ends:
        parts += ["<h4>Smallest and largest sub-networks</h4>", html_table(["", *cand_header], ends)]
    return "\n".join(parts)


def _exports_html(exports: list[ExportInfo]) -> str:
    rows = []
    for x in exports:
        card, c = x.doc.get("card") or {}, x.doc.get("cost") or {}
        val, test = card.get("val") or {}, card.get("test") or {}
        rows.append([
            _e(x.root),
            _e(card.get("budget", _MISSING)),
            _e(_macs(c.get("macs"))),
            _e(_macs(c.get("params"))),
            _pct_on(val.get("top1"), val.get("images"), "val"),
            _pct_on(test.get("top1"), test.get("images"), "test"),
            _e("yes" if x.doc.get("onnx") else "no"),
            _e(card.get("source", _MISSING)),
            _arch({"arch": x.doc["arch"]}),
        ])
    header = ["export", "budget", "MACs", "params", "val top-1", "test top-1", "ONNX", "from run", "architecture"]
    return html_table(header, rows)


PAGE_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:75em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{font-size:.8em;word-break:break-all}img{max-width:100%}
.note{color:#8a5a00}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}"""

_CAPTIONS = {
    ACCURACY_PLOT: "Val top-1 vs MACs: faint points are every evaluated sub-network, step lines the "
    "Pareto fronts (× marks test top-1 of front members where measured).",
    CURVES_PLOT: "Left: val top-1 of the largest (solid) and smallest (dashed) sub-networks at each per-epoch "
    "evaluation (on train.eval_images val images when set). Right: training losses per step: the largest "
    "network's (solid) and the mean of the other sub-networks' (dashed), each named in the legend.",
    COST_PLOT: "Training cost per run: run time (evaluation and checkpoints included where logged) and the "
    "multiply-adds of every pass the recipe ran, by kind: gradient passes (forward + backward, 3x), teacher "
    "passes (in-place, ensemble or frozen teachers), scoring passes (AttentiveNAS) and sampler preparation (EnNAS).",
    DIAGNOSTICS_PLOT: "Per-epoch diagnostics of multi-student recipes (EnNAS Figures 1-2), averaged over "
    "train.diagnostic_draws groups drawn with the recipe's sampler: left, val top-1 of the group's teacher "
    "(solid: the CE-optimal ensemble with weights solved on a training batch, or the largest sub-network for "
    "in-place KD) and the mean of its students (dashed); right, the mean Euclidean distance between two "
    "students' logits of one val image.",
}


def render_html(
    title: str,
    runs: list[RunInfo],
    searches: list[SearchInfo],
    search_styles: list[Style],
    plots: list[str],
    notes: list[str],
    exports: Sequence[ExportInfo] = (),
    reading: str = "staircase",
) -> str:
    """The self-contained report page (no scripts, no external resources); all inserted text is escaped."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{PAGE_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    parts.append("<h2>Training runs</h2>")
    parts.append(_runs_html(runs) if runs else '<p class="note">No training run given.</p>')
    exports = list(exports)
    if searches:
        parts += ["<h2>Searches</h2>", _searches_html(searches, search_styles, reading)]
    else:
        parts.append(
            '<p class="note">No search given: pass search directories (from `supernet search`) '
            "for accuracy-vs-MACs fronts and bucket tables.</p>"
        )
    if plots:
        parts.append("<h2>Plots</h2>")
    for name in plots:
        parts.append(
            f'<figure><img src="{_e(name)}" alt="{_e(name)}">'
            f"<figcaption>{_e(_CAPTIONS.get(name, name))}</figcaption></figure>"
        )
    if exports:
        parts += ["<h2>Exported models</h2>", _exports_html(exports)]
    if searches:
        parts.append("<h2>Search details</h2>")
        parts += [_search_html(s, st, reading) for s, st in zip(searches, search_styles, strict=True)]
    if notes:
        parts += [
            "<h2>Notes</h2>",
            "<ul>" + "".join(f'<li class="note">{_e(n)}</li>' for n in notes) + "</ul>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _distinct(paths: Sequence[str | Path]) -> list[Path]:
    """Paths in order with repeats of the same directory dropped."""
    seen, out = set(), []
    for p in map(Path, paths):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def write_report(
    run_dirs: list[Path],
    search_dirs: list[Path],
    out: Path,
    *,
    title: str | None = None,
    export_dirs: Sequence[Path] = (),
    pareto_reading: str = "staircase",
) -> Path:
    """Write index.html and PNG plots comparing runs, searches and exports into `out`; return its path.

    Every search's mean Pareto accuracy is shown in the one `pareto_reading`, so a table never mixes readings.
    """
    if pareto_reading not in READINGS:
        raise ReportError(f"unknown Pareto reading {pareto_reading!r}; use one of {list(READINGS)}")
    runs = [load_run(p) for p in _distinct(run_dirs)]
    searches = [load_search(p) for p in _distinct(search_dirs)]
    exports = [load_export(p) for p in _distinct(export_dirs)]
    if not runs and not searches and not exports:
        raise ReportError("nothing to report: give at least one run, search or export directory")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"report output {out} is a file; choose a directory for --out")
    notes: list[str] = []
    for r in runs:
        if r.skipped_lines:
            lines = ", ".join(map(str, r.skipped_lines[:5])) + (" ..." if len(r.skipped_lines) > 5 else "")
            notes.append(f"Run {r.name}: skipped {len(r.skipped_lines)} malformed record(s) of metrics.jsonl "
                         f"(line {lines}).")
    runs, owners = _link_searches(runs, searches, notes)
    runs = _unique_names(runs)
    run_styles, search_styles = _styles(runs, searches, owners)
    figures = {
        ACCURACY_PLOT: accuracy_figure(list(zip(searches, search_styles, strict=True)), notes),
        CURVES_PLOT: curves_figure(list(zip(runs, run_styles, strict=True)), notes),
        COST_PLOT: cost_figure(list(zip(runs, run_styles, strict=True)), notes),
        DIAGNOSTICS_PLOT: diagnostics_figure(list(zip(runs, run_styles, strict=True))),
    }
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        if fig is None:
            (out / name).unlink(missing_ok=True)  # a plot from an earlier report would contradict this page
        else:
            save_png(fig, out / name)
            written.append(name)
    if title is None:
        title = "Supernet report: " + ", ".join(
            [r.name for r in runs] or [s.name for s in searches] or [x.root.name for x in exports]
        )
    index = out / "index.html"
    atomic_write_text(index, render_html(title, runs, searches, search_styles, written, notes, exports, pareto_reading))
    return index
