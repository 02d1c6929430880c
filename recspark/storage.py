"""Every location of a run, resolved in one place.

Two roots:

* the **warehouse** holds the Delta tables: a root directory (local path, ``file:``,
  ``s3a:``, ``abfss:``, ``dbfs:``), or a Unity Catalog schema ``catalog.schema`` whose tables
  are addressed by name (see :mod:`recspark.tables`);
* the **file location** (config key ``files``) holds what is read and written as plain files
  on every node: model folders and checkpoints, reports, the MLflow store, stream
  checkpoints. It defaults to the warehouse folder for a path warehouse; with a Unity Catalog
  warehouse it must be set, to a Volume (``/Volumes/<catalog>/<schema>/<volume>/...``).

:func:`local_path` is the one function that turns a URI into a filesystem path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from recspark.errors import ConfigError

# `catalog.schema`: two SQL identifiers (backticks allowed), nothing else. A local folder
# whose name looks like this is written `./name`.
_IDENT = r"(?:[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
_UC_SCHEMA = re.compile(rf"^{_IDENT}\.{_IDENT}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
VOLUMES_ROOT = "/Volumes/"


def is_uc_schema(warehouse: str) -> bool:
    """Whether ``warehouse`` names a Unity Catalog schema (``catalog.schema``), not a path."""
    return bool(_UC_SCHEMA.match(warehouse))


def has_scheme(uri: str) -> bool:
    """Whether ``uri`` starts with a URL scheme (``s3a:``, ``file:``, ``dbfs:``, ...)."""
    return bool(_SCHEME.match(uri))


def local_path(uri: str) -> str | None:
    """The absolute filesystem path of ``uri``, or None when it is not a file path.

    Plain paths and ``file:`` URLs are local files; ``dbfs:/x`` is the FUSE path ``/dbfs/x``;
    Unity Catalog Volumes (``/Volumes/...``) are plain paths on every node. Object-store URLs
    (``s3a:``, ``abfss:``, ``gs:``, ``hdfs:``, ...) are not: None.
    """
    if uri.startswith("file:"):
        rest = uri[len("file:") :]
        return os.path.abspath("/" + rest.lstrip("/") if rest.startswith("//") else rest)
    if uri.startswith("dbfs:/"):
        return "/dbfs/" + uri[len("dbfs:/") :].lstrip("/")
    if has_scheme(uri):
        return None
    return os.path.abspath(uri)


def file_url(path: str) -> str:
    """A URL for ``path`` that Spark, Petastorm and MLflow read alike: ``file://`` plus the
    absolute path for a file path, the URL itself otherwise."""
    local = local_path(path)
    if local is None or path.startswith("dbfs:/"):
        return path
    return "file://" + local


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a path or a URL (no normalisation of the root)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def require_local(uri: str, what: str, key: str) -> str:
    """:func:`local_path` of ``uri``, or a ConfigError naming ``key`` when it has none.

    Args:
        uri: the location.
        what: what is kept there, for the message ("model folders").
        key: the config key that sets it.
    """
    local = local_path(uri)
    if local is None:
        raise ConfigError(
            f"key '{key}': {what} need a location every node sees as files (a local or shared "
            f"path, file:, dbfs:/ or a Unity Catalog Volume /Volumes/...), found {uri!r}"
        )
    return local


@dataclass(frozen=True)
class Locations:
    """The resolved locations of one configuration.

    Attributes:
        warehouse: the Delta tables' root folder or Unity Catalog schema, as configured.
        files: the file location's root (path or URL), as configured or defaulted.
    """

    warehouse: str
    files: str

    @property
    def uc(self) -> bool:
        """Whether tables are Unity Catalog tables addressed by name."""
        return is_uc_schema(self.warehouse)

    @property
    def models(self) -> str:
        """The folder of model folders (one per model version)."""
        return join(self.files, "models")

    def model_dir(self, version: str) -> str:
        """The model folder of ``version``."""
        return join(self.models, version)

    def reports(self, run_id: str) -> str:
        """The folder of one run's reports and figures."""
        return join(self.files, "reports", run_id)

    @property
    def mlflow(self) -> str:
        """The folder of the local MLflow store (tracking database and artifacts)."""
        return join(self.files, "mlflow")

    @property
    def mlflow_db(self) -> str:
        """The SQLite database of the local MLflow store (runs and the model registry)."""
        return join(self.mlflow, "mlflow.db")

    @property
    def mlflow_artifacts(self) -> str:
        """The artifact root of the local MLflow store's experiments."""
        return join(self.mlflow, "artifacts")

    def stream_checkpoint(self, name: str) -> str:
        """The checkpoint folder of the incremental stream ``name``."""
        return join(self.files, "_checkpoints", name)


def locations(warehouse: str, files: str | None) -> Locations:
    """Resolve the file location: as given, else the warehouse folder.

    Raises:
        ConfigError: a Unity Catalog warehouse without ``files`` (a UC schema is not a folder).
    """
    if files:
        return Locations(warehouse=warehouse, files=files)
    if is_uc_schema(warehouse):
        raise ConfigError(
            f"key 'files': warehouse {warehouse!r} is a Unity Catalog schema, so models, "
            "checkpoints, reports and the MLflow store need a file location: set files to a "
            "Volume, e.g. /Volumes/<catalog>/<schema>/<volume>/recspark"
        )
    return Locations(warehouse=warehouse, files=warehouse)


def local_warehouse_dir(warehouse: str, master: str | None) -> str | None:
    """The local folder of ``warehouse`` when it is certainly a local path, else None.

    ``file:`` URLs always are; scheme-less paths only with a local master (on a cluster they
    resolve against the cluster's default file system, which this process cannot check).
    """
    if warehouse.startswith("file:"):
        return local_path(warehouse)
    if has_scheme(warehouse) or is_uc_schema(warehouse):
        return None
    if master is None or not master.startswith("local"):
        return None
    return warehouse
