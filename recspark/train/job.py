"""``recspark train``: fit on silver/events; write gold/item_vectors and gold/user_vectors."""

from __future__ import annotations

import dataclasses
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.config import Config
from recspark.schema import ITEM_ID, MODEL_VERSION, VECTOR
from recspark.train.artifacts import towers
from recspark.train.inference import item_vectors, user_vectors
from recspark.train.plan import model_version
from recspark.train.trainer import TrainResult, fit

TRAIN_INPUTS = (tables.SILVER_EVENTS, tables.SILVER_ITEMS, tables.GOLD_ITEM_EMBEDDINGS)


def _input_versions(spark: SparkSession, warehouse: str, names: list[str]) -> dict[str, int]:
    return {name: tables.version(spark, tables.ref(warehouse, name)) for name in names}


def _model_settings(cfg: Config) -> dict[str, Any]:
    """What shapes a model besides its inputs: the train settings and the interactions'
    weighting (pure)."""
    weighting = {  # the interactions' weighting shapes the model as much as a train setting
        "event_weights": dict(cfg.ingest.event_weights),
        "decay_half_life_days": cfg.ingest.decay_half_life_days,
    }
    return {**dataclasses.asdict(cfg.train), **weighting}


def model_dir_of(
    spark: SparkSession,
    cfg: Config,
    *,
    folder: str = "",
    cut: dict[str, Any] | None = None,
    explicit: str | None = None,
) -> tuple[str, dict[str, int]]:
    """The model folder of the current inputs (:data:`TRAIN_INPUTS`) and settings, and the
    inputs' Delta versions.

    The version hashes the settings with each input's Delta table id and version, so another
    warehouse, or the same tables created again, gives another model.

    ``folder`` is a sub-folder of the models (``evaluate``); ``cut`` describes what part of
    the inputs the model learns from (evaluate's holdout), and counts in the version like a
    setting. The same command on the same inputs finds the same folder: a killed run resumes
    from its last checkpoint, a finished model is reused.
    """
    read_versions = _input_versions(spark, cfg.warehouse, list(TRAIN_INPUTS))
    settings = _model_settings(cfg) if cut is None else {**_model_settings(cfg), "cut": cut}
    # A version number says which commit of a table; the table's id says which table. Without
    # it, two warehouses of other data at the same versions (a first ingest is v0 in each)
    # named their models alike.
    inputs = {
        name: {"id": tables.table_id(spark, tables.ref(cfg.warehouse, name)), "version": v}
        for name, v in read_versions.items()
    }
    version = model_version(settings, cfg.seed, inputs, explicit)
    path = f"{folder}/{version}" if folder else version
    return cfg.locations().model_dir(path), read_versions


def _register(
    spark: SparkSession,
    cfg: Config,
    result: TrainResult,
    iv_saved: DataFrame,
    items: DataFrame,
    events: DataFrame,
    read_versions: dict[str, int],
) -> dict[str, Any]:
    """Register the model in MLflow (when tracked); the registered name and version."""
    if not (cfg.mlflow.enabled and result.mlflow_run_id):
        return {}
    from recspark.registry.serving import publish

    ref = publish(
        spark,
        cfg,
        model_dir=result.model_dir,
        model_version=result.model_version,
        mlflow_run_id=result.mlflow_run_id,
        item_vectors=iv_saved.select(ITEM_ID, VECTOR),
        items=items,
        events=events,
        input_versions=read_versions,
        towers=towers(result.model_dir),
    )
    return {"registered_model": ref.name, "registered_version": ref.version}


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Train (or resume, or reuse) the model of the current inputs and write its vectors.

    The model version is ``train.model_version`` or a hash of the train settings, the seed and
    the Delta ids and versions of the inputs: the same command on the same inputs resumes a
    killed run from its last checkpoint, and reuses a finished model.
    """
    wh = cfg.warehouse
    cfg = cfg.with_run_id()
    events = tables.read(spark, wh, tables.SILVER_EVENTS)
    items = tables.read(spark, wh, tables.SILVER_ITEMS)
    embeddings = tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
    model_dir, read_versions = model_dir_of(spark, cfg, explicit=cfg.train.model_version)
    result = fit(spark, cfg, events, items, embeddings, model_dir)
    iv = item_vectors(spark, result.model_dir, items, embeddings)
    tables.overwrite(
        iv.withColumn(MODEL_VERSION, F.lit(result.model_version)), wh, tables.GOLD_ITEM_VECTORS
    )
    iv_saved = tables.read(spark, wh, tables.GOLD_ITEM_VECTORS)
    uv = user_vectors(spark, result.model_dir, events, iv_saved)
    tables.overwrite(
        uv.withColumn(MODEL_VERSION, F.lit(result.model_version)), wh, tables.GOLD_USER_VECTORS
    )
    registered = _register(spark, cfg, result, iv_saved, items, events, read_versions)
    return {
        "stage": "train",
        "model_version": result.model_version,
        "model_dir": result.model_dir,
        "metrics": result.metrics,
        "launcher": cfg.train.launcher,
        # "<phase>:<epoch>" of the checkpoint a killed run was resumed from; "finished" when
        # the model was already trained; None when trained from scratch.
        "resumed_from": result.resumed_from,
        "mlflow_run_id": result.mlflow_run_id,
        **registered,
    }
