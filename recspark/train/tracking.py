"""MLflow tracking of a training run (client API only: no global active run)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from recspark.registry.store import TAG_MODEL_VERSION, TAG_STAGE, Store, store_errors
from recspark.storage import local_path


def log_training(
    s: Store,
    model_version: str,
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    final_metrics: Mapping[str, float],
    artifacts: Sequence[str],
    tags: Mapping[str, str] | None = None,
) -> str:
    """Record one finished training run; returns the MLflow run id.

    Per-epoch metrics (the numbers of each ``history`` row) are logged with ``step`` = epoch
    and the phase in the key (``validate/train_loss``, ``validate/val_ndcg_at_10``,
    ``final/train_loss``). The run is tagged ``model_version`` (the version the recommend
    stage reports) plus ``tags``.

    Raises:
        DependencyError: the store failed (one line naming it).
    """
    from mlflow.entities import Metric, Param

    with store_errors(s, "logging the training run"):
        client = s.client()
        exp_id = s.experiment_id(client)
        all_tags = {TAG_MODEL_VERSION: model_version, TAG_STAGE: "train", **(tags or {})}
        run = client.create_run(exp_id, run_name=model_version, tags=all_tags)
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"{row['phase']}/{key}", float(value), now, int(row["epoch"]))
            for row in history
            for key, value in row.items()
            if key not in ("phase", "epoch") and isinstance(value, int | float)
        ]
        metrics += [Metric(k, float(v), now, 0) for k, v in final_metrics.items()]
        ps = [Param(k, str(v)[:500]) for k, v in sorted(params.items())]
        for i in range(0, max(len(ps), len(metrics)), 100):
            client.log_batch(run_id, metrics=metrics[i : i + 100], params=ps[i : i + 100])
        for path in artifacts:
            client.log_artifact(run_id, local_path(path) or path, artifact_path="towers")
        client.set_terminated(run_id)
    return str(run_id)
