"""End to end: the real stage jobs, in pipeline order, on a temporary warehouse."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.cli import PIPELINE, run_stages
from recspark.config import load_config
from recspark.embed.config import EmbedConfig
from recspark.evaluate.config import EvaluateConfig
from recspark.recommend.config import RecommendConfig
from recspark.train.config import TrainConfig


@pytest.mark.slow
def test_pipeline_end_to_end_keeps_the_contract(spark: SparkSession, tmp_path: Path) -> None:
    """A new user's first run: a small generated input (2,000 events, 200 items, 100 users)
    and the defaults of every stage (train: Horovod with 2 processes, 8 epochs), so that small
    inputs must train with the default train.num_proc. Only evaluate's ALS grid is cut to one
    small fit: with the default grid (4 fits of 10 iterations) evaluate alone ran over 20 min
    on a loaded 2-core machine, and the grid is not what this test is about."""
    wh = str(tmp_path / "wh")
    gen = tmp_path / "input"
    cfg = load_config(
        None,
        [
            f"warehouse={wh}",
            f"generate.output={gen}",
            f"input.events={gen}/events",
            f"input.items={gen}/items",
            "generate.events=2000",
            "generate.users=100",
            "generate.items=200",
            "generate.bot_users=0",
            "evaluate.als_ranks=[8]",
            "evaluate.als_reg=[0.1]",
            "evaluate.als_max_iter=5",
            "run_id=e2e",
        ],
    )
    assert (cfg.train, cfg.embed, cfg.recommend) == (
        TrainConfig(),
        EmbedConfig(),
        RecommendConfig(),
    )
    small_als = {"als_ranks": (8,), "als_reg": (0.1,), "als_max_iter": 5}
    assert cfg.evaluate == dataclasses.replace(EvaluateConfig(), **small_als)
    k = cfg.recommend.k
    summaries = run_stages(["generate", *PIPELINE], cfg, spark=spark)
    assert [s.stage for s in summaries] == ["generate", *PIPELINE]
    train = next(s.figures for s in summaries if s.stage == "train")
    assert train["metrics"]["train_examples"] + train["metrics"]["valid_examples"] > 0

    read = lambda name: spark.read.format("delta").load(f"{wh}/{name}")  # noqa: E731
    interactions = read("silver/interactions")
    recs = read("gold/recommendations")
    items = read("silver/items")
    assert set(recs.columns) >= {f.name for f in S.RECOMMENDATIONS_SCHEMA.fields}

    users = {r[0] for r in interactions.select(S.USER_ID).distinct().collect()}
    rec_rows = recs.collect()
    assert {r[S.USER_ID] for r in rec_rows} == users  # every user covered
    seen: dict[str, set[str]] = {}
    for r in interactions.select(S.USER_ID, S.ITEM_ID).collect():
        seen.setdefault(r[0], set()).add(r[1])
    n_items = items.count()
    by_user: dict[str, list] = {}
    for r in rec_rows:
        by_user.setdefault(r[S.USER_ID], []).append(r)
    for user, rows in by_user.items():
        ranks = sorted(r[S.RANK] for r in rows)
        assert ranks == list(range(1, len(rows) + 1)), user  # 1..n, no gaps
        listed = [r[S.ITEM_ID] for r in rows]
        assert len(set(listed)) == len(listed), user  # no item twice
        assert not set(listed) & seen[user], user  # nothing already seen
        assert len(rows) == min(k, n_items - len(seen[user])), user
        assert all(r[S.REASON] for r in rows)
        assert {r[S.RUN_ID] for r in rows} == {"e2e"}

    metrics = read("gold/metrics")
    models = {r[0] for r in metrics.select(S.MODEL).distinct().collect()}
    assert {"recspark", "popularity"} <= models
    ndcg = metrics.where((F.col(S.METRIC) == "ndcg") & (F.col(S.K) == 10))
    assert ndcg.count() >= 2

    # Evaluating the same tables again reuses the model evaluate trained on this cut (its
    # folder is named by the settings, the inputs' versions and the cut), with the same numbers.
    first = next(s.figures for s in summaries if s.stage == "evaluate")
    folder = Path(wh) / "models" / "evaluate" / first["model_versions"]["recspark"]
    trained_at = (folder / "model.pt").stat().st_mtime_ns
    again = run_stages(["evaluate"], dataclasses.replace(cfg, run_id="e2e-again"), spark=spark)
    second = again[0].figures
    assert second["model_versions"]["recspark"] == first["model_versions"]["recspark"]
    assert list(folder.parent.iterdir()) == [folder]
    assert (folder / "model.pt").stat().st_mtime_ns == trained_at  # not trained again
    recspark_metrics = lambda f: {  # noqa: E731
        k: v for k, v in f["metrics"].items() if k.startswith("recspark/")
    }
    assert recspark_metrics(second) == recspark_metrics(first)
