"""``recspark promote``: move the champion alias to a better candidate.

The candidate (``--version``, default the newest registered version) is compared with the
version the champion alias points at by NDCG@10 of model ``recspark`` in ``gold/metrics``,
each from the evaluation of the run that trained it (tag ``recspark.run_id``, the run id of
``recspark run``). The evaluations must share their split (the same version of
silver/interactions cut the same way, tag ``recspark.split`` of the evaluation run): numbers
measured on different data are not compared. The alias moves only when the candidate is
strictly better (or when there is no champion yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import tables
from recspark.config import Config
from recspark.errors import ConfigError
from recspark.log import get_logger
from recspark.registry import models
from recspark.registry.store import TAG_RUN_ID, TAG_SPLIT, Store, find_evaluation, store
from recspark.schema import METRIC, MODEL, RUN_ID, VALUE, K

METRIC_NAME = "ndcg"
METRIC_K = 10
MODEL_NAME = "recspark"


@dataclass(frozen=True)
class Evaluation:
    """A registered version's evaluation: its NDCG@10 and split (None when unknown)."""

    version: str
    ndcg: float | None
    split: str | None


@dataclass(frozen=True)
class Decision:
    """Whether to move the champion alias, and why (one line)."""

    promote: bool
    reason: str


def decide(candidate: Evaluation, champion: Evaluation | None) -> Decision:
    """Promote only a candidate whose NDCG@10 beats the champion's on the same split (pure)."""
    if candidate.ndcg is None:
        return Decision(False, f"version {candidate.version} has no NDCG@10 in gold/metrics")
    if champion is None:
        return Decision(
            True, f"no champion yet; version {candidate.version} NDCG@10 {candidate.ndcg:.4f}"
        )
    if champion.version == candidate.version:
        return Decision(False, f"version {candidate.version} is already the champion")
    if champion.ndcg is None:
        return Decision(
            False,
            f"champion version {champion.version} has no NDCG@10 in gold/metrics to compare with",
        )
    if candidate.split is None or candidate.split != champion.split:
        return Decision(
            False,
            f"versions {candidate.version} and {champion.version} were evaluated on different "
            f"splits ({candidate.split} vs {champion.split})",
        )
    verdict = "beats" if candidate.ndcg > champion.ndcg else "does not beat"
    return Decision(
        candidate.ndcg > champion.ndcg,
        f"version {candidate.version} NDCG@10 {candidate.ndcg:.4f} {verdict} champion version "
        f"{champion.version} {champion.ndcg:.4f}",
    )


def _log(msg: str) -> None:
    get_logger("promote").info("promote: %s", msg)


def evaluation(spark: SparkSession, cfg: Config, s: Store, ref: models.ModelRef) -> Evaluation:
    """NDCG@10 of ``ref``'s run in gold/metrics and the split of that evaluation."""
    run_id = ref.tags.get(TAG_RUN_ID)
    if not run_id:
        return Evaluation(ref.version, None, None)
    metrics = tables.read(spark, cfg.warehouse, tables.GOLD_METRICS)
    rows = (
        metrics.where(
            (F.col(RUN_ID) == run_id)
            & (F.col(MODEL) == MODEL_NAME)
            & (F.col(METRIC) == METRIC_NAME)
            & (F.col(K) == METRIC_K)
        )
        .select(VALUE)
        .collect()
    )
    found = find_evaluation(s, run_id)
    return Evaluation(
        ref.version,
        float(rows[0][0]) if rows else None,
        found.get(TAG_SPLIT) if found else None,
    )


def run(spark: SparkSession, cfg: Config, version: str | None = None) -> dict[str, Any]:
    """Compare the candidate with the champion and move the alias when it is better."""
    mc = cfg.mlflow
    if not mc.enabled:
        raise ConfigError("promote: the model registry is off (mlflow.enabled: false)")
    s = store(mc, cfg.locations())
    name = mc.registered_model
    cand_ref = (
        models.get(s, f"models:/{name}/{version}") if version else models.newest_version(s, name)
    )
    champ_ref = models.alias_version(s, name, mc.champion_alias)
    cand = evaluation(spark, cfg, s, cand_ref)
    champ = evaluation(spark, cfg, s, champ_ref) if champ_ref is not None else None
    decision = decide(cand, champ)
    if decision.promote:
        models.set_alias(s, name, mc.champion_alias, cand_ref.version)
    _log(("promoted: " if decision.promote else "kept the champion: ") + decision.reason)
    return {
        "stage": "promote",
        "registered_model": name,
        "candidate": cand_ref.version,
        "champion_before": champ_ref.version if champ_ref else None,
        "champion": cand_ref.version
        if decision.promote
        else (champ_ref.version if champ_ref else None),
        "promoted": decision.promote,
        "reason": decision.reason,
    }
