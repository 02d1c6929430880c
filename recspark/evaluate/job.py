"""``recspark evaluate``: recspark against popularity and ALS on a chronological holdout.

Reads ``silver/interactions`` and ``silver/items`` (plus ``silver/events`` and
``gold/item_embeddings`` for the recspark model, trained with ``recspark.train.trainer.fit`` on
the training split only); writes one row per (model, metric, k) of the run into
``gold/metrics`` (upsert: rerunning a run id replaces its rows) and a report with a plot under
``<files>/reports/<run_id>/`` (the file location, see :mod:`recspark.storage`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.config import Config, to_dict
from recspark.embed.transforms import fits_broadcast
from recspark.errors import StageNotReadyError
from recspark.evaluate.baselines import (
    AlsParams,
    AlsPoint,
    als_factors,
    als_grid,
    als_next,
    content_vectors,
    popularity_recs,
)
from recspark.evaluate.config import EvaluateConfig
from recspark.evaluate.metrics import VALUE, ranking_metrics, unit_vectors
from recspark.evaluate.split import TEST, TRAIN, chronological_holdout, train_events
from recspark.log import get_logger
from recspark.recommend.config import RecommendConfig
from recspark.recommend.job import collect_index
from recspark.recommend.scoring import ScoreParams, score_params
from recspark.recommend.transforms import item_catalog, recommend
from recspark.reporting.data import MetricRow
from recspark.reporting.writer import write_evaluation_report
from recspark.schema import (
    EMBEDDING,
    ITEM_ID,
    METRIC,
    METRICS_SCHEMA,
    MODEL,
    RANK,
    RUN_ID,
    SPLIT,
    USER_ID,
    K,
)


def _log(msg: str) -> None:
    get_logger("evaluate").info("evaluate: %s", msg)


def eval_score_params(
    rc: RecommendConfig,
    *,
    k: int,
    exclude_seen: bool,
    cold_items: bool,
    cold_choice: Mapping[str, Any] | None = None,
) -> ScoreParams:
    """The recommend stage's kernel settings (block sizes, groups, threads, device), with
    evaluate's list length and exclusion, no reasons, and cold-item slots only for a model
    that can score cold items (with the model's ``cold_choice`` where the config leaves the
    cold-item settings null, as the recommend stage does) (pure)."""
    extra = {} if cold_items else {"cold_item_slots": 0}
    return score_params(rc, cold_choice, k=k, exclude_seen=exclude_seen, reasons=False, **extra)


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
    index = collect_index(catalog, text if params.diversity > 0 else None)
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


def split_identity(
    interactions_version: int, fraction: float, min_train: int, *, validation_only: bool = False
) -> str:
    """What makes two evaluations comparable: the same interactions, cut the same way (pure)."""
    cut = (
        f"{tables.SILVER_INTERACTIONS}@v{interactions_version}"
        f",holdout_fraction={fraction},min_train={min_train}"
    )
    return cut + (",validation_only" if validation_only else "")


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
    extend: int = 0,
    max_rank: int = 256,
) -> tuple[AlsParams, dict[str, float]]:
    """The grid point with the best NDCG@k (``params.k``) on a chronological validation split
    of ``train``, each scored with the kernel's ``params``; then up to ``extend`` more points
    beyond the grid's edge while the best lies on it (:func:`als_next`)."""
    k = params.k
    if len(grid) == 1:
        return grid[0], {}
    split = chronological_holdout(train, fraction=fraction, min_train=min_train).cache()
    try:
        fit_part = split.where(F.col(SPLIT) == TRAIN).drop(SPLIT)
        valid = split.where(F.col(SPLIT) == TEST).drop(SPLIT)
        users = valid.select(USER_ID).distinct()
        tried: dict[AlsPoint, float] = {}

        def score(p: AlsParams) -> None:
            t0 = time.perf_counter()
            uv, iv = als_factors(fit_part, p)
            recs = kernel_recs(uv, iv, fit_part, items, users, params, "als", run_id)
            value = _ndcg(recs, valid, catalog, k)
            tried[(p.rank, p.reg, p.alpha)] = value
            _log(
                f"ALS rank={p.rank} reg={p.reg} alpha={p.alpha}: validation ndcg@{k}={value:.4f} "
                f"({time.perf_counter() - t0:.1f} s)"
            )

        for p in grid:
            score(p)
        for _ in range(extend):
            nxt = als_next(tried, max_rank=max_rank)
            if nxt is None:
                break
            score(replace(grid[0], rank=nxt[0], reg=nxt[1], alpha=nxt[2]))
        rank, reg, alpha = max(tried, key=lambda p: (tried[p], -p[0], -p[1], -p[2]))
        scores = {f"rank={r},reg={g},alpha={a}": v for (r, g, a), v in tried.items()}
        return replace(grid[0], rank=rank, reg=reg, alpha=alpha), scores
    finally:
        split.unpersist()


@dataclass(frozen=True)
class Holdout:
    """The evaluation's cut: what models learn from and what they are scored on.

    Attributes:
        split: interactions with a ``split`` column (cached: unpersist when done).
        train: the training part; test: the held-out part; users: the users of ``test``.
        catalog: every item (``item_id``); cold: items without a training interaction.
        events: the training part's events (for recspark's model), or None.
        counts: rows per side, e.g. ``{"train": 80, "test": 20}``.
    """

    split: DataFrame
    train: DataFrame
    test: DataFrame
    users: DataFrame
    catalog: DataFrame
    cold: DataFrame
    events: DataFrame | None
    counts: dict[str, int]


def _trainer() -> tuple[Any, Any, Any]:
    """recspark's trainer, inference and train job modules (torch, petastorm): imported only
    when recspark is evaluated."""
    try:
        from recspark.train import inference, trainer
        from recspark.train import job as train_job
    except ImportError as e:
        raise StageNotReadyError(
            f"evaluate: model 'recspark' needs recspark.train ({e}); set "
            "evaluate.models to the baselines only to run without it"
        ) from e
    return trainer, inference, train_job


def holdout(
    interactions: DataFrame, items: DataFrame, events: DataFrame | None, ec: EvaluateConfig
) -> Holdout:
    """Cut ``interactions`` chronologically (twice with ``ec.validation_only``: the test split is
    left out and its training part is cut again); ``events`` follow the training part."""
    if ec.validation_only:
        outer = chronological_holdout(
            interactions, fraction=ec.holdout_fraction, min_train=ec.min_train
        )
        if events is not None:
            events = train_events(events, outer)
        interactions = outer.where(F.col(SPLIT) == TRAIN).drop(SPLIT)
    split = chronological_holdout(
        interactions, fraction=ec.holdout_fraction, min_train=ec.min_train
    ).cache()
    train = split.where(F.col(SPLIT) == TRAIN).drop(SPLIT).cache()
    test = split.where(F.col(SPLIT) == TEST).drop(SPLIT).cache()
    catalog = items.select(ITEM_ID).unionByName(interactions.select(ITEM_ID)).distinct()
    counts = {
        r[SPLIT]: int(r["n"])
        for r in split.groupBy(SPLIT).agg(F.count(F.lit(1)).alias("n")).collect()
    }
    return Holdout(
        split=split,
        train=train,
        test=test,
        users=test.select(USER_ID).distinct().cache(),
        catalog=catalog,
        cold=catalog.join(train.select(ITEM_ID).distinct(), ITEM_ID, "left_anti"),
        events=train_events(events, split) if events is not None else None,
        counts=counts,
    )


@dataclass(frozen=True)
class _Run:
    """What every model's top-K needs in one evaluation."""

    spark: SparkSession
    cfg: Config
    run_id: str
    cut: Holdout
    items: DataFrame
    text: DataFrame | None
    embeddings: DataFrame | None
    split_id: str  # the cut's identity (split_identity), with validation_only

    def params(
        self,
        *,
        cold_items: bool,
        exclude_seen: bool | None = None,
        cold_choice: Mapping[str, Any] | None = None,
    ) -> ScoreParams:
        exclude = self.cfg.recommend.exclude_seen if exclude_seen is None else exclude_seen
        k = max(self.cfg.evaluate.ks)
        return eval_score_params(
            self.cfg.recommend,
            k=k,
            exclude_seen=exclude,
            cold_items=cold_items,
            cold_choice=cold_choice,
        )

    def baseline_recs(self, uv: DataFrame, iv: DataFrame, version: str) -> DataFrame:
        """A factor baseline's (ALS, content) top-K through recommend's kernel."""
        c = self.cut
        p = self.params(cold_items=False)
        return kernel_recs(uv, iv, c.train, self.items, c.users, p, version, self.run_id)


def _popularity(r: _Run) -> tuple[DataFrame, str, str | None]:
    k, exclude = max(r.cfg.evaluate.ks), r.cfg.recommend.exclude_seen
    return popularity_recs(r.cut.train, r.cut.users, k=k, exclude_seen=exclude), "popularity", None


def _als(r: _Run) -> tuple[DataFrame, str, str | None]:
    ec = r.cfg.evaluate
    grid = als_grid(ec.als_ranks, ec.als_reg, ec.als_max_iter, ec.als_alpha, r.cfg.seed)
    best, _scores = select_als(
        r.cut.train,
        r.items,
        r.cut.catalog,
        grid,
        fraction=ec.holdout_fraction,
        min_train=ec.min_train,
        params=r.params(cold_items=False, exclude_seen=True),
        run_id=r.run_id,
        extend=ec.als_extend,
        max_rank=ec.als_max_rank,
    )
    uv, iv = als_factors(r.cut.train, best)
    version = f"als-rank{best.rank}-reg{best.reg}-alpha{best.alpha}"
    note = (
        f"ALS: rank={best.rank}, reg={best.reg}, alpha={best.alpha} "
        f"(best validation NDCG@{max(ec.ks)})"
    )
    return r.baseline_recs(uv, iv, version), version, note


def _content(r: _Run) -> tuple[DataFrame, str, str | None]:
    if r.text is None:  # cannot happen: read whenever content is evaluated
        raise StageNotReadyError("evaluate: model 'content' needs item embeddings")
    # Sized as embed sizes its users' join (embed.user_broadcast_max_mb): one home for it.
    first = r.text.select(F.size(EMBEDDING).alias("dim")).first()
    dim = int(first["dim"]) if first is not None else 0
    broadcast = fits_broadcast(r.text.count(), dim, r.cfg.embed.user_broadcast_max_mb)
    uv, iv = content_vectors(r.cut.train, r.text, broadcast_items=broadcast)
    return r.baseline_recs(uv, iv, "content"), "content", None


def _recspark(r: _Run) -> tuple[DataFrame, str, str | None]:
    trainer, inference, train_job = _trainer()
    tev, emb = r.cut.events, r.embeddings
    # Named by the settings, the inputs' versions and the cut, as train's model is: a killed
    # evaluation resumes its training, and one of the same tables reuses the model.
    model_dir, _ = train_job.model_dir_of(
        r.spark, r.cfg, folder="evaluate", cut={"split": r.split_id}
    )
    result = trainer.fit(r.spark, r.cfg, tev, r.items, emb, model_dir)
    if result.resumed_from == "finished":
        _log(f"recspark: reusing the model trained on this cut, {result.model_dir}")
    iv = inference.item_vectors(r.spark, result.model_dir, r.items, emb)
    uv = inference.user_vectors(r.spark, result.model_dir, tev, iv)
    version = str(result.model_version)
    c = r.cut
    params = r.params(cold_items=True, cold_choice=result.cold_items)
    recs = kernel_recs(uv, iv, c.train, r.items, c.users, params, version, r.run_id, text=r.text)
    return recs, version, None


_MODELS: dict[str, Callable[[_Run], tuple[DataFrame, str, str | None]]] = {
    "popularity": _popularity,
    "als": _als,
    "content": _content,
    "recspark": _recspark,
}


def score(
    model: str, recs: DataFrame, cut: Holdout, ks: Sequence[int], text: DataFrame | None
) -> list[MetricRow]:
    """``model``'s metrics at every ``k`` of ``ks`` on the held-out part."""
    rows: list[MetricRow] = []
    recs = recs.cache()
    try:
        for k in ks:
            rm = ranking_metrics(
                recs, cut.test, cut.catalog, k=k, cold_items=cut.cold, embeddings=text
            )
            rows += [MetricRow(model, r[METRIC], int(r[K]), float(r[VALUE])) for r in rm.collect()]
    finally:
        recs.unpersist()
    _log(f"{model}: " + ", ".join(f"{r.metric}@{r.k}={r.value:.4f}" for r in rows))
    return rows


@dataclass(frozen=True)
class _Inputs:
    """The tables an evaluation reads."""

    interactions: DataFrame
    items: DataFrame
    text: DataFrame | None  # unit text vectors: the content baseline and every diversity
    events: DataFrame | None  # recspark's training events
    embeddings: DataFrame | None  # recspark's item text features


def _read(spark: SparkSession, cfg: Config) -> _Inputs:
    """Interactions and items; the text embeddings when present (or content is evaluated);
    events and embeddings when recspark is."""
    wh, models = cfg.warehouse, cfg.evaluate.models
    has_text = "content" in models or tables.exists(
        spark, tables.ref(wh, tables.GOLD_ITEM_EMBEDDINGS)
    )
    embeddings = tables.read(spark, wh, tables.GOLD_ITEM_EMBEDDINGS) if has_text else None
    return _Inputs(
        interactions=tables.read(spark, wh, tables.SILVER_INTERACTIONS),
        items=tables.read(spark, wh, tables.SILVER_ITEMS),
        text=unit_vectors(embeddings).cache() if embeddings is not None else None,
        events=tables.read(spark, wh, tables.SILVER_EVENTS) if "recspark" in models else None,
        embeddings=embeddings if "recspark" in models else None,
    )


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Evaluate the configured models; write ``gold/metrics`` and the report."""
    ec = cfg.evaluate
    cfg = cfg.with_run_id()
    run_id = str(cfg.run_id)
    if "recspark" in ec.models:
        _trainer()  # fail before any work when the trainer cannot be imported
    t = _read(spark, cfg)
    split_id = split_identity(
        tables.version(spark, tables.ref(cfg.warehouse, tables.SILVER_INTERACTIONS)),
        ec.holdout_fraction,
        ec.min_train,
        validation_only=ec.validation_only,
    )
    cut = holdout(t.interactions, t.items, t.events, ec)
    rows: list[MetricRow] = []
    versions: dict[str, str] = {}
    seconds: dict[str, float] = {}  # each model's fit, top-K and metrics
    notes = ["validation only: the test split left out, its training part split again"]
    notes = notes if ec.validation_only else []
    _log(f"split {cut.counts}" + (" (validation only)" if ec.validation_only else ""))
    try:
        r = _Run(spark, cfg, run_id, cut, t.items, t.text, t.embeddings, split_id)
        for model in ec.models:
            t0 = time.perf_counter()
            recs, versions[model], note = _MODELS[model](r)
            notes += [note] if note else []
            rows += score(model, recs, cut, ec.ks, t.text)
            seconds[model] = round(time.perf_counter() - t0, 1)
    finally:
        for df in (cut.split, cut.train, cut.test, cut.users, t.text):
            if df is not None:
                df.unpersist()
    summary = _record(spark, cfg, rows, versions, cut.counts, notes, split_id)
    return {**summary, "seconds_by_model": seconds}


def _record(
    spark: SparkSession,
    cfg: Config,
    rows: list[MetricRow],
    versions: dict[str, str],
    counts: dict[str, int],
    notes: list[str],
    split_id: str,
) -> dict[str, Any]:
    """Write the run's ``gold/metrics`` rows, its report and (with MLflow on) its runs; return
    the stage's summary."""
    ec, run_id = cfg.evaluate, str(cfg.run_id)
    now = datetime.now(UTC)
    out = spark.createDataFrame(
        [(run_id, r.model, r.metric, r.k, r.value, versions.get(r.model), now) for r in rows],
        METRICS_SCHEMA,
    )
    tables.merge_upsert(
        spark, out, cfg.warehouse, tables.GOLD_METRICS, keys=[RUN_ID, MODEL, METRIC, K]
    )
    paths: dict[str, str] = {}
    if ec.report:
        paths = write_evaluation_report(
            spark,
            cfg.locations(),
            run_id,
            rows,
            list(ec.models),
            title=f"recspark evaluation, run {run_id}",
            notes=[f"split: {counts}", *notes],
        )
    summary: dict[str, Any] = {
        "run_id": run_id,
        "split": counts,
        "metrics": {f"{r.model}/{r.metric}@{r.k}": round(r.value, 5) for r in rows},
        "model_versions": versions,
        "report": paths.get("markdown"),
    }
    if cfg.mlflow.enabled:
        summary["mlflow_run_id"] = _log_to_mlflow(cfg, rows, versions, split_id, paths)
    return summary


def _log_to_mlflow(
    cfg: Config,
    rows: list[MetricRow],
    versions: dict[str, str],
    split_id: str,
    paths: dict[str, str],
) -> str:
    """Log the evaluation as a parent run with a child per model; the parent's run id."""
    from recspark.registry.store import log_evaluation, store

    by_model: dict[str, dict[str, float]] = {}
    for mr in rows:
        by_model.setdefault(mr.model, {})[f"{mr.metric}_at_{mr.k}"] = mr.value
    settings = {f"evaluate.{k}": v for k, v in to_dict(cfg.evaluate).items()}
    ids = log_evaluation(
        store(cfg.mlflow, cfg.locations()),
        str(cfg.run_id),
        by_model,
        versions,
        split_id,
        {**settings, "seed": cfg.seed, "split": split_id},
        [paths[k] for k in sorted(paths)],
    )
    return str(ids["parent"])
