"""MLflow: the store, the registered pyfunc, recommend by alias, evaluation runs, promotion.

The slow tests share one tiny fitted warehouse (module fixture: 1 epoch, dim 8, local launcher)
whose MLflow store is the default SQLite one under the warehouse.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from recspark import tables
from recspark.config import Config, MlflowConfig, load_config
from recspark.errors import ConfigError, DependencyError, ModelError
from recspark.evaluate.config import EvaluateConfig
from recspark.recommend.config import RecommendConfig
from recspark.recommend.kernel import brute_force_topk
from recspark.registry.models import parse_model_uri
from recspark.registry.promote import Decision, Evaluation, decide
from recspark.registry.scorer import ITEM_IDS, SCORES, Scorer, model_settings
from recspark.registry.store import check, store, unreachable_message
from recspark.schema import (
    CATEGORY,
    IS_COLD,
    ITEM_ID,
    METRICS_SCHEMA,
    POPULARITY,
    RANK,
    SCORE,
    TITLE,
    USER_ID,
    VECTOR,
)
from recspark.storage import locations
from recspark.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- config, store


def test_mlflow_section_replaces_the_train_keys(tmp_path: Path) -> None:
    cfg = load_config(None, ["mlflow.tracking_uri=http://h:5000", "mlflow.timeout=3"])
    assert cfg.mlflow.tracking_uri == "http://h:5000" and cfg.mlflow.timeout == 3.0
    assert cfg.mlflow.serving_alias == "serving" and cfg.mlflow.champion_alias == "champion"
    with pytest.raises(ConfigError, match=r"unknown key 'train\.mlflow_tracking_uri'"):
        load_config(None, ["train.mlflow_tracking_uri=x"])
    with pytest.raises(ConfigError, match="recommend"):
        load_config(None, ["recommend.model=/some/folder"])
    db = load_config(ROOT / "conf" / "databricks.yaml").mlflow
    assert (db.tracking_uri, db.registry_uri) == ("databricks", "databricks-uc")
    assert db.registered_model.count(".") == 2  # Unity Catalog: catalog.schema.model


def test_default_store_is_sqlite_under_the_file_location(tmp_path: Path) -> None:
    s = store(MlflowConfig(), locations(str(tmp_path / "wh"), None))
    assert s.tracking_uri == f"sqlite:///{tmp_path}/wh/mlflow/mlflow.db"
    assert s.registry_uri == s.tracking_uri
    assert s.artifact_location == f"file://{tmp_path}/wh/mlflow/artifacts"
    vol = store(MlflowConfig(), locations("main.recspark", "/Volumes/main/recspark/files"))
    assert vol.tracking_uri == "sqlite:////Volumes/main/recspark/files/mlflow/mlflow.db"
    remote = store(
        MlflowConfig(tracking_uri="databricks", registry_uri="databricks-uc"),
        locations("s3a://b/wh", None),
    )
    assert (remote.tracking_uri, remote.registry_uri, remote.artifact_location) == (
        "databricks",
        "databricks-uc",
        None,
    )
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri"):
        store(MlflowConfig(), locations("s3a://b/wh", None))


def test_unreachable_message_is_one_line_naming_the_uri() -> None:
    msg = unreachable_message("http://me:S3CRET@host:5000", "Connection refused\n  at x")
    assert "\n" not in msg
    assert "http://me:***@host:5000" in msg and "S3CRET" not in msg
    assert "Connection refused at x" in msg and "mlflow.enabled: false" in msg


def test_unreachable_tracking_uri_stops_the_run_with_one_line(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    args = [
        "train",
        "--set",
        f"warehouse={wh}",
        "--set",
        "mlflow.tracking_uri=http://127.0.0.1:9",
        "--set",
        "mlflow.timeout=2",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "recspark.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == DependencyError.exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("recspark: error: MLflow tracking store http://127.0.0.1:9 ")
    assert "cannot be reached" in lines[0]
    # Tracking off: the same store is not even looked at.
    cfg = load_config(None, [f"warehouse={wh}", "mlflow.tracking_uri=http://127.0.0.1:9"])
    from recspark.cli import preflight

    with pytest.raises(DependencyError, match=r"127\.0\.0\.1:9"):
        preflight(["recommend"], cfg)
    preflight(["recommend"], dataclasses.replace(cfg, mlflow=MlflowConfig(enabled=False)))
    preflight(["ingest"], cfg)  # a stage that tracks nothing


def test_local_store_check_creates_the_database(tmp_path: Path) -> None:
    s = store(MlflowConfig(), locations(str(tmp_path / "wh"), None))
    check(s)
    assert (tmp_path / "wh" / "mlflow" / "mlflow.db").is_file()


def test_parse_model_uri() -> None:
    assert parse_model_uri("models:/recspark@serving") == ("recspark", "serving", None)
    assert parse_model_uri("models:/main.s.m/3") == ("main.s.m", None, "3")
    for bad in ("models:/x", "models:/x@", "runs:/abc/model", "models:/x/v1"):
        with pytest.raises(ConfigError, match=r"recommend\.model"):
            parse_model_uri(bad)


# ----------------------------------------------------------------------------- promotion


def test_promotion_only_when_the_candidate_is_better() -> None:
    split = "silver/interactions@v3,holdout_fraction=0.2,min_train=1"
    cand = Evaluation("2", 0.30, split)
    assert decide(cand, None).promote  # no champion yet
    assert decide(cand, Evaluation("1", 0.25, split)).promote
    assert not decide(cand, Evaluation("1", 0.30, split)).promote  # a tie is not better
    assert not decide(cand, Evaluation("1", 0.35, split)).promote
    other = decide(cand, Evaluation("1", 0.10, "silver/interactions@v2,holdout_fraction=0.2"))
    assert other == Decision(False, other.reason) and "different splits" in other.reason
    assert not decide(Evaluation("2", None, split), Evaluation("1", 0.1, split)).promote
    assert not decide(cand, Evaluation("1", None, split)).promote
    assert not decide(cand, Evaluation("2", 0.30, split)).promote  # already the champion
    assert "\n" not in decide(cand, Evaluation("1", 0.25, split)).reason


# ----------------------------------------------------------------------------- the scorer


def _scorer(rng: np.random.Generator, n: int = 40, d: int = 6, **rec: Any) -> Scorer:
    ids = [f"i{i:02d}" for i in range(n)]
    vecs = rng.standard_normal((n, d)).astype(np.float32)
    items = pd.DataFrame(
        {
            ITEM_ID: ids,
            VECTOR: [v for v in vecs],
            TITLE: [f"T{i}" for i in ids],
            CATEGORY: ["c"] * n,
            IS_COLD: [False] * n,
            POPULARITY: [float(n - i) for i in range(n)],
        }
    )
    settings = model_settings("v1", 3, 2.0, {"view": 1.0}, RecommendConfig(**rec))
    return Scorer.from_frames(items, settings)


def test_scorer_user_tower_and_top_k_match_numpy() -> None:
    rng = np.random.default_rng(0)
    sc = _scorer(rng, k=5, cold_item_slots=0, item_block_size=8, group_size=4)
    hist = ["i03", "i07", "i03", "i11", "i20", "nope"]
    # distinct, first place kept: i03 i07 i11 i20 nope -> newest 3: i11 i20 nope (ages 2 1 0)
    (vec,) = sc.user_vectors([hist])
    assert vec is not None
    w = np.array([0.5 ** (2 / 2.0), 0.5 ** (1 / 2.0)])
    ref = (w[:, None] * sc.index.vectors[[11, 20]].astype(np.float64)).sum(0) / w.sum()
    np.testing.assert_allclose(vec, ref.astype(np.float32), rtol=1e-6)
    out = sc.top_k([hist, [], ["unknown"]])
    assert list(out.columns) == [ITEM_IDS, SCORES]
    ref_top = brute_force_topk(vec[None, :], sc.index.vectors, 5, [{3, 7, 11, 20}])[0]
    assert out[ITEM_IDS][0] == [sc.index.ids[i] for i, _ in ref_top]
    np.testing.assert_allclose(out[SCORES][0], [v for _, v in ref_top], rtol=1e-5)
    # Nothing known: the most popular items (popularity descending).
    assert out[ITEM_IDS][1] == ["i00", "i01", "i02", "i03", "i04"]
    assert out[ITEM_IDS][2] == ["i00", "i01", "i02", "i03", "i04"]
    assert sc.top_k([["i00"]], k=2)[ITEM_IDS][0] == sc.top_k([["i00"]], k=3)[ITEM_IDS][0][:2]
    keep = sc.top_k([hist], exclude_history=False)[ITEM_IDS][0]
    assert keep == [
        sc.index.ids[i] for i, _ in brute_force_topk(vec[None, :], sc.index.vectors, 5)[0]
    ]


def test_scorer_adds_a_known_users_own_vector() -> None:
    rng = np.random.default_rng(1)
    base = _scorer(rng, k=5, cold_item_slots=0, item_block_size=8, group_size=4)
    own = rng.standard_normal((2, 6)).astype(np.float32)
    users = pd.DataFrame({USER_ID: ["ua", "ub"], VECTOR: list(own)})
    items = pd.DataFrame(
        {
            ITEM_ID: list(base.index.ids),
            VECTOR: list(base.index.vectors),
            TITLE: ["t"] * 40,
            CATEGORY: ["c"] * 40,
            IS_COLD: [False] * 40,
            POPULARITY: list(base.popularity),
        }
    )
    sc = Scorer.from_frames(items, base.settings, users)
    hist = ["i01", "i02"]
    (plain,) = base.user_vectors([hist])
    got = sc.user_vectors([hist, hist, hist, []], ["ub", "nobody", None, "ua"])
    assert plain is not None
    np.testing.assert_allclose(got[0], plain + own[1], rtol=1e-6)
    np.testing.assert_allclose(got[1], plain, rtol=1e-6)  # unknown user: the history only
    np.testing.assert_allclose(got[2], plain, rtol=1e-6)
    assert got[3] is None  # no history: the most popular items, as without user vectors
    ref = brute_force_topk((plain + own[1])[None, :], sc.index.vectors, 5, [{1, 2}])[0]
    assert sc.top_k([hist], users=["ub"])[ITEM_IDS][0] == [sc.index.ids[i] for i, _ in ref]
    frame = sc.own_vectors_frame()
    assert frame is not None and list(frame[USER_ID]) == ["ua", "ub"]
    assert base.own_vectors_frame() is None


# ----------------------------------------------------------------------------- slow: one fit

EVENTS = StructType(
    [
        StructField("user_id", StringType(), False),
        StructField("item_id", StringType(), False),
        StructField("event_type", StringType(), False),
        StructField("event_ts", TimestampType(), False),
    ]
)
ITEMS = StructType(
    [
        StructField("item_id", StringType(), False),
        StructField("title", StringType(), False),
        StructField("category", StringType()),
    ]
)
EMBS = "item_id string, embedding array<float>"
T0 = datetime(2024, 1, 1)
RUN = "mlt"


def _world(spark: SparkSession) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Four categories of eight items (one never seen: a cold item); users stay in one."""
    rng = np.random.default_rng(1)
    events = []
    for c in range(4):
        for u in range(8):
            for t, j in enumerate(rng.permutation(7)[:5]):
                etype = "purchase" if t % 2 else "view"
                ts = T0 + timedelta(days=2 * t, hours=u + c)
                events.append((f"u{c}_{u}", f"c{c}i{j}", etype, ts))
    items = [(f"c{c}i{j}", f"Item {c}-{j}", f"cat{c}") for c in range(4) for j in range(8)]
    embs = []
    for c in range(4):
        for j in range(8):
            v = 0.3 * rng.standard_normal(8)
            v[c] += 1.0
            embs.append((f"c{c}i{j}", [float(x) for x in v]))
    return (
        spark.createDataFrame(events, EVENTS),
        spark.createDataFrame(items, ITEMS),
        spark.createDataFrame(embs, EMBS),
    )


def _cfg(wh: str, **sections: Any) -> Config:
    train = TrainConfig(
        launcher="local",
        num_proc=1,
        epochs=1,
        batch_size=16,
        dim=8,
        history_len=4,
        recency_half_life=2.0,
        validation_days=2.0,
        negatives=4,
        reader_pool="dummy",
        data_files=1,
        torch_threads=1,
        # users' own vectors: the registered model must score as the gold tables do
        user_embedding="on",
    )
    base: dict[str, Any] = {
        "warehouse": wh,
        "seed": 3,
        "run_id": RUN,
        "train": train,
        "recommend": RecommendConfig(k=4, cold_item_slots=1, item_block_size=8, group_size=4),
        "evaluate": EvaluateConfig(
            models=("popularity", "als"), ks=(10,), als_ranks=(4,), als_reg=(0.1,), als_max_iter=3
        ),
    }
    base.update(sections)
    return Config(**base)


def _recs(spark: SparkSession, wh: str) -> pd.DataFrame:
    df = spark.read.format("delta").load(tables.table_path(wh, tables.GOLD_RECOMMENDATIONS))
    cols = [USER_ID, RANK, ITEM_ID, SCORE, "reason", "model_version"]
    return df.select(*cols).toPandas().sort_values([USER_ID, RANK]).reset_index(drop=True)


@pytest.fixture(scope="module")
def world(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train (registering version 1) and recommend from the gold tables (alias serving)."""
    from recspark.ingest.transforms import build_interactions
    from recspark.recommend import job as recommend_job
    from recspark.train import job as train_job

    wh = str(tmp_path_factory.mktemp("mlflow") / "wh")
    events, items, embs = _world(spark)
    cfg = _cfg(wh)
    tables.overwrite(events, wh, tables.SILVER_EVENTS)
    tables.overwrite(items, wh, tables.SILVER_ITEMS)
    tables.overwrite(embs, wh, tables.GOLD_ITEM_EMBEDDINGS)
    inter = build_interactions(events, event_weights=cfg.ingest.event_weights)
    tables.overwrite(inter, wh, tables.SILVER_INTERACTIONS)
    trained = train_job.run(spark, cfg)
    served = recommend_job.run(spark, cfg)
    return {
        "wh": wh,
        "cfg": cfg,
        "trained": trained,
        "served": served,
        "recs": _recs(spark, wh),
        "store": store(cfg.mlflow, cfg.locations()),
    }


@pytest.mark.slow
def test_train_registers_a_pyfunc_and_recommend_marks_it_served(world: dict[str, Any]) -> None:
    trained, s = world["trained"], world["store"]
    assert trained["registered_model"] == "recspark" and trained["registered_version"] == "1"
    client = s.client()
    run = client.get_run(trained["mlflow_run_id"])
    assert run.data.tags["model_version"] == trained["model_version"]
    assert run.data.tags["registered_model_version"] == "recspark/1"
    assert run.data.tags["recspark.run_id"] == RUN
    for name in ("silver/events", "silver/items", "gold/item_embeddings"):
        assert run.data.tags[f"delta_version.{name}"] == "0"
    assert "final/train_loss" in run.data.metrics and run.data.params["train.dim"] == "8"
    mv = client.get_model_version("recspark", "1")
    assert mv.tags["model_version"] == trained["model_version"] and mv.run_id == run.info.run_id
    assert world["served"]["registered_version"] == "1"
    assert str(client.get_model_version_by_alias("recspark", "serving").version) == "1"
    listed = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/MLmodel", "model/artifacts", "model/code"} <= listed


@pytest.mark.slow
def test_pyfunc_loaded_by_alias_in_a_fresh_process_predicts_recommends_top_k(
    spark: SparkSession, world: dict[str, Any], tmp_path: Path
) -> None:
    wh, recs = world["wh"], world["recs"]
    inter = tables.read(spark, wh, tables.SILVER_INTERACTIONS).toPandas()
    inter = inter.sort_values([USER_ID, "first_ts", ITEM_ID], kind="stable")
    users = sorted(inter[USER_ID].unique())[::5]
    histories = {u: inter.loc[inter[USER_ID] == u, ITEM_ID].tolist() for u in users}
    (tmp_path / "in.json").write_text(json.dumps([histories[u] for u in users]))
    (tmp_path / "users.json").write_text(json.dumps(users))
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/recspark@serving')\n"
        "h = json.load(open(sys.argv[1]))\n"
        "out = m.predict(pd.DataFrame({'history': h, 'user_id': json.load(open(sys.argv[3]))}))\n"
        "json.dump({'ids': [list(map(str, x)) for x in out['item_ids']],"
        " 'scores': [list(map(float, x)) for x in out['scores']]}, open(sys.argv[2], 'w'))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": world["store"].tracking_uri}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "in.json"),
            str(tmp_path / "out.json"),
            str(tmp_path / "users.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    for i, u in enumerate(users):
        mine = recs[recs[USER_ID] == u]
        assert len(out["ids"][i]) == len(mine) == 4
        np.testing.assert_allclose(out["scores"][i], mine[SCORE].to_numpy(), rtol=1e-5, atol=1e-6)
        # Ties aside: the same items wherever scores differ.
        distinct = np.diff(mine[SCORE].to_numpy()) != 0
        if distinct.all():
            assert out["ids"][i] == mine[ITEM_ID].tolist(), u
        assert not set(out["ids"][i]) & set(histories[u])


@pytest.mark.slow
def test_recommend_by_registry_uri_writes_the_same_recommendations(
    spark: SparkSession, world: dict[str, Any]
) -> None:
    from recspark.recommend import job as recommend_job

    cfg = world["cfg"]
    by_uri = dataclasses.replace(
        cfg,
        run_id="mlt-uri",
        recommend=dataclasses.replace(cfg.recommend, model="models:/recspark@serving"),
    )
    summary = recommend_job.run(spark, by_uri)
    assert summary["model_version"] == world["trained"]["model_version"]
    assert summary["registered_version"] == "1"
    pd.testing.assert_frame_equal(_recs(spark, world["wh"]), world["recs"])
    with pytest.raises(ModelError, match="no such registered model version"):
        recommend_job.run(
            spark,
            dataclasses.replace(
                cfg, recommend=dataclasses.replace(cfg.recommend, model="models:/recspark/7")
            ),
        )


@pytest.fixture(scope="module")
def evaluated(spark: SparkSession, world: dict[str, Any]) -> dict[str, Any]:
    from recspark.evaluate import job as evaluate_job

    return evaluate_job.run(spark, world["cfg"])


@pytest.mark.slow
def test_evaluate_metrics_are_in_the_store_for_every_model(
    spark: SparkSession, world: dict[str, Any], evaluated: dict[str, Any]
) -> None:
    s = world["store"]
    client = s.client()
    parent = client.get_run(evaluated["mlflow_run_id"])
    assert parent.data.tags["recspark.run_id"] == RUN
    assert parent.data.tags["recspark.split"].startswith("silver/interactions@v0,")
    gold = spark.read.format("delta").load(tables.table_path(world["wh"], tables.GOLD_METRICS))
    rows = gold.where(F.col("run_id") == RUN).collect()
    assert {r["model"] for r in rows} == {"popularity", "als"}
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    by_model = {c.data.tags["model"]: c for c in children}
    assert set(by_model) == {"popularity", "als"}
    for r in rows:
        key = f"{r['metric']}_at_{r['k']}"
        assert by_model[r["model"]].data.metrics[key] == pytest.approx(r["value"])
        assert parent.data.metrics[f"{r['model']}/{key}"] == pytest.approx(r["value"])
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/metrics.png"} <= logged


@pytest.mark.slow
def test_promote_moves_the_champion_only_to_a_better_version(
    spark: SparkSession, world: dict[str, Any], evaluated: dict[str, Any]
) -> None:
    from recspark.registry.promote import run as promote
    from recspark.registry.store import log_evaluation

    cfg, s = world["cfg"], world["store"]
    client = s.client()
    split = client.get_run(evaluated["mlflow_run_id"]).data.tags["recspark.split"]
    mv1 = client.get_model_version("recspark", "1")

    def evaluation(run_id: str, value: float) -> None:
        row = [(run_id, "recspark", "ndcg", 10, float(value), run_id, datetime(2024, 2, 1))]
        tables.merge_upsert(
            spark,
            spark.createDataFrame(row, METRICS_SCHEMA),
            world["wh"],
            tables.GOLD_METRICS,
            keys=["run_id", "model", "metric", "k"],
        )
        if run_id != RUN:  # the evaluate fixture logged run RUN's evaluation
            log_evaluation(s, run_id, {"recspark": {"ndcg_at_10": value}}, {}, split, {}, [])

    evaluation(RUN, 0.2)  # version 1 was trained by run RUN
    first = promote(spark, cfg)
    assert first["promoted"] and first["champion"] == "1", first
    for run_id, value in (("worse", 0.19), ("better", 0.21)):
        client.create_model_version(
            "recspark", mv1.source, run_id=mv1.run_id, tags={"recspark.run_id": run_id}
        )
        evaluation(run_id, value)
    kept = promote(spark, cfg, "2")
    assert not kept["promoted"] and kept["champion"] == "1", kept
    assert "does not beat" in kept["reason"]
    assert str(client.get_model_version_by_alias("recspark", "champion").version) == "1"
    moved = promote(spark, cfg)  # the newest: version 3, better
    assert moved["promoted"] and moved["champion"] == "3", moved
    assert str(client.get_model_version_by_alias("recspark", "champion").version) == "3"


def test_the_model_carries_recspark_code_from_a_folder_or_a_py_files_zip(tmp_path: Path) -> None:
    from recspark.registry.pyfunc import package_folder

    pkg = tmp_path / "src" / "recspark"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "m.py").write_text("X = 1\n")
    assert package_folder(str(pkg), str(tmp_path / "scratch")) == str(pkg)
    archive = tmp_path / "recspark-0.1.0.zip"  # as spark-submit --py-files ships it
    with zipfile.ZipFile(archive, "w") as z:
        z.write(pkg / "__init__.py", "recspark/__init__.py")
        z.write(pkg / "sub" / "m.py", "recspark/sub/m.py")
        z.writestr("other/x.py", "")
    got = Path(package_folder(f"{archive}/recspark", str(tmp_path / "scratch")))
    assert got.name == "recspark" and (got / "sub" / "m.py").read_text() == "X = 1\n"
    assert not (tmp_path / "scratch" / "other").exists()
