"""Whole files of bad input (the corpus in tests/data/bad_inputs, see its make_corpus.py): every
record accounted for, or one clear error naming the file; and no secret in logs or reports."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.config import Config, load_config
from recspark.errors import InputError
from recspark.ingest import classify as C
from recspark.ingest.job import run as ingest
from recspark.io import input_errors, read_raw
from recspark.reporting.writer import write_run_report
from recspark.summary import StageSummary

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "data" / "bad_inputs"
EXPECTED = json.loads((CORPUS / "EXPECTED.json").read_text())
SECRETS = {
    "spark.hadoop.fs.s3a.secret.key": "S3CRET-xyz-0123",
    "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "AZKEY-abc-987",
}
LONG_LINE = '{"user_id":"' + "x" * 10_000_000 + '"}\n'  # 10 MB, no item: missing_field
WINDOW = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC))


def records_in(path: Path) -> int:
    """How many records Spark's text reader makes of a file (lines split on b"\\n")."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _sets(**keys: Any) -> list[str]:
    return [f"{k}={v}" for k, v in keys.items()]


@dataclass
class CorpusRun:
    cfg: Config
    events_dir: Path
    summary: dict[str, Any]
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    """``recspark ingest`` (a subprocess: its Spark logs are captured too) over the events
    corpus plus a 10 MB line, with two secrets set through ``--set spark.conf...``."""
    tmp = tmp_path_factory.mktemp("corpus")
    events = tmp / "events"
    shutil.copytree(CORPUS / "events", events)
    (events / "k_long_line.jsonl").write_text(LONG_LINE)
    overrides = _sets(
        warehouse=tmp / "wh",
        **{"input.events": events, "input.items": CORPUS / "items", "run_id": "bad-inputs"},
        **{"spark.driver_memory": "1g", "spark.shuffle_partitions": 2},
        **{f"spark.conf.{k}": v for k, v in SECRETS.items()},
    )
    args = [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "recspark.cli", "ingest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return CorpusRun(load_config(None, overrides), events, summary, proc.stdout, proc.stderr)


@pytest.mark.slow
def test_every_bad_record_is_accounted_for_file_by_file(
    spark: SparkSession, corpus_run: CorpusRun
) -> None:
    ev = corpus_run.summary["events"]
    lines = {p.name: records_in(p) for p in corpus_run.events_dir.iterdir()}
    assert ev["read"] == sum(lines.values())
    assert ev["read"] == ev["accepted"] + ev["quarantined"] + ev["duplicates"]

    wh = corpus_run.cfg.warehouse
    events = spark.read.format("delta").load(f"{wh}/silver/events")
    quarantine = (
        spark.read.format("delta").load(f"{wh}/silver/quarantine").where("input = 'events'")
    )
    accepted = Counter(r[0].rsplit("/", 1)[-1] for r in events.select(S.SOURCE_FILE).collect())
    reasons: dict[str, Counter[str]] = {}
    for r in quarantine.select(S.SOURCE_FILE, S.REASON).collect():
        reasons.setdefault(r[0].rsplit("/", 1)[-1], Counter())[r[1]] += 1
    want = {
        **EXPECTED["events"],
        "k_long_line.jsonl": {"accepted": 0, "duplicates": 0, "quarantined": {"missing_field": 1}},
    }
    got = {}
    for name, n in lines.items():
        quarantined = dict(reasons.get(name, Counter()))
        dups = n - accepted[name] - sum(quarantined.values())
        got[name] = {"accepted": accepted[name], "duplicates": dups, "quarantined": quarantined}
    assert got == want
    total: Counter[str] = Counter()
    for outcome in want.values():
        total.update(outcome["quarantined"])
    assert ev["quarantined_by_reason"] == dict(sorted(total.items()))

    # Quarantined records are kept as read: the 10 MB line whole, a Latin-1 line with the
    # replacement character that reading put for its byte, new fields in the raw text.
    raws = {r[0] for r in quarantine.select(S.RAW).collect()}
    assert LONG_LINE.rstrip("\n") in raws
    assert any("Zo\ufffd-latin1" in r for r in raws)
    detail = quarantine.where(F.col(S.SOURCE_FILE).endswith("c_mixed_encodings.jsonl"))
    assert {r[0] for r in detail.select(S.DETAIL).collect()} == {"not UTF-8 (U+FFFD)"}
    # The UTF-8 BOM and CRLF file, and the well-encoded line beside bad ones, are accepted.
    users = {r[0] for r in events.select(S.USER_ID).collect()}
    assert {"u5", "Zoë-utf8", "17", "u7"} <= users


@pytest.mark.slow
def test_catalog_with_duplicate_ids_keeps_one_record_per_id(
    spark: SparkSession, corpus_run: CorpusRun
) -> None:
    items = corpus_run.summary["items"]
    want = EXPECTED["items"]
    for key in ("read", "accepted", "duplicates", "quarantined", "quarantined_by_reason"):
        assert items[key] == want[key], key
    table = spark.read.format("delta").load(f"{corpus_run.cfg.warehouse}/silver/items")
    assert {r[S.ITEM_ID]: r[S.TITLE] for r in table.collect()} == want["titles"]


@pytest.mark.slow
def test_secrets_never_reach_logs_tables_or_the_report(
    spark: SparkSession, corpus_run: CorpusRun
) -> None:
    cfg = corpus_run.cfg
    assert cfg.spark.conf == SECRETS  # the dotted keys arrived whole, the values unchanged
    summary = StageSummary.of("ingest", str(corpus_run.summary["run_id"]), 1.0, corpus_run.summary)
    path = write_run_report(spark, cfg, [summary])
    page = Path(path).read_text(encoding="utf-8")
    assert "spark.conf.spark.hadoop.fs.s3a.secret.key" in page and "***" in page
    texts = {
        "stdout": corpus_run.stdout,
        "stderr (with Spark's)": corpus_run.stderr,
        "report": page,
    }
    for name in ("silver/ingest_runs", "silver/quarantine", "silver/events", "silver/items"):
        rows = spark.read.format("delta").load(f"{cfg.warehouse}/{name}").collect()
        texts[name] = repr(rows)
    for f in Path(cfg.warehouse).rglob("*"):
        if f.is_file() and f.suffix in (".json", ".html", ".md", ".txt", ".crc"):
            texts[str(f)] = f.read_text(encoding="utf-8", errors="replace")
    for secret in SECRETS.values():
        leaks = [name for name, text in texts.items() if secret in text]
        assert leaks == [], f"{secret} found in {leaks}"


def test_parquet_columns_whose_types_differ_between_files(spark: SparkSession) -> None:
    drift = CORPUS / "parquet_drift"
    # Only a new column: the schemas merge, and the column stays in that file's raw records.
    merged = read_raw(spark, str(drift / "{a_string,d_new_column}.parquet"))
    raw = {r[S.SOURCE_FILE].rsplit("/", 1)[-1]: json.loads(r[S.RAW]) for r in merged.collect()}
    assert raw["d_new_column.parquet"]["browser"] == "firefox"
    assert "browser" not in raw["a_string.parquet"]
    # user_id a string, a number or a struct depending on the file: each file keeps its types.
    every = read_raw(spark, str(drift))
    items = spark.createDataFrame([("i1", None)], "item_id string, category string")
    classified = C.classify_events(every, items, min_ts=WINDOW[0], max_ts=WINDOW[1])
    got = {
        r[S.SOURCE_FILE].rsplit("/", 1)[-1]: (r[S.USER_ID], r[C.STATUS], r[S.REASON], r[S.RAW])
        for r in classified.collect()
    }
    assert {k: v[:3] for k, v in got.items()} == {
        "a_string.parquet": ("p1", "accepted", None),
        "b_number.parquet": ("7", "accepted", None),
        "c_struct.parquet": ('{"id":"p3"}', "quarantined", S.Reason.BAD_TYPE),
        "d_new_column.parquet": ("p4", "quarantined", S.Reason.UNKNOWN_EVENT_TYPE),
    }
    assert json.loads(got["d_new_column.parquet"][3])["browser"] == "firefox"


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("truncated.jsonl.gz", "truncated: the compressed stream ends early"),
        ("not_gzip.jsonl.gz", "not gzip data"),
        ("corrupt.parquet", "not a Parquet file: unreadable footer"),
    ],
)
def test_unreadable_files_are_one_clear_error(
    spark: SparkSession, tmp_path: Path, name: str, cause: str
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(CORPUS / "stop" / name, d / name)
    want = rf"cannot read input file \S*/{name} \({cause}\)"
    with pytest.raises(InputError, match=want) as e, input_errors(str(d)):
        read_raw(spark, str(d)).count()
    assert "\n" not in str(e.value)


def _cfg(tmp: Path, warehouse: str, events: Path, items: Path, *more: str) -> Config:
    sets = [f"warehouse={warehouse}", f"input.events={events}", f"input.items={items}", *more]
    return load_config(None, [*sets, "run_id=r"])


@pytest.mark.slow
def test_truncated_gzip_stops_the_run_naming_the_file(
    spark: SparkSession, tmp_path: Path, warehouse: str
) -> None:
    ev = tmp_path / "events"
    ev.mkdir()
    shutil.copy(CORPUS / "stop" / "truncated.jsonl.gz", ev / "broken.jsonl.gz")
    with pytest.raises(InputError, match=r"broken\.jsonl\.gz"):
        ingest(spark, _cfg(tmp_path, warehouse, ev, CORPUS / "items"))


@pytest.mark.parametrize("catalog", ["empty_catalog.jsonl", "csv_catalog.jsonl"])
def test_a_catalog_without_valid_items_stops_the_run(
    spark: SparkSession, tmp_path: Path, warehouse: str, catalog: str
) -> None:
    """Every event would be quarantined as unknown_item: a clear error instead (the catalog's
    own bad records are in the quarantine)."""
    items = CORPUS / "stop" / catalog
    with pytest.raises(InputError, match=r"no valid item.*quarantine_unknown_items=false") as e:
        ingest(spark, _cfg(tmp_path, warehouse, CORPUS / "events", items))
    assert str(items) in str(e.value) and "\n" not in str(e.value)
    assert not (Path(warehouse) / "silver" / "events").exists()


def test_missing_input_path_is_an_input_error(
    spark: SparkSession, tmp_path: Path, warehouse: str
) -> None:
    with pytest.raises(InputError, match="matches no files"):
        ingest(spark, _cfg(tmp_path, warehouse, tmp_path / "none", CORPUS / "items"))
