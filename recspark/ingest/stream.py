"""The incremental ingest of events (``ingest.mode: incremental``): only the files no earlier
run processed.

Spark Structured Streaming's file source (or Databricks Auto Loader, ``ingest.stream_source:
autoloader``) lists ``input.events``; its checkpoint (``Locations.stream_checkpoint("events")``,
under the file location) records which files each batch read. A run is one
``trigger(availableNow=True)`` query: every file not seen yet, then stop; with nothing new, no
batch runs and no table is written. Each batch (``foreachBatch``) classifies and writes its
records with the same steps as the full ingest (:mod:`recspark.ingest.store`) plus the stored
context of earlier batches (:mod:`recspark.ingest.incremental`), and writes with MERGEs that a
rerun of the same batch repeats without effect: a run killed mid-batch leaves the batch
uncommitted in the checkpoint, and the next run does it again, ending with the tables an
uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from functools import reduce
from typing import Any
from urllib.parse import unquote, urlsplit

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import schema as S
from recspark import tables as T
from recspark.config import Config
from recspark.errors import ConcurrentWriteError, InputError, StorageError
from recspark.ingest import classify as C
from recspark.ingest import incremental as N
from recspark.ingest import store as W
from recspark.ingest import transforms as X
from recspark.io import (
    detect_format,
    existing,
    jsonl_records,
    list_files,
    modification_times,
    read_stream_raw,
    read_text_lines,
)
from recspark.log import get_logger
from recspark.progress import timed

# The counts a run adds up over its batches.
_COUNTS = (
    "read",
    "accepted",
    "quarantined",
    "duplicates",
    "inserted",
    "already_present",
    "quarantine_inserted",
    "requarantined",
)


# Loggers that print a failed batch's whole Java and Python stack (py4j's callback server, and
# Spark's stream execution): the run reports the batch's own error in one line instead.
_QUERY_JVM_LOGGERS = ("org.apache.spark.sql.execution.streaming", "org.apache.spark.sql.streaming")
_QUERY_PY_LOGGERS = ("py4j.clientserver", "py4j.java_gateway")
_AQE = "spark.sql.adaptive.enabled"
# What Spark says when a query on the same checkpoint is already active.
_CONCURRENT_QUERY = ("ConcurrentModificationException", "concurrently using", "already active")


def query_name(checkpoint: str) -> str:
    """The stream query's name: one per checkpoint. Spark refuses to start a second query of
    that name while one is active in the session (it would otherwise stop the running one, as
    ``spark.sql.streaming.stopActiveRunOnRestart`` says, mid-batch)."""
    digest = hashlib.sha1(checkpoint.rstrip("/").encode()).hexdigest()[:12]
    return f"recspark_ingest_events_{digest}"


@contextmanager
def _quiet_query_logs(spark: SparkSession) -> Iterator[None]:
    """Silence the stack traces a failing ``foreachBatch`` makes py4j and Spark print, for the
    query's duration; the caller raises the batch's own error (one line at the CLI)."""
    py_levels = {n: logging.getLogger(n).level for n in _QUERY_PY_LOGGERS}
    for name in _QUERY_PY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    jvm_levels: dict[str, Any] = {}
    try:
        log4j = spark._jvm.org.apache.logging.log4j  # type: ignore[union-attr]
        off = log4j.Level.getLevel("OFF")
        for name in _QUERY_JVM_LOGGERS:
            jvm_levels[name] = log4j.LogManager.getLogger(name).getLevel()
            log4j.core.config.Configurator.setLevel(name, off)
    except Exception:  # Spark Connect or another logging backend: leave the logs as they are
        jvm_levels = {}
    try:
        yield
    finally:
        for name, level in py_levels.items():
            logging.getLogger(name).setLevel(level)
        if jvm_levels:
            log4j = spark._jvm.org.apache.logging.log4j  # type: ignore[union-attr]
            for name, level in jvm_levels.items():
                log4j.core.config.Configurator.setLevel(name, level)


def stream_id(spark: SparkSession, checkpoint: str) -> str:
    """The id Spark gave the stream when it created ``checkpoint`` (its ``metadata`` file): a
    checkpoint deleted and begun again is another stream, whose batch numbers start again."""
    for line in read_text_lines(spark, f"{checkpoint.rstrip('/')}/metadata"):
        if line.startswith("{"):
            return str(json.loads(line)["id"])
    raise StorageError(
        f"the stream checkpoint {checkpoint} has no metadata file with the stream's id "
        "(expected one once the query has started)"
    )


def rewritten_files(spark: SparkSession, checkpoint: str, files: list[str]) -> list[str]:
    """Input files that changed after a batch read them: listed with a modification time later
    than the one the stream's source log recorded. The file source does not read them again
    (it knows files by path): the run reports them instead."""
    seen: dict[tuple[str, str, str], int] = {}
    for line in read_text_lines(spark, f"{checkpoint.rstrip('/')}/sources/0"):
        if line.startswith("{"):
            entry = json.loads(line)
            seen[_same_file(str(entry["path"]))] = int(entry["timestamp"])
    if not seen:
        return []
    now = modification_times(spark, [f for f in files if _same_file(f) in seen])
    return sorted(f for f, t in now.items() if t > seen[_same_file(f)])


def _same_file(path: str) -> tuple[str, str, str]:
    """A path as (scheme, authority, decoded path): the source log writes ``file:///a%20b``
    where a listing says ``file:/a b``."""
    parts = urlsplit(path)
    return parts.scheme, parts.netloc, unquote(parts.path)


def _stored(spark: SparkSession, cfg: Config, name: str, files: list[str]) -> DataFrame | None:
    """A stored table without the rows of ``files`` (the batch's own: a rerun of the batch sees
    what its first run saw), or None when it does not exist. With no ``files`` (a first
    attempt: no stored row is the batch's), the table's file column is not read at all."""
    if not T.exists(spark, T.ref(cfg.warehouse, name)):
        return None
    table = T.read(spark, cfg.warehouse, name)
    return table.where(~F.col(S.SOURCE_FILE).isin(files)) if files else table


def _context(
    spark: SparkSession, cfg: Config, raw: DataFrame, files: list[str], keep: list[DataFrame]
) -> C.Context | None:
    """The batch's :class:`~recspark.ingest.classify.Context`. The batch's users and keys
    are broadcast (:func:`~recspark.ingest.store.small`): the stored tables are filtered as
    they are read, not shuffled. Of the stored events' keys, only those the batch repeats are
    kept (a few, against a key for each stored event of the batch's users, often heavy ones:
    1.4M for a 1% batch at a 10M history)."""
    events = _stored(spark, cfg, T.SILVER_EVENTS, files)
    if events is None:
        return None
    hours = _stored(spark, cfg, T.SILVER_EVENT_HOURS, files)
    if hours is None:  # a warehouse of an older version: no stored hours
        hours = spark.createDataFrame([], S.EVENT_HOURS_SCHEMA)
    batch = N.batch_keys(raw).persist(W.BATCH_STORAGE)
    users = batch.select(S.USER_ID).distinct().persist(W.BATCH_STORAGE)
    keys = batch.select(S.EVENT_KEY)
    keep.extend([batch, users])
    n_keys = keys.count()  # the stored keys the batch repeats are at most as many
    users, keys = W.small(users, users.count()), W.small(keys, n_keys)
    # The stored hours are read twice (per hour and per user): kept, not scanned twice.
    hours = hours.join(users, S.USER_ID, "left_semi").persist(W.BATCH_STORAGE)
    keep.append(hours)
    context = N.context(
        events,
        hours,
        users,
        W.small(N.stored_keys(events, keys), n_keys),
        gap_minutes=cfg.ingest.session_gap_minutes,
        events_per_hour=cfg.ingest.bot.events_per_hour,
    )
    # Per user, a row (1,000 for a 1% batch at 10M), cut from the tables it read: the batch's
    # writes would drop a cache of it, and the new bots look up who has stored events in it.
    per_user = context.users.localCheckpoint(eager=True, storageLevel=W.BATCH_STORAGE)
    return replace(context, users=per_user)


def _empty_counts() -> dict[str, Any]:
    return dict.fromkeys(_COUNTS, 0) | {"quarantined_by_reason": {}, "files": 0}


def ingest_batch(
    spark: SparkSession,
    cfg: Config,
    raw: DataFrame,
    *,
    run_id: str,
    items: DataFrame,
    window: tuple[datetime, datetime],
    keep: list[DataFrame],
    txn: T.Txn,
) -> dict[str, Any]:
    """Classify one batch's records against the stored context and write every table; return
    the batch's counts. Repeating it (a rerun after a kill) changes no table further: its
    appends and its interactions' sums carry ``txn`` (the stream and the batch), which Delta
    writes once; and once its files have stored rows (:func:`_seen_before`), it MERGEs."""
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    raw = raw.persist(W.BATCH_STORAGE)
    keep.append(raw)
    with timed(seconds, "read"):
        read = raw.count()
        if read == 0:
            return _empty_counts()
        files = sorted(r[0] for r in raw.select(S.SOURCE_FILE).distinct().collect())
    with timed(seconds, "seen_before"):
        seen = _seen_before(spark, cfg, files)
    if seen:
        get_logger("ingest").info(
            "ingest events: stored rows of this batch's files found (an earlier attempt of the "
            "batch, or a full ingest of the same files): the batch writes with MERGEs"
        )
    append = None if seen else txn
    with timed(seconds, "context"):
        # Only a batch whose files have stored rows must leave them out of its context.
        context = _context(spark, cfg, raw, files if seen else [], keep)
        classified = W.classify(raw, items, cfg.ingest, window, context)
    stored = W.store_events(
        spark,
        cfg,
        raw,
        classified,
        read=read,
        run_id=run_id,
        keep=keep,
        seconds=seconds,
        txn=append,
    )
    summary = stored.summary()
    with timed(seconds, "quarantine"):
        W.insert_quarantine(spark, cfg, [(summary, stored.rejected)], txn=append)
    bot_records = int(stored.counts["quarantined_by_reason"].get(S.Reason.BOT, 0))
    bots = N.new_bots(stored.classified) if bot_records else None
    requarantined = 0
    if bots is not None and context is not None:  # else no stored event to move
        with timed(seconds, "requarantine"):
            requarantined = _requarantine(
                spark,
                cfg,
                N.with_stored_events(bots, context),
                run_id=run_id,
                window=window,
                keep=keep,
                seconds=seconds,
            )
    accepted = stored.classified.where(F.col(C.STATUS) == "accepted")
    with timed(seconds, "interactions"):
        _update_interactions(
            spark, cfg, accepted, stored.counts["accepted"], bots, bot_records, append
        )
    seconds["batch"] = round(time.perf_counter() - started, 1)
    get_logger("ingest").info("ingest events batch: seconds by step %s", json.dumps(seconds))
    return {**summary, "requarantined": requarantined, "files": len(files)}


def _requarantine(
    spark: SparkSession,
    cfg: Config,
    bots: DataFrame,
    *,
    run_id: str,
    window: tuple[datetime, datetime],
    keep: list[DataFrame],
    seconds: dict[str, float],
) -> int:
    """Move the stored events of ``bots`` (users who became bots in this batch and have stored
    events, :func:`~recspark.ingest.incremental.with_stored_events`) to the quarantine (first
    inserted there, then deleted from ``silver/events``: a rerun finds what is left to move);
    return how many were moved. With no such bot, ``silver/events`` is not read."""
    bots = bots.persist(StorageLevel.MEMORY_AND_DISK)
    keep.append(bots)
    with timed(seconds, "bots_with_events"):
        n_bots = bots.count()
    if n_bots == 0:
        return 0
    bots = W.small(bots, n_bots)
    moved = N.stored_events_of(T.read(spark, cfg.warehouse, T.SILVER_EVENTS), bots)
    moved = moved.persist(StorageLevel.MEMORY_AND_DISK)
    keep.append(moved)
    with timed(seconds, "bots_stored_events"):
        sources = sorted(r[0] for r in moved.select(S.SOURCE_FILE).distinct().collect())
    if not sources:
        return 0
    there = existing(spark, sources)
    parts = []
    if there:
        found = N.moved_to_quarantine(
            moved.where(F.col(S.SOURCE_FILE).isin(there)),
            _records(spark, there),
            min_ts=window[0],
            max_ts=window[1],
        )
        parts.append(found)
    gone = [f for f in sources if f not in there]
    if gone:
        get_logger("ingest").warning(
            "ingest events: %d input file(s) of new bots' stored events no longer exist (%s); "
            "their quarantine records are rebuilt from silver/events",
            len(gone),
            ", ".join(gone[:3]) + (", ..." if len(gone) > 3 else ""),
        )
        parts.append(N.rebuilt_records(moved.where(F.col(S.SOURCE_FILE).isin(gone))))
    found = reduce(DataFrame.unionByName, parts)
    with timed(seconds, "bots_quarantined"):
        T.merge_new(
            spark,
            X.to_quarantine(found, run_id=run_id, input_name="events"),
            cfg.warehouse,
            T.SILVER_QUARANTINE,
            keys=[S.RECORD_KEY],
        )
    with timed(seconds, "bots_deleted"):
        return T.delete_matching(
            spark, moved.select(S.EVENT_KEY), cfg.warehouse, T.SILVER_EVENTS, [S.EVENT_KEY]
        )


def _records(spark: SparkSession, files: list[str]) -> DataFrame:
    """The records of ``files`` (JSON Lines), read as a batch."""
    return jsonl_records(spark.read.option("lineSep", "\n").text(files))


def _update_interactions(
    spark: SparkSession,
    cfg: Config,
    accepted: DataFrame,
    n_accepted: int,
    bots: DataFrame | None,
    n_bots: int,
    txn: T.Txn | None,
) -> None:
    """Add the batch's accepted events to ``silver/interactions`` and delete the rows of new
    bots. With ``txn`` (no stored row of the batch's files), the batch's per-(user, item) sums
    are MERGEd (:func:`~recspark.ingest.transforms.interaction_sums`, written once per
    ``txn``); without, the batch's users' rows are rebuilt from their stored events. With time
    decay on, the whole table is rebuilt (every weight depends on the newest event).
    ``n_accepted``: the rows of ``accepted``; ``n_bots``: at least those of ``bots``."""
    ic = cfg.ingest
    events = T.read(spark, cfg.warehouse, T.SILVER_EVENTS)
    if ic.decay_half_life_days is not None:
        all_rows = X.build_interactions(
            events,
            event_weights=ic.event_weights,
            decay_half_life_days=ic.decay_half_life_days,
        )
        T.overwrite(all_rows, cfg.warehouse, T.SILVER_INTERACTIONS)
        return
    if bots is not None:
        T.delete_matching(
            spark,
            W.small(bots.select(S.USER_ID), n_bots),
            cfg.warehouse,
            T.SILVER_INTERACTIONS,
            [S.USER_ID],
            T.target_in(bots, S.USER_ID),
        )
    keys = [S.USER_ID, S.ITEM_ID]
    # The MERGE reads only the stored rows of the batch's users (when they are few enough to
    # list): the others cannot match, and its insert clause would shuffle them all.
    only = T.target_in(accepted, S.USER_ID)
    if txn is None:
        users = accepted.select(S.USER_ID).distinct()
        rows = N.interactions_of(events, users, event_weights=ic.event_weights)
        T.merge_upsert(spark, rows, cfg.warehouse, T.SILVER_INTERACTIONS, keys=keys, target_in=only)
        return
    # At most one row per accepted event: broadcast (when small), the MERGE finds the stored
    # pairs as it reads silver/interactions instead of shuffling it (25.3 -> 19.5 s at 10M).
    rows = W.small(X.build_interactions(accepted, event_weights=ic.event_weights), n_accepted)
    T.merge_update(
        spark, rows, cfg.warehouse, T.SILVER_INTERACTIONS, keys, X.interaction_sums(), txn, only
    )


def _seen_before(spark: SparkSession, cfg: Config, files: list[str]) -> bool:
    """Whether ``silver/events`` or ``silver/quarantine`` already hold rows of ``files``: an
    earlier attempt of this batch got as far as its events, or ``ingest.mode: full`` read the
    same files (a backfill). The batch then MERGEs (insert-if-absent, its users' interactions
    rebuilt) instead of appending: appends rely on its rows being new. Reads one column.

    ``silver/event_hours`` answers for ``silver/events`` (under 1% of its size at 10M events,
    whose column took 3.9 s): every stored event has its (user, hour, file) row there, written
    before the events in both modes. A warehouse without it (an older version) is checked on
    ``silver/events``."""
    hours = T.exists(spark, T.ref(cfg.warehouse, T.SILVER_EVENT_HOURS))
    for name in (T.SILVER_EVENT_HOURS if hours else T.SILVER_EVENTS, T.SILVER_QUARANTINE):
        if not T.exists(spark, T.ref(cfg.warehouse, name)):
            continue
        mine = T.read(spark, cfg.warehouse, name).where(F.col(S.SOURCE_FILE).isin(files))
        if not mine.select(S.SOURCE_FILE).isEmpty():
            return True
    return False


def _rewritten(spark: SparkSession, cfg: Config, checkpoint: str) -> list[str]:
    """The input files changed after a run read them (:func:`rewritten_files`), each logged."""
    rewritten = rewritten_files(spark, checkpoint, list_files(spark, cfg.input.events))
    for f in rewritten:
        get_logger("ingest").warning(
            "ingest events: %s changed after a run read it; it is not read again "
            "(ingest a corrected file under a new name, or run with ingest.mode=full)",
            f,
        )
    return rewritten


def _add_up(total: dict[str, Any], counts: dict[str, Any]) -> None:
    """Add a batch's counts to the run's ``total``."""
    for k in (*_COUNTS, "files"):
        total[k] += counts[k]
    by = total["quarantined_by_reason"]
    for reason, n in counts["quarantined_by_reason"].items():
        by[reason] = by.get(reason, 0) + n


def _run_query(
    spark: SparkSession,
    cfg: Config,
    checkpoint: str,
    each: Callable[[DataFrame, int], None],
    failures: list[BaseException],
) -> None:
    """Run one ``availableNow`` query over the event files with ``each`` per batch; raise the
    first batch failure (``failures``), or a ConcurrentWriteError when another query on the
    same checkpoint ran or stopped this one."""
    writer = (
        read_stream_raw(spark, cfg.input.events, cfg.ingest.stream_source)
        .writeStream.foreachBatch(each)
        .queryName(query_name(checkpoint))
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
    )
    try:
        query = writer.start()
        with _quiet_query_logs(spark):
            query.awaitTermination()
    except Exception as e:
        if failures:
            raise failures[0] from e
        if any(m in str(e) for m in _CONCURRENT_QUERY):  # a second query on one checkpoint
            raise ConcurrentWriteError(
                f"another ingest is reading the same event stream (checkpoint {checkpoint}); "
                "run again when it has finished"
            ) from e
        raise
    if failures:  # the query ended without an error, yet a batch failed: it was stopped
        raise ConcurrentWriteError(
            f"the ingest query on {checkpoint} was stopped while it wrote a batch (another "
            f"query started on the same checkpoint stops a running one); run again"
        ) from failures[0]


def run_events(
    spark: SparkSession,
    cfg: Config,
    *,
    run_id: str,
    items: DataFrame,
    window: tuple[datetime, datetime],
    keep: list[DataFrame],
) -> dict[str, Any]:
    """Ingest the event files no earlier run processed (one ``availableNow`` query); return the
    run's summary (the counts added up over its batches, and the rewritten files found)."""
    checkpoint = cfg.locations().stream_checkpoint("events")
    rewritten = _rewritten(spark, cfg, checkpoint)
    total = _empty_counts()
    batches = 0
    failures: list[BaseException] = []
    aqe = spark.conf.get(_AQE, "true")
    app_id: list[str] = []  # the stream's, read from its checkpoint once the query has begun

    last = [time.perf_counter()]  # when the stream started, then when a batch ended

    def each(batch: DataFrame, batch_id: int) -> None:
        nonlocal batches
        get_logger("ingest").info(
            "ingest events batch %d: began %.1f s after the stream started or the last batch "
            "ended (the stream's own planning)",
            batch_id,
            time.perf_counter() - last[0],
        )
        # The stream runs its batches on a session with AQE off (a streaming plan must keep its
        # partitioning); this sink is stateless, so the batch's own work gets the user's
        # setting back: AQE coalesces its shuffles and broadcasts its small joins at run time.
        batch.sparkSession.conf.set(_AQE, aqe or "true")
        try:
            if not app_id:
                app_id.append(f"recspark-ingest-{stream_id(spark, checkpoint)}")
            counts = ingest_batch(
                spark,
                cfg,
                batch,
                run_id=run_id,
                items=items,
                window=window,
                keep=keep,
                txn=T.Txn(app_id[0], batch_id),
            )
        except BaseException as e:  # kept: the query reports it wrapped in its own error
            failures.append(e)
            raise
        batches += 1
        last[0] = time.perf_counter()
        _add_up(total, counts)
        get_logger("ingest").info(
            "ingest events batch %d: %s", batch_id, json.dumps(counts, sort_keys=True)
        )

    _run_query(spark, cfg, checkpoint, each, failures)
    total["quarantined_by_reason"] = dict(sorted(total["quarantined_by_reason"].items()))
    return {
        "input": "events",
        "mode": "incremental",
        **total,
        "batches": batches,
        "rewritten_files": rewritten,
    }


def streamable(files: list[str], fmt: str) -> str | None:
    """Why the incremental stream cannot read these inputs (None: it can). It reads JSON Lines
    only; Parquet input is ingested in full."""
    try:
        kind = detect_format(files, fmt)  # type: ignore[arg-type]
    except InputError as e:
        return str(e)
    return None if kind == "jsonl" else "Parquet input is read in full (ingest.mode=full)"
