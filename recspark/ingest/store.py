"""What the full and the incremental ingest do alike with a batch of event records: classify it
with the configured rules, check its counts, write its events and hour counts, and quarantine
the records it rejected.

These steps count, read and write tables: the jobs call them (:mod:`recspark.ingest.job` for
``ingest.mode: full``, :mod:`recspark.ingest.stream` for each incremental batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import schema as S
from recspark import tables as T
from recspark.config import Config
from recspark.errors import ReconciliationError
from recspark.ingest import classify as C
from recspark.ingest import incremental as N
from recspark.ingest import transforms as X
from recspark.ingest.config import IngestConfig
from recspark.progress import timed

# The columns of silver/events whose file statistics serve queries (the key is a hash).
EVENT_STATS = (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.EVENT_TS)

# A batch-side frame of up to this many rows is broadcast into its join with a bigger one
# instead of shuffling both: the records rejected after classification's shuffle (bots,
# unknown items) whose text is looked up in the input; an incremental batch's users, new bots
# and interaction sums, joined with stored tables of the whole history (a shuffle of
# silver/events' 10M rows for a batch's 1,000 users took most of a daily batch's time).
BROADCAST_ROWS = 500_000


def small(df: DataFrame, rows: int) -> DataFrame:
    """``df`` with a broadcast hint when its ``rows`` (counted by the caller) are at most
    :data:`BROADCAST_ROWS`; as it is otherwise. A frame read from a checkpoint or a cache has
    no size estimate that lets Spark choose the broadcast itself."""
    return F.broadcast(df) if rows <= BROADCAST_ROWS else df


# How a batch-sized frame (a batch's records, their classification) is kept between its passes:
# on disk, not in memory. Millions of records held in memory take what the batch's own sorts
# and aggregations need (a 10M-record batch in a 4g local driver ran out of memory).
BATCH_STORAGE = StorageLevel.DISK_ONLY


def summarize(classified: DataFrame) -> dict[str, Any]:
    """Counts by status and by quarantine reason, in one pass (an action: jobs only)."""
    rows = classified.groupBy(C.STATUS, S.REASON).agg(F.count(F.lit(1)).alias("n")).collect()
    by_status = {"accepted": 0, "quarantined": 0, "duplicate": 0}
    by_reason: dict[str, int] = {}
    for r in rows:
        by_status[r[C.STATUS]] += int(r["n"])
        if r[S.REASON] is not None:
            by_reason[r[S.REASON]] = by_reason.get(r[S.REASON], 0) + int(r["n"])
    return {
        "accepted": by_status["accepted"],
        "quarantined": by_status["quarantined"],
        "duplicates": by_status["duplicate"],
        "quarantined_by_reason": dict(sorted(by_reason.items())),
    }


def reconcile(input_name: str, read: int, counts: dict[str, Any]) -> None:
    """Fail when ``read != accepted + quarantined + duplicates``."""
    total = counts["accepted"] + counts["quarantined"] + counts["duplicates"]
    if read != total:
        raise ReconciliationError(
            f"{input_name}: read {read} records but accepted {counts['accepted']} + quarantined "
            f"{counts['quarantined']} + duplicates {counts['duplicates']} = {total}"
        )


def classify(
    raw: DataFrame,
    items: DataFrame,
    ic: IngestConfig,
    window: tuple[datetime, datetime],
    context: C.Context | None = None,
) -> DataFrame:
    """:func:`~recspark.ingest.classify.classify_events` with the rules of ``ingest`` (the
    one place that turns those settings into its parameters)."""
    return C.classify_events(
        raw,
        items,
        min_ts=window[0],
        max_ts=window[1],
        event_types=tuple(S.EVENT_TYPES),
        quarantine_unknown_items=ic.quarantine_unknown_items,
        broadcast_catalog=ic.broadcast_catalog,
        bot_events_per_hour=ic.bot.events_per_hour if ic.bot.enabled else None,
        bot_min_busy_hours=ic.bot.min_busy_hours,
        session_gap_minutes=ic.session_gap_minutes,
        context=context,
    )


@dataclass(frozen=True)
class StoredEvents:
    """A batch of event records after :func:`store_events`.

    Attributes:
        classified: every record, classified (persisted).
        counts: :func:`summarize`'s counts, reconciled with the records read.
        read: the records read.
        inserted: events inserted into ``silver/events`` (the others were stored already).
        created: True when this write created ``silver/events``.
        events: the batch's rows of ``silver/events``.
        rejected: the batch's rows of ``silver/quarantine``, not written yet.
    """

    classified: DataFrame
    counts: dict[str, Any]
    read: int
    inserted: int
    created: bool
    events: DataFrame
    rejected: DataFrame

    def summary(self) -> dict[str, Any]:
        """The batch's counts: read, by status and reason, inserted and already present."""
        return {
            "read": self.read,
            **self.counts,
            "inserted": self.inserted,
            "already_present": self.counts["accepted"] - self.inserted,
        }


def store_events(
    spark: SparkSession,
    cfg: Config,
    raw: DataFrame,
    classified: DataFrame,
    *,
    read: int,
    run_id: str,
    keep: list[DataFrame],
    write_tasks: int | None = None,
    seconds: dict[str, float] | None = None,
    txn: T.Txn | None = None,
) -> StoredEvents:
    """Count and reconcile ``classified`` (the classification of ``raw``, ``read`` records),
    write its hour counts (``silver/event_hours``) and insert its accepted events into
    ``silver/events``; build its quarantine rows. Persisted frames are added to ``keep``.

    Args:
        write_tasks: write the events with this many tasks (None: as they are partitioned).
        seconds: where to add the wall time of each step (classify, hours, events).
        txn: an incremental batch's transaction: its rows are new but for an earlier attempt
            of the same batch (the context marked the stored events' duplicates, and hour rows
            are keyed by the batch's own files), so they are appended once
            (:func:`recspark.tables.append_once`) instead of MERGEd: no stored row is read.
    """
    seconds = {} if seconds is None else seconds
    # One pass classifies every record; what follows reads this frame, not the input (but
    # for the text of records rejected after classification's shuffle: see restore_text).
    # Kept as a local checkpoint, not a cache: an incremental batch's classification reads the
    # stored tables (its context), and Spark drops the cache of every plan that reads a table
    # when the table is written, so each of this batch's writes would classify it again
    # (30-40 s each at a 10M-event history), against the tables as they then are.
    # (Not lazy under AQE: making the checkpoint's RDD runs the plan's shuffle stages.)
    with timed(seconds, "classify"):
        classified = classified.localCheckpoint(eager=False, storageLevel=BATCH_STORAGE)
        counts = summarize(classified)
    reconcile("events", read, counts)
    # The bot rule's hour counts, which an incremental run after this one adds to.
    hours = N.hour_counts(classified)
    with timed(seconds, "hours"):
        if txn is not None:
            T.append_once(spark, hours, cfg.warehouse, T.SILVER_EVENT_HOURS, txn)
        else:
            keys = [S.USER_ID, S.HOUR, S.SOURCE_FILE]
            T.merge_upsert(spark, hours, cfg.warehouse, T.SILVER_EVENT_HOURS, keys=keys)
    events = X.to_silver_events(classified.where(F.col(C.STATUS) == "accepted"), run_id=run_id)
    if write_tasks is not None:
        events = events.coalesce(write_tasks)
    with timed(seconds, "events"):
        if txn is not None:
            created = not T.exists(spark, T.ref(cfg.warehouse, T.SILVER_EVENTS))
            committed = T.append_once(
                spark,
                events,
                cfg.warehouse,
                T.SILVER_EVENTS,
                txn,
                partition_by=[S.EVENT_DATE],
                stats_columns=EVENT_STATS,
            )
            inserted = counts["accepted"] if committed else 0
        else:
            inserted, created = T.insert_new(
                spark,
                events,
                cfg.warehouse,
                T.SILVER_EVENTS,
                keys=[S.EVENT_KEY],
                partition_by=[S.EVENT_DATE],
                rows=counts["accepted"],
                stats_columns=EVENT_STATS,
            )
    rejected = _rejected(classified, raw, counts, run_id=run_id, keep=keep)
    return StoredEvents(classified, counts, read, inserted, created, events, rejected)


def _rejected(
    classified: DataFrame,
    raw: DataFrame,
    counts: dict[str, Any],
    *,
    run_id: str,
    keep: list[DataFrame],
) -> DataFrame:
    """The ``silver/quarantine`` rows of the quarantined records, their text restored."""
    quarantined = classified.where(F.col(C.STATUS) == "quarantined")
    late = sum(
        counts["quarantined_by_reason"].get(r, 0) for r in (S.Reason.BOT, S.Reason.UNKNOWN_ITEM)
    )
    if late:  # else every quarantined row carries its text: the input is not read again
        # restore_text reads the rejected rows twice (which texts to find, and the rows): kept
        # apart from the whole classification, which each read would scan again.
        quarantined = quarantined.persist(StorageLevel.MEMORY_AND_DISK)
        keep.append(quarantined)
        quarantined = X.restore_text(quarantined, raw, broadcast=late <= BROADCAST_ROWS)
    return X.to_quarantine(quarantined, run_id=run_id, input_name="events")


def insert_quarantine(
    spark: SparkSession,
    cfg: Config,
    parts: list[tuple[dict[str, Any], DataFrame]],
    txn: T.Txn | None = None,
) -> None:
    """Insert each input's rejected records into ``silver/quarantine`` (MERGE on the record
    key); sets each summary's ``quarantine_inserted``. A table that does not exist yet is
    created in one write from all inputs.

    Args:
        txn: an incremental batch's transaction (one input): its records are keyed by the
            batch's own files, so they are appended once instead of MERGEd.
    """
    if txn is not None:
        [(summary, df)] = parts
        committed = T.append_once(spark, df, cfg.warehouse, T.SILVER_QUARANTINE, txn)
        summary["quarantine_inserted"] = summary["quarantined"] if committed else 0
        return
    if not T.exists(spark, T.ref(cfg.warehouse, T.SILVER_QUARANTINE)):
        union = reduce(DataFrame.unionByName, [df for _, df in parts])
        rows = sum(s["quarantined"] for s, _ in parts)
        total, created = T.insert_new(
            spark, union, cfg.warehouse, T.SILVER_QUARANTINE, keys=[S.RECORD_KEY], rows=rows
        )
        for s, _ in parts:
            # Another run may have created the table meanwhile: the split is then unknown.
            s["quarantine_inserted"] = s["quarantined"] if created or total == rows else None
        return
    for s, df in parts:
        if s["quarantined"] == 0:  # no MERGE (an empty one took 4.5 s at a 10M history)
            s["quarantine_inserted"] = 0
            continue
        s["quarantine_inserted"] = T.merge_new(
            spark, df, cfg.warehouse, T.SILVER_QUARANTINE, keys=[S.RECORD_KEY]
        )
