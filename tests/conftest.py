"""One session-scoped local Spark for the whole suite, built by the project's own factory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from recspark.config import SparkConfig
from recspark.session import configure

# Spark's Python workers (the embed UDF, horovod.spark.run tasks, mapInPandas) must run this
# interpreter, which has torch and horovod; set once, before any session starts.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")

TEST_SPARK = SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="3g", ui=False)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    session = (
        configure(SparkSession.builder, TEST_SPARK)
        .config("spark.sql.ansi.enabled", "true")
        .config("spark.default.parallelism", "2")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture
def warehouse(tmp_path: Path) -> str:
    """A fresh, empty warehouse folder for one test."""
    return str(tmp_path / "warehouse")
