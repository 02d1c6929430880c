"""The training function every worker runs (torch, Petastorm; no Spark import).

One function, :func:`train_worker`, serves all launchers; only the collective operations differ
(:class:`Comm`: single process, Horovod, or ``torch.distributed`` under TorchDistributor).

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

import json
import math
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch

from recspark.errors import ModelError
from recspark.train.model import ItemFeatures, ModelShape, TwoTower, batch_loss, evaluate
from recspark.train.model import weights_digest as digest_of
from recspark.train.plan import plan_device
from recspark.train.reader import dataset_url, local_path, shard_batches, shard_rows

TRAIN_FIELDS = ("example_id", "target", "history", "weight")
PHASE_VALIDATE = "validate"
PHASE_FINAL = "final"
CHECKPOINT = "checkpoints/last.pt"
MODEL_FILE = "model.pt"
META_FILE = "meta.json"


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
    # Test hooks: record the example ids each rank trained on; raise after a checkpoint.
    collect_ids: bool = False
    crash_after: tuple[str, int] | None = None
    extra_meta: dict[str, Any] = field(default_factory=dict)


class Comm(Protocol):
    """The collective operations a worker needs."""

    rank: int
    size: int
    local_rank: int

    def allreduce(self, values: list[float], op: str) -> list[float]: ...

    def broadcast_model(self, model: torch.nn.Module) -> None: ...

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer: ...

    def sync_gradients(self, model: torch.nn.Module) -> None: ...


class LocalComm:
    """One process: every collective is the identity."""

    rank = 0
    size = 1
    local_rank = 0

    def allreduce(self, values: list[float], op: str) -> list[float]:
        return list(values)

    def broadcast_model(self, model: torch.nn.Module) -> None:
        return None

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return opt

    def sync_gradients(self, model: torch.nn.Module) -> None:
        return None


class HorovodComm:
    """Horovod (Gloo on CPU, NCCL for GPU tensors when built with it)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self.hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self._n = 0

    def allreduce(self, values: list[float], op: str) -> list[float]:
        hop = {"sum": self.hvd.Sum, "max": self.hvd.Max, "min": self.hvd.Min}[op]
        self._n += 1
        t = torch.tensor(values, dtype=torch.float64)
        out = self.hvd.allreduce(t, op=hop, name=f"recspark.allreduce.{self._n}")
        return [float(v) for v in out]

    def broadcast_model(self, model: torch.nn.Module) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        wrapped: torch.optim.Optimizer = self.hvd.DistributedOptimizer(
            opt, named_parameters=model.named_parameters(), op=self.hvd.Average
        )
        return wrapped

    def sync_gradients(self, model: torch.nn.Module) -> None:
        return None  # DistributedOptimizer allreduces in step()


class TorchDistComm:
    """``torch.distributed`` (as set up by torchrun under TorchDistributor)."""

    def __init__(self, backend: str = "gloo") -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        self.dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    def allreduce(self, values: list[float], op: str) -> list[float]:
        rop = {
            "sum": self.dist.ReduceOp.SUM,
            "max": self.dist.ReduceOp.MAX,
            "min": self.dist.ReduceOp.MIN,
        }[op]
        t = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(t, op=rop)
        return [float(v) for v in t]

    def broadcast_model(self, model: torch.nn.Module) -> None:
        for t in model.state_dict().values():
            self.dist.broadcast(t, src=0)

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return opt

    def sync_gradients(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.dist.all_reduce(p.grad, op=self.dist.ReduceOp.SUM)
            p.grad.div_(self.size)


def load_item_features(path: str) -> tuple[ItemFeatures, torch.Tensor, torch.Tensor]:
    """Item features (indexed by item_idx) and the known-in-training masks of both phases."""
    import pyarrow.parquet as pq

    table = pq.read_table(local_path(path)).sort_by("item_idx")
    idx = table.column("item_idx").to_numpy()
    if not np.array_equal(idx, np.arange(len(idx))):
        raise ValueError(f"{path}: item_idx must be 0..N-1 without gaps")
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    cat = table.column("cat_idx").to_numpy().astype(np.int64)
    known_train = torch.from_numpy(table.column("known_train").to_numpy(zero_copy_only=False))
    known_all = torch.from_numpy(table.column("known_all").to_numpy(zero_copy_only=False))
    feats = ItemFeatures(
        text=torch.from_numpy(emb),
        id_idx=torch.arange(1, len(idx) + 1, dtype=torch.int64),
        cat_idx=torch.from_numpy(cat),
    )
    return feats, known_train.to(torch.bool), known_all.to(torch.bool)


def load_target_counts(path: str, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each item is a training target in the validation phase and in the final one
    (``n_train`` / ``n_all`` of the item features; ones when a data set predates them)."""
    import pyarrow.parquet as pq

    table = pq.read_table(local_path(path)).sort_by("item_idx")
    out = []
    for name in ("n_train", "n_all"):
        if name in table.column_names:
            out.append(torch.from_numpy(table.column(name).to_numpy().astype(np.float64)))
        else:
            out.append(torch.ones(n_items, dtype=torch.float64))
    return out[0], out[1]


def target_shares(counts: torch.Tensor) -> torch.Tensor:
    """Each item's share of the training targets (uniform when there are none)."""
    total = float(counts.sum())
    if total <= 0:
        return torch.full(counts.shape, 1.0 / max(1, counts.numel()), dtype=torch.float32)
    return (counts / total).to(torch.float32)


def _load_examples(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(history, target) of a whole (validation) data set, read with pyarrow."""
    import pyarrow.parquet as pq

    p = local_path(path)
    if not Path(p).exists():
        return torch.zeros((0, 1), dtype=torch.long), torch.zeros((0,), dtype=torch.long)
    table = pq.read_table(p, columns=["example_id", "target", "history"]).sort_by("example_id")
    if table.num_rows == 0:
        return torch.zeros((0, 1), dtype=torch.long), torch.zeros((0,), dtype=torch.long)
    hist = np.stack(table.column("history").to_numpy(zero_copy_only=False)).astype(np.int64)
    target = table.column("target").to_numpy().astype(np.int64)
    return torch.from_numpy(hist), torch.from_numpy(target)


def _fresh(
    spec: TrainSpec, comm: Comm, device: torch.device
) -> tuple[TwoTower, torch.optim.Optimizer]:
    torch.manual_seed(spec.seed)
    model = TwoTower(spec.shape).to(device)
    opt = torch.optim.Adam(
        model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay
    )
    return model, opt


def _dummy_batch(history_len: int) -> dict[str, np.ndarray]:
    """One row of weight 0: a worker whose shard is exhausted trains on it (zero gradient)."""
    hist = np.full((1, history_len), -1, dtype=np.int32)
    hist[0, -1] = 0
    return {
        "example_id": np.array([-1], dtype=np.int64),
        "target": np.array([0], dtype=np.int32),
        "history": hist,
        "weight": np.array([0.0], dtype=np.float32),
    }


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a kill at any moment leaves the previous file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` through :func:`write_atomic`.

    ``obj`` holds tensors and plain data only (state dicts, lists, str, int, float): it is read
    back with :func:`load_weights` (``weights_only=True``)."""
    write_atomic(path, lambda fh: torch.save(obj, fh))


# What torch's weights-only unpickler says about an object it refuses to build (a class, a
# function to call); anything else it rejects is a corrupt file.
_UNSAFE_RE = re.compile(
    r"(?:Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+|Trying to call reduce for "
    r"unrecognized function \S+|Can only (?:create new object|build)[^.\n]*)"
)
_WEIGHTS_ERROR_RE = re.compile(r"WeightsUnpickler error: ([^\n]*)")


def load_weights(source: Path | BinaryIO, what: str, fix: str) -> Any:
    """``torch.load(source, weights_only=True)``: tensors and plain data (dicts, lists, tuples,
    str, int, float, bool, None), never an arbitrary pickled object, which could run code.

    ``what`` names the file in errors (``checkpoint <path>``, ``<model_dir>: model.pt``);
    ``fix`` says what the user can do.

    Raises:
        ModelError: one line: the file holds other objects (refused), or is corrupt or
            unreadable (truncated, not a torch file, an OSError).
    """
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSAFE_RE.search(str(e))
        if found is None:
            cause = _WEIGHTS_ERROR_RE.search(str(e))
            detail = cause.group(1).strip() if cause else _last_line(e)
            raise ModelError(
                f"{what} is corrupt or not a weights-only file ({detail}); refused: recspark "
                f"loads weights only; {fix}"
            ) from e
        raise ModelError(
            f"{what} holds objects other than tensors and plain data ({found.group(0)}); "
            f"refused: recspark loads weights only, a pickled object could run code; {fix}"
        ) from e
    except Exception as e:  # truncated zip, bad pickle, OSError: all an unusable file
        raise ModelError(f"{what} is corrupt or unreadable ({_first_line(e)}); {fix}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _last_line(e: BaseException) -> str:
    text = [t for t in str(e).strip().splitlines() if t.strip()]
    return " ".join(text[-1].split()) if text else type(e).__name__


def checkpoint_path(model_dir: str) -> Path:
    """Where the run in ``model_dir`` keeps its last checkpoint."""
    return Path(local_path(model_dir)) / CHECKPOINT


def load_checkpoint(model_dir: str) -> dict[str, Any] | None:
    """The last checkpoint of the run in ``model_dir``, or None when it has none yet.

    Raises:
        ModelError: the checkpoint file exists but cannot be read as one (one line naming it).
    """
    path = checkpoint_path(model_dir)
    if not path.exists():
        return None
    ckpt = load_weights(
        path, f"checkpoint {path}", "delete it to train this model version from the start"
    )
    keys = ckpt.keys() if isinstance(ckpt, dict) else ()
    missing = [k for k in ("model", "optimizer", "state") if k not in keys]
    if missing:
        raise ModelError(
            f"checkpoint {path} is not a training checkpoint (missing {', '.join(missing)}); "
            "delete it to train this model version from the start"
        )
    out: dict[str, Any] = ckpt
    return out


def train_worker(spec: TrainSpec, comm: Comm | None = None) -> dict[str, Any]:
    """Train (or resume) the two-phase run described by ``spec``; see the module docstring.

    Returns:
        A summary for this rank: ``rank``, ``size``, ``digest`` (hash of the final weights),
        ``history`` (per-epoch metrics of both phases), ``best_epoch``, ``resumed_from``,
        ``samples_per_sec`` and, with ``collect_ids``, ``seen_ids`` per (phase, epoch).
    """
    comm = comm or LocalComm()
    torch.set_num_threads(max(1, spec.torch_threads))
    device = torch.device(plan_device(spec.use_gpu, torch.cuda.is_available(), comm.local_rank))
    feats, known_train, known_all = load_item_features(os.path.join(spec.data_dir, "items"))
    feats = feats.to(device)
    n_train_t, n_all_t = load_target_counts(
        os.path.join(spec.data_dir, "items"), int(feats.text.shape[0])
    )
    valid_hist, valid_target = _load_examples(os.path.join(spec.data_dir, "valid"))
    mine = slice(comm.rank, None, comm.size)
    valid_hist, valid_target = valid_hist[mine].to(device), valid_target[mine].to(device)
    n_valid = comm.allreduce([float(valid_target.numel())], "sum")[0] if spec.validate else 0.0

    ckpt = load_checkpoint(spec.model_dir)
    model, opt = _fresh(spec, comm, device)
    state: dict[str, Any] = {
        "phase": PHASE_VALIDATE if n_valid > 0 else PHASE_FINAL,
        "epoch": 0,
        "history": [],
        "best_epoch": 0 if n_valid > 0 else spec.epochs,
        "best_metric": -1.0,
        "bad_epochs": 0,
    }
    resumed_from: str | None = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        state = ckpt["state"]
        resumed_from = f"{state['phase']}:{state['epoch']}"
    comm.broadcast_model(model)
    # Horovod's DistributedOptimizer is a new optimizer over the same parameters, with its own
    # state: the optimizer state is saved from and loaded into the wrapped one (``dopt``).
    dopt = comm.wrap_optimizer(opt, model)
    if ckpt is not None:
        dopt.load_state_dict(ckpt["optimizer"])

    seen: dict[str, list[int]] = {}
    train_seconds = 0.0
    train_samples = 0

    def checkpoint() -> None:
        if comm.rank == 0:
            _atomic_save(
                {"model": model.state_dict(), "optimizer": dopt.state_dict(), "state": state},
                Path(local_path(spec.model_dir)) / CHECKPOINT,
            )

    def run_epoch(phase: str, epoch: int, kf: ItemFeatures, known: torch.Tensor) -> float:
        nonlocal train_seconds, train_samples
        url = dataset_url(
            os.path.join(spec.data_dir, "train" if phase == PHASE_VALIDATE else "all")
        )
        rows = shard_rows(url, comm.rank, comm.size, "example_id")
        local_steps = math.ceil(rows / spec.batch_size)
        steps = int(comm.allreduce([float(local_steps)], "max")[0])
        it = shard_batches(
            url,
            comm.rank,
            comm.size,
            TRAIN_FIELDS,
            spec.batch_size,
            spec.seed,
            epoch,
            spec.reader_pool,
            spec.reader_workers,
            spec.shuffle_buffer,
        )
        # Seeded per (phase, epoch, rank): dropout and negatives replay exactly on resume.
        torch.manual_seed(_epoch_seed(spec.seed, phase, epoch, comm.rank))
        # Only items with training interactions are candidates: an item never seen as a
        # positive would otherwise be taught to score low, which is what cold items must not.
        pool = known.nonzero().squeeze(1)
        counts = n_train_t if phase == PHASE_VALIDATE else n_all_t
        prob = target_shares(counts).to(device) if spec.logq_correction else None
        model.train()
        loss_sum, weight_sum = 0.0, 0.0
        ids: list[int] = []
        t0 = time.perf_counter()
        for _ in range(steps):
            batch = next(it, None)
            padding = batch is None
            if batch is None:
                batch = _dummy_batch(spec.history_len)
            hist = torch.from_numpy(batch["history"].astype(np.int64)).to(device)
            target = torch.from_numpy(batch["target"].astype(np.int64)).to(device)
            weight = torch.from_numpy(batch["weight"].astype(np.float32)).to(device)
            negs = (
                pool[torch.randint(0, int(pool.shape[0]), (spec.negatives,), device=device)]
                if spec.negatives > 0 and not spec.full_softmax and pool.numel() > 0
                else None
            )
            dopt.zero_grad()
            loss = batch_loss(
                model,
                kf,
                hist,
                target,
                weight,
                negs,
                full_softmax=spec.full_softmax,
                candidates=known,
                target_prob=prob,
            )
            loss.backward()
            comm.sync_gradients(model)
            dopt.step()
            w = float(weight.sum())
            loss_sum += float(loss.detach()) * w
            weight_sum += w
            if not padding:
                train_samples += len(batch["example_id"])
                if spec.collect_ids:
                    ids.extend(int(i) for i in batch["example_id"])
        if next(it, None) is not None:  # cannot happen: steps >= this shard's batches
            raise RuntimeError("a shard yielded more batches than it counted")
        train_seconds += time.perf_counter() - t0
        if spec.collect_ids:
            seen[f"{phase}:{epoch}"] = ids
        tot = comm.allreduce([loss_sum, weight_sum], "sum")
        return tot[0] / max(tot[1], 1e-12)

    def maybe_crash(phase: str, epoch: int) -> None:
        if spec.crash_after == (phase, epoch):
            raise RuntimeError(f"injected failure after {phase} epoch {epoch}")

    if state["phase"] == PHASE_VALIDATE:
        known_v = known_train.to(device)
        kf = replace(feats, id_idx=torch.where(known_v, feats.id_idx, 0))
        while state["epoch"] < spec.epochs and state["bad_epochs"] < spec.patience:
            epoch = state["epoch"] + 1
            loss = run_epoch(PHASE_VALIDATE, epoch, kf, known_v)
            part = evaluate(model, kf, valid_hist, valid_target, spec.validation_k)
            ndcg, recall, n = comm.allreduce([part[0], part[1], float(part[2])], "sum")
            k = spec.validation_k
            metrics = {
                "phase": PHASE_VALIDATE,
                "epoch": epoch,
                "train_loss": loss,
                f"val_ndcg_at_{k}": ndcg / max(n, 1.0),
                f"val_recall_at_{k}": recall / max(n, 1.0),
            }
            state["history"].append(metrics)
            state["epoch"] = epoch
            score = metrics[f"val_ndcg_at_{k}"]
            if score > state["best_metric"]:
                state["best_metric"], state["best_epoch"], state["bad_epochs"] = score, epoch, 0
            else:
                state["bad_epochs"] += 1
            checkpoint()
            maybe_crash(PHASE_VALIDATE, epoch)
        # Phase 2 starts from a fresh model with a fresh optimizer.
        model, opt = _fresh(spec, comm, device)
        comm.broadcast_model(model)
        dopt = comm.wrap_optimizer(opt, model)
        state["phase"], state["epoch"] = PHASE_FINAL, 0
        checkpoint()

    known_f = known_all.to(device)
    kf = replace(feats, id_idx=torch.where(known_f, feats.id_idx, 0))
    target_epochs = max(1, int(state["best_epoch"]))
    while state["epoch"] < target_epochs:
        epoch = state["epoch"] + 1
        loss = run_epoch(PHASE_FINAL, epoch, kf, known_f)
        state["history"].append({"phase": PHASE_FINAL, "epoch": epoch, "train_loss": loss})
        state["epoch"] = epoch
        checkpoint()
        maybe_crash(PHASE_FINAL, epoch)

    digest = digest_of(model)
    if comm.rank == 0:
        out = Path(local_path(spec.model_dir))
        _atomic_save(model.state_dict(), out / MODEL_FILE)
        meta = {
            "shape": spec.shape.to_dict(),
            "best_epoch": state["best_epoch"],
            "best_metric": state["best_metric"],
            "history": state["history"],
            "num_proc": comm.size,
            "digest": digest,
            **spec.extra_meta,
        }
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        write_atomic(out / META_FILE, lambda fh: fh.write(text.encode("utf-8")))
    return {
        "rank": comm.rank,
        "size": comm.size,
        "digest": digest,
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "resumed_from": resumed_from,
        "samples_per_sec": train_samples / train_seconds if train_seconds > 0 else 0.0,
        "train_samples": train_samples,
        "seen_ids": seen,
    }


def _epoch_seed(seed: int, phase: str, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + (1 if phase == PHASE_FINAL else 0) * 10_007 + epoch * 101 + rank) % (
        2**31
    )
