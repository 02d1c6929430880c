"""Planning a training launch: small pure functions, unit-tested on CPU.

Running the plan is :mod:`recspark.train.launch`'s job; nothing here touches Spark or torch
state.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from recspark.errors import ConfigError, InputError, LaunchError
from recspark.train.config import TrainConfig

Launcher = Literal["horovod", "torch_distributor", "local"]
Backend = Literal["nccl", "gloo"]

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class LaunchPlan:
    """How one training run is started."""

    launcher: Launcher
    num_proc: int
    backend: Backend
    use_gpu: bool
    learning_rate: float  # already scaled by num_proc
    torch_threads: int
    local_mode: bool  # TorchDistributor: run the processes on the driver (Spark local master)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_backend(use_gpu: bool) -> Backend:
    """NCCL when GPUs do the work, Gloo on CPU."""
    return "nccl" if use_gpu else "gloo"


def plan_num_proc(launcher: Launcher, requested: int, slots: int) -> int:
    """Processes to start: 1 for ``local``; else ``requested``, which must fit in ``slots``.

    ``horovod.spark.run`` waits for all its tasks to start at once, so asking for more than the
    cluster's task slots would hang until its start timeout: refuse it up front.
    """
    if launcher == "local":
        return 1
    if requested < 1:
        raise ConfigError(f"train.num_proc must be >= 1, found {requested}")
    if launcher == "horovod" and requested > slots:
        raise LaunchError(
            f"train.num_proc={requested} but the cluster has {slots} task slots: "
            "horovod.spark.run needs one slot per process; lower train.num_proc"
        )
    return requested


def plan_device(use_gpu: bool, cuda_available: bool, local_rank: int) -> str:
    """``cuda:<local_rank>`` when GPUs are wanted and present, else ``cpu``.

    Asking for a GPU on a machine without one is an error, not a silent fall-back.
    """
    if not use_gpu:
        return "cpu"
    if not cuda_available:
        raise LaunchError("train.use_gpu is true but torch sees no CUDA device")
    return f"cuda:{local_rank}"


# Devices whose fused Adam kernel torch has (CPU since torch 2.4): one pass over each table
# instead of a dozen elementwise ones. At 50,000 items the plain Adam took 10.6 ms a step on 2
# threads, the fused one 1.8 ms (about 30% of a step saved).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def fused_adam(device_type: str) -> bool | None:
    """``torch.optim.Adam``'s ``fused`` for a device type (``cpu``, ``cuda``, ...): True where
    torch has the fused kernel, else None (its default)."""
    return True if device_type in FUSED_ADAM_DEVICES else None


def scaled_learning_rate(base: float, num_proc: int) -> float:
    """Linear scaling: ``num_proc`` workers average gradients of ``num_proc`` x the batch."""
    return base * num_proc


def plan_threads(requested: int, cores: int, num_proc: int) -> int:
    """Torch threads per process: ``requested``, or the cores shared out (at least 1)."""
    if requested > 0:
        return requested
    return max(1, cores // max(1, num_proc))


def is_local_master(master: str | None) -> bool:
    """Spark in local mode (``local``, ``local[4]``, ``local[*]``, ``local-cluster`` excluded)."""
    return bool(master) and bool(re.fullmatch(r"local(\[[0-9*]+(,\s*[0-9]+)?\])?", master or ""))


def plan_files(rows: int, files: int, max_rows: int) -> tuple[int, int]:
    """How to write ``rows`` training examples as Parquet files of near-equal size: ``files``
    of them, or more when a file would hold over ``max_rows`` rows.

    Returns ``(partitions, max_records_per_file)``: ``min(files, rows)`` partitions (at least 1)
    or ``ceil(rows / max_rows)``, whichever is more, and a per-file cap of
    ``ceil(rows / partitions)``, so that even when Spark writes fewer, larger partitions
    (adaptive query execution coalescing a small shuffle), the writer still cuts them into
    that many files. Each file is one Parquet row group: the unit Petastorm deals out to the
    workers and decodes whole, so ``max_rows`` bounds what a worker holds in memory.
    """
    if rows < 0 or files < 1 or max_rows < 1:
        raise ValueError(
            f"rows must be >= 0, files and max_rows >= 1, found {rows}, {files} and {max_rows}"
        )
    n = max(1, min(files, rows), math.ceil(rows / max_rows))
    return n, max(1, math.ceil(rows / n))


@dataclass(frozen=True)
class DataPlan:
    """How many workers the written training data can feed, and whether to validate."""

    workers: int
    validate: bool  # run the early-stopping phase (needs examples on both sides of the cut)
    notes: tuple[str, ...] = ()  # what was changed from the config, and why (logged)


def plan_data(
    num_proc: int, train_groups: int, all_groups: int, train_rows: int, valid_rows: int
) -> DataPlan:
    """Fit the launch to the training data actually written: never fail on small inputs.

    Petastorm gives each worker whole row groups and refuses more workers than row groups, so
    the workers are ``min(num_proc, row groups)`` of every data set a phase reads (``train`` for
    validation, ``all`` for the final model). Validation needs examples before the cut
    (``train``) and after it (``valid``); without either, the model trains on all examples for
    ``train.epochs`` epochs.

    Raises:
        InputError: there is no example at all.
    """
    if all_groups < 1 or train_rows + valid_rows < 1:
        raise InputError(
            "train: no training examples: every user needs at least two interactions "
            "(events with a positive weight)"
        )
    notes: list[str] = []
    validate = train_rows > 0 and valid_rows > 0 and train_groups > 0
    if not validate:
        side = "before" if train_rows == 0 else "after"
        notes.append(
            f"no examples {side} the validation cut (train.validation_days): no early "
            "stopping, the model trains on all examples for train.epochs epochs"
        )
    groups = min(train_groups, all_groups) if validate else all_groups
    workers = max(1, min(num_proc, groups))
    if workers < num_proc:
        notes.append(
            f"{workers} worker(s) instead of train.num_proc={num_proc}: the training data has "
            f"{groups} Parquet row group(s) ({train_rows + valid_rows} examples), and each "
            "worker needs at least one"
        )
    return DataPlan(workers=workers, validate=validate, notes=tuple(notes))


def plan_launch(
    cfg: TrainConfig, slots: int, cores: int, master: str | None, max_proc: int | None = None
) -> LaunchPlan:
    """The whole plan of a launch from the config and what the cluster offers.

    ``max_proc`` caps the processes (the workers the data can feed, see :func:`plan_data`);
    the learning rate and threads are scaled to the processes actually started.
    """
    n = plan_num_proc(cfg.launcher, cfg.num_proc, slots)
    if max_proc is not None:
        n = max(1, min(n, max_proc))
    return LaunchPlan(
        launcher=cfg.launcher,
        num_proc=n,
        backend=plan_backend(cfg.use_gpu),
        use_gpu=cfg.use_gpu,
        learning_rate=scaled_learning_rate(cfg.learning_rate, n),
        torch_threads=plan_threads(cfg.torch_threads, cores, n),
        local_mode=is_local_master(master),
    )


def model_version(
    train: Mapping[str, Any], seed: int, inputs: Mapping[str, Any], explicit: str | None = None
) -> str:
    """The model version: ``explicit`` when given, else a hash of what determines the model.

    Same settings, seed and inputs (each table's Delta id and version) give the same version,
    so that starting a killed run again finds its checkpoints. Every train setting counts (the
    process count changes the scaled learning rate, hence the model).
    """
    if explicit is not None:
        if not _VERSION_RE.match(explicit):
            raise ConfigError(
                f"train.model_version must be letters, digits, '.', '_' or '-', found {explicit!r}"
            )
        return explicit
    blob = json.dumps(
        {"train": dict(train), "seed": seed, "inputs": dict(inputs)}, sort_keys=True, default=str
    )
    return "m-" + hashlib.sha256(blob.encode()).hexdigest()[:12]
