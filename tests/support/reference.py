"""Reference versions of the steps :func:`recspark.ingest.classify.classify_events` fuses.

Each runs one step on its own, in its own sort, as the contract states it: tests check the
fused classification against them. Built from the same column rules as the product.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.ingest import classify as C


def mark_duplicates(validated: DataFrame, *, raw_col: str = S.RAW) -> DataFrame:
    """Add ``event_key`` and ``is_duplicate`` to validated events.

    Among valid records with the same key the earliest event wins (ties: source file, then
    the raw text); the others are duplicates. Invalid records are never duplicates: each one is
    quarantined on its own.

    Args:
        validated: output of :func:`recspark.ingest.validate.validate_events` (needs
            ``reason``, ``event_ts``, ``source_file``, the id fields and ``raw``).
    """
    valid = F.col(S.REASON).isNull()
    marked = C.flag_duplicates(validated, tie_col=raw_col)
    return marked.withColumn(S.EVENT_KEY, F.when(valid, C.event_key()))


def flag_bots(df: DataFrame, *, events_per_hour: int, min_busy_hours: int) -> DataFrame:
    """Quarantine (``reason = 'bot'``) every event of users with a sustained machine rate.

    A bot has at least ``min_busy_hours`` clock hours holding ``events_per_hour`` events or
    more. Only events still accepted count and are flagged.

    Args:
        df: output of :func:`mark_duplicates`.
    """
    order = (S.EVENT_TS,)  # any order: each hour has exactly one first row
    counted = C.count_hours(df, order=order)
    by_user = Window.partitionBy(S.USER_ID).orderBy(C.HOUR, *order)
    stats = counted.select("*", *C.bot_statistics(events_per_hour=events_per_hour, by_user=by_user))
    is_bot = C.is_bot(min_busy_hours)
    return stats.select(
        *[c for c in df.columns if c not in (S.REASON, S.DETAIL)],
        F.when(is_bot, F.lit(S.Reason.BOT)).otherwise(F.col(S.REASON)).alias(S.REASON),
        F.when(is_bot, C.bot_detail()).otherwise(F.col(S.DETAIL)).alias(S.DETAIL),
    )


def sessionize(events: DataFrame, *, gap_minutes: float) -> DataFrame:
    """Fill missing ``session_id``: a new session starts after ``gap_minutes`` of inactivity.

    Generated ids are ``<user_id>:<epoch seconds of the session's first event>``. Events that
    carry a ``session_id`` keep it. Ordering ties are broken by ``event_key``.

    Args:
        events: accepted events (needs ``user_id``, ``event_ts``, ``event_key``, ``session_id``).
    """
    by_user = Window.partitionBy(S.USER_ID).orderBy(S.EVENT_TS, S.EVENT_KEY)
    with_previous = events.withColumn(C.PREVIOUS, C.previous_time(F.lit(True), by_user))
    filled = C.fill_sessions(
        with_previous, gap_minutes=gap_minutes, member=F.lit(True), by_user=by_user
    )
    return filled.drop(C.PREVIOUS)
