"""The one report writer: every report file (the run page, evaluate's markdown and plot) goes
through Hadoop's file system to ``<files>/reports/<run_id>/`` (see :mod:`recspark.storage`),
so a local folder, a Volume, ``dbfs:`` or an object store all work the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from recspark.errors import ConfigError
from recspark.io import write_bytes
from recspark.reporting.data import MetricRow, by_stage
from recspark.reporting.figures import metrics_figure, png_bytes
from recspark.reporting.page import build_run_report, evaluation_markdown
from recspark.storage import Locations
from recspark.summary import StageSummary

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from recspark.config import Config

REPORT_FILE = "run.html"
EVALUATION_FILE = "report.md"
METRICS_PLOT = "metrics.png"


def report_folder(where: Locations, run_id: str) -> str:
    """``<files>/reports/<run_id>``: the folder of every report file of a run."""
    if not run_id or "/" in run_id or run_id in (".", ".."):
        raise ConfigError(f"run_id {run_id!r} cannot name a report folder")
    return where.reports(run_id)


def report_path(where: Locations, run_id: str) -> str:
    """``<files>/reports/<run_id>/run.html`` (beside evaluate's report)."""
    return f"{report_folder(where, run_id)}/{REPORT_FILE}"


def write_files(spark: SparkSession, folder: str, files: Mapping[str, bytes]) -> dict[str, str]:
    """Write each named file under ``folder`` (overwriting); return the paths by name."""
    paths = {}
    for name, data in files.items():
        paths[name] = f"{folder.rstrip('/')}/{name}"
        write_bytes(spark, paths[name], data)
    return paths


def write_evaluation_report(
    spark: SparkSession,
    where: Locations,
    run_id: str,
    rows: Sequence[MetricRow],
    models: Sequence[str],
    *,
    title: str,
    notes: Sequence[str] = (),
) -> dict[str, str]:
    """Write evaluate's ``report.md`` and ``metrics.png`` (one panel per metric, a bar per
    model); return their paths (keys ``markdown`` and ``plot``)."""
    text = evaluation_markdown(rows, models, title=title, notes=notes)
    files = {EVALUATION_FILE: text.encode("utf-8"), METRICS_PLOT: png_bytes(metrics_figure(rows))}
    paths = write_files(spark, report_folder(where, run_id), files)
    return {"markdown": paths[EVALUATION_FILE], "plot": paths[METRICS_PLOT]}


def read_metrics(spark: SparkSession, warehouse: str, run_id: str) -> pd.DataFrame | None:
    """The ``gold/metrics`` rows of ``run_id`` as pandas, or None when there are none."""
    from pyspark.sql import functions as F

    from recspark import tables
    from recspark.schema import RUN_ID

    if not tables.exists(spark, tables.ref(warehouse, tables.GOLD_METRICS)):
        return None
    rows = tables.read(spark, warehouse, tables.GOLD_METRICS).where(F.col(RUN_ID) == run_id)
    out = pd.DataFrame(rows.toPandas())
    return None if out.empty else out


def read_training_history(spark: SparkSession, model_dir: str) -> list[dict[str, Any]] | None:
    """The per-epoch ``history`` that training saved in ``<model_dir>/meta.json``, or None."""
    from pyspark.errors import PySparkException

    from recspark.train.artifacts import META_FILE

    try:
        row = spark.read.text(f"{model_dir.rstrip('/')}/{META_FILE}", wholetext=True).first()
    except PySparkException:
        return None
    if row is None:
        return None
    try:
        meta = json.loads(row[0])
    except ValueError:
        return None
    history = meta.get("history") if isinstance(meta, dict) else None
    return [dict(h) for h in history] if isinstance(history, list) else None


def write_run_report(spark: SparkSession, cfg: Config, summaries: Sequence[StageSummary]) -> str:
    """Gather the run's metrics and training history, write the HTML report, return its path.

    Metrics are the ``gold/metrics`` rows of ``cfg.run_id`` (when evaluate ran); the history is
    the train summary's model's ``meta.json`` (when train ran); the configuration is shown
    with its secrets redacted.
    """
    from recspark.config import to_dict

    stages = by_stage(summaries)
    run_id = cfg.run_id or next((s.run_id for s in summaries if s.run_id), None)
    run_id = run_id or str(cfg.with_run_id().run_id)
    metrics = read_metrics(spark, cfg.warehouse, run_id) if "evaluate" in stages else None
    history = None
    train = stages.get("train")
    if train is not None and train.get("model_dir"):
        history = read_training_history(spark, str(train["model_dir"]))
    text = build_run_report(summaries, metrics, history, run_id=run_id, settings=to_dict(cfg))
    paths = write_files(
        spark, report_folder(cfg.locations(), run_id), {REPORT_FILE: text.encode("utf-8")}
    )
    return paths[REPORT_FILE]
