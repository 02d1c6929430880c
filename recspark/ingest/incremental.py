"""Pure transforms of the incremental ingest: what one batch needs of the stored tables, and
what it changes in them beyond its own records.

A batch (the event files a run has not seen) is classified by
:func:`recspark.ingest.classify.classify_events` with a :class:`~recspark.ingest.classify.
Context` built here from ``silver/events`` and ``silver/event_hours``, restricted to the batch's
users; so a duplicate of a stored event is a duplicate, a session continues across the
boundary and the bot rule counts the stored hours. A user who becomes a bot in this batch has
their stored events moved to the quarantine (:func:`moved_to_quarantine`), as one ingest of
everything would have quarantined them. Nothing here reads, writes, counts or collects.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.ingest import classify as C
from recspark.ingest import transforms as X
from recspark.ingest import validate as V


def batch_keys(raw: DataFrame) -> DataFrame:
    """The distinct (``user_id``, ``event_key``) of a batch's records with a user. The key is
    made as classification makes it (:func:`recspark.ingest.validate.key_fields`), but for
    every record, valid or not: so the batch's events' keys are among these.

    Args:
        raw: the batch's records (``raw``, ``source_file``).
    """
    fields = V.key_fields(V.parse_json_records(raw, S.RAW_EVENT_SCHEMA))
    return (
        fields.where(F.col(S.USER_ID).isNotNull())
        .select(S.USER_ID, C.event_key().alias(S.EVENT_KEY))
        .distinct()
    )


def stored_keys(events: DataFrame, keys: DataFrame) -> DataFrame:
    """The ``event_key`` of the stored events that are among ``keys`` (a batch's, from
    :func:`batch_keys`): its events that are duplicates of stored ones. Far fewer rows than
    the stored keys of the batch's users, so classification joins them without a shuffle.

    Args:
        events: stored events (``event_key``, each once).
        keys: ``event_key``.
    """
    return events.select(S.EVENT_KEY).join(keys, S.EVENT_KEY, "left_semi")


def session_context(events: DataFrame, *, gap_minutes: float) -> DataFrame:
    """Per user of ``events``: the last event's time (``_ctx_last``) and the start of its
    session (``_ctx_start``), found as :func:`recspark.ingest.classify.fill_sessions` cuts
    sessions (a gap of more than ``gap_minutes``).

    The window orders by time alone: events of one time are a gap of 0 apart, so whichever
    of them comes first, a start has that time and the maximum start is the same.

    Args:
        events: stored events (``user_id``, ``event_ts``).
    """
    by_user = Window.partitionBy(S.USER_ID).orderBy(S.EVENT_TS)
    ts = F.col(S.EVENT_TS)
    prev = F.lag(ts).over(by_user)
    gap = F.unix_micros(ts) - F.unix_micros(prev)
    start = F.when(prev.isNull() | (gap > F.lit(int(gap_minutes * 60 * 1_000_000))), ts)
    return (
        events.select(S.USER_ID, ts, start.alias("_start"))
        .groupBy(S.USER_ID)
        .agg(F.max(ts).alias(C.CTX_LAST), F.max("_start").alias(C.CTX_START))
    )


def hour_context(hours: DataFrame, *, events_per_hour: int) -> tuple[DataFrame, DataFrame]:
    """The stored hours per (user, hour) and per user (busy hours, largest hour).

    Args:
        hours: rows of ``silver/event_hours`` (``user_id``, ``hour``, ``events``).

    Returns:
        ``(user_id, _hour, _ctx_events)`` and ``(user_id, _ctx_busy, _ctx_peak)``.
    """
    per_hour = hours.groupBy(S.USER_ID, F.col(S.HOUR).alias(C.HOUR)).agg(
        F.sum(S.EVENTS).alias(C.CTX_EVENTS)
    )
    busy = F.col(C.CTX_EVENTS) >= events_per_hour
    per_user = per_hour.groupBy(S.USER_ID).agg(
        F.count(F.when(busy, F.lit(1))).alias(C.CTX_BUSY),
        F.max(C.CTX_EVENTS).alias(C.CTX_PEAK),
    )
    return per_hour, per_user


def context(
    events: DataFrame,
    hours: DataFrame,
    users: DataFrame,
    keys: DataFrame,
    *,
    gap_minutes: float,
    events_per_hour: int,
) -> C.Context:
    """The :class:`~recspark.ingest.classify.Context` of a batch whose users are ``users``.

    Args:
        events: the stored events of earlier batches (``silver/events`` without the rows of
            the batch's own files, so that a rerun of a batch sees what its first run saw).
        hours: the stored hours of earlier batches (``silver/event_hours``, likewise).
        users: the batch's users (``user_id``).
        keys: the batch's duplicates of stored events (:func:`stored_keys`).
    """
    sessions = session_context(
        events.select(S.USER_ID, S.EVENT_TS).join(users, S.USER_ID, "left_semi"),
        gap_minutes=gap_minutes,
    )
    per_hour, per_user = hour_context(
        hours.join(users, S.USER_ID, "left_semi"), events_per_hour=events_per_hour
    )
    return C.Context(
        keys=keys,
        users=sessions.join(per_user, S.USER_ID, "full"),
        hours=per_hour,
    )


def hour_counts(classified: DataFrame) -> DataFrame:
    """Rows of ``silver/event_hours`` for classified records: per user, clock hour and source
    file, the events the bot rule counts (valid and not duplicates: accepted, or quarantined
    after the count as a ``bot`` or an ``unknown_item``).

    Args:
        classified: output of :func:`recspark.ingest.classify.classify_events`.
    """
    counted = (F.col(C.STATUS) == "accepted") | F.col(S.REASON).isin(
        S.Reason.BOT, S.Reason.UNKNOWN_ITEM
    )
    return (
        classified.where(counted)
        .groupBy(
            S.USER_ID,
            F.date_trunc("hour", F.col(S.EVENT_TS)).alias(S.HOUR),
            S.SOURCE_FILE,
        )
        .agg(F.count(F.lit(1)).alias(S.EVENTS))
    )


def new_bots(classified: DataFrame) -> DataFrame:
    """The users quarantined as bots in this batch, with the bot rule's detail (one row each).

    Args:
        classified: output of :func:`recspark.ingest.classify.classify_events`.
    """
    return (
        classified.where(F.col(S.REASON) == S.Reason.BOT)
        .groupBy(S.USER_ID)
        .agg(F.max(S.DETAIL).alias(S.DETAIL))
    )


def with_stored_events(bots: DataFrame, context: C.Context) -> DataFrame:
    """The rows of ``bots`` whose user has stored events (the batch's ``context`` knows: a
    user's last stored event is null when they have none; a bot already quarantined in an
    earlier batch has stored hours, but no events).

    Args:
        bots: output of :func:`new_bots`.
    """
    stored = context.users.where(F.col(C.CTX_LAST).isNotNull()).select(S.USER_ID)
    return bots.join(stored, S.USER_ID, "left_semi")


def stored_events_of(events: DataFrame, bots: DataFrame) -> DataFrame:
    """The stored events of the users in ``bots``, with ``reason = 'bot'`` and their detail.

    Args:
        events: ``silver/events``.
        bots: output of :func:`new_bots`.
    """
    return events.join(bots, S.USER_ID, "inner").withColumn(S.REASON, F.lit(S.Reason.BOT))


def moved_to_quarantine(
    moved: DataFrame, records: DataFrame, *, min_ts: datetime, max_ts: datetime
) -> DataFrame:
    """Find the input record of each stored event in ``moved`` again, for the quarantine.

    The records of the events' source files are parsed and keyed as classification does;
    among the records of one event (its duplicates), the one classification accepted is taken
    (the earliest, ties broken by the text's hash).

    Args:
        moved: output of :func:`stored_events_of` (``event_key``, ``source_file``, ``reason``,
            ``detail``).
        records: the records of those source files (``raw``, ``source_file``).

    Returns:
        ``raw``, ``source_file``, ``reason``, ``detail``: input of
        :func:`recspark.ingest.transforms.to_quarantine`.
    """
    parsed = V.parse_json_records(records, S.RAW_EVENT_SCHEMA)
    valid = V.validate_events(parsed, min_ts=min_ts, max_ts=max_ts).where(F.col(S.REASON).isNull())
    keyed = valid.select(S.RAW, S.SOURCE_FILE, S.EVENT_TS, C.event_key().alias(S.EVENT_KEY)).join(
        moved.select(S.EVENT_KEY, S.SOURCE_FILE, S.REASON, S.DETAIL),
        [
            S.EVENT_KEY,
            S.SOURCE_FILE,
        ],
    )
    first = Window.partitionBy(S.EVENT_KEY).orderBy(
        F.col(S.EVENT_TS).asc(), F.xxhash64(S.RAW).asc(), F.col(S.RAW).asc()
    )
    return (
        keyed.withColumn("_n", F.row_number().over(first))
        .where(F.col("_n") == 1)
        .select(S.RAW, S.SOURCE_FILE, S.REASON, S.DETAIL)
    )


def interactions_of(
    events: DataFrame,
    users: DataFrame,
    *,
    event_weights: Mapping[str, float],
) -> DataFrame:
    """The ``silver/interactions`` rows of ``users``, rebuilt from their stored events (no time
    decay): what a batch whose files were stored before MERGEs in place of those users' rows
    (it cannot add sums: some of its events may be stored already).

    Args:
        events: ``silver/events`` after the batch's writes.
        users: the users whose events the batch added (``user_id``).
    """
    mine = events.join(users, S.USER_ID, "left_semi")
    return X.build_interactions(mine, event_weights=event_weights, decay_half_life_days=None)


# What a moved event's quarantine detail says when its input file is gone.
REBUILT = "; input file gone: record rebuilt from silver/events"


def rebuilt_records(moved: DataFrame) -> DataFrame:
    """The quarantine records of stored events whose input file no longer exists (deleted
    after it was ingested, as a retention rule does): each event's input fields, as stored,
    written back as a JSON record; the detail says so (:data:`REBUILT`).

    Args:
        moved: output of :func:`stored_events_of`, restricted to those events.

    Returns:
        ``raw``, ``source_file``, ``reason``, ``detail``, as :func:`moved_to_quarantine`.
    """
    ts = F.date_format(F.col(S.EVENT_TS), "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    fields = [
        F.col(S.EVENT_ID),
        F.col(S.USER_ID),
        F.col(S.ITEM_ID),
        F.col(S.EVENT_TYPE),
        ts.alias(S.EVENT_TS),
        F.col(S.VALUE),
        F.col(S.SESSION_ID),
    ]
    return moved.select(
        F.to_json(F.struct(*fields)).alias(S.RAW),
        S.SOURCE_FILE,
        S.REASON,
        F.concat(F.col(S.DETAIL), F.lit(REBUILT)).alias(S.DETAIL),
    )
