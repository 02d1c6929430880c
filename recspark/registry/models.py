"""The registered model: register a trained model, resolve ``models:/`` URIs, move aliases."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recspark.errors import ConfigError, ModelError
from recspark.registry.store import TAG_MODEL_VERSION, TAG_RUN_ID, Store, store_errors

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MODEL_PATH = "model"  # the pyfunc's folder in its run's artifacts
TAG_INPUT_VERSION = "delta_version."  # + table name: the Delta version train read
TAG_REGISTERED = "registered_model_version"  # on the run: "<name>/<version>"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """A version of a registered model.

    Attributes:
        name: the registered model.
        version: its version number (text, as MLflow gives it).
        run_id: the training run that logged it.
        model_version: recspark's model version (the hash in gold tables and model folders).
        tags: the version's tags.
    """

    name: str
    version: str
    run_id: str | None
    model_version: str
    tags: Mapping[str, str]


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` or ``models:/<name>/<version>`` -> (name, alias, version).

    Raises:
        ConfigError: anything else (naming the key ``recommend.model``).
    """
    m = _MODEL_URI.match(uri)
    if m is None:
        raise ConfigError(
            f"key 'recommend.model': expected models:/<name>@<alias> or models:/<name>/<version>, "
            f"found {uri!r}"
        )
    return m["name"], m["alias"], m["version"]


def _ref(name: str, mv: Any) -> ModelRef:
    tags = {str(k): str(v) for k, v in (mv.tags or {}).items()}
    return ModelRef(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        model_version=tags.get(TAG_MODEL_VERSION, ""),
        tags=tags,
    )


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelRef | None:
    """The newest version of ``name`` logged by ``run_id``, or None."""
    found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not found:
        return None
    newest = max(found, key=lambda mv: int(mv.version))
    return _ref(name, client.get_model_version(name, str(newest.version)))


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:  # created by a concurrent run in between
            client.get_registered_model(name)


def register(
    s: Store,
    name: str,
    run_id: str,
    model_path: str,
    model_version: str,
    *,
    recspark_run_id: str | None,
    input_versions: Mapping[str, int],
) -> ModelRef:
    """Log the pyfunc folder ``model_path`` into training run ``run_id`` and register it.

    Idempotent: when ``run_id`` already has a registered version of ``name`` (a finished model
    trained again), that version is returned. The run gets the Delta versions of its inputs
    (tags ``delta_version.<table>``) and the registered version (``registered_model_version``);
    the version gets ``model_version`` and ``recspark.run_id``.

    Raises:
        DependencyError: the store failed.
    """
    from mlflow.entities import RunTag

    with store_errors(s, f"registering model {name}"):
        client = s.client()
        tags = [
            RunTag(f"{TAG_INPUT_VERSION}{t}", str(v)) for t, v in sorted(input_versions.items())
        ]
        client.log_batch(run_id, tags=tags)
        found = version_of_run(client, name, run_id)
        if found is not None:
            return found
        client.log_artifacts(run_id, model_path, artifact_path=MODEL_PATH)
        _record_logged_model(client, run_id, model_path)
        _ensure_registered_model(client, name)
        run = client.get_run(run_id)
        vtags = {TAG_MODEL_VERSION: model_version}
        if recspark_run_id:
            vtags[TAG_RUN_ID] = recspark_run_id
        mv = client.create_model_version(
            name, f"{run.info.artifact_uri}/{MODEL_PATH}", run_id=run_id, tags=vtags
        )
        client.set_tag(run_id, TAG_REGISTERED, f"{name}/{mv.version}")
        return _ref(name, client.get_model_version(name, str(mv.version)))


def _record_logged_model(client: MlflowClient, run_id: str, model_path: str) -> None:
    """Show the model in the run's page of the MLflow UI (as ``log_model`` would)."""
    try:
        from mlflow.models import Model

        model = Model.load(str(Path(model_path) / "MLmodel"))
        model.run_id = run_id
        model.artifact_path = MODEL_PATH
        client._record_logged_model(run_id, model)
    except Exception:  # only the UI's list of logged models misses it
        pass


def get(s: Store, uri: str) -> ModelRef:
    """The version ``uri`` (``models:/<name>@<alias>`` or ``.../<version>``) names.

    Raises:
        ConfigError: a malformed URI. ModelError: no such model, version or alias.
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    with store_errors(s, f"resolving {uri}"):
        client = s.client()
        try:
            mv = (
                client.get_model_version_by_alias(name, alias)
                if alias is not None
                else client.get_model_version(name, str(version))
            )
        except MlflowException as e:
            raise ModelError(
                f"{uri}: no such registered model version in {s.registry_uri} ({e.message})"
            ) from e
        return _ref(name, mv)


def download(s: Store, ref: ModelRef, dst: str | None = None) -> Path:
    """Download the model's artifacts (``items.parquet``, ``settings.json``, the towers); returns
    the local folder that holds them."""
    if ref.run_id is None:
        raise ModelError(f"models:/{ref.name}/{ref.version} has no training run to read from")
    where = dst or tempfile.mkdtemp(prefix="recspark-model-")
    with store_errors(s, f"downloading models:/{ref.name}/{ref.version}"):
        local = s.client().download_artifacts(ref.run_id, f"{MODEL_PATH}/artifacts", where)
    return Path(local)


def set_alias(s: Store, name: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``name`` at ``version``."""
    with store_errors(s, f"setting alias {alias} of {name}"):
        s.client().set_registered_model_alias(name, alias, version)


def alias_version(s: Store, name: str, alias: str) -> ModelRef | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    with store_errors(s, f"reading alias {alias} of {name}"):
        client = s.client()
        try:
            return _ref(name, client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None


def newest_version(s: Store, name: str) -> ModelRef:
    """The newest version of ``name``.

    Raises:
        ModelError: the model has no version.
    """
    with store_errors(s, f"listing versions of {name}"):
        client = s.client()
        found = client.search_model_versions(f"name='{name}'")
        if not found:
            raise ModelError(f"registered model {name!r} has no version: run `recspark train`")
        newest = max(found, key=lambda mv: int(mv.version))
        return _ref(name, client.get_model_version(name, str(newest.version)))
