"""Where ingest's classification goes beyond its floor: its work added one part at a time.

    .venv/bin/python benchmarks/ingest_parts.py --root /tmp/recspark-bench/10000000

Reads the events that ``benchmarks/ingest.py`` generated under ``--root`` (``input/events``)
and the catalog its ingest wrote (``wh/silver/items``), and runs, in one session, each of these
plans to Spark's ``noop`` sink (every row and column computed, nothing written). Each plan is
the one before plus one part of ``recspark ingest``'s classification, so the differences are
what each part costs:

1. the text read (``recspark.io.jsonl_records``), once untimed to warm up;
2. the floor's read: ``spark.read.json`` with the raw schema and a time parsed (what
   ``benchmarks/ingest.py --floor`` reads before it writes);
3. the records parsed (``parse_json_records``);
4. and validated (``validate_events``: times, values and types normalised, every check);
5. and classified without bots or sessions (``classify_events`` with both off: the catalog
   lookup, the one shuffle by user and the dedup window);
6. and classified as ingest does (``recspark.ingest.store.classify``: the bot rule's hour
   counts and per-user window, the sessions).

The stage's own figures (the classification persisted and counted, then every table written)
are in its log: ``seconds by step``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recspark import schema as S
from recspark import tables as T
from recspark.cli import build_session
from recspark.config import load_config
from recspark.ingest import classify as C
from recspark.ingest import store as W
from recspark.ingest import validate as V
from recspark.ingest.job import event_window_of
from recspark.io import jsonl_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="/tmp/recspark-bench/10000000")
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args()
    cfg = load_config(
        None,
        [
            f"warehouse={args.root}/wh",
            f"spark.driver_memory={args.driver_memory}",
            "spark.shuffle_partitions=16",  # as benchmarks/ingest.py
        ],
    )
    spark = build_session(cfg)
    events = f"{args.root}/input/events"
    items = T.read(spark, cfg.warehouse, T.SILVER_ITEMS).persist()
    items.count()
    ic = cfg.ingest
    window = event_window_of(cfg, datetime.now(UTC))

    def text() -> DataFrame:
        return jsonl_records(spark.read.option("lineSep", "\n").text(events))

    def floor_read() -> DataFrame:
        df = spark.read.schema(S.RAW_EVENT_SCHEMA).json(events)
        return df.where(V.parse_timestamp(F.col(S.EVENT_TS)).isNotNull())

    def parsed() -> DataFrame:
        return V.parse_json_records(text(), S.RAW_EVENT_SCHEMA)

    def validated() -> DataFrame:
        return V.validate_events(
            parsed(), event_types=tuple(S.EVENT_TYPES), min_ts=window[0], max_ts=window[1]
        )

    def deduplicated() -> DataFrame:
        return C.classify_events(
            text(),
            items,
            min_ts=window[0],
            max_ts=window[1],
            quarantine_unknown_items=ic.quarantine_unknown_items,
            broadcast_catalog=ic.broadcast_catalog,
            bot_events_per_hour=None,
            session_gap_minutes=None,
        )

    def classified() -> DataFrame:
        return W.classify(text(), items, ic, window)

    plans: list[tuple[str, Callable[[], DataFrame], str | None]] = [
        ("text read (warm-up)", text, None),
        ("text read", text, None),
        ("floor's JSON read", floor_read, None),
        ("parsed", parsed, "text read"),
        ("validated", validated, "parsed"),
        ("catalog, shuffle by user, dedup", deduplicated, "validated"),
        ("bots and sessions (ingest's classify)", classified, "catalog, shuffle by user, dedup"),
    ]
    seconds: dict[str, float] = {}
    for name, plan, before in plans:
        t0 = time.perf_counter()
        plan().write.format("noop").mode("overwrite").save()
        seconds[name] = time.perf_counter() - t0
        added = f"  (+{seconds[name] - seconds[before]:5.1f} s)" if before else ""
        print(f"{name:40s} {seconds[name]:7.1f} s{added}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
