"""Unity Catalog warehouses: tables addressed by name (``catalog.schema.layer_table``).

A local metastore stands in for Unity Catalog: a schema of the session catalog
(``spark_catalog.<schema>``, created with a LOCATION under the test's folder). The same helpers
and the same ingest job that write path warehouses write there by name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from recspark import schema as S
from recspark import tables as T
from recspark.config import load_config
from recspark.errors import ConfigError, SchemaError, StageNotReadyError
from recspark.storage import locations

# --- names, without Spark -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "uc"),
    [
        ("silver/events", "silver_events"),
        ("gold/item_embeddings", "gold_item_embeddings"),
        ("silver/kv", "silver_kv"),
        ("plain", "plain"),
    ],
)
def test_uc_name_joins_the_parts_with_underscores(name: str, uc: str) -> None:
    assert T.uc_table_name(name) == uc


@pytest.mark.parametrize("name", ["silver/ev-ents", "silver/événements", "../x", "/abs", "a//b"])
def test_uc_name_refuses_what_is_no_plain_identifier(name: str) -> None:
    with pytest.raises(ConfigError, match=repr(name).replace("\\", "\\\\")):
        T.uc_table_name(name)


def test_ref_is_by_name_in_a_uc_schema_and_by_path_under_a_folder() -> None:
    uc = T.ref("main.recspark", T.SILVER_EVENTS)
    assert (uc.location, uc.by_name, str(uc)) == (
        "main.recspark.silver_events",
        True,
        "main.recspark.silver_events",
    )
    assert T.ref("`my-cat`.recspark", T.GOLD_METRICS).location == "`my-cat`.recspark.gold_metrics"
    path = T.ref("s3a://bucket/wh/", T.SILVER_EVENTS)
    assert (path.location, path.by_name) == ("s3a://bucket/wh/silver/events", False)
    # Resolved from the Locations as well (the warehouse part; files play no role).
    where = locations("main.recspark", "/Volumes/main/recspark/files")
    assert T.ref(where, T.GOLD_RECOMMENDATIONS).location == "main.recspark.gold_recommendations"
    with pytest.raises(ConfigError, match="Unity Catalog schema"):
        T.table_path("main.recspark", T.SILVER_EVENTS)


def test_registry_names_keys_and_partitions_are_consistent() -> None:
    names = [t.name for t in T.TABLES]
    assert len(set(names)) == len(names) == len(T.REGISTRY)
    assert len({t.uc_name for t in T.TABLES}) == len(names)  # no two tables share a UC name
    for t in T.TABLES:
        columns = t.schema.fieldNames()
        assert set(t.key) <= set(columns), t.name
        assert set(t.partition_by) <= set(columns), t.name
        assert t.written_by in ("ingest", "embed", "train", "recommend", "evaluate"), t.name
    assert T.REGISTRY[T.SILVER_EVENTS].partition_by == (S.EVENT_DATE,)
    assert T.written_by(T.GOLD_ITEM_VECTORS) == "train"
    assert T.written_by("silver/unknown") == "an earlier stage"


def test_uc_warehouse_without_a_file_location_stops_before_spark() -> None:
    from recspark.cli import preflight
    from recspark.config import Config

    with pytest.raises(
        ConfigError, match=r"\.yaml \(with --set\): key 'files'.*Unity Catalog schema.*Volume"
    ):
        load_config(None, ["warehouse=main.recspark"])
    with pytest.raises(ConfigError, match=r"key 'files'"):
        preflight(["ingest"], Config(warehouse="main.recspark"))
    ok = load_config(None, ["warehouse=main.recspark", "files=/Volumes/main/recspark/files"])
    assert ok.locations().model_dir("v1") == "/Volumes/main/recspark/files/models/v1"
    assert ok.locations().reports("r1") == "/Volumes/main/recspark/files/reports/r1"
    assert ok.locations().mlflow == "/Volumes/main/recspark/files/mlflow"


# --- a local metastore schema standing in for Unity Catalog ------------------------------

KV = StructType([StructField("k", LongType(), False), StructField("v", StringType())])


@pytest.fixture
def uc_schema(spark: SparkSession, tmp_path: Path) -> Iterator[str]:
    """``spark_catalog.<schema>``, its tables stored under ``tmp_path/schema``."""
    name = f"spark_catalog.recspark_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE SCHEMA {name} LOCATION '{tmp_path / 'schema'}'")
    yield name
    spark.sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _rows(spark: SparkSession, table: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.table(table).collect())


def test_helpers_write_read_merge_and_version_by_name(
    spark: SparkSession, uc_schema: str, tmp_path: Path
) -> None:
    name = "silver/kv"
    table = T.ref(uc_schema, name)
    assert table.location == f"{uc_schema}.silver_kv"
    assert not T.exists(spark, table)
    with pytest.raises(StageNotReadyError, match=rf"table {uc_schema}\.silver_kv does not exist"):
        T.read(spark, uc_schema, name)

    T.overwrite(spark.createDataFrame([(1, "a"), (2, "b")], KV), uc_schema, name)
    assert T.exists(spark, table) and spark.catalog.tableExists(table.location)
    assert T.version(spark, table) == 0
    # A managed table of the schema: its files are under the schema's location, and nothing
    # was written to a folder named like the schema.
    assert (tmp_path / "schema" / "silver_kv" / "_delta_log").is_dir()
    assert not Path(uc_schema).exists()

    new = spark.createDataFrame([(2, "x"), (3, "c")], KV)
    assert T.merge_new(spark, new, uc_schema, name, ["k"]) == 1
    assert T.version(spark, table) == 1
    assert T.merge_new(spark, new, uc_schema, name, ["k"]) == 0  # idempotent: no commit
    assert T.version(spark, table) == 1
    assert _rows(spark, table.location) == [(1, "a"), (2, "b"), (3, "c")]

    T.merge_upsert(spark, new, uc_schema, name, ["k"], delete_missing=True)
    assert [tuple(r) for r in T.read(spark, uc_schema, name).orderBy("k").collect()] == [
        (2, "x"),
        (3, "c"),
    ]
    T.append(spark.createDataFrame([(9, "z")], KV), uc_schema, name)
    assert T.read(spark, uc_schema, name).count() == 3
    assert T.version(spark, table) == 3
    # Time travel by name, as on Unity Catalog.
    v0 = spark.read.option("versionAsOf", 0).table(table.location)
    assert sorted(tuple(r) for r in v0.collect()) == [(1, "a"), (2, "b")]

    # A table created by a MERGE helper, and the metrics of its first commit.
    inserted, created = T.insert_new(spark, new, uc_schema, "silver/kv2", ["k"])
    assert (inserted, created) == (2, True)


def test_a_registered_table_refuses_columns_outside_its_schema(
    spark: SparkSession, uc_schema: str
) -> None:
    metrics = spark.createDataFrame([], S.METRICS_SCHEMA).withColumn("oops", F.lit(1))
    with pytest.raises(SchemaError, match=r"gold_metrics: expected columns \['run_id'.*oops"):
        T.overwrite(metrics, uc_schema, T.GOLD_METRICS)
    assert not T.exists(spark, T.ref(uc_schema, T.GOLD_METRICS))


def test_a_schema_that_does_not_exist_is_a_config_error(spark: SparkSession) -> None:
    missing = f"spark_catalog.nope_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError, match=rf"schema {missing} does not exist"):
        T.overwrite(spark.createDataFrame([(1, "a")], KV), missing, "silver/kv")


def _jsonl(path: Path, records: list[dict[str, object]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_ingest_writes_its_tables_by_name(
    spark: SparkSession, uc_schema: str, tmp_path: Path
) -> None:
    from recspark.ingest.job import run as ingest

    items = _jsonl(
        tmp_path / "in" / "items.jsonl",
        [{"item_id": f"i{i}", "title": f"Item {i}", "category": "A"} for i in range(3)],
    )
    event = {"user_id": "u1", "item_id": "i1", "event_type": "view"}
    events = _jsonl(
        tmp_path / "in" / "events.jsonl",
        [
            {**event, "event_id": "e1", "event_ts": "2024-05-01T12:00:00Z"},
            {**event, "event_id": "e1", "event_ts": "2024-05-01T12:00:00Z"},  # duplicate
            {**event, "event_id": "e2", "item_id": "i2", "event_ts": "2024-05-02T12:00:00Z"},
            {**event, "event_id": "e3", "item_id": "nope", "event_ts": "2024-05-02T13:00:00Z"},
        ],
    )
    cfg = load_config(
        None,
        [
            f"warehouse={uc_schema}",
            f"files={tmp_path / 'files'}",
            f"input.items={items}",
            f"input.events={events}",
            "run_id=uc-run",
        ],
    )
    summary = ingest(spark, cfg)
    assert {k: summary["events"][k] for k in ("read", "accepted", "quarantined", "duplicates")} == {
        "read": 4,
        "accepted": 2,
        "quarantined": 1,
        "duplicates": 1,
    }
    names = {t.name for t in spark.catalog.listTables(uc_schema)}
    assert names == {
        "silver_items",
        "silver_events",
        "silver_quarantine",
        "silver_interactions",
        "silver_ingest_runs",
        "silver_event_hours",
    }
    events_table = f"{uc_schema}.silver_events"
    assert sorted(r[S.EVENT_ID] for r in spark.table(events_table).collect()) == ["e1", "e2"]
    detail = spark.sql(f"DESCRIBE DETAIL {events_table}").first()
    assert detail["partitionColumns"] == [S.EVENT_DATE]
    # File statistics only on the columns queries filter on, as for a path warehouse.
    assert detail["properties"]["delta.dataSkippingStatsColumns"] == (
        "user_id,item_id,event_type,event_ts"
    )
    assert spark.table(f"{uc_schema}.silver_quarantine").count() == 1
    # Rerun: the MERGEs by name insert nothing.
    again = ingest(spark, cfg)["events"]
    assert (again["inserted"], again["quarantine_inserted"]) == (0, 0)
    assert spark.table(events_table).count() == 2
    # No table went to the file location: only the event stream's checkpoint is there.
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == ["_checkpoints"]


def test_change_data_and_a_replacing_merge_by_name(spark: SparkSession, uc_schema: str) -> None:
    # A registered table with the change data feed, created by name.
    name = T.GOLD_ITEM_EMBEDDINGS
    table = T.ref(uc_schema, name)
    vectors = "item_id string, embedding array<float>"
    T.overwrite(spark.createDataFrame([("a", [1.0]), ("b", [2.0])], vectors), uc_schema, name)
    replace = spark.createDataFrame([("a", None), ("c", [3.0])], vectors)
    only = T.target_in(replace, "item_id")
    T.merge_replace(
        spark, replace, uc_schema, name, ["item_id"], "embedding", only, user_metadata="m1"
    )
    assert _rows(spark, table.location) == [("b", [2.0]), ("c", [3.0])]
    assert T.last_user_metadata(spark, table) == "m1"
    changed = T.changes(spark, table, 1, 1).collect()
    assert sorted((r["item_id"], r["_change_type"]) for r in changed) == [
        ("a", "delete"),
        ("c", "insert"),
    ]
    # A table without the feed: reading its changes fails, and the failure is told apart.
    T.overwrite(spark.createDataFrame([(1, "a")], KV), uc_schema, "silver/kv")
    T.merge_upsert(spark, spark.createDataFrame([(1, "b")], KV), uc_schema, "silver/kv", ["k"])
    with pytest.raises(PySparkException) as failure:
        T.changes(spark, T.ref(uc_schema, "silver/kv"), 1, 1).collect()
    assert T.change_data_gap(failure.value) == "DELTA_MISSING_CHANGE_DATA"
    assert T.change_data_gap(ValueError("no condition")) is None
