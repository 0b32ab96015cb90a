"""The one training loop: every recipe is a sampler, a teacher, a divergence and a schedule."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from typing_extensions import Self

from supernet import spaces
from supernet.blockwise import BlockwiseStudent, TeacherBlocks, block_losses, match_blocks
from supernet.checkpoint import (
    RESUME_KEYS,
    RunDir,
    RunDirError,
    load_checkpoint,
    require_keys,
    save_checkpoint,
    state_mismatch,
)
from supernet.config import (
    Config,
    ConfigError,
    config_from_dict,
    dump_config,
    resume_config,
    resume_differences,
)
from supernet.cost import macs
from supernet.data import DataBundle, DatasetError, Loader, build_data, resize_batch, subset
from supernet.distill import get_divergence
from supernet.distributed import (
    SINGLE,
    DistContext,
    all_agree,
    barrier,
    broadcast_object,
    check_same,
    mean_over_ranks,
)
from supernet.evaluation import Evaluator
from supernet.fileio import atomic_write_text
from supernet.model import Supernet, build_static
from supernet.nn.batchnorm import frozen_bn_statistics, make_synchronizable, synchronized_statistics
from supernet.runs import load_network, starting_weights
from supernet.space import Arch, ArchError, SearchSpace, SpaceError
from supernet.training.cream import CreamTeacher
from supernet.training.diagnostics import epoch_record, group_diagnostics
from supernet.training.diversity import DiversitySampler, estimation_macs
from supernet.training.metrics import PASS_KINDS, MetricsLog
from supernet.training.reorder import reorder_channels
from supernet.training.samplers import (
    AttentiveSampler,
    CompoundSampler,
    MacsBins,
    SampleContext,
    Sampler,
    SandwichSampler,
    UniformSampler,
    sample_compound,
)
from supernet.training.schedules import Schedule, StepPlan
from supernet.training.teachers import (
    EnsembleTeacher,
    ExternalTeacher,
    InplaceTeacher,
    NoTeacher,
    Teacher,
    teacher_stats,
)


class TrainingStopped(RuntimeError):
    """Training stopped early (e.g. too many non-finite losses); the last checkpoint is usable."""


class TrainingInterrupted(TrainingStopped):
    """Ctrl-C (SIGINT) stopped training at a step boundary, after a checkpoint of that step was written."""


class _DeferredInterrupt:
    """Turns the first Ctrl-C into a request honoured at the next step boundary; a second one stops at once.

    Only the main thread may install signal handlers; elsewhere (a library user's worker thread) Ctrl-C
    keeps Python's default behaviour.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("interrupted: finishing this step and writing a checkpoint (press Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainResult:
    """Where a run stands when `Trainer.run` returns."""

    run_dir: Path
    global_step: int
    total_steps: int
    finished: bool
    last_eval: dict[str, Any] = field(default_factory=dict)




def build_sampler(config: Config) -> Sampler:
    """The sampler a config names."""
    s = config.sampler
    if s.name == "sandwich":
        return SandwichSampler(s.num_random)
    if s.name == "uniform":
        bins = s.macs_bins
        return UniformSampler(s.num_random, s.include_largest,
                              macs_bins=None if bins is None else MacsBins(bins.low * 1e6, bins.high * 1e6, bins.step * 1e6,
                                                                           bins.tries))
    if s.name == "compound":
        return CompoundSampler(s.num_random, s.sandwich)
    if s.name == "attentive":
        return AttentiveSampler(s.num_random, s.candidates, s.mode, s.num_buckets, target=s.target,
                                prior_samples=s.prior_samples)
    return DiversitySampler(num_networks=s.num_networks, inputs=s.inputs)


def param_groups(net: nn.Module, weight_decay: float, decay_bn_and_bias: bool, lr_scale: dict[str, float] | None = None
                 ) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay off for BN parameters and biases (1-D tensors) unless asked.

    `lr_scale` maps parameter names to lr factors (layer-wise lr): each distinct factor gets its own pair of
    groups, and parameters it leaves out are not trained (a frozen backbone).
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in net.named_parameters():
        scale = 1.0 if lr_scale is None else lr_scale.get(name)
        if scale is None:
            p.requires_grad_(False)
            continue
        groups.setdefault((scale, p.ndim > 1 or decay_bn_and_bias), []).append(p)
    if lr_scale is None:  # the two groups every recipe has had, even when one is empty
        return [{"params": groups.get((1.0, True), []), "weight_decay": weight_decay},
                {"params": groups.get((1.0, False), []), "weight_decay": 0.0}]
    return [{"params": ps, "weight_decay": weight_decay if decayed else 0.0, "lr_scale": scale}
            for (scale, decayed), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]


def layer_lr_scales(net: Supernet, decay: float, freeze_backbone: bool) -> dict[str, float]:
    """Per parameter its lr factor: decay^d, d the blocks between it and the head (head 0, stem deepest);
    with `freeze_backbone` only the classifier, at factor 1."""
    depth: dict[str, int] = {}
    blocks = [(s, b) for s, stage in enumerate(net.stages) for b in range(len(stage))]
    for name, _ in net.named_parameters():
        if name.startswith("head."):
            depth[name] = 0
        elif name.startswith("stages."):
            s, b = (int(part) for part in name.split(".")[1:3])
            depth[name] = len(blocks) - blocks.index((s, b))
        else:
            depth[name] = len(blocks) + 1
    if freeze_backbone:
        return {name: 1.0 for name in depth if name.startswith("head.classifier.")}
    return {name: decay**d for name, d in depth.items()}


def build_optimizer(net: nn.Module, config: Config) -> torch.optim.Optimizer:
    """The optimizer a config names, over `param_groups` (no weight decay on BN parameters and biases)."""
    o, network = config.optim, config.network
    scales = None
    if network is not None and (network.freeze_backbone or network.layer_lr_decay != 1.0):
        assert isinstance(net, Supernet)
        scales = layer_lr_scales(net, network.layer_lr_decay, network.freeze_backbone)
    groups = param_groups(net, o.weight_decay, o.decay_bn_and_bias, scales)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, eps=o.adam_eps)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=o.lr, alpha=o.rmsprop_alpha, eps=o.rmsprop_eps, momentum=o.momentum)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


class Trainer:
    """Trains a supernet for one config into one run directory, resumable bit-exactly on CPU.

    With `resume=True` the config saved in the run directory is used (`config` may be None), changed only
    by `resume_overrides` (keys in RESUME_OVERRIDES, recorded in metrics.jsonl and config.yaml);
    `from_epoch` resumes from that epoch's checkpoint instead of the latest, after moving the later
    checkpoints and a copy of the metrics into `checkpoints/superseded-stepS-TIME/`.
    """

    def __init__(
        self,
        config: Config | None,
        run_dir: str | Path,
        *,
        resume: bool = False,
        force: bool = False,
        teacher_module: nn.Module | None = None,
        progress: bool = True,
        data: DataBundle | None = None,
        device: str | torch.device | None = None,
        dist: DistContext | None = None,
        resume_overrides: list[str] | None = None,
        from_epoch: int | None = None,
    ):
        self.run_dir = RunDir(Path(run_dir))
        self.dist = dist or SINGLE
        state = None
        changed: dict[str, Any] = {}
        if (resume_overrides or from_epoch is not None) and not resume:
            raise ValueError("resume_overrides and from_epoch apply only with resume=True")
        if resume:
            self.run_dir.require_existing()
            path = self.run_dir.latest if from_epoch is None else self._epoch_checkpoint(from_epoch)
            state = load_checkpoint(path)
            if "imported" in state:
                raise RunDirError(f"{self.run_dir.root} is a published supernet read in by `supernet import`; it has "
                                  "no training state to resume: search and export it, then fine-tune an export with "
                                  "`supernet finetune EXPORT_DIR`")
            require_keys(state, path, RESUME_KEYS)
            config = config_from_dict(state["config"], source=f"{path} (saved config)")
            overrides = list(resume_overrides or [])
            if from_epoch is not None:  # rewind the weights, keep the settings the run has now
                overrides = self._current_settings(config) + overrides
            config, changed = resume_config(config, overrides)
            config = _keep_global_batch(config, int(state["global_batch"]), self.dist.world_size)
        elif config is None:
            raise ValueError("a config is required unless resuming")
        elif self.dist.is_main and not force:
            self.run_dir.prepare_new(force=False)  # fail before any work when the directory is taken
        self.config = config
        self.progress = progress and self.dist.is_main
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.device = self.dist.device if dist is not None else torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # A resumed run rebuilds the space it saved: the config may name a YAML path relative to another cwd.
        self.space = spaces.resolve(config.space) if state is None else _saved_space(state, path)
        self.fixed = config.network is not None  # one fixed network (distill, finetune): the space's only member
        if self.fixed and self.space.size() != 1:
            raise ConfigError(f"network: the space {self.space.name!r} holds {self.space.size():.3g} networks; a "
                              "fixed network trains in its one-network space (SearchSpace.pinned, as `supernet "
                              "distill` and `supernet finetune` write it)")
        if self.fixed and state is None:
            self._check_pinned(config)
        self.data = data or build_data(
            config.data.name, config.data.root, val_size=config.data.val_size, seed=config.seed,
            image_size=config.data.image_size, limit=config.data.limit, classes=config.data.classes,
        )
        self.num_classes = self.data.num_classes
        with torch.random.fork_rng(devices=[]):  # initial weights from the config's seed, global RNG untouched
            torch.manual_seed(config.seed)
            self.net = Supernet(self.space, self.num_classes, self.data.in_channels, config.kernel_transform)
        if config.train.sync_bn:  # choice-block operators hold plain BatchNorm2d: make them able to synchronise
            make_synchronizable(self.net)
        self.replaced_classifier = False  # a fixed network's head was swapped for another number of classes
        if self.fixed and state is None:
            self._load_starting_weights()
        self.net.to(self.device)
        self.net.set_channels_last(config.train.channels_last)
        self._teacher_module = teacher_module
        # DNA: the teacher cut into blocks, and the supernet run block by block on its features
        self.block_teacher = self._build_block_teacher() if config.teacher.name == "blocks" else None
        self.student = None if self.block_teacher is None else BlockwiseStudent(
            self.net, match_blocks(self.block_teacher, self.space))
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            # Sub-networks use different parameter subsets, hence find_unused_parameters; BN running
            # statistics stay per rank (or are synchronised by sync_bn), hence no buffer broadcast.
            self.ddp = DistributedDataParallel(
                self.net if self.student is None else self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True, broadcast_buffers=False,
            )
        self.optimizer = build_optimizer(self.net, config)
        global_batch = config.data.batch_size * self.dist.world_size
        if len(self.data.train) < global_batch:
            raise DatasetError(
                f"the training split holds {len(self.data.train)} images, fewer than one batch of {global_batch} "
                f"(data.batch_size x {self.dist.world_size} processes); lower data.batch_size to at most "
                f"{len(self.data.train) // self.dist.world_size} or train on more images (data.limit, data.val_size)"
            )
        steps = self._loader(epoch=0, start_step=0).steps_per_epoch
        steps = max(1, round(steps * config.train.epoch_fraction))  # each epoch's order is a fresh permutation
        if config.train.max_steps_per_epoch:
            steps = min(steps, config.train.max_steps_per_epoch)
        self.steps_per_epoch = steps
        self.global_batch = config.data.batch_size * self.dist.world_size
        self.schedule = Schedule(config, self.space, steps, self.global_batch)
        self.sampler = build_sampler(config)
        self.divergence = get_divergence(config.distill.divergence, **config.distill.options)
        self.rng = random.Random(config.seed)
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.net.noise_generator = self.noise
        self.global_step = 0
        self.last_eval: dict[str, Any] = {}
        self._session_start, self._elapsed_before = time.perf_counter(), 0.0
        # wall_time: seconds inside training steps; elapsed: seconds of run() in all, evaluation and
        # checkpoints included, summed over sessions (what a run really took).
        # train_macs: every multiply-add the recipe executed (PASS_KINDS: gradient passes as forward +
        # backward = 3x, no-grad teacher and scoring passes 1x, sampler preparation), each kind also apart.
        self.counters = {"train_macs": 0, **{f"{kind}_macs": 0 for kind in PASS_KINDS}, "wall_time": 0.0,
                         "elapsed": 0.0, "gpu_hours": 0.0, "nonfinite_total": 0, "nonfinite_streak": 0}
        self._pass_kind = "teacher"  # what a no-grad supernet pass is counted as (see `_passes`)
        self._step_macs: dict[Arch, int] = {}
        self.snapshot: nn.Module | None = None
        self.teacher = self._build_teacher()
        if state is not None:
            self._load_state(state, path, changed_settings=bool(changed) or from_epoch is not None)
            barrier(self.dist)  # every rank has read its checkpoints before rank 0 moves or rewrites files
            if self.dist.is_main:
                self.run_dir.remove_orphans()
                if from_epoch is not None:
                    self._supersede_after(from_epoch)
                if changed:
                    atomic_write_text(self.run_dir.config, dump_config(config))
            barrier(self.dist)
        else:
            if self.dist.is_main:  # everything validated and loaded: now claim the directory
                self.run_dir.prepare_new(force)
                self.run_dir.remove_orphans()
                atomic_write_text(self.run_dir.config, dump_config(config))
            barrier(self.dist)
        self.log = MetricsLog(self.run_dir, truncate_after=self.global_step if resume else None,
                              enabled=self.dist.is_main)
        if changed or from_epoch is not None:
            self.log.write({"kind": "resume", "step": self.global_step, "overrides": changed,
                            "from_epoch": from_epoch})
        if self.fixed and state is None:
            assert config.network is not None
            self.log.write({"kind": "network", "step": 0, "init": config.network.init,
                            "replaced_classifier": self.replaced_classifier})

    def close(self) -> None:
        """Release the DistributedDataParallel wrapper; call before destroying the process group."""
        if self.ddp is not None:
            self.ddp = None
            gc.collect()  # its reducer must go while the process group still exists

    # -- construction helpers ------------------------------------------------------------------------
    def _check_pinned(self, config: Config) -> None:
        """A fixed network's space is `network.space` pinned at `network.arch`, when those are given."""
        network = config.network
        assert network is not None
        if network.space is None or network.arch is None:
            return
        try:
            origin = spaces.resolve(network.space)
            expected = origin.pinned(origin.validate(Arch.from_dict(network.arch)))
        except (SpaceError, ArchError) as err:
            raise ConfigError(f"network.space / network.arch: {err}") from None
        if expected.to_dict() != self.space.to_dict():
            raise ConfigError("space is not network.space pinned at network.arch; let `supernet finetune` / "
                              "`supernet distill` (or supernet.retrain) write the config")

    def _load_starting_weights(self) -> None:
        """A fixed network's `network.init` weights; a classifier for another number of classes stays fresh."""
        network = self.config.network
        assert network is not None
        if network.init == "scratch":
            return
        start = starting_weights(network.init, network.arch)
        if start.in_channels != self.data.in_channels:
            raise ConfigError(f"network.init {start.source} takes {start.in_channels}-channel images, the data set "
                              f"{self.data.name} has {self.data.in_channels}")
        skip: set[str] = set()
        if start.num_classes != self.num_classes:  # transfer: a new head for the new classes
            skip = {k for k in start.state if k.startswith("head.classifier.")}
            self.replaced_classifier = True
        try:
            self.net.load_extracted(start.state, skip)
        except ValueError as err:
            raise ConfigError(f"network.init {start.source} does not hold the network of the config's space "
                              f"({err}); write the config with `supernet finetune` / `supernet distill`") from None

    def _build_block_teacher(self) -> TeacherBlocks:
        t = self.config.teacher
        if self._teacher_module is not None:
            module, resolution = self._teacher_module.to(self.device), max(self.space.spec.resolutions)
        else:
            assert t.checkpoint is not None  # the config requires one for the blocks teacher
            module, resolution = load_network(t.checkpoint, self.device)
        return TeacherBlocks(module, resolution, self.data.in_channels)

    def _build_teacher(self) -> Teacher:
        t = self.config.teacher
        if t.name in ("none", "blocks"):  # DNA's block targets come from block_teacher
            return NoTeacher()
        if t.name == "inplace":
            return InplaceTeacher(self.space.largest())
        if t.name == "ensemble":
            return EnsembleTeacher(t.ensemble_weights, t.ensemble_nonnegative, t.ensemble_bound)
        if t.name == "board":
            return CreamTeacher(self.num_classes, self.device, self._frozen_forward_on, t.board_size, t.board_slice,
                                t.board_gap, t.board_pick, t.meta_update_every, t.meta_lr, seed=self.config.seed)
        if self._teacher_module is not None:
            return ExternalTeacher(self._teacher_module.to(self.device), None)
        if t.checkpoint == "snapshot":
            return ExternalTeacher(nn.Identity(), None)  # replaced by the snapshot when shrinking starts
        module, resolution = load_network(t.checkpoint, self.device)
        return ExternalTeacher(module, resolution)

    def _take_snapshot(self) -> None:
        """Freeze a copy of the full model as the external teacher (OFA's teacher: the trained full network)."""
        largest = self.space.largest()
        self.snapshot = self.net.extract(largest).eval().requires_grad_(False)
        self.teacher = ExternalTeacher(self.snapshot, largest.resolution)

    def _current_settings(self, epoch_config: Config) -> list[str]:
        """Overrides that carry the latest checkpoint's resume settings onto an epoch checkpoint's config."""
        try:
            latest = config_from_dict(load_checkpoint(self.run_dir.latest)["config"])
        except (RunDirError, ConfigError, KeyError):  # a damaged latest.pt: the epoch's own settings
            return []
        return resume_differences(epoch_config, latest)

    def _epoch_checkpoint(self, epoch: int) -> Path:
        path = self.run_dir.epoch_checkpoint(epoch)
        if not path.is_file():
            kept = ", ".join(map(str, self.run_dir.kept_epochs())) or "none"
            raise RunDirError(f"{path} not found; epoch checkpoints kept in {self.run_dir.checkpoints}: {kept}")
        return path

    def _supersede_after(self, epoch: int) -> None:
        """Move latest.pt, later epoch checkpoints and the metrics into a folder: kept, never resumed from."""
        target = self.run_dir.checkpoints / f"superseded-step{self.global_step}-{time.strftime('%Y%m%d-%H%M%S')}"
        later = [self.run_dir.epoch_checkpoint(e) for e in self.run_dir.kept_epochs() if e > epoch]
        target.mkdir(parents=True)
        for p in [self.run_dir.latest, *later]:
            if p.is_file():
                p.rename(target / p.name)
        if self.run_dir.metrics.is_file():
            shutil.copy2(self.run_dir.metrics, target / self.run_dir.metrics.name)
        shutil.copy2(self.run_dir.epoch_checkpoint(epoch), self.run_dir.latest)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly."""
        state = {
            "config": self.config.model_dump(mode="json"),
            "space": self.space.to_dict(),
            "num_classes": self.num_classes,
            "in_channels": self.data.in_channels,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "global_step": self.global_step,
            "global_batch": self.global_batch,
            "rng": self.rng.getstate(),
            "noise": self.noise.get_state(),
            "counters": dict(self.counters),
            "snapshot": None if self.snapshot is None else self.snapshot.state_dict(),
        }
        if hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        if isinstance(self.teacher, CreamTeacher):
            state["teacher"] = self.teacher.state_dict()
        return state

    def _load_state(self, state: dict[str, Any], path: Path, changed_settings: bool = False) -> None:
        problem = state_mismatch(self.net.state_dict(), state["model"])
        if problem:
            raise RunDirError(f"checkpoint {path}: its weights do not fit its saved search space ({problem}); "
                              "resume from an intact checkpoint with --from-epoch N")
        self.net.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.global_step = int(state["global_step"])
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
            self.noise.set_state(state["noise"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RunDirError(f"checkpoint {path} holds a damaged training state ({type(err).__name__}: {err}); "
                              "resume from an intact checkpoint with --from-epoch N") from None
        self.counters.update(state["counters"])
        if changed_settings:  # the user changed something to get past a streak: count it afresh
            self.counters["nonfinite_streak"] = 0
        if state.get("snapshot") is not None:
            largest = self.space.largest()
            self.snapshot = build_static(self.space, largest, self.num_classes, self.data.in_channels).to(self.device)
            self.snapshot.load_state_dict(state["snapshot"])
            self.snapshot.eval().requires_grad_(False)
            self.teacher = ExternalTeacher(self.snapshot, largest.resolution)
        if "sampler" in state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        if "teacher" in state and isinstance(self.teacher, CreamTeacher):
            self.teacher.load_state_dict(state["teacher"])

    def _loader(self, epoch: int, start_step: int) -> Loader:
        """This rank's shard of the training batches of `epoch`, from `start_step` on."""
        cfg = self.config
        return Loader(self.data.train, cfg.data.batch_size, seed=cfg.seed, epoch=epoch, shuffle=True, augment=True,
                      start_step=start_step, rank=self.dist.rank, world_size=self.dist.world_size,
                      num_workers=cfg.data.workers)

    def save(self, epoch_end: int | None = None) -> None:
        """Write `latest.pt` (and the epoch checkpoint at an epoch's end) atomically; rank 0 only."""
        if not self.dist.is_main:
            return
        self._tick()
        state = self.state_dict()
        save_checkpoint(self.run_dir.latest, state)
        if epoch_end is not None and self.config.train.keep_epoch_checkpoints:
            save_checkpoint(self.run_dir.epoch_checkpoint(epoch_end), state)

    # -- one step ------------------------------------------------------------------------------------
    # -- counting what runs --------------------------------------------------------------------------
    def _count(self, kind: str, amount: int) -> None:
        """Add `amount` multiply-adds (all ranks together) of one kind of pass to the run's cost."""
        self.counters[f"{kind}_macs"] += amount
        self.counters["train_macs"] += amount

    def _arch_macs(self, arch: Arch) -> int:
        """Multiply-adds of one image through `arch` (memoised for the current step)."""
        if arch not in self._step_macs:
            self._step_macs[arch] = macs(self.space, arch, self.num_classes, self.data.in_channels)
        return self._step_macs[arch]

    @contextlib.contextmanager
    def _passes(self, kind: str) -> Iterator[None]:
        """Count the no-grad supernet passes inside as `kind` (teacher or scoring)."""
        previous, self._pass_kind = self._pass_kind, kind
        try:
            yield
        finally:
            self._pass_kind = previous

    def _forward(self, arch: Arch, images: Tensor, regularise: bool = False) -> Tensor:
        # Every image of every rank runs the same arch: count the global batch (a gradient pass's backward
        # is added once it has run, in train_step).
        self._count("gradient" if torch.is_grad_enabled() else self._pass_kind,
                    self._arch_macs(arch) * images.shape[0] * self.dist.world_size)
        net = self.net
        net.set_active(arch)
        net.dropout_rate = self.config.train.dropout if regularise else 0.0
        net.drop_connect_rate = self.config.train.drop_connect if regularise else 0.0
        # Passes that will be back-propagated go through DDP, so their gradients reach every rank.
        module = self.ddp if self.ddp is not None and torch.is_grad_enabled() else net
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.bf16):
            return module(resize_batch(images, arch.resolution))

    def _frozen_forward_on(self, arch: Arch, images: Tensor) -> Tensor:
        """Logits of `arch` on `images` without gradients or BN statistics updates (counted as a teacher pass)."""
        with self._passes("teacher"):
            return self._frozen_forward(images)(arch)

    def _frozen_forward(self, images: Tensor) -> Any:
        def forward(arch: Arch) -> Tensor:
            with torch.no_grad(), frozen_bn_statistics(self.net):
                return self._forward(arch, images).float()

        return forward

    def _score(self, images: Tensor, labels: Tensor) -> Any:
        forward = self._frozen_forward(images)

        def score(archs: list[Arch]) -> list[float]:  # averaged over ranks so every rank picks the same
            with self._passes("scoring"):
                return mean_over_ranks([F.cross_entropy(forward(a), labels).item() for a in archs], self.dist)

        return score

    def _archs(self, plan: StepPlan, images: Tensor, labels: Tensor, epoch: int) -> list[Arch]:
        largest = plan.space.largest()
        if not plan.shrinking:
            return [largest]
        ctx = SampleContext(plan.space, self.rng, self.num_classes, self._score(images, labels), epoch, self.global_step)
        if plan.num_random is not None:  # OFA phase: the phase's own number of samples (dynamic_batch_size)
            draw = sample_compound if plan.compound else SearchSpace.sample
            return [draw(plan.space, self.rng) for _ in range(plan.num_random)]
        return self._with_full_model(self.sampler.sample(ctx), plan)

    def _with_full_model(self, archs: list[Arch], plan: StepPlan) -> list[Arch]:
        """DepS: the full model is always sampled while shrinking."""
        largest = plan.space.largest()
        if self.config.schedule.name == "delayed_eps" and archs[0] != largest:
            return [largest, *archs]
        return archs

    def _apply_gradients(self) -> None:
        """Clip the accumulated gradients as configured and take the optimizer step."""
        clip = self.config.optim.grad_clip
        if clip.kind == "value":
            nn.utils.clip_grad_value_(self.net.parameters(), clip.value)
        elif clip.kind == "norm":
            nn.utils.clip_grad_norm_(self.net.parameters(), clip.value)
        self.optimizer.step()
        self._step_macs.clear()

    def train_step(self, images: Tensor, labels: Tensor, plan: StepPlan, epoch: int) -> dict[str, float] | None:
        """One optimizer step; returns its losses, or None when it was skipped for a non-finite loss."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = plan.lr * group.get("lr_scale", 1.0)
        archs = self._archs(plan, images, labels, epoch)
        check_same([a.to_json() for a in archs], f"the architectures of step {self.global_step}", self.dist)
        largest = plan.space.largest()
        self.optimizer.zero_grad(set_to_none=True)
        if self.student is not None:
            return self._blockwise_step(images, labels, archs)
        targets = None
        if plan.distill:
            if isinstance(self.teacher, CreamTeacher) and self.teacher.update_due(self.global_step, images.shape[0]):
                self._cream_look_ahead(archs[0], images, labels, plan.lr)
            with self._passes("teacher"):
                targets = self.teacher.before_step(archs, images, labels, self._frozen_forward(images))
            self._count("teacher", self.teacher.external_macs(images) * self.dist.world_size)
        weights = self.teacher.loss_weights() if isinstance(self.teacher, CreamTeacher) else None
        losses: list[float] = []
        student_losses: list[float] = []
        for i, arch in enumerate(archs):
            # the full model of in-place recipes trains on labels; OFA phases have none, every sample distils
            is_full = i == 0 and arch == largest and plan.num_random is None and not self.fixed
            synced = i == len(archs) - 1  # DDP all-reduces the accumulated gradients once, after the last
            # dropout: on the full model of in-place recipes, on every sample in OFA phases (OFA's net), and on
            # a fixed network, which is the largest (and only) network of its space
            regularise = is_full or self.fixed or plan.num_random is not None
            with contextlib.nullcontext() if self.ddp is None or synced else self.ddp.no_sync():
                logits = self._forward(arch, images, regularise=regularise).float()
                ce = F.cross_entropy(logits, labels, label_smoothing=cfg.optim.label_smoothing)
                if is_full:
                    loss, scale = ce, 1.0
                    if plan.distill:
                        targets = self.teacher.from_full(logits, targets)
                elif plan.distill and targets is not None:
                    d = cfg.distill
                    kd_weight, ce_weight = weights or (d.kd_weight, d.ce_weight)  # Cream: its per-step m
                    loss = kd_weight * self.divergence(logits, targets) + (ce_weight * ce if ce_weight else 0.0)
                    scale = plan.sub_scale
                else:
                    loss, scale = ce, plan.sub_scale
                if not all_agree(bool(torch.isfinite(loss)), self.dist):  # every rank skips the step together
                    if self.ddp is not None and synced:
                        (logits.sum() * 0.0).backward()  # DDP expects the synchronised pass to finish
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                (loss * scale).backward()
                self._count("gradient", 2 * self._arch_macs(arch) * images.shape[0] * self.dist.world_size)
                if plan.distill and isinstance(self.teacher, CreamTeacher):
                    top1 = 100.0 * (logits.detach().argmax(dim=1) == labels).float().mean().item()
                    self.teacher.after_step(arch, logits.detach(), labels, images, targets,
                                            mean_over_ranks([top1], self.dist)[0], self._arch_macs(arch))
            losses.append(loss.item())
            if not is_full:
                student_losses.append(loss.item())
        self._apply_gradients()
        return {
            "loss": sum(losses) / len(losses),
            "loss_full": losses[0] if archs[0] == largest else float("nan"),
            "loss_students": sum(student_losses) / len(student_losses) if student_losses else float("nan"),
            "networks": float(len(archs)),
        }

    def _blockwise_step(self, images: Tensor, labels: Tensor, archs: list[Arch]) -> dict[str, float] | None:
        """DNA: every block of each sampled arch learns the teacher's block output from its previous one."""
        assert self.student is not None and self.block_teacher is not None
        x = resize_batch(images, self.block_teacher.resolution)
        features = self.block_teacher(x)
        self._count("teacher", self.block_teacher.macs_per_image * x.shape[0] * self.dist.world_size)
        net, cfg = self.net, self.config
        net.dropout_rate = net.drop_connect_rate = 0.0  # regularisation is for the largest network; DNA has none
        module = self.ddp if self.ddp is not None else self.student
        losses, per_block = [], [0.0] * len(features)
        for i, arch in enumerate(archs):
            synced = i == len(archs) - 1
            net.set_active(arch)
            with contextlib.nullcontext() if self.ddp is None or synced else self.ddp.no_sync():
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16):
                    outputs, logits = module(x, features)
                mse = block_losses(outputs, features)
                loss = sum(mse) + F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
                if not all_agree(bool(torch.isfinite(loss)), self.dist):
                    if self.ddp is not None and synced:
                        (loss * 0.0).backward()  # DDP expects the synchronised pass to finish
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                loss.backward()
            self._count("gradient", 3 * self._arch_macs(arch) * x.shape[0] * self.dist.world_size)
            losses.append(loss.item())
            per_block = [total + m.item() for total, m in zip(per_block, mse)]
        self._apply_gradients()
        return {
            "loss": sum(losses) / len(losses), "loss_full": float("nan"), "loss_students": sum(losses) / len(losses),
            "networks": float(len(archs)), **{f"loss_block{b + 1}": v / len(archs) for b, v in enumerate(per_block)},
        }

    # -- the run -------------------------------------------------------------------------------------
    def run(self, until_step: int | None = None) -> TrainResult:
        """Train to the end of the schedule (or to `until_step`, then checkpoint and return).

        Ctrl-C stops at the next step boundary with a checkpoint and raises TrainingInterrupted.
        """
        if until_step is not None and until_step < 1:
            raise ValueError(f"until_step must be a step >= 1, got {until_step}")
        total = self.schedule.total_steps
        stop_at = total if until_step is None else min(until_step, total)
        self._session_start, self._elapsed_before = time.perf_counter(), float(self.counters["elapsed"])
        bar = tqdm(total=total, initial=self.global_step, disable=not self.progress, dynamic_ncols=True,
                   desc="train", unit="step")
        try:
            with _DeferredInterrupt() as interrupt:
                self._train_until(stop_at, total, bar, interrupt)
        finally:
            bar.close()
            self.log.flush()
        return TrainResult(self.run_dir.root, self.global_step, total, self.global_step >= total, self.last_eval)

    def _tick(self) -> None:
        """Bring the elapsed-time counter (and GPU hours, on GPUs: elapsed x processes) up to now."""
        elapsed = self._elapsed_before + time.perf_counter() - self._session_start
        if self.device.type == "cuda":
            self.counters["gpu_hours"] += (elapsed - self.counters["elapsed"]) * self.dist.world_size / 3600
        self.counters["elapsed"] = elapsed

    def _cost_record(self) -> dict[str, float]:
        """The run's cost so far, as logged: MACs in total and per kind of pass, times, GPU hours."""
        keys = ["train_macs", *(f"{kind}_macs" for kind in PASS_KINDS), "wall_time", "elapsed", "gpu_hours"]
        return {key: self.counters[key] for key in keys}

    def _stop_if_interrupted(self, interrupt: _DeferredInterrupt, saved: bool = False) -> None:
        # Every rank stops at the same step when any was interrupted (one all-reduce, multi-process only).
        requested = not all_agree(not interrupt.requested, self.dist)
        if requested:
            if not saved:
                self.save()
            raise TrainingInterrupted(
                f"interrupted at step {self.global_step}/{self.schedule.total_steps}; checkpoint written, "
                f"continue with `supernet train --resume {self.run_dir.root}`"
            )

    def _train_until(self, stop_at: int, total: int, bar: tqdm, interrupt: _DeferredInterrupt) -> None:
        cfg = self.config
        while self.global_step < stop_at:
            epoch, start = divmod(self.global_step, self.steps_per_epoch)
            loader = self._loader(epoch, start)
            plan = self.schedule.plan(self.global_step)
            if start == 0 and plan.shrinking and not plan.phase_start and hasattr(self.sampler, "prepare"):
                self._prepare_sampler(epoch)  # re-estimated each epoch; phase starts prepare in _enter_phase
            epoch_end = min((epoch + 1) * self.steps_per_epoch, total)
            for images, labels in loader:
                if self.global_step >= min(epoch_end, stop_at):
                    break
                self._one_step(images.to(self.device), labels.to(self.device), epoch, bar)
                if self.global_step < min(epoch_end, stop_at):
                    self._stop_if_interrupted(interrupt)
            if self.global_step == epoch_end:
                every = cfg.train.eval_every_epochs
                if every and ((epoch + 1) % every == 0 or epoch_end == total):
                    self.last_eval = self.evaluate_extremes(epoch + 1)
                self.save(epoch_end=epoch + 1)
            else:  # stopped at `until_step` inside an epoch
                self.save()
            self._stop_if_interrupted(interrupt, saved=True)

    def _prepare_sampler(self, epoch: int) -> None:
        n = self.config.sampler.estimate_batches  # only the diversity sampler has `prepare`
        batches = []
        for i, (images, _) in enumerate(Loader(self.data.train, self.config.data.batch_size, seed=self.config.seed + 7,
                                               epoch=epoch, shuffle=True, augment=False)):
            if i >= n:
                break
            batches.append(images.to(self.device))
        if self.dist.is_main:
            self.sampler.prepare(self.net, batches, self.space)
            images = sum(b.shape[0] for b in batches)
            self._count("preparation", estimation_macs(self.space, self.space.largest(), self.num_classes,
                                                       self.data.in_channels, self.sampler.inputs) * images)
        if self.dist.enabled:  # one estimate for all ranks, so they keep drawing the same architectures
            self.sampler.load_state_dict(broadcast_object(self.sampler.state_dict(), self.dist))

    def _one_step(self, images: Tensor, labels: Tensor, epoch: int, bar: tqdm) -> None:
        cfg = self.config
        plan = self.schedule.plan(self.global_step)
        if plan.phase_start:
            self._enter_phase(plan)
        started = time.perf_counter()
        # sync_bn: statistics over all ranks in training steps only; evaluation runs on rank 0 alone
        with synchronized_statistics(self.net) if cfg.train.sync_bn else contextlib.nullcontext():
            out = self.train_step(images, labels, plan, epoch)
        self.counters["wall_time"] += time.perf_counter() - started
        if out is None:
            self.counters["nonfinite_total"] += 1
            self.counters["nonfinite_streak"] += 1
            if self.counters["nonfinite_streak"] >= cfg.train.max_nonfinite_steps:
                self.save()
                epochs = self.run_dir.kept_epochs()
                raise TrainingStopped(
                    f"{self.counters['nonfinite_streak']} non-finite losses in a row at step {self.global_step}; "
                    "a checkpoint was written. Lower the learning rate or clip gradients and continue: "
                    f"`supernet train --resume {self.run_dir.root} --set optim.lr={cfg.optim.lr / 2:g}` (or --set "
                    "optim.grad_clip.kind=norm); if the weights had already diverged, add --from-epoch N to restart "
                    "from an earlier epoch's checkpoint (kept: "
                    + (", ".join(map(str, epochs)) or "none yet") + ")"
                )
        else:
            self.counters["nonfinite_streak"] = 0
        self.global_step += 1
        bar.update(1)
        if out is not None:
            bar.set_postfix(phase=plan.phase, epoch=epoch + 1, loss=f"{out['loss']:.3f}", lr=f"{plan.lr:.4f}",
                            eps=f"{plan.sub_scale:.3g}", refresh=False)
            # the first and the last step are always logged: the last record holds the run's whole cost
            if (self.global_step % cfg.train.log_every_steps == 0 or self.global_step == 1
                    or self.global_step == self.schedule.total_steps):
                self._tick()
                self.log.write({
                    "kind": "train", "step": self.global_step, "epoch": epoch + 1, "phase": plan.phase,
                    "lr": plan.lr, "eps": plan.sub_scale, **out, **self._cost_record(),
                    "skipped_steps": self.counters["nonfinite_total"], **teacher_stats(self.teacher),
                })
        if self.global_step % cfg.train.checkpoint_every_steps == 0:
            self.save()

    def _enter_phase(self, plan: StepPlan) -> None:
        if plan.shrinking and hasattr(self.sampler, "prepare"):
            self._prepare_sampler(self.global_step // self.steps_per_epoch)
        if plan.reorder_channels:
            width = any(len(st.widths) > 1 for st in plan.space.stages)  # width phase: stage outputs too
            # sort within what earlier phases trained, so none of their sub-networks changes function
            trained = self.schedule.plan(self.global_step - 1).space if self.global_step > 0 else None
            reorder_channels(self.net, self.optimizer, expand=True, width=width, trained=trained)
        if (plan.shrinking and self.config.teacher.name == "external" and self.config.teacher.checkpoint == "snapshot"
                and self.snapshot is None):
            self._take_snapshot()

    def evaluate_extremes(self, epoch: int) -> dict[str, Any]:
        """Val accuracy of the smallest and largest sub-networks after BN recalibration; training state untouched."""
        if self.data.val is None or not self.dist.is_main:
            return {}
        cfg = self.config
        data = self.data
        if cfg.train.eval_images and cfg.train.eval_images < len(data.val):
            data = dataclasses.replace(data, val=subset(data.val, cfg.train.eval_images, cfg.seed))
        evaluator = Evaluator(self.net, data, cfg.data.eval_batch_size, f"step{self.global_step}",
                              recalibration_images=cfg.train.recal_images, seed=cfg.seed)
        record: dict[str, Any] = {"kind": "eval", "step": self.global_step, "epoch": epoch}
        for label, arch in (("smallest", self.space.smallest()), ("largest", self.space.largest())):
            result = evaluator.evaluate(arch, "val")
            record[f"{label}_top1"] = result.top1
            record[f"{label}_loss"] = result.loss
            record["val_images"] = result.images  # per-epoch evaluation may use a subset (train.eval_images)
        record.update(self._diagnostics(evaluator, epoch))
        self._tick()
        record.update(self._cost_record())
        self.log.write(record)
        if self.progress:
            tqdm.write(f"epoch {epoch}: val top-1 smallest {record['smallest_top1']:.2%} largest "
                       f"{record['largest_top1']:.2%}  ({self.counters['train_macs'] / 1e12:.2f} TMACs trained, "
                       f"{self.counters['wall_time'] / 60:.1f} min)")
            if "diag_teacher_top1" in record:
                tqdm.write(f"  teacher {record['diag_teacher_top1']:.2%} vs its students {record['diag_student_top1']:.2%}, "
                           f"logit distance {record['diag_logit_distance']:.3f}")
        return record

    def _diagnostics(self, evaluator: Evaluator, epoch: int) -> dict[str, float]:
        """EnNAS's diagnostics over `train.diagnostic_draws` groups drawn as training draws them (not counted)."""
        draws = self.config.train.diagnostic_draws
        plan = self.schedule.plan(max(self.global_step - 1, 0))
        if not draws or not plan.shrinking or plan.num_random is not None:
            return {}
        rng = random.Random(f"diagnostics/{self.config.seed}/{epoch}")  # the training stream stays untouched
        images, labels = (t.to(self.device) for t in next(iter(evaluator.recalibration_batches())))
        val = [(x.to(self.device), y.to(self.device)) for x, y in evaluator.split_batches("val")]
        val_labels = torch.cat([y for _, y in val])
        ctx = SampleContext(plan.space, rng, self.num_classes, self._uncounted_score(images, labels), epoch,
                            self.global_step)
        groups = []
        for _ in range(draws):
            archs = self._with_full_model(self.sampler.sample(ctx), plan)
            inplace = self.config.teacher.name == "inplace" and archs[0] == plan.space.largest()
            students = archs[1:] if inplace else archs
            if len(students) < 2:
                return {}
            logits = {}
            for arch in dict.fromkeys(archs):
                module = evaluator.extract(arch).to(self.device)
                with torch.no_grad():
                    logits[arch] = (module(resize_batch(images, arch.resolution)).float(),
                                    torch.cat([module(resize_batch(x, arch.resolution)).float() for x, _ in val]))
            teacher = None
            if isinstance(self.teacher, EnsembleTeacher):
                _, w, _ = self.teacher.combine([logits[a][0] for a in students], labels)
                teacher = torch.tensordot(w.to(val_labels.device, torch.float32),
                                          torch.stack([logits[a][1] for a in students]), dims=1)
            elif inplace:
                teacher = logits[archs[0]][1]
            groups.append(group_diagnostics([logits[a][1] for a in students], val_labels, teacher))
        return epoch_record(groups)

    def _cream_look_ahead(self, student: Arch, images: Tensor, labels: Tensor, lr: float) -> None:
        """Cream's meta-network update; its two slices' passes with gradients count as teacher passes (3x)."""
        teacher = self.teacher
        assert isinstance(teacher, CreamTeacher)
        with self._passes("teacher"):
            teacher.look_ahead(self.net, student, images, labels, lr, lambda v: mean_over_ranks(v, self.dist))
        self._count("teacher", 2 * 3 * self._arch_macs(student) * teacher.slice * self.dist.world_size)

    def _uncounted_score(self, images: Tensor, labels: Tensor) -> Any:
        """A batch scorer for samplers that rank candidates, outside the training-cost counters."""
        def score(archs: list[Arch]) -> list[float]:
            net, losses = self.net, []
            active, rates = net.active_arch, (net.dropout_rate, net.drop_connect_rate)
            net.dropout_rate = net.drop_connect_rate = 0.0
            try:
                with torch.no_grad(), frozen_bn_statistics(net):
                    for a in archs:
                        net.set_active(a)
                        losses.append(F.cross_entropy(net(resize_batch(images, a.resolution)).float(), labels).item())
            finally:
                net.set_active(active)
                net.dropout_rate, net.drop_connect_rate = rates
            return losses

        return score


def _keep_global_batch(config: Config, global_batch: int, world_size: int) -> Config:
    """The saved config with the per-process batch that keeps the run's global batch on `world_size` ranks."""
    if global_batch % world_size:
        raise RunDirError(f"the run's global batch {global_batch} does not split over {world_size} processes; "
                          f"resume with a number of processes that divides {global_batch}")
    data = config.data.model_copy(update={"batch_size": global_batch // world_size})
    return config.model_copy(update={"data": data})


def _saved_space(state: dict[str, Any], path: Path) -> SearchSpace:
    return spaces.from_dict(state["space"], source=f"{path} (saved space)")

