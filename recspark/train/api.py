"""The train stage's public API, used by ``job.py`` and by the recommend / evaluate stages.

* :func:`fit` builds the training data in Spark, trains the two-tower network with the
  configured launcher (early stopping on validation, then a final model on all interactions)
  and tracks the run in MLflow.
* :func:`item_vectors` / :func:`user_vectors` turn a trained model into vectors whose dot
  product is the model's score.

Model folder layout (``model_dir``, one per model version)::

    data/{train,valid,all}/   training examples (Parquet, read by Petastorm)
    data/items/               item-tower inputs per item index (Parquet)
    data/items_vocab/         item_id -> item_idx, known_all (Parquet)
    data/categories/          category -> cat_idx (Parquet)
    checkpoints/last.pt       the last epoch's checkpoint (resume)
    model.pt, meta.json       the final model and its description

A run works in ``<model_dir>.partial`` and renames it to ``model_dir`` once the model is
trained and tracked, so that ``model_dir`` only ever holds a finished model. A killed run
leaves the ``.partial`` folder, which the next run with the same model version resumes from
its last checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from recspark.config import Config, to_dict
from recspark.errors import ModelError, SchemaError
from recspark.log import get_logger
from recspark.registry.store import TAG_RUN_ID, store
from recspark.schema import CATEGORY, EMBEDDING, ITEM_ID, USER_ID
from recspark.storage import require_local
from recspark.train import dataset as ds
from recspark.train.launch import run_training
from recspark.train.loop import (
    META_FILE,
    MODEL_FILE,
    TrainSpec,
    checkpoint_path,
    load_checkpoint,
    load_weights,
    write_atomic,
)
from recspark.train.model import ModelShape, negatives_for
from recspark.train.plan import plan_data, plan_files, plan_launch
from recspark.train.reader import row_groups
from recspark.train.tracking import log_training

VECTORS_SCHEMA = StructType(
    [StructField(ITEM_ID, StringType(), False), StructField(ds.VECTOR, ArrayType(FloatType()))]
)
_READY = "_READY"
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`fit` produced."""

    model_version: str
    model_dir: str
    metrics: dict[str, float]
    # "<phase>:<epoch>" of the checkpoint this run resumed from; "finished" when the model was
    # already trained (reused); None for a run from scratch.
    resumed_from: str | None = None
    # The MLflow training run (None when tracking was off).
    mlflow_run_id: str | None = None


def fs_path(uri: str) -> str:
    """The filesystem path of model folder ``uri`` for torch, pyarrow and Petastorm.

    Checkpoints and Petastorm shards need storage every worker sees as files: a local or
    shared (NFS) path, ``file:``, ``dbfs:/`` (the ``/dbfs`` mount) or a Volume.
    """
    return require_local(uri, "model folders", "files")


def _read_meta(model_dir: str) -> dict[str, Any]:
    path = Path(fs_path(model_dir)) / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"{model_dir}: no trained model ({META_FILE} missing)") from e
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: unreadable {META_FILE}: {e}") from e
    return meta


def _result(model_dir: str, meta: dict[str, Any], resumed_from: str | None) -> TrainResult:
    return TrainResult(
        model_version=str(meta["model_version"]),
        model_dir=model_dir,
        metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
        resumed_from=resumed_from,
        mlflow_run_id=meta.get("mlflow_run_id"),
    )


def read_meta(model_dir: str) -> dict[str, Any]:
    """The ``meta.json`` of model folder ``model_dir`` (the user tower's settings, metrics,
    the MLflow run).

    Raises:
        ModelError: no trained model there, or an unreadable file.
    """
    return _read_meta(model_dir)


def towers(model_dir: str) -> list[str]:
    """The trained network's files in model folder ``model_dir`` (weights and description)."""
    root = fs_path(model_dir)
    return [os.path.join(root, MODEL_FILE), os.path.join(root, META_FILE)]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: readers (and a rerun after a kill)
    see the old content or the new, never part of it."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def work_dir(root: str) -> str:
    """The folder a run of model folder ``root`` works in until the model is finished."""
    return root.rstrip("/") + PARTIAL_SUFFIX


def _is_finished(root: Path) -> bool:
    return (root / MODEL_FILE).exists() and (root / META_FILE).exists()


def _prepare_work_dir(root: Path, work: Path) -> None:
    """Make ``work`` the folder to train in; ``root`` must not exist afterwards.

    A ``root`` without a finished model (left by a version that trained in place) is moved to
    ``work`` so that its checkpoint is resumed.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        if work.exists():
            shutil.rmtree(root)  # the .partial folder is the newer run: keep it
        else:
            os.replace(root, work)
    work.mkdir(parents=True, exist_ok=True)


def _publish(work: Path, root: Path) -> None:
    """Rename the finished ``work`` folder to ``root`` (one atomic rename)."""
    try:
        os.replace(work, root)
    except OSError as e:
        raise ModelError(f"cannot move the finished model {work} to {root}: {e.strerror}") from e


def _text_dim(item_embeddings: DataFrame) -> int:
    dims = [
        int(r[0]) for r in item_embeddings.select(F.size(EMBEDDING)).distinct().limit(3).collect()
    ]
    if len(dims) != 1 or dims[0] < 1:
        raise SchemaError(
            f"item_embeddings: expected one embedding size for every item, found {sorted(dims)}"
        )
    return dims[0]


def _build_data(
    spark: SparkSession,
    cfg: Config,
    events: DataFrame,
    items: DataFrame,
    item_embeddings: DataFrame,
    data_dir: str,
) -> dict[str, Any]:
    """Write the training data sets under ``data_dir`` (once: reused on resume)."""
    info_path = Path(data_dir) / _READY
    if info_path.exists():
        info: dict[str, Any] = json.loads(info_path.read_text())
        return info
    tc = cfg.train
    text_dim = _text_dim(item_embeddings)
    inter = ds.interactions_from_events(
        events,
        cfg.ingest.event_weights,
        decay_half_life_days=cfg.ingest.decay_half_life_days,
    )
    ds.item_index(items, item_embeddings, inter).write.mode("overwrite").parquet(
        f"{data_dir}/index"
    )
    index = spark.read.parquet(f"{data_dir}/index")
    cats = ds.category_vocabulary(items)
    cats.write.mode("overwrite").parquet(f"{data_dir}/categories")
    cats = spark.read.parquet(f"{data_dir}/categories")
    marked = ds.mark_validation(
        ds.sequence_examples(inter, index, tc.history_len), tc.validation_days
    )
    marked.write.mode("overwrite").parquet(f"{data_dir}/examples")
    ex = spark.read.parquet(f"{data_dir}/examples")
    counts = {
        str(r[ds.IS_VALID]): int(r["n"])
        for r in ex.groupBy(ds.IS_VALID).agg(F.count("*").alias("n")).collect()
    }
    rows = {
        "train": counts.get("False", 0),
        "valid": counts.get("True", 0),
        "all": counts.get("False", 0) + counts.get("True", 0),
    }
    fields = [ds.EXAMPLE_ID, ds.TARGET, ds.HISTORY, ds.WEIGHT]
    train = ex.where(~F.col(ds.IS_VALID))
    for name, part in (("train", train), ("valid", ex.where(F.col(ds.IS_VALID))), ("all", ex)):
        # data_files files of near-equal size: one row group each, dealt out to the workers.
        partitions, per_file = plan_files(rows[name], tc.data_files)
        part.select(*fields).repartition(partitions).write.mode("overwrite").option(
            "maxRecordsPerFile", per_file
        ).parquet(f"{data_dir}/{name}")
    feats = ds.item_features(index, cats, train, ex, text_dim)
    feats.coalesce(1).write.mode("overwrite").parquet(f"{data_dir}/items")
    vocab = spark.read.parquet(f"{data_dir}/items").select(ds.ITEM_IDX, ds.KNOWN_ALL)
    index.select(ITEM_ID, ds.ITEM_IDX).join(vocab, ds.ITEM_IDX).coalesce(1).write.mode(
        "overwrite"
    ).parquet(f"{data_dir}/items_vocab")
    info = {
        "text_dim": text_dim,
        "n_items": int(index.count()),
        "n_categories": int(cats.count()),
        "train_examples": rows["train"],
        "valid_examples": rows["valid"],
    }
    write_text_atomic(info_path, json.dumps(info))
    return info


def fit(
    spark: SparkSession,
    cfg: Config,
    events: DataFrame,
    items: DataFrame,
    item_embeddings: DataFrame,
    model_dir: str,
) -> TrainResult:
    """Train the two-tower model into ``model_dir`` (its last folder name is the version).

    ``events``: ``user_id``, ``item_id``, ``event_type``, ``event_ts`` (silver/events);
    ``items``: ``item_id``, ``category``; ``item_embeddings``: ``item_id``, ``embedding``.
    Works in ``<model_dir>.partial`` and renames it to ``model_dir`` when done: resumes from
    the last checkpoint there when an earlier run was killed, and returns the finished model's
    result at once when ``model_dir`` exists (``TrainResult.resumed_from`` says which). The
    final model has learned from every interaction (the validation period included).
    """
    tc = cfg.train
    root = fs_path(model_dir)
    version = Path(root).name
    if _is_finished(Path(root)):
        done = _read_meta(model_dir)
        if "metrics" in done:  # finished and tracked
            return _result(model_dir, done, "finished")
    work = work_dir(root)
    _prepare_work_dir(Path(root), Path(work))
    # A corrupt checkpoint fails here, on the driver, with one line naming it.
    ckpt = load_checkpoint(work)
    resumed_from = None
    if ckpt is not None:
        resumed_from = f"{ckpt['state']['phase']}:{ckpt['state']['epoch']}"
        get_logger("train").info(
            "train: resuming %s from checkpoint %s (%s)",
            version,
            checkpoint_path(work),
            resumed_from,
        )
    del ckpt
    data_dir = os.path.join(work, "data")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    info = _build_data(spark, cfg, events, items, item_embeddings, data_dir)
    data = plan_data(
        tc.num_proc,
        train_groups=row_groups(os.path.join(data_dir, "train")),
        all_groups=row_groups(os.path.join(data_dir, "all")),
        train_rows=int(info["train_examples"]),
        valid_rows=int(info["valid_examples"]),
    )
    for note in data.notes:
        get_logger("train").info("train: %s", note)
    sc = spark.sparkContext
    plan = plan_launch(
        tc,
        slots=sc.defaultParallelism,
        cores=os.cpu_count() or 1,
        master=sc.master,
        max_proc=data.workers,
    )
    shape = ModelShape(
        text_dim=int(info["text_dim"]),
        n_items=int(info["n_items"]),
        n_categories=int(info["n_categories"]),
        dim=tc.dim,
        item_id_dropout=tc.item_id_dropout,
        recency_half_life=tc.recency_half_life,
        temperature=tc.temperature,
    )
    spec = TrainSpec(
        data_dir=data_dir,
        model_dir=work,
        shape=shape,
        epochs=tc.epochs,
        patience=tc.patience,
        batch_size=tc.batch_size,
        learning_rate=plan.learning_rate,
        history_len=tc.history_len,
        weight_decay=tc.weight_decay,
        validation_k=tc.validation_k,
        negatives=(
            tc.negatives
            if tc.negatives is not None
            else negatives_for(
                int(info["n_items"]), tc.negatives_fraction, tc.negatives_min, tc.negatives_max
            )
        ),
        full_softmax=int(info["n_items"]) <= tc.full_softmax_max_items,
        logq_correction=tc.logq_correction,
        seed=cfg.seed,
        reader_pool=tc.reader_pool,
        reader_workers=tc.reader_workers,
        shuffle_buffer=tc.shuffle_buffer,
        torch_threads=plan.torch_threads,
        use_gpu=plan.use_gpu,
        validate=data.validate,
        extra_meta={
            "model_version": version,
            "history_len": tc.history_len,
            "event_weights": dict(cfg.ingest.event_weights),
            "decay_half_life_days": cfg.ingest.decay_half_life_days,
            "data": info,
            "plan": plan.to_dict(),
        },
    )
    summaries = run_training(spark, spec, plan, timeout=tc.start_timeout)
    meta = _read_meta(work)
    k = tc.validation_k
    best = [
        h for h in meta["history"] if h["phase"] == "validate" and h["epoch"] == meta["best_epoch"]
    ]
    final = [h for h in meta["history"] if h["phase"] == "final"]
    metrics: dict[str, float] = {
        "best_epoch": float(meta["best_epoch"]),
        "train_examples": float(info["train_examples"]),
        "valid_examples": float(info["valid_examples"]),
        # Summed over ranks (TorchDistributor returns rank 0's summary only: scaled up).
        "samples_per_sec": float(sum(s["samples_per_sec"] for s in summaries))
        * (plan.num_proc / len(summaries)),
    }
    if best:
        metrics[f"val_ndcg_at_{k}"] = float(best[0][f"val_ndcg_at_{k}"])
        metrics[f"val_recall_at_{k}"] = float(best[0][f"val_recall_at_{k}"])
    if final:
        metrics["final_train_loss"] = float(final[-1]["train_loss"])
    run_id = None
    if cfg.mlflow.enabled:
        params = {f"train.{k2}": v for k2, v in to_dict(tc).items()}
        params.update({"seed": cfg.seed, "num_proc": plan.num_proc, "model_version": version})
        tags = {TAG_RUN_ID: cfg.run_id} if cfg.run_id else {}
        run_id = log_training(
            store(cfg.mlflow, cfg.locations()),
            version,
            params,
            meta["history"],
            metrics,
            [os.path.join(work, MODEL_FILE), os.path.join(work, META_FILE)],
            tags=tags,
        )
    meta["metrics"] = metrics
    meta["mlflow_run_id"] = run_id
    meta["resumed_from"] = resumed_from
    text = json.dumps(meta, indent=2, sort_keys=True, default=str)
    write_text_atomic(Path(work) / META_FILE, text)
    _publish(Path(work), Path(root))
    return _result(model_dir, meta, resumed_from)


def _load_state(model_dir: str) -> tuple[dict[str, Any], bytes]:
    """The model's description and the bytes of its state dict, checked on the driver: the
    state must load with ``weights_only=True`` (a tampered file fails here, in one line)."""
    meta = _read_meta(model_dir)
    path = Path(fs_path(model_dir)) / MODEL_FILE
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{model_dir}: unreadable {MODEL_FILE}: {e}") from e
    state = load_weights(io.BytesIO(blob), f"model file {path}", "train the model again")
    if not isinstance(state, dict):
        raise ModelError(
            f"model file {path} is not a state dict (found {type(state).__name__}); "
            "train the model again"
        )
    return meta, blob


def item_vectors(
    spark: SparkSession, model_dir: str, items: DataFrame, item_embeddings: DataFrame
) -> DataFrame:
    """The item-tower vector of every item of ``items`` (cold items from text and category).

    ``items``: ``item_id`` (and ``category`` when known); ``item_embeddings``: ``item_id``,
    ``embedding`` of the model's text size (items without one get zeros).

    Returns:
        ``item_id`` (string), ``vector`` (array<float>).
    """
    meta, blob = _load_state(model_dir)
    shape = ModelShape(**meta["shape"])
    data_dir = os.path.join(fs_path(model_dir), "data")
    vocab = spark.read.parquet(f"{data_dir}/items_vocab")
    cats = spark.read.parquet(f"{data_dir}/categories")
    wrong = item_embeddings.where(F.size(EMBEDDING) != shape.text_dim).select(ITEM_ID).limit(1)
    bad = wrong.collect()
    if bad:
        raise SchemaError(
            f"item_embeddings: item {bad[0][0]!r} has an embedding size other than the model's "
            f"{shape.text_dim}"
        )
    cat = F.col(CATEGORY) if CATEGORY in items.columns else F.lit(None).cast("string")
    zeros = F.array_repeat(F.lit(0.0).cast("float"), shape.text_dim)
    df = (
        items.select(ITEM_ID, cat.alias(CATEGORY))
        .dropDuplicates([ITEM_ID])
        .join(item_embeddings.select(ITEM_ID, EMBEDDING).dropDuplicates([ITEM_ID]), ITEM_ID, "left")
        .join(vocab, ITEM_ID, "left")
        .join(F.broadcast(cats), CATEGORY, "left")
        .select(
            ITEM_ID,
            F.coalesce(F.col(EMBEDDING).cast(ArrayType(FloatType())), zeros).alias(EMBEDDING),
            F.when(F.col(ds.KNOWN_ALL), F.col(ds.ITEM_IDX) + 1).otherwise(0).alias(ds.ID_IDX),
            F.coalesce(F.col(ds.CAT_IDX), F.lit(0)).alias(ds.CAT_IDX),
        )
    )
    state = spark.sparkContext.broadcast(blob)
    shape_dict = meta["shape"]

    def tower(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        import io

        import numpy as np
        import torch

        from recspark.train.model import ModelShape, TwoTower

        torch.set_num_threads(1)
        model = TwoTower(ModelShape(**shape_dict))
        model.load_state_dict(
            torch.load(io.BytesIO(state.value), map_location="cpu", weights_only=True)
        )
        model.eval()
        for pdf in batches:
            if pdf.empty:
                continue
            text = torch.from_numpy(np.stack(pdf[EMBEDDING].to_numpy()).astype(np.float32))
            ids = torch.from_numpy(pdf[ds.ID_IDX].to_numpy().astype(np.int64))
            cats_ = torch.from_numpy(pdf[ds.CAT_IDX].to_numpy().astype(np.int64))
            with torch.no_grad():
                vec = model.item_tower(text, ids, cats_).numpy()
            yield pd.DataFrame({ITEM_ID: pdf[ITEM_ID], ds.VECTOR: list(vec)})

    return df.mapInPandas(tower, VECTORS_SCHEMA)


def user_vectors(
    spark: SparkSession,
    model_dir: str,
    events: DataFrame,
    item_vectors: DataFrame,
    as_of: Any = None,
) -> DataFrame:
    """The user-tower vector of every user with a (positively weighted) event before ``as_of``.

    ``events``: ``user_id``, ``item_id``, ``event_type``, ``event_ts``; ``item_vectors``: the
    output of :func:`item_vectors`. The user's newest ``history_len`` interactions are averaged
    with the model's recency weights, exactly as in training.

    Returns:
        ``user_id`` (string), ``vector`` (array<float>).
    """
    meta = _read_meta(model_dir)
    weights = {str(k): float(v) for k, v in meta["event_weights"].items()}
    cutoff = None if as_of is None else str(as_of)
    decay = meta.get("decay_half_life_days")
    inter = ds.interactions_from_events(
        events, weights, cutoff, decay_half_life_days=None if decay is None else float(decay)
    )
    last = ds.last_interactions(inter, int(meta["history_len"]))
    out = ds.weighted_user_vectors(last, item_vectors, float(meta["shape"]["recency_half_life"]))
    return out.select(F.col(USER_ID).cast("string").alias(USER_ID), ds.VECTOR)
