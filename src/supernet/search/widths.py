"""Accuracy of a slimmable run at chosen width multipliers: AlphaNet's Table 1 protocol (section 4.1).

Each width is one sub-network of the width-multiplier space; its BN statistics are recalibrated on
training images before it is measured, as the slimmable papers do (Yu & Huang 2019, section 3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supernet.cost import cost
from supernet.evaluation import Evaluator
from supernet.space import Arch, ArchError, SearchSpace


@dataclass(frozen=True)
class WidthResult:
    """One row of the table: the multiplier asked for, its sub-network, cost and accuracy."""

    multiplier: float
    arch: Arch
    macs: int
    params: int
    top1: float
    top5: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return {"width": self.multiplier, "arch": self.arch.to_dict(), "macs": self.macs, "params": self.params,
                "top1": self.top1, "top5": self.top5}


def parse_widths(text: str) -> list[float]:
    """Comma-separated multipliers or start:stop:step ranges (both ends included) -> ascending multipliers.

    `0.25:0.75:0.05` is AlphaNet's Table 1; `0.25,0.5,1.0` a list; `0.25:0.75:0.05,1.0` both.
    """
    values: list[float] = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            parts = [float(p) for p in item.split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            values.append(parts[0])
        elif len(parts) == 3 and parts[2] > 0 and parts[0] <= parts[1]:
            start, stop, step = parts
            count = round((stop - start) / step) + 1
            values += [round(start + i * step, 6) for i in range(count) if start + i * step <= stop + 1e-9]
        else:
            raise ArchError(f"--widths {text!r}: expected multipliers like 0.25,0.5,1.0 or ranges start:stop:step "
                            "with start <= stop and a positive step, like 0.25:0.75:0.05")
    if not values or any(v <= 0 for v in values):
        raise ArchError(f"--widths {text!r}: give at least one positive width multiplier")
    return sorted(set(values))


def evaluate_widths(
    evaluator: Evaluator, space: SearchSpace, multipliers: Sequence[float], split: str, num_classes: int,
    in_channels: int | None = None, resolution: int | None = None,
) -> list[WidthResult]:
    """Recalibrate and measure the sub-network at each multiplier on `split` (cached like any evaluation)."""
    archs = [space.at_width(m, resolution) for m in multipliers]  # every width checked before any is measured
    rows = []
    for m, arch in zip(multipliers, archs):
        result = evaluator.evaluate(arch, split)
        c = cost(space, arch, num_classes, in_channels)
        rows.append(WidthResult(m, arch, c.macs, c.params, result.top1, result.top5))
    return rows


def widths_table(rows: Sequence[WidthResult], split: str) -> str:
    """A Markdown table, one row per width: MMACs, M params, top-1 (and top-5) in percent."""
    top5 = any(r.top5 is not None for r in rows)
    header = f"| width | MMACs | M params | {split} top-1 |" + (f" {split} top-5 |" if top5 else "")
    lines = [header, "|" + "---|" * (5 if top5 else 4)]
    for r in rows:
        line = f"| {r.multiplier:g}x | {r.macs / 1e6:.2f} | {r.params / 1e6:.3f} | {100 * r.top1:.2f} |"
        if top5:
            line += " - |" if r.top5 is None else f" {100 * r.top5:.2f} |"
        lines.append(line)
    return "\n".join(lines)
