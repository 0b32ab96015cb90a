"""Sub-networks written the source code bases' way, as our Arch, and the authors' published models.

OFA names a MobileNetV3 sub-network by `ks` and `e` (one per block slot, 4 per elastic stage), `d` (one
per elastic stage) and a resolution `r`; AttentiveNAS and AlphaNet by `resolution`, `width` (stem, 7
stages, head), and per stage one `depth`, `kernel_size` and `expand_ratio`
(`SearchSpace.arch_from_attentivenas`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from supernet.space import Arch, ArchError, SearchSpace

# AlphaNet's configs/eval_alphanet_models.yml (ImageNet top-1 from its README) and AttentiveNAS's
# configs/eval_attentive_nas_models.yml (its README), each evaluated on its own released supernet.
_AN_FIELDS = ("resolution", "width", "depth", "kernel_size", "expand_ratio")
# name: ImageNet top-1 (%), MFLOPs, resolution, width (stem, 7 stages, head), then per stage depth,
# kernel_size and expand_ratio.
_MODELS = [
    ("alphanet_a0", 77.87, 203, 192, [16, 16, 24, 32, 64, 112, 192, 216, 1792],
     [1, 3, 3, 3, 3, 3, 1], [3, 3, 3, 3, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6]),
    ("alphanet_a1", 78.94, 279, 224, [16, 16, 24, 32, 64, 112, 192, 216, 1984],
     [1, 3, 3, 3, 3, 3, 1], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 4, 4, 6, 6]),
    ("alphanet_a2", 79.20, 317, 224, [16, 16, 24, 32, 64, 112, 200, 224, 1984],
     [1, 3, 3, 3, 3, 4, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 5, 4, 4, 6, 6]),
    ("alphanet_a3", 79.41, 357, 224, [16, 16, 24, 32, 64, 112, 208, 224, 1984],
     [2, 3, 3, 4, 3, 5, 1], [3, 3, 3, 5, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6]),
    ("alphanet_a4", 80.01, 444, 256, [16, 16, 24, 32, 64, 112, 192, 216, 1984],
     [1, 3, 3, 4, 3, 5, 1], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 5, 4, 6, 6]),
    ("alphanet_a5_small", 80.29, 491, 256, [16, 16, 24, 32, 64, 112, 208, 216, 1984],
     [1, 3, 3, 4, 4, 5, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 4, 5, 4, 6, 6]),
    ("alphanet_a5_base", 80.62, 596, 288, [16, 16, 24, 32, 64, 112, 200, 216, 1984],
     [2, 3, 4, 3, 3, 5, 1], [3, 3, 5, 5, 3, 3, 3], [1, 4, 4, 4, 5, 6, 6]),
    ("alphanet_a6", 80.78, 709, 288, [16, 16, 24, 32, 64, 112, 216, 224, 1984],
     [1, 3, 3, 4, 4, 6, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 6, 5, 4, 6, 6]),
    ("attentivenas_a0", 77.3, 203, 192, [16, 16, 24, 32, 64, 112, 192, 216, 1792],
     [1, 3, 3, 3, 3, 3, 1], [3, 3, 3, 3, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6]),
    ("attentivenas_a1", 78.4, 279, 224, [16, 16, 24, 32, 64, 112, 192, 216, 1984],
     [1, 3, 3, 3, 3, 3, 1], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 4, 4, 6, 6]),
    ("attentivenas_a2", 78.8, 317, 224, [16, 16, 24, 32, 64, 112, 200, 224, 1984],
     [1, 3, 3, 3, 3, 4, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 5, 4, 4, 6, 6]),
    ("attentivenas_a3", 79.1, 357, 224, [16, 16, 24, 32, 64, 112, 208, 224, 1984],
     [2, 3, 3, 4, 3, 5, 1], [3, 3, 3, 5, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6]),
    ("attentivenas_a4", 79.8, 444, 256, [16, 16, 24, 32, 64, 112, 192, 216, 1984],
     [1, 3, 3, 4, 3, 5, 1], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 5, 4, 6, 6]),
    ("attentivenas_a5", 80.1, 491, 256, [16, 16, 24, 32, 72, 112, 192, 216, 1792],
     [1, 3, 3, 3, 4, 6, 1], [3, 3, 3, 5, 3, 3, 3], [1, 4, 5, 4, 4, 6, 6]),
    ("attentivenas_a6", 80.7, 709, 288, [16, 16, 24, 32, 64, 112, 216, 224, 1984],
     [1, 3, 3, 4, 4, 6, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 6, 5, 4, 6, 6]),
]
PUBLISHED_MODELS: dict[str, dict[str, Any]] = {
    name: {"top1": top1, "mflops": mflops, "arch": dict(zip(_AN_FIELDS, rest, strict=True))}
    for name, top1, mflops, *rest in _MODELS
}


def _int_list(d: Mapping[str, Any], key: str, n: int) -> list[int]:
    value = d.get(key)
    if not isinstance(value, list | tuple) or len(value) != n:
        raise ArchError(f"the arch's {key!r} must be a list of {n} numbers, got {value!r}")
    return [int(v) for v in value]


def _resolution(d: Mapping[str, Any], *keys: str) -> int:
    for key in keys:
        if key in d:
            value = d[key]
            return int(value[0] if isinstance(value, list | tuple) else value)
    raise ArchError(f"the arch names no resolution ({' or '.join(repr(k) for k in keys)})")


def ofa_arch(space: SearchSpace, d: Mapping[str, Any]) -> Arch:
    """An OFA `{ks, e, d, r}` sub-network of an OFA MobileNetV3 space (`r` a number or a one-item list)."""
    elastic = space.spec.stages[1:]
    slots = [max(st.depths) for st in elastic]
    ks, es = _int_list(d, "ks", sum(slots)), _int_list(d, "e", sum(slots))
    depths = _int_list(d, "d", len(elastic))
    blocks: list[tuple] = [((space.spec.stages[0].kernels[0], 1),)]
    start = 0
    for n, depth in zip(slots, depths):
        blocks.append(tuple((ks[start + b], es[start + b]) for b in range(depth)))
        start += n
    arch = Arch(_resolution(d, "r", "resolution", "image_size"), space.spec.stem.widths[0],
                tuple(st.widths[0] for st in space.spec.stages), (1, *depths), tuple(blocks),
                space.spec.head.widths[0])
    return space.validate(arch)


def source_arch(fmt: str, space: SearchSpace, d: Mapping[str, Any]) -> Arch:
    """A sub-network written in format `fmt`'s own way, as an Arch of `space`."""
    return ofa_arch(space, d) if fmt == "ofa_mbv3" else space.arch_from_attentivenas(dict(d))
