"""Whole files of bad input: every record accounted for, or one clear error naming the file."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from recspark.config import load_config
from recspark.errors import InputError
from recspark.ingest.job import run as ingest

GOOD = '{"user_id":"u1","item_id":"i1","event_type":"view","event_ts":1709290000}'


def _catalog(tmp: Path) -> Path:
    d = tmp / "items"
    d.mkdir()
    (d / "items.jsonl").write_text('{"item_id":"i1","title":"One"}\n', encoding="utf-8")
    return d


def _cfg(tmp: Path, warehouse: str, events: Path, items: Path) -> object:
    return load_config(
        None,
        [f"warehouse={warehouse}", f"input.events={events}", f"input.items={items}", "run_id=r"],
    )


@pytest.mark.slow
def test_garbage_files_are_accounted_for(
    spark: SparkSession, tmp_path: Path, warehouse: str
) -> None:
    ev = tmp_path / "events"
    ev.mkdir()
    (ev / "a_binary.jsonl").write_bytes(bytes(range(256)) * 4 + b"\n" + GOOD.encode() + b"\n")
    (ev / "b_long_line.jsonl").write_text('{"user_id":"' + "x" * 10_000_000 + '"}\n' + GOOD + "\n")
    (ev / "c_nested.jsonl").write_text('{"a":' * 5000 + "1" + "}" * 5000 + "\n")
    latin1 = '{"user_id":"Zoë","item_id":"i1","event_type":"click","event_ts":1709290001}\n'
    (ev / "d_latin1.jsonl").write_bytes(latin1.encode("latin-1"))
    (ev / "e_empty.jsonl").write_bytes(b"")
    (ev / "f_csv.jsonl").write_text("user_id,item_id,event_type,event_ts\nu1,i1,view,1709290000\n")
    (ev / "g_types.jsonl.gz").write_bytes(
        gzip.compress(
            b'{"user_id":1,"item_id":"i1","event_type":"purchase","event_ts":"1709290002","value":"NaN"}\n'
            b'{"user_id":true,"item_id":"i1","event_type":"purchase","event_ts":1709290003,"value":1e400}\n'
        )
    )
    out = ingest(spark, _cfg(tmp_path, warehouse, ev, _catalog(tmp_path)))["events"]  # type: ignore[arg-type]
    # The binary block holds four newlines: 6 + 2 + 1 + 1 + 0 + 2 + 2 records. The two GOOD
    # lines are one event and its duplicate; the Latin-1 line is read (its name mangled).
    assert out["read"] == 14
    assert out["read"] == out["accepted"] + out["quarantined"] + out["duplicates"]
    assert out["duplicates"] == 1
    reasons = out["quarantined_by_reason"]
    assert reasons.get("malformed_json", 0) == 8  # 5 binary, nested, 2 csv lines
    assert reasons.get("missing_field", 0) == 1  # the 10 MB line has only a user_id
    assert reasons.get("bad_value", 0) == 2  # NaN, and 1e400 (infinite)
    q = spark.read.format("delta").load(f"{warehouse}/silver/quarantine")
    assert q.count() == out["quarantined"]
    assert q.where("length(raw) > 9999999").count() == 1  # kept unchanged


@pytest.mark.slow
def test_truncated_gzip_is_one_clear_error(
    spark: SparkSession, tmp_path: Path, warehouse: str
) -> None:
    ev = tmp_path / "events"
    ev.mkdir()
    data = gzip.compress((GOOD + "\n").encode() * 5000)
    (ev / "broken.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"broken\.jsonl\.gz"):
        ingest(spark, _cfg(tmp_path, warehouse, ev, _catalog(tmp_path)))  # type: ignore[arg-type]


def test_missing_input_path_is_an_input_error(
    spark: SparkSession, tmp_path: Path, warehouse: str
) -> None:
    with pytest.raises(InputError, match="matches no files"):
        ingest(spark, _cfg(tmp_path, warehouse, tmp_path / "none", _catalog(tmp_path)))  # type: ignore[arg-type]
