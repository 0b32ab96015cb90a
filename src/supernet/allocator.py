"""Host-memory allocator setting that spares CPU training and evaluation most of their page faults.

glibc's malloc serves large blocks (activations, gradients) with fresh `mmap` pages and hands them
back on free, so every forward pass touches new pages and the kernel zero-fills each one: on the
2-core reference machine a no-grad forward of AlphaNet A0 at batch 32 spent 0.5 s of its 1.4 CPU
seconds in page faults. `retain_freed_memory` makes malloc keep freed memory for reuse instead.
The price is that the process keeps its peak memory until it exits, which a training or search
process does anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make glibc malloc reuse freed memory (no mmap for large blocks, no trimming); process-wide.

    Returns True when it took effect, False where the C library has no glibc `mallopt` (macOS,
    musl), which changes nothing. The `supernet` command calls this at start unless given
    `--system-malloc`; library users may call it at the start of their own scripts.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
