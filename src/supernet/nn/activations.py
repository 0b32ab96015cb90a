"""Activation modules by name, shared by dynamic and static networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

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


def hard_sigmoid(x: Tensor) -> Tensor:
    """relu6(x + 3) / 6: torch's hard-sigmoid, written so that it has a second derivative (Cream's look-ahead)."""
    return F.relu6(x + 3.0) / 6.0
