"""Read a published supernet checkpoint (weights only) and tell which code base wrote it.

Key names are compared in a canonical form: DDP's `module.` prefix removed, OFA's old
`mobile_inverted_conv` called `conv`, and the doubled wrappers of dynamic layers (`bn.bn`, `conv.conv`,
`linear.linear`) collapsed, so that a checkpoint of either OFA generation and AttentiveNAS's
checkpoints read alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

FORMATS = ("ofa_mbv3", "attentivenas")
_WRAPPERS = {"bn", "conv", "linear"}


class PublishedFormatError(ValueError):
    """A checkpoint that is not, or not exactly, a supported published supernet."""


def canonical_key(key: str) -> str:
    """`module.blocks.1.mobile_inverted_conv.depth_conv.conv.conv.weight` -> `blocks.1.conv.depth_conv.conv.weight`."""
    parts = key.removeprefix("module.").split(".")
    parts = ["conv" if p == "mobile_inverted_conv" else p for p in parts]
    out: list[str] = []
    for part in parts:
        if out and part == out[-1] and part in _WRAPPERS:
            continue
        out.append(part)
    return ".".join(out)


def read_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The canonical-keyed tensors of a checkpoint file: its `state_dict`, or the file itself when it is one."""
    path = Path(path)
    if not path.is_file():
        raise PublishedFormatError(f"{path} not found; pass the checkpoint file you downloaded (e.g. "
                                   "ofa_mbv3_d234_e346_k357_w1.0 or alphanet_pretrained.pth.tar)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler fails in arbitrary ways on foreign bytes
        raise PublishedFormatError(
            f"{path} cannot be read as a weights-only PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}); it is truncated, not a PyTorch file, or "
            "holds Python objects besides tensors (re-save its state_dict with torch.save)") from None
    if isinstance(loaded, Mapping) and "format" in loaded and "space" in loaded and "model" in loaded:
        raise PublishedFormatError(f"{path} is already a checkpoint of `supernet train`; pass its run directory to "
                                   "eval, search or export directly")
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise PublishedFormatError(f"{path} holds no state dict (a mapping of names to tensors, alone or under "
                                   "'state_dict'); it is not a supernet checkpoint")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = canonical_key(str(key))
        if name in out:
            raise PublishedFormatError(f"{path}: tensors {key!r} and another both read as {name!r}; the checkpoint "
                                       "mixes two naming schemes")
        out[name] = value
    return out


def detect_format(state: Mapping[str, Tensor]) -> str:
    """`ofa_mbv3` or `attentivenas` from the key names; raises naming what a foreign checkpoint looks like."""
    keys = set(state)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("last_conv.final_expand_layer.") and has("classifier.linear."):
        return "attentivenas"
    if has("last_conv.conv.") and any(".shortcut.conv." in k for k in keys):
        raise PublishedFormatError("this looks like an AttentiveNAS supernet without the MobileNetV3 head "
                                   "(use_v3_head: false), which no preset has; supported: the released "
                                   "AttentiveNAS and AlphaNet supernets")
    if has("input_stem.") or any(".conv1.conv." in k or ".downsample." in k for k in keys):
        raise PublishedFormatError("this looks like an OFA ResNet50 checkpoint (ofa_resnet50), which is not "
                                   "supported; supported: ofa_mbv3 (OFA MobileNetV3 w1.0 / w1.2) and attentivenas")
    if has("first_conv.") and has("feature_mix_layer.") and has("classifier.linear."):
        if not has("final_expand_layer."):
            raise PublishedFormatError("this looks like an OFA ProxylessNAS checkpoint (ofa_proxyless_d234_e346_"
                                       "k357_w1.3), which is not supported; supported: ofa_mbv3 (OFA MobileNetV3 "
                                       "w1.0 / w1.2) and attentivenas")
        if not any(k.endswith("_matrix") for k in keys):
            raise PublishedFormatError("this looks like one OFA MobileNetV3 network (it has no kernel-transform "
                                       "matrices), e.g. a specialised sub-network, not the supernet; import "
                                       "ofa_mbv3_d234_e346_k357_w1.0 or _w1.2")
        return "ofa_mbv3"
    sample = ", ".join(sorted(keys)[:3])
    raise PublishedFormatError(f"not a checkpoint of a supported supernet (ofa_mbv3, attentivenas): its "
                               f"{len(keys)} tensors begin {sample}")
