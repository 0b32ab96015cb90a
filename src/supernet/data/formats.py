"""Readers for the on-disk data set formats: IDX (Fashion-MNIST), CIFAR pickles, ImageFolder trees."""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

FASHION_MNIST_FIX = "install Debian's dataset-fashion-mnist or set data.root"
CIFAR_FIX = "download and extract the python version from https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A data set is missing or malformed; the message names the path, the problem and the fix."""


@dataclass(frozen=True)
class ImageArrays:
    """Decoded images and labels of one split: uint8 (N, C, H, W) and int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ImageFolderIndex:
    """File lists of an ImageNet-style tree: class names and root-relative paths with labels."""

    root: Path
    class_names: tuple[str, ...]
    train_paths: np.ndarray
    train_labels: np.ndarray
    val_paths: np.ndarray
    val_labels: np.ndarray


# ---------------------------------------------------------------- IDX (MNIST family)


def find_idx(root: Path, stem: str, name: str = "fashion_mnist", fix: str = FASHION_MNIST_FIX) -> Path:
    """Return root/stem or root/stem.gz (uncompressed preferred), or raise DatasetError."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{name}: {root / stem}(.gz) not found; {fix}")


def read_idx(path: Path, ndim: int, fix: str = FASHION_MNIST_FIX) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected by content) holding an array with `ndim` axes."""
    raw = _read_maybe_gzip(path, fix)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: bad IDX magic number {raw[:4].hex() or 'empty'}; {fix}")
    if raw[3] != ndim:
        raise DatasetError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DatasetError(f"{path}: {problem}: {dims} needs {expected} data bytes, found {found}; {fix}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_maybe_gzip(path: Path, fix: str) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc}); {fix}") from exc


def load_idx_split(root: Path, prefix: str, num_classes: int, name: str = "fashion_mnist") -> ImageArrays:
    """Load `<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte` from root as one split."""
    images_path = find_idx(root, f"{prefix}-images-idx3-ubyte", name)
    labels_path = find_idx(root, f"{prefix}-labels-idx1-ubyte", name)
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DatasetError(
            f"{images_path}: expected unsigned-byte IDX images and labels; {FASHION_MNIST_FIX}"
        )
    if len(images) != len(labels):
        raise DatasetError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            f"{FASHION_MNIST_FIX}"
        )
    _check_labels(labels, num_classes, labels_path, FASHION_MNIST_FIX)
    return ImageArrays(images[:, None], labels.astype(np.int64))


def _check_labels(labels: np.ndarray, num_classes: int, path: Path, fix: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes}); {fix}"
        )


# ---------------------------------------------------------------- CIFAR python pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and bytes, so a hostile file cannot run code."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith(("numpy.core", "numpy._core")):
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # numpy < 2
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        return super().find_class(module, name)


def _load_pickle(path: Path, fix: str) -> dict[bytes, object]:
    if not path.is_file():
        raise DatasetError(f"{path}: not found; {fix}")
    try:
        with path.open("rb") as handle:
            obj = _ArrayUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a readable CIFAR pickle ({exc}); {fix}") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, found {type(obj).__name__}; {fix}")
    return {key.encode() if isinstance(key, str) else key: value for key, value in obj.items()}


def resolve_cifar_dir(root: Path, subdir: str, marker: str, name: str) -> Path:
    """Accept the extracted CIFAR directory itself or its parent; raise DatasetError otherwise."""
    if (root / marker).is_file():
        return root
    if (root / subdir / marker).is_file():
        return root / subdir
    raise DatasetError(f"{name}: neither {root / marker} nor {root / subdir / marker} found; {CIFAR_FIX}")


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> ImageArrays:
    """Read one CIFAR batch pickle: b'data' (N, 3072) uint8 and a label list under `label_key`."""
    batch = _load_pickle(path, CIFAR_FIX)
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetError(f"{path}: expected keys b'data' (array) and {label_key!r}; {CIFAR_FIX}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072); {CIFAR_FIX}"
        )
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: {label_key!r} is not a list of integers; {CIFAR_FIX}") from exc
    if label_array.shape != (len(data),):
        raise DatasetError(
            f"{path}: {label_array.size} labels for {len(data)} images under {label_key!r}; {CIFAR_FIX}"
        )
    _check_labels(label_array, num_classes, path, CIFAR_FIX)
    return ImageArrays(data.reshape(-1, 3, 32, 32), label_array)


def read_cifar_names(path: Path, key: bytes, num_classes: int) -> tuple[str, ...]:
    """Read class names (a list of bytes under `key`) from a CIFAR meta pickle."""
    names = _load_pickle(path, CIFAR_FIX).get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise DatasetError(f"{path}: expected {num_classes} class names under {key!r}; {CIFAR_FIX}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def concat(parts: list[ImageArrays]) -> ImageArrays:
    """Concatenate splits read from several files."""
    return ImageArrays(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


# ---------------------------------------------------------------- ImageFolder (ImageNet layout)


def scan_imagefolder(root: Path) -> ImageFolderIndex:
    """List `root/train/<class>/*` and `root/val/<class>/*`; classes are train's sorted folder names."""
    fix = "expected an ImageNet layout root/train/<class>/*.jpg and root/val/<class>/*.jpg; set data.root"
    train_dir, val_dir = root / "train", root / "val"
    for directory in (train_dir, val_dir):
        if not directory.is_dir():
            raise DatasetError(f"imagefolder: {directory} not found; {fix}")
    class_names = tuple(sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and e.name[0] != "."))
    if not class_names:
        raise DatasetError(f"imagefolder: {train_dir} has no class folders; {fix}")
    index = {name: i for i, name in enumerate(class_names)}
    train_paths, train_labels = _list_split(root, train_dir, class_names, index, fix, require_all=True)
    val_classes = tuple(sorted(e.name for e in os.scandir(val_dir) if e.is_dir() and e.name[0] != "."))
    if not val_classes:
        raise DatasetError(
            f"imagefolder: {val_dir} has no class folders (ImageNet's val/ ships flat: sort it into "
            f"val/<class>/ folders); {fix}"
        )
    unknown = [name for name in val_classes if name not in index]
    if unknown:
        raise DatasetError(f"imagefolder: {val_dir / unknown[0]} is not a class of {train_dir}; {fix}")
    val_paths, val_labels = _list_split(root, val_dir, val_classes, index, fix, require_all=False)
    if not len(val_paths):
        raise DatasetError(f"imagefolder: {val_dir} holds no images; {fix}")
    return ImageFolderIndex(root, class_names, train_paths, train_labels, val_paths, val_labels)


def _list_split(
    root: Path, split_dir: Path, classes: tuple[str, ...], index: dict[str, int], fix: str, require_all: bool
) -> tuple[np.ndarray, np.ndarray]:
    paths: list[bytes] = []
    labels: list[int] = []
    for name in classes:
        files = _image_files(split_dir / name)
        if not files and require_all:
            raise DatasetError(f"imagefolder: class folder {split_dir / name} holds no images; {fix}")
        paths.extend(os.fsencode(f.relative_to(root)) for f in files)
        labels.extend([index[name]] * len(files))
    # Fixed-width bytes in one array: no per-path Python objects for forked workers to copy-on-touch.
    return np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64)


def _image_files(directory: Path) -> list[Path]:
    found = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        # Linked folders are followed, so a link back to an ancestor would be walked forever: stop at it.
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in visited:
            raise DatasetError(
                f"imagefolder: {dirpath} leads back to a folder already scanned (a symbolic-link cycle); "
                "remove the link or point it outside the data set"
            )
        visited.add((info.st_dev, info.st_ino))
        dirnames.sort()
        found.extend(
            Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return found
