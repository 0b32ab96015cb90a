"""Tests for supernet.data: format readers, the val split, resumable sharded loaders, augmentation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from supernet.data import (
    DataBundle,
    DatasetError,
    ImageFolderDataset,
    Loader,
    TensorImageDataset,
    build_data,
    derive_seed,
    resize_batch,
    split_indices,
    subset,
)
from supernet.data.augment import (
    Normalizer,
    PadCropFlip,
    ResizedCropFlip,
    apply_pad_crop_flip,
    draw_pad_crop_flip,
    random_resized_crop_box,
)

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")

# ---------------------------------------------------------------- writers of real-format files


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims), optionally gzipped."""
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_fmnist(root: Path, n_train: int = 120, n_test: int = 30, compress: bool = True) -> Path:
    """A tiny Fashion-MNIST directory in the official file layout."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    return root


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing str and bytes as Python 2 `str` (BINSTRING), as in the official files."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def write_pickle(path: Path, obj: object) -> None:
    """Pickle `obj` the way the CIFAR authors' Python 2 cPickle did (numpy.core globals, py2 strings)."""
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def cifar_batch(n: int, label_key: bytes, num_classes: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def write_cifar10(parent: Path) -> Path:
    """A tiny cifar-10-batches-py directory: data_batch_1..5 (8 images each), test_batch, batches.meta."""
    directory = parent / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    for i in range(1, 6):
        write_pickle(directory / f"data_batch_{i}", cifar_batch(8, b"labels", 10, i))
    write_pickle(directory / "test_batch", cifar_batch(6, b"labels", 10, 9))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    write_pickle(directory / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 8})
    return directory


def write_cifar100(parent: Path) -> Path:
    """A tiny cifar-100-python directory: train, test and meta with fine and coarse labels."""
    directory = parent / "cifar-100-python"
    directory.mkdir(parents=True)
    for name, n, seed in (("train", 30, 1), ("test", 10, 2)):
        batch = cifar_batch(n, b"fine_labels", 100, seed)
        batch[b"coarse_labels"] = [v // 5 for v in batch[b"fine_labels"]]
        write_pickle(directory / name, batch)
    write_pickle(
        directory / "meta",
        {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []},
    )
    return directory


def write_image(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


def write_imagefolder(root: Path) -> Path:
    """ImageNet layout with PNG / JPEG files of different sizes and modes, 3 classes, val/ for 2 of them."""
    specs = [
        ((40, 30), "RGB", ".jpg"),
        ((25, 50), "L", ".png"),
        ((33, 33), "RGBA", ".png"),
        ((64, 20), "RGB", ".jpeg"),
    ]
    seed = 0
    for split, classes, per_class in (("train", ("cat", "dog", "eel"), 4), ("val", ("cat", "eel"), 2)):
        for name in classes:
            for i in range(per_class):
                size, mode, ext = specs[(i + seed) % len(specs)]
                write_image(root / split / name / f"{i:03d}{ext}", size, mode, seed)
                seed += 1
    return root


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def fmnist(fmnist_root: Path) -> DataBundle:
    return build_data("fashion_mnist", fmnist_root, val_size=20, seed=0)


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("folder"))


def collect(loader: Loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


# ---------------------------------------------------------------- IDX / Fashion-MNIST


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_gz_and_plain_idx(tmp_path: Path, compress: bool) -> None:
    root = write_fmnist(tmp_path, n_train=50, n_test=12, compress=compress)
    bundle = build_data("fashion_mnist", root, val_size=10)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (40, 10, 12)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert bundle.class_names[0] == "T-shirt/top" and len(bundle.class_names) == 10
    stored = (root / ("t10k-images-idx3-ubyte" + (".gz" if compress else ""))).read_bytes()
    raw = np.frombuffer(gzip.decompress(stored) if compress else stored, np.uint8)[16:]
    assert torch.equal(bundle.test.images, torch.from_numpy(raw.reshape(12, 1, 28, 28).copy()))
    assert bundle.test.labels.tolist() == [i % 10 for i in range(12)]


def test_gzip_and_plain_give_identical_data(tmp_path: Path) -> None:
    gz = build_data("fashion_mnist", write_fmnist(tmp_path / "gz", compress=True), val_size=5)
    plain = build_data("fashion_mnist", write_fmnist(tmp_path / "plain", compress=False), val_size=5)
    assert torch.equal(gz.train.images, plain.train.images) and torch.equal(gz.test.labels, plain.test.labels)


def _corrupt(root: Path, stem: str, transform) -> Path:
    path = root / f"{stem}.gz"
    path.write_bytes(gzip.compress(transform(gzip.decompress(path.read_bytes()))))
    return path


@pytest.mark.parametrize(
    ("stem", "transform", "needle"),
    [
        ("train-images-idx3-ubyte", lambda b: b"\x08\x08" + b[2:], "bad IDX magic"),
        ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated"),
        ("train-labels-idx1-ubyte", lambda b: b + b"\x00", "trailing bytes"),
        ("t10k-images-idx3-ubyte", lambda b: bytes([0, 0, 8, 1]) + b[4:8], "dimensions, expected 3"),
    ],
)
def test_malformed_idx_names_the_file(tmp_path: Path, stem: str, transform, needle: str) -> None:
    root = write_fmnist(tmp_path)
    path = _corrupt(root, stem, transform)
    with pytest.raises(DatasetError, match=needle) as info:
        build_data("fashion_mnist", root)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_label_count_mismatch_and_range(tmp_path: Path) -> None:
    root = write_fmnist(tmp_path, n_train=40)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(39), compress=True)
    with pytest.raises(DatasetError, match="39 labels for 40 images"):
        build_data("fashion_mnist", root, val_size=5)
    write_idx(root / "train-labels-idx1-ubyte", np.full(40, 10), compress=True)
    with pytest.raises(DatasetError, match=r"labels span \[10, 10\], expected \[0, 10\)"):
        build_data("fashion_mnist", root, val_size=5)


def test_missing_and_corrupt_gzip_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        build_data("fashion_mnist", tmp_path / "nowhere")
    message = str(info.value)
    assert f"{tmp_path / 'nowhere' / 'train-images-idx3-ubyte'}(.gz) not found" in message
    assert "dataset-fashion-mnist" in message and "data.root" in message
    root = write_fmnist(tmp_path / "bad")
    path = root / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetError, match="cannot read") as info:
        build_data("fashion_mnist", root, val_size=5)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_reads_official_pickles(tmp_path: Path, use_parent: bool) -> None:
    directory = write_cifar10(tmp_path)
    bundle = build_data("cifar10", tmp_path if use_parent else directory, val_size=8, seed=1)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (32, 8, 6)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, 32)
    assert bundle.class_names[:2] == ("airplane", "automobile")
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each row-major.
    test = pickle.loads((directory / "test_batch").read_bytes(), encoding="bytes")
    n, c, h, w = 4, 2, 5, 7
    assert bundle.test.images[n, c, h, w].item() == test[b"data"][n, c * 1024 + h * 32 + w]
    assert bundle.test.labels.tolist() == test[b"labels"]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    directory = write_cifar100(tmp_path)
    bundle = build_data("cifar100", tmp_path, val_size=5)
    assert (len(bundle.train), len(bundle.val), len(bundle.test), bundle.num_classes) == (25, 5, 10, 100)
    train = pickle.loads((directory / "train").read_bytes(), encoding="bytes")
    assert sorted(torch.cat([bundle.train.labels, bundle.val.labels]).tolist()) == sorted(
        train[b"fine_labels"]
    )
    assert bundle.class_names[99] == "c99"


def test_cifar_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no root directory given"):
        build_data("cifar10")
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        build_data("cifar10", tmp_path)
    directory = write_cifar10(tmp_path)
    truncated = directory / "data_batch_3"
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(DatasetError, match="not a readable CIFAR pickle") as info:
        build_data("cifar10", tmp_path)
    assert str(truncated) in str(info.value)
    batch = cifar_batch(8, b"labels", 10, 3)
    batch[b"labels"] = batch[b"labels"][:-1]
    write_pickle(truncated, batch)
    with pytest.raises(DatasetError, match="7 labels for 8 images"):
        build_data("cifar10", tmp_path)
    write_pickle(truncated, cifar_batch(8, b"labels", 10, 3))
    (directory / "data_batch_5").unlink()
    with pytest.raises(DatasetError, match="data_batch_5: not found"):
        build_data("cifar10", directory)


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_cifar_pickle_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    directory = write_cifar10(tmp_path)
    write_pickle(directory / "test_batch", {b"data": _Exploit(), b"labels": []})
    with pytest.raises(DatasetError, match="refusing to load global"):
        build_data("cifar10", directory)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_scans_classes_and_decodes_any_size(folder_root: Path) -> None:
    bundle = build_data("imagefolder", folder_root, val_size=3, image_size=16)
    assert bundle.class_names == ("cat", "dog", "eel") and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (9, 3, 4)
    assert sorted(bundle.test.labels.tolist()) == [0, 0, 2, 2]
    assert (bundle.image_size, bundle.in_channels) == (16, 3)
    images, labels = collect(
        Loader(bundle.test, 3, seed=0, epoch=0, shuffle=False, augment=False, drop_last=False)
    )
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == bundle.test.labels.tolist()


def test_imagefolder_results_do_not_depend_on_worker_count(folder_root: Path) -> None:
    bundle = build_data("imagefolder", folder_root, val_size=0, image_size=12)
    runs = [
        collect(Loader(bundle.train, 4, seed=5, epoch=2, shuffle=True, augment=True, num_workers=workers))
        for workers in (0, 2)
    ]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    other_epoch = collect(Loader(bundle.train, 4, seed=5, epoch=3, shuffle=True, augment=True))
    assert not torch.equal(runs[0][0], other_epoch[0])


def test_imagefolder_two_ranks_and_resume(folder_root: Path) -> None:
    bundle = build_data("imagefolder", folder_root, val_size=0, image_size=8)
    kwargs = {"seed": 1, "epoch": 0, "shuffle": True, "augment": True}
    full = list(Loader(bundle.train, 4, **kwargs))
    ranks = [list(Loader(bundle.train, 2, rank=r, world_size=2, **kwargs)) for r in range(2)]
    for step, (images, labels) in enumerate(full):
        assert torch.equal(images, torch.cat([ranks[0][step][0], ranks[1][step][0]]))
        assert torch.equal(labels, torch.cat([ranks[0][step][1], ranks[1][step][1]]))
    resumed = list(Loader(bundle.train, 4, start_step=1, **kwargs))
    assert torch.equal(resumed[0][0], full[1][0])


def test_imagefolder_leaves_global_rng_alone(folder_root: Path) -> None:
    bundle = build_data("imagefolder", folder_root, val_size=0, image_size=8)
    state = torch.get_rng_state()
    collect(Loader(bundle.train, 4, seed=0, epoch=0, shuffle=True, augment=True))
    assert torch.equal(state, torch.get_rng_state())


def _empty(directory: Path) -> None:
    for path in directory.iterdir():
        path.unlink()


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [
        (lambda root: _empty(root / "train" / "dog"), "train/dog holds no images"),
        (lambda root: (root / "val").rename(root / "elsewhere"), "val not found"),
        (lambda root: (root / "val" / "fox").mkdir(), "val/fox is not a class"),
        (lambda root: [_empty(root / "val" / name) for name in ("cat", "eel")], "val holds no images"),
    ],
)
def test_imagefolder_layout_errors(tmp_path: Path, breakage, needle: str) -> None:
    root = write_imagefolder(tmp_path / "folder")
    breakage(root)
    with pytest.raises(DatasetError, match=needle) as info:
        build_data("imagefolder", root, val_size=2)
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_imagefolder_flat_val_and_missing_root(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "folder")
    for class_dir in list((root / "val").iterdir()):
        for image in class_dir.iterdir():
            image.rename(root / "val" / f"{class_dir.name}_{image.name}")
        class_dir.rmdir()
    with pytest.raises(DatasetError, match="ships flat"):
        build_data("imagefolder", root, val_size=2)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'absent' / 'train'} not found"):
        build_data("imagefolder", tmp_path / "absent")


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "folder")
    broken = root / "val" / "cat" / "000.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    bundle = build_data("imagefolder", root, val_size=2, image_size=8)
    with pytest.raises(DatasetError, match="cannot decode") as info:
        collect(Loader(bundle.test, 2, seed=0, epoch=0, shuffle=False, augment=False))
    assert str(broken) in str(info.value)


def test_random_resized_crop_box_stays_inside() -> None:
    rng = random.Random(0)
    for width, height in ((40, 30), (5, 200), (300, 7), (1, 1)):
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(width, height, ResizedCropFlip(), rng)
            assert 0 <= left < right <= width and 0 <= top < bottom <= height


# ---------------------------------------------------------------- val split


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), data=st.data(), seed=st.integers(0, 2**40))
def test_split_is_a_disjoint_deterministic_partition(n: int, data: st.DataObject, seed: int) -> None:
    val_size = data.draw(st.integers(0, n - 1))
    train, val = split_indices(n, val_size, seed)
    assert len(val) == val_size and len(train) == n - val_size
    assert sorted(torch.cat([train, val]).tolist()) == list(range(n))
    again = split_indices(n, val_size, seed)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])


def test_split_depends_on_seed_and_val_is_deterministic(fmnist_root: Path, fmnist: DataBundle) -> None:
    assert not torch.equal(split_indices(1000, 100, 0)[1], split_indices(1000, 100, 1)[1])
    again = build_data("fashion_mnist", fmnist_root, val_size=20, seed=0)
    assert torch.equal(fmnist.val.images, again.val.images) and torch.equal(
        fmnist.train.labels, again.train.labels
    )
    assert fmnist.val.augmentation is None and fmnist.test.augmentation is None
    assert fmnist.train.augmentation == PadCropFlip(2)
    no_val = build_data("fashion_mnist", fmnist_root, val_size=0)
    assert no_val.val is None and len(no_val.train) == 120
    with pytest.raises(DatasetError, match="data.val_size=120 leaves no training images: the training set has 120"):
        build_data("fashion_mnist", fmnist_root, val_size=120)


def test_subset_and_limit(fmnist_root: Path, fmnist: DataBundle) -> None:
    small = subset(fmnist.train, 10, seed=3)
    assert isinstance(small, TensorImageDataset) and len(small) == 10 and small.augmentation is not None
    assert subset(fmnist.test, 10**6) is fmnist.test
    limited = build_data("fashion_mnist", fmnist_root, val_size=20, limit=15)
    assert (len(limited.train), len(limited.val), len(limited.test)) == (15, 15, 15)
    with pytest.raises(ValueError, match="subset size"):
        subset(fmnist, 0)


def test_bad_arguments(fmnist_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        build_data("mnist")
    with pytest.raises(ValueError, match="resize_batch"):
        build_data("fashion_mnist", fmnist_root, val_size=5, image_size=32)


# ---------------------------------------------------------------- loader


def test_batches_are_a_pure_function_of_seed_and_epoch(fmnist: DataBundle) -> None:
    def run(seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return collect(Loader(fmnist.train, 16, seed=seed, epoch=epoch, shuffle=True, augment=True))

    first, again = run(0, 1), run(0, 1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], run(0, 2)[0]) and not torch.equal(first[0], run(1, 1)[0])
    assert (
        first[0].shape == (96, 1, 28, 28)
        and first[0].dtype == torch.float32
        and first[1].dtype == torch.int64
    )


def test_start_step_resumes_identically(fmnist: DataBundle) -> None:
    kwargs = {"seed": 7, "epoch": 4, "shuffle": True, "augment": True}
    full = list(Loader(fmnist.train, 16, **kwargs))
    resumed = Loader(fmnist.train, 16, start_step=4, **kwargs)
    assert len(resumed) == 2 and resumed.steps_per_epoch == 6
    for (a, la), (b, lb) in zip(full[4:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert list(Loader(fmnist.train, 16, start_step=6, **kwargs)) == []
    with pytest.raises(ValueError, match="start_step=7"):
        Loader(fmnist.train, 16, start_step=7, **kwargs)


@pytest.mark.parametrize(("world_size", "drop_last"), [(2, True), (2, False), (3, False)])
def test_rank_shards_union_equals_single_process(
    fmnist: DataBundle, world_size: int, drop_last: bool
) -> None:
    kwargs = {"seed": 3, "epoch": 1, "shuffle": True, "augment": True, "drop_last": drop_last}
    single = list(Loader(fmnist.train, 8 * world_size, **kwargs))
    shards = [
        list(Loader(fmnist.train, 8, rank=r, world_size=world_size, **kwargs)) for r in range(world_size)
    ]
    assert all(len(shard) == len(single) for shard in shards)
    for step, (images, labels) in enumerate(single):
        assert torch.equal(images, torch.cat([shard[step][0] for shard in shards]))
        assert torch.equal(labels, torch.cat([shard[step][1] for shard in shards]))
    seen = torch.cat([labels for shard in shards for _, labels in shard])
    assert len(seen) == (96 if drop_last else 100)


def test_epoch_covers_every_item_once(fmnist: DataBundle) -> None:
    loader = Loader(fmnist.val, 6, seed=0, epoch=0, shuffle=True, augment=False, drop_last=False)
    assert sorted(loader.order().tolist()) == list(range(20)) and len(loader) == 4
    assert [len(labels) for _, labels in loader] == [6, 6, 6, 2]
    with pytest.raises(ValueError, match="no full global batch"):
        Loader(fmnist.val, 32, seed=0, epoch=0, shuffle=True, augment=False)


def test_augmentation_only_on_train(fmnist: DataBundle) -> None:
    for split in (fmnist.val, fmnist.test):
        with pytest.raises(ValueError, match="val and test are deterministic"):
            Loader(split, 4, seed=0, epoch=0, shuffle=False, augment=True)
    images, labels = collect(Loader(fmnist.test, 10, seed=0, epoch=0, shuffle=False, augment=False))
    expected = (fmnist.test.images.float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    assert torch.equal(labels, fmnist.test.labels)
    plain = collect(Loader(fmnist.train, 20, seed=0, epoch=0, shuffle=False, augment=False))[0]
    augmented = collect(Loader(fmnist.train, 20, seed=0, epoch=0, shuffle=False, augment=True))[0]
    assert plain.shape == augmented.shape and not torch.equal(plain, augmented)


def test_pad_crop_flip_matches_a_per_image_reference() -> None:
    images = torch.randint(0, 256, (12, 3, 7, 9), dtype=torch.uint8)
    aug = PadCropFlip(padding=3)
    draws = draw_pad_crop_flip(12, aug, torch.Generator().manual_seed(0))
    out = apply_pad_crop_flip(images, draws, aug.padding)
    for i in range(12):
        padded = torch.nn.functional.pad(images[i], (3, 3, 3, 3))
        top, left = int(draws.top[i]), int(draws.left[i])
        crop = padded[:, top : top + 7, left : left + 9]
        assert torch.equal(out[i], crop.flip(-1) if draws.flip[i] else crop)
    assert draws.flip.any() and not draws.flip.all()
    no_flip = draw_pad_crop_flip(12, PadCropFlip(3, flip=False), torch.Generator().manual_seed(0))
    assert not no_flip.flip.any() and torch.equal(no_flip.top, draws.top)


# ---------------------------------------------------------------- resize, normalise, seeds


def test_resize_batch_shapes_and_noop() -> None:
    images = torch.randn(4, 3, 28, 28)
    assert resize_batch(images, 28) is images
    assert resize_batch(images, 32).shape == (4, 3, 32, 32)
    assert resize_batch(images, (20, 24)).shape == (4, 3, 20, 24)
    constant = torch.full((2, 1, 8, 8), 0.5)
    torch.testing.assert_close(resize_batch(constant, 13), torch.full((2, 1, 13, 13), 0.5))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        resize_batch(torch.randn(3, 28, 28), 32)
    with pytest.raises(ValueError, match="resolution"):
        resize_batch(images, 0)


def test_normalizer_and_dataset_validation() -> None:
    normalizer = Normalizer((0.5, 0.25), (0.5, 0.125))
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
    torch.testing.assert_close(normalizer(images)[0, :, 0, 0], torch.tensor([-1.0, 6.0]))
    with pytest.raises(ValueError, match="std > 0"):
        Normalizer((0.5,), (0.0,))
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(
            torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), Normalizer((0.0,), (1.0,))
        )
    with pytest.raises(ValueError, match="paths for"):
        ImageFolderDataset(Path("."), np.array([b"a"]), torch.zeros(2, dtype=torch.int64), 8, normalizer)


def test_derive_seed_is_order_sensitive_and_stable() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(1, 2, 3), derive_seed(3, 2, 1), derive_seed(1, 2), derive_seed(1, 2, 3, 0)}) == 4
    assert 0 <= derive_seed(-1, 2**70) < 2**63


# ---------------------------------------------------------------- the real data set


@pytest.mark.skipif(
    not (REAL_FMNIST / "train-images-idx3-ubyte.gz").exists()
    and not (REAL_FMNIST / "train-images-idx3-ubyte").exists(),
    reason=f"Fashion-MNIST not installed at {REAL_FMNIST} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    bundle = build_data("fashion_mnist")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (55000, 5000, 10000)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(bundle.test.labels).tolist() == [1000] * 10
    images, _ = next(iter(Loader(bundle.train, 256, seed=0, epoch=0, shuffle=True, augment=True)))
    assert images.shape == (256, 1, 28, 28) and abs(images.mean().item()) < 0.2


def test_keep_classes_relabels_in_the_order_given() -> None:
    from supernet.data import DatasetError, keep_classes
    from training_helpers import small_data

    data = small_data()
    kept = keep_classes(data, [3, 1])
    assert kept.num_classes == 2 and kept.class_names == (data.class_names[3], data.class_names[1])
    for split, original in ((kept.train, data.train), (kept.test, data.test)):
        assert len(split) == int(((original.labels == 3) | (original.labels == 1)).sum())
        assert torch.equal(split.images[split.labels == 0], original.images[original.labels == 3])
        assert torch.equal(split.images[split.labels == 1], original.images[original.labels == 1])
    for bad in ([], [1, 1], [10]):
        with pytest.raises(DatasetError, match="data.classes"):
            keep_classes(data, bad)
