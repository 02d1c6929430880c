"""Pure transforms of the embed stage: DataFrames and typed settings in, DataFrame out.

The encoder runs inside ``mapInPandas``: each Python worker loads tokenizer and model once
(``recspark.embed.model.cached_encoder``, a per-process cache that survives across tasks while
Spark reuses the worker) and encodes every Arrow batch it is handed. User vectors are computed
from rows partitioned and sorted by user, summed with numpy inside ``mapInArrow``
(:func:`user_vector_batches`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from recspark.errors import SchemaError
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

if TYPE_CHECKING:  # torch is imported where texts are encoded, not by the users' vectors
    from recspark.embed.model import EncodeSettings


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


def _user_vector_batch(
    users: np.ndarray,
    sums: np.ndarray,
    *,
    user_type: pa.DataType,
    user_col: str,
    embedding_col: str,
) -> pa.RecordBatch:
    """Users and their summed vectors as an Arrow batch of L2-normalised float32 vectors (a zero
    sum stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))[:, None]
    unit = np.divide(sums, norms, out=sums.copy(), where=norms > 0).astype(np.float32)
    dim = unit.shape[1]
    offsets = pa.array(np.arange(0, (len(users) + 1) * dim, dim, dtype=np.int32))
    vectors = pa.ListArray.from_arrays(offsets, pa.array(unit.reshape(-1)))
    return pa.RecordBatch.from_arrays(
        [pa.array(users, type=user_type), vectors], names=[user_col, embedding_col]
    )


def user_vector_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    user_col: str = USER_ID,
    weight_col: str = WEIGHT,
    embedding_col: str = EMBEDDING,
) -> Iterator[pa.RecordBatch]:
    """Each user's weight-summed item vector, L2-normalised, from rows sorted by user.

    The weighted sum and the weighted mean point the same way (weights are positive), so the
    normalised sum is the normalised mean. A user's rows may span batches (their running sum
    is carried over), but must be contiguous: the caller sorts them. Sums are in float64.

    Args:
        batches: ``user_col``, ``weight_col`` (double, > 0), ``embedding_col`` (list<float>, one
            size, no null values), sorted by ``user_col``.

    Yields:
        ``user_col``, ``embedding_col`` (list<float32>): one row per user.

    Raises:
        SchemaError: vectors of different sizes, or with null values.
    """
    dim: int | None = None
    user_type: pa.DataType = pa.string()
    carry_user: object = None
    carry_sum: np.ndarray | None = None
    names = {"user_col": user_col, "embedding_col": embedding_col}
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        user_type = batch.schema.field(user_col).type
        users = batch.column(user_col).to_numpy(zero_copy_only=False)
        weights = batch.column(weight_col).to_numpy(zero_copy_only=False)
        values = batch.column(embedding_col).flatten()
        sizes = np.unique(pc.list_value_length(batch.column(embedding_col)).to_numpy())
        dim = int(sizes[0]) if dim is None else dim
        if len(sizes) != 1 or sizes[0] != dim or values.null_count:
            found = f"sizes {sorted({dim, *map(int, sizes)})}, {values.null_count} null value(s)"
            raise SchemaError(
                f"item embeddings: expected vectors of one size ({dim}) with no null value, "
                f"found {found}"
            )
        weighted = values.to_numpy(zero_copy_only=False).reshape(n, dim).astype(np.float64)
        weighted *= weights[:, None]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        sums = np.add.reduceat(weighted, starts, axis=0)
        run_users = users[starts]
        if carry_sum is not None:
            if run_users[0] == carry_user:
                sums[0] += carry_sum
            else:
                yield _user_vector_batch(
                    np.array([carry_user], dtype=object),
                    carry_sum[None, :],
                    user_type=user_type,
                    **names,
                )
        if len(run_users) > 1:
            yield _user_vector_batch(run_users[:-1], sums[:-1], user_type=user_type, **names)
        carry_user, carry_sum = run_users[-1], sums[-1]
    if carry_sum is not None:
        yield _user_vector_batch(
            np.array([carry_user], dtype=object), carry_sum[None, :], user_type=user_type, **names
        )


def touched_users(
    interactions: DataFrame,
    interaction_changes: DataFrame | None,
    item_changes: DataFrame | None,
    *,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
) -> DataFrame:
    """The users whose vector may have changed: those of the changed interaction rows, and
    those with an interaction on a changed item (each once).

    Args:
        interactions: needs ``user_col``, ``item_col`` (the current interactions).
        interaction_changes: needs ``user_col``: interaction rows inserted, updated or deleted
            (None: none changed).
        item_changes: needs ``item_col``: items whose vector was inserted, updated or deleted
            (None: none changed).

    Returns:
        ``user_col``, one row per user (no null).
    """
    parts = []
    if interaction_changes is not None:
        require_columns(interaction_changes.columns, [user_col], "interaction changes")
        parts.append(interaction_changes.select(user_col))
    if item_changes is not None:
        require_columns(item_changes.columns, [item_col], "item changes")
        require_columns(interactions.columns, [user_col, item_col], "interactions")
        items = item_changes.select(item_col).distinct()
        parts.append(interactions.join(items, on=item_col, how="left_semi").select(user_col))
    if not parts:
        return interactions.select(user_col).limit(0)
    users = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    return users.where(F.col(user_col).isNotNull()).distinct()


def refreshed_user_embeddings(
    interactions: DataFrame,
    item_embeddings: DataFrame,
    users: DataFrame,
    *,
    broadcast_items: bool = True,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    weight_col: str = WEIGHT,
    embedding_col: str = EMBEDDING,
) -> DataFrame:
    """The :func:`user_embeddings` of ``users`` alone, one row each: a user who has no vector
    now (no usable interaction left) gets a null ``embedding_col``, so that the stored row
    can be removed. The same vectors as computing every user's.

    Args:
        interactions: needs ``user_col``, ``item_col``, ``weight_col``.
        item_embeddings: needs ``item_col``, ``embedding_col``.
        users: needs ``user_col``, one row per user.
        broadcast_items: as :func:`user_embeddings`'.

    Returns:
        ``user_col``, ``embedding_col`` (array<float>, null: no vector).
    """
    require_columns(users.columns, [user_col], "users")
    theirs = interactions.join(users.select(user_col), on=user_col, how="left_semi")
    fresh = user_embeddings(
        theirs,
        item_embeddings,
        broadcast_items=broadcast_items,
        user_col=user_col,
        item_col=item_col,
        weight_col=weight_col,
        embedding_col=embedding_col,
    )
    return users.select(user_col).join(fresh, on=user_col, how="left")


def fits_broadcast(items: int, dim: int, max_mb: int) -> bool:
    """Whether ``items`` vectors of ``dim`` float32 values take at most ``max_mb`` MiB: the
    users' embeddings then broadcast them (pure)."""
    return items * dim * 4 <= max_mb * 2**20


def user_embeddings(
    interactions: DataFrame,
    item_embeddings: DataFrame,
    *,
    broadcast_items: bool = True,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    weight_col: str = WEIGHT,
    embedding_col: str = EMBEDDING,
) -> DataFrame:
    """Each user's vector: the interaction-weighted mean of their items' vectors, L2-normalised.

    Only interactions with a positive, finite weight and an item that has an embedding count;
    a user with none of those gets no row. A zero mean stays zero. Each user's rows meet in one
    task, sorted by (user, item), and numpy sums them there (:func:`user_vector_batches`): no
    shuffle of per-user partial vectors. With ``broadcast_items`` (a catalog whose vectors fit
    in every executor's memory) the interactions are partitioned by user, a narrow shuffle, and
    joined to the broadcast vectors; without, they are joined by item and the joined rows, one
    vector each, partitioned by user.

    Args:
        interactions: needs ``user_col``, ``item_col``, ``weight_col``.
        item_embeddings: needs ``item_col``, ``embedding_col`` (one row per item, equal sizes).
        broadcast_items: broadcast ``item_embeddings`` to the join (the caller sizes it).

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
        item_col, embedding_col
    )
    if broadcast_items:
        joined = usable.repartition(user_col).join(F.broadcast(vectors), on=item_col)
    else:
        joined = usable.join(vectors, on=item_col).repartition(user_col)
    rows = joined.sortWithinPartitions(user_col, item_col).select(
        user_col, weight_col, embedding_col
    )
    schema = StructType(
        [
            StructField(user_col, interactions.schema[user_col].dataType, False),
            StructField(embedding_col, ArrayType(FloatType(), False), False),
        ]
    )

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return user_vector_batches(
            batches, user_col=user_col, weight_col=weight_col, embedding_col=embedding_col
        )

    return rows.mapInArrow(fn, schema)
