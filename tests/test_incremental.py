"""Incremental ingest (``ingest.mode: incremental``): batches arriving one file at a time end
with the tables of one full ingest of all of them."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from recspark import schema as S
from recspark import tables as T
from recspark.config import Config, load_config
from recspark.errors import ConcurrentWriteError, ConfigError
from recspark.ingest import classify as C
from recspark.ingest import incremental as N
from recspark.ingest import stream
from recspark.ingest import transforms as X

WINDOW = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
RAW = StructType([StructField(S.RAW, StringType()), StructField(S.SOURCE_FILE, StringType())])


def _line(user: str, item: str, hhmm: str, etype: str = "view", **extra: str) -> str:
    record = {"user_id": user, "item_id": item, "event_type": etype}
    record["event_ts"] = f"2024-01-01T{hhmm}:00Z"
    return json.dumps({**record, **extra})


# Three daily files. u1's session 10:00-10:25 and 11:30-11:45 cross both boundaries; u2's
# event e1 and u1's 10:00 view arrive again a batch later (duplicates); the bot b has busy
# hours (3 events, events_per_hour = 3) at 08:00 (2 events in batch 1, 1 in batch 2) and
# 09:00 (batch 2): a bot only after batch 2, whose batch-1 events then move to the quarantine.
BATCHES: list[list[str]] = [
    [
        _line("u1", "i1", "10:00"),
        _line("u1", "i2", "10:10", "click"),
        _line("u2", "i1", "11:00", event_id="e1"),
        _line("b", "i1", "07:10"),
        _line("b", "i1", "08:10"),
        _line("b", "i2", "08:20"),
        _line("u3", "nope", "09:00"),  # unknown item
        "{",  # malformed
    ],
    [
        _line("u1", "i3", "10:25"),  # 15 min after 10:10: the same session
        _line("u1", "i1", "10:00"),  # a duplicate of batch 1's
        _line("u2", "i2", "11:05", event_id="e1"),  # event e1 re-sent: a duplicate
        _line("u1", "i2", "11:30", "purchase"),  # a new session
        _line("b", "i3", "08:30"),
        _line("b", "i1", "09:00"),
        _line("b", "i2", "09:10"),
        _line("b", "i3", "09:20"),
        _line("u4", "i1", "12:00"),
        _line("u4", "i1", "12:00"),  # the same line twice in one file
    ],
    [
        _line("u1", "i1", "11:45"),  # continues the 11:30 session
        _line("u4", "i2", "12:20"),
        _line("u5", "i3", "13:00"),
        _line("u5", "i3", "yesterday"),  # bad timestamp
    ],
]
ITEMS = [{"item_id": f"i{k}", "title": f"Item {k}", "category": "c"} for k in (1, 2, 3)]
TABLES = {
    "silver/events": [S.EVENT_KEY],
    "silver/quarantine": [S.RECORD_KEY],
    "silver/interactions": [S.USER_ID, S.ITEM_ID],
    "silver/event_hours": [S.USER_ID, S.HOUR, S.SOURCE_FILE],
    "silver/items": [S.ITEM_ID],
}


def _cfg(tmp: Path, warehouse: str, events: Path, mode: str = "incremental") -> Config:
    sets = {
        "warehouse": warehouse,
        "input.events": str(events),
        "input.items": str(tmp / "items"),
        "ingest.mode": mode,
        "ingest.bot.events_per_hour": "3",
        "ingest.bot.min_busy_hours": "2",
        "spark.shuffle_partitions": "2",
        "run_id": f"r-{mode}",
    }
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def _write(folder: Path, name: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table(spark: SparkSession, warehouse: str, name: str) -> DataFrame:
    df = spark.read.format("delta").load(f"{warehouse}/{name}")
    return df.drop(S.RUN_ID).orderBy(*TABLES[name])


def _assert_same_tables(spark: SparkSession, got: str, want: str) -> None:
    """Every table of :data:`TABLES` holds the same rows in both warehouses (run ids aside)."""
    for name in TABLES:
        assert_df_equality(
            _table(spark, got, name),
            _table(spark, want, name),
            ignore_nullable=True,
            ignore_row_order=True,
        )


def _version(spark: SparkSession, warehouse: str, name: str) -> int:
    row = DeltaTable.forPath(spark, f"{warehouse}/{name}").history(1).first()
    assert row is not None
    return int(row["version"])


def _reconciles(summary: dict[str, Any]) -> bool:
    parts = summary["accepted"] + summary["quarantined"] + summary["duplicates"]
    return bool(summary["read"] == parts)


@pytest.mark.slow
def test_three_batches_one_at_a_time_equal_one_full_ingest(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recspark.ingest.job import run as ingest

    _write(tmp_path / "items", "items.jsonl", [json.dumps(i) for i in ITEMS])
    names = [f"day-{k}.jsonl" for k in (1, 2, 3)]
    inbox = tmp_path / "inbox"
    full_wh, inc_wh = str(tmp_path / "full"), str(tmp_path / "inc")
    cfg = _cfg(tmp_path, inc_wh, inbox)
    runs = []
    kills = {
        1: ("append_once", T.SILVER_EVENT_HOURS),
        2: ("merge_update", T.SILVER_INTERACTIONS),
    }

    def killed_after(writer: str, table: str) -> Any:
        write = getattr(T, writer)

        def killed(
            spark: SparkSession, df: DataFrame, wh: str, name: str, *a: Any, **k: Any
        ) -> Any:
            out = write(spark, df, wh, name, *a, **k)
            if name == table:
                raise RuntimeError(f"killed after the {table} commit")
            return out

        return killed

    for k, (name, lines) in enumerate(zip(names, BATCHES, strict=True)):
        _write(inbox, name, lines)
        if k in kills:
            # Batch 2 killed after its first write (the hour counts: the rerun appends the rest,
            # and Delta skips the hours' second append), batch 3 after its last one (the
            # interactions' sums: the rerun finds its events stored and MERGEs): each rerun
            # ends equal, writing nothing twice.
            writer, table = kills[k]
            with monkeypatch.context() as m:
                m.setattr(T, writer, killed_after(writer, table))
                with pytest.raises(RuntimeError, match=f"killed after the {table} commit"):
                    ingest(spark, cfg)
        summary = ingest(spark, cfg)["events"]
        runs.append(summary)
        # Each run reads its new file only, and reconciles.
        assert (summary["mode"], summary["files"], summary["read"]) == (
            "incremental",
            1,
            len(lines),
        )
        assert _reconciles(summary)
    # One full ingest of the three files (the same paths: quarantine keys hash them).
    full = ingest(spark, _cfg(tmp_path, full_wh, inbox, mode="full"))["events"]
    assert full["mode"] == "full" and full["read"] == sum(len(b) for b in BATCHES)
    assert [r["duplicates"] for r in runs] == [0, 3, 0]  # the two re-sent ones, the repeated line
    assert runs[1]["quarantined_by_reason"] == {"bot": 4}
    assert runs[1]["requarantined"] == 3  # b's batch-1 events
    # Batch 2's rerun wrote its events and quarantined records; batch 3's found them written.
    assert runs[1]["inserted"] == runs[1]["accepted"] > 0
    assert runs[1]["quarantine_inserted"] == runs[1]["quarantined"] > 0
    assert runs[2]["inserted"] == 0 and runs[2]["already_present"] == runs[2]["accepted"] > 0
    assert runs[2]["quarantine_inserted"] == 0 < runs[2]["quarantined"]
    assert sum(r["accepted"] for r in runs) - runs[1]["requarantined"] == full["accepted"]

    _assert_same_tables(spark, inc_wh, full_wh)
    sessions = {
        r[S.EVENT_TS].strftime("%H:%M"): r[S.SESSION_ID]
        for r in spark.read.format("delta")
        .load(f"{inc_wh}/silver/events")
        .where(F.col(S.USER_ID) == "u1")
        .collect()
    }
    s1 = f"u1:{int(datetime(2024, 1, 1, 10, tzinfo=UTC).timestamp())}"
    s2 = f"u1:{int(datetime(2024, 1, 1, 11, 30, tzinfo=UTC).timestamp())}"
    assert sessions == {"10:00": s1, "10:10": s1, "10:25": s1, "11:30": s2, "11:45": s2}

    # Nothing new: reads 0 records and commits nothing. A file changed after it was read is
    # reported, not read again.
    versions = {t: _version(spark, inc_wh, t) for t in TABLES}
    changed = inbox / names[0]
    changed.write_text(changed.read_text() + _line("u9", "i1", "10:00") + "\n")
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 60))
    idle = ingest(spark, cfg)["events"]
    assert (idle["read"], idle["batches"]) == (0, 0)
    assert [p.rsplit("/", 1)[-1] for p in idle["rewritten_files"]] == [names[0]]
    assert {t: _version(spark, inc_wh, t) for t in TABLES} == versions


@pytest.mark.slow
def test_files_ingested_in_full_then_read_by_the_stream_are_not_stored_twice(
    spark: SparkSession, tmp_path: Path
) -> None:
    """A backfill in ``ingest.mode: full``, then the incremental stream, which has not seen
    those files: its batch finds their rows stored and MERGEs, adding nothing."""
    from recspark.ingest.job import run as ingest

    _write(tmp_path / "items", "items.jsonl", [json.dumps(i) for i in ITEMS])
    inbox = tmp_path / "inbox"
    _write(inbox, "day-1.jsonl", BATCHES[0])
    wh, once = str(tmp_path / "wh"), str(tmp_path / "once")
    full = ingest(spark, _cfg(tmp_path, wh, inbox, mode="full"))["events"]
    ingest(spark, _cfg(tmp_path, once, inbox, mode="full"))
    assert full["accepted"] > 0 and full["quarantined"] > 0
    again = ingest(spark, _cfg(tmp_path, wh, inbox))["events"]
    assert (again["mode"], again["read"], again["accepted"]) == (
        "incremental",
        full["read"],
        full["accepted"],
    )
    assert again["inserted"] == 0 and again["quarantine_inserted"] == 0
    _assert_same_tables(spark, wh, once)


def test_a_batch_classified_with_its_context_equals_the_full_classification(
    spark: SparkSession,
) -> None:
    """The transforms alone: batch 2 classified with the context of batch 1's stored events
    and hours gets the statuses, reasons and sessions that classifying both batches together
    gives batch 2's records (the bot's batch-1 events aside: the job moves those)."""
    items = spark.createDataFrame(
        [("i1", "c"), ("i2", "c"), ("i3", "c")], "item_id string, category string"
    )
    b1 = spark.createDataFrame([(r, "f1") for r in BATCHES[0]], RAW)
    b2 = spark.createDataFrame([(r, "f2") for r in BATCHES[1]], RAW)
    params: dict[str, Any] = {
        "min_ts": WINDOW[0],
        "max_ts": WINDOW[1],
        "bot_events_per_hour": 3,
        "bot_min_busy_hours": 2,
        "session_gap_minutes": 30,
    }
    first = C.classify_events(b1, items, **params)
    stored = X.to_silver_events(first.where(F.col(C.STATUS) == "accepted"), run_id="r")
    batch = N.batch_keys(b2)
    ctx = N.context(
        stored,
        N.hour_counts(first),
        batch.select(S.USER_ID).distinct(),
        N.stored_keys(stored, batch.select(S.EVENT_KEY)),
        gap_minutes=30,
        events_per_hour=3,
    )
    cols = [C.RAW_HASH, C.STATUS, S.REASON, S.DETAIL, S.SESSION_ID, S.EVENT_KEY]
    got = C.classify_events(b2, items, context=ctx, **params).select(*cols)
    both = C.classify_events(b1.unionByName(b2), items, **params)
    want = both.where(F.col(S.SOURCE_FILE) == "f2").select(*cols)
    assert_df_equality(got, want, ignore_row_order=True, ignore_nullable=True)
    assert got.where(F.col(S.REASON) == S.Reason.BOT).count() == 4


def test_batch_keys_hold_the_key_of_every_valid_event_as_classification_makes_it(
    spark: SparkSession,
) -> None:
    """The context looks stored keys up with the batch's keys, made without the checks: for
    every valid event the key classification gives, whatever spelling its fields arrived in
    (spaces, case, epoch milliseconds); invalid records add keys and lose none."""
    items = spark.createDataFrame([("i1", "c"), ("i2", "c")], "item_id string, category string")
    lines = [
        _line("u1", "i1", "10:00"),
        json.dumps(
            {"user_id": " u1 ", "item_id": "i2", "event_type": " VIEW", "event_ts": 1704103800000}
        ),
        _line("u2", "i1", "11:00", event_id=" e1 "),
        _line("u3", "i1", "yesterday"),  # bad timestamp: a key of its own, harmless
        "{",  # malformed: no user, no row
    ]
    raw = spark.createDataFrame([(r, "f") for r in lines], RAW)
    got = N.batch_keys(raw)
    classified = C.classify_events(raw, items, min_ts=WINDOW[0], max_ts=WINDOW[1])
    want = classified.where(F.col(C.STATUS) == "accepted").select(S.USER_ID, S.EVENT_KEY)
    assert want.count() == 3
    assert want.subtract(got).count() == 0
    assert sorted(r[S.USER_ID] for r in got.collect()) == ["u1", "u1", "u2", "u3"]


def test_stored_keys_are_the_stored_events_a_batch_repeats(spark: SparkSession) -> None:
    schema = StructType([StructField(S.EVENT_KEY, StringType())])
    stored = spark.createDataFrame([("a",), ("b",), ("c",)], schema)
    batch = spark.createDataFrame([("b",), ("d",), ("c",), (None,)], schema)
    want = spark.createDataFrame([("b",), ("c",)], schema)
    assert_df_equality(N.stored_keys(stored, batch), want, ignore_row_order=True)


def test_only_new_bots_with_stored_events_have_events_to_move(spark: SparkSession) -> None:
    """A user of the context whose last stored event is null has stored hours only (a bot
    quarantined before): nothing of theirs is in silver/events."""
    users = spark.createDataFrame(
        [("a", datetime(2024, 1, 1, tzinfo=UTC)), ("b", None)],
        StructType(
            [StructField(S.USER_ID, StringType()), StructField(C.CTX_LAST, TimestampType())]
        ),
    )
    context = C.Context(keys=users.select(S.USER_ID), users=users, hours=users)
    bot_schema = StructType(
        [StructField(S.USER_ID, StringType()), StructField(S.DETAIL, StringType())]
    )
    bots = spark.createDataFrame([("a", "x"), ("b", "y"), ("c", "z")], bot_schema)
    want = spark.createDataFrame([("a", "x")], bot_schema)
    assert_df_equality(N.with_stored_events(bots, context), want)


def test_a_stored_event_whose_file_is_gone_is_quarantined_from_its_stored_fields(
    spark: SparkSession,
) -> None:
    """A new bot's stored events are moved to the quarantine with their input records; when
    the input file was deleted since, the record is rebuilt from the stored fields, and
    classifying it again gives the stored event back."""
    items = spark.createDataFrame([("i1", "c"), ("i2", "c")], "item_id string, category string")
    lines = [_line("b", "i1", "08:10", value="2.5"), _line("b", "i2", "08:20", event_id="e7")]
    params: dict[str, Any] = {"min_ts": WINDOW[0], "max_ts": WINDOW[1], "session_gap_minutes": 30}
    first = C.classify_events(
        spark.createDataFrame([(r, "gone") for r in lines], RAW), items, **params
    )
    stored = X.to_silver_events(first.where(F.col(C.STATUS) == "accepted"), run_id="r")
    bots = spark.createDataFrame([("b", "3 busy hours")], "user_id string, detail string")
    got = N.rebuilt_records(N.stored_events_of(stored, bots))
    assert got.columns == [S.RAW, S.SOURCE_FILE, S.REASON, S.DETAIL]
    assert {(r[S.SOURCE_FILE], r[S.REASON], r[S.DETAIL]) for r in got.collect()} == {
        ("gone", S.Reason.BOT, "3 busy hours" + N.REBUILT)
    }
    again = C.classify_events(got.select(S.RAW, S.SOURCE_FILE), items, **params)
    again = X.to_silver_events(again.where(F.col(C.STATUS) == "accepted"), run_id="r")
    assert_df_equality(again, stored, ignore_row_order=True, ignore_nullable=True)


def test_a_file_changed_after_it_was_read_is_reported(spark: SparkSession, tmp_path: Path) -> None:
    """The stream's source log records each file's path (a URI) and modification time; a
    listed file modified later is reported."""
    a, b = _write(tmp_path / "in", "a b.jsonl", ["{}"]), _write(tmp_path / "in", "c.jsonl", ["{}"])
    log = tmp_path / "cp" / "sources" / "0"
    log.mkdir(parents=True)
    entries = [
        {"path": p.resolve().as_uri(), "timestamp": int(p.stat().st_mtime * 1000), "batchId": 0}
        for p in (a, b)
    ]
    (log / "0").write_text("v1\n" + "\n".join(json.dumps(e) for e in entries) + "\n")
    files = [f"file:{a}", f"file:{b}"]
    assert stream.rewritten_files(spark, str(tmp_path / "cp"), files) == []
    os.utime(b, (b.stat().st_atime, b.stat().st_mtime + 60))
    assert stream.rewritten_files(spark, str(tmp_path / "cp"), files) == [f"file:{b}"]
    assert stream.rewritten_files(spark, str(tmp_path / "none"), files) == []


def test_ingest_mode_is_validated_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'ingest.mode' expected 'incremental' \| 'full'"):
        load_config(None, ["ingest.mode=daily"])
    bad = tmp_path / "c.yaml"
    bad.write_text("ingest:\n  stream_source: kafka\n")
    with pytest.raises(ConfigError, match=rf"{bad}: key 'ingest.stream_source'"):
        load_config(bad)
    assert load_config(None, []).ingest.mode == "incremental"


@pytest.mark.slow
def test_an_ingest_on_a_checkpoint_in_use_is_refused_and_the_running_query_goes_on(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spark stops a running query when another starts on its checkpoint (its default); the
    named query makes the second ingest fail with ConcurrentWriteError instead."""
    from recspark.ingest.job import run as ingest

    _write(tmp_path / "items", "items.jsonl", [json.dumps(i) for i in ITEMS])
    _write(tmp_path / "inbox", "day-1.jsonl", BATCHES[0])
    cfg = _cfg(tmp_path, str(tmp_path / "wh"), tmp_path / "inbox")
    name = stream.query_name(cfg.locations().stream_checkpoint("events"))
    assert name == stream.query_name(cfg.locations().stream_checkpoint("events") + "/")
    assert name != stream.query_name(str(tmp_path / "other"))
    running = (
        spark.readStream.format("rate").load().writeStream.format("noop").queryName(name).start()
    )
    try:
        with pytest.raises(ConcurrentWriteError, match="another ingest"):
            ingest(spark, cfg)
        assert running.isActive
    finally:
        running.stop()
    # The stream's session turns AQE off; the batch's own work gets it back.
    aqe: list[str | None] = []
    batch_ingest = stream.ingest_batch

    def recording(spark: SparkSession, cfg: Config, raw: DataFrame, **kw: Any) -> Any:
        aqe.append(raw.sparkSession.conf.get("spark.sql.adaptive.enabled"))
        return batch_ingest(spark, cfg, raw, **kw)

    monkeypatch.setattr(stream, "ingest_batch", recording)
    assert ingest(spark, cfg)["events"]["batches"] == 1
    assert aqe == ["true"]
