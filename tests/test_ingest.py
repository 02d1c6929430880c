"""Ingest transforms on small inline DataFrames, the bad-input corpus, and the ingest job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from recspark import schema as S
from recspark.ingest import catalog as K
from recspark.ingest import classify as C
from recspark.ingest import transforms as X
from recspark.ingest import validate as V
from tests.support import reference as R

DATA = Path(__file__).parent / "data"
WINDOW = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
RAW = StructType([StructField(S.RAW, StringType()), StructField(S.SOURCE_FILE, StringType())])


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def _raw(spark: SparkSession, lines: list[str], source: str = "f1") -> object:
    return spark.createDataFrame([(line, source) for line in lines], RAW)


def test_parse_timestamp_formats(spark: SparkSession) -> None:
    cases = [
        ("2024-03-01T10:00:00+02:00", _ts("2024-03-01T08:00:00+00:00")),
        ("2024-03-01T10:00:00.250Z", _ts("2024-03-01T10:00:00.250+00:00")),
        ("2024-03-01 10:00:00-0530", _ts("2024-03-01T15:30:00+00:00")),
        ("1709290000", _ts("2024-03-01T10:46:40+00:00")),
        ("1709290000123", _ts("2024-03-01T10:46:40.123+00:00")),
        ("1709290000.5", _ts("2024-03-01T10:46:40.5+00:00")),
        ("2024-03-01T10:00:00", None),  # no offset: ambiguous
        ("tomorrow", None),
        ("99999999999999999", None),
    ]
    schema = StructType([StructField("s", StringType()), StructField("ts", TimestampType())])
    df = spark.createDataFrame(cases, schema)
    actual = df.select("s", V.parse_timestamp(F.col("s")).alias("ts"))
    assert_df_equality(actual, df, ignore_nullable=True)


def _corpus(spark: SparkSession, name: str) -> tuple[object, list[str]]:
    lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    expected = (DATA / f"{name}.expected").read_text().split()
    assert len(lines) == len(expected)
    return _raw(spark, lines, f"file:{name}.jsonl"), expected


def _outcome(row: dict) -> str:
    if row["status"] == "quarantined":
        return str(row[S.REASON])
    return str(row["status"])


def test_bad_item_corpus_every_record_has_its_expected_outcome(spark: SparkSession) -> None:
    raw, expected = _corpus(spark, "items_corpus")
    rows = K.classify_items(raw).select(S.RAW, C.STATUS, S.REASON).collect()
    by_raw: dict[str, list[str]] = {}
    for r in rows:
        by_raw.setdefault(r[S.RAW], []).append(_outcome(r.asDict()))
    lines = (DATA / "items_corpus.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    want: dict[str, list[str]] = {}
    for line, e in zip(lines, expected, strict=True):
        want.setdefault(line, []).append(e)
    assert {k: sorted(v) for k, v in by_raw.items()} == {k: sorted(v) for k, v in want.items()}


def _items(spark: SparkSession) -> object:
    raw, _ = _corpus(spark, "items_corpus")
    return K.to_silver_items(K.classify_items(raw).where("status = 'accepted'"))


def test_bad_event_corpus_every_record_has_its_expected_outcome(spark: SparkSession) -> None:
    raw, expected = _corpus(spark, "events_corpus")
    classified = C.classify_events(
        raw, _items(spark), min_ts=WINDOW[0], max_ts=WINDOW[1], bot_events_per_hour=600
    )
    rows = X.restore_text(classified, raw).select(S.RAW, C.STATUS, S.REASON).collect()
    lines = (DATA / "events_corpus.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(rows) == len(lines)  # nothing lost, nothing multiplied by the catalog join
    got = {r[S.RAW]: _outcome(r.asDict()) for r in rows}
    assert got == dict(zip(lines, expected, strict=True))


@pytest.mark.parametrize("broadcast", [True, False])
def test_restore_text_finds_the_text_classification_did_not_carry(
    spark: SparkSession, broadcast: bool
) -> None:
    def line(user: str, item: str, minute: int) -> str:
        ts = f"2024-01-01T00:{minute:02d}:00Z"
        return json.dumps({"user_id": user, "item_id": item, "event_type": "view", "event_ts": ts})

    same = line("u", "gone", 1)
    lines = [same, same, line("u", "i1", 2), line("v", "gone", 3), '{"user_id": "w"}', "{"]
    raw = _raw(spark, lines)
    items = spark.createDataFrame([("i1", "a")], "item_id string, category string")
    classified = C.classify_events(raw, items, min_ts=WINDOW[0], max_ts=WINDOW[1])
    # Only the records rejected before the shuffle keep their text (missing field, malformed).
    carried = {r[S.RAW] for r in classified.collect() if r[S.RAW] is not None}
    assert carried == {'{"user_id": "w"}', "{"}
    restored = X.restore_text(classified, raw, broadcast=broadcast)
    got = sorted((r[S.RAW], r[C.STATUS], r[S.REASON]) for r in restored.collect())
    assert got == sorted(
        [
            (same, "quarantined", S.Reason.UNKNOWN_ITEM),
            (same, "duplicate", None),
            (lines[2], "accepted", None),
            (lines[3], "quarantined", S.Reason.UNKNOWN_ITEM),
            ('{"user_id": "w"}', "quarantined", S.Reason.MISSING_FIELD),
            ("{", "quarantined", S.Reason.MALFORMED_JSON),
        ]
    )


def test_validate_normalises_fields(spark: SparkSession) -> None:
    line = (
        '{"user_id":" u1 ","item_id":"i1","event_type":" Rating","event_ts":1709290000,"value":"4"}'
    )
    parsed = V.parse_json_records(_raw(spark, [line]), S.RAW_EVENT_SCHEMA)
    row = V.validate_events(parsed, min_ts=WINDOW[0], max_ts=WINDOW[1]).first()
    assert row is not None
    assert (row[S.USER_ID], row[S.EVENT_TYPE], row[S.VALUE], row[S.REASON]) == (
        "u1",
        "rating",
        4.0,
        None,
    )
    assert row[S.EVENT_TS] == _ts("2024-03-01T10:46:40+00:00")


EV = StructType(
    [
        StructField(S.RAW, StringType()),
        StructField(S.SOURCE_FILE, StringType()),
        StructField(S.EVENT_ID, StringType()),
        StructField(S.USER_ID, StringType()),
        StructField(S.ITEM_ID, StringType()),
        StructField(S.EVENT_TYPE, StringType()),
        StructField(S.EVENT_TS, TimestampType()),
        StructField(S.VALUE, DoubleType()),
        StructField(S.SESSION_ID, StringType()),
        StructField(S.REASON, StringType()),
        StructField(S.DETAIL, StringType()),
    ]
)


def test_mark_duplicates_keeps_the_earliest(spark: SparkSession) -> None:
    t0, t1 = _ts("2024-01-01T00:00:00+00:00"), _ts("2024-01-01T00:00:09+00:00")
    df = spark.createDataFrame(
        [
            ("r1", "f", "e1", "u", "i", "view", t1, None, None, None, None),
            ("r2", "f", "e1", "u", "i", "view", t0, None, None, None, None),
            ("r3", "f", None, "u", "i", "view", t0, None, None, None, None),
            ("r4", "g", None, "u", "i", "view", t0, None, None, None, None),
            ("r5", "f", None, "u", "i", "click", t0, None, None, None, None),
            ("r6", "f", "e1", "u", "i", "view", t0, None, None, "bad_value", "x"),
        ],
        EV,
    )
    got = {r[S.RAW]: r[C.IS_DUPLICATE] for r in R.mark_duplicates(df).collect()}
    assert got == {"r1": True, "r2": False, "r3": False, "r4": True, "r5": False, "r6": False}


def test_sessionize_cuts_at_the_gap_and_keeps_given_ids(spark: SparkSession) -> None:
    schema = StructType(
        [
            StructField(S.USER_ID, StringType()),
            StructField(S.EVENT_TS, TimestampType()),
            StructField(S.EVENT_KEY, StringType()),
            StructField(S.SESSION_ID, StringType()),
        ]
    )
    t = _ts
    df = spark.createDataFrame(
        [
            ("u", t("2024-01-01T00:00:00+00:00"), "k1", None),
            ("u", t("2024-01-01T00:29:00+00:00"), "k2", None),
            ("u", t("2024-01-01T01:00:00+00:00"), "k3", None),  # 31 min later: new session
            ("u", t("2024-01-01T01:00:00+00:00"), "k4", "given"),
            ("v", t("2024-01-01T00:00:00+00:00"), "k5", None),
        ],
        schema,
    )
    s0 = str(int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()))
    s1 = str(int(datetime(2024, 1, 1, 1, tzinfo=UTC).timestamp()))
    expected = spark.createDataFrame(
        [
            ("u", t("2024-01-01T00:00:00+00:00"), "k1", f"u:{s0}"),
            ("u", t("2024-01-01T00:29:00+00:00"), "k2", f"u:{s0}"),
            ("u", t("2024-01-01T01:00:00+00:00"), "k3", f"u:{s1}"),
            ("u", t("2024-01-01T01:00:00+00:00"), "k4", "given"),
            ("v", t("2024-01-01T00:00:00+00:00"), "k5", f"v:{s0}"),
        ],
        schema,
    )
    actual = R.sessionize(df, gap_minutes=30)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_sessions_filled_during_classification_match_sessionize(spark: SparkSession) -> None:
    """classify_events fills sessions in the bot filter's sort; the result must equal
    :func:`sessionize` over the accepted events, whatever is quarantined in between."""

    def line(user: str, item: str, minute: int, **extra: str) -> str:
        record = {"user_id": user, "item_id": item, "event_type": "view"}
        record["event_ts"] = f"2024-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
        return json.dumps({**record, **extra})

    lines = [
        line("u", "i1", 0),
        line("u", "i2", 20),
        line("u", "missing", 45),  # unknown item between two events 40 min apart
        line("u", "i1", 60),
        line("u", "i1", 60),  # exact duplicate
        line("u", "i2", 61, session_id="given"),
        line("u", "i1", 80, event_type="nope"),  # invalid: no part of any session
        line("u", "i2", 85),
        line("v", "i1", 5),
        line("v", "i2", 7, event_id="e1"),
        line("v", "i1", 9, event_id="e1"),  # re-sent event id: a duplicate
    ]
    # A bot with two busy hours of 4 events: all of its events are quarantined.
    lines += [line("bot", "i1", h * 60 + k) for h in (0, 1) for k in range(4)]
    items = spark.createDataFrame([("i1", "a"), ("i2", "b")], "item_id string, category string")

    def classify(gap: float | None) -> DataFrame:
        return C.classify_events(
            _raw(spark, lines),
            items,
            min_ts=WINDOW[0],
            max_ts=WINDOW[1],
            bot_events_per_hour=4,
            bot_min_busy_hours=2,
            session_gap_minutes=gap,
        )

    plain, filled = classify(None), classify(30)
    cols = [S.EVENT_KEY, S.USER_ID, S.EVENT_TS, S.SESSION_ID]
    accepted = plain.where(F.col(C.STATUS) == "accepted").select(*cols)
    expected = R.sessionize(accepted, gap_minutes=30)
    actual = filled.where(F.col(C.STATUS) == "accepted").select(*cols)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    sessions = {r[S.SESSION_ID] for r in actual.where(F.col(S.USER_ID) == "u").collect()}
    assert len(sessions) == 3  # 0-20, 60-85 (the unknown item does not bridge), "given"
    assert filled.where(F.col(C.STATUS) == "accepted").count() == 7
    assert filled.where(F.col(S.REASON) == "bot").count() == 8
    # Rows that are not accepted keep their session as read (null here).
    rest = filled.where(F.col(C.STATUS) != "accepted").where(F.col(S.SESSION_ID).isNotNull())
    assert rest.count() == 0


def test_catalog_lookup_before_the_shuffle_keeps_reasons_and_sessions(spark: SparkSession) -> None:
    """The catalog is looked up before classification's shuffle: a bot's event for an unknown
    item is still ``bot``; an unknown item quarantined does not bridge a session, one kept does;
    a catalog joined without broadcast classifies exactly as a broadcast one."""

    def line(user: str, item: str, minute: int) -> str:
        ts = f"2024-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
        return json.dumps({"user_id": user, "item_id": item, "event_type": "view", "event_ts": ts})

    lines = [line("u", "i1", 0), line("u", "i2", 20), line("u", "missing", 45)]
    lines += [line("u", "i1", 70)]  # 50 min after i2, 25 min after the unknown item
    lines += [
        line("bot", "missing" if k == 0 else "i1", h * 60 + k) for h in (0, 1) for k in range(4)
    ]
    items = spark.createDataFrame([("i1", "a"), ("i2", "b")], "item_id string, category string")

    def classify(*, broadcast: bool, quarantine_unknown: bool) -> DataFrame:
        out = C.classify_events(
            _raw(spark, lines),
            items,
            min_ts=WINDOW[0],
            max_ts=WINDOW[1],
            quarantine_unknown_items=quarantine_unknown,
            broadcast_catalog=broadcast,
            bot_events_per_hour=4,
            bot_min_busy_hours=2,
            session_gap_minutes=30,
        )
        cols = [C.RAW_HASH, S.USER_ID, S.ITEM_ID, C.STATUS, S.REASON, S.CATEGORY, S.SESSION_ID]
        return out.select(*cols)

    for quarantine_unknown in (True, False):
        assert_df_equality(
            classify(broadcast=False, quarantine_unknown=quarantine_unknown),
            classify(broadcast=True, quarantine_unknown=quarantine_unknown),
            ignore_row_order=True,
        )
    strict = classify(broadcast=True, quarantine_unknown=True).collect()
    reasons = sorted((r[S.USER_ID], r[S.ITEM_ID], r[S.REASON] or "") for r in strict)
    assert reasons.count(("bot", "missing", "bot")) == 2
    assert ("u", "missing", "unknown_item") in reasons
    assert len({r[S.SESSION_ID] for r in strict if r[S.USER_ID] == "u" and r[S.SESSION_ID]}) == 2
    kept = classify(broadcast=True, quarantine_unknown=False).collect()
    u = [r for r in kept if r[S.USER_ID] == "u"]
    assert all(r[C.STATUS] == "accepted" for r in u)
    assert {r[S.CATEGORY] for r in u if r[S.ITEM_ID] == "missing"} == {None}
    assert len({r[S.SESSION_ID] for r in u}) == 1  # the kept unknown item bridges the gap


def test_bots_are_flagged_and_fast_human_raters_are_not(spark: SparkSession) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    rows = []
    # A bot: one event every 3 s for 4 hours.
    for k in range(4 * 1200):
        rows.append(("bot", t0 + 3 * k))
    # A MovieLens-like person: 80 ratings within two minutes, twice.
    for k in range(80):
        rows.append(("person", t0 + 1.5 * k))
        rows.append(("person", t0 + 7200 + 1.5 * k))
    df = (
        spark.createDataFrame(rows, "user_id string, epoch double")
        .withColumn(S.EVENT_TS, F.timestamp_seconds("epoch"))
        .withColumn(S.REASON, F.lit(None).cast("string"))
        .withColumn(S.DETAIL, F.lit(None).cast("string"))
        .withColumn(C.IS_DUPLICATE, F.lit(False))
    )
    flagged = R.flag_bots(df, events_per_hour=600, min_busy_hours=3)
    got = {
        r[S.USER_ID]: r["n"]
        for r in flagged.where("reason = 'bot'")
        .groupBy(S.USER_ID)
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    }
    assert got == {"bot": 4 * 1200}


def test_interactions_match_a_numpy_reference(spark: SparkSession) -> None:
    weights = {"view": 1.0, "click": 2.0, "purchase": 8.0}
    events = [
        ("u1", "i1", "view", "2024-01-10T00:00:00+00:00"),
        ("u1", "i1", "click", "2024-01-09T00:00:00+00:00"),
        ("u1", "i2", "purchase", "2024-01-01T00:00:00+00:00"),
        ("u2", "i1", "rating", "2024-01-05T00:00:00+00:00"),  # no weight configured: 0
    ]
    df = spark.createDataFrame(
        [(u, i, t, _ts(ts)) for u, i, t, ts in events],
        "user_id string, item_id string, event_type string, event_ts timestamp",
    )
    half_life = 4.0
    got = {
        (r[S.USER_ID], r[S.ITEM_ID]): (r[S.WEIGHT], r[S.COUNT])
        for r in X.build_interactions(
            df, event_weights=weights, decay_half_life_days=half_life
        ).collect()
    }
    newest = max(_ts(e[3]) for e in events)
    ref: dict[tuple[str, str], list[float]] = {}
    for u, i, t, ts in events:
        age = (newest - _ts(ts)).total_seconds() / 86400
        ref.setdefault((u, i), []).append(
            weights.get(t, 0.0) * float(np.power(2.0, -age / half_life))
        )
    assert set(got) == set(ref)
    for key, parts in ref.items():
        assert got[key][0] == pytest.approx(float(np.sum(parts)), rel=1e-9)
        assert got[key][1] == len(parts)


def test_compose_item_text_skips_missing_parts(spark: SparkSession) -> None:
    schema = StructType(
        [StructField(c, StringType()) for c in (S.TITLE, S.CATEGORY, S.DESCRIPTION)]
    )
    df = spark.createDataFrame(
        [("Dune", "Sci-Fi", "A  desert\nplanet."), ("Dune", None, " "), ("Dune", "", None)], schema
    )
    got = [r[0] for r in df.select(K.compose_item_text()).collect()]
    assert got == ["Dune. Category: Sci-Fi. A desert planet.", "Dune", "Dune"]


def test_quarantine_keys_are_stable_and_distinguish_repeated_lines(spark: SparkSession) -> None:
    schema = StructType(
        [StructField(c, StringType()) for c in (S.RAW, S.SOURCE_FILE, S.REASON, S.DETAIL)]
    )
    df = spark.createDataFrame(
        [("bad", "f", "malformed_json", None), ("bad", "f", "malformed_json", None)], schema
    )
    a = sorted(
        r[S.RECORD_KEY] for r in X.to_quarantine(df, run_id="r1", input_name="events").collect()
    )
    b = sorted(
        r[S.RECORD_KEY] for r in X.to_quarantine(df, run_id="r2", input_name="events").collect()
    )
    assert a == b and len(set(a)) == 2


INTERACTIONS_COLS = StructType(
    [
        StructField(S.USER_ID, StringType()),
        StructField(S.ITEM_ID, StringType()),
        StructField(S.WEIGHT, DoubleType()),
        StructField(S.COUNT, LongType()),
    ]
)


# --- the job, end to end on generated data --------------------------------------------------


def _cfg(tmp: Path, warehouse: str, events: str, **extra: str) -> object:
    from recspark.config import load_config

    sets = {
        "warehouse": warehouse,
        "input.events": events,
        "input.items": str(tmp / "gen" / "items"),
        "generate.output": str(tmp / "gen"),
        "generate.events": "3000",
        "generate.users": "80",
        "generate.items": "60",
        "generate.files": "2",
        "generate.bot_users": "1",
        "generate.bot_events_per_user": "2000",
        "ingest.bot.min_busy_hours": "1",
        "ingest.mode": "full",  # each run re-reads its input (incremental: tests/test_incremental)
        "run_id": "test-run",
        **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def _snapshot(spark: SparkSession, warehouse: str, name: str, order: list[str]) -> list[tuple]:
    df = spark.read.format("delta").load(f"{warehouse}/{name}")
    return [tuple(r) for r in df.drop(S.RUN_ID).orderBy(*order).collect()]


@pytest.mark.slow
def test_ingest_recovers_injected_counts_is_idempotent_and_adds_only_new_batches(
    spark: SparkSession, tmp_path: Path, warehouse: str
) -> None:
    from recspark.generate.job import run as generate
    from recspark.ingest.job import run as ingest

    cfg = _cfg(tmp_path, warehouse, str(tmp_path / "gen" / "events" / "part-00000.jsonl"))
    generate(spark, cfg)  # type: ignore[arg-type]
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert manifest["expected_ingest"]["quarantined_by_reason"]["bot"] == 2000

    # Batch 1: one of the two files.
    first = ingest(spark, cfg)["events"]  # type: ignore[arg-type]
    assert first["read"] == first["accepted"] + first["quarantined"] + first["duplicates"]
    assert first["inserted"] == first["accepted"]

    # The same batch again: nothing changes.
    tables = {
        "silver/events": [S.EVENT_KEY],
        "silver/quarantine": [S.RECORD_KEY],
        "silver/items": [S.ITEM_ID],
        "silver/interactions": [S.USER_ID, S.ITEM_ID],
    }
    before = {t: _snapshot(spark, warehouse, t, o) for t, o in tables.items()}
    again = ingest(spark, cfg)["events"]  # type: ignore[arg-type]
    assert (again["inserted"], again["quarantine_inserted"]) == (0, 0)
    assert {t: _snapshot(spark, warehouse, t, o) for t, o in tables.items()} == before

    # Both files: only the second file's events are new, and the totals equal the generator's.
    cfg_all = _cfg(tmp_path, warehouse, str(tmp_path / "gen" / "events"))
    both = ingest(spark, cfg_all)["events"]  # type: ignore[arg-type]
    expected = manifest["expected_ingest"]
    for key in ("read", "accepted", "quarantined", "duplicates", "quarantined_by_reason"):
        assert both[key] == expected[key], key
    assert both["inserted"] == expected["accepted"] - first["accepted"]
    events = spark.read.format("delta").load(f"{warehouse}/silver/events")
    assert events.count() == expected["accepted"]
    # File statistics only on the columns queries filter on (not the key hash, not text).
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{warehouse}/silver/events`").first()
    assert detail["properties"]["delta.dataSkippingStatsColumns"] == (
        "user_id,item_id,event_type,event_ts"
    )
    assert events.select(S.EVENT_KEY).distinct().count() == expected["accepted"]
    quarantine = spark.read.format("delta").load(f"{warehouse}/silver/quarantine")
    assert quarantine.count() == expected["quarantined"]
    # Every quarantined record keeps its text, also those rejected after the shuffle (bots,
    # unknown items: looked up again in the input), and each text is a line of its file.
    lines = {
        (p.name, line)
        for p in (tmp_path / "gen" / "events").glob("*.jsonl")
        for line in p.read_text(encoding="utf-8").split("\n")
    }
    late = quarantine.where(F.col(S.REASON).isin(S.Reason.BOT, S.Reason.UNKNOWN_ITEM))
    assert late.count() == expected["quarantined_by_reason"]["bot"] + expected[
        "quarantined_by_reason"
    ].get("unknown_item", 0)
    strays = [
        r
        for r in quarantine.collect()
        if (r[S.SOURCE_FILE].rsplit("/", 1)[-1], r[S.RAW]) not in lines
    ]
    assert strays == [], strays[:2]
    # Interactions cover exactly the accepted events.
    inter = spark.read.format("delta").load(f"{warehouse}/silver/interactions")
    assert inter.agg(F.sum(S.COUNT)).first()[0] == expected["accepted"]
