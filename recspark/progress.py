"""Terminal progress for long stages: Spark's active stages, tasks done, rate and elapsed time,
logged (:mod:`recspark.log`) every few seconds by a daemon thread while a stage runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark.sql import SparkSession

from recspark.log import get_logger


@contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to ``seconds[name]`` (a job's cost by step, for its log)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t0, 1)


@dataclass(frozen=True)
class Snapshot:
    """What Spark reports at one moment for the stage's jobs."""

    tasks_done: int
    tasks_total: int
    active_stages: int


def format_progress(stage: str, snap: Snapshot, elapsed_s: float, tasks_per_s: float) -> str:
    """One progress message, e.g. ``ingest: 2 Spark stages, 30/50 tasks (60%), 4.0 tasks/s,
    45s`` (logged as ``[recspark] ingest: ...``)."""
    pct = f" ({100 * snap.tasks_done / snap.tasks_total:.0f}%)" if snap.tasks_total else ""
    return (
        f"{stage}: {snap.active_stages} Spark stage(s), "
        f"{snap.tasks_done}/{snap.tasks_total} tasks{pct}, {tasks_per_s:.1f} tasks/s, "
        f"{elapsed_s:.0f}s elapsed"
    )


def snapshot(spark: SparkSession) -> Snapshot:
    tracker = spark.sparkContext.statusTracker()
    done = total = 0
    ids = tracker.getActiveStageIds()
    for sid in ids:
        info = tracker.getStageInfo(sid)
        if info is not None:
            done += info.numCompletedTasks
            total += info.numTasks
    return Snapshot(done, total, len(ids))


@contextmanager
def progress(spark: SparkSession, stage: str, every_s: float = 15.0) -> Iterator[None]:
    """Log progress while the body runs (only while Spark has active stages)."""
    log = get_logger()
    stop = threading.Event()
    t0 = time.perf_counter()

    def loop() -> None:
        last_done, last_t = 0, t0
        while not stop.wait(every_s):
            try:
                snap = snapshot(spark)
            except Exception:  # the session is stopping: no more progress to report
                return
            if snap.active_stages == 0:
                continue
            now = time.perf_counter()
            rate = max(snap.tasks_done - last_done, 0) / max(now - last_t, 1e-9)
            last_done, last_t = snap.tasks_done, now
            log.info(format_progress(stage, snap, now - t0, rate))

    thread = threading.Thread(target=loop, name=f"recspark-progress-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
