"""Every location resolved in one place (recspark.storage): pure functions, no Spark."""

from __future__ import annotations

import os

import pytest

from recspark.config import load_config
from recspark.errors import ConfigError
from recspark.storage import (
    file_url,
    is_uc_schema,
    local_path,
    local_warehouse_dir,
    locations,
    require_local,
)


@pytest.mark.parametrize(
    ("warehouse", "uc"),
    [
        ("main.recspark", True),
        ("`my-cat`.recspark", True),
        ("warehouse", False),
        ("./main.recspark", False),
        ("/data/main.recspark", False),
        ("s3a://bucket/wh", False),
        ("dbfs:/recspark/warehouse", False),
        ("a.b.c", False),
    ],
)
def test_uc_schema_is_two_identifiers(warehouse: str, uc: bool) -> None:
    assert is_uc_schema(warehouse) is uc


def test_local_path_of_each_scheme() -> None:
    assert local_path("wh") == os.path.abspath("wh")
    assert local_path("/data/wh") == "/data/wh"
    assert local_path("file:/data/wh") == "/data/wh"
    assert local_path("file:///data/wh") == "/data/wh"
    assert local_path("dbfs:/recspark/wh") == "/dbfs/recspark/wh"
    assert local_path("/Volumes/main/recspark/files") == "/Volumes/main/recspark/files"
    assert local_path("s3a://bucket/wh") is None
    assert local_path("abfss://c@acct.dfs.core.windows.net/wh") is None


def test_file_url() -> None:
    assert file_url("/data/wh") == "file:///data/wh"
    assert file_url("file:/data/wh") == "file:///data/wh"
    assert file_url("s3a://bucket/wh") == "s3a://bucket/wh"
    assert file_url("dbfs:/wh") == "dbfs:/wh"


def test_require_local_names_the_key() -> None:
    assert require_local("/data/m", "model folders", "files") == "/data/m"
    with pytest.raises(ConfigError, match=r"key 'files': model folders .* found 's3a://b/m'"):
        require_local("s3a://b/m", "model folders", "files")


def test_locations_default_to_the_warehouse_folder() -> None:
    where = locations("s3a://bucket/wh", None)
    assert where.files == "s3a://bucket/wh"
    assert where.model_dir("v1") == "s3a://bucket/wh/models/v1"
    assert where.reports("r1") == "s3a://bucket/wh/reports/r1"
    assert not where.uc


def test_uc_warehouse_needs_a_file_location() -> None:
    with pytest.raises(ConfigError, match=r"key 'files'.*Volume"):
        locations("main.recspark", None)
    where = locations("main.recspark", "/Volumes/main/recspark/files/")
    assert where.uc
    assert where.model_dir("v1") == "/Volumes/main/recspark/files/models/v1"
    assert where.mlflow == "/Volumes/main/recspark/files/mlflow"
    assert where.stream_checkpoint("events") == "/Volumes/main/recspark/files/_checkpoints/events"


def test_files_key_in_config() -> None:
    cfg = load_config(None, ["warehouse=main.recspark", "files=/Volumes/main/recspark/v"])
    assert cfg.locations().models == "/Volumes/main/recspark/v/models"
    assert load_config(None, []).locations().files == "warehouse"


def test_local_warehouse_dir() -> None:
    assert local_warehouse_dir("wh", "local[2]") == "wh"
    assert local_warehouse_dir("file:///data/wh", None) == "/data/wh"
    assert local_warehouse_dir("/data/wh", None) is None  # a cluster's default file system
    assert local_warehouse_dir("main.recspark", "local[2]") is None
