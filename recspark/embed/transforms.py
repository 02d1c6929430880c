"""Pure transforms of the embed stage: DataFrames and typed settings in, DataFrame out.

The encoder runs inside ``mapInPandas``: each Python worker loads tokenizer and model once
(``recspark.embed.model.cached_encoder``, a per-process cache that survives across tasks while
Spark reuses the worker) and encodes every Arrow batch it is handed. User vectors are computed
in the JVM (``Summarizer`` weighted mean + higher-order functions), with no Python UDF.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pandas as pd
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from recspark.embed.model import EncodeSettings
from recspark.schema import (
    EMBEDDING,
    ITEM_ID,
    MODEL_NAME,
    TEXT,
    TEXT_HASH,
    USER_ID,
    WEIGHT,
    require_columns,
)


def item_embeddings_schema(
    *,
    item_col: str = ITEM_ID,
    embedding_col: str = EMBEDDING,
    model_col: str = MODEL_NAME,
    hash_col: str = TEXT_HASH,
) -> StructType:
    """``ITEM_EMBEDDINGS_SCHEMA`` with the given column names."""
    return StructType(
        [
            StructField(item_col, StringType(), False),
            StructField(embedding_col, ArrayType(FloatType(), False), False),
            StructField(model_col, StringType(), False),
            StructField(hash_col, StringType(), False),
        ]
    )


def prepare_items(
    items: DataFrame,
    *,
    item_col: str = ITEM_ID,
    text_col: str = TEXT,
    hash_col: str = TEXT_HASH,
) -> DataFrame:
    """One row per item with a non-null text and text hash, ready to embed.

    ``silver/items`` should already be clean; this defends against what slips through:
    rows without an item id are dropped, a null text is the empty text, a null hash is the
    SHA-256 of the text, and of several rows with one item id the one with the smallest
    ``(text_hash, text)`` is kept (a defined, order-independent choice).

    Args:
        items: needs ``item_col``, ``text_col`` and ``hash_col``; other columns are dropped.

    Returns:
        ``item_col``, ``text_col``, ``hash_col``; ``item_col`` unique.
    """
    require_columns(items.columns, [item_col, text_col, hash_col], "items")
    text = F.coalesce(F.col(text_col), F.lit(""))
    cleaned = items.where(F.col(item_col).isNotNull()).select(
        F.col(item_col).alias(item_col),
        F.coalesce(F.col(hash_col), F.sha2(text, 256)).alias(hash_col),
        text.alias(text_col),
    )
    picked = cleaned.groupBy(item_col).agg(
        F.min(F.struct(F.col(hash_col), F.col(text_col))).alias("_pick")
    )
    return picked.select(
        F.col(item_col),
        F.col(f"_pick.{text_col}").alias(text_col),
        F.col(f"_pick.{hash_col}").alias(hash_col),
    )


def items_to_embed(
    items: DataFrame,
    existing_embeddings: DataFrame | None,
    model_name: str,
    *,
    item_col: str = ITEM_ID,
    hash_col: str = TEXT_HASH,
    model_col: str = MODEL_NAME,
) -> DataFrame:
    """The items whose embedding is missing or stale.

    An item needs embedding when no existing row has its ``item_col`` with the same
    ``hash_col`` *and* ``model_col == model_name``: new items, changed texts and items
    embedded with another model (or other pooling, max length, normalisation).

    Args:
        items: needs ``item_col`` and ``hash_col`` (e.g. the output of ``prepare_items``).
        existing_embeddings: the current ``gold/item_embeddings`` (``item_col``,
            ``hash_col``, ``model_col``), or ``None`` when there is none yet.
        model_name: the name of the model about to be used.

    Returns:
        The rows of ``items`` to embed, with ``items``' columns.
    """
    if existing_embeddings is None:
        return items
    require_columns(
        existing_embeddings.columns, [item_col, hash_col, model_col], "existing item embeddings"
    )
    current = (
        existing_embeddings.where(F.col(model_col) == F.lit(model_name))
        .select(item_col, hash_col)
        .dropDuplicates([item_col, hash_col])
    )
    return items.join(current, on=[item_col, hash_col], how="left_anti").select(*items.columns)


def _embed_batches(
    batches: Iterator[pd.DataFrame],
    settings: EncodeSettings,
    item_col: str,
    text_col: str,
    hash_col: str,
    embedding_col: str,
    model_col: str,
) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` body: runs in a Python worker, one call per partition."""
    import torch
    from pyspark import TaskContext

    from recspark.embed.model import cached_encoder, choose_device, set_offline_env, torch_threads

    set_offline_env()
    ctx = TaskContext.get()
    gpus: list[str] = []
    cpus = 1
    if ctx is not None:
        gpu = ctx.resources().get("gpu")
        gpus = list(gpu.addresses) if gpu is not None else []
        cpus = ctx.cpus()
    encoder = None
    for pdf in batches:
        if pdf.empty:
            continue
        if encoder is None:  # load lazily: an empty partition never loads the model
            device = choose_device(gpus, torch.cuda.is_available(), settings.half_precision)
            if device.device == "cpu":
                torch.set_num_threads(torch_threads(settings.torch_threads, cpus))
            encoder = cached_encoder(settings.model_path, device)
        vectors = encoder.encode(
            pdf[text_col].tolist(),
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            pooling=settings.pooling,
            normalize=settings.normalize,
        )
        yield pd.DataFrame(
            {
                item_col: pdf[item_col].to_numpy(),
                embedding_col: list(vectors),
                model_col: settings.model_name,
                hash_col: pdf[hash_col].to_numpy(),
            }
        )


def embed_items(
    items: DataFrame,
    settings: EncodeSettings,
    *,
    existing: DataFrame | None = None,
    num_partitions: int | None = None,
    item_col: str = ITEM_ID,
    text_col: str = TEXT,
    hash_col: str = TEXT_HASH,
    embedding_col: str = EMBEDDING,
    model_col: str = MODEL_NAME,
) -> DataFrame:
    """Embed item texts on the executors.

    Items are first cleaned and deduplicated (``prepare_items``); with ``existing``, only
    the items ``items_to_embed`` selects are embedded. Rows are spread round-robin over
    ``num_partitions`` tasks so that every executor core runs the model; each Arrow batch
    (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows) is encoded in length-sorted
    mini-batches of ``settings.batch_size``. A task with a GPU assigned runs on that GPU.

    Args:
        items: needs ``item_col``, ``text_col`` (the composed text), ``hash_col``.
        settings: model folder, model name and encoding settings (``encode_settings``).
        existing: current item embeddings, to embed only new or changed items.
        num_partitions: tasks to spread the work over; ``None`` keeps the partitioning.

    Returns:
        ``item_col``, ``embedding_col`` (array<float>), ``model_col``, ``hash_col``.
    """
    prepared = prepare_items(items, item_col=item_col, text_col=text_col, hash_col=hash_col)
    todo = items_to_embed(
        prepared,
        existing,
        settings.model_name,
        item_col=item_col,
        hash_col=hash_col,
        model_col=model_col,
    )
    if num_partitions is not None and num_partitions > 0:
        todo = todo.repartition(num_partitions)
    schema = item_embeddings_schema(
        item_col=item_col, embedding_col=embedding_col, model_col=model_col, hash_col=hash_col
    )

    def fn(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        return _embed_batches(
            iter(batches), settings, item_col, text_col, hash_col, embedding_col, model_col
        )

    return todo.select(item_col, text_col, hash_col).mapInPandas(fn, schema)


def _l2_normalised(arr: Column) -> Column:
    norm = F.sqrt(F.aggregate(arr, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    return F.when(norm > 0, F.transform(arr, lambda x: (x / norm).cast("float"))).otherwise(
        F.transform(arr, lambda x: x.cast("float"))
    )


def user_embeddings(
    interactions: DataFrame,
    item_embeddings: DataFrame,
    *,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    weight_col: str = WEIGHT,
    embedding_col: str = EMBEDDING,
) -> DataFrame:
    """Each user's vector: the interaction-weighted mean of their items' vectors, L2-normalised.

    Only interactions with a positive, finite weight and an item that has an embedding count;
    a user with none of those gets no row. Computed in the JVM (weighted ``Summarizer.mean``
    and higher-order functions), without a Python UDF. A zero mean stays zero.

    Args:
        interactions: needs ``user_col``, ``item_col``, ``weight_col``.
        item_embeddings: needs ``item_col``, ``embedding_col`` (one row per item, equal sizes).

    Returns:
        ``user_col``, ``embedding_col`` (array<float>).
    """
    require_columns(interactions.columns, [user_col, item_col, weight_col], "interactions")
    require_columns(item_embeddings.columns, [item_col, embedding_col], "item embeddings")
    w = F.col(weight_col).cast("double")
    usable = interactions.where(
        F.col(user_col).isNotNull() & w.isNotNull() & ~F.isnan(w) & (w > 0) & (w < float("inf"))
    ).select(user_col, item_col, w.alias(weight_col))
    vectors = item_embeddings.where(F.col(embedding_col).isNotNull()).select(
        item_col, array_to_vector(F.col(embedding_col)).alias("_vec")
    )
    means = (
        usable.join(vectors, on=item_col, how="inner")
        .groupBy(user_col)
        .agg(Summarizer.mean(F.col("_vec"), F.col(weight_col)).alias("_mean"))
    )
    return means.select(
        F.col(user_col),
        _l2_normalised(vector_to_array(F.col("_mean"), dtype="float64")).alias(embedding_col),
    )
