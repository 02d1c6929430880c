"""Ingest benchmark: recspark ingest against a plain read-and-write-to-Delta copy, side by side.

    .venv/bin/python benchmarks/ingest.py --sizes 1000000 10000000 --out /tmp/recspark-bench

For each size it generates events (users and items scaled with the size), then times, in one
run on one session: (a) the plain copy (``spark.read.json`` -> Delta) and (b) ``recspark ingest``
into an empty warehouse. Prints events/s per core and the ratio; targets: ingest <= 2.5x the
copy, and the per-event cost at the largest size within 20% of the smallest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time

from pyspark.sql import SparkSession

from recspark.cli import build_session
from recspark.config import load_config
from recspark.generate.job import run as generate
from recspark.ingest.job import run as ingest
from recspark.schema import RAW_EVENT_SCHEMA


def plain_copy(spark: SparkSession, events: str, target: str) -> None:
    """The baseline: read the same JSON Lines with an explicit schema, write them to Delta."""
    df = spark.read.schema(RAW_EVENT_SCHEMA).json(events)
    df.write.format("delta").mode("overwrite").save(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", default="/tmp/recspark-bench")
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    results = []
    for n in args.sizes:
        root = f"{args.out}/{n}"
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
                "run_id=bench",
            ],
        )
        spark = build_session(cfg)
        try:
            summary = generate(spark, cfg)
            lines = summary["read"]
            t0 = time.perf_counter()
            plain_copy(spark, f"{root}/input/events", f"{root}/copy")
            t_copy = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = ingest(spark, dataclasses.replace(cfg))
            t_ingest = time.perf_counter() - t0
        finally:
            spark.stop()
        ev = out["events"]
        ok = ev["accepted"] == summary["accepted"] and ev["quarantined"] == summary["quarantined"]
        results.append((n, lines, t_copy, t_ingest))
        print(
            f"events={lines:>11,d}  copy {t_copy:7.1f}s "
            f"({lines / t_copy / cores:9,.0f} ev/s/core)  "
            f"ingest {t_ingest:7.1f}s ({lines / t_ingest / cores:9,.0f} ev/s/core)  "
            f"ratio {t_ingest / t_copy:4.2f}x  counts match generator: {ok}  "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    if len(results) > 1:
        (n0, l0, _, i0), (n1, l1, _, i1) = results[0], results[-1]
        per0, per1 = i0 / l0, i1 / l1
        print(f"ingest cost per event at {n1:,d} vs {n0:,d}: {per1 / per0:4.2f}x (target <= 1.20x)")


if __name__ == "__main__":
    main()
