"""Atomic writes: whole files or nothing, with the permissions a plain open() would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supernet.fileio import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_whole_file_with_default_permissions(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, lambda fh: fh.write(b"good"))

    def broken(fh) -> None:
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(path, broken)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
