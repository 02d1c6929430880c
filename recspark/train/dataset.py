"""Training data for the two-tower network, as pure Spark transforms (no I/O, no actions).

An *example* is one interaction (the target) with the user's interactions before it (the
history), as the model is used at recommendation time. The history is a fixed-length array of
item indices, right-aligned (newest last) and left-padded with -1, so that Petastorm can hand
it to torch as one ``[B, L]`` array.

An example also carries a *context*: up to as many of the user's other items of the same
example set, in no particular order (:func:`bag_contexts`). Training on it instead of the
history suits data whose order says little (see ``recspark.train.loop.context_for_epoch``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType

from recspark.ingest.transforms import build_interactions
from recspark.numbering import dense_index
from recspark.schema import (
    CATEGORY,
    EMBEDDING,
    EVENT_TS,
    EVENT_TYPE,
    FIRST_TS,
    ITEM_ID,
    USER_ID,
    WEIGHT,
    require_columns,
)

ITEM_IDX = "item_idx"
USER_IDX = "user_idx"
CAT_IDX = "cat_idx"
ID_IDX = "id_idx"
EXAMPLE_ID = "example_id"
TARGET = "target"
HISTORY = "history"
CONTEXT = "context"
KNOWN_TRAIN = "known_train"
KNOWN_ALL = "known_all"
N_TRAIN = "n_train"
N_ALL = "n_all"
TS = "ts"
IS_VALID = "is_valid"
AGE = "age"
VECTOR = "vector"


def interactions_from_events(
    events: DataFrame,
    event_weights: Mapping[str, float],
    as_of: str | None = None,
    *,
    decay_half_life_days: float | None = None,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    type_col: str = EVENT_TYPE,
    ts_col: str = EVENT_TS,
) -> DataFrame:
    """One row per (user, item) with a positive weight: the weight and the time of the first event.

    The weights are those of ``silver/interactions`` (:func:`recspark.ingest.transforms.
    build_interactions`, the one home of the weighting, time decay included), computed over the
    events strictly before ``as_of`` when it is given (a time split sees no later event).

    Needs ``user_col``, ``item_col``, ``type_col``, ``ts_col`` (timestamp).

    Returns:
        ``user_id``, ``item_id``, ``weight`` (double > 0), ``first_ts`` (timestamp).
    """
    require_columns(events.columns, [user_col, item_col, type_col, ts_col], "events")
    df = events.select(
        F.col(user_col).alias(USER_ID),
        F.col(item_col).alias(ITEM_ID),
        F.col(type_col).alias(EVENT_TYPE),
        F.col(ts_col).alias(EVENT_TS),
    )
    if as_of is not None:
        df = df.where(F.col(EVENT_TS) < F.lit(as_of).cast("timestamp"))
    inter = build_interactions(
        df, event_weights=event_weights, decay_half_life_days=decay_half_life_days
    )
    return inter.where(F.col(WEIGHT) > 0).select(USER_ID, ITEM_ID, WEIGHT, FIRST_TS)


def category_vocabulary(items: DataFrame, *, category_col: str = CATEGORY) -> DataFrame:
    """Distinct non-null categories numbered ``1..C`` (0 is left for unknown), deterministically
    (:func:`recspark.numbering.dense_index`).

    Returns:
        ``category``, ``cat_idx`` (int).
    """
    cats = items.select(F.col(category_col).alias(CATEGORY)).where(F.col(CATEGORY).isNotNull())
    return dense_index(cats.distinct(), key=CATEGORY, index_col=CAT_IDX, start=1)


def item_index(
    items: DataFrame,
    item_embeddings: DataFrame,
    interactions: DataFrame,
    *,
    item_col: str = ITEM_ID,
    category_col: str = CATEGORY,
    embedding_col: str = EMBEDDING,
) -> DataFrame:
    """Every item of the catalog, the embeddings or the interactions, numbered ``0..N-1``.

    Items: ``item_col`` and (optionally) ``category_col``; embeddings: ``item_col``,
    ``embedding_col``; interactions: ``item_id``.

    Returns:
        ``item_id``, ``item_idx`` (int, deterministic: see :func:`recspark.numbering.
        dense_index`), ``category`` (null when unknown),
        ``embedding`` (null when the item has none).
    """
    require_columns(items.columns, [item_col], "items")
    require_columns(item_embeddings.columns, [item_col, embedding_col], "item_embeddings")
    cat = F.col(category_col) if category_col in items.columns else F.lit(None).cast("string")
    cats = (
        items.select(F.col(item_col).alias(ITEM_ID), cat.alias(CATEGORY))
        .groupBy(ITEM_ID)
        .agg(F.min(CATEGORY).alias(CATEGORY))
    )
    embs = item_embeddings.select(
        F.col(item_col).alias(ITEM_ID), F.col(embedding_col).alias(EMBEDDING)
    ).dropDuplicates([ITEM_ID])
    ids = (
        cats.select(ITEM_ID)
        .union(embs.select(ITEM_ID))
        .union(interactions.select(ITEM_ID))
        .distinct()
    )
    numbered = dense_index(ids, key=ITEM_ID, index_col=ITEM_IDX)
    return numbered.join(cats, ITEM_ID, "left").join(embs, ITEM_ID, "left")


def user_index(examples: DataFrame) -> DataFrame:
    """Number the users of ``examples`` (needs ``user_id``) ``0..U-1``, deterministically.

    Returns:
        ``user_id``, ``user_idx`` (int).
    """
    require_columns(examples.columns, [USER_ID], "examples")
    return dense_index(examples.select(USER_ID).distinct(), key=USER_ID, index_col=USER_IDX)


def sequence_examples(interactions: DataFrame, index: DataFrame, history_len: int) -> DataFrame:
    """One example per interaction that has at least one earlier interaction of its user.

    Interactions (``user_id``, ``item_id``, ``weight``, ``first_ts``) are ordered per user by
    ``first_ts`` then ``item_id`` (tie-breaker); the history is the previous ``history_len``.

    Returns:
        ``example_id`` (long, a hash of user and item), ``user_id``, ``target`` (int item index),
        ``history`` (array<int> of length ``history_len``, newest last, padded with -1),
        ``weight`` (float), ``ts`` (timestamp of the target).
    """
    require_columns(interactions.columns, [USER_ID, ITEM_ID, WEIGHT, FIRST_TS], "interactions")
    df = interactions.join(index.select(ITEM_ID, ITEM_IDX), ITEM_ID, "inner")
    order = Window.partitionBy(USER_ID).orderBy(FIRST_TS, ITEM_ID)
    before = order.rowsBetween(-history_len, -1)
    hist = F.collect_list(ITEM_IDX).over(before)
    df = df.select(
        F.xxhash64(USER_ID, ITEM_ID).alias(EXAMPLE_ID),
        USER_ID,
        F.col(ITEM_IDX).alias(TARGET),
        hist.alias("_h"),
        F.col(WEIGHT).cast("float").alias(WEIGHT),
        F.col(FIRST_TS).alias(TS),
    ).where(F.size("_h") > 0)
    pad = F.array_repeat(F.lit(-1), F.lit(history_len) - F.size("_h"))
    return df.select(
        EXAMPLE_ID,
        USER_ID,
        TARGET,
        F.concat(pad, F.col("_h")).cast("array<int>").alias(HISTORY),
        WEIGHT,
        TS,
    )


def bag_contexts(examples: DataFrame, history_len: int, *, seed: int) -> DataFrame:
    """Add ``context``: the user's other items of ``examples``, order-free.

    A user's items are the targets and history items of their examples. Each user keeps a
    pool of ``history_len + 1`` of them, drawn by a seeded hash of (user, item) (the item
    index breaks ties), so that the cost is bounded by the history length however many items
    a user has; an example's context is its pool without its target, at most
    ``history_len`` items. Compute it per example set (the training-period examples apart
    from all of them), so that no context holds an item of a period the set leaves out.

    Args:
        examples: ``user_id``, ``target`` and ``history`` (as :func:`sequence_examples`).
        seed: the draw's seed.

    Returns:
        ``examples`` with ``context`` (array<int> of length ``history_len``, padded on the
        left with -1, as ``history``).
    """
    require_columns(examples.columns, [USER_ID, TARGET, HISTORY], "examples")
    # Every item but a user's first is a target; the first is the newest history item of
    # the user's second example: targets plus newest history items are all the items.
    items = (
        examples.select(USER_ID, F.col(TARGET).alias(ITEM_IDX))
        .union(examples.select(USER_ID, F.element_at(HISTORY, -1).alias(ITEM_IDX)))
        .where(F.col(ITEM_IDX) >= 0)
        .distinct()
        .withColumn("_draw", F.xxhash64(F.lit(seed), USER_ID, ITEM_IDX))
    )
    order = Window.partitionBy(USER_ID).orderBy("_draw", ITEM_IDX)
    pools = (
        items.withColumn("_n", F.row_number().over(order))
        .where(F.col("_n") <= history_len + 1)
        .groupBy(USER_ID)
        .agg(F.array_sort(F.collect_list(F.struct("_n", ITEM_IDX))).alias("_pool"))
    )
    others = F.filter(F.transform("_pool", lambda s: s[ITEM_IDX]), lambda x: x != F.col(TARGET))
    ctx = F.slice(others, 1, history_len)
    pad = F.array_repeat(F.lit(-1), F.lit(history_len) - F.size(ctx))
    return (
        examples.join(pools, USER_ID, "left")
        .withColumn(CONTEXT, F.concat(pad, ctx).cast("array<int>"))
        .drop("_pool")
    )


def mark_validation(examples: DataFrame, validation_days: float) -> DataFrame:
    """Add ``is_valid``: the target falls in the last ``validation_days`` before the newest one.

    Needs ``ts``. The cut is computed lazily (a one-row aggregate cross-joined), no action.
    """
    newest = examples.agg(F.max(TS).alias("_newest"))
    cut = F.col("_newest") - F.make_dt_interval(secs=F.lit(validation_days * 86400.0))
    return examples.crossJoin(newest).withColumn(IS_VALID, F.col(TS) > cut).drop("_newest")


def known_items(examples: DataFrame) -> DataFrame:
    """Item indices that occur in ``examples`` as a target or in a history.

    Returns:
        ``item_idx`` (distinct).
    """
    targets = examples.select(F.col(TARGET).alias(ITEM_IDX))
    hist = examples.select(F.explode(HISTORY).alias(ITEM_IDX)).where(F.col(ITEM_IDX) >= 0)
    return targets.union(hist).distinct()


def item_features(
    index: DataFrame,
    categories: DataFrame,
    train_examples: DataFrame,
    all_examples: DataFrame,
    text_dim: int,
) -> DataFrame:
    """The item tower's inputs per item index, for the training workers.

    Returns:
        ``item_idx``, ``embedding`` (array<float> of ``text_dim``; zeros when missing),
        ``cat_idx`` (int, 0 = unknown), ``known_train`` / ``known_all`` (bool: the item-id
        embedding is trained in the validation phase / the final phase), ``n_train`` /
        ``n_all`` (long: how often the item is a target in each phase, for the log-Q
        correction of the sampled softmax).
    """
    zeros = F.array_repeat(F.lit(0.0).cast("float"), text_dim)
    kt = known_items(train_examples).withColumn(KNOWN_TRAIN, F.lit(True))
    ka = known_items(all_examples).withColumn(KNOWN_ALL, F.lit(True))
    nt = train_examples.groupBy(F.col(TARGET).alias(ITEM_IDX)).agg(F.count(F.lit(1)).alias(N_TRAIN))
    na = all_examples.groupBy(F.col(TARGET).alias(ITEM_IDX)).agg(F.count(F.lit(1)).alias(N_ALL))
    return (
        index.join(F.broadcast(categories), CATEGORY, "left")
        .join(kt, ITEM_IDX, "left")
        .join(ka, ITEM_IDX, "left")
        .join(nt, ITEM_IDX, "left")
        .join(na, ITEM_IDX, "left")
        .select(
            ITEM_IDX,
            F.coalesce(F.col(EMBEDDING).cast(ArrayType(FloatType())), zeros).alias(EMBEDDING),
            F.coalesce(F.col(CAT_IDX), F.lit(0)).cast("int").alias(CAT_IDX),
            F.coalesce(F.col(KNOWN_TRAIN), F.lit(False)).alias(KNOWN_TRAIN),
            F.coalesce(F.col(KNOWN_ALL), F.lit(False)).alias(KNOWN_ALL),
            F.coalesce(F.col(N_TRAIN), F.lit(0)).cast("long").alias(N_TRAIN),
            F.coalesce(F.col(N_ALL), F.lit(0)).cast("long").alias(N_ALL),
        )
    )


def last_interactions(interactions: DataFrame, history_len: int) -> DataFrame:
    """Each user's newest ``history_len`` interactions with their age (0 = newest).

    Needs ``user_id``, ``item_id``, ``first_ts``; ties on time are broken by ``item_id``.

    Returns:
        ``user_id``, ``item_id``, ``age`` (int).
    """
    order = Window.partitionBy(USER_ID).orderBy(F.col(FIRST_TS).desc(), F.col(ITEM_ID).desc())
    return (
        interactions.select(USER_ID, ITEM_ID, (F.row_number().over(order) - 1).alias(AGE))
        .where(F.col(AGE) < history_len)
        .withColumn(AGE, F.col(AGE).cast("int"))
    )


def weighted_user_vectors(last: DataFrame, item_vectors: DataFrame, half_life: float) -> DataFrame:
    """The user tower in Spark: the recency-weighted mean of history item vectors.

    ``last``: ``user_id``, ``item_id``, ``age``; ``item_vectors``: ``item_id``, ``vector``.
    Weight ``0.5 ** (age / half_life)``, the same as ``model.recency_weights``. History items
    without a vector are skipped.

    Returns:
        ``user_id``, ``vector`` (array<float>).
    """
    joined = last.join(item_vectors.select(ITEM_ID, VECTOR), ITEM_ID, "inner").select(
        USER_ID,
        F.pow(F.lit(0.5), F.col(AGE) / F.lit(float(half_life))).alias("_w"),
        F.col(VECTOR).cast(ArrayType(FloatType())).alias(VECTOR),
    )
    grouped = joined.groupBy(USER_ID).agg(
        F.collect_list(F.struct("_w", VECTOR)).alias("_xs"), F.sum("_w").alias("_tw")
    )
    first = F.col("_xs")[0][VECTOR]
    zero = F.transform(first, lambda _x: F.lit(0.0).cast("double"))
    summed = F.aggregate(
        F.col("_xs"),
        zero,
        lambda acc, x: F.zip_with(acc, x[VECTOR], lambda a, b: a + x["_w"] * b),
    )
    vec = F.transform(summed, lambda s: (s / F.col("_tw")).cast("float"))
    return grouped.select(USER_ID, vec.alias(VECTOR))


def add_own_vectors(user_vectors: DataFrame, own: DataFrame) -> DataFrame:
    """Each user's vector plus the user's own learned vector (a model with user vectors).

    Args:
        user_vectors: ``user_id``, ``vector`` (the user tower over the history).
        own: ``user_id``, ``vector`` (the model's ``user_vectors.parquet``); a user without a
            row keeps the history's vector.

    Returns:
        ``user_id``, ``vector`` (array<float>).
    """
    require_columns(user_vectors.columns, [USER_ID, VECTOR], "user vectors")
    require_columns(own.columns, [USER_ID, VECTOR], "own user vectors")
    theirs = own.select(USER_ID, F.col(VECTOR).alias("_own"))
    summed = F.zip_with(VECTOR, "_own", lambda a, b: (a + b).cast("float"))
    vec = F.when(F.col("_own").isNull(), F.col(VECTOR)).otherwise(summed)
    return user_vectors.join(theirs, USER_ID, "left").select(USER_ID, vec.alias(VECTOR))
