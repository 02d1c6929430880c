"""Dense numbering and top-N without an unpartitioned window, against plain Python."""

from __future__ import annotations

import random

from chispa import assert_df_equality
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from recspark.numbering import dense_index, top_n

IDS = StructType([StructField("id", StringType(), False)])
SCORED = StructType([StructField("id", StringType(), False), StructField("s", DoubleType(), False)])


def test_dense_index_numbers_every_row_once_whatever_the_partitioning(spark: SparkSession) -> None:
    ids = [(f"i{j:03d}",) for j in range(57)]
    df = spark.createDataFrame(ids, IDS)
    got = dense_index(df, key="id", index_col="idx", start=1, buckets=5)
    rows = {r["id"]: r["idx"] for r in got.collect()}
    assert sorted(rows.values()) == list(range(1, 58))  # 1..N, no gap, no repeat
    assert rows.keys() == {i for (i,) in ids}
    shuffled = spark.createDataFrame(random.Random(3).sample(ids, len(ids)), IDS).repartition(7)
    again = dense_index(shuffled, key="id", index_col="idx", start=1, buckets=5)
    assert_df_equality(got, again, ignore_row_order=True)
    # Inside a bucket the numbers follow the key: one bucket numbers like a sort.
    one = dense_index(df, key="id", index_col="idx", buckets=1)
    assert [r["id"] for r in one.orderBy("idx").collect()] == sorted(i for (i,) in ids)


def test_top_n_equals_sorting_everything(spark: SparkSession) -> None:
    rng = random.Random(5)
    rows = [(f"i{j:02d}", float(rng.randint(0, 6))) for j in range(40)]  # many ties on s
    df = spark.createDataFrame(rows, SCORED).crossJoin(spark.range(1).select(F.lit(7).alias("n")))
    got = top_n(
        df, key="id", order=[F.desc("s"), F.asc("id")], n=F.col("n"), rank_col="r", buckets=4
    )
    expected = sorted(rows, key=lambda r: (-r[1], r[0]))[:7]
    assert [(r["id"], r["s"], r["r"]) for r in got.orderBy("r").collect()] == [
        (i, s, rank) for rank, (i, s) in enumerate(expected, start=1)
    ]
    # Every window keeps a partition key after optimisation (no "No Partition Defined").
    plan = got._jdf.queryExecution().optimizedPlan().toString()
    specs = plan.split("windowspecdefinition(")[1:]
    assert len(specs) == 2 and all(spec.startswith(("_bucket#", "_one#")) for spec in specs), plan
