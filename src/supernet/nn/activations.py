"""Activation modules by name, shared by dynamic and static networks."""

from __future__ import annotations

from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,  # MobileNetV2 and ProxylessNAS (DepS's second space)
    "swish": nn.SiLU,
    "h_swish": nn.Hardswish,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module: relu, relu6, swish (SiLU) or h_swish (Hardswish)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None
