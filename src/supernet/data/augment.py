"""Augmentation, normalisation and resolution changes: vectorised on batches, or per decoded image."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

EVAL_CROP_FRACTION = 0.875  # resize the shorter side to size / 0.875, then centre-crop (224 <- 256)


@dataclass(frozen=True)
class PadCropFlip:
    """Train augmentation of in-memory data sets: random crop after zero padding, random h-flip."""

    padding: int
    flip: bool = True


@dataclass(frozen=True)
class ResizedCropFlip:
    """Train augmentation of decoded images: random-resized-crop (Inception style) and random h-flip."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True


@dataclass(frozen=True)
class CropFlipDraws:
    """Per-image draws of a PadCropFlip: crop offsets into the padded image and flip flags."""

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor

    def __getitem__(self, part: slice) -> CropFlipDraws:
        """Draws of the images in `part` (e.g. one rank's shard of a global batch)."""
        return CropFlipDraws(self.top[part], self.left[part], self.flip[part])


def draw_pad_crop_flip(n: int, aug: PadCropFlip, generator: torch.Generator) -> CropFlipDraws:
    """Draw crop offsets and flip flags for `n` images from `generator`."""
    top = torch.randint(0, 2 * aug.padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * aug.padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return CropFlipDraws(top, left, flip if aug.flip else torch.zeros_like(flip))


def apply_pad_crop_flip(images: torch.Tensor, draws: CropFlipDraws, padding: int) -> torch.Tensor:
    """Crop each (C, H, W) image of a batch from its zero-padded copy at its offset, flipped if drawn."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = draws.top[:, None] + torch.arange(h)
    ascending = torch.arange(w)
    cols = draws.left[:, None] + torch.where(draws.flip[:, None], w - 1 - ascending, ascending)
    # One gather does crop and flip for the whole batch; each output pixel depends only on its image.
    return padded[
        torch.arange(n)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class Normalizer:
    """Map uint8 (N, C, H, W) images to float32 (x / 255 - mean) / std per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {mean} and std {std} must have one entry per channel and std > 0")
        self.mean, self.std = tuple(mean), tuple(std)
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
        self._shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 batch into a new float32 tensor."""
        return images.to(torch.float32).mul_(self._scale).sub_(self._shift)


def resize_batch(images: torch.Tensor, resolution: int | tuple[int, int]) -> torch.Tensor:
    """Resize a float (N, C, H, W) batch to `resolution` with bilinear interpolation; no-op if already so."""
    if images.dim() != 4:
        raise ValueError(f"resize_batch expects an (N, C, H, W) batch, got shape {tuple(images.shape)}")
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"resolution must be a positive int or (height, width), got {resolution!r}")
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def random_resized_crop_box(
    width: int, height: int, aug: ResizedCropFlip, rng: random.Random
) -> tuple[int, int, int, int]:
    """Draw an Inception-style crop box (left, top, right, bottom) as torchvision's RandomResizedCrop."""
    area = width * height
    log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*aug.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(aug.ratio):
        w, h = width, round(width / min(aug.ratio))
    elif in_ratio > max(aug.ratio):
        w, h = round(height * max(aug.ratio)), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, fraction: float = EVAL_CROP_FRACTION) -> tuple[float, ...]:
    """Box of the central square covering `fraction` of the shorter side (resize-then-centre-crop)."""
    side = min(width, height) * fraction
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def transform_image(
    image: Image.Image, size: int, aug: ResizedCropFlip | None, rng: random.Random | None
) -> torch.Tensor:
    """Crop and resize a decoded image to a uint8 (3, size, size) tensor: random if `aug`, centred if None."""
    image = image.convert("RGB")
    if aug is None:
        box = center_crop_box(*image.size)
        flip = False
    else:
        if rng is None:
            raise ValueError("a random-resized-crop transform needs its per-sample rng")
        box = random_resized_crop_box(*image.size, aug, rng)
        flip = aug.flip and rng.random() < 0.5
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
