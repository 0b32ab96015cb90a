"""Seed derivation: every random stream in the data pipeline is a pure function of integers."""

from __future__ import annotations

from enum import IntEnum

_MASK64 = (1 << 64) - 1


class Stream(IntEnum):
    """Purpose tags that keep the data pipeline's random streams independent of each other."""

    SPLIT = 1
    ORDER = 2
    AUGMENT = 3
    SUBSET = 4
    WORKERS = 5


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers (seed, stream tag, epoch, step, ...) into one 63-bit seed, order-sensitive."""
    state = len(parts)
    for part in parts:
        state = _splitmix64(state ^ _splitmix64(int(part) & _MASK64))
    return state >> 1
