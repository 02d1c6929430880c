"""Evaluate's quality measures against numpy: diversity, cold recall, coverage, content baseline."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import ArrayType, FloatType, IntegerType, StringType, StructField, StructType

from recspark.evaluate import job
from recspark.evaluate.baselines import content_vectors
from recspark.evaluate.metrics import intra_list_diversity, ranking_metrics, unit_vectors
from recspark.recommend.scoring import ScoreParams

RECS_SCHEMA = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("item_id", StringType(), False),
        StructField("rank", IntegerType(), False),
    ]
)
PAIRS_SCHEMA = StructType(
    [StructField("user_id", StringType(), False), StructField("item_id", StringType(), False)]
)
EMB_SCHEMA = StructType(
    [
        StructField("item_id", StringType(), False),
        StructField("embedding", ArrayType(FloatType(), False), False),
    ]
)
N_ITEMS, DIM = 12, 6


def _embeddings(spark: SparkSession) -> tuple[DataFrame, np.ndarray]:
    rng = np.random.default_rng(11)
    emb = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    emb[3] *= 7.0  # not unit length: normalised before use
    df = spark.createDataFrame(
        [(f"i{i:02d}", [float(x) for x in emb[i]]) for i in range(N_ITEMS)], EMB_SCHEMA
    )
    return df, emb.astype(np.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_intra_list_diversity_matches_the_mean_pairwise_cosine_distance(
    spark: SparkSession,
) -> None:
    emb_df, emb = _embeddings(spark)
    unit = _unit(emb)
    lists = {"a": [0, 3, 5, 7], "b": [1, 2], "c": [4], "d": [6, 8, 9, 10, 11]}
    recs = spark.createDataFrame(
        [(u, f"i{i:02d}", r + 1) for u, items in lists.items() for r, i in enumerate(items)],
        RECS_SCHEMA,
    )
    for k in (2, 4):
        per_list = []
        for items in lists.values():
            top = items[:k]
            if len(top) < 2:
                continue  # a one-item list has no pairs
            d = [1 - unit[i] @ unit[j] for i in top for j in top if i != j]
            per_list.append(float(np.mean(d)))
        got = intra_list_diversity(recs, unit_vectors(emb_df), k=k).collect()[0]["diversity"]
        assert got == pytest.approx(float(np.mean(per_list)), abs=1e-9)


def test_cold_recall_coverage_and_diversity_among_the_metrics(spark: SparkSession) -> None:
    emb_df, emb = _embeddings(spark)
    unit = _unit(emb)
    cold = {"i09", "i10", "i11"}
    preds = {"a": ["i09", "i10", "i11"], "b": ["i02", "i03", "i04"], "c": ["i11", "i05", "i06"]}
    truth = {"a": {"i10", "i11", "i01"}, "b": {"i09"}, "c": {"i05"}}  # c has no cold truth
    recs = spark.createDataFrame(
        [(u, i, r + 1) for u, p in preds.items() for r, i in enumerate(p)], RECS_SCHEMA
    )
    tr = spark.createDataFrame([(u, i) for u, s in truth.items() for i in s], PAIRS_SCHEMA)
    catalog = spark.createDataFrame([(f"i{i:02d}",) for i in range(N_ITEMS)], "item_id string")
    cold_df = spark.createDataFrame([(i,) for i in sorted(cold)], "item_id string")
    got = {
        r["metric"]: r["value"]
        for r in ranking_metrics(
            recs, tr, catalog, k=2, cold_items=cold_df, embeddings=unit_vectors(emb_df)
        ).collect()
    }
    # Cold recall@2 over the users with held-out cold items: a finds 1 of {i10, i11}, b 0 of
    # {i09}; c has none and does not count.
    ref_cold = []
    for u, rel in truth.items():
        rel_cold = rel & cold
        if rel_cold:
            ref_cold.append(len(set(preds[u][:2]) & rel_cold) / len(rel_cold))
    assert got["cold_recall"] == pytest.approx(float(np.mean(ref_cold)))
    top = {i for p in preds.values() for i in p[:2]}
    assert got["coverage"] == pytest.approx(len(top) / N_ITEMS)
    div = [1 - unit[int(p[0][1:])] @ unit[int(p[1][1:])] for p in preds.values()]
    assert got["diversity"] == pytest.approx(float(np.mean(div)), abs=1e-9)
    assert got["cold_recall"] == pytest.approx(0.25)
    # With k=3, a's list holds i10 and i11: cold recall 1 for a, 0 for b.
    got3 = {
        r["metric"]: r["value"]
        for r in ranking_metrics(recs, tr, catalog, k=3, cold_items=cold_df).collect()
    }
    assert got3["cold_recall"] == pytest.approx(0.5)
    assert "diversity" not in got3


def test_content_baseline_matches_a_numpy_reference(spark: SparkSession) -> None:
    emb_df, emb = _embeddings(spark)
    unit = _unit(emb)
    history = {"u1": [0, 1, 2], "u2": [5], "u3": [3, 9, 10, 11]}
    train = spark.createDataFrame(
        [(u, f"i{i:02d}", 1.0) for u, items in history.items() for i in items],
        "user_id string, item_id string, weight double",
    )
    uv, iv = content_vectors(train, emb_df)
    got_u = {r["user_id"]: np.array(r["vector"]) for r in uv.collect()}
    for u, items in history.items():
        mean = unit[items].mean(0)
        assert got_u[u] == pytest.approx(mean / np.linalg.norm(mean), abs=1e-6)
    # Vectors too wide to broadcast are joined by item: the same users' vectors.
    joined, _ = content_vectors(train, emb_df, broadcast_items=False)
    for r in joined.collect():
        assert np.array(r["vector"]) == pytest.approx(got_u[r["user_id"]], abs=1e-6)
    assert joined.count() == len(history)
    items = spark.createDataFrame(
        [(f"i{i:02d}", f"T{i}", "c") for i in range(N_ITEMS)],
        "item_id string, title string, category string",
    )
    users = spark.createDataFrame([(u,) for u in history], "user_id string")
    k = 4
    recs = job.kernel_recs(
        uv, iv, train, items, users, ScoreParams(k=k, reasons=False), "content", "r1"
    )
    got: dict[str, list[str]] = {}
    for r in recs.orderBy("user_id", "rank").collect():
        got.setdefault(r["user_id"], []).append(r["item_id"])
    for u, seen in history.items():
        mean = unit[seen].mean(0)
        cos = unit @ mean / np.linalg.norm(mean)
        order = [int(i) for i in np.argsort(-cos, kind="stable") if int(i) not in seen][:k]
        assert got[u] == [f"i{i:02d}" for i in order], u
