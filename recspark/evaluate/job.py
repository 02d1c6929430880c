"""``recspark evaluate``: recspark against popularity and ALS on a chronological holdout.

Reads ``silver/interactions`` and ``silver/items`` (plus ``silver/events`` and
``gold/item_embeddings`` for the recspark model, trained with ``recspark.train.trainer.fit`` on
the training split only); writes one row per (model, metric, k) of the run into
``gold/metrics`` (upsert: rerunning a run id replaces its rows) and a report with a plot under
``<files>/reports/<run_id>/`` (the file location, see :mod:`recspark.storage`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.config import Config, to_dict
from recspark.errors import StageNotReadyError
from recspark.evaluate.baselines import (
    AlsParams,
    als_factors,
    als_grid,
    content_vectors,
    popularity_recs,
)
from recspark.evaluate.metrics import VALUE, ranking_metrics, unit_vectors
from recspark.evaluate.split import TEST, TRAIN, chronological_holdout, train_events
from recspark.log import get_logger
from recspark.recommend.config import RecommendConfig
from recspark.recommend.transforms import (
    ItemIndex,
    ScoreParams,
    item_catalog,
    recommend,
    score_params,
)
from recspark.reporting.data import MetricRow
from recspark.reporting.writer import write_evaluation_report
from recspark.schema import (
    EMBEDDING,
    IS_COLD,
    ITEM_ID,
    METRIC,
    METRICS_SCHEMA,
    MODEL,
    RANK,
    RUN_ID,
    SPLIT,
    TITLE,
    USER_ID,
    VECTOR,
    K,
)


def _log(msg: str) -> None:
    get_logger("evaluate").info("evaluate: %s", msg)


def eval_score_params(
    rc: RecommendConfig, *, k: int, exclude_seen: bool, cold_items: bool
) -> ScoreParams:
    """The recommend stage's kernel settings (block sizes, groups, threads, device), with
    evaluate's list length and exclusion, no reasons, and cold-item slots only for a model
    that can score cold items (pure)."""
    extra = {} if cold_items else {"cold_item_slots": 0}
    return score_params(rc, k=k, exclude_seen=exclude_seen, reasons=False, **extra)


def kernel_recs(
    user_vectors: DataFrame,
    item_vectors: DataFrame,
    train: DataFrame,
    items: DataFrame,
    users: DataFrame,
    params: ScoreParams,
    model_version: str,
    run_id: str,
    text: DataFrame | None = None,
) -> DataFrame:
    """Top-K lists for ``users`` from any dot-product model, with the recommend kernel (and
    its diversity re-rank when ``params.diversity > 0`` and ``text`` embeddings are given)."""
    catalog = item_catalog(item_vectors, items, train)
    scored = catalog.where(F.col(VECTOR).isNotNull()).select(ITEM_ID, VECTOR, TITLE, IS_COLD)
    if text is not None and params.diversity > 0:
        scored = scored.join(text.select(ITEM_ID, EMBEDDING), ITEM_ID, "left")
    pdf = scored.toPandas()
    index = ItemIndex.from_pandas(pdf)
    return recommend(
        user_vectors,
        train,
        catalog,
        index,
        params,
        model_version=model_version,
        run_id=run_id,
        generated_at=datetime.now(UTC),
        users=users,
    ).select(USER_ID, ITEM_ID, RANK)


def split_identity(interactions_version: int, fraction: float, min_train: int) -> str:
    """What makes two evaluations comparable: the same interactions, cut the same way (pure)."""
    return (
        f"{tables.SILVER_INTERACTIONS}@v{interactions_version}"
        f",holdout_fraction={fraction},min_train={min_train}"
    )


def _ndcg(recs: DataFrame, truth: DataFrame, catalog: DataFrame, k: int) -> float:
    rows = ranking_metrics(recs, truth, catalog, k=k).where(F.col(METRIC) == "ndcg").collect()
    return float(rows[0][VALUE]) if rows else 0.0


def select_als(
    train: DataFrame,
    items: DataFrame,
    catalog: DataFrame,
    grid: list[AlsParams],
    *,
    fraction: float,
    min_train: int,
    params: ScoreParams,
    run_id: str,
) -> tuple[AlsParams, dict[str, float]]:
    """The grid point with the best NDCG@k (``params.k``) on a chronological validation split
    of ``train``, each scored with the kernel's ``params``."""
    k = params.k
    if len(grid) == 1:
        return grid[0], {}
    split = chronological_holdout(train, fraction=fraction, min_train=min_train).cache()
    try:
        fit_part = split.where(F.col(SPLIT) == TRAIN).drop(SPLIT)
        valid = split.where(F.col(SPLIT) == TEST).drop(SPLIT)
        users = valid.select(USER_ID).distinct()
        scores: dict[str, float] = {}
        best: tuple[float, int] | None = None
        for i, p in enumerate(grid):
            uv, iv = als_factors(fit_part, p)
            recs = kernel_recs(uv, iv, fit_part, items, users, params, "als", run_id)
            score = _ndcg(recs, valid, catalog, k)
            scores[f"rank={p.rank},reg={p.reg}"] = score
            _log(f"ALS rank={p.rank} reg={p.reg}: validation ndcg@{k}={score:.4f}")
            if best is None or score > best[0]:
                best = (score, i)
        return grid[best[1] if best else 0], scores
    finally:
        split.unpersist()


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Evaluate the configured models; write ``gold/metrics`` and the report."""
    ec = cfg.evaluate
    wh = cfg.warehouse
    cfg = cfg.with_run_id()
    run_id = str(cfg.run_id)
    kmax = max(ec.ks)
    interactions = tables.read(spark, wh, tables.SILVER_INTERACTIONS)
    items = tables.read(spark, wh, tables.SILVER_ITEMS)
    # Text embeddings: the content baseline, and every model's intra-list diversity.
    emb_table = tables.ref(wh, tables.GOLD_ITEM_EMBEDDINGS)
    text = (
        unit_vectors(tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)).cache()
        if "content" in ec.models or tables.exists(spark, emb_table)
        else None
    )
    split_id = split_identity(
        tables.version(spark, tables.ref(wh, tables.SILVER_INTERACTIONS)),
        ec.holdout_fraction,
        ec.min_train,
    )
    with_recspark = False
    if "recspark" in ec.models:
        try:
            from recspark.train import inference, trainer
        except ImportError as e:
            raise StageNotReadyError(
                f"evaluate: model 'recspark' needs recspark.train ({e}); set "
                "evaluate.models to the baselines only to run without it"
            ) from e
        with_recspark = True
        events = tables.read(spark, wh, tables.SILVER_EVENTS)
        embeddings = tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS)
    if ec.validation_only:  # the test split is left out; its training part is split again
        outer = chronological_holdout(
            interactions, fraction=ec.holdout_fraction, min_train=ec.min_train
        )
        if with_recspark:
            events = train_events(events, outer)
        interactions = outer.where(F.col(SPLIT) == TRAIN).drop(SPLIT)

    split = chronological_holdout(
        interactions, fraction=ec.holdout_fraction, min_train=ec.min_train
    ).cache()
    rows: list[MetricRow] = []
    versions: dict[str, str] = {}
    notes: list[str] = []
    try:
        train = split.where(F.col(SPLIT) == TRAIN).drop(SPLIT).cache()
        test = split.where(F.col(SPLIT) == TEST).drop(SPLIT).cache()
        users = test.select(USER_ID).distinct().cache()
        catalog = items.select(ITEM_ID).unionByName(interactions.select(ITEM_ID)).distinct()
        cold = catalog.join(train.select(ITEM_ID).distinct(), ITEM_ID, "left_anti")
        split_counts = {
            r[SPLIT]: int(r["n"])
            for r in split.groupBy(SPLIT).agg(F.count(F.lit(1)).alias("n")).collect()
        }
        _log(f"split {split_counts}" + (" (validation only)" if ec.validation_only else ""))
        if ec.validation_only:
            notes.append("validation only: the test split left out, its training part split again")
        exclude = cfg.recommend.exclude_seen
        baseline_params = eval_score_params(
            cfg.recommend, k=kmax, exclude_seen=exclude, cold_items=False
        )

        def baseline_recs(uv: DataFrame, iv: DataFrame, version: str) -> DataFrame:
            """A factor baseline's (ALS, content) top-K through recommend's kernel."""
            return kernel_recs(uv, iv, train, items, users, baseline_params, version, run_id)

        for model in ec.models:
            if model == "popularity":
                recs = popularity_recs(train, users, k=kmax, exclude_seen=exclude)
                versions[model] = "popularity"
            elif model == "als":
                grid = als_grid(ec.als_ranks, ec.als_reg, ec.als_max_iter, ec.als_alpha, cfg.seed)
                best, _scores = select_als(
                    train,
                    items,
                    catalog,
                    grid,
                    fraction=ec.holdout_fraction,
                    min_train=ec.min_train,
                    params=eval_score_params(
                        cfg.recommend, k=kmax, exclude_seen=True, cold_items=False
                    ),
                    run_id=run_id,
                )
                uv, iv = als_factors(train, best)
                versions[model] = f"als-rank{best.rank}-reg{best.reg}"
                notes.append(f"ALS: rank={best.rank}, reg={best.reg} (best validation NDCG@{kmax})")
                recs = baseline_recs(uv, iv, versions[model])
            elif model == "content":
                if text is None:  # cannot happen: read above whenever content is evaluated
                    raise StageNotReadyError("evaluate: model 'content' needs item embeddings")
                uv, iv = content_vectors(train, text)
                versions[model] = "content"
                recs = baseline_recs(uv, iv, versions[model])
            else:  # recspark
                tev = train_events(events, split)
                model_dir = cfg.locations().model_dir(f"evaluate/{run_id}")
                result = trainer.fit(spark, cfg, tev, items, embeddings, model_dir)
                iv = inference.item_vectors(spark, result.model_dir, items, embeddings)
                uv = inference.user_vectors(spark, result.model_dir, tev, iv)
                versions[model] = str(result.model_version)
                recs = kernel_recs(
                    uv,
                    iv,
                    train,
                    items,
                    users,
                    eval_score_params(cfg.recommend, k=kmax, exclude_seen=exclude, cold_items=True),
                    versions[model],
                    run_id,
                    text=text,
                )
            recs = recs.cache()
            try:
                for k in ec.ks:
                    rm = ranking_metrics(recs, test, catalog, k=k, cold_items=cold, embeddings=text)
                    for r in rm.collect():
                        rows.append(MetricRow(model, r[METRIC], int(r[K]), float(r[VALUE])))
            finally:
                recs.unpersist()
            _log(
                f"{model}: "
                + ", ".join(f"{r.metric}@{r.k}={r.value:.4f}" for r in rows if r.model == model)
            )
    finally:
        split.unpersist()
        if text is not None:
            text.unpersist()

    now = datetime.now(UTC)
    out = spark.createDataFrame(
        [(run_id, r.model, r.metric, r.k, r.value, versions.get(r.model), now) for r in rows],
        METRICS_SCHEMA,
    )
    tables.merge_upsert(spark, out, wh, tables.GOLD_METRICS, keys=[RUN_ID, MODEL, METRIC, K])
    paths: dict[str, str] = {}
    if ec.report:
        paths = write_evaluation_report(
            spark,
            cfg.locations(),
            run_id,
            rows,
            list(ec.models),
            title=f"recspark evaluation, run {run_id}",
            notes=[f"split: {split_counts}", *notes],
        )
    summary: dict[str, Any] = {
        "stage": "evaluate",
        "run_id": run_id,
        "split": split_counts,
        "metrics": {f"{r.model}/{r.metric}@{r.k}": round(r.value, 5) for r in rows},
        "model_versions": versions,
        "report": paths.get("markdown"),
    }
    if cfg.mlflow.enabled:
        from recspark.registry.store import log_evaluation, store

        by_model: dict[str, dict[str, float]] = {}
        for mr in rows:
            by_model.setdefault(mr.model, {})[f"{mr.metric}_at_{mr.k}"] = mr.value
        settings = {f"evaluate.{k}": v for k, v in to_dict(ec).items()}
        ids = log_evaluation(
            store(cfg.mlflow, cfg.locations()),
            run_id,
            by_model,
            versions,
            split_id,
            {**settings, "seed": cfg.seed, "split": split_id},
            [paths[k] for k in sorted(paths)],
        )
        summary["mlflow_run_id"] = ids["parent"]
    return summary
