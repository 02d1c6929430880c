"""Recommend transforms and job on tiny inline tables: contract invariants, exactness, fallbacks."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from recspark import tables
from recspark.config import Config
from recspark.errors import ModelError
from recspark.recommend import job
from recspark.recommend.config import RecommendConfig
from recspark.recommend.kernel import brute_force_topk
from recspark.recommend.scoring import REASON_POPULAR, ItemIndex, ScoreParams
from recspark.recommend.transforms import item_catalog, recommend
from recspark.schema import INTERACTIONS_SCHEMA, RECOMMENDATIONS_SCHEMA, SILVER_ITEMS_SCHEMA

T0 = datetime(2024, 1, 1, tzinfo=UTC)
VEC_SCHEMA = StructType(
    [StructField("id", StringType(), False), StructField("vector", ArrayType(FloatType()), False)]
)

# 8 items in two categories; i7 has no interactions (cold item).
ITEMS = [(f"i{j}", f"Title {j}", "drama" if j < 4 else "comedy") for j in range(8)]
# Small integer vectors: exact arithmetic and tied scores.
ITEM_VECS = np.array(
    [[2, 0], [1, 1], [0, 2], [1, 0], [2, 1], [1, 2], [0, 1], [3, 3]], dtype=np.float32
)
USER_VECS = {"u1": [1, 0], "u2": [0, 1], "u3": [1, 1], "u4": [-1, 0], "u5": [0, 0]}
HISTORY = {
    "u1": ["i0", "i1"],
    "u2": ["i2"],
    "u3": ["i0", "i1", "i2", "i3", "i4", "i5", "i6"],  # one eligible item left
    "u4": ["i3"],
    "u5": ["i4"],
    "u6": ["i4", "i5", "i0"],  # no vector: cold user, mostly comedy
}


def _interactions(spark: SparkSession) -> DataFrame:
    rows = [
        (u, i, 1.0 + (0.5 if (u == "u6" and i != "i0") else 0.0), 1, T0, T0)
        for u, items in HISTORY.items()
        for i in items
    ]
    return spark.createDataFrame(rows, INTERACTIONS_SCHEMA)


def _items(spark: SparkSession) -> DataFrame:
    rows = [(i, t, None, c, t, "h") for i, t, c in ITEMS]
    return spark.createDataFrame(rows, SILVER_ITEMS_SCHEMA)


def _item_vectors(spark: SparkSession) -> DataFrame:
    rows = [(f"i{j}", [float(x) for x in ITEM_VECS[j]]) for j in range(8)]
    return spark.createDataFrame(rows, VEC_SCHEMA).withColumnRenamed("id", "item_id")


def _user_vectors(spark: SparkSession) -> DataFrame:
    rows = [(u, [float(x) for x in v]) for u, v in USER_VECS.items()]
    return spark.createDataFrame(rows, VEC_SCHEMA).withColumnRenamed("id", "user_id")


def _run(spark: SparkSession, params: ScoreParams) -> DataFrame:
    inter = _interactions(spark)
    catalog = item_catalog(_item_vectors(spark), _items(spark), inter)
    index = ItemIndex.from_pandas(catalog.toPandas())
    return recommend(
        _user_vectors(spark),
        inter,
        catalog,
        index,
        params,
        model_version="m1",
        run_id="r1",
        generated_at=T0,
    )


def _by_user(df: DataFrame) -> dict[str, list[tuple[int, str, float, str]]]:
    out: dict[str, list[tuple[int, str, float, str]]] = defaultdict(list)
    for r in df.collect():
        out[r["user_id"]].append((r["rank"], r["item_id"], r["score"], r["reason"]))
    return {u: sorted(v) for u, v in out.items()}


def check_invariants(
    recs: dict[str, list[tuple[int, str, float, str]]], k: int, n_items: int
) -> None:
    assert set(recs) == set(HISTORY), "every user in interactions is covered"
    for user, rows in recs.items():
        seen = set(HISTORY[user])
        assert len(rows) == min(k, n_items - len(seen)), user
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), user
        items = [r[1] for r in rows]
        assert len(set(items)) == len(items), f"duplicates for {user}"
        assert not seen & set(items), f"seen items recommended to {user}"


def test_invariants_exactness_reasons_and_fallback(spark: SparkSession) -> None:
    k = 3
    df = _run(spark, ScoreParams(k=k, cold_item_slots=0))
    assert [f.name for f in df.schema] == [f.name for f in RECOMMENDATIONS_SCHEMA]
    assert [f.dataType for f in df.schema] == [f.dataType for f in RECOMMENDATIONS_SCHEMA]
    recs = _by_user(df)
    check_invariants(recs, k, 8)
    ids = [f"i{j}" for j in range(8)]
    for u, vec in USER_VECS.items():
        seen = {ids.index(i) for i in HISTORY[u]}
        ref = brute_force_topk(np.array([vec], np.float32), ITEM_VECS, k, [seen])[0]
        assert [(r[1], r[2]) for r in recs[u]] == [(ids[i], s) for i, s in ref], u
    # u1 = [1, 0]: i7 (3), then i4 (2), then i3/i5 tie at 1 -> i3 (lower index).
    assert [r[1] for r in recs["u1"]] == ["i7", "i4", "i3"]
    # Reason: the history item most similar (cosine) to i4 = [2, 1] among i0 = [2, 0]
    # (0.894) and i1 = [1, 1] (0.949) is i1; i7 has no interactions: a new item.
    assert recs["u1"][1][3] == "because you liked Title 1"
    assert recs["u2"][0][3] == "new item, because you liked Title 2"
    # u3 has seen all but i7.
    assert [r[1] for r in recs["u3"]] == ["i7"]
    # u6 (no vector): comedy is its main category (weights 1.5 + 1.5 vs 1.0), comedy items
    # i6, i7 unseen; popularity i6 = 1.0, i7 = 0.0; then the rest by popularity: i1 (2 users).
    assert [(r[1], r[3]) for r in recs["u6"]] == [
        ("i6", "popular in comedy"),
        ("i7", "popular in comedy"),
        ("i1", REASON_POPULAR),
    ]
    assert recs["u6"][0][2] == 1.0
    run_cols = df.select("model_version", "run_id", "generated_at").distinct().collect()
    assert [tuple(r) for r in run_cols] == [("m1", "r1", T0.replace(tzinfo=None))]


def test_blockwise_equals_one_block_in_spark(spark: SparkSession) -> None:
    one = _run(spark, ScoreParams(k=4, cold_item_slots=1))
    blocked = _run(spark, ScoreParams(k=4, cold_item_slots=1, user_block_size=1, item_block_size=3))
    assert_df_equality(one, blocked, ignore_row_order=True, ignore_nullable=True)
    # Groups of 2 items, user blocks scored by 2 threads side by side.
    grouped = _run(
        spark,
        ScoreParams(
            k=4,
            cold_item_slots=1,
            user_block_size=1,
            item_block_size=4,
            group_size=2,
            torch_threads=2,
        ),
    )
    assert_df_equality(one, grouped, ignore_row_order=True, ignore_nullable=True)


def test_cold_item_slot_and_no_exclusion(spark: SparkSession) -> None:
    # u2 = [0, 1]: best are i5 (2), i7 (3)... with k=2 i7 leads anyway. u4 = [-1, 0] ranks
    # cold i7 last (-3): a cold slot brings it in at the end of the list.
    recs = _by_user(_run(spark, ScoreParams(k=3, cold_item_slots=1)))
    check_invariants(recs, 3, 8)
    assert [r[1] for r in recs["u4"]] == ["i2", "i6", "i7"]
    assert recs["u4"][2][3].startswith("new item, because you liked")
    no_slot = _by_user(_run(spark, ScoreParams(k=3, cold_item_slots=0)))
    assert [r[1] for r in no_slot["u4"]] == ["i2", "i6", "i1"]
    # exclude_seen=False: seen items may come back; still k rows without duplicates.
    recs_all = _by_user(_run(spark, ScoreParams(k=3, cold_item_slots=0, exclude_seen=False)))
    assert [r[1] for r in recs_all["u1"]] == ["i7", "i0", "i4"]
    assert all(len(v) == 3 for v in recs_all.values())


def test_choose_model_version() -> None:
    assert job.choose_model_version(["v1", "v2"], ["v2", "v1", "v0"]) == "v2"
    with pytest.raises(ModelError, match="common"):
        job.choose_model_version(["v1"], ["v2"])


def test_job_writes_atomically_and_keeps_earlier_runs(spark: SparkSession, warehouse: str) -> None:
    from pyspark.sql import functions as F

    iv = _item_vectors(spark).withColumn("model_version", F.lit("m1"))
    uv = _user_vectors(spark).withColumn("model_version", F.lit("m1"))
    tables.overwrite(iv, warehouse, tables.GOLD_ITEM_VECTORS)
    tables.overwrite(uv, warehouse, tables.GOLD_USER_VECTORS)
    tables.overwrite(_interactions(spark), warehouse, tables.SILVER_INTERACTIONS)
    tables.overwrite(_items(spark), warehouse, tables.SILVER_ITEMS)
    cfg = Config(warehouse=warehouse, run_id="run-a", recommend=RecommendConfig(k=2))
    s1 = job.run(spark, cfg)
    assert s1["users"] == len(HISTORY) and s1["model_version"] == "m1"
    assert s1["table_version"] == 0
    s2 = job.run(spark, dataclasses.replace(cfg, run_id="run-b"))
    assert s2["table_version"] == 1 and s2["rows"] == s1["rows"]
    path = tables.table_path(warehouse, tables.GOLD_RECOMMENDATIONS)
    now = spark.read.format("delta").load(path)
    before = spark.read.format("delta").option("versionAsOf", 0).load(path)
    assert [r[0] for r in now.select("run_id").distinct().collect()] == ["run-b"]
    assert [r[0] for r in before.select("run_id").distinct().collect()] == ["run-a"]
    recs = _by_user(now)
    check_invariants(recs, 2, 8)


def test_item_index_rejects_ragged_vectors() -> None:
    import pandas as pd

    from recspark.errors import SchemaError

    pdf = pd.DataFrame({"item_id": ["a", "b"], "vector": [[1.0, 2.0], [1.0]]})
    with pytest.raises(SchemaError, match="one vector length"):
        ItemIndex.from_pandas(pdf)
    idx = ItemIndex.from_pandas(
        pd.DataFrame({"item_id": ["b", "a", "c"], "vector": [[1.0], [2.0], None]})
    )
    assert idx.ids == ("a", "b") and idx.vectors.tolist() == [[2.0], [1.0]]
