"""The MLflow store of a configuration: URIs, the reachability check, the client.

Local default (``mlflow.tracking_uri: null``): a SQLite database under the file location,
``sqlite:///<files>/mlflow/mlflow.db``, with experiment artifacts in ``<files>/mlflow/artifacts``
(:class:`recspark.storage.Locations`); the model registry lives in the same database. Open it
with ``mlflow ui --backend-store-uri sqlite:///<files>/mlflow/mlflow.db``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recspark.errors import DependencyError
from recspark.storage import Locations, file_url, require_local

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from recspark.config import MlflowConfig

# Run tags recspark sets (``recspark.run_id`` links a training run, its registered version and
# the evaluation of the same pipeline run).
TAG_RUN_ID = "recspark.run_id"
TAG_STAGE = "recspark.stage"
TAG_MODEL_VERSION = "model_version"
TAG_SPLIT = "recspark.split"
PARENT_RUN_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class Store:
    """Where runs and registered models go.

    Attributes:
        tracking_uri: the tracking store.
        registry_uri: the model registry.
        experiment: the experiment name.
        artifact_location: the artifact root of a new experiment (the local store's folder), or
            None to leave it to the tracking server.
        timeout: seconds the reachability check waits.
    """

    tracking_uri: str
    registry_uri: str
    experiment: str
    artifact_location: str | None
    timeout: float

    def client(self) -> MlflowClient:
        """An MLflow client on this store (creates the local database's folder)."""
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def experiment_id(self, client: MlflowClient) -> str:
        """The experiment's id, creating the experiment (in the local artifact root) if needed."""
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        from mlflow.exceptions import MlflowException

        try:
            return str(client.create_experiment(self.experiment, self.artifact_location))
        except MlflowException:  # created by a concurrent run in between
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return str(exp.experiment_id)


def store(mc: MlflowConfig, where: Locations) -> Store:
    """The store of ``mc``: as configured, or the local SQLite store under the file location.

    Raises:
        ConfigError: no tracking URI is set and the file location is not a file path.
    """
    artifacts = None
    uri = mc.tracking_uri
    if not uri:
        db = require_local(where.mlflow_db, "the local MLflow store", "mlflow.tracking_uri")
        uri = "sqlite:///" + db
        artifacts = file_url(where.mlflow_artifacts)
    return Store(
        tracking_uri=uri,
        registry_uri=mc.registry_uri or uri,
        experiment=mc.experiment,
        artifact_location=artifacts,
        timeout=mc.timeout,
    )


def unreachable_message(uri: str, reason: str) -> str:
    """The one line a run stops with when its tracking store cannot be reached (pure)."""
    from recspark.config import redact_text

    why = " ".join(reason.split())
    if len(why) > 200:
        why = why[:197] + "..."
    return (
        f"MLflow tracking store {redact_text(uri)} cannot be reached ({why}); start it, fix "
        "mlflow.tracking_uri, or set mlflow.enabled: false to run without tracking"
    )


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def check(s: Store) -> None:
    """Stop with one line naming the URI when the tracking store cannot be reached.

    An HTTP(S) server counts as reachable when it answers at all within ``timeout``; any other
    store (the local SQLite file, ``databricks``) when a search of experiments succeeds.

    Raises:
        DependencyError: the store cannot be reached.
    """
    uri = s.tracking_uri
    try:
        if uri.startswith(("http://", "https://")):
            url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
            try:
                with urllib.request.urlopen(url, timeout=s.timeout):
                    pass
            except urllib.error.HTTPError:
                pass  # it answered (credentials are the client's business)
            return
        retries = {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(s.timeout))),
        }
        with _env(**retries):
            s.client().search_experiments(max_results=1)
    except Exception as e:
        raise DependencyError(unreachable_message(uri, _reason(e))) from e


@contextmanager
def store_errors(s: Store, what: str) -> Iterator[None]:
    """Turn an MLflow failure while doing ``what`` into one line naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        from recspark.config import redact_text

        raise DependencyError(
            f"MLflow store {redact_text(s.tracking_uri)}: {what} failed: {_reason(e)}"
        ) from e


def log_evaluation(
    s: Store,
    run_id: str,
    metrics: dict[str, dict[str, float]],
    versions: dict[str, str],
    split: str,
    params: dict[str, Any],
    artifacts: list[str],
) -> dict[str, str]:
    """One parent run for an evaluation and one child run per model; returns their run ids.

    Args:
        s: the store.
        run_id: the recspark run id (tag ``recspark.run_id`` on every run).
        metrics: per model, ``{"ndcg_at_10": 0.12, ...}``; the parent gets them all as
            ``<model>/<metric>``.
        versions: per model, the version evaluated (param ``model_version``).
        split: what identifies the holdout split (tag ``recspark.split``).
        params: the evaluation settings (params of the parent run).
        artifacts: local files (report, figures) logged to the parent run under ``report/``.

    Returns:
        ``{"parent": id, <model>: id, ...}``.
    """
    import time

    from mlflow.entities import Metric, Param, RunTag

    with store_errors(s, "logging the evaluation"):
        client = s.client()
        exp_id = s.experiment_id(client)
        tags = {TAG_RUN_ID: run_id, TAG_STAGE: "evaluate", TAG_SPLIT: split}
        parent = client.create_run(exp_id, run_name=f"evaluate {run_id}", tags=tags)
        pid = parent.info.run_id
        now = int(time.time() * 1000)
        out = {"parent": str(pid)}
        flat = [
            Metric(f"{model}/{name}", float(v), now, 0)
            for model, values in sorted(metrics.items())
            for name, v in sorted(values.items())
        ]
        ps = [Param(k, str(v)[:500]) for k, v in sorted(params.items())]
        client.log_batch(pid, metrics=flat, params=ps)
        for model, values in sorted(metrics.items()):
            child = client.create_run(
                exp_id,
                run_name=model,
                tags={**tags, PARENT_RUN_TAG: pid, "model": model},
            )
            cid = child.info.run_id
            client.log_batch(
                cid,
                metrics=[Metric(k, float(v), now, 0) for k, v in sorted(values.items())],
                params=[Param("model", model), Param("model_version", versions.get(model, ""))],
                tags=[RunTag(TAG_MODEL_VERSION, versions.get(model, ""))],
            )
            client.set_terminated(cid)
            out[model] = str(cid)
        for path in artifacts:
            client.log_artifact(pid, path, artifact_path="report")
        client.set_terminated(pid)
    return out


def find_evaluation(s: Store, run_id: str) -> dict[str, str] | None:
    """The tags of the newest evaluation parent run of recspark run ``run_id``, or None."""
    with store_errors(s, "searching evaluation runs"):
        client = s.client()
        exp = client.get_experiment_by_name(s.experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=(f"tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`{TAG_STAGE}` = 'evaluate'"),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        return None
    return {k: str(v) for k, v in runs[0].data.tags.items()}
