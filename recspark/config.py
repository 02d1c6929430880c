"""Typed, frozen configuration: YAML files plus ``--set dotted.key=value`` overrides.

The YAML is data, never executed: it is read with ``yaml.safe_load`` and every value is checked
against the type of the dataclass field it lands in. A wrong key or type is a one-line
``ConfigError`` naming the key and the file (or ``--set``). Stage sections live beside their
stage (``recspark/<stage>/config.py``) so that each stage owns its settings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from recspark.embed.config import EmbedConfig
from recspark.errors import ConfigError
from recspark.evaluate.config import EvaluateConfig
from recspark.generate.config import GenerateConfig
from recspark.ingest.config import IngestConfig
from recspark.recommend.config import RecommendConfig
from recspark.storage import Locations, locations
from recspark.train.config import TrainConfig

DEFAULT_CONFIG = "conf/local.yaml"


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class InputConfig:
    """Where the raw inputs are (contract: ``input.events``, ``input.items``)."""

    events: str = "data/events"
    items: str = "data/items"
    # jsonl, parquet, or auto (by file extension; a folder is read as its files).
    format: Literal["auto", "jsonl", "parquet"] = "auto"


@dataclass(frozen=True)
class SparkConfig:
    """How the session is built. ``master: null`` leaves it to spark-submit / the cluster."""

    master: str | None = "local[2]"
    app_name: str = "recspark"
    shuffle_partitions: int = 8
    ui: bool = False
    driver_memory: str | None = "4g"
    # Extra Spark settings, passed through unchanged (values redacted in logs when secret).
    conf: dict[str, str] = field(default_factory=dict)
    # Delta jars: resolved through Ivy into this cache (default ~/.cache/recspark/ivy), or
    # given directly as a comma-separated list of jar paths (skips resolution).
    jars_cache: str | None = None
    jars: str | None = None
    # On Databricks (or any runtime that ships Delta), set false: nothing is resolved.
    configure_delta_jars: bool = True


@dataclass(frozen=True)
class MlflowConfig:
    """Tracking, model registry and aliases (``recspark.registry``).

    Null URIs: a SQLite store under the file location (``<files>/mlflow/mlflow.db``, artifacts
    beside it) for tracking, and the tracking store for the registry. On Databricks set
    ``tracking_uri: databricks`` and ``registry_uri: databricks-uc`` (with a three-level
    ``registered_model`` name, ``catalog.schema.model``).
    """

    # False: nothing is tracked or registered, and no store needs to be reachable.
    enabled: bool = True
    tracking_uri: str | None = None
    registry_uri: str | None = None
    experiment: str = "recspark"
    # The registered model train registers each model version under.
    registered_model: str = "recspark"
    # Alias moved to the version a successful `recspark recommend` scored with.
    serving_alias: str = "serving"
    # Alias moved by `recspark promote` when the candidate beats the champion.
    champion_alias: str = "champion"
    # Seconds the store check waits for a tracking server before the run stops.
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, found {self.timeout}")
        for name in ("experiment", "registered_model", "serving_alias", "champion_alias"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")


@dataclass(frozen=True)
class Config:
    """The whole configuration of one run."""

    warehouse: str = "warehouse"
    # The file location: models, checkpoints, reports, the MLflow store, stream checkpoints.
    # Null: the warehouse folder; with a Unity Catalog warehouse, a Volume (/Volumes/...).
    files: str | None = None
    seed: int = 42
    # A run id names one run in quarantine, recommendations and metrics; generated when null.
    run_id: str | None = None
    input: InputConfig = field(default_factory=InputConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # Where the config came from, for messages; not a key users set.
    source: str = field(default="<defaults>", compare=False)

    def with_run_id(self) -> Config:
        """This config with ``run_id`` filled in (the one place a default run id is made), so
        that every stage of one run, and a stage run on its own, names its run."""
        return self if self.run_id else dataclasses.replace(self, run_id=new_run_id())

    def locations(self) -> Locations:
        """Every location of this configuration (:mod:`recspark.storage`)."""
        return locations(self.warehouse, self.files)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _bad(value: Any, tp: Any, key: str, source: str) -> ConfigError:
    """The error for ``value`` not of type ``tp`` at ``key`` (secret values are not shown)."""
    shown = "***" if is_secret_key(key) else repr(value)
    return ConfigError(
        f"{source}: key '{key}' expected {_type_name(tp)}, found {shown} ({type(value).__name__})"
    )


def _scalar(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(ok, value in the type tp)`` for a bool, int, float or str field."""
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return not isinstance(value, bool) and isinstance(value, int), value
    if tp is float:
        ok = not isinstance(value, bool) and isinstance(value, int | float)
        return ok, float(value) if ok else value
    # str: YAML turns 2024-01-01 into a date and 1e3 into a float; keep scalars as text.
    if not isinstance(value, str | int | float | dt.date):  # a mapping, list, null, bytes
        return False, value
    if isinstance(value, bool):  # as written in YAML (Spark and Hadoop read "true")
        return True, "true" if value else "false"
    return True, value if isinstance(value, str) else str(value)


def _coerce_union(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as the first member of the union ``tp`` it fits (None when optional)."""
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, source)
        except ConfigError:
            continue
    raise _bad(value, tp, key, source)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in the field's type."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _bad(value, tp, key, source)
        return _build(tp, value, key, source)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key, source)
    if origin is Literal:
        if value not in get_args(tp):
            raise _bad(value, tp, key, source)
        return value
    if origin is dict:
        ktp, vtp = get_args(tp)
        if not isinstance(value, dict):
            raise _bad(value, tp, key, source)
        return {
            _coerce(k, ktp, f"{key}.{k}", source): _coerce(v, vtp, f"{key}.{k}", source)
            for k, v in value.items()
        }
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _bad(value, tp, key, source)
        (etp, _ellipsis) = get_args(tp)
        return tuple(_coerce(v, etp, f"{key}[{i}]", source) for i, v in enumerate(value))
    if tp in (bool, int, float, str):
        ok, out = _scalar(value, tp)
        if not ok:
            raise _bad(value, tp, key, source)
        return out
    raise ConfigError(f"{source}: key '{key}' has an unsupported type {tp!r}")  # a bug


def _build(cls: Any, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{source}: unknown key '{where}{unknown[0]}' "
            f"(expected one of: {', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, source)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:  # a section's own __post_init__ check
        raise ConfigError(f"{source}: {prefix or 'config'}: {e}") from e
    return obj


def _set_dotted(tree: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"--set: key '{'.'.join(parts)}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def override_path(dotted: str) -> tuple[list[str], Any]:
    """The keys that ``dotted`` names in the config tree, and the type of the value it sets
    (``None`` when the key is unknown: loading then reports it).

    Below a mapping-typed key (``spark.conf``, ``ingest.event_weights``) the rest of the dotted
    key is one key: ``spark.conf.fs.s3a.secret.key`` sets ``fs.s3a.secret.key`` in
    ``spark.conf``.
    """
    parts = dotted.split(".")
    tp: Any = Config
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            return parts, None
        hints = get_type_hints(tp)
        if part not in hints or part == "source":
            return parts, None
        tp = hints[part]
        if get_origin(tp) is dict and i < len(parts) - 1:
            return [*parts[: i + 1], ".".join(parts[i + 1 :])], get_args(tp)[1]
    return parts, tp


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is read as a YAML scalar (data, not code)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set: expected dotted.key=value, found {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set: key '{key}': unreadable value {raw!r}") from e
    return key, value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read, override and validate a configuration.

    Args:
        path: a YAML file; ``None`` means ``conf/local.yaml`` when it exists, else defaults.
        overrides: ``dotted.key=value`` strings applied after the file.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: naming the key and the file for any unknown key or wrong type.
    """
    source = "<defaults>"
    tree: dict[str, Any] = {}
    if path is None and Path(DEFAULT_CONFIG).exists():
        path = DEFAULT_CONFIG
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{source}: expected a mapping of keys at the top, found {type(loaded).__name__}"
            )
        tree = loaded
    for text in overrides:
        key, value = parse_override(text)
        parts, tp = override_path(key)
        text_type = tp is str or (
            get_origin(tp) in (Union, types.UnionType) and str in get_args(tp)
        )
        if text_type and isinstance(value, bool | int | float | dt.date):
            # Text as typed: YAML would turn a password "0123" into 123 and "no" into False.
            value = text.partition("=")[2].strip()
        _set_dotted(tree, parts, value)
    if overrides:
        source = f"{source} (with --set)"
    cfg = _build(Config, tree, "", source)
    try:
        cfg.locations()  # a Unity Catalog warehouse needs a file location
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e
    return typing.cast(Config, dataclasses.replace(cfg, source=source))


# --- redaction: secrets never reach logs, reports or tables -----------------------------------

# Keys whose values are secret (Python and Java regex syntax alike; Spark gets it as
# spark.redaction.regex): passwords, tokens, credentials, SAS, account and access keys, ...
SECRET_KEY_PATTERN = (
    r"(?i)secret|passw|pwd|token|credential|signature|private"
    r"|access[._-]?key|(^|[._-])(sas|key|keys|apikey)([._-]|$)"
)
_SECRET_KEY = re.compile(SECRET_KEY_PATTERN)
# A password in a URL (scheme://user:password@host) and secret query parameters (a SAS sig=).
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]*):([^/\s@]+)@")
_SECRET_PARAM = re.compile(r"(?i)([?&;](?:sig|signature|token|password|secret|key|sas)=)[^&;\s]*")
REDACTED = "***"


def is_secret_key(key: str) -> bool:
    """Whether a setting named ``key`` holds a secret (e.g. ``fs.s3a.secret.key``,
    ``fs.azure.account.key.<account>``, ``spark.ssl.keyPassword``, ``*.token``)."""
    return bool(_SECRET_KEY.search(key))


def redact_text(text: str) -> str:
    """``text`` with URL passwords and secret query parameters replaced by ``***``."""
    return _SECRET_PARAM.sub(rf"\1{REDACTED}", _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text))


def redact_tree(data: Any, key: str = "") -> Any:
    """A copy of plain config data (mappings, lists, scalars) with every value under a
    secret-looking key replaced by ``***`` and URL passwords removed from all text."""
    if key and is_secret_key(key) and data not in (None, ""):
        return REDACTED
    if isinstance(data, Mapping):
        return {k: redact_tree(v, f"{key}.{k}" if key else str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(redact_tree(v) for v in data)
    return redact_text(data) if isinstance(data, str) else data


def redact_command(cmd: Sequence[str]) -> list[str]:
    """A command line for display: ``KEY=VALUE`` arguments (``--conf``, ``--set``) with a
    secret-looking key get ``KEY=***``; URL passwords are removed from every argument."""
    out = []
    for arg in cmd:
        key, sep, _value = arg.partition("=")
        if sep and is_secret_key(key):
            arg = f"{key}={REDACTED}"
        out.append(redact_text(arg))
    return out


def to_dict(cfg: Any, *, redact: bool = True) -> dict[str, Any]:
    """The configuration as plain data (for logs, reports and MLflow params), secrets
    redacted (see :func:`redact_tree`) unless ``redact`` is false."""
    data = typing.cast(dict[str, Any], dataclasses.asdict(cfg))
    return typing.cast(dict[str, Any], redact_tree(data)) if redact else data


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config data as ``dotted.key -> value`` (mappings of settings such as
    ``spark.conf`` stay one level: ``spark.conf.fs.s3a.secret.key``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
