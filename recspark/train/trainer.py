"""``fit``: train the two-tower model of a configuration into its model folder.

:func:`fit` writes the training data in Spark (:func:`build_data`), plans the run from the
config, the data and the cluster (pure functions), launches the workers of
:mod:`recspark.train.loop` (:mod:`recspark.train.launch`), then records the run (MLflow, the
model's ``meta.json``) and publishes the finished model folder (see
:mod:`recspark.train.artifacts` for its layout).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark.config import Config, to_dict
from recspark.errors import SchemaError
from recspark.log import get_logger
from recspark.registry.store import TAG_RUN_ID, store
from recspark.schema import EMBEDDING, ITEM_ID, USER_ID
from recspark.train import dataset as ds
from recspark.train.artifacts import (
    READY,
    USERS_VOCAB,
    checkpoint_path,
    fs_path,
    is_finished,
    load_checkpoint,
    prepare_work_dir,
    publish,
    read_meta,
    towers,
    work_dir,
    write_meta,
    write_text_atomic,
)
from recspark.train.config import TrainConfig
from recspark.train.launch import run_training
from recspark.train.loop import BAG, TrainSpec
from recspark.train.model import ModelShape, negatives_for
from recspark.train.plan import (
    DataPlan,
    LaunchPlan,
    plan_data,
    plan_files,
    plan_launch,
    scaled_learning_rate,
)
from recspark.train.reader import row_groups
from recspark.train.tracking import log_training


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
    # What the validation period said of items without training interactions (see
    # loop.cold_choice); None without a validation phase or for a model trained before it.
    cold_items: dict[str, Any] | None = None


def _result(model_dir: str, meta: dict[str, Any], resumed_from: str | None) -> TrainResult:
    return TrainResult(
        model_version=str(meta["model_version"]),
        model_dir=model_dir,
        metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
        resumed_from=resumed_from,
        mlflow_run_id=meta.get("mlflow_run_id"),
        cold_items=meta.get("cold_items"),
    )


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
    root = fs_path(model_dir)
    version = Path(root).name
    if is_finished(Path(root)):
        done = read_meta(model_dir)
        if "metrics" in done:  # finished and tracked
            return _result(model_dir, done, "finished")
    work = work_dir(root)
    prepare_work_dir(Path(root), Path(work))
    resumed_from = _resume_point(work, version)
    data_dir = os.path.join(work, "data")
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    info = build_data(spark, cfg, events, items, item_embeddings, data_dir)
    spec, plan = _plan(spark, cfg, info, data_dir, work, version)
    summaries = run_training(spark, spec, plan, timeout=cfg.train.start_timeout)
    meta = read_meta(work)
    metrics = training_metrics(meta, info, summaries, plan.num_proc, cfg.train.validation_k)
    meta = record(cfg, version, work, meta, metrics, plan.num_proc, resumed_from)
    publish(Path(work), Path(root))
    return _result(model_dir, meta, resumed_from)


def _resume_point(work: str, version: str) -> str | None:
    """``<phase>:<epoch>`` of the checkpoint in ``work``, logged, or None without one.

    A corrupt checkpoint fails here, on the driver, with one line naming it."""
    ckpt = load_checkpoint(work)
    if ckpt is None:
        return None
    resumed_from = f"{ckpt['state']['phase']}:{ckpt['state']['epoch']}"
    get_logger("train").info(
        "train: resuming %s from checkpoint %s (%s)", version, checkpoint_path(work), resumed_from
    )
    return resumed_from


# --------------------------------------------------------------------------- data


def build_data(
    spark: SparkSession,
    cfg: Config,
    events: DataFrame,
    items: DataFrame,
    item_embeddings: DataFrame,
    data_dir: str,
) -> dict[str, Any]:
    """Write the training data sets under ``data_dir`` (once: reused on resume); their sizes."""
    info_path = Path(data_dir) / READY
    if info_path.exists():
        done: dict[str, Any] = json.loads(info_path.read_text())
        return done
    text_dim = _text_dim(item_embeddings)
    index, cats, ex = _write_examples(spark, cfg, events, items, item_embeddings, data_dir)
    rows = _example_counts(ex)
    _write_example_sets(ex, rows, cfg.train, cfg.seed, data_dir)
    _write_item_tables(spark, index, cats, ex, text_dim, data_dir)
    info = {
        "text_dim": text_dim,
        "n_items": int(index.count()),
        "n_categories": int(cats.count()),
        "n_users": int(spark.read.parquet(f"{data_dir}/{USERS_VOCAB}").count()),
        "train_examples": rows["train"],
        "valid_examples": rows["valid"],
    }
    write_text_atomic(info_path, json.dumps(info))
    return info


def _text_dim(item_embeddings: DataFrame) -> int:
    dims = [
        int(r[0]) for r in item_embeddings.select(F.size(EMBEDDING)).distinct().limit(3).collect()
    ]
    if len(dims) != 1 or dims[0] < 1:
        raise SchemaError(
            f"item_embeddings: expected one embedding size for every item, found {sorted(dims)}"
        )
    return dims[0]


def _write_examples(
    spark: SparkSession,
    cfg: Config,
    events: DataFrame,
    items: DataFrame,
    item_embeddings: DataFrame,
    data_dir: str,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Write the item index, the category vocabulary, the user index (``users_vocab``) and the
    examples (marked as validation or not, with their ``user_idx``); index, vocabulary and
    examples as read back."""
    inter = ds.interactions_from_events(
        events,
        cfg.ingest.event_weights,
        decay_half_life_days=cfg.ingest.decay_half_life_days,
    )
    ds.item_index(items, item_embeddings, inter).write.mode("overwrite").parquet(
        f"{data_dir}/index"
    )
    index = spark.read.parquet(f"{data_dir}/index")
    ds.category_vocabulary(items).write.mode("overwrite").parquet(f"{data_dir}/categories")
    cats = spark.read.parquet(f"{data_dir}/categories")
    ds.user_index(inter).write.mode("overwrite").parquet(f"{data_dir}/{USERS_VOCAB}")
    users = spark.read.parquet(f"{data_dir}/{USERS_VOCAB}")
    marked = ds.mark_validation(
        ds.sequence_examples(inter, index, cfg.train.history_len), cfg.train.validation_days
    )
    marked.join(users, USER_ID).write.mode("overwrite").parquet(f"{data_dir}/examples")
    return index, cats, spark.read.parquet(f"{data_dir}/examples")


def _example_counts(ex: DataFrame) -> dict[str, int]:
    """The rows of the ``train``, ``valid`` and ``all`` example sets."""
    counts = {
        str(r[ds.IS_VALID]): int(r["n"])
        for r in ex.groupBy(ds.IS_VALID).agg(F.count("*").alias("n")).collect()
    }
    return {
        "train": counts.get("False", 0),
        "valid": counts.get("True", 0),
        "all": counts.get("False", 0) + counts.get("True", 0),
    }


def _write_example_sets(
    ex: DataFrame, rows: dict[str, int], tc: TrainConfig, seed: int, data_dir: str
) -> None:
    """Write ``train``, ``valid`` and ``all`` for Petastorm: ``tc.data_files`` files of
    near-equal size (more when one would hold over ``tc.data_file_rows`` rows), one row group
    each, dealt out to the workers. The two training sets carry
    their order-free contexts, each drawn from its own examples (no validation-period item in
    a ``train`` context)."""
    fields = [ds.EXAMPLE_ID, ds.USER_IDX, ds.TARGET, ds.HISTORY, ds.WEIGHT]
    train = ex.where(~F.col(ds.IS_VALID))
    sets = (
        ("train", ds.bag_contexts(train, tc.history_len, seed=seed), [*fields, ds.CONTEXT]),
        ("valid", ex.where(F.col(ds.IS_VALID)), fields),
        ("all", ds.bag_contexts(ex, tc.history_len, seed=seed), [*fields, ds.CONTEXT]),
    )
    for name, part, columns in sets:
        partitions, per_file = plan_files(rows[name], tc.data_files, tc.data_file_rows)
        part.select(*columns).repartition(partitions).write.mode("overwrite").option(
            "maxRecordsPerFile", per_file
        ).parquet(f"{data_dir}/{name}")


def _write_item_tables(
    spark: SparkSession,
    index: DataFrame,
    cats: DataFrame,
    ex: DataFrame,
    text_dim: int,
    data_dir: str,
) -> None:
    """Write the item-tower inputs (``items``) and the item vocabulary (``items_vocab``)."""
    train = ex.where(~F.col(ds.IS_VALID))
    feats = ds.item_features(index, cats, train, ex, text_dim)
    feats.coalesce(1).write.mode("overwrite").parquet(f"{data_dir}/items")
    vocab = spark.read.parquet(f"{data_dir}/items").select(ds.ITEM_IDX, ds.KNOWN_ALL)
    index.select(ITEM_ID, ds.ITEM_IDX).join(vocab, ds.ITEM_IDX).coalesce(1).write.mode(
        "overwrite"
    ).parquet(f"{data_dir}/items_vocab")


# --------------------------------------------------------------------------- planning


def _plan(
    spark: SparkSession,
    cfg: Config,
    info: dict[str, Any],
    data_dir: str,
    work: str,
    version: str,
) -> tuple[TrainSpec, LaunchPlan]:
    """Plan the run from the written data and the cluster; the notes of the data plan are
    logged."""
    tc = cfg.train
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
    return train_spec(cfg, info, data, plan, data_dir, work, version), plan


def model_shape(tc: TrainConfig, info: dict[str, Any]) -> ModelShape:
    """The network's shape: sizes from the written data (``info``), the rest from config."""
    return ModelShape(
        text_dim=int(info["text_dim"]),
        n_items=int(info["n_items"]),
        n_categories=int(info["n_categories"]),
        dim=tc.dim,
        item_id_dropout=tc.item_id_dropout,
        recency_half_life=tc.recency_half_life,
        temperature=tc.temperature,
        learn_recency=tc.learn_recency,
        # Data written before users were numbered has no user_idx: no user vectors then.
        n_users=int(info.get("n_users", 0)) if tc.user_embedding != "off" else 0,
    )


def train_spec(
    cfg: Config,
    info: dict[str, Any],
    data: DataPlan,
    plan: LaunchPlan,
    data_dir: str,
    work: str,
    version: str,
) -> TrainSpec:
    """What every worker gets: the data in ``data_dir`` (of sizes ``info``), the run's folder
    ``work``, the model ``version``, the settings and the plans."""
    tc = cfg.train
    n_items = int(info["n_items"])
    negatives = (
        tc.negatives
        if tc.negatives is not None
        else negatives_for(n_items, tc.negatives_fraction, tc.negatives_min, tc.negatives_max)
    )
    return TrainSpec(
        data_dir=data_dir,
        model_dir=work,
        shape=model_shape(tc, info),
        epochs=tc.epochs,
        patience=tc.patience,
        batch_size=tc.batch_size,
        learning_rate=plan.learning_rate,
        history_len=tc.history_len,
        weight_decay=tc.weight_decay,
        recency_learning_rate=tc.recency_learning_rate,
        context=tc.context,
        user_embedding=tc.user_embedding,
        user_learning_rate=scaled_learning_rate(tc.user_learning_rate, plan.num_proc),
        validation_k=tc.validation_k,
        negatives=negatives,
        full_softmax=n_items <= tc.full_softmax_max_items,
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


# --------------------------------------------------------------------------- recording


def training_metrics(
    meta: dict[str, Any],
    info: dict[str, Any],
    summaries: Sequence[dict[str, Any]],
    num_proc: int,
    k: int,
) -> dict[str, float]:
    """The run's metrics: the best validation epoch's, the last final epoch's loss, the data
    sizes and the throughput summed over ranks (TorchDistributor returns rank 0's summary
    only: scaled up to ``num_proc``)."""
    history = meta["history"]
    best = [h for h in history if h["phase"] == "validate" and h["epoch"] == meta["best_epoch"]]
    final = [h for h in history if h["phase"] == "final"]
    metrics: dict[str, float] = {
        "best_epoch": float(meta["best_epoch"]),
        "train_examples": float(info["train_examples"]),
        "valid_examples": float(info["valid_examples"]),
        "samples_per_sec": float(sum(s["samples_per_sec"] for s in summaries))
        * (num_proc / len(summaries)),
        "recency_half_life": float(meta["shape"]["recency_half_life"]),
        # 1 when an epoch of the final model trained on order-free contexts (from the epochs'
        # records: the decision after the first epoch trains nothing when no epoch follows).
        "bag_context": float(any(h.get("context") == BAG for h in final)),
    }
    if best:
        metrics[f"val_ndcg_at_{k}"] = float(best[0][f"val_ndcg_at_{k}"])
        metrics[f"val_recall_at_{k}"] = float(best[0][f"val_recall_at_{k}"])
    if final:
        metrics["final_train_loss"] = float(final[-1]["train_loss"])
    return metrics


def record(
    cfg: Config,
    version: str,
    work: str,
    meta: dict[str, Any],
    metrics: dict[str, float],
    num_proc: int,
    resumed_from: str | None,
) -> dict[str, Any]:
    """Track the run in MLflow (when enabled) and add the metrics, the MLflow run and the
    resume point to the ``meta.json`` in ``work``; the updated description."""
    run_id = None
    if cfg.mlflow.enabled:
        tc = cfg.train
        params: dict[str, Any] = {f"train.{k}": v for k, v in to_dict(tc).items()}
        params.update({"seed": cfg.seed, "num_proc": num_proc, "model_version": version})
        tags = {TAG_RUN_ID: cfg.run_id} if cfg.run_id else {}
        run_id = log_training(
            store(cfg.mlflow, cfg.locations()),
            version,
            params,
            meta["history"],
            metrics,
            towers(work),
            tags=tags,
        )
    meta = {**meta, "metrics": metrics, "mlflow_run_id": run_id, "resumed_from": resumed_from}
    write_meta(Path(work), meta)
    return meta
