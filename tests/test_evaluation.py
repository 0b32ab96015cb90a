"""Tests for supernet.evaluation: BN recalibration, accuracy, the cached Evaluator."""

from __future__ import annotations

import copy
import inspect
import json
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from net_helpers import elastic_arch
from supernet import spaces
from supernet.checkpoint import checkpoint_digest
from supernet.data import DataBundle, DatasetError, Loader, TensorImageDataset, build_data, resize_batch
from supernet.data.augment import Normalizer, PadCropFlip
from supernet.evaluation import (
    CacheError,
    EvalResult,
    Evaluator,
    accuracy,
    bn_state,
    preserved_bn_state,
    recalibrate_bn,
    restore_bn_state,
)
from supernet.model import Supernet
from supernet.space import Arch, ArchError, SearchSpace

TINY_SPACE = {
    "name": "tiny",
    "in_channels": 1,
    "num_classes": 10,
    "stem": {"widths": [4, 8], "kernel": 3, "stride": 1, "activation": "relu"},
    "stages": [
        {
            "widths": [8, 16],
            "depths": [1, 2],
            "kernels": [3, 5],
            "expand_ratios": [1, 2],
            "stride": 2,
            "se": True,
        },
        {"widths": [16, 24], "depths": [1, 2], "kernels": [3], "expand_ratios": [2, 3], "stride": 2},
    ],
    "head": {"expand_ratio": 2, "widths": [16, 32]},
    "resolutions": [8, 12],
}
CLASSES = 10
BATCH = 16


@pytest.fixture
def space() -> SearchSpace:
    return spaces.from_dict(TINY_SPACE)


@pytest.fixture
def net(space: SearchSpace) -> Supernet:
    """A supernet whose BN statistics look mid-training (not the 0/1 defaults), with regularisation on."""
    net = Supernet(space, CLASSES)
    with torch.no_grad():
        for arch in (space.largest(), space.smallest()):
            net.set_active(arch)
            net(torch.randn(8, 1, arch.resolution, arch.resolution) * 2 + 1)
    net.set_active(space.largest())
    net.dropout_rate, net.drop_connect_rate = 0.2, 0.1
    net.noise_generator = torch.Generator().manual_seed(7)
    return net


def make_bundle(train: int = 96, val: int | None = 40, test: int = 24, classes: int = CLASSES) -> DataBundle:
    generator = torch.Generator().manual_seed(1)
    normalizer = Normalizer((0.5,), (0.25,))

    def split(n: int, augment: bool) -> TensorImageDataset:
        images = torch.randint(0, 256, (n, 1, 12, 12), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, classes, (n,), generator=generator)
        return TensorImageDataset(images, labels, normalizer, PadCropFlip(1) if augment else None)

    return DataBundle(
        name="toy",
        train=split(train, True),
        val=None if val is None else split(val, False),
        test=split(test, False),
        num_classes=classes,
        in_channels=1,
        image_size=12,
        class_names=tuple(str(c) for c in range(classes)),
    )


def middle_arch(space: SearchSpace) -> Arch:
    """An arch with sliced widths, mixed kernels and ratios (not an extreme of the space)."""
    return elastic_arch(
        resolution=12,
        stem_width=4,
        widths=(16, 16),
        depths=(2, 1),
        kernels=((5, 3), (3,)),
        expand_ratios=((2, 1), (3,)),
        head_width=16,
    )


def snapshot(net: Supernet) -> dict:
    """Everything a training step can observe about the network."""
    return {
        "tensors": {k: v.clone() for k, v in net.state_dict().items()},
        "modes": [m.training for m in net.modules()],
        "momenta": [m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)],
        "active": net.active_arch,
        "rates": (net.dropout_rate, net.drop_connect_rate),
        "noise": net.noise_generator.get_state().clone(),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["tensors"].keys() == b["tensors"].keys()
    for key in a["tensors"]:
        assert torch.equal(a["tensors"][key], b["tensors"][key]), key
    assert a["modes"] == b["modes"]
    assert a["momenta"] == b["momenta"]
    assert a["active"] == b["active"]
    assert a["rates"] == b["rates"]
    assert torch.equal(a["noise"], b["noise"])


# -- recalibrate_bn ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["smallest", "largest"])  # sliced and full-width stem BN
def test_recalibrated_stem_statistics_are_the_mean_over_all_used_images(net: Supernet, which: str) -> None:
    arch = getattr(net.space, which)()
    images = torch.randn(48, 1, 12, 12) + 3.0  # shifted so the mean is far from the reset value 0
    used = recalibrate_bn(net, arch, images.split(16), num_images=40)  # batches of 16, 16 and a truncated 8
    assert used == 40

    conv = net.stem.conv
    weight = conv.weight[: arch.stem_width]
    outputs = [
        F.conv2d(resize_batch(chunk, arch.resolution), weight, None, conv.stride, conv.padding)
        for chunk in images[:40].split(16)
    ]
    everything = torch.cat(outputs)
    expected_mean = everything.mean(dim=(0, 2, 3))
    # Variance: the image-weighted mean of the per-batch (unbiased) variances BN tracks.
    expected_var = sum(len(o) * o.var(dim=(0, 2, 3), unbiased=True) for o in outputs) / 40

    bn = net.stem.bn
    w = arch.stem_width
    torch.testing.assert_close(bn.running_mean[:w], expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var[:w], expected_var, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3
    # An exponential moving average would give far less weight to the first batch: not what we have.
    ema = outputs[0].mean(dim=(0, 2, 3)) * 0.9**2 * 0.1
    assert not torch.allclose(bn.running_mean[:w], ema)


def test_equal_batches_give_torchs_cumulative_average(net: Supernet, space: SearchSpace) -> None:
    arch = middle_arch(space)
    batches = list((torch.randn(32, 1, 12, 12) * 1.5 - 0.5).split(8))
    reference = copy.deepcopy(net)
    reference.set_active(arch)
    reference.dropout_rate = reference.drop_connect_rate = 0.0
    reference.train()
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for b in batches:
            reference(b)

    recalibrate_bn(net, arch, batches, num_images=32)
    ours, theirs = bn_state(net), bn_state(reference)
    for name in ours:
        for key in ours[name]:
            torch.testing.assert_close(ours[name][key], theirs[name][key], rtol=1e-5, atol=1e-6)


def test_recalibration_resets_every_bn_layer(net: Supernet, space: SearchSpace) -> None:
    recalibrate_bn(net, space.smallest(), [torch.randn(8, 1, 12, 12)], num_images=8)
    unused = net.stages[0][1].depthwise_bn  # depth 1 leaves the stage's second block off
    assert torch.equal(unused.running_mean, torch.zeros_like(unused.running_mean))
    assert torch.equal(unused.running_var, torch.ones_like(unused.running_var))
    assert int(unused.num_batches_tracked) == 0


def test_recalibration_consumes_only_num_images_and_restores_settings(
    net: Supernet, space: SearchSpace
) -> None:
    pulled = []

    def stream():
        for i in range(10):
            pulled.append(i)
            yield torch.randn(10, 1, 12, 12), torch.zeros(10, dtype=torch.int64)

    net.train()
    net.stem.eval()  # a frozen part must stay frozen: flags are restored per module
    net.stem.bn.momentum = 0.3
    seen_during = []
    hook = net.head.register_forward_pre_hook(
        lambda m, args: seen_during.append((net.training, net.dropout_rate, net.drop_connect_rate))
    )
    before = snapshot(net)

    assert recalibrate_bn(net, space.largest(), stream(), num_images=25) == 25
    hook.remove()
    assert pulled == [0, 1, 2]  # 10 + 10 + 5: the fourth batch is never requested
    assert seen_during == [(True, 0.0, 0.0)] * 3  # train mode, no dropout, no drop-connect
    after = snapshot(net)
    assert after["modes"] == before["modes"] and not net.stem.training and net.training
    assert after["momenta"] == before["momenta"] and net.stem.bn.momentum == 0.3
    assert after["rates"] == before["rates"] == (0.2, 0.1)
    assert torch.equal(after["noise"], before["noise"])
    assert net.active_arch == space.largest()


def test_recalibration_uses_what_there_is_and_rejects_nothing(net: Supernet, space: SearchSpace) -> None:
    assert recalibrate_bn(net, space.smallest(), [torch.randn(6, 1, 8, 8)] * 2, num_images=100) == 12
    with pytest.raises(ValueError, match="no images"):
        recalibrate_bn(net, space.smallest(), [], num_images=100)
    with pytest.raises(ValueError, match="num_images"):
        recalibrate_bn(net, space.smallest(), [torch.randn(6, 1, 8, 8)], num_images=0)


def test_recalibration_streams_without_keeping_batches(net: Supernet, space: SearchSpace) -> None:
    refs: list[weakref.ref] = []
    most_alive = 0

    def stream():
        nonlocal most_alive
        for _ in range(40):
            most_alive = max(most_alive, sum(r() is not None for r in refs))
            holder = [torch.randn(4, 1, 12, 12)]
            refs.append(weakref.ref(holder[0]))
            yield holder.pop()  # the generator itself keeps no reference

    assert recalibrate_bn(net, space.smallest(), stream(), num_images=150) == 150
    assert len(refs) == 38
    assert most_alive <= 1  # memory does not grow with the number of batches
    assert all(r() is None for r in refs)  # and nothing is left behind


def test_recalibration_closes_only_iterators_it_creates(net: Supernet, space: SearchSpace) -> None:
    class Source:
        """An iterable (like a Loader) whose iterators are generators."""

        def __init__(self) -> None:
            self.made: list = []

        def __iter__(self):
            self.made.append(torch.randn(8, 1, 12, 12) for _ in range(10))
            return self.made[-1]

    source = Source()
    assert recalibrate_bn(net, space.smallest(), source, num_images=20) == 20
    assert inspect.getgeneratorstate(source.made[0]) == "GEN_CLOSED"  # its workers are released now
    callers = (torch.randn(8, 1, 12, 12) for _ in range(10))
    recalibrate_bn(net, space.smallest(), callers, num_images=20)
    assert inspect.getgeneratorstate(callers) == "GEN_SUSPENDED"  # the caller's own iterator stays usable
    assert next(callers).shape == (8, 1, 12, 12)


def test_bn_state_round_trip(net: Supernet, space: SearchSpace) -> None:
    state = bn_state(net)
    before = snapshot(net)
    with preserved_bn_state(net):
        recalibrate_bn(net, space.smallest(), [torch.randn(8, 1, 12, 12) + 5], num_images=8)
        assert not torch.equal(net.stem.bn.running_mean, before["tensors"]["stem.bn.running_mean"])
    assert_same(snapshot(net), {**before, "active": space.smallest()})
    recalibrate_bn(net, space.smallest(), [torch.randn(8, 1, 12, 12) + 5], num_images=8)
    restore_bn_state(net, state)
    assert_same(snapshot(net), {**before, "active": space.smallest()})
    with pytest.raises(ValueError, match="BatchNorm layers"):
        restore_bn_state(net, {})


# -- accuracy ---------------------------------------------------------------------------------------


class Lookup(nn.Module):
    """Image i (a 1x1 image holding the number i) gets the logits in row i of `table`."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.table[x.flatten(1)[:, 0].long()]


def ranked_problem(ranks: list[int], classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with distinct values per row and labels whose rank (0 = best) in each row is `ranks[i]`."""
    generator = torch.Generator().manual_seed(3)
    rows, labels = [], []
    for rank in ranks:
        order = torch.randperm(classes, generator=generator)  # order[r] is the class ranked r
        logits = torch.empty(classes)
        logits[order] = torch.linspace(2.0, -1.0, classes)
        rows.append(logits)
        labels.append(int(order[rank]))
    return torch.stack(rows), torch.tensor(labels)


def lookup_batches(n: int, labels: torch.Tensor, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    index = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return list(zip(index.split(sizes), labels.split(sizes)))


def test_accuracy_of_known_outputs() -> None:
    ranks = [0, 0, 1, 4, 5, 6, 2, 0]
    table, labels = ranked_problem(ranks, classes=7)
    model = Lookup(table).train()
    result = accuracy(model, lookup_batches(8, labels, [3, 5]), None, num_classes=7)
    expected_loss = (
        -sum(
            float(table[i, labels[i]]) - math.log(sum(math.exp(float(v)) for v in table[i])) for i in range(8)
        )
        / 8
    )
    assert result.top1 == 3 / 8
    assert result.top5 == 6 / 8
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.images == 8
    assert model.modes == [False, False] and model.training  # evaluated in eval mode, flag restored


def test_top5_is_none_with_five_classes_or_fewer() -> None:
    table, labels = ranked_problem([0, 1, 4, 0], classes=5)
    result = accuracy(Lookup(table), lookup_batches(4, labels, [4]), None, num_classes=5)
    assert result.top1 == 2 / 4 and result.top5 is None


def test_accuracy_resizes_and_checks_the_number_of_classes() -> None:
    shapes = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(x.shape))
            return torch.zeros(len(x), 10)

    batch = (torch.randn(3, 1, 12, 12), torch.zeros(3, dtype=torch.int64))
    accuracy(Probe(), [batch], 20, num_classes=10)
    assert shapes == [(3, 1, 20, 20)]
    with pytest.raises(ValueError, match="num_classes"):
        accuracy(Probe(), [batch], None, num_classes=7)
    with pytest.raises(ValueError, match="no images"):
        accuracy(Probe(), [], None, num_classes=10)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_accuracy_matches_a_numpy_reference(n: int, classes: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(n, classes, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    result = accuracy(Lookup(table), lookup_batches(n, labels, [7] * (n // 7) + [n % 7]), None, classes)

    logits, y = table.double().numpy(), labels.numpy()
    rank = (logits > logits[np.arange(n), y][:, None]).sum(axis=1)
    log_prob = logits[np.arange(n), y] - np.log(np.exp(logits).sum(axis=1))
    assert result.top1 == pytest.approx(np.mean(rank == 0))
    assert result.top5 == (pytest.approx(np.mean(rank < 5)) if classes > 5 else None)
    assert result.loss == pytest.approx(-log_prob.mean(), rel=1e-5)


# -- Evaluator --------------------------------------------------------------------------------------


def count_forwards(net: nn.Module) -> list[int]:
    calls = [0]
    net.register_forward_hook(lambda m, args, out: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_second_evaluation_is_a_cache_hit_without_forward_passes(net: Supernet, space: SearchSpace) -> None:
    evaluator = Evaluator(net, make_bundle(), BATCH, "ckpt-a", recalibration_images=32)
    assert evaluator.recalibration_images == 32
    calls = count_forwards(net)
    first = evaluator.evaluate(space.smallest())
    assert (evaluator.hits, evaluator.misses) == (0, 1)
    assert calls[0] == 2 + 3  # two recalibration batches, three val batches (16, 16, 8)
    assert first.images == 40 and first.top5 is not None

    assert evaluator.evaluate(space.smallest()) == first
    assert (evaluator.hits, evaluator.misses, calls[0]) == (1, 1, 5)
    evaluator.evaluate(space.smallest(), split="test")  # another split is another entry
    assert (evaluator.hits, evaluator.misses) == (1, 2)
    assert evaluator.evaluate_many([space.smallest(), space.largest()]) == [
        first,
        evaluator.evaluate(space.largest()),
    ]
    assert (evaluator.hits, evaluator.misses) == (3, 3)


def test_default_recalibration_is_64_batches(net: Supernet) -> None:
    assert Evaluator(net, make_bundle(), 8, "x").recalibration_images == 64 * 8


def test_cache_persists_across_evaluators(net: Supernet, space: SearchSpace, tmp_path: Path) -> None:
    path = tmp_path / "runs" / "eval_cache.json"
    bundle = make_bundle()
    arch = middle_arch(space)
    first = Evaluator(net, bundle, BATCH, "ckpt-a", recalibration_images=32, cache_path=path).evaluate(arch)
    assert json.loads(path.read_text())["entries"][0]["arch"] == arch.to_dict()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind

    calls = count_forwards(net)
    reloaded = Evaluator(net, bundle, BATCH, "ckpt-a", recalibration_images=32, cache_path=path)
    assert reloaded.evaluate(arch) == first
    assert (reloaded.hits, reloaded.misses, calls[0]) == (1, 0, 0)

    other_checkpoint = Evaluator(net, bundle, BATCH, "ckpt-b", recalibration_images=32, cache_path=path)
    other_checkpoint.evaluate(arch)
    other_settings = Evaluator(net, bundle, BATCH, "ckpt-a", recalibration_images=48, cache_path=path)
    other_settings.evaluate(arch)
    assert other_checkpoint.misses == other_settings.misses == 1
    assert len(json.loads(path.read_text())["entries"]) == 3  # writers merge with what the file holds


def test_unreadable_cache_is_a_clear_error(net: Supernet, tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    with pytest.raises(CacheError, match="delete it"):
        Evaluator(net, make_bundle(), BATCH, "x", cache_path=path)
    path.write_text(json.dumps({"format": 1, "entries": [{"checkpoint": "x"}]}))
    with pytest.raises(CacheError, match="malformed"):
        Evaluator(net, make_bundle(), BATCH, "x", cache_path=path)


def test_evaluation_leaves_the_training_run_bit_identical(net: Supernet, space: SearchSpace) -> None:
    """Two identical runs, one evaluating between its steps, end in exactly the same state."""
    evaluator_net = copy.deepcopy(net)
    evaluator = Evaluator(evaluator_net, make_bundle(), BATCH, "ckpt", recalibration_images=32)
    inputs = torch.randn(2, 8, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    labels = torch.randint(0, CLASSES, (2, 8), generator=torch.Generator().manual_seed(6))
    runs = []
    for model, evaluate in ((net, False), (evaluator_net, True)):
        model.train()
        model.set_active(space.largest())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(2):
            loss = F.cross_entropy(model(inputs[step]), labels[step])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if evaluate:
                rng = torch.get_rng_state()
                before = snapshot(model)
                evaluator.evaluate(space.smallest())
                evaluator.evaluate(middle_arch(space), split="test")
                assert torch.equal(torch.get_rng_state(), rng)  # global random stream untouched
                evaluator.extract(space.smallest())
                assert_same(snapshot(model), before)
        runs.append(snapshot(model))
    assert_same(runs[0], runs[1])


def test_results_are_deterministic_across_evaluators(net: Supernet, space: SearchSpace) -> None:
    bundle = make_bundle()
    archs = [middle_arch(space), space.largest()]
    first = Evaluator(net, bundle, BATCH, "ckpt", recalibration_images=40).evaluate_many(archs)
    second = Evaluator(copy.deepcopy(net), bundle, BATCH, "ckpt", recalibration_images=40).evaluate_many(
        archs[::-1]
    )
    assert first == second[::-1]
    assert first[0] != first[1]


def test_extracted_network_scores_what_the_evaluator_reports(net: Supernet, space: SearchSpace) -> None:
    bundle = make_bundle()
    arch = middle_arch(space)
    evaluator = Evaluator(net, bundle, BATCH, "ckpt", recalibration_images=40, seed=3)
    reported = evaluator.evaluate(arch)

    # The documented recipe, by hand: seeded un-augmented train order, recalibrate, extract, score.
    recalibration = Loader(bundle.train, BATCH, seed=3, epoch=0, shuffle=True, augment=False, drop_last=False)
    standalone = copy.deepcopy(net)
    assert recalibrate_bn(standalone, arch, recalibration, 40) == 40
    static = standalone.extract(arch)
    val = Loader(bundle.val, BATCH, seed=0, epoch=0, shuffle=False, augment=False, drop_last=False)
    by_hand = accuracy(static, val, arch.resolution, CLASSES)
    from_evaluator = accuracy(
        evaluator.extract(arch), evaluator.split_batches("val"), arch.resolution, CLASSES
    )

    for result in (by_hand, from_evaluator):
        assert (result.top1, result.top5, result.images) == (reported.top1, reported.top5, reported.images)
        assert result.loss == pytest.approx(reported.loss, rel=1e-5)


def test_missing_val_split_names_the_fix(net: Supernet, space: SearchSpace) -> None:
    evaluator = Evaluator(net, make_bundle(val=None), BATCH, "ckpt", recalibration_images=16)
    with pytest.raises(ValueError, match=r"data.val_size > 0"):
        evaluator.evaluate(space.smallest())
    with pytest.raises(ValueError, match="unknown split 'train'"):
        evaluator.evaluate(space.smallest(), split="train")
    assert evaluator.evaluate(space.smallest(), split="test").images == 24


def test_bad_arguments_are_rejected(net: Supernet, space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="classes"):
        Evaluator(net, make_bundle(classes=5), BATCH, "ckpt")
    with pytest.raises(ValueError, match="checkpoint_id"):
        Evaluator(net, make_bundle(), BATCH, "")
    evaluator = Evaluator(net, make_bundle(), BATCH, "ckpt")
    outside = Arch(16, 4, (8, 16), (1, 1), (((3, 1),), ((3, 2),)), 16)
    with pytest.raises(ArchError):
        evaluator.evaluate(outside)


def test_checkpoint_digest_tracks_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights!")
    assert checkpoint_digest(a) == checkpoint_digest(a) != checkpoint_digest(b)


def test_eval_result_round_trips() -> None:
    for result in (EvalResult(0.5, 0.75, 1.25, 8), EvalResult(0.1, None, 2.0, 3)):
        assert EvalResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_fashion_mnist_end_to_end() -> None:
    try:
        bundle = build_data("fashion_mnist", val_size=1000, seed=0, limit=64)
    except DatasetError as err:  # the data set is an optional system package
        pytest.skip(f"Fashion-MNIST not available: {err}")
    from supernet.spaces import get

    space = get("fmnist")
    net = Supernet(space, bundle.num_classes, in_channels=bundle.in_channels)
    evaluator = Evaluator(net, bundle, 32, "fresh", recalibration_images=64)
    result = evaluator.evaluate(space.smallest())
    assert result.images == 64 and 0.0 <= result.top1 <= result.top5 <= 1.0
    assert result.loss == pytest.approx(math.log(10), rel=0.2)  # an untrained net is near chance
