"""Resumable, shardable batches: order and augmentation are pure functions of (seed, epoch, step).

Global batch `step` holds items `order[step * B * W : (step + 1) * B * W]` of a permutation seeded by
(seed, epoch), B being `batch_size` and W `world_size`; rank r takes the r-th slice, so the ranks' batches
concatenated in rank order equal the single-process batch bitwise. Augmentation draws are seeded by
(seed, epoch, step) for in-memory data sets (drawn for the whole global batch, then sliced) and by
(seed, epoch, item) for image folders, so a loader started at `start_step` reproduces an uninterrupted run
without decoding earlier batches, whatever the worker count. With `drop_last=False` the last global batch
is split as evenly as possible and a rank's shard may be empty, keeping every rank's step count equal.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from .augment import draw_pad_crop_flip
from .datasets import Dataset, ImageFolderDataset, TensorImageDataset
from .seeds import Stream, derive_seed

Batch = tuple[torch.Tensor, torch.Tensor]


class Loader:
    """The batches of one epoch for one rank, from `start_step` on (`num_workers` serves image folders)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        augment: bool,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or num_workers < 0 or epoch < 0:
            raise ValueError(
                f"need batch_size >= 1, world_size >= 1, 0 <= rank < world_size, num_workers >= 0 and "
                f"epoch >= 0; got {batch_size}, {world_size}, {rank}, {num_workers}, {epoch}"
            )
        if augment and dataset.augmentation is None:
            raise ValueError(
                "augment=True on a split without train augmentation; val and test are deterministic"
            )
        self.dataset, self.batch_size, self.seed, self.epoch = dataset, batch_size, seed, epoch
        self.shuffle, self.augment, self.rank, self.world_size = shuffle, augment, rank, world_size
        self.num_workers = num_workers
        global_batch = batch_size * world_size
        self.steps_per_epoch = len(dataset) // global_batch if drop_last else -(-len(dataset) // global_batch)
        if drop_last and self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} images make no full global batch of {global_batch}; "
                f"lower batch_size or set drop_last=False"
            )
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(
                f"start_step={start_step} is outside [0, {self.steps_per_epoch}] steps per epoch"
            )
        self.start_step = start_step

    def __len__(self) -> int:
        """Number of batches this loader yields: steps_per_epoch - start_step."""
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[Batch]:
        """Yield (float32 (N, C, H, W) normalised images, int64 labels) for this rank."""
        if isinstance(self.dataset, TensorImageDataset):
            return self._tensor_batches(self.dataset)
        return self._file_batches(self.dataset)

    def order(self) -> torch.Tensor:
        """Item order of this epoch: a permutation seeded by (seed, epoch) if shuffling, else 0..N-1."""
        if not self.shuffle:
            return torch.arange(len(self.dataset))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, Stream.ORDER, self.epoch))
        return torch.randperm(len(self.dataset), generator=generator)

    def _global_batches(self) -> Iterator[tuple[int, torch.Tensor, slice]]:
        order = self.order()
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.steps_per_epoch):
            indices = order[step * global_batch : (step + 1) * global_batch]
            # torch.tensor_split's division: full batches give rank r items [r * B, (r + 1) * B).
            base, extra = divmod(len(indices), self.world_size)
            start = self.rank * base + min(self.rank, extra)
            yield step, indices, slice(start, start + base + (self.rank < extra))

    def _tensor_batches(self, dataset: TensorImageDataset) -> Iterator[Batch]:
        augmentation = dataset.augmentation if self.augment else None
        for step, indices, part in self._global_batches():
            draws = None
            if augmentation is not None:
                seed = derive_seed(self.seed, Stream.AUGMENT, self.epoch, step)
                # Draw for the whole global batch so every rank sees the single-process draws.
                draws = draw_pad_crop_flip(len(indices), augmentation, torch.Generator().manual_seed(seed))
                draws = draws[part]
            yield dataset.load(indices[part], draws)

    def _file_batches(self, dataset: ImageFolderDataset) -> Iterator[Batch]:
        tasks = _DecodeTasks(self, dataset)
        loader = DataLoader(
            _Decoder(dataset),
            batch_sampler=tasks,
            num_workers=self.num_workers,
            collate_fn=_Stack(dataset.in_channels, dataset.image_size),
            # An explicit generator keeps DataLoader from drawing worker seeds from torch's global RNG.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, Stream.WORKERS, self.epoch)),
        )
        for images, labels in loader:
            yield dataset.normalizer(images), labels


class _DecodeTasks:
    """Batch sampler of (item index, augmentation seed or None) lists, one list per remaining step."""

    def __init__(self, loader: Loader, dataset: ImageFolderDataset) -> None:
        self.loader, self.dataset = loader, dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        loader = self.loader
        for _, indices, part in loader._global_batches():
            yield [
                (i, derive_seed(loader.seed, Stream.AUGMENT, loader.epoch, i) if loader.augment else None)
                for i in indices[part].tolist()
            ]


class _Decoder:
    """Map-style view for DataLoader workers: (index, seed) -> decoded uint8 image and label."""

    def __init__(self, dataset: ImageFolderDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, task: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = task
        return self.dataset.decode(index, None if seed is None else random.Random(seed))


class _Stack:
    """Collate decoded samples into a uint8 batch; an empty shard gives empty tensors of the right shape."""

    def __init__(self, channels: int, size: int) -> None:
        self.channels, self.size = channels, size

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> Batch:
        if not samples:
            return (
                torch.empty((0, self.channels, self.size, self.size), dtype=torch.uint8),
                torch.empty(0, dtype=torch.int64),
            )
        images, labels = zip(*samples)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
