"""Reliability: kills while writing, concurrent writers, full / read-only warehouse, bad model
folders and checkpoints.

The planning and comparison helpers of ``tests.support.faults`` are tested without Spark; the
``slow`` tests run ``.venv/bin/recspark`` as a subprocess on a tiny generated data set, SIGKILL
it at a kill point, run it again (in-process) and compare its tables with an uninterrupted
run's (built in-process once per module). They are a few meaningful cases; the whole
kill-and-rerun matrix (every stage, several kill points) is ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pyspark.sql import SparkSession
from pyspark.sql.types import LongType, StringType, StructField, StructType

from recspark import schema as S
from recspark import tables as T
from recspark import write_failures as W
from recspark.cli import (
    check_writable,
    exit_status,
    local_warehouse_dir,
    run_stages,
    storage_failure,
)
from recspark.config import Config, load_config
from recspark.errors import ConcurrentWriteError, ModelError, StorageError
from recspark.train import loop
from recspark.train.artifacts import CHECKPOINT, load_checkpoint, write_text_atomic
from recspark.train.distributed import LocalComm
from recspark.train.loop import TrainSpec, train_worker
from recspark.train.model import ModelShape
from tests.support import faults as FX

ROOT = Path(__file__).resolve().parents[1]
RECSPARK = str(ROOT / ".venv" / "bin" / "recspark")
CONFIG = str(ROOT / "conf" / "local.yaml")


# ---------------------------------------------------------------------------------------------
# Pure planning and comparison


def test_plan_kills_covers_each_stage_from_the_snapshot_before_it() -> None:
    cases = FX.plan_kills(["ingest", "embed", "train", "recommend"])
    by_stage: dict[str, list[FX.FaultCase]] = {}
    for c in cases:
        by_stage.setdefault(c.stage, []).append(c)
    ingest = by_stage["ingest"]
    first = [c for c in ingest if c.base == "empty"]
    incremental = [c for c in ingest if c.base == "first_load"]
    assert [c.expect for c in first] == ["first_load"] * 2
    assert {c.expect for c in incremental} == {"ingested"}
    assert len(incremental) == len(FX.KILL_POINTS["ingest"])
    assert {(c.base, c.expect) for c in by_stage["embed"]} == {("ingested", "embedded")}
    assert {(c.base, c.expect) for c in by_stage["train"]} == {("embedded", "trained")}
    assert {(c.base, c.expect) for c in by_stage["recommend"]} == {("trained", "recommended")}
    assert len(cases) == 2 + sum(len(FX.KILL_POINTS[s]) for s in by_stage)
    assert len({c.name for c in cases}) == len(cases)
    assert [c.stage for c in FX.plan_kills(["train"])] == ["train"] * len(FX.KILL_POINTS["train"])
    with pytest.raises(ValueError, match="evaluate"):
        FX.plan_kills(["evaluate"])
    with pytest.raises(ValueError, match="delay needs seconds"):
        FX.KillPoint("x", "delay", "soon")


def test_stage_and_sandbox_commands() -> None:
    cmd = FX.stage_command("rs", "ingest", "c.yaml", ["warehouse=/w", "seed=1"])
    assert cmd == ["rs", "ingest", "--config", "c.yaml", "--set", "warehouse=/w", "--set", "seed=1"]
    full = FX.sandbox_command("full", "/w", ["rs", "x"], euid=0, size_kb=100, keep="/k")
    assert full[:2] == ["env", "KEEP=/k"] and full[-2:] == ["rs", "x"]
    assert "--map-root-user" not in full and 'size="$2"k' in " ".join(full)
    assert full[full.index("sh") + 3 : full.index("sh") + 6] == ["/w", "-", "100"]
    ro = FX.sandbox_command("read_only", "/w", ["rs"], euid=1000)
    assert "--map-root-user" in ro and "remount,bind,ro" in " ".join(ro) and ro[-1] == "rs"
    assert FX.no_dac_override_command(["rs"], euid=1000) == ["rs"]
    assert FX.no_dac_override_command(["rs"], euid=0)[0] == "setpriv"


def test_compare_rows_counts_lost_extra_duplicates_and_changed() -> None:
    exp = [
        {"k": "a", "v": [1.0, 2.0], "run_id": "r1"},
        {"k": "b", "v": [3.0, 4.0], "run_id": "r1"},
        {"k": "c", "v": [5.0, 6.0], "run_id": "r1"},
    ]
    same = [
        {"k": "c", "v": [5.0, 6.0000001], "run_id": "r2"},  # float noise, other run id
        {"k": "a", "v": [1.0, 2.0], "run_id": "r2"},
        {"k": "b", "v": [3.0, 4.0], "run_id": "r3"},
    ]
    assert FX.compare_rows("t", exp, same, ["k"]).equal
    bad = [
        {"k": "a", "v": [1.0, 2.0], "run_id": "r2"},
        {"k": "a", "v": [1.0, 2.0], "run_id": "r3"},  # duplicate
        {"k": "b", "v": [3.0, 4.5], "run_id": "r2"},  # changed
        {"k": "d", "v": [0.0, 0.0], "run_id": "r2"},  # extra; "c" lost
    ]
    d = FX.compare_rows("t", exp, bad, ["k"])
    assert (d.lost, d.extra, d.duplicates, d.changed) == (1, 1, 1, 1)
    assert (d.expected_rows, d.actual_rows) == (3, 4) and not d.equal
    # run_id counts when it is not ignored.
    assert FX.compare_rows("t", exp, same, ["k"], ignore=()).changed == 3


def test_conflicts_and_storage_failures_are_recognised() -> None:
    class ConcurrentAppendException(Exception):
        pass

    assert W.conflict_kind(ConcurrentAppendException("x")) is not None
    assert W.conflict_kind(RuntimeError("[DELTA_CONCURRENT_DELETE_READ] boom")) is not None
    assert W.conflict_kind(RuntimeError("[DELTA_PROTOCOL_CHANGED] empty dir")) is not None
    assert W.conflict_kind(RuntimeError("division by zero")) is None
    assert W.storage_problem("java.io.IOException: No space left on device") is not None
    assert W.storage_problem("Read-only file system") == "read-only file system"
    assert W.storage_problem("a bug") is None
    err = W.concurrent_error("/w/silver/events", "files were added by a concurrent update")
    assert isinstance(err, ConcurrentWriteError) and "/w/silver/events" in str(err)
    text = (
        "Job aborted. java.io.IOException: No space left on device at "
        "file:/w/silver/events/part-0001.parquet and /tmp/spark-1/x"
    )
    msg = storage_failure(text, "/w")
    assert msg is not None and "at /w/silver/events/part-0001.parquet" in msg
    assert "\n" not in msg and "no space left on device" in msg
    assert storage_failure("NullPointerException", "/w") is None


def test_local_warehouse_dir_only_for_paths_this_process_can_check() -> None:
    assert local_warehouse_dir("wh", "local[2]") == "wh"
    assert local_warehouse_dir("file:///data/wh", None) == "/data/wh"
    assert local_warehouse_dir("/data/wh", None) is None  # a cluster's default file system
    assert local_warehouse_dir("s3a://b/wh", "local[2]") is None
    assert local_warehouse_dir("dbfs:/wh", "local[*]") is None


def test_check_writable_names_the_folder(tmp_path: Path) -> None:
    check_writable(str(tmp_path / "new" / "wh"))  # created
    assert (tmp_path / "new" / "wh").is_dir() and not list((tmp_path / "new" / "wh").iterdir())
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match=f"warehouse {blocker}/wh is not writable"):
        check_writable(str(blocker / "wh"))


def test_preflight_errors_are_one_line_before_spark_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = exit_status(["ingest", "--config", CONFIG, "--set", f"warehouse={blocker}/wh"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == StorageError.exit_code and len(err) == 1
    assert err[0].startswith("recspark: error: warehouse") and str(blocker) in err[0]
    missing = tmp_path / "no_model"
    args = ["--set", f"warehouse={tmp_path}/wh", "--set", f"embed.model={missing}"]
    code = exit_status(["embed", "--config", CONFIG, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ModelError.exit_code and len(err) == 1 and str(missing) in err[0]


def test_watcher_counts_only_new_files_and_their_versions(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    (wh / "t").mkdir(parents=True)
    (wh / "t" / "old.json").write_text("{}")
    first = FX._Watcher(FX.KillPoint("new", "path", "t/*.json"), str(wh), tmp_path / "err")
    assert not first.reached(0.0)  # old.json was there before
    (wh / "t" / "new.json").write_text("{}")
    assert first.reached(0.1)
    second = FX._Watcher(FX.KillPoint("2nd", "path", "ck/last.pt", nth=2), str(wh), tmp_path / "e")
    (wh / "ck").mkdir()
    write_text_atomic(wh / "ck" / "last.pt", "1")
    keep_alive = open(wh / "ck" / "last.pt")  # noqa: SIM115  (the inode must not be reused)
    assert not second.reached(0.0)
    write_text_atomic(wh / "ck" / "last.pt", "2")
    assert second.reached(0.1)
    keep_alive.close()
    log = tmp_path / "log"
    log.write_text("[recspark] train: started\n")
    by_log = FX._Watcher(FX.KillPoint("log", "log", "embed: 1 Spark"), str(wh), log)
    assert not by_log.reached(0.0)
    log.write_text("[recspark] embed: 1 Spark stage(s), 0/2 tasks\n")
    assert by_log.reached(1.0)


def test_run_stage_kills_the_whole_run_at_its_kill_point(tmp_path: Path) -> None:
    wh = tmp_path / "wh"
    wh.mkdir()
    # A parent that starts a child in its own session (out of reach of the group kill).
    script = (
        "import subprocess, sys, time, pathlib\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        f"time.sleep(0.5); pathlib.Path({str(wh)!r}, 'marker.parquet').write_text('x')\n"
        "time.sleep(60)\n"
    )
    point = FX.KillPoint("marker", "path", "marker.parquet")
    run = FX.run_stage([sys.executable, "-c", script], str(wh), str(tmp_path / "logs"), point)
    assert run.killed and run.returncode == -signal.SIGKILL
    assert run.leftovers == 1  # the child in its own session, found by its marker and killed
    assert run.seconds < 30
    done = FX.run_stage(
        [sys.executable, "-c", 'print(\'{"stage": "x", "n": 1}\')'], str(wh), str(tmp_path)
    )
    assert not done.killed and done.returncode == 0 and done.summary == {"stage": "x", "n": 1}


def test_corrupt_checkpoint_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    assert load_checkpoint(str(tmp_path)) is None
    path = tmp_path / CHECKPOINT
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "optimizer": {}, "state": {"phase": "final", "epoch": 1}}, path)
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt is not None and ckpt["state"]["epoch"] == 1
    path.write_bytes(path.read_bytes()[:100])  # torn
    with pytest.raises(ModelError, match=f"checkpoint {path} is corrupt") as e:
        load_checkpoint(str(tmp_path))
    assert "\n" not in str(e.value)
    torch.save({"weights": 1}, path)
    with pytest.raises(ModelError, match="not a training checkpoint"):
        load_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Delta writes under concurrency (in-process, tiny tables)

_KV = StructType([StructField("k", StringType(), False), StructField("v", LongType(), True)])


def test_a_table_another_process_creates_after_a_failed_first_write_is_seen(
    spark: SparkSession, warehouse: str, tmp_path: Path
) -> None:
    # A first write that died before its commit leaves an empty _delta_log; the session then
    # caches "no table" for the path. Another process creating the table (here: its files
    # copied in) must be seen, or a rerun would create it again and comparisons read nothing.
    path = T.table_path(warehouse, "silver/kv")
    os.makedirs(os.path.join(path, "_delta_log"))
    assert not T.exists(spark, path)
    elsewhere = str(tmp_path / "made_elsewhere")
    spark.createDataFrame([("a", 1), ("b", 2)], _KV).write.format("delta").save(elsewhere)
    shutil.rmtree(path)
    shutil.copytree(elsewhere, path)
    assert T.exists(spark, path)
    assert sorted(FX.read_rows(spark, warehouse, "silver/kv") or [], key=str) == [
        {"k": "a", "v": 1},
        {"k": "b", "v": 2},
    ]


def test_merge_new_counts_its_own_commit_and_concurrent_merges_add_no_duplicates(
    spark: SparkSession, warehouse: str
) -> None:
    rows = [(f"k{i}", i) for i in range(40)]
    df = spark.createDataFrame(rows[:10], _KV)
    assert T.merge_new(spark, df, warehouse, "silver/kv", ["k"]) == 10
    assert T.merge_new(spark, df, warehouse, "silver/kv", ["k"]) == 0
    # Two writers MERGE overlapping rows at the same time: every key once, counts add up.
    batches = [spark.createDataFrame(rows[:30], _KV), spark.createDataFrame(rows[5:], _KV)]
    counts: list[int] = []
    errors: list[BaseException] = []

    def write(b: Any) -> None:
        try:
            counts.append(T.merge_new(spark, b, warehouse, "silver/kv", ["k"]))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    table = T.read(spark, warehouse, "silver/kv")
    assert table.count() == 40 and table.select("k").distinct().count() == 40
    assert sum(counts) == 30


def test_a_transaction_is_written_once_and_sums_are_added_once(
    spark: SparkSession, warehouse: str
) -> None:
    txn = T.Txn("test-stream", 0)
    first = spark.createDataFrame([("a", 1), ("b", 2)], _KV)
    assert T.append_once(spark, first, warehouse, "silver/kv", txn)  # creates the table
    assert not T.append_once(spark, first, warehouse, "silver/kv", txn)  # a rerun: skipped
    assert T.append_once(spark, first.limit(1), warehouse, "silver/kv", T.Txn("test-stream", 1))
    # The same version of another stream is another transaction.
    assert T.append_once(spark, first.limit(1), warehouse, "silver/kv", T.Txn("other", 0))
    assert sorted(FX.read_rows(spark, warehouse, "silver/kv") or [], key=str) == [
        {"k": "a", "v": 1},
        {"k": "a", "v": 1},
        {"k": "a", "v": 1},
        {"k": "b", "v": 2},
    ]
    # A sum applied once per transaction, whatever the number of attempts.
    add = {"v": "t.v + s.v"}
    batch = spark.createDataFrame([("a", 10), ("c", 5)], _KV)
    for _ in range(2):
        T.merge_update(spark, batch, warehouse, "silver/sums", ["k"], add, T.Txn("s", 0))
        T.merge_update(spark, batch, warehouse, "silver/sums", ["k"], add, T.Txn("s", 1))
    assert sorted(FX.read_rows(spark, warehouse, "silver/sums") or [], key=str) == [
        {"k": "a", "v": 20},
        {"k": "c", "v": 10},
    ]
    assert spark.conf.get("spark.databricks.delta.write.txnAppId", None) is None


def test_a_merge_narrowed_to_the_sources_keys_changes_what_the_whole_merge_changes(
    spark: SparkSession, warehouse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = {"v": "t.v + s.v"}
    stored = spark.createDataFrame([("a", 1), ("b", 2), ("c", 3)], _KV)
    batch = spark.createDataFrame([("a", 10), ("d", 5)], _KV)
    for name in ("silver/whole", "silver/narrow"):
        T.append_once(spark, stored, warehouse, name, T.Txn(name, 0))
    T.merge_update(spark, batch, warehouse, "silver/whole", ["k"], add, T.Txn("s", 1))
    only = T.target_in(batch, "k")
    assert only == {"k": ["a", "d"]}
    T.merge_update(spark, batch, warehouse, "silver/narrow", ["k"], add, T.Txn("s", 1), only)
    expected = [{"k": "a", "v": 11}, {"k": "b", "v": 2}, {"k": "c", "v": 3}, {"k": "d", "v": 5}]
    for name in ("silver/whole", "silver/narrow"):
        assert sorted(FX.read_rows(spark, warehouse, name) or [], key=str) == expected
    # The values narrow the target: a source key outside them finds no stored row (so the
    # caller must list every source key), and the upsert's insert adds it again.
    T.merge_upsert(
        spark, stored.where("k = 'b'"), warehouse, "silver/narrow", ["k"], target_in={"k": ["a"]}
    )
    assert [
        r["v"] for r in FX.read_rows(spark, warehouse, "silver/narrow") or [] if r["k"] == "b"
    ] == [2, 2]
    with pytest.raises(ValueError, match="deletes missing rows"):
        T.merge_upsert(
            spark, batch, warehouse, "silver/narrow", ["k"], delete_missing=True, target_in=only
        )
    # Past the limit, no values: the MERGE reads the whole target.
    monkeypatch.setattr(T, "TARGET_IN_VALUES", 1)
    assert T.target_in(batch, "k") is None


# ---------------------------------------------------------------------------------------------
# The real stages (slow): one tiny data set and its uninterrupted snapshots per module.
# Only the run that is killed (and the sandboxed ones) are subprocesses; uninterrupted runs and
# reruns use the test session (a JVM start each is most of a tiny run's time). The full
# kill-and-rerun matrix, every stage at several points, is benchmarks/faults.py.


class Pipeline:
    """A tiny generated data set and the uninterrupted run's warehouse after each step (built
    in-process, on first use, in pipeline order): ``first_load`` (ingest of half of the event
    files) and ``embedded`` (synthetic item embeddings: the embed stage's model is not what
    these tests are about)."""

    STEPS: tuple[str, ...] = ("first_load", "embedded")

    def __init__(self, spark: SparkSession, root: Path) -> None:
        self.spark = spark
        self.root = root
        self.data = root / "data"
        self.baseline = str(root / "baseline")
        self.snapshots: dict[str, str] = {}
        gen = load_config(
            CONFIG,
            [
                f"generate.output={self.data}",
                "generate.events=1500",
                "generate.users=40",
                "generate.items=50",
                "generate.bot_users=0",
                "generate.files=4",
            ],
        )
        run_stages(["generate"], gen, spark=spark)

    def overrides(self, warehouse: str) -> list[str]:
        return [
            f"warehouse={warehouse}",
            f"input.events={self.data / 'events' / 'part-0000[01]*'}",
            f"input.items={self.data / 'items'}",
            "spark.shuffle_partitions=4",
            "spark.driver_memory=1g",
            "train.launcher=local",
            "train.reader_pool=dummy",
            "train.epochs=2",
            "train.dim=16",
            "train.batch_size=64",
            "train.history_len=20",
            "train.data_files=2",
            "recommend.k=5",
        ]

    def config(self, warehouse: str) -> Config:
        return load_config(CONFIG, self.overrides(warehouse))

    def snapshot(self, name: str) -> str:
        """The warehouse of the uninterrupted run after step ``name``."""
        for step in self.STEPS:
            if step not in self.snapshots:
                if step == "embedded":
                    self._embed(self.baseline)
                else:
                    run_stages(["ingest"], self.config(self.baseline), spark=self.spark)
                self.snapshots[step] = str(self.root / f"snap_{step}")
                FX.copy_warehouse(self.baseline, self.snapshots[step])
            if step == name:
                return self.snapshots[step]
        raise KeyError(name)

    def _embed(self, warehouse: str) -> None:
        ids = sorted(r[0] for r in T.read(self.spark, warehouse, T.SILVER_ITEMS).collect())
        vectors = np.random.default_rng(7).normal(size=(len(ids), 8)).astype(np.float32)
        rows = [
            (i, [float(x) for x in v], "synthetic", "-") for i, v in zip(ids, vectors, strict=True)
        ]
        df = self.spark.createDataFrame(rows, S.ITEM_EMBEDDINGS_SCHEMA)
        T.overwrite(df, warehouse, T.GOLD_ITEM_EMBEDDINGS)

    def copy(self, snapshot: str | None, name: str) -> str:
        """A fresh warehouse ``name``: a copy of ``snapshot``, or empty."""
        dst = str(self.root / name)
        FX.copy_warehouse(self.snapshot(snapshot) if snapshot else str(self.root / "none"), dst)
        return dst

    def run(self, stage: str, warehouse: str, point: FX.KillPoint | None = None) -> FX.StageRun:
        """``recspark <stage>`` in a subprocess, killed at ``point``."""
        cmd = FX.stage_command(RECSPARK, stage, CONFIG, self.overrides(warehouse))
        return FX.run_stage(
            cmd, warehouse, str(self.root / "logs"), point, cwd=str(ROOT), timeout=900
        )


@pytest.fixture(scope="module")
def pipeline(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(spark, tmp_path_factory.mktemp("faults"))


def _assert_same(spark: SparkSession, expected: str, actual: str, stage: str) -> None:
    diffs = FX.compare_tables(spark, expected, actual, FX.STAGE_TABLES[stage])
    for d in diffs:
        assert d.expected_rows > 0, d
        assert d.equal, d


def _one_error_line(run: FX.StageRun) -> str:
    lines = run.error_lines
    assert len(lines) == 1, run.stderr_tail
    assert "Traceback" not in run.stderr_tail, run.stderr_tail
    return lines[0]


def _assert_committed_rows_are_whole(spark: SparkSession, expected: str, actual: str) -> list[str]:
    """Each ingest table of ``actual`` is absent, or holds rows of the uninterrupted run only
    (an earlier commit may lack later rows), each once. Returns the tables present."""
    committed = []
    for name in FX.STAGE_TABLES["ingest"]:
        rows = FX.read_rows(spark, actual, name)
        if rows is not None:
            committed.append(name)
            exp = FX.read_rows(spark, expected, name) or []
            d = FX.compare_rows(name, exp, rows, FX.TABLE_KEYS[name])
            assert (d.extra, d.duplicates, d.changed) == (0, 0, 0), d
    return committed


@pytest.mark.slow
def test_ingest_killed_mid_write_then_rerun_twice_at_once_equals_an_uninterrupted_run(
    spark: SparkSession, pipeline: Pipeline
) -> None:
    """Killed while it writes the events; then two schedulers run it again at the same time:
    both finish (a MERGE that loses a commit race is tried again) or one fails with a
    ConcurrentWriteError and a third run completes. Nothing is lost or duplicated."""
    expected = pipeline.snapshot("first_load")
    wh = pipeline.copy(None, "kill_ingest")
    point = FX.KillPoint("mid events write", "path", "silver/events/event_date=*/*.parquet")
    killed = pipeline.run("ingest", wh, point)
    assert killed.killed and killed.returncode == -signal.SIGKILL, killed.stderr_tail
    assert killed.leftovers == 0
    assert T.SILVER_ITEMS in _assert_committed_rows_are_whole(spark, expected, wh)

    cfg = pipeline.config(wh)
    outcomes: list[BaseException | None] = [None, None]

    def ingest(i: int) -> None:
        try:
            run_stages(["ingest"], cfg, spark=spark)
        except BaseException as e:
            outcomes[i] = e

    threads = [threading.Thread(target=ingest, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [e for e in outcomes if e is not None]
    for e in failed:
        assert isinstance(e, ConcurrentWriteError), repr(e)
        # A MERGE that lost its race too often names the table; a second query on the event
        # stream names the stream's checkpoint.
        where = (f"table {wh}/silver/", f"checkpoint {wh}/_checkpoints/events")
        assert any(w in str(e) for w in where) and "\n" not in str(e), str(e)
    if failed:
        run_stages(["ingest"], cfg, spark=spark)
    _assert_same(spark, expected, wh, "ingest")


class _WrappingComm(LocalComm):
    """One process, but like Horovod's DistributedOptimizer: the optimizer that steps is a new
    object over the same parameters, with its own state."""

    def wrap_optimizer(
        self, opt: torch.optim.Optimizer, model: torch.nn.Module
    ) -> torch.optim.Optimizer:
        return type(opt)(opt.param_groups)


def _resume_equals_whole_run(model_dir: Path, tmp_path: Path) -> None:
    """On ``model_dir``'s training data, a worker stopped after a checkpoint and started again
    ends with the history and weights of one that ran through; its optimizer is wrapped like
    Horovod's, so the optimizer state must be saved from and restored into the wrapped one."""
    meta = json.loads((model_dir / "meta.json").read_text())

    def spec(name: str) -> TrainSpec:
        return TrainSpec(
            data_dir=str(model_dir / "data"),
            model_dir=str(tmp_path / name),
            shape=ModelShape(**meta["shape"]),
            epochs=3,
            patience=3,
            batch_size=32,
            learning_rate=0.01,
            history_len=int(meta["history_len"]),
            negatives=8,
            reader_pool="dummy",
        )

    whole = train_worker(spec("whole"), _WrappingComm())
    save = loop.save_checkpoint

    def save_and_fail(run: loop.Run) -> None:
        save(run)
        if (run.state["phase"], run.state["epoch"]) == ("validate", 2):
            raise RuntimeError("injected failure after validate epoch 2")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError, match="injected"):
        mp.setattr(loop, "save_checkpoint", save_and_fail)
        train_worker(spec("killed"), _WrappingComm())
    saved = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert saved["optimizer"]["state"], "the checkpoint lacks the optimizer's moments"
    resumed = train_worker(spec("killed"), _WrappingComm())
    assert resumed["resumed_from"] == "validate:2"
    assert resumed["history"] == whole["history"]
    assert resumed["digest"] == whole["digest"]


@pytest.mark.slow
def test_train_killed_after_a_checkpoint_resumes_from_it_and_a_corrupt_one_fails(
    spark: SparkSession, pipeline: Pipeline, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    wh = pipeline.copy("embedded", "kill_train")
    point = FX.KillPoint("first checkpoint", "path", "models/*.partial/checkpoints/last.pt")
    killed = pipeline.run("train", wh, point)
    assert killed.killed, killed.stderr_tail
    [ckpt] = list(Path(wh).glob("models/*.partial/checkpoints/last.pt"))
    published = [p for p in (Path(wh) / "models").iterdir() if not p.name.endswith(".partial")]
    assert not published  # only a finished model is renamed to models/<version>
    # Epochs are short: the kill may land an epoch or two after the first checkpoint.
    state = torch.load(ckpt, weights_only=True)["state"]
    killed_at = f"{state['phase']}:{state['epoch']}"

    # A torn copy of that checkpoint: one line naming it, nothing published or written.
    bad = str(pipeline.root / "bad_ckpt")
    FX.copy_warehouse(wh, bad)
    [bad_ckpt] = list(Path(bad).glob("models/*.partial/checkpoints/last.pt"))
    bad_ckpt.write_bytes(bad_ckpt.read_bytes()[:64])
    with pytest.raises(ModelError, match=f"checkpoint {bad_ckpt} is corrupt") as e:
        run_stages(["train"], pipeline.config(bad), spark=spark)
    assert "\n" not in str(e.value)
    assert not T.exists(spark, T.table_path(bad, T.GOLD_ITEM_VECTORS))
    assert not [p for p in (Path(bad) / "models").iterdir() if not p.name.endswith(".partial")]

    capsys.readouterr()
    [summary] = [s.figures for s in run_stages(["train"], pipeline.config(wh), spark=spark)]
    assert summary["resumed_from"] == killed_at  # the checkpoint it was killed after
    assert f"from checkpoint {ckpt} ({killed_at})" in capsys.readouterr().err
    assert Path(summary["model_dir"]).is_dir()
    assert not list(Path(wh).glob("models/*.partial"))
    items = {r[S.ITEM_ID] for r in FX.read_rows(spark, wh, T.SILVER_ITEMS) or []}
    vectors = FX.read_rows(spark, wh, T.GOLD_ITEM_VECTORS) or []
    assert sorted(r[S.ITEM_ID] for r in vectors) == sorted(items)  # each item once
    # That a resumed run ends with the weights of an uninterrupted one is checked on this
    # model's data by the worker (below); the stage's tables after kills at every point are
    # compared with an uninterrupted run's by benchmarks/faults.py.
    _resume_equals_whole_run(Path(summary["model_dir"]), tmp_path)


@pytest.mark.slow
def test_full_warehouse_fails_with_one_line_and_commits_nothing_partial(
    spark: SparkSession, pipeline: Pipeline
) -> None:
    reason = FX.sandbox_unavailable("full")
    if reason:
        pytest.skip(f"cannot mount a tiny tmpfs as the warehouse: {reason}")
    expected = pipeline.snapshot("first_load")
    wh = pipeline.copy(None, "full_wh")
    keep = pipeline.copy(None, "full_kept")
    cmd = FX.stage_command(RECSPARK, "ingest", CONFIG, pipeline.overrides(wh))
    sandboxed = FX.sandbox_command("full", wh, cmd, euid=os.geteuid(), size_kb=160, keep=keep)
    run = FX.run_stage(sandboxed, wh, str(pipeline.root / "logs"), cwd=str(ROOT), timeout=900)
    assert run.returncode == StorageError.exit_code, run.stderr_tail
    line = _one_error_line(run)
    assert "no space left on device" in line and wh in line
    committed = _assert_committed_rows_are_whole(spark, expected, keep)
    assert T.SILVER_ITEMS in committed  # the tmpfs took the catalog, not the events
    assert T.SILVER_EVENTS not in committed


@pytest.mark.slow
def test_read_only_warehouse_and_unreadable_model_fail_with_one_line(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    wh = pipeline.copy("first_load", "read_only")
    reason = FX.sandbox_unavailable("read_only")
    if reason and os.geteuid() == 0:
        pytest.skip(f"cannot make the warehouse read-only for root: {reason}")
    cmd = FX.stage_command(RECSPARK, "ingest", CONFIG, pipeline.overrides(wh))
    if reason:
        os.chmod(wh, 0o555)
    else:
        cmd = FX.sandbox_command("read_only", wh, cmd, euid=os.geteuid())
    try:
        run = FX.run_stage(cmd, wh, str(tmp_path / "logs"), cwd=str(ROOT), timeout=300)
    finally:
        os.chmod(wh, 0o755)
    assert run.returncode == StorageError.exit_code, run.stderr_tail
    line = _one_error_line(run)
    assert f"warehouse {wh} is not writable" in line

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.chmod(model, 0)
    if FX.sandbox_unavailable("no_dac_override"):
        pytest.skip("root cannot be denied reading a folder here (no setpriv)")
    embed = FX.stage_command(
        RECSPARK, "embed", CONFIG, [*pipeline.overrides(wh), f"embed.model={model}"]
    )
    try:
        run = FX.run_stage(
            FX.no_dac_override_command(embed, euid=os.geteuid()),
            wh,
            str(tmp_path / "logs"),
            cwd=str(ROOT),
            timeout=300,
        )
    finally:
        os.chmod(model, 0o755)
    assert run.returncode == ModelError.exit_code, run.stderr_tail
    line = _one_error_line(run)
    assert f"model folder {model} is unreadable" in line and "ermission denied" in line
