"""Training configuration: a YAML file validated against a schema, with `key.path=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from supernet.distill import get_divergence
from supernet.space import describe_validation_error

# What `supernet train --resume RUN --set KEY=VALUE` may change: the knobs that rescue a diverging run or
# lengthen one, none that would make the saved weights, optimizer state or data order mean something else.
RESUME_OVERRIDES = (
    "optim.lr",
    "optim.grad_clip.kind",
    "optim.grad_clip.value",
    "train.epochs",
    "train.max_nonfinite_steps",
    "train.checkpoint_every_steps",
    "train.log_every_steps",
    "train.eval_every_epochs",
    "train.threads",
    "data.workers",
)


class ConfigError(ValueError):
    """A training configuration is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    """Which data set, where, and how it is batched."""

    name: Literal["fashion_mnist", "cifar10", "cifar100", "imagefolder"] = "fashion_mnist"
    root: str | None = Field(None, description="data directory (default: the data set's standard location)")
    val_size: int = Field(5000, ge=0, description="images held out of the training set for BN/search/selection")
    limit: int | None = Field(None, gt=0, description="train on a seeded subset of this many images (quick runs)")
    classes: list[int] | None = Field(
        None, description="keep only these classes (indices), relabelled 0..k-1 in this order (e.g. a transfer task)"
    )
    image_size: int | None = Field(None, gt=0, description="imagefolder: decode size (default 224)")
    batch_size: int = Field(256, gt=0, description="images per step per process")
    eval_batch_size: int = Field(512, gt=0)
    workers: int = Field(0, ge=0, description="decoding processes (imagefolder)")


class GradClipConfig(_Section):
    """Gradient clipping: by value (AlphaNet), by global norm, or off."""

    kind: Literal["none", "value", "norm"] = "none"
    value: float = Field(1.0, gt=0)


class OptimConfig(_Section):
    """SGD with Nesterov momentum (or RMSProp, Adam) and a cosine, linear or step schedule with linear warm-up."""

    name: Literal["sgd", "rmsprop", "adam"] = Field(
        "sgd", description="sgd (momentum, nesterov), rmsprop (BigNAS as DepS's ImageNet table trains it) or adam "
        "(DNA's supernet; weight decay added to the gradient, as its code's optimizer)"
    )
    adam_eps: float = Field(1e-8, gt=0, description="adam: added to the root mean square")
    rmsprop_alpha: float = Field(0.9, gt=0, lt=1, description="rmsprop: decay of the squared-gradient average")
    rmsprop_eps: float = Field(1e-3, gt=0, description="rmsprop: added to the root mean square (torch places it "
                               "outside the square root, TensorFlow inside)")
    lr: float = Field(0.1, gt=0, description="learning rate per `lr_reference_batch` images")
    lr_reference_batch: int = Field(256, gt=0, description="the lr is scaled by global batch / this")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(1e-5, ge=0)
    decay_bn_and_bias: bool = Field(False, description="apply weight decay to BN parameters and biases")
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="final lr as a fraction of the peak")
    lr_schedule: Literal["cosine", "linear", "step"] = Field(
        "cosine", description="decay after warm-up: cosine, linear annealing (EnNAS), or steps: times "
        "step_decay_rate every step_decay_epochs (DNA)"
    )
    step_decay_epochs: float = Field(1.0, gt=0, description="step schedule: epochs between decays")
    step_decay_rate: float = Field(0.9, gt=0, le=1, description="step schedule: lr factor at each decay")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: GradClipConfig = GradClipConfig()


class SandwichConfig(_Section):
    name: Literal["sandwich"] = "sandwich"
    num_random: int = Field(2, ge=0)


class MacsBinsConfig(_Section):
    """SPOS's FLOPs-constrained draw: a bin of [low, high) in steps of `step` (MMACs) uniformly, then a path in it."""

    low: float = Field(ge=0)
    high: float = Field(gt=0)
    step: float = Field(gt=0)
    tries: int = Field(500, ge=1, description="draws per path before falling back to any path (SPOS: 500)")

    @model_validator(mode="after")
    def _ordered(self) -> MacsBinsConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class UniformConfig(_Section):
    name: Literal["uniform"]
    num_random: int = Field(1, ge=1)
    include_largest: bool = False
    macs_bins: MacsBinsConfig | None = None


class CompoundConfig(_Section):
    name: Literal["compound"]
    num_random: int = Field(2, ge=0)
    sandwich: bool = True


class AttentiveConfig(_Section):
    name: Literal["attentive"]
    num_random: int = Field(2, ge=1)
    candidates: int = Field(3, ge=1)
    mode: Literal["best", "worst"] = "best"
    num_buckets: int = Field(10, ge=1)
    target: Literal["prior", "uniform"] = Field(
        "prior", description="target MACs from the space's empirical MACs prior (AttentiveNAS) or uniform intervals"
    )
    prior_samples: int = Field(2000, ge=1, description="uniform sub-networks that estimate the MACs prior")


class DiversityConfig(_Section):
    name: Literal["diversity"]
    num_networks: int = Field(4, ge=2, description="m: sub-networks per step, all students of their ensemble")
    estimate_batches: int = Field(4, ge=1, description="batches used to re-estimate diversity each epoch")
    inputs: Literal["spread", "largest"] = Field(
        "spread",
        description="spread: each layer's inputs are dealt evenly over its operators and their outputs merged as the "
        "next layer's inputs (EnNAS section 3.3); largest: every layer sees what the largest sub-network feeds it",
    )


SamplerConfig = Annotated[
    SandwichConfig | UniformConfig | CompoundConfig | AttentiveConfig | DiversityConfig,
    Field(discriminator="name"),
]


class TeacherConfig(_Section):
    """Where students' soft targets come from."""

    name: Literal["none", "inplace", "ensemble", "external", "board", "blocks"] = "inplace"
    ensemble_weights: Literal["optimal", "mean"] = "optimal"
    ensemble_nonnegative: bool = False
    ensemble_bound: float | None = Field(
        None, ge=1, description="cap |w_i| of the ensemble weights (EnNAS has none; batches with no finite "
        "optimum fall back to 10 and are counted)"
    )
    checkpoint: str | None = Field(
        None,
        description="external and blocks (DNA): an export directory, or a run directory or checkpoint of this "
        "tool (its largest sub-network); external also 'snapshot', a frozen copy of the largest sub-network "
        "taken when shrinking starts (OFA)",
    )

    board_size: int = Field(10, ge=1, description="board: paths kept on Cream's prioritized board (Cream: 10)")
    board_slice: int = Field(4, ge=1, description="board: images stored per path and per look-ahead slice (Cream: 4)")
    board_gap: float = Field(5.0, ge=0, description="board: top-1 points a path must beat the worst by (Cream: 5)")
    board_pick: Literal["meta", "top1"] = Field(
        "meta", description="board: the meta-matching network picks the teacher (Cream), or the best path with m = 0.5"
    )
    meta_update_every: int = Field(200, ge=1, description="board: steps between meta-network updates (Cream: 200)")
    meta_lr: float | None = Field(None, gt=0, description="board: meta-network lr (default: the step's lr, as Cream)")

    @model_validator(mode="after")
    def _external_needs_source(self) -> TeacherConfig:
        if self.name == "external" and not self.checkpoint:
            raise ValueError("teacher.checkpoint is required for the external teacher (a run dir or 'snapshot')")
        if self.name == "blocks" and (not self.checkpoint or self.checkpoint == "snapshot"):
            raise ValueError("teacher.checkpoint is required for the blocks teacher (DNA): an export directory "
                             "or a trained run directory")
        return self


class DistillConfig(_Section):
    """Students' loss: kd_weight * divergence(student, teacher) + ce_weight * CE(student, labels)."""

    divergence: Literal["kl", "reverse_kl", "symmetric_kl", "soft_ce", "alpha", "adaptive_alpha"] = "soft_ce"
    options: dict[str, float | bool] = Field(default_factory=dict, description="keyword arguments of the divergence, "
                                             "e.g. temperature, or for adaptive_alpha alpha_min, alpha_max, clip, official")
    kd_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(0.0, ge=0)
    start_epoch: float = Field(
        0.0, ge=0, description="epochs before distillation starts; until then students train on labels (EnNAS, Cream)"
    )

    @model_validator(mode="after")
    def _options_fit(self) -> DistillConfig:
        try:  # binds the options to the divergence's signature: unknown keys fail here, at load time
            get_divergence(self.divergence, **self.options)
        except ValueError as err:
            raise ValueError(f"options {self.options} do not fit: {err}") from None
        return self


class PhaseConfig(_Section):
    """One phase of OFA progressive shrinking: which dimensions are elastic, for how long, how fast."""

    name: str
    epochs: float = Field(gt=0)
    lr: float | None = Field(None, gt=0, description="peak lr of the phase per optim.lr_reference_batch images, "
                             "scaled with the global batch like optim.lr (default: optim.lr)")
    warmup_epochs: float | None = Field(None, ge=0, description="linear warm-up at the phase's start "
                                        "(default: optim.warmup_epochs)")
    num_random: int = Field(1, ge=0, description="sampled sub-networks per step (OFA's dynamic_batch_size); "
                            "0: the full model alone")
    kernel: int | Literal["all"] = Field(1, description="how many of the largest kernel choices are elastic")
    depth: int | Literal["all"] = 1
    expand: int | Literal["all"] = 1
    width: int | Literal["all"] = 1
    resolution: int | Literal["all"] = "all"
    reorder_channels: bool = Field(False, description="re-order channels by importance before the phase")
    compound: bool = Field(False, description="couple depth and expand ratio per stage (CompOFA)")


class ShrinkFromStartConfig(_Section):
    name: Literal["shrink_from_start"] = "shrink_from_start"


class DelayedEpsConfig(_Section):
    name: Literal["delayed_eps"]
    fm_warmup: float = Field(0.5, ge=0, lt=1, description="fraction of steps that train only the full model")
    eps_start: float = Field(1e-4, gt=0, le=1)
    eps_ramp: float = Field(0.1, ge=0, le=1, description="fraction of training over which eps reaches 1")


class ProgressiveConfig(_Section):
    name: Literal["progressive"]
    phases: list[PhaseConfig] = Field(min_length=1)
    total_epochs: float | None = Field(None, gt=0, description="stretch every phase (and its warm-up) in "
                                       "proportion so the phases last this many epochs (default: as written)")

    @property
    def length(self) -> float:
        """How many epochs the phases last: total_epochs, or the phases' epochs as written."""
        return sum(p.epochs for p in self.phases) if self.total_epochs is None else self.total_epochs

    @property
    def stretch(self) -> float:
        """The factor on every phase's epochs and warm-up epochs."""
        return self.length / sum(p.epochs for p in self.phases)


ScheduleConfig = Annotated[
    ShrinkFromStartConfig | DelayedEpsConfig | ProgressiveConfig, Field(discriminator="name")
]


class TrainConfig(_Section):
    """Length, precision, regularisation, evaluation and checkpoint cadence."""

    epochs: float = Field(3, gt=0, description="epochs (ignored by the progressive schedule: phases set it)")
    max_steps_per_epoch: int | None = Field(None, gt=0)
    epoch_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the training set each epoch visits, a fresh random part every "
        "epoch (EnNAS samples part of the data per epoch)"
    )
    bf16: bool = Field(False, description="bfloat16 autocast for forward passes")
    channels_last: bool = Field(True, description="NHWC layout for weights and activations (faster on CPU)")
    dropout: float = Field(0.0, ge=0, lt=1, description="before the classifier, largest network only")
    drop_connect: float = Field(0.0, ge=0, lt=1, description="on residual blocks, largest network only")
    eval_every_epochs: int = Field(1, ge=0, description="0: no per-epoch evaluation")
    recal_images: int = Field(2048, gt=0, description="images for BN recalibration before evaluation")
    eval_images: int | None = Field(None, gt=0, description="cap the val images of per-epoch evaluation")
    diagnostic_draws: int = Field(
        2, ge=0, description="groups of sub-networks drawn with the recipe's sampler at each per-epoch evaluation "
        "for EnNAS's diagnostics (teacher vs student val top-1, pairwise logit distance; the paper draws 100); "
        "0 turns them off; recipes with fewer than 2 students have none"
    )
    checkpoint_every_steps: int = Field(200, gt=0, description="how often `latest.pt` is refreshed")
    keep_epoch_checkpoints: bool = True
    log_every_steps: int = Field(20, gt=0, description="how often a training record is written to metrics.jsonl; "
                                 "the first and the last step always are (the last holds the run's whole cost)")
    max_nonfinite_steps: int = Field(5, gt=0, description="stop after this many non-finite losses in a row")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    sync_bn: bool = Field(False, description="multi-process: BN statistics over the global batch (SyncBatchNorm)")


class NetworkConfig(_Section):
    """Train one fixed network instead of a supernet (`supernet distill`, `supernet finetune`).

    The config's top-level `space` is then that network's one-network space (`network.space` pinned at
    `network.arch`, `SearchSpace.pinned`), and the network is its only member; it trains on labels (`teacher.name: none`) or from a frozen teacher (`external`) with the
    configured divergence, as a student: `distill.kd_weight` x divergence + `distill.ce_weight` x CE.
    """

    init: str = Field(
        "scratch", description="starting weights: scratch (re-initialised), an export directory, or a run "
        "directory / checkpoint whose supernet holds `arch`"
    )
    space: str | dict[str, Any] | None = Field(
        None, description="the space the network was taken from (its export is written as a network of it)"
    )
    arch: dict[str, Any] | None = Field(
        None, description="the network in `network.space`; with a run as init, the sub-network it starts from"
    )
    freeze_backbone: bool = Field(False, description="train only the classifier (BN statistics still adapt)")
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="lr x decay^d for a layer d blocks below the head (the stem deepest); 1: one lr"
    )
    lineage: dict[str, Any] = Field(default_factory=dict, description="what the network came from (model card)")

    @model_validator(mode="after")
    def _arch_with_space(self) -> NetworkConfig:
        if self.space is not None and self.arch is None:
            raise ValueError("network.space needs network.arch, the network of that space")
        return self


class Config(_Section):
    """A whole training recipe."""

    seed: int = 0
    space: str | dict[str, Any] = Field(
        "fmnist", description="preset name, path to a search-space YAML, or a space mapping (a pinned network's)"
    )
    network: NetworkConfig | None = Field(None, description="train one fixed network (distill, finetune)")
    kernel_transform: bool = False
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sampler: SamplerConfig = SandwichConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    schedule: ScheduleConfig = ShrinkFromStartConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.teacher.name == "ensemble" and self.sampler.name != "diversity" and self._num_students() < 2:
            raise ValueError("teacher 'ensemble' needs at least 2 sampled sub-networks per step")
        s = self.sampler
        if self.teacher.name == "board" and not (s.name == "uniform" and s.num_random == 1 and not s.include_largest):
            raise ValueError("teacher 'board' (Cream) trains one path per step: use sampler {name: uniform, num_random: 1}")
        if self.network is not None:
            if not (s.name == "uniform" and s.num_random == 1 and not s.include_largest and s.macs_bins is None):
                raise ValueError("network (one fixed network) trains it once per step: use sampler {name: uniform, "
                                 "num_random: 1}")
            if self.teacher.name not in ("none", "external") or self.teacher.checkpoint == "snapshot":
                raise ValueError("network (one fixed network) learns from labels (teacher none) or a frozen trained "
                                 "network (teacher external with a checkpoint)")
            if self.schedule.name != "shrink_from_start" or self.kernel_transform:
                raise ValueError("network (one fixed network) has nothing to shrink: use schedule shrink_from_start "
                                 "and no kernel_transform")
        return self

    def _num_students(self) -> int:
        s = self.sampler
        return getattr(s, "num_random", 0) + getattr(s, "num_networks", 0)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'optim.lr=0.05' into (['optim', 'lr'], 0.05), the value parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. optim.lr=0.05)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` override set (intermediate mappings created)."""
    import copy

    result = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return result


def config_from_dict(data: dict[str, Any] | None, source: str = "config") -> Config:
    """Validate a config mapping; raises ConfigError naming every bad key in one line."""
    try:
        return Config.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_validation_error(err)}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML recipe (or the defaults when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"config {path}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config {path} is not UTF-8 text (byte {err.start}); save the recipe as UTF-8 "
                              "YAML") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config {path} is not valid YAML: {err}".replace("\n", " ")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: expected a mapping of sections (data, optim, train, ...)")
        data = loaded or {}
    return config_from_dict(apply_overrides(data, overrides or []), source)


def resume_config(saved: Config, overrides: list[str]) -> tuple[Config, dict[str, Any]]:
    """The saved config with resume overrides applied (only RESUME_OVERRIDES keys), and what changed."""
    changed: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        key = ".".join(path)
        if key not in RESUME_OVERRIDES:
            raise ConfigError(f"--set {key} cannot change on --resume (the saved weights and state depend on it); "
                              f"resume may change {', '.join(RESUME_OVERRIDES)}")
        changed[key] = value
    data = apply_overrides(saved.model_dump(mode="json"), overrides)
    return config_from_dict(data, "--resume --set"), changed


def resume_differences(base: Config, current: Config) -> list[str]:
    """`key=value` overrides (RESUME_OVERRIDES keys only) that turn `base` into `current`'s settings."""
    import json

    old, new = base.model_dump(mode="json"), current.model_dump(mode="json")
    out = []
    for key in RESUME_OVERRIDES:
        a, b = old, new
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            out.append(f"{key}={json.dumps(b)}")
    return out


def dump_config(config: Config) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
