"""The embed stage's run function (not built yet)."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from recspark.config import Config
from recspark.errors import StageNotReadyError


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    raise StageNotReadyError("the embed stage is not built yet")
