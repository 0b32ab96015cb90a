"""Shared fixtures: small deterministic settings for a 2-core machine."""

from __future__ import annotations

import pytest
import torch

# One thread: small test workloads gain little from two, and oversubscribed OpenMP threads
# (another process busy on the same 2 cores) slow them down by an order of magnitude.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
