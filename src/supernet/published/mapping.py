"""Map every tensor of an OFA MobileNetV3 or AttentiveNAS/AlphaNet supernet onto our Supernet's names.

Both code bases number blocks across stages (`blocks.i`), each stage holding its largest depth; the
block layout inside (inverted_bottleneck, depth_conv with its SE, point_linear, AttentiveNAS's
shortcut) maps one to one onto `DynamicMBConv`. AttentiveNAS's BN layers also carry `bn_tracking`
statistics that its training logs use and no forward pass reads: those are listed as unused, by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from supernet.published.reading import PublishedFormatError
from supernet.space import SearchSpace

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BLOCK_PARTS = [
    (rf"inverted_bottleneck\.bn\.{_BN}", r"expand_bn.\1"),
    (r"inverted_bottleneck\.conv\.weight", "expand_conv.weight"),
    (r"depth_conv\.conv\.weight", "depthwise.weight"),
    (r"depth_conv\.conv\.(\d+)to(\d+)_matrix", r"depthwise.transforms.to\2"),
    (rf"depth_conv\.bn\.{_BN}", r"depthwise_bn.\1"),
    (r"depth_conv\.se\.fc\.reduce\.(weight|bias)", r"se.reduce.\1"),
    (r"depth_conv\.se\.fc\.expand\.(weight|bias)", r"se.expand.\1"),
    (r"point_linear\.conv\.weight", "project.weight"),
    (rf"point_linear\.bn\.{_BN}", r"project_bn.\1"),
]
_STEM = [(r"first_conv\.conv\.weight", "stem.conv.weight"), (rf"first_conv\.bn\.{_BN}", r"stem.bn.\1")]
_HEADS = {
    "ofa_mbv3": [
        (r"final_expand_layer\.conv\.weight", "head.expand.conv.weight"),
        (rf"final_expand_layer\.bn\.{_BN}", r"head.expand.bn.\1"),
        (r"feature_mix_layer\.conv\.weight", "head.mix.weight"),
        (r"classifier\.linear\.(weight|bias)", r"head.classifier.\1"),
    ],
    "attentivenas": [
        (r"last_conv\.final_expand_layer\.conv\.weight", "head.expand.conv.weight"),
        (rf"last_conv\.final_expand_layer\.bn\.{_BN}", r"head.expand.bn.\1"),
        (r"last_conv\.feature_mix_layer\.conv\.weight", "head.mix.weight"),
        (r"classifier\.linear\.(weight|bias)", r"head.classifier.\1"),
    ],
}
_SHORTCUT = (r"shortcut\.conv\.weight", "shortcut_conv.weight")
_UNUSED = {"attentivenas": (r".*\.bn_tracking\.\d+\.(running_mean|running_var|num_batches_tracked)",
                            ("AttentiveNAS's BN statistics of its largest and smallest networks for training "
                             "logs; no forward pass reads them"))}


@dataclass(frozen=True)
class Conversion:
    """Our state dict built from a source checkpoint, and the source tensors deliberately left out (with why)."""

    state: dict[str, Tensor]
    unused: dict[str, str]
    filled: list[str]


def block_slots(space: SearchSpace) -> list[tuple[int, int]]:
    """(stage, block) of the source's `blocks.i`: each stage holds as many blocks as its largest depth."""
    return [(s, b) for s, stage in enumerate(space.spec.stages) for b in range(max(stage.depths))]


def target_key(fmt: str, key: str, slots: list[tuple[int, int]]) -> str | None:
    """Our name for source tensor `key` (canonical form), or None when no rule covers it."""
    rules = _STEM + _HEADS[fmt]
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match is None:
        return None
    index, rest = int(match.group(1)), match.group(2)
    if index >= len(slots):
        return None
    stage, block = slots[index]
    parts = [(rf"conv\.{p}", r) for p, r in _BLOCK_PARTS]
    if fmt == "attentivenas":
        parts.append(_SHORTCUT)
    for pattern, repl in parts:
        if re.fullmatch(pattern, rest):
            return f"stages.{stage}.{block}." + re.sub(pattern, repl, rest)
    return None


def convert(fmt: str, source: Mapping[str, Tensor], ours: Mapping[str, Tensor], space: SearchSpace) -> Conversion:
    """Every source tensor placed in `ours` (shapes checked) or named as unused; raises on anything else."""
    slots = block_slots(space)
    unused_rule = _UNUSED.get(fmt)
    state: dict[str, Tensor] = {}
    placed_from: dict[str, str] = {}
    unused: dict[str, str] = {}
    for key, value in source.items():
        if unused_rule is not None and re.fullmatch(unused_rule[0], key):
            unused[key] = unused_rule[1]
            continue
        target = target_key(fmt, key, slots)
        if target is None or target not in ours:
            raise PublishedFormatError(f"{fmt} checkpoint: tensor {key!r} has no place in the {space.name} supernet "
                                       f"({'no rule maps it' if target is None else f'we have no {target!r}'}); "
                                       "the checkpoint is from another variant of the network")
        if target in placed_from:
            raise PublishedFormatError(f"{fmt} checkpoint: tensors {placed_from[target]!r} and {key!r} both map to "
                                       f"{target!r}")
        if tuple(value.shape) != tuple(ours[target].shape):
            raise PublishedFormatError(f"{fmt} checkpoint: tensor {key!r} has shape {tuple(value.shape)}, but the "
                                       f"{space.name} supernet's {target!r} is {tuple(ours[target].shape)}; the "
                                       "checkpoint is from another variant of the network")
        placed_from[target] = key
        state[target] = value.to(ours[target].dtype)
    # BN's step counter, which no forward pass with a momentum reads, is absent from checkpoints saved
    # before torch 0.4.1: those are set to 0 and listed; any other missing tensor is an error
    filled = [k for k in ours if k not in state and k.endswith("num_batches_tracked")]
    for key in filled:
        state[key] = ours[key].new_zeros(())
    missing = [k for k in ours if k not in state]
    if missing:
        raise PublishedFormatError(f"{fmt} checkpoint lacks {len(missing)} tensor(s) the {space.name} supernet needs, "
                                   f"e.g. {missing[0]!r}; the file is incomplete or from another variant")
    return Conversion(state, unused, filled)
