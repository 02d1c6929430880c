"""Evaluate: holdout split, metrics against RankingEvaluator and numpy, baselines, the job."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType

from recspark import tables
from recspark.config import Config
from recspark.evaluate import job
from recspark.evaluate.baselines import AlsParams, als_grid, als_next, popularity_recs
from recspark.evaluate.config import EvaluateConfig
from recspark.evaluate.metrics import ranking_metrics
from recspark.evaluate.split import chronological_holdout, holdout_count, train_events
from recspark.recommend.config import RecommendConfig
from recspark.reporting.data import MetricRow, markdown_table
from recspark.reporting.writer import report_folder
from recspark.schema import INTERACTIONS_SCHEMA, SILVER_ITEMS_SCHEMA
from recspark.storage import locations

T0 = datetime(2024, 1, 1, tzinfo=UTC)
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


def np_metrics(preds: dict[str, list[str]], truth: dict[str, set[str]], k: int) -> dict[str, float]:
    """Reference: the textbook definitions, one user at a time."""
    acc: dict[str, list[float]] = {
        m: [] for m in ("precision", "recall", "ndcg", "map", "hit_rate")
    }
    for u, rel in truth.items():
        p = preds.get(u, [])[:k]
        hits = np.array([1.0 if i in rel else 0.0 for i in p])
        disc = 1.0 / np.log2(np.arange(2, len(p) + 2))
        idcg = float(np.sum(1.0 / np.log2(np.arange(2, min(len(rel), k) + 2))))
        prec_at = np.cumsum(hits) / np.arange(1, len(p) + 1) if len(p) else np.zeros(0)
        acc["precision"].append(hits.sum() / k)
        acc["recall"].append(hits.sum() / len(rel))
        acc["ndcg"].append(float((hits * disc).sum()) / idcg)
        acc["map"].append(float((prec_at * hits).sum()) / min(len(rel), k))
        acc["hit_rate"].append(1.0 if hits.sum() > 0 else 0.0)
    return {m: float(np.mean(v)) for m, v in acc.items()}


def test_holdout_count() -> None:
    assert holdout_count(10, 0.2) == 2
    assert holdout_count(3, 0.2) == 1  # at least one
    assert holdout_count(1, 0.2) == 0  # keeps min_train
    assert holdout_count(5, 0.5, min_train=4) == 1
    with pytest.raises(ValueError, match="fraction"):
        holdout_count(3, 1.0)


def test_split_identity_names_the_cut() -> None:
    """Evaluations are comparable (promotion) and share a model only on the same cut."""
    cut = job.split_identity(3, 0.2, 1)
    assert cut == "silver/interactions@v3,holdout_fraction=0.2,min_train=1"
    others = [
        job.split_identity(4, 0.2, 1),
        job.split_identity(3, 0.3, 1),
        job.split_identity(3, 0.2, 2),
        job.split_identity(3, 0.2, 1, validation_only=True),
    ]
    assert len({cut, *others}) == 5


def test_chronological_holdout_and_train_events(spark: SparkSession) -> None:
    rows = []
    for u, n in (("a", 10), ("b", 3), ("c", 1)):
        for j in range(n):
            ts = T0 + timedelta(days=j if u != "b" else 0)  # b: all tied -> item id order
            rows.append((u, f"i{j:02d}", 1.0, 1, ts, ts))
    inter = spark.createDataFrame(rows, INTERACTIONS_SCHEMA)
    split = chronological_holdout(inter, fraction=0.2)
    test = sorted(
        (r[0], r[1]) for r in split.where("split = 'test'").select("user_id", "item_id").collect()
    )
    assert test == [("a", "i08"), ("a", "i09"), ("b", "i02")]
    assert split.count() == 14
    events = spark.createDataFrame([("a", "i09"), ("a", "i01"), ("c", "i00")], PAIRS_SCHEMA)
    kept = sorted(tuple(r) for r in train_events(events, split).collect())
    assert kept == [("a", "i01"), ("c", "i00")]


def test_metrics_match_ranking_evaluator_and_numpy(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    preds: dict[str, list[str]] = {}
    truth: dict[str, set[str]] = {}
    for u in range(12):
        items = [str(int(i)) for i in rng.permutation(30)]
        preds[f"u{u}"] = items[: int(rng.integers(2, 8))]  # lists shorter than k too
        truth[f"u{u}"] = {
            str(int(i)) for i in rng.choice(30, size=int(rng.integers(1, 9)), replace=False)
        }
    preds["u0"] = list(truth["u0"])[:3]  # a perfect head
    del preds["u11"]  # a test user without recommendations scores 0
    recs = spark.createDataFrame(
        [(u, i, r + 1) for u, p in preds.items() for i, r in zip(p, range(len(p)), strict=True)],
        RECS_SCHEMA,
    )
    tr = spark.createDataFrame([(u, i) for u, s in truth.items() for i in s], PAIRS_SCHEMA)
    catalog = spark.createDataFrame([(f"{i}",) for i in range(30)], "item_id string")
    cold = spark.createDataFrame([("1",), ("2",)], "item_id string")
    ev_in = spark.createDataFrame(
        [
            ([float(i) for i in preds.get(u, [])], [float(i) for i in sorted(truth[u], key=int)])
            for u in truth
        ],
        "prediction array<double>, label array<double>",
    )
    for k in (3, 5):
        got = {
            r["metric"]: r["value"]
            for r in ranking_metrics(recs, tr, catalog, k=k, cold_items=cold).collect()
        }
        ref = np_metrics(preds, truth, k)
        for m in ("precision", "recall", "ndcg", "map", "hit_rate"):
            assert got[m] == pytest.approx(ref[m], abs=1e-12), (m, k)
        for m, name in (
            ("precision", "precisionAtK"),
            ("recall", "recallAtK"),
            ("ndcg", "ndcgAtK"),
            ("map", "meanAveragePrecisionAtK"),
        ):
            ev = RankingEvaluator(metricName=name, k=k).evaluate(ev_in)  # type: ignore[arg-type]
            assert got[m] == pytest.approx(ev, abs=1e-12), (m, k)
        top = [(u, i) for u, p in preds.items() for i in p[:k]]
        assert got["coverage"] == pytest.approx(len({i for _, i in top}) / 30)
        assert got["cold_share"] == pytest.approx(sum(i in {"1", "2"} for _, i in top) / len(top))
        assert got["cold_items"] == len({i for _, i in top} & {"1", "2"})


def test_popularity_baseline(spark: SparkSession) -> None:
    train = spark.createDataFrame(
        [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("c", "z"), ("d", "w")],
        PAIRS_SCHEMA,
    )
    users = spark.createDataFrame([("a",), ("d",), ("new",)], "user_id string")
    got = {}
    for r in popularity_recs(train, users, k=2).collect():
        got.setdefault(r["user_id"], []).append((r["rank"], r["item_id"], r["score"]))
    # popularity: x 3, y 2, then w 1 and z 1 (item id order).
    assert sorted(got["a"]) == [(1, "w", 1.0), (2, "z", 1.0)]
    assert sorted(got["d"]) == [(1, "x", 3.0), (2, "y", 2.0)]
    assert sorted(got["new"]) == [(1, "x", 3.0), (2, "y", 2.0)]


def test_report_helpers(tmp_path: Path) -> None:
    rows = [MetricRow("recspark", "ndcg", 10, 0.25), MetricRow("als", "ndcg", 10, 0.125)]
    table = markdown_table(rows, ["recspark", "als", "popularity"])
    assert "| ndcg@10 | 0.2500 | 0.1250 |  |" in table
    # One writer for every file system: an object store gets its report too.
    assert report_folder(locations("s3a://bucket/wh", None), "r") == "s3a://bucket/wh/reports/r"
    assert report_folder(locations("file:/tmp/wh", None), "r") == "file:/tmp/wh/reports/r"
    assert report_folder(locations("c.s", "/Volumes/c/s/v"), "r") == "/Volumes/c/s/v/reports/r"
    assert [(p.rank, p.reg) for p in als_grid((4, 8), (0.1,), 5, 1.0, 1)] == [(4, 0.1), (8, 0.1)]


def test_als_search_steps_beyond_the_edge_its_best_point_is_on() -> None:
    assert als_next({}, max_rank=256) is None
    # best at the largest rank and reg tried: the rank doubles first
    scores = {(32, 0.1, 1.0): 0.10, (64, 0.1, 1.0): 0.20, (64, 0.3, 1.0): 0.25}
    assert als_next(scores, max_rank=256) == (128, 0.3, 1.0)
    # the doubled rank did worse: the reg beyond the largest one tried at rank 64
    scores[(128, 0.3, 1.0)] = 0.2
    assert als_next(scores, max_rank=256) == (64, 0.9, 1.0)
    # that did worse too (0.1 below is tried): alpha, down then up
    scores[(64, 0.9, 1.0)] = 0.2
    assert als_next(scores, max_rank=256) == (64, 0.3, 0.1)
    scores[(64, 0.3, 0.1)] = 0.2
    assert als_next(scores, max_rank=256) == (64, 0.3, 10.0)
    # best at the smallest reg of its rank, and the rank capped: reg / 3
    low = {(64, 0.1, 1.0): 0.3, (64, 0.3, 1.0): 0.2, (32, 0.1, 1.0): 0.1}
    assert als_next(low, max_rank=64) == (64, 0.0333333, 1.0)
    # inside what was tried on every side: done
    inside = {
        (32, 0.1, 1.0): 0.1,
        (32, 0.3, 1.0): 0.2,
        (32, 0.9, 1.0): 0.15,
        (64, 0.3, 1.0): 0.18,
        (32, 0.3, 0.1): 0.1,
        (32, 0.3, 10.0): 0.1,
    }
    assert als_next(inside, max_rank=256) is None
    # ties go to the smaller rank, then the smaller reg
    tie = {(64, 0.3, 1.0): 0.2, (32, 0.3, 1.0): 0.2, (32, 0.1, 1.0): 0.1}
    assert als_next(tie, max_rank=32) == (32, 0.9, 1.0)


def test_select_als_extends_the_grid_and_returns_the_best_point(spark: SparkSession) -> None:
    train = _synthetic_interactions(spark)
    items = train.select("item_id", F.col("item_id").alias("title"), F.lit("c").alias("category"))
    items = items.distinct()
    grid = [AlsParams(2, 0.1, max_iter=3, seed=1), AlsParams(2, 0.3, max_iter=3, seed=1)]
    params = job.eval_score_params(RecommendConfig(k=5), k=5, exclude_seen=True, cold_items=False)
    kw = dict(fraction=0.25, min_train=1, params=params, run_id="r")
    catalog = items.select("item_id")
    best, scores = job.select_als(train, items, catalog, grid, extend=1, max_rank=4, **kw)
    assert len(scores) == 3  # the grid and one step beyond its edge
    assert {"rank=2,reg=0.1,alpha=1.0", "rank=2,reg=0.3,alpha=1.0"} <= scores.keys()
    assert scores[f"rank={best.rank},reg={best.reg},alpha={best.alpha}"] == max(scores.values())
    assert (best.max_iter, best.seed) == (3, 1)


def _synthetic_interactions(spark: SparkSession) -> DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        taste = u % 3
        items = [i for i in range(24) if i % 3 == taste]
        for j, i in enumerate(rng.permutation(items)[: int(rng.integers(4, 8))]):
            ts = T0 + timedelta(hours=u * 100 + j)
            rows.append((f"u{u:02d}", f"i{int(i):02d}", 1.0, 1, ts, ts))
    return spark.createDataFrame(rows, INTERACTIONS_SCHEMA)


def test_evaluate_job_baselines(spark: SparkSession, warehouse: str) -> None:
    inter = _synthetic_interactions(spark)
    items = spark.createDataFrame(
        [(f"i{i:02d}", f"T{i}", None, f"c{i % 3}", f"T{i}", "h") for i in range(26)],
        SILVER_ITEMS_SCHEMA,
    )
    tables.overwrite(inter, warehouse, tables.SILVER_INTERACTIONS)
    tables.overwrite(items, warehouse, tables.SILVER_ITEMS)
    cfg = Config(
        warehouse=warehouse,
        run_id="eval-1",
        recommend=RecommendConfig(k=5),
        evaluate=EvaluateConfig(
            models=("popularity", "als"),
            ks=(3, 5),
            als_ranks=(3,),
            als_reg=(0.1,),
            als_max_iter=5,
            holdout_fraction=0.25,
        ),
    )
    summary = job.run(spark, cfg)
    metrics = spark.read.format("delta").load(tables.table_path(warehouse, tables.GOLD_METRICS))
    assert metrics.count() == 2 * 2 * 9  # models x ks x metrics (no embeddings: no diversity)
    assert metrics.select("run_id").distinct().collect()[0][0] == "eval-1"
    # ALS learns the three taste groups; popularity cannot: ALS wins on NDCG.
    m = summary["metrics"]
    assert m["als/ndcg@5"] > m["popularity/ndcg@5"]
    # items i24, i25 never interacted: cold, never recommended by either baseline.
    assert m["als/cold_items@5"] == 0 and m["popularity/cold_items@5"] == 0
    assert Path(summary["report"]).is_file()
    assert (Path(summary["report"]).parent / "metrics.png").stat().st_size > 1000
    assert list(summary["seconds_by_model"]) == ["popularity", "als"]
    assert all(s > 0 for s in summary["seconds_by_model"].values())
    assert math.isfinite(float(metrics.agg(F.sum("value")).first()[0]))
