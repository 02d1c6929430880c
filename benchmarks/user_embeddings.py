"""Users' embeddings: the stage's numpy sums against the JVM ``Summarizer`` they replaced.

    .venv/bin/python benchmarks/user_embeddings.py --warehouse /tmp/recspark-pipe/10000000/warehouse

Reads ``silver/interactions`` and ``gold/item_embeddings`` of a warehouse that ``recspark
embed`` has run on (``benchmarks/pipeline.py`` leaves one per size) and writes, one after the
other in one session, each variant's ``gold/user_embeddings`` rows to a scratch Delta table:

- ``summarizer``: the previous transform, kept here as the baseline: a join by item, then a
  weighted ``Summarizer.mean`` grouped by user (one 384-double partial vector per user and
  task through the shuffle, and a sort-based fallback past 128 users a task);
- ``broadcast``: :func:`recspark.embed.transforms.user_embeddings` as the job calls it for a
  catalog under ``embed.user_broadcast_max_mb``: interactions partitioned by user, the item
  vectors broadcast, numpy sums in ``mapInArrow``;
- ``shuffle``: the same with ``broadcast_items=False`` (a catalog above it): joined by item,
  the joined rows partitioned by user.

Prints each variant's seconds, the ratio to the baseline and the largest difference of any
vector value from the baseline's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables as T
from recspark.config import load_config
from recspark.embed.transforms import user_embeddings
from recspark.schema import EMBEDDING, ITEM_ID, USER_ID, WEIGHT
from recspark.session import configure


def summarizer_user_embeddings(interactions: DataFrame, item_embeddings: DataFrame) -> DataFrame:
    """The transform before this benchmark's change, verbatim but for names: the baseline."""
    w = F.col(WEIGHT).cast("double")
    usable = interactions.where(
        F.col(USER_ID).isNotNull() & w.isNotNull() & ~F.isnan(w) & (w > 0) & (w < float("inf"))
    ).select(USER_ID, ITEM_ID, w.alias(WEIGHT))
    vectors = item_embeddings.where(F.col(EMBEDDING).isNotNull()).select(
        ITEM_ID, array_to_vector(F.col(EMBEDDING)).alias("_vec")
    )
    means = (
        usable.join(vectors, on=ITEM_ID, how="inner")
        .groupBy(USER_ID)
        .agg(Summarizer.mean(F.col("_vec"), F.col(WEIGHT)).alias("_mean"))
    )
    arr = vector_to_array(F.col("_mean"), dtype="float64")
    norm = F.sqrt(F.aggregate(arr, F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    unit = F.when(norm > 0, F.transform(arr, lambda x: (x / norm).cast("float"))).otherwise(
        F.transform(arr, lambda x: x.cast("float"))
    )
    return means.select(F.col(USER_ID), unit.alias(EMBEDDING))


def max_difference(spark: SparkSession, a: str, b: str) -> tuple[int, int, float]:
    """Rows of ``a``, rows of ``b`` and the largest absolute difference of a vector value."""
    left = spark.read.format("delta").load(a)
    right = spark.read.format("delta").load(b)
    diff = F.zip_with(F.col("l.embedding"), F.col("r.embedding"), lambda x, y: F.abs(x - y))
    worst = F.aggregate(diff, F.lit(0.0).cast("float"), lambda acc, x: F.greatest(acc, x))
    row = left.alias("l").join(right.alias("r"), USER_ID).agg(F.max(worst)).first()
    return left.count(), right.count(), float(row[0]) if row and row[0] is not None else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--out", default="/tmp/recspark-bench/user-embeddings")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["summarizer", "broadcast", "shuffle"],
        choices=["summarizer", "broadcast", "shuffle"],
    )
    ap.add_argument("--driver-memory", default="4g")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    cfg = load_config(None, [f"spark.driver_memory={args.driver_memory}"])
    spark = configure(SparkSession.builder, cfg.spark).getOrCreate()
    interactions = T.read(spark, args.warehouse, T.SILVER_INTERACTIONS)
    items = T.read(spark, args.warehouse, T.GOLD_ITEM_EMBEDDINGS)
    print(
        f"interactions {interactions.count():,d}  items {items.count():,d}  "
        f"shuffle partitions {cfg.spark.shuffle_partitions}  master {cfg.spark.master}",
        flush=True,
    )
    build = {
        "summarizer": lambda: summarizer_user_embeddings(interactions, items),
        "broadcast": lambda: user_embeddings(interactions, items, broadcast_items=True),
        "shuffle": lambda: user_embeddings(interactions, items, broadcast_items=False),
    }
    seconds: dict[str, float] = {}
    for name in args.variants:
        target = f"{args.out}/{name}"
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        build[name]().write.format("delta").save(target)
        seconds[name] = time.perf_counter() - t0
        print(f"{name:10s} {seconds[name]:8.1f} s", flush=True)
    base = args.variants[0]
    for name in args.variants[1:]:
        rows, base_rows, worst = max_difference(spark, f"{args.out}/{name}", f"{args.out}/{base}")
        print(
            f"{name:10s} {seconds[name]:8.1f} s  {seconds[base] / seconds[name]:5.2f}x faster "
            f"than {base}  users {rows:,d} ({base}: {base_rows:,d})  "
            f"largest difference {worst:.2e}"
        )
    spark.stop()


if __name__ == "__main__":
    main()
