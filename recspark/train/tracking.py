"""MLflow tracking of a training run (client API only: no global active run)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from recspark.storage import Locations, file_url
from recspark.train.reader import local_path


def default_tracking_uri(where: Locations) -> str:
    """A file store in the file location's MLflow folder (:attr:`Locations.mlflow`,
    ``<files>/mlruns``; an absolute ``file://`` URI for file paths)."""
    return file_url(where.mlflow)


def log_training(
    tracking_uri: str,
    experiment: str,
    model_version: str,
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    final_metrics: Mapping[str, float],
    artifacts: Sequence[str],
) -> str:
    """Record one finished training run; returns the MLflow run id.

    Per-epoch metrics are logged with ``step`` = epoch and the phase in the key
    (``validate/train_loss``, ``validate/val_ndcg_at_10``, ``final/train_loss``).
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=model_version, tags={"model_version": model_version})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{row['phase']}/{key}", float(value), now, int(row["epoch"]))
        for row in history
        for key, value in row.items()
        if key not in ("phase", "epoch")
    ]
    metrics += [Metric(k, float(v), now, 0) for k, v in final_metrics.items()]
    ps = [Param(k, str(v)[:500]) for k, v in sorted(params.items())]
    for i in range(0, max(len(ps), len(metrics)), 100):
        client.log_batch(run_id, metrics=metrics[i : i + 100], params=ps[i : i + 100])
    client.log_batch(run_id, tags=[RunTag("model_version", model_version)])
    for path in artifacts:
        client.log_artifact(run_id, local_path(path), artifact_path="model")
    client.set_terminated(run_id)
    return str(run_id)
