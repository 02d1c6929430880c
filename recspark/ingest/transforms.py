"""Rows of the silver tables, shaped from classified records: events, quarantine, interactions.

Nothing here reads, writes, counts or collects.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.ingest.classify import RAW_HASH


def to_silver_events(accepted: DataFrame, *, run_id: str) -> DataFrame:
    """Select the columns of ``silver/events`` (adds ``event_date`` and ``run_id``)."""
    return accepted.select(
        S.EVENT_KEY,
        S.EVENT_ID,
        S.USER_ID,
        S.ITEM_ID,
        S.EVENT_TYPE,
        S.EVENT_TS,
        S.VALUE,
        S.SESSION_ID,
        S.CATEGORY,
        S.SOURCE_FILE,
        F.lit(run_id).alias(S.RUN_ID),
        F.to_date(S.EVENT_TS).alias(S.EVENT_DATE),
    )


def restore_text(
    classified: DataFrame, records: DataFrame, *, broadcast: bool = True, raw_col: str = S.RAW
) -> DataFrame:
    """Put back the record text that :func:`~recspark.ingest.classify.classify_events` did not
    carry.

    Classification carries the text only of records rejected before its shuffle; the rows
    without it (a ``bot``, an ``unknown_item``, or any other row) find it in ``records`` by
    source file and text hash. Identical lines of one file share a hash and a text; two
    different lines of one file would need equal 64-bit hashes to be confused.

    Args:
        classified: rows of ``classify_events`` (needs ``raw``, ``raw_hash``,
            ``source_file``); usually the quarantined ones only.
        records: the input records it classified (``raw``, ``source_file``).
        broadcast: broadcast the rows to fill (few) instead of shuffling ``records``.

    Returns:
        ``classified`` with ``raw`` set on every row.
    """
    keys = [S.SOURCE_FILE, RAW_HASH]
    missing = classified.where(F.col(raw_col).isNull())
    wanted = missing.select(*keys).distinct()
    texts = (
        records.select(F.col(raw_col), S.SOURCE_FILE, F.xxhash64(raw_col).alias(RAW_HASH))
        .join(F.broadcast(wanted) if broadcast else wanted, keys, "left_semi")
        .dropDuplicates(keys)
    )
    found = missing.drop(raw_col).join(texts, keys, "left").select(*classified.columns)
    return classified.where(F.col(raw_col).isNotNull()).unionByName(found)


def to_quarantine(
    rejected: DataFrame, *, run_id: str, input_name: str, raw_col: str = S.RAW
) -> DataFrame:
    """Rows of ``silver/quarantine``: the unchanged record, reason, detail, source and run.

    ``record_key`` identifies the record (source file, text, and its occurrence among identical
    lines of that file), so re-quarantining the same input inserts nothing.

    Args:
        rejected: records with a ``reason`` (needs ``raw``, ``source_file``, ``reason``,
            ``detail``).
    """
    occurrence = F.row_number().over(
        Window.partitionBy(S.SOURCE_FILE, raw_col).orderBy(S.REASON, S.DETAIL)
    )
    key = F.sha2(
        F.concat_ws(
            "\u0001",
            F.lit(input_name),
            F.coalesce(F.col(S.SOURCE_FILE), F.lit("")),
            F.coalesce(F.col(raw_col), F.lit("")),
            occurrence.cast("string"),
        ),
        256,
    )
    return rejected.select(
        key.alias(S.RECORD_KEY),
        F.col(raw_col).alias(S.RAW),
        S.REASON,
        S.DETAIL,
        S.SOURCE_FILE,
        F.lit(run_id).alias(S.RUN_ID),
        F.lit(input_name).alias("input"),
    )


# --- interactions ---------------------------------------------------------------------------


def build_interactions(
    events: DataFrame,
    *,
    event_weights: Mapping[str, float],
    decay_half_life_days: float | None = None,
) -> DataFrame:
    """One row per (user, item): implicit-feedback weight, count, first and last time.

    ``weight`` sums each event's type weight (types without a weight count 0), times
    ``2^(-age / half_life)`` when a half-life is given, age measured from the newest event.

    Args:
        events: needs ``user_id``, ``item_id``, ``event_type``, ``event_ts``.

    Returns:
        Columns of ``silver/interactions``: user_id, item_id, weight, count, first_ts, last_ts.
    """
    w: Column = F.lit(0.0)
    for etype, weight in sorted(event_weights.items()):
        w = F.when(F.col(S.EVENT_TYPE) == etype, F.lit(float(weight))).otherwise(w)
    df = events
    if decay_half_life_days is not None:
        newest = events.agg(F.max(S.EVENT_TS).alias("_newest"))
        df = events.crossJoin(F.broadcast(newest))
        age_days = (F.unix_micros(F.col("_newest")) - F.unix_micros(F.col(S.EVENT_TS))) / 86_400e6
        w = w * F.pow(F.lit(2.0), -age_days / F.lit(float(decay_half_life_days)))
    return df.groupBy(S.USER_ID, S.ITEM_ID).agg(
        F.sum(w).cast("double").alias(S.WEIGHT),
        F.count(F.lit(1)).alias(S.COUNT),
        F.min(S.EVENT_TS).alias(S.FIRST_TS),
        F.max(S.EVENT_TS).alias(S.LAST_TS),
    )


def interaction_sums(*, target: str = "t", source: str = "s") -> dict[str, str]:
    """How a batch's :func:`build_interactions` rows (no time decay) add to the stored rows of
    the same (user, item), as MERGE update expressions by column: ``weight`` and ``count`` sum,
    ``first_ts`` is the earlier and ``last_ts`` the later. Added batch by batch, the rows equal
    :func:`build_interactions` of all the events at once.

    Args:
        target: the stored table's alias in the MERGE; source: the batch rows' alias.
    """
    t, s = target, source
    return {
        S.WEIGHT: f"{t}.`{S.WEIGHT}` + {s}.`{S.WEIGHT}`",
        S.COUNT: f"{t}.`{S.COUNT}` + {s}.`{S.COUNT}`",
        S.FIRST_TS: f"least({t}.`{S.FIRST_TS}`, {s}.`{S.FIRST_TS}`)",
        S.LAST_TS: f"greatest({t}.`{S.LAST_TS}`, {s}.`{S.LAST_TS}`)",
    }
