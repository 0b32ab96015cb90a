"""A choice block: several candidate operators with their own weights; one runs at a time (SPOS, EnNAS)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

IDENTITY = "identity"


class ChoiceBlock(nn.Module):
    """Candidate operators by name (`identity` has no module and passes its input on); `active` picks one."""

    def __init__(self, candidates: dict[str, nn.Module | None]):
        super().__init__()
        self.names = list(candidates)
        self.candidates = nn.ModuleDict({k: m for k, m in candidates.items() if m is not None})
        self.active = self.names[-1]

    def configure(self, name: str) -> None:
        """Choose the operator that `forward` runs."""
        if name not in self.names:
            raise ValueError(f"operator {name!r} is not among this block's candidates {self.names}")
        self.active = name

    def forward(self, x: Tensor, drop_connect: float = 0.0, generator: Any = None) -> Tensor:
        if self.active == IDENTITY:
            return x
        return self.candidates[self.active](x)

    def copy_to(self, static: nn.Module, name: str) -> None:
        """Copy operator `name`'s weights and buffers into a freshly built module of the same operator."""
        if name != IDENTITY:
            static.load_state_dict(self.candidates[name].state_dict())
