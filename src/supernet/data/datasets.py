"""Data set objects, the seeded train/val split and `build_data`, the single entry point."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .augment import (
    CropFlipDraws,
    Normalizer,
    PadCropFlip,
    ResizedCropFlip,
    apply_pad_crop_flip,
    transform_image,
)
from .formats import (
    CIFAR_FIX,
    DatasetError,
    ImageArrays,
    concat,
    load_idx_split,
    read_cifar_batch,
    read_cifar_names,
    resolve_cifar_dir,
    scan_imagefolder,
)
from .seeds import Stream, derive_seed

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagefolder")
DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_IMAGEFOLDER_SIZE = 224

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-channel mean / std of each data set's training images (ImageFolder uses ImageNet's).
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True, eq=False)
class TensorImageDataset:
    """An in-memory split: uint8 (N, C, H, W) images, int64 labels, normalisation, train augmentation."""

    images: torch.Tensor
    labels: torch.Tensor
    normalizer: Normalizer
    augmentation: PadCropFlip | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be int64 of shape ({len(self.images)},), got {self.labels.shape}")
        if self.images.shape[1] != len(self.normalizer.mean):
            raise ValueError(f"{self.images.shape[1]} image channels but {len(self.normalizer.mean)} means")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        """Side of the (square) stored images in pixels."""
        return int(self.images.shape[-1])

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return int(self.images.shape[1])

    def select(self, indices: torch.Tensor) -> TensorImageDataset:
        """The same split restricted to `indices` (copies the selected images)."""
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def load(self, indices: torch.Tensor, draws: CropFlipDraws | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and int64 labels at `indices`, augmented with `draws` if given."""
        images = self.images[indices]
        if draws is not None:
            if self.augmentation is None:
                raise ValueError("augmentation draws given for a split without train augmentation")
            images = apply_pad_crop_flip(images, draws, self.augmentation.padding)
        return self.normalizer(images), self.labels[indices]


@dataclass(frozen=True, eq=False)
class ImageFolderDataset:
    """A split of an ImageNet-style tree: files decoded with Pillow on demand, cropped to `image_size`."""

    root: Path
    paths: np.ndarray
    labels: torch.Tensor
    image_size: int
    normalizer: Normalizer
    augmentation: ResizedCropFlip | None = None
    in_channels: int = field(default=3, init=False)

    def __post_init__(self) -> None:
        if self.paths.shape != (len(self.labels),):
            raise ValueError(f"{len(self.paths)} paths for {len(self.labels)} labels")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> Path:
        """Absolute path of image `index`."""
        return self.root / os.fsdecode(self.paths[index])

    def select(self, indices: torch.Tensor) -> ImageFolderDataset:
        """The same split restricted to `indices`."""
        return replace(self, paths=self.paths[indices.numpy()], labels=self.labels[indices])

    def decode(self, index: int, rng: random.Random | None) -> tuple[torch.Tensor, int]:
        """Uint8 (3, S, S) image and label of `index`: random crop + flip drawn from `rng`, else centred."""
        path = self.path(index)
        if rng is not None and self.augmentation is None:
            raise ValueError("an augmentation rng given for a split without train augmentation")
        try:
            with Image.open(path) as image:
                tensor = transform_image(
                    image, self.image_size, self.augmentation if rng is not None else None, rng
                )
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(
                f"imagefolder: cannot decode {path} ({exc}); remove or replace the file"
            ) from exc
        return tensor, int(self.labels[index])


Dataset = TensorImageDataset | ImageFolderDataset


@dataclass(frozen=True, eq=False)
class DataBundle:
    """The three splits of one data set with the facts a model needs about them."""

    name: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint sorted (train, val) index sets covering range(n), val of `val_size`; a function of seed."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size={val_size} must be in [0, {n}) for a training set of {n} images")
    generator = torch.Generator().manual_seed(derive_seed(seed, Stream.SPLIT))
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[torch.randperm(n, generator=generator)[:val_size]] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def subset(data: DataBundle | Dataset, n: int, seed: int = 0) -> DataBundle | Dataset:
    """At most `n` seeded-random items of a split, or of each split of a bundle (for smoke runs)."""
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    if isinstance(data, DataBundle):
        return replace(
            data,
            train=subset(data.train, n, seed),
            val=None if data.val is None else subset(data.val, n, seed),
            test=subset(data.test, n, seed),
        )
    if n >= len(data):
        return data
    generator = torch.Generator().manual_seed(derive_seed(seed, Stream.SUBSET))
    return data.select(torch.randperm(len(data), generator=generator)[:n].sort().values)


def build_data(
    name: str = "fashion_mnist",
    root: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    image_size: int | None = None,
    limit: int | None = None,
    classes: Sequence[int] | None = None,
) -> DataBundle:
    """Load a data set and carve a seeded `val` split of `val_size` images out of its training set.

    `classes` keeps only those classes (indices into the data set's class list), relabelled 0..k-1 in the
    order given: a smaller task made from a larger one, e.g. for transfer learning.
    """
    if name in ("fashion_mnist", "cifar10", "cifar100"):
        bundle = _build_in_memory(name, root, val_size, seed, image_size)
    elif name == "imagefolder":
        bundle = _build_imagefolder(root, val_size, seed, image_size or DEFAULT_IMAGEFOLDER_SIZE)
    else:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if classes is not None:
        bundle = keep_classes(bundle, classes)
    return bundle if limit is None else subset(bundle, limit, seed)


def keep_classes(data: DataBundle, classes: Sequence[int]) -> DataBundle:
    """Each split restricted to the images of `classes`, relabelled 0..k-1 in the order given."""
    wanted = list(classes)
    bad = [c for c in wanted if not 0 <= c < data.num_classes]
    if not wanted or bad or len(set(wanted)) != len(wanted):
        raise DatasetError(f"data.classes {wanted}: give distinct class indices in [0, {data.num_classes}) of "
                           f"{data.name} ({', '.join(data.class_names[:4])}, ...)")
    relabel = torch.full((data.num_classes,), -1, dtype=torch.int64)
    relabel[torch.tensor(wanted)] = torch.arange(len(wanted))

    def keep(split: Dataset) -> Dataset:
        indices = torch.nonzero(relabel[split.labels] >= 0).flatten()
        chosen = split.select(indices)
        return replace(chosen, labels=relabel[chosen.labels])

    return replace(data, train=keep(data.train), val=None if data.val is None else keep(data.val),
                   test=keep(data.test), num_classes=len(wanted),
                   class_names=tuple(data.class_names[c] for c in wanted))


def _carve_val(full_train: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset | None]:
    if val_size >= len(full_train):
        raise DatasetError(
            f"data.val_size={val_size} leaves no training images: the training set has {len(full_train)}; "
            f"set data.val_size below {len(full_train)} (0 for no val split)"
        )
    train_idx, val_idx = split_indices(len(full_train), val_size, seed)
    if not val_size:
        return full_train, None
    return full_train.select(train_idx), replace(full_train.select(val_idx), augmentation=None)


def _build_in_memory(
    name: str, root: str | os.PathLike[str] | None, val_size: int, seed: int, image_size: int | None
) -> DataBundle:
    if name == "fashion_mnist":
        base = Path(root) if root is not None else DEFAULT_FASHION_MNIST_ROOT
        train_arrays = load_idx_split(base, "train", 10)
        test_arrays = load_idx_split(base, "t10k", 10)
        class_names, stats, padding = FASHION_MNIST_CLASSES, FASHION_MNIST_STATS, 2
    else:
        if root is None:
            raise DatasetError(f"{name}: no root directory given; {CIFAR_FIX} and set data.root")
        train_arrays, test_arrays, class_names = _read_cifar(name, Path(root))
        stats = CIFAR10_STATS if name == "cifar10" else CIFAR100_STATS
        padding = 4
    height, width = train_arrays.images.shape[-2:]
    if test_arrays.images.shape[1:] != train_arrays.images.shape[1:] or height != width:
        raise DatasetError(
            f"{name}: train images {train_arrays.images.shape[1:]} and test images "
            f"{test_arrays.images.shape[1:]} must be equal and square; re-download the data set"
        )
    if image_size is not None and image_size != width:
        raise ValueError(
            f"{name} images are {width} px; change resolution per batch with resize_batch, "
            f"not image_size={image_size}"
        )
    normalizer = Normalizer(*stats)
    full_train = TensorImageDataset(
        torch.from_numpy(train_arrays.images),
        torch.from_numpy(train_arrays.labels),
        normalizer,
        PadCropFlip(padding),
    )
    train, val = _carve_val(full_train, val_size, seed)
    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=TensorImageDataset(
            torch.from_numpy(test_arrays.images), torch.from_numpy(test_arrays.labels), normalizer
        ),
        num_classes=len(class_names),
        in_channels=full_train.in_channels,
        image_size=int(width),
        class_names=class_names,
    )


def _read_cifar(name: str, root: Path) -> tuple[ImageArrays, ImageArrays, tuple[str, ...]]:
    if name == "cifar10":
        directory = resolve_cifar_dir(root, "cifar-10-batches-py", "batches.meta", name)
        train = concat([read_cifar_batch(directory / f"data_batch_{i}", b"labels", 10) for i in range(1, 6)])
        test = read_cifar_batch(directory / "test_batch", b"labels", 10)
        return train, test, read_cifar_names(directory / "batches.meta", b"label_names", 10)
    directory = resolve_cifar_dir(root, "cifar-100-python", "meta", name)
    train = read_cifar_batch(directory / "train", b"fine_labels", 100)
    test = read_cifar_batch(directory / "test", b"fine_labels", 100)
    return train, test, read_cifar_names(directory / "meta", b"fine_label_names", 100)


def _build_imagefolder(
    root: str | os.PathLike[str] | None, val_size: int, seed: int, image_size: int
) -> DataBundle:
    if root is None:
        raise DatasetError(
            "imagefolder: no root directory given; set data.root to a folder with train/ and val/"
        )
    index = scan_imagefolder(Path(root))
    normalizer = Normalizer(*IMAGENET_STATS)
    full_train = ImageFolderDataset(
        index.root,
        index.train_paths,
        torch.from_numpy(index.train_labels),
        image_size,
        normalizer,
        ResizedCropFlip(),
    )
    train, val = _carve_val(full_train, val_size, seed)
    return DataBundle(
        name="imagefolder",
        train=train,
        val=val,
        test=ImageFolderDataset(
            index.root, index.val_paths, torch.from_numpy(index.val_labels), image_size, normalizer
        ),
        num_classes=len(index.class_names),
        in_channels=3,
        image_size=image_size,
        class_names=index.class_names,
    )
