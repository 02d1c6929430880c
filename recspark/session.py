"""The one session factory: it takes a builder and returns it configured, as Delta's
``configure_spark_with_delta_pip`` does. Nothing here creates a global session."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from recspark.config import REDACTED, SECRET_KEY_PATTERN, SparkConfig, is_secret_key, redact_text
from recspark.errors import DependencyError
from recspark.jars import (
    DELTA_CLASSES,
    cached_jars,
    default_cache,
    delta_version,
    ensure_delta_jars,
    missing_delta_message,
)


def redact(conf: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``conf`` for display: the values of secret-looking keys (see
    :func:`recspark.config.is_secret_key`) replaced by ``***``, URL passwords removed."""
    return {k: (REDACTED if is_secret_key(k) else redact_text(v)) for k, v in conf.items()}


# Spark's generated code for wide rows (ingest's validation is one method of several thousand
# bytecodes) exceeds HotSpot's 8,000-byte limit for JIT compilation, and then runs interpreted
# for the whole job: validating 1M events took 6.5 s instead of 1.8 s. This lets the JIT compile
# them. It takes effect where the JVM starts after this config (local mode, spark-submit client
# mode's executors); on Databricks set it in the cluster's Spark config.
_COMPILE_HUGE_METHODS = "-XX:-DontCompileHugeMethods"
_JVM_OPTION_KEYS = ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions")


def spark_settings(
    cfg: SparkConfig, jars: list[str] | None, python: str | None = None
) -> dict[str, str]:
    """The Spark settings recspark needs, as a pure function of the config (unit-tested).

    ``python`` is the interpreter of the driver: in local mode the Python workers (pandas UDFs,
    Horovod and TorchDistributor tasks) must use it too, not whatever ``python3`` is on PATH.
    """
    conf: dict[str, str] = {
        "spark.app.name": cfg.app_name,
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "true" if cfg.ui else "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Ingest reads many small JSON files; AQE coalesces the shuffles after it.
        "spark.sql.adaptive.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta rebuilds table state with this many tasks (default 50: slow on small data).
        "spark.databricks.delta.snapshotPartitions": str(max(1, min(50, cfg.shuffle_partitions))),
        "spark.ui.showConsoleProgress": "true" if cfg.ui else "false",
        # Spark's own redaction (UI, event logs, spark-submit --verbose) with recspark's
        # pattern, which also covers SAS tokens and account keys (Spark's default does not).
        "spark.redaction.regex": SECRET_KEY_PATTERN,
        # A second ingest on the same stream checkpoint is refused (ConcurrentWriteError),
        # instead of stopping the running one mid-batch (Spark's default).
        "spark.sql.streaming.stopActiveRunOnRestart": "false",
    }
    if cfg.driver_memory:
        conf["spark.driver.memory"] = cfg.driver_memory
    if jars:
        conf["spark.jars"] = ",".join(jars)
    if python and (cfg.master or "").startswith("local"):
        conf["spark.pyspark.python"] = python
        conf["spark.pyspark.driver.python"] = python
    conf.update(cfg.conf)
    for key in _JVM_OPTION_KEYS:
        # Appended to the user's options; a user's own choice of this flag wins.
        options = conf.get(key, "")
        if "DontCompileHugeMethods" not in options:
            conf[key] = f"{options} {_COMPILE_HUGE_METHODS}".strip()
    return conf


def configure(builder: SparkSession.Builder, cfg: SparkConfig) -> SparkSession.Builder:
    """Configure ``builder`` for recspark: Delta, time zone, shuffle partitions, UI, jars.

    The Delta jars are resolved once into a cache (never at every start); with
    ``configure_delta_jars: false`` (Databricks, or a cluster that ships Delta) none are added.
    """
    jars: list[str] | None = None
    if cfg.jars:
        jars = [j.strip() for j in cfg.jars.split(",") if j.strip()]
    elif cfg.configure_delta_jars:
        cache = default_cache() if cfg.jars_cache is None else Path(cfg.jars_cache)
        jars = ensure_delta_jars(cache)
    if cfg.master:
        builder = builder.master(cfg.master)
    settings = spark_settings(cfg, jars, python=sys.executable)
    if "spark.pyspark.python" in settings:
        # PySpark reads the workers' interpreter from the environment, not from the conf,
        # when the driver is a Python process: without this, local workers run `python3` from
        # PATH, which lacks recspark's dependencies.
        os.environ.setdefault("PYSPARK_PYTHON", settings["spark.pyspark.python"])
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder


def missing_jvm_classes(spark: SparkSession, names: Sequence[str]) -> list[str] | None:
    """The classes of ``names`` that the session's JVM cannot load, in order.

    Classes are looked up as Py4J (hence Delta's Python API) does, through the gateway thread's
    context class loader, which sees ``spark.jars`` / ``--jars`` / ``--packages``. None when the
    JVM cannot be asked (a Spark Connect session, or a cluster whose Py4J security refuses the
    call): nothing is known to be missing then.
    """
    from py4j.protocol import Py4JError, Py4JJavaError

    try:
        jvm = spark._jvm  # the one way to ask the driver's JVM
        if jvm is None:
            return None
        thread = jvm.java.lang.Thread.currentThread()
        loader = thread.getContextClassLoader()
        forname = jvm.java.lang.Class.forName
    except Exception:
        return None
    missing: list[str] = []
    for name in names:
        try:
            forname(name, False, loader)
        except Py4JJavaError as e:
            if "ClassNotFoundException" not in str(e.java_exception.getClass().getName()):
                return None
            missing.append(name)
        except Py4JError:
            return None
    return missing


def require_delta(spark: SparkSession) -> None:
    """Stop with one line naming the fix when the session's JVM lacks the Delta jars.

    Without this, a spark-submit run without ``--packages``/``--jars`` ends in a Java
    ``ClassNotFoundException`` and ``TypeError: 'JavaPackage' object is not callable``.

    Raises:
        DependencyError: a Delta class is missing (``missing_delta_message``).
    """
    missing = missing_jvm_classes(spark, DELTA_CLASSES)
    if missing:
        version = delta_version()
        raise DependencyError(missing_delta_message(version, cached_jars(None, version), missing))
