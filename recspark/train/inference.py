"""Vectors of a trained model: :func:`item_vectors` and :func:`user_vectors`, whose dot
product is the model's score."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from recspark.errors import ModelError, SchemaError
from recspark.schema import CATEGORY, EMBEDDING, ITEM_ID, USER_ID
from recspark.train import dataset as ds
from recspark.train.artifacts import (
    MODEL_FILE,
    fs_path,
    load_weights,
    read_meta,
    user_vectors_path,
)
from recspark.train.model import ModelShape

VECTORS_SCHEMA = StructType(
    [StructField(ITEM_ID, StringType(), False), StructField(ds.VECTOR, ArrayType(FloatType()))]
)

TowerFn = Callable[[Iterable[pd.DataFrame]], Iterable[pd.DataFrame]]


def _load_state(model_dir: str) -> tuple[dict[str, Any], bytes]:
    """The model's description and the bytes of its state dict, checked on the driver: the
    state must load with ``weights_only=True`` (a tampered file fails here, in one line)."""
    meta = read_meta(model_dir)
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
    _check_text_dim(item_embeddings, shape.text_dim)
    df = tower_inputs(items, item_embeddings, vocab, cats, shape.text_dim)
    state = spark.sparkContext.broadcast(blob)
    return df.mapInPandas(_item_tower(state, meta["shape"]), VECTORS_SCHEMA)


def _check_text_dim(item_embeddings: DataFrame, text_dim: int) -> None:
    wrong = item_embeddings.where(F.size(EMBEDDING) != text_dim).select(ITEM_ID).limit(1)
    bad = wrong.collect()
    if bad:
        raise SchemaError(
            f"item_embeddings: item {bad[0][0]!r} has an embedding size other than the model's "
            f"{text_dim}"
        )


def tower_inputs(
    items: DataFrame,
    item_embeddings: DataFrame,
    vocab: DataFrame,
    cats: DataFrame,
    text_dim: int,
) -> DataFrame:
    """The item tower's inputs of every item of ``items`` once.

    ``items``: ``item_id`` (``category`` optional); ``item_embeddings``: ``item_id``,
    ``embedding``; ``vocab``: ``item_id``, ``item_idx``, ``known_all`` (the model folder's
    ``data/items_vocab``); ``cats``: ``category``, ``cat_idx`` (``data/categories``).

    Returns:
        ``item_id``, ``embedding`` (zeros when missing), ``id_idx`` (0 for items the model did
        not train on) and ``cat_idx`` (0 for unknown categories).
    """
    cat = F.col(CATEGORY) if CATEGORY in items.columns else F.lit(None).cast("string")
    zeros = F.array_repeat(F.lit(0.0).cast("float"), text_dim)
    return (
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


def _item_tower(state: Any, shape_dict: dict[str, Any]) -> TowerFn:
    """The ``mapInPandas`` function that runs the item tower (weights in broadcast ``state``)."""

    def tower(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        import io

        import numpy as np
        import torch

        from recspark.train.model import ModelShape, TwoTower

        torch.set_num_threads(1)
        model = TwoTower(ModelShape(**shape_dict))
        model.load_weights(
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

    return tower


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
    with the model's recency weights, exactly as in training; a model with user vectors adds
    each known user's own.

    Returns:
        ``user_id`` (string), ``vector`` (array<float>).
    """
    meta = read_meta(model_dir)
    weights = {str(k): float(v) for k, v in meta["event_weights"].items()}
    cutoff = None if as_of is None else str(as_of)
    decay = meta.get("decay_half_life_days")
    inter = ds.interactions_from_events(
        events, weights, cutoff, decay_half_life_days=None if decay is None else float(decay)
    )
    last = ds.last_interactions(inter, int(meta["history_len"]))
    out = ds.weighted_user_vectors(last, item_vectors, float(meta["shape"]["recency_half_life"]))
    out = out.select(F.col(USER_ID).cast("string").alias(USER_ID), ds.VECTOR)
    own = user_vectors_path(model_dir)
    if own is not None:
        out = ds.add_own_vectors(out, spark.read.parquet(own))
    return out
