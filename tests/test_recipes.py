"""Recipes as their papers define them, and comparisons that are like for like."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from supernet import spaces
from supernet.config import load_config
from supernet.cost import macs
from supernet.training.samplers import SampleContext, UniformSampler

CONFIGS = Path(__file__).parent.parent / "configs"

# Each group is one paper's comparison: its recipes may differ only in the sections that paper varies.
COMPARISONS = {
    # AlphaNet Table 3: no KD, KL-KD, symmetric KL, KL + attentive sampling, adaptive alpha: only the KD
    # loss and (for AttentiveNAS) the sampler change.
    "alphanet table 3": (
        ["alphanet.yaml", "bignas_kl.yaml", "nokd.yaml", "symmetric_kl.yaml", "attentivenas.yaml"],
        {"sampler", "teacher", "distill"},
    ),
    # DepS Table 2 on one budget of 2 epochs: BigNAS, OFA, CompOFA and DepS (and DepS + AlphaNet) differ in
    # sampling, teacher, loss and schedule; OFA-style phases carry their own epochs and warm-up.
    "deps table 2": (
        ["deps.yaml", "deps_alpha.yaml", "bignas.yaml", "ofa.yaml", "compofa.yaml"],
        {"sampler", "teacher", "distill", "schedule", "train.epochs", "optim.warmup_epochs", "kernel_transform"},
    ),
    # EnNAS section 4.3: the ablation without diversity-based sampling changes only the sampler.
    "ennas ablation": (["ennas.yaml", "ennas_wo_ds.yaml"], {"sampler"}),
    # EnNAS Table 1 on one choice-block space: SPOS, Cream and DNA differ from EnNAS in sampling, teacher and loss
    # only, and in EnNAS's share of the data per epoch (1/m, so its sub-network passes equal SPOS's).
    "ennas table 1": (["ennas.yaml", "spos.yaml", "cream.yaml", "dna.yaml"],
                      {"sampler", "teacher", "distill", "train.epoch_fraction"}),
    "imagenet ennas table 1": (["imagenet/ennas.yaml", "imagenet/cream.yaml"],
                               {"sampler", "teacher", "distill", "train.diagnostic_draws", "train.epoch_fraction"}),
    "imagenet ennas ablation": (["imagenet/ennas.yaml", "imagenet/ennas_wo_ds.yaml"], {"sampler"}),
    # AlphaNet Tables 1-2 (section 4.1): slimmable networks without KD, with KL-KD and with adaptive KD.
    "alphanet table 1": (["slimmable_nokd.yaml", "slimmable_kl.yaml", "slimmable_adaptive.yaml"],
                         {"teacher", "distill"}),
    "imagenet alphanet table 1 mbv1": ([f"imagenet/slimmable_mbv1_{v}.yaml" for v in ("nokd", "kl", "adaptive")],
                                       {"teacher", "distill"}),
    "imagenet alphanet table 1 mbv2": ([f"imagenet/slimmable_mbv2_{v}.yaml" for v in ("nokd", "kl", "adaptive")],
                                       {"teacher", "distill"}),
    # AlphaNet Tables 5-6: one network from a fixed teacher with KL-KD or adaptive KD: only the divergence.
    "alphanet table 5": (["distill_kl.yaml", "distill_adaptive.yaml"], {"distill"}),
    "imagenet alphanet table 5": (["imagenet/distill_kl.yaml", "imagenet/distill_adaptive.yaml"], {"distill"}),
    "imagenet alphanet": (
        ["imagenet/alphanet.yaml", "imagenet/attentivenas.yaml", "imagenet/bignas.yaml"],
        {"sampler", "teacher", "distill"},
    ),
}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and key not in ("sampler", "teacher", "distill", "schedule"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("group", sorted(COMPARISONS))
def test_compared_recipes_differ_only_in_what_their_paper_varies(group: str) -> None:
    recipes, allowed = COMPARISONS[group]
    flat = {r: flatten(load_config(CONFIGS / r).model_dump(mode="json")) for r in recipes}
    reference = flat[recipes[0]]
    for recipe in recipes[1:]:
        differing = {k for k in reference.keys() | flat[recipe].keys() if reference.get(k) != flat[recipe].get(k)}
        assert differing <= allowed, (recipe, sorted(differing - allowed))


def test_spos_trains_one_uniform_path_on_labels_and_can_bin_by_macs() -> None:
    from supernet.training.loop import build_sampler

    config = load_config(CONFIGS / "spos.yaml")
    assert config.teacher.name == "none" and config.sampler.name == "uniform" and config.sampler.num_random == 1
    space = spaces.get(config.space)
    sampler = build_sampler(config)
    ctx = SampleContext(space=space, rng=random.Random(0), num_classes=10)
    draws = [sampler.sample(ctx) for _ in range(3000)]
    assert all(len(d) == 1 for d in draws)
    first = [d[0].blocks[1][0][0] for d in draws]  # one layer's operator: uniform over its choices
    for op in space.stages[1].ops:
        if op != "identity":
            assert abs(first.count(op) / len(first) - 1 / 6) < 0.03
    binned = build_sampler(load_config(CONFIGS / "spos.yaml", ["sampler.macs_bins={low: 2, high: 6, step: 2}"]))
    costs = [macs(space, binned.sample(ctx)[0], 10) / 1e6 for _ in range(400)]
    low, high = sum(c < 4 for c in costs), sum(4 <= c <= 6 for c in costs)
    assert low + high == len(costs) and abs(low - high) < 0.15 * len(costs)  # each bin drawn about half the time


@pytest.mark.parametrize("recipe", ["ennas.yaml", "ennas_wo_ds.yaml", "imagenet/ennas.yaml", "imagenet/ennas_wo_ds.yaml"])
def test_ennas_visits_one_mth_of_the_data_per_epoch_as_many_passes_as_spos(recipe: str) -> None:
    """EnNAS section 4 and Table 1 (same GPU days as SPOS): m sub-networks a batch on 1/m of the data."""
    config = load_config(CONFIGS / recipe)
    m = config.sampler.num_networks if config.sampler.name == "diversity" else config.sampler.num_random
    assert m == 4 and config.train.epoch_fraction == pytest.approx(1 / m)
    spos = load_config(CONFIGS / recipe.replace("ennas_wo_ds", "spos").replace("ennas", "spos"))
    assert spos.train.epoch_fraction * spos.sampler.num_random == pytest.approx(config.train.epoch_fraction * m)


def test_progressive_recipes_train_as_many_epochs_as_the_others() -> None:
    epochs = load_config(CONFIGS / "deps.yaml").train.epochs
    for recipe in ("ofa.yaml", "compofa.yaml"):
        phases = load_config(CONFIGS / recipe).schedule.phases  # type: ignore[union-attr]
        assert sum(p.epochs for p in phases) == pytest.approx(epochs), recipe


def test_deps_draws_the_full_model_and_k_minus_1_others_uniformly() -> None:
    """DepS Eq. 4: the full model plus k-1 sub-networks drawn uniformly from the space without it."""
    for recipe in ("deps.yaml", "imagenet/deps.yaml"):
        c = load_config(CONFIGS / recipe)
        assert (c.sampler.name, c.sampler.num_random, c.sampler.include_largest) == ("uniform", 3, True)
        assert (c.schedule.name, c.schedule.fm_warmup, c.schedule.eps_start) == ("delayed_eps", 0.5, 1e-4)
        assert c.distill.divergence == "soft_ce"  # plain DepS: in-place KD, no alpha-divergence
    imagenet = load_config(CONFIGS / "imagenet" / "deps.yaml")
    assert imagenet.space == "ofa_mbv3" and imagenet.optim.weight_decay == 3e-5 and imagenet.train.epochs == 270
    assert load_config(CONFIGS / "imagenet" / "deps_alpha.yaml").distill.divergence == "adaptive_alpha"
    # a space whose largest network is often drawn: the others are still never the full model
    space = spaces.get(str(Path(__file__).parent / "data" / "tiny_space.yaml"))
    ctx = SampleContext(space, random.Random(0), 10)
    largest = space.largest()
    drawn = [UniformSampler(3, include_largest=True).sample(ctx) for _ in range(300)]
    assert all(archs[0] == largest and largest not in archs[1:] and len(archs) == 4 for archs in drawn)
    assert len({a for archs in drawn for a in archs[1:]}) > 50  # still uniform over the rest


def test_ofa_recipes_use_the_kernel_transform() -> None:
    for recipe in ("ofa.yaml", "compofa.yaml", "imagenet/ofa.yaml"):
        assert load_config(CONFIGS / recipe).kernel_transform, recipe


def test_slimmable_recipes_follow_alphanet_section_4_1() -> None:
    for recipe in ("slimmable_adaptive.yaml", "imagenet/slimmable_mbv1_adaptive.yaml"):
        cfg = load_config(CONFIGS / recipe)
        assert spaces.get(cfg.space).spec.width_multiplier is not None
        assert cfg.sampler.name == "sandwich" and cfg.sampler.num_random == 2
        assert cfg.teacher.name == "inplace" and (cfg.distill.kd_weight, cfg.distill.ce_weight) == (1.0, 0.0)
        assert cfg.distill.options == {"alpha_min": -1.0, "alpha_max": 1.0, "clip": 5.0}
        assert cfg.train.dropout == 0.2 and cfg.optim.weight_decay == 1e-5 and cfg.optim.momentum == 0.9
    imagenet = load_config(CONFIGS / "imagenet" / "slimmable_mbv1_nokd.yaml")
    assert imagenet.train.epochs == 360 and imagenet.optim.lr_schedule == "cosine"
    assert imagenet.optim.lr * 2048 / imagenet.optim.lr_reference_batch == pytest.approx(0.8)
    assert load_config(CONFIGS / "imagenet" / "slimmable_mbv2_kl.yaml").space == "slimmable_mbv2"


def test_distill_and_transfer_recipes_follow_alphanet() -> None:
    """Appendix C: (1 - 0.9) CE + 0.9 T^2 KL at T = 1 on plain labels; section 4.3: SGD 0.9, smoothing 0.1,
    dropout 0.5, 150 epochs at batch 64, lr and weight decay chosen on a 20% hold-out."""
    kl = load_config(CONFIGS / "distill_kl.yaml")
    assert (kl.distill.divergence, kl.distill.options, kl.distill.kd_weight, kl.distill.ce_weight) == (
        "kl", {"temperature": 1.0}, 0.9, 0.1)
    assert kl.optim.label_smoothing == 0.0 and kl.sampler.name == "uniform" and kl.sampler.num_random == 1
    adaptive = load_config(CONFIGS / "distill_adaptive.yaml").distill
    assert adaptive.divergence == "adaptive_alpha" and adaptive.options["clip"] == 5.0
    transfer = load_config(CONFIGS / "transfer.yaml")
    assert (transfer.optim.momentum, transfer.optim.label_smoothing, transfer.train.dropout) == (0.9, 0.1, 0.5)
    assert (transfer.train.epochs, transfer.data.batch_size, transfer.data.val_size) == (150, 64, 12000)
