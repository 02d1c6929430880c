"""``recspark recommend``: exact top-K for every user into ``gold/recommendations``.

Reads ``gold/item_vectors`` and ``gold/user_vectors`` (train), ``silver/interactions`` and
``silver/items`` (ingest); writes the whole table for the run in one Delta overwrite commit, so
readers see the previous run or this one, and earlier runs stay reachable by time travel.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.config import Config
from recspark.errors import ModelError, SchemaError
from recspark.recommend.scoring import ItemIndex, score_params
from recspark.recommend.transforms import item_catalog, recommend
from recspark.schema import EMBEDDING, IS_COLD, ITEM_ID, MODEL_VERSION, TITLE, USER_ID, VECTOR


def choose_model_version(item_versions: Iterable[str], user_versions: Iterable[str]) -> str:
    """The model version to serve: the newest (largest) version present in both tables.

    Raises:
        ModelError: when the two tables share no model version.
    """
    common = sorted(set(item_versions) & set(user_versions))
    if not common:
        raise ModelError(
            f"gold/item_vectors has model versions {sorted(set(item_versions))} and "
            f"gold/user_vectors has {sorted(set(user_versions))}: expected a common one; "
            "run `recspark train` again"
        )
    return common[-1]


def collect_index(catalog: DataFrame, text: DataFrame | None = None) -> ItemIndex:
    """The scored items of ``catalog`` (those with a vector) collected into an
    :class:`ItemIndex`, with their text embeddings when ``text`` (``item_id``, ``embedding``)
    is given (the MMR re-rank compares them)."""
    scored = catalog.where(F.col(VECTOR).isNotNull()).select(ITEM_ID, VECTOR, TITLE, IS_COLD)
    if text is not None:
        scored = scored.join(text.select(ITEM_ID, EMBEDDING), ITEM_ID, "left")
    return ItemIndex.from_pandas(scored.toPandas())


def _cold_choice(cfg: Config, model_version: str) -> dict[str, Any] | None:
    """The served model's ``cold_items`` record (chosen on its validation period; see
    ``recommend.score_cold_items``), from its ``meta.json`` in the model folder; None when the
    folder or the record is missing (the cold-item defaults then apply)."""
    from recspark.train.artifacts import read_meta

    try:
        choice = read_meta(cfg.locations().model_dir(model_version)).get("cold_items")
    except ModelError:
        return None
    return dict(choice) if isinstance(choice, dict) else None


def _vectors(spark: SparkSession, cfg: Config) -> tuple[Any, DataFrame, DataFrame]:
    """The registered model (or None) and the item and user vectors to serve: a registered
    model's (its user tower on ``silver/events``) when ``recommend.model`` is set, else the
    ``gold`` tables train wrote.

    Raises:
        SchemaError: a vectors table lacks ``vector`` or ``model_version``.
    """
    wh = cfg.warehouse
    registered = None
    if cfg.recommend.model:
        from recspark.registry.serving import registered_vectors

        events = tables.read(spark, wh, tables.SILVER_EVENTS)
        registered, item_vectors, user_vectors = registered_vectors(spark, cfg, events)
    else:
        item_vectors = tables.read(spark, wh, tables.GOLD_ITEM_VECTORS)
        user_vectors = tables.read(spark, wh, tables.GOLD_USER_VECTORS)
    for df, name in (
        (item_vectors, tables.GOLD_ITEM_VECTORS),
        (user_vectors, tables.GOLD_USER_VECTORS),
    ):
        missing = [c for c in (VECTOR, MODEL_VERSION) if c not in df.columns]
        if missing:
            raise SchemaError(
                f"{name}: expected columns {VECTOR}, {MODEL_VERSION}; missing {missing}"
            )
    return registered, item_vectors, user_vectors


def _check_index(index: ItemIndex, user_vectors: DataFrame, model_version: str) -> None:
    """Raises ModelError without items, SchemaError when user vectors' length differs."""
    if not index.ids:
        raise ModelError(f"{tables.GOLD_ITEM_VECTORS}: no item vectors for {model_version}")
    user_dims = [r[0] for r in user_vectors.select(F.size(VECTOR)).distinct().limit(5).collect()]
    if any(d != index.dim for d in user_dims):
        raise SchemaError(
            f"{tables.GOLD_USER_VECTORS}: expected vectors of length {index.dim} (the item "
            f"vectors'), found lengths {sorted(user_dims)}"
        )


def _written(spark: SparkSession, wh: str) -> dict[str, int]:
    """Rows, users, distinct items and the table version of ``gold/recommendations``."""
    written = tables.read(spark, wh, tables.GOLD_RECOMMENDATIONS)
    stats = written.agg(
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct(USER_ID).alias("users"),
        F.countDistinct(ITEM_ID).alias("distinct_items"),
    ).first()
    counts = {k: int(stats[k]) if stats else 0 for k in ("rows", "users", "distinct_items")}
    ref = tables.ref(wh, tables.GOLD_RECOMMENDATIONS)
    return {**counts, "table_version": tables.version(spark, ref)}


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Write ``gold/recommendations`` for this run and return a summary."""
    wh = cfg.warehouse
    cfg = cfg.with_run_id()
    registered, item_vectors, user_vectors = _vectors(spark, cfg)
    interactions = tables.read(spark, wh, tables.SILVER_INTERACTIONS)
    items = tables.read(spark, wh, tables.SILVER_ITEMS)
    model_version = choose_model_version(
        [r[0] for r in item_vectors.select(MODEL_VERSION).distinct().collect()],
        [r[0] for r in user_vectors.select(MODEL_VERSION).distinct().collect()],
    )
    item_vectors = item_vectors.where(F.col(MODEL_VERSION) == model_version)
    user_vectors = user_vectors.where(F.col(MODEL_VERSION) == model_version)

    catalog = item_catalog(item_vectors, items, interactions).cache()
    try:
        # The MMR re-rank compares the items' text embeddings.
        text = (
            tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
            if cfg.recommend.diversity > 0
            else None
        )
        index = collect_index(catalog, text)
        _check_index(index, user_vectors, model_version)
        recs = recommend(
            user_vectors,
            interactions,
            catalog,
            index,
            score_params(cfg.recommend, _cold_choice(cfg, model_version)),
            model_version=model_version,
            run_id=str(cfg.run_id),
            generated_at=datetime.now(UTC),
        )
        tables.overwrite(recs, wh, tables.GOLD_RECOMMENDATIONS)
    finally:
        catalog.unpersist()
    from recspark.registry.serving import mark_served

    return {
        "run_id": str(cfg.run_id),
        "model_version": model_version,
        **_written(spark, wh),
        "items_scored": len(index.ids),
        **mark_served(cfg, model_version, registered),
    }
