"""Run a study's units as Ray Tune trials, on a local Ray instance or a cluster (`pip install 'supernet[ray]'`).

Each unfinished unit is one Tune trial asking for its share of the cluster: `cpus` CPUs and `gpus` GPUs per
process. A unit of one process runs the same two CLI calls as the local runner (train or resume, then
search); a unit of several processes is a Ray Train TorchTrainer job whose workers each start those calls
as one rank of a torch.distributed job (gloo on CPU, NCCL on GPU), as torchrun would. A failed trial is
retried `max_failures` times; it resumes from its checkpoint. The study's folder must be reachable from
every node (a shared file system); results land there exactly as the local runner writes them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supernet.study.plan import Unit
from supernet.study.runner import (
    finish_unit,
    pending_units,
    run_logged,
    thread_env,
    unit_commands,
    unit_log,
)
from supernet.study.spec import StudyError, StudySpec

INSTALL_HINT = "install the Ray extra: pip install 'supernet[ray]'"


@dataclass(frozen=True)
class RayResources:
    """What each unit asks of the cluster: processes (DDP ranks), and CPUs and GPUs per process."""

    processes: int = 1
    cpus: int = 1
    gpus: int = 0

    def __post_init__(self) -> None:
        if self.processes < 1 or self.cpus < 1:
            raise StudyError(f"each unit needs at least one process and one CPU per process, got {self}")
        if self.gpus not in (0, 1):
            raise StudyError(f"give 0 or 1 GPU per process (--ray-gpus), got {self.gpus}; for more GPUs per unit "
                             "use more processes (--ray-processes)")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise StudyError(f"--engine ray needs Ray: {INSTALL_HINT}") from None
    return ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _ddp_worker(config: dict[str, Any]) -> None:
    """One rank of a multi-process unit inside Ray Train: each CLI call joins its own process group, whose
    port rank 0 picks and sends over Ray's group (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR are Ray's)."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    log = Path(config["log"])
    for argv in config["commands"]:
        box = [_free_port() if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        env = thread_env(config["threads"], config["concurrent"])
        env["MASTER_PORT"] = str(box[0])
        run_logged(argv, env, log if rank == 0 else log.with_suffix(f".rank{rank}.log"))
        dist.barrier()


def _trial(config: dict[str, Any], units: Sequence[Unit], out: str, spec: StudySpec, resources: RayResources,
           concurrent: bool) -> dict[str, Any]:
    """A Tune trial: run unit number config["unit"], write its result.json, report its mean Pareto accuracy."""
    unit, folder = units[config["unit"]], Path(out)
    commands = unit_commands(unit, folder, spec, resources.cpus)
    if resources.processes == 1:
        env = thread_env(resources.cpus, concurrent)  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU
        for argv in commands:
            run_logged(argv, env, unit_log(unit, folder))
    else:
        from ray.train import ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        worker_config = {"commands": commands, "threads": resources.cpus, "concurrent": concurrent,
                         "log": str(unit_log(unit, folder))}
        TorchTrainer(_ddp_worker, train_loop_config=worker_config, torch_config=TorchConfig(backend="gloo"),
                     scaling_config=ScalingConfig(num_workers=resources.processes, use_gpu=resources.gpus > 0,
                                                  resources_per_worker={"CPU": resources.cpus})).fit()
    return {"mean_pareto_test": finish_unit(unit, folder)["mean_pareto_test"]}


def run_units_ray(units: Sequence[Unit], out: Path, spec: StudySpec, resources: RayResources,
                  address: str | None = None, max_failures: int = 2, num_cpus: int | None = None,
                  report: Callable[[str], None] = print) -> list[str]:
    """Run the units without a result as Ray Tune trials; the failures' messages.

    `address`: a running cluster ("auto", "ray://..."); None starts a local instance (`num_cpus` CPUs).
    """
    ray = _import_ray()
    from ray import tune

    out = out.resolve()
    todo = pending_units(units, out, report)
    if not todo:
        return []
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        capacity = ray.cluster_resources()
        per_unit = {"CPU": resources.processes * resources.cpus, "GPU": resources.processes * resources.gpus}
        for kind, need in per_unit.items():
            if need > capacity.get(kind, 0):
                raise StudyError(f"each unit asks for {need:g} {kind}s, but the Ray cluster has "
                                 f"{capacity.get(kind, 0):g}; lower --ray-processes, --ray-cpus or --ray-gpus")
        concurrent = capacity.get("CPU", 0) >= 2 * per_unit["CPU"]
        # a multi-process unit's ranks are Ray Train's workers; its Tune trial only waits for them (no CPU)
        trial_resources = ({"cpu": resources.cpus, "gpu": resources.gpus} if resources.processes == 1
                           else {"memory": 1})  # a bundle must ask for something: one byte
        trainable = tune.with_resources(tune.with_parameters(_trial, units=todo, out=str(out), spec=spec,
                                                             resources=resources, concurrent=concurrent),
                                        trial_resources)
        tuner = tune.Tuner(trainable, param_space={"unit": tune.grid_search(list(range(len(todo))))},
                           run_config=tune.RunConfig(name=f"study-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                                     storage_path=str(out / "ray"),
                                                     failure_config=tune.FailureConfig(max_failures=max_failures),
                                                     verbose=0))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    failures = []
    for result in grid:
        unit = todo[result.config["unit"]]
        if result.error is not None:
            failures.append(f"{unit.trial} budget {unit.budget} seed {unit.seed}: {_last_line(result.error)}")
        else:
            report(f"finished {unit.trial} (budget {unit.budget}, {unit.epochs} epochs, seed {unit.seed})")
    return failures


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
