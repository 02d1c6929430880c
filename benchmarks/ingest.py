"""Ingest benchmark: recspark ingest against a plain read-and-write-to-Delta copy, side by side.

    .venv/bin/python benchmarks/ingest.py --sizes 1000000 10000000 --out /tmp/recspark-bench

For each size it generates events (users and items scaled with the size; ``--reuse`` keeps
an earlier run's), then times, in one run on one session: (a) the plain copy
(``spark.read.json`` -> Delta), timed after one untimed copy, so warm, and (b) ``recspark
ingest`` into an empty warehouse, the first ingest of the JVM (it pays for its own code's
start-up). With ``--warm`` the ingest is timed warm too, after one untimed ingest of the same
input into a scratch warehouse: the steady state of a long-running cluster, where the strict
figure is that of a one-off ``spark-submit``. Prints events/s per core and the ratio; targets:
ingest <= 2.5x the copy, and the per-event cost at the largest size within 20% of the smallest.

``--floor`` also times (c), after the ingest, the two large writes ingest has to make with none
of its work around them: the same JSON read with the copy's schema, each record with a time
written to ``silver/events`` partitioned by ``event_date`` as ingest writes it, then
``silver/interactions`` aggregated from that table. No validation, quarantine, deduplication,
bot filter, sessions or catalog: a lower bound for any ingest that writes these tables.
``--rounds N`` repeats copy, ingest (and floor) N times per size and prints the medians (the
first round's ingest is the cold one); single runs on a busy machine vary by +-20%.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import schema as S
from recspark import tables as T
from recspark.cli import build_session
from recspark.config import Config, load_config
from recspark.generate.job import run as generate
from recspark.ingest.job import run as ingest
from recspark.ingest.store import EVENT_STATS
from recspark.ingest.transforms import build_interactions, to_silver_events
from recspark.ingest.validate import parse_timestamp


def plain_copy(spark: SparkSession, events: str, target: str) -> None:
    """The baseline: read the same JSON Lines with an explicit schema, write them to Delta."""
    df = spark.read.schema(S.RAW_EVENT_SCHEMA).json(events)
    df.write.format("delta").mode("overwrite").save(target)


def required_writes(spark: SparkSession, cfg: Config, events: str, warehouse: str) -> int:
    """The floor: ingest's two large writes alone; returns the events it wrote.

    Every record of the copy's read with a parsable time goes to ``silver/events`` (ingest's
    columns from the raw fields, with a cheap stand-in for the key), written as ingest creates
    the table: partitioned by ``event_date``, one write task per core, the same statistics
    columns. ``silver/interactions`` is then aggregated from that table, as a rerun of ingest
    builds it.
    """
    df = spark.read.schema(S.RAW_EVENT_SCHEMA).json(events)
    ts = parse_timestamp(F.col(S.EVENT_TS))
    parsed = df.where(ts.isNotNull()).select(
        F.concat_ws(":", S.USER_ID, S.EVENT_ID, S.EVENT_TS).alias(S.EVENT_KEY),
        S.EVENT_ID,
        S.USER_ID,
        S.ITEM_ID,
        S.EVENT_TYPE,
        ts.alias(S.EVENT_TS),
        F.col(S.VALUE).try_cast("double").alias(S.VALUE),
        S.SESSION_ID,
        F.lit(None).cast("string").alias(S.CATEGORY),
        F.col("_metadata.file_path").alias(S.SOURCE_FILE),
    )
    rows = to_silver_events(parsed, run_id=cfg.run_id or "bench")
    written, _ = T.insert_new(  # into an empty warehouse: one plain write, as ingest's first
        spark,
        rows.coalesce(spark.sparkContext.defaultParallelism),
        warehouse,
        T.SILVER_EVENTS,
        keys=[S.EVENT_KEY],
        partition_by=[S.EVENT_DATE],
        stats_columns=EVENT_STATS,
    )
    interactions = build_interactions(
        T.read(spark, warehouse, T.SILVER_EVENTS),
        event_weights=cfg.ingest.event_weights,
        decay_half_life_days=cfg.ingest.decay_half_life_days,
    )
    T.overwrite(interactions, warehouse, T.SILVER_INTERACTIONS)
    return written


def same_tables(spark: SparkSession, warehouse: str, other: str) -> bool:
    """Whether the floor wrote ``silver/events`` and ``silver/interactions`` with ingest's
    columns and types (nullability aside) and the same partitioning: it wrote no less."""

    def shape(root: str, name: str) -> tuple[list[tuple[str, str]], list[str]]:
        table = T.read(spark, root, name)
        columns = [(f.name, f.dataType.simpleString()) for f in table.schema.fields]
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{T.table_path(root, name)}`").first()
        return columns, list(detail["partitionColumns"]) if detail else []

    names = (T.SILVER_EVENTS, T.SILVER_INTERACTIONS)
    return all(shape(warehouse, n) == shape(other, n) for n in names)


def _median_ratio(num: list[float], den: list[float]) -> float:
    """The median of the rounds' ratios ``num / den``."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", default="/tmp/recspark-bench")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse input generated by an earlier run into --out (same sizes and seed)",
    )
    ap.add_argument(
        "--warm",
        action="store_true",
        help="time the ingest warm too: after one untimed ingest into a scratch warehouse",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="time ingest's two large writes alone too (a lower bound for any ingest)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="copy/ingest(/floor) rounds per size")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds: expected at least 1, found {args.rounds}")
    cores = os.cpu_count() or 1
    results = []
    for n in args.sizes:
        root = f"{args.out}/{n}"
        manifest = f"{root}/input/manifest.json"
        reuse = args.reuse and os.path.exists(manifest)
        if reuse:
            for stale in ("copy", "wh", "wh-warmup", "floor"):
                shutil.rmtree(f"{root}/{stale}", ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
        cfg = load_config(
            None,
            [
                f"generate.output={root}/input",
                f"generate.events={n}",
                f"generate.users={max(n // 100, 100)}",
                f"generate.items={max(n // 500, 100)}",
                f"generate.files={max(4, n // 250_000)}",
                f"input.events={root}/input/events",
                f"input.items={root}/input/items",
                f"warehouse={root}/wh",
                f"spark.driver_memory={args.driver_memory}",
                "spark.shuffle_partitions=16",
                "ingest.mode=full",  # every round reads every file (the batch ingest's cost)
                "run_id=bench",
            ],
        )
        events = f"{root}/input/events"
        copies: list[float] = []
        ingests: list[float] = []
        floors: list[float] = []
        spark = build_session(cfg)
        try:
            if reuse:
                with open(manifest, encoding="utf-8") as f:
                    summary = json.load(f)["expected_ingest"]
            else:
                summary = generate(spark, cfg)
            lines = summary["read"]
            # The copy is timed warm (a first, untimed copy runs the same code): the baseline
            # does not pay the JVM's start-up, whether or not the input was generated just now.
            plain_copy(spark, events, f"{root}/copy")
            if args.warm:
                ingest(spark, dataclasses.replace(cfg, warehouse=f"{root}/wh-warmup"))
                shutil.rmtree(f"{root}/wh-warmup", ignore_errors=True)
            for r in range(args.rounds):
                shutil.rmtree(cfg.warehouse, ignore_errors=True)
                shutil.rmtree(f"{root}/floor", ignore_errors=True)
                t0 = time.perf_counter()
                plain_copy(spark, events, f"{root}/copy")
                copies.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                out = ingest(spark, dataclasses.replace(cfg))
                ingests.append(time.perf_counter() - t0)
                ev = out["events"]
                ok = (
                    ev["accepted"] == summary["accepted"]
                    and ev["quarantined"] == summary["quarantined"]
                )
                line = (
                    f"events={lines:>11,d} round {r + 1}  copy {copies[-1]:7.1f}s "
                    f"({lines / copies[-1] / cores:9,.0f} ev/s/core)  ingest {ingests[-1]:7.1f}s "
                    f"({lines / ingests[-1] / cores:9,.0f} ev/s/core)  "
                    f"ratio {ingests[-1] / copies[-1]:4.2f}x "
                    f"({'warm' if args.warm or r else 'cold'} ingest)  "
                    f"counts match generator: {ok}"
                )
                if args.floor:
                    t0 = time.perf_counter()
                    written = required_writes(spark, cfg, events, f"{root}/floor")
                    floors.append(time.perf_counter() - t0)
                    same = same_tables(spark, cfg.warehouse, f"{root}/floor")
                    line += (
                        f"  floor {floors[-1]:7.1f}s ({written:,d} events written; ingest "
                        f"{ev['accepted']:,d}; same tables: {same}): "
                        f"{floors[-1] / copies[-1]:4.2f}x the copy"
                    )
                print(f"{line}  load {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            spark.stop()
        ingest_s = statistics.median(ingests)
        results.append((n, lines, ingest_s))
        if args.rounds > 1 or args.floor:
            line = (
                f"events={lines:>11,d} median of {args.rounds}: copy "
                f"{statistics.median(copies):7.1f}s  ingest {ingest_s:7.1f}s  "
                f"ratio {_median_ratio(ingests, copies):4.2f}x"
            )
            if floors:
                line += (
                    f"  floor {statistics.median(floors):7.1f}s  "
                    f"floor/copy {_median_ratio(floors, copies):4.2f}x  "
                    f"ingest/floor {_median_ratio(ingests, floors):4.2f}x"
                )
            print(line, flush=True)
    if len(results) > 1:
        (n0, l0, i0), (n1, l1, i1) = results[0], results[-1]
        per0, per1 = i0 / l0, i1 / l1
        print(f"ingest cost per event at {n1:,d} vs {n0:,d}: {per1 / per0:4.2f}x (target <= 1.20x)")


if __name__ == "__main__":
    main()
