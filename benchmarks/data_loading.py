"""Print data-pipeline throughput: Fashion-MNIST train / eval batches and resize_batch to 32 px."""

from __future__ import annotations

import argparse
import time

import torch

from supernet.data import DatasetError, Loader, TensorImageDataset, build_data, resize_batch
from supernet.data.augment import Normalizer, PadCropFlip


def load_train_test(root: str | None) -> tuple[TensorImageDataset, TensorImageDataset, str]:
    """Real Fashion-MNIST (train without val, test), or random uint8 data of the same shape if absent."""
    try:
        start = time.perf_counter()
        bundle = build_data("fashion_mnist", root)
        source = f"real files (build_data {time.perf_counter() - start:.2f} s)"
        return bundle.train, bundle.test, source
    except DatasetError as exc:
        generator = torch.Generator().manual_seed(0)
        normalizer = Normalizer((0.286,), (0.353,))

        def fake(n: int, augmentation: PadCropFlip | None) -> TensorImageDataset:
            images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
            labels = torch.randint(0, 10, (n,), generator=generator)
            return TensorImageDataset(images, labels, normalizer, augmentation)

        return fake(55000, PadCropFlip(2)), fake(10000, None), f"SYNTHETIC data ({exc})"


def images_per_second(loader: Loader) -> tuple[float, int]:
    """Iterate one epoch and return (images/s, images)."""
    count = 0
    start = time.perf_counter()
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start), count


def main() -> None:
    """Run the measurements and print one labelled line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default=None, help="Fashion-MNIST directory (default: Debian's)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    train, test, source = load_train_test(args.root)
    print(f"data: fashion_mnist train {len(train)} / test {len(test)}, {source}")
    print(f"torch intra-op threads: {torch.get_num_threads()}; best of {args.epochs} epochs")
    size = args.batch_size
    for augment in (True, False):
        rates = [
            images_per_second(Loader(train, size, seed=0, epoch=epoch, shuffle=True, augment=augment))[0]
            for epoch in range(args.epochs)
        ]
        label = "pad-crop+flip+normalise" if augment else "normalise only"
        print(f"fashion_mnist train batches (batch {size}, {label}): {max(rates):,.0f} images/s")
    eval_loader = Loader(test, size, seed=0, epoch=0, shuffle=False, augment=False, drop_last=False)
    rate, count = images_per_second(eval_loader)
    print(f"fashion_mnist eval batches (batch {size}, test split, {count} images): {rate:,.0f} images/s")

    batch = next(iter(Loader(train, size, seed=0, epoch=0, shuffle=True, augment=True)))[0]
    repeats = 200
    resize_batch(batch, 32)
    start = time.perf_counter()
    for _ in range(repeats):
        resize_batch(batch, 32)
    per_batch = (time.perf_counter() - start) / repeats
    print(
        f"resize_batch 28 -> 32 px (bilinear, batch {size}): {per_batch * 1e3:.2f} ms/batch, "
        f"{size / per_batch:,.0f} images/s"
    )


if __name__ == "__main__":
    main()
