"""What the train and recommend jobs do with the registry (Spark on one side, MLflow on the
other): publish a trained model, read a registered model's vectors, mark the served version."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from recspark import tables
from recspark.config import Config
from recspark.errors import ConfigError
from recspark.log import get_logger
from recspark.recommend.config import with_cold_choice
from recspark.recommend.transforms import item_catalog
from recspark.registry import models
from recspark.registry.scorer import ITEM_COLUMNS, Scorer, model_settings, write_files
from recspark.registry.store import store, store_errors
from recspark.schema import CATEGORY, ITEM_ID, MODEL_VERSION, TITLE, USER_ID, VECTOR
from recspark.train import dataset as ds

ITEM_VECTORS_SCHEMA = StructType(
    [
        StructField(ITEM_ID, StringType(), False),
        StructField(VECTOR, ArrayType(FloatType())),
        StructField(MODEL_VERSION, StringType(), False),
    ]
)

OWN_VECTORS_SCHEMA = StructType(
    [StructField(USER_ID, StringType(), False), StructField(VECTOR, ArrayType(FloatType()))]
)


def _log(msg: str) -> None:
    get_logger("mlflow").info("mlflow: %s", msg)


def _interactions(spark: SparkSession, cfg: Config, events: DataFrame) -> DataFrame:
    """silver/interactions (what recommend reads), else the interactions of ``events``."""
    if tables.exists(spark, tables.ref(cfg.warehouse, tables.SILVER_INTERACTIONS)):
        return tables.read(spark, cfg.warehouse, tables.SILVER_INTERACTIONS)
    return ds.interactions_from_events(
        events, cfg.ingest.event_weights, decay_half_life_days=cfg.ingest.decay_half_life_days
    )


def publish(
    spark: SparkSession,
    cfg: Config,
    *,
    model_dir: str,
    model_version: str,
    mlflow_run_id: str,
    item_vectors: DataFrame,
    items: DataFrame,
    events: DataFrame,
    input_versions: Mapping[str, int],
    towers: Sequence[str],
) -> models.ModelRef:
    """Log the trained model as a pyfunc into its training run and register it.

    Args:
        model_dir: the finished model folder (its ``meta.json`` has the user tower settings).
        item_vectors: ``item_id``, ``vector`` of this model version (as written to gold).
        items: silver/items (``item_id``; ``title`` and ``category`` when known).
        events: silver/events (interactions when silver/interactions is not there).
        input_versions: the Delta versions train read, per table.
        towers: the network's files, kept as artifacts.
    """
    from recspark.registry import pyfunc
    from recspark.train.artifacts import read_meta, user_vectors_path

    meta = read_meta(model_dir)
    own_path = user_vectors_path(model_dir)
    users = None if own_path is None else pd.read_parquet(own_path)
    for col in (TITLE, CATEGORY):
        if col not in items.columns:
            items = items.withColumn(col, F.lit(None).cast("string"))
    catalog = item_catalog(item_vectors, items, _interactions(spark, cfg, events))
    frame = cast(pd.DataFrame, catalog.select(*ITEM_COLUMNS).toPandas())
    settings = model_settings(
        model_version,
        int(meta["history_len"]),
        float(meta["shape"]["recency_half_life"]),
        meta["event_weights"],
        with_cold_choice(cfg.recommend, meta.get("cold_items")),
    )
    ids = sorted(str(i) for i in frame[ITEM_ID])
    example = [ids[:2], ids[2:3] or ids[:1]]
    work = Path(tempfile.mkdtemp(prefix="recspark-pyfunc-"))
    try:
        write_files(work / "files", frame, settings, users)
        pyfunc.save(work / "model", work / "files", towers, example)
        ref = models.register(
            store(cfg.mlflow, cfg.locations()),
            cfg.mlflow.registered_model,
            mlflow_run_id,
            str(work / "model"),
            model_version,
            recspark_run_id=cfg.run_id,
            input_versions=input_versions,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _log(f"registered models:/{ref.name}/{ref.version} (model version {model_version})")
    return ref


def registered_vectors(
    spark: SparkSession, cfg: Config, events: DataFrame
) -> tuple[models.ModelRef, DataFrame, DataFrame]:
    """The item and user vectors of the registered model ``recommend.model``.

    Item vectors come from the model's artifacts; user vectors are its user tower over
    ``events`` (silver/events), computed in Spark exactly as train computes gold/user_vectors
    (with the users' own vectors of a model that has them).

    Returns:
        (the version, item vectors, user vectors), both with ``model_version``.

    Raises:
        ConfigError: MLflow is switched off.
    """
    uri = str(cfg.recommend.model)
    if not cfg.mlflow.enabled:
        raise ConfigError(
            f"key 'recommend.model': {uri} needs the model registry, but mlflow.enabled is false"
        )
    s = store(cfg.mlflow, cfg.locations())
    ref = models.get(s, uri)
    where = models.download(s, ref)
    try:
        scorer = Scorer.from_files(where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    version = scorer.model_version
    vectors = scorer.index.vectors
    rows = [
        (item, [float(x) for x in vectors[i]], version) for i, item in enumerate(scorer.index.ids)
    ]
    iv = spark.createDataFrame(rows, ITEM_VECTORS_SCHEMA)
    st = scorer.settings
    weights = {str(k): float(v) for k, v in st["event_weights"].items()}
    inter = ds.interactions_from_events(events, weights)
    last = ds.last_interactions(inter, int(st["history_len"]))
    uv = ds.weighted_user_vectors(last, iv, float(st["recency_half_life"])).select(
        F.col(USER_ID).cast("string").alias(USER_ID), VECTOR
    )
    own = scorer.own_vectors_frame()
    if own is not None:
        uv = ds.add_own_vectors(uv, spark.createDataFrame(own, OWN_VECTORS_SCHEMA))
    uv = uv.withColumn(MODEL_VERSION, F.lit(version))
    _log(f"scoring with models:/{ref.name}/{ref.version} ({uri}, model version {version})")
    return ref, iv, uv


def mark_served(cfg: Config, model_version: str, ref: models.ModelRef | None) -> dict[str, Any]:
    """Point the serving alias at the version recommend scored with; returns what it did.

    ``ref`` is the registered version when recommend read it from the registry; otherwise the
    version is the one registered from model folder ``model_version``'s training run (none
    when it was trained with tracking off).
    """
    mc = cfg.mlflow
    if not mc.enabled:
        return {}
    s = store(mc, cfg.locations())
    if ref is None:
        from recspark.train.artifacts import read_meta

        try:
            meta = read_meta(cfg.locations().model_dir(model_version))
        except Exception:  # a model folder elsewhere, or gone: nothing to mark
            meta = {}
        run_id = meta.get("mlflow_run_id")
        if run_id:
            with store_errors(s, "finding the registered version"):
                ref = models.version_of_run(s.client(), mc.registered_model, str(run_id))
    if ref is None:
        _log(f"model version {model_version} is not registered: no '{mc.serving_alias}' alias set")
        return {}
    models.set_alias(s, ref.name, mc.serving_alias, ref.version)
    _log(f"alias '{mc.serving_alias}' -> models:/{ref.name}/{ref.version}")
    return {"registered_model": ref.name, "registered_version": ref.version}
