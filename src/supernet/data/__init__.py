"""Data sets, the seeded train/val split, resumable sharded loaders and per-batch resolution changes.

Typical use in a training loop::

    bundle = build_data("fashion_mnist", val_size=5000, seed=0)
    for images, labels in Loader(bundle.train, 256, seed=0, epoch=3, shuffle=True, augment=True):
        images = resize_batch(images, arch.resolution)

`val` (carved from train) serves BN recalibration, model selection and search; `test` final reports only.
"""

from .augment import PadCropFlip, ResizedCropFlip, resize_batch
from .datasets import (
    DATASETS,
    DataBundle,
    Dataset,
    ImageFolderDataset,
    TensorImageDataset,
    build_data,
    keep_classes,
    split_indices,
    subset,
)
from .formats import DatasetError
from .loader import Loader
from .seeds import derive_seed

__all__ = [
    "DATASETS",
    "DataBundle",
    "Dataset",
    "DatasetError",
    "ImageFolderDataset",
    "Loader",
    "PadCropFlip",
    "ResizedCropFlip",
    "TensorImageDataset",
    "build_data",
    "derive_seed",
    "keep_classes",
    "resize_batch",
    "split_indices",
    "subset",
]
