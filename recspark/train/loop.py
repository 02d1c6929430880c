"""The training function every worker runs (torch, Petastorm; no Spark import).

One function, :func:`train_worker`, serves all launchers; only the collective operations differ
(:class:`~recspark.train.distributed.Comm`: single process, Horovod, or ``torch.distributed``
under TorchDistributor).

A run has two phases, both checkpointed every epoch by rank 0 under ``<model_dir>/checkpoints``:

1. ``validate``: train on the examples before the validation cut, evaluate NDCG@k on the
   validation period after each epoch, stop early after ``patience`` epochs without
   improvement. This picks the number of epochs.
2. ``final``: train a fresh model on every example (validation period included) for that many
   epochs; this is the model written to ``<model_dir>/model.pt``.

Started again with the same ``model_dir``, a killed run resumes after its last checkpoint (the
checkpoint holds model, optimizer, RNG state and the metric history). Every rank reads the same
checkpoint file, so ``model_dir`` must be on storage all workers see.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from recspark.train.artifacts import (
    load_checkpoint,
    write_checkpoint,
    write_model,
    write_user_vectors,
)
from recspark.train.distributed import Comm, LocalComm
from recspark.train.model import ItemFeatures, ModelShape, TwoTower, batch_loss, evaluate
from recspark.train.model import weights_digest as digest_of
from recspark.train.plan import fused_adam, plan_device
from recspark.train.reader import (
    Batch,
    WorkerData,
    dataset_url,
    load_worker_data,
    padding_batch,
    shard_batches,
    shard_rows,
)

TRAIN_FIELDS = ("example_id", "target", "weight")  # plus the epoch's context column
USER_FIELD = "user_idx"  # read when the model has user vectors
PHASE_VALIDATE = "validate"
PHASE_FINAL = "final"
PRECEDING = "preceding"  # train on the ``history`` column
BAG = "bag"  # train on the ``context`` column
AUTO = "auto"
CONTEXT_COLUMN = {PRECEDING: "history", BAG: "context"}
ON = "on"
OFF = "off"


@dataclass(frozen=True)
class TrainSpec:
    """Everything a worker needs (picklable: shipped to executors)."""

    data_dir: str  # holds train/, valid/, all/ (examples) and items/ (item features)
    model_dir: str
    shape: ModelShape
    epochs: int
    patience: int
    batch_size: int
    learning_rate: float  # already scaled by the number of workers
    history_len: int
    weight_decay: float = 0.0
    # Adam's step size for the log of the user tower's half-life (when the shape learns it):
    # larger than the weights', so that it can travel from its start within a few epochs.
    recency_learning_rate: float = 0.05
    # "preceding", "bag" or "auto" (see context_for_epoch).
    context: str = PRECEDING
    # "on", "off" or "auto" (see user_vectors_for): whether an epoch trains the users' own
    # vectors (when the shape has them), with Adam's step user_learning_rate.
    user_embedding: str = OFF
    user_learning_rate: float = 0.0003
    validation_k: int = 10
    negatives: int = 64
    # Score every item in each step's softmax instead of sampling (small catalogs).
    full_softmax: bool = False
    # Correct sampled logits by the log of each candidate's sampling probability.
    logq_correction: bool = True
    seed: int = 42
    reader_pool: str = "thread"
    reader_workers: int = 2
    shuffle_buffer: int = 8192
    torch_threads: int = 1
    use_gpu: bool = False
    # The early-stopping phase; False when there are no examples on one side of the cut.
    validate: bool = True
    extra_meta: dict[str, Any] = field(default_factory=dict)


def target_shares(counts: torch.Tensor) -> torch.Tensor:
    """Each item's share of the training targets (uniform when there are none)."""
    total = float(counts.sum())
    if total <= 0:
        return torch.full(counts.shape, 1.0 / max(1, counts.numel()), dtype=torch.float32)
    return (counts / total).to(torch.float32)


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """One worker's run: what it trains, with what, and how far it got."""

    spec: TrainSpec
    comm: Comm
    device: torch.device
    data: WorkerData
    model: TwoTower
    # Horovod's DistributedOptimizer is a new optimizer over the same parameters, with its own
    # state: the optimizer state is saved from and loaded into this wrapped one.
    opt: torch.optim.Optimizer
    # Checkpointed: phase, epoch, history, best_epoch, best_metric, bad_epochs.
    state: dict[str, Any]
    resumed_from: str | None = None
    train_seconds: float = 0.0
    train_samples: int = 0
    # Per "<phase>:<epoch>": [rows trained on, sum of their example ids modulo 2**64].
    epoch_rows: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PhaseInputs:
    """What every epoch of a phase trains with."""

    phase: str
    feats: ItemFeatures  # item ids of the items the phase does not know are masked (0)
    known: torch.Tensor  # the items with training interactions in the phase: the candidates
    pool: torch.Tensor  # their indices: where sampled negatives come from
    target_prob: torch.Tensor | None  # each item's share of the targets (logQ correction)


def _fresh(spec: TrainSpec, device: torch.device) -> tuple[TwoTower, torch.optim.Optimizer]:
    torch.manual_seed(spec.seed)
    model = TwoTower(spec.shape).to(device)
    named = dict(model.named_parameters())
    half_life = [named.pop("log_half_life")] if "log_half_life" in named else []
    users = [named.pop("user_emb.weight")] if "user_emb.weight" in named else []
    groups: list[dict[str, Any]] = [{"params": list(named.values())}]
    if half_life:
        groups.append({"params": half_life, "lr": spec.recency_learning_rate, "weight_decay": 0.0})
    if users:
        groups.append({"params": users, "lr": spec.user_learning_rate, "weight_decay": 0.0})
    opt = torch.optim.Adam(
        groups,
        lr=spec.learning_rate,
        weight_decay=spec.weight_decay,
        fused=fused_adam(device.type),
    )
    return model, opt


def build_model(
    spec: TrainSpec, comm: Comm, device: torch.device, ckpt: dict[str, Any] | None = None
) -> tuple[TwoTower, torch.optim.Optimizer]:
    """A fresh model (or the checkpoint's), the same on every rank, and its (wrapped) optimizer."""
    model, opt = _fresh(spec, device)
    if ckpt is not None:
        model.load_weights(ckpt["model"])
    comm.broadcast_model(model)
    wrapped = comm.wrap_optimizer(opt, model)
    if ckpt is not None:
        wrapped.load_state_dict(ckpt["optimizer"])
    return model, wrapped


def initial_state(spec: TrainSpec, n_valid: float) -> dict[str, Any]:
    """The state of a run from scratch: the validation phase when there is anything to
    validate on, else straight to ``spec.epochs`` final epochs."""
    return {
        "phase": PHASE_VALIDATE if n_valid > 0 else PHASE_FINAL,
        "epoch": 0,
        "history": [],
        "best_epoch": 0 if n_valid > 0 else spec.epochs,
        "best_metric": -1.0,
        "bad_epochs": 0,
    }


# glibc's mallopt parameter for the mmap threshold (M_MMAP_THRESHOLD in malloc.h).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def pin_mmap_threshold(limit: int = MMAP_THRESHOLD) -> bool:
    """Make glibc serve every allocation of ``limit`` bytes or more from a mapping of its own,
    given back to the system when freed, instead of raising that threshold up to 32 MiB as
    large blocks are freed (its default).

    A training step allocates and frees buffers of tens of MB (the 100,000-user table's
    gradient is 25.6 MB). Served from the heap, they fragmented it: each of two workers on the
    10M-event data grew by about 18 MB a step until the OOM killer stopped the run
    (``benchmarks/train_workers.py``: 3.73 to 7.34 GiB over 200 steps; pinned at 1 MiB, 1.70 to
    1.75, and 327 ms a step against 394; pinned at 16 MiB it still grew, by 6 MB a step).
    One worker alone grew by 0.6 MB a step, and pinned it took 94 ms a step against 47 (every
    large block mapped and faulted in afresh): :func:`resume` pins it only when there are
    several workers. Returns False where there is no glibc (macOS, musl) or the call is
    refused; nothing changes then.
    """
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


def resume(spec: TrainSpec, comm: Comm) -> Run:
    """Set up the worker: its allocator (with several workers), threads, device and data, and
    the model of the run's last checkpoint when it has one (a fresh model otherwise)."""
    if comm.size > 1:
        pin_mmap_threshold()
    torch.set_num_threads(max(1, spec.torch_threads))
    device = torch.device(plan_device(spec.use_gpu, torch.cuda.is_available(), comm.local_rank))
    data = load_worker_data(spec.data_dir, comm.rank, comm.size, device)
    n_valid = comm.allreduce([float(data.valid_target.numel())], "sum")[0] if spec.validate else 0.0
    ckpt = load_checkpoint(spec.model_dir)
    model, opt = build_model(spec, comm, device, ckpt)
    run = Run(spec, comm, device, data, model, opt, initial_state(spec, n_valid))
    if ckpt is not None:
        run.state = ckpt["state"]
        run.resumed_from = f"{run.state['phase']}:{run.state['epoch']}"
    return run


def save_checkpoint(run: Run) -> None:
    """Rank 0 saves the model, the optimizer and the run's state as the last checkpoint.

    Called after every epoch and when the final phase starts; tests replace it to stop a run
    right after a given checkpoint."""
    if run.comm.rank == 0:
        write_checkpoint(
            run.spec.model_dir, run.model.state_dict(), run.opt.state_dict(), run.state
        )


# --------------------------------------------------------------------------- epochs


def decide_context(mode: str, half_life: float, history_len: int) -> str:
    """What ``mode`` trains on after its first epoch, given the user tower's half-life then
    (pure). ``auto``: the order-free bag when the half-life is at least the history length
    (the newest of ``history_len`` items weighs at most twice the oldest: the order of a
    user's items carries little the model uses, and the bag shows each example the user's
    other items, as scoring shows the whole history), else the preceding history."""
    if mode != AUTO:
        return mode
    return BAG if half_life >= history_len else PRECEDING


def context_for_epoch(mode: str, epoch: int, decided: str | None) -> str:
    """The context an epoch trains on (pure): ``mode`` when it is ``preceding`` or ``bag``;
    for ``auto``, the preceding history in a phase's first epoch and until a decision
    (:func:`decide_context`) was made, then the decision."""
    if mode != AUTO:
        return mode
    return decided if epoch > 1 and decided is not None else PRECEDING


def user_vectors_for(setting: str, context: str) -> bool:
    """Whether an epoch on ``context`` trains (and its validation uses) the users' own vectors
    (pure): always ``on``, never ``off``; ``auto``: on the order-free bag only. A user's own
    vector is a fixed, order-free description of the user. Where order matters (the preceding
    history) it competes with what the newest items say, and loses (the README's MovieLens
    split: validation NDCG@10 0.115 with it against 0.124 without). On the bag the user tower
    is an even mean of the user's items, and a vector of the user's own fits them better
    (demo: 0.113 against 0.108)."""
    if setting == AUTO:
        return context == BAG
    return setting == ON


def _settle_context(run: Run) -> None:
    """After a run's first epoch: decide and record (checkpointed) what later epochs use."""
    if run.state.get("context") is None:
        half_life = float(run.model.half_life())
        run.state["context"] = decide_context(run.spec.context, half_life, run.spec.history_len)


def phase_inputs(run: Run, phase: str) -> PhaseInputs:
    """The inputs of ``phase``'s epochs. Only items with training interactions are
    candidates: an item never seen as a positive would otherwise be taught to score low,
    which is what cold items must not."""
    validating = phase == PHASE_VALIDATE
    known = (run.data.known_train if validating else run.data.known_all).to(run.device)
    counts = run.data.n_train if validating else run.data.n_all
    prob = target_shares(counts).to(run.device) if run.spec.logq_correction else None
    return PhaseInputs(
        phase=phase,
        feats=replace(run.data.feats, id_idx=torch.where(known, run.data.feats.id_idx, 0)),
        known=known,
        pool=known.nonzero().squeeze(1),
        target_prob=prob,
    )


def epoch_batches(
    run: Run, phase: str, epoch: int, context: str = PRECEDING
) -> tuple[int, Iterator[Batch]]:
    """The number of steps every rank takes this epoch (the longest shard's batches) and this
    rank's batches (with the ``context``'s column only, and ``user_idx`` when the model has
    user vectors)."""
    spec, comm = run.spec, run.comm
    url = dataset_url(os.path.join(spec.data_dir, "train" if phase == PHASE_VALIDATE else "all"))
    rows = shard_rows(url, comm.rank, comm.size, "example_id")
    steps = int(comm.allreduce([float(math.ceil(rows / spec.batch_size))], "max")[0])
    users = (USER_FIELD,) if spec.shape.n_users > 0 else ()
    batches = shard_batches(
        url,
        comm.rank,
        comm.size,
        (*TRAIN_FIELDS, *users, CONTEXT_COLUMN[context]),
        spec.batch_size,
        spec.seed,
        epoch,
        spec.reader_pool,
        spec.reader_workers,
        spec.shuffle_buffer,
    )
    return steps, batches


def train_step(
    run: Run, inputs: PhaseInputs, batch: Batch, context: str = PRECEDING
) -> tuple[float, float]:
    """One optimizer step on ``batch``, its users seen through ``context``; its loss times its
    weight, and its weight."""
    spec, device = run.spec, run.device
    hist = torch.from_numpy(batch[CONTEXT_COLUMN[context]].astype(np.int64)).to(device)
    target = torch.from_numpy(batch["target"].astype(np.int64)).to(device)
    weight = torch.from_numpy(batch["weight"].astype(np.float32)).to(device)
    users = (
        torch.from_numpy(batch[USER_FIELD].astype(np.int64)).to(device)
        if spec.shape.n_users > 0 and user_vectors_for(spec.user_embedding, context)
        else None
    )
    pool = inputs.pool
    negs = (
        pool[torch.randint(0, int(pool.shape[0]), (spec.negatives,), device=device)]
        if spec.negatives > 0 and not spec.full_softmax and pool.numel() > 0
        else None
    )
    run.opt.zero_grad()
    loss = batch_loss(
        run.model,
        inputs.feats,
        hist,
        target,
        weight,
        negs,
        full_softmax=spec.full_softmax,
        candidates=inputs.known,
        target_prob=inputs.target_prob,
        user_idx=users,
    )
    loss.backward()
    run.comm.sync_gradients(run.model)
    run.opt.step()
    w = float(weight.sum())
    return float(loss.detach()) * w, w


def _count_rows(run: Run, rows: list[int], example_ids: np.ndarray) -> None:
    run.train_samples += len(example_ids)
    rows[0] += len(example_ids)
    # The ids' sum modulo 2**64 (numpy's uint64 sum wraps): a checksum of the rows seen.
    rows[1] = (rows[1] + int(np.sum(example_ids.astype(np.uint64), dtype=np.uint64))) % 2**64


def run_epoch(run: Run, inputs: PhaseInputs, epoch: int, context: str) -> float:
    """Train one epoch of ``inputs.phase`` on ``context``; the weighted mean training loss
    over all ranks.

    Every rank takes the same number of steps; a rank whose shard is exhausted steps on a
    batch of weight 0."""
    steps, batches = epoch_batches(run, inputs.phase, epoch, context)
    # Seeded per (phase, epoch, rank): dropout and negatives replay exactly on resume.
    torch.manual_seed(_epoch_seed(run.spec.seed, inputs.phase, epoch, run.comm.rank))
    run.model.train()
    rows = run.epoch_rows.setdefault(f"{inputs.phase}:{epoch}", [0, 0])
    loss_sum, weight_sum = 0.0, 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(batches, None)
        loss, weight = train_step(
            run,
            inputs,
            batch if batch is not None else padding_batch(run.spec.history_len),
            context,
        )
        loss_sum, weight_sum = loss_sum + loss, weight_sum + weight
        if batch is not None:
            _count_rows(run, rows, batch["example_id"])
    if next(batches, None) is not None:  # cannot happen: steps >= this shard's batches
        raise RuntimeError("a shard yielded more batches than it counted")
    run.train_seconds += time.perf_counter() - t0
    tot = run.comm.allreduce([loss_sum, weight_sum], "sum")
    return tot[0] / max(tot[1], 1e-12)


def validate(run: Run, inputs: PhaseInputs, context: str = PRECEDING) -> dict[str, float]:
    """The model (after an epoch on ``context``) on the validation examples of all ranks:
    NDCG@k and recall@k; NDCG@k when the items without training interactions (cold in this
    phase) are left out of the lists; and how many targets are such items."""
    k, hist, target = run.spec.validation_k, run.data.valid_hist, run.data.valid_target
    users = run.data.valid_user if user_vectors_for(run.spec.user_embedding, context) else None
    part = evaluate(run.model, inputs.feats, hist, target, k, user_idx=users)
    cold = ~inputs.known
    warm_only = evaluate(run.model, inputs.feats, hist, target, k, exclude=cold, user_idx=users)
    n_cold = float(cold[target].sum()) if target.numel() else 0.0
    ndcg, recall, excluded, cold_targets, n = run.comm.allreduce(
        [part[0], part[1], warm_only[0], n_cold, float(part[2])], "sum"
    )
    return {
        f"val_ndcg_at_{k}": ndcg / max(n, 1.0),
        f"val_recall_at_{k}": recall / max(n, 1.0),
        f"val_ndcg_at_{k}_cold_excluded": excluded / max(n, 1.0),
        "val_cold_targets": cold_targets,
    }


def cold_choice(history: list[dict[str, Any]], best_epoch: int, k: int) -> dict[str, Any] | None:
    """What the validation period says of items without training interactions (pure), from
    the best validation epoch: whether ranking them among the others helped (``score``: NDCG@k
    with them above NDCG@k without), and whether users took any of them up at all (``slots``:
    1 when some validation target was such an item, else 0: a reserved place would go unused).
    None without a validation phase."""
    best = [
        h
        for h in history
        if h["phase"] == PHASE_VALIDATE and h["epoch"] == best_epoch and "val_cold_targets" in h
    ]
    if not best:
        return None
    h = best[-1]
    scored, excluded = float(h[f"val_ndcg_at_{k}"]), float(h[f"val_ndcg_at_{k}_cold_excluded"])
    return {
        "validation_targets": int(h["val_cold_targets"]),
        "ndcg_scored": scored,
        "ndcg_excluded": excluded,
        "score": scored > excluded,
        "slots": 1 if h["val_cold_targets"] > 0 else 0,
    }


def _epoch_record(run: Run, loss: float, context: str) -> dict[str, Any]:
    """What an epoch's history row says of its training: loss, context, half-life after it."""
    return {
        "train_loss": loss,
        "context": context,
        "recency_half_life": float(run.model.half_life()),
    }


def validation_epoch(run: Run, inputs: PhaseInputs) -> None:
    """Train and validate one epoch; record it, keep the best epoch, checkpoint."""
    state, k = run.state, run.spec.validation_k
    epoch = state["epoch"] + 1
    context = context_for_epoch(run.spec.context, epoch, state.get("context"))
    loss = run_epoch(run, inputs, epoch, context)
    _settle_context(run)
    scores = validate(run, inputs, context)
    ndcg = scores[f"val_ndcg_at_{k}"]
    state["history"].append(
        {"phase": PHASE_VALIDATE, "epoch": epoch, **_epoch_record(run, loss, context), **scores}
    )
    state["epoch"] = epoch
    if ndcg > state["best_metric"]:
        state["best_metric"], state["best_epoch"], state["bad_epochs"] = ndcg, epoch, 0
    else:
        state["bad_epochs"] += 1
    save_checkpoint(run)


def validation_phase(run: Run) -> None:
    """Phase 1 (early stopping), then a fresh model and optimizer for phase 2."""
    inputs = phase_inputs(run, PHASE_VALIDATE)
    while run.state["epoch"] < run.spec.epochs and run.state["bad_epochs"] < run.spec.patience:
        validation_epoch(run, inputs)
    run.model, run.opt = build_model(run.spec, run.comm, run.device)
    run.state["phase"], run.state["epoch"] = PHASE_FINAL, 0
    save_checkpoint(run)


def final_phase(run: Run) -> None:
    """Phase 2: the best epoch count of phase 1 on every example, checkpointed each epoch."""
    inputs = phase_inputs(run, PHASE_FINAL)
    target_epochs = max(1, int(run.state["best_epoch"]))
    while run.state["epoch"] < target_epochs:
        epoch = run.state["epoch"] + 1
        context = context_for_epoch(run.spec.context, epoch, run.state.get("context"))
        loss = run_epoch(run, inputs, epoch, context)
        _settle_context(run)
        run.state["history"].append(
            {"phase": PHASE_FINAL, "epoch": epoch, **_epoch_record(run, loss, context)}
        )
        run.state["epoch"] = epoch
        save_checkpoint(run)


def trained_user_vectors(setting: str, history: list[dict[str, Any]]) -> bool:
    """Whether the final model trained the users' own vectors: some epoch of its phase did
    (pure, from the epochs' records)."""
    return any(
        user_vectors_for(setting, h["context"]) for h in history if h["phase"] == PHASE_FINAL
    )


def finish(run: Run) -> dict[str, Any]:
    """Rank 0 writes the final model, its description and (when it trained them) the users'
    own vectors; this rank's summary."""
    spec, state = run.spec, run.state
    digest = digest_of(run.model)
    offsets = run.model.user_offsets()
    with_users = offsets is not None and trained_user_vectors(spec.user_embedding, state["history"])
    if run.comm.rank == 0:
        # The learned half-life is the one to score with (Spark inference reads the shape).
        shape = {**spec.shape.to_dict(), "recency_half_life": float(run.model.half_life())}
        meta = {
            "shape": shape,
            "best_epoch": state["best_epoch"],
            "best_metric": state["best_metric"],
            "history": state["history"],
            "num_proc": run.comm.size,
            "digest": digest,
            "cold_items": cold_choice(state["history"], state["best_epoch"], spec.validation_k),
            "context": {"mode": spec.context, "after_first_epoch": state.get("context")},
            "user_vectors": with_users,
            **spec.extra_meta,
        }
        if with_users and offsets is not None:
            write_user_vectors(spec.model_dir, spec.data_dir, offsets)
        write_model(spec.model_dir, run.model.state_dict(), meta)
    return {
        "rank": run.comm.rank,
        "size": run.comm.size,
        "digest": digest,
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "resumed_from": run.resumed_from,
        "samples_per_sec": run.train_samples / run.train_seconds if run.train_seconds > 0 else 0.0,
        "train_samples": run.train_samples,
        "epoch_rows": run.epoch_rows,
    }


def train_worker(spec: TrainSpec, comm: Comm | None = None) -> dict[str, Any]:
    """Train (or resume) the two-phase run described by ``spec``; see the module docstring.

    Returns:
        A summary for this rank: ``rank``, ``size``, ``digest`` (hash of the final weights),
        ``history`` (per-epoch metrics of both phases), ``best_epoch``, ``resumed_from``,
        ``samples_per_sec``, ``train_samples`` and ``epoch_rows`` (per ``<phase>:<epoch>`` of
        this run: the rows this rank trained on and the sum of their example ids modulo 2**64).
    """
    run = resume(spec, comm or LocalComm())
    if run.state["phase"] == PHASE_VALIDATE:
        validation_phase(run)
    final_phase(run)
    return finish(run)


def _epoch_seed(seed: int, phase: str, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + (1 if phase == PHASE_FINAL else 0) * 10_007 + epoch * 101 + rank) % (
        2**31
    )
