"""Fault injection for the reliability checks: kill a stage while it writes, run it again,
compare its tables with those of an uninterrupted run.

Planning is pure and unit-tested: which (stage, kill point) cases to try
(:func:`plan_kills`), the command that runs a stage (:func:`stage_command`), the sandbox that
makes a warehouse full or read-only (:func:`sandbox_command`), and the comparison of two
tables' rows (:func:`compare_rows`). Running is separate: :func:`run_stage` starts
``recspark <stage>`` in its own process group, SIGKILLs the whole group when the kill point
is reached, and reaps anything left behind (by process id, found through a marker in the
environment). :func:`read_rows` reads a table for the comparison (Spark, used by the benchmark
and the tests only).

Kill points:

* ``path``: a file matching a glob under the warehouse appears (``nth``: the nth distinct file
  version seen, so that ``models/*/checkpoints/last.pt`` with ``nth=2`` is the second
  checkpoint; polling may miss versions written less than a poll apart). Data files of a
  table appearing before its ``_delta_log`` commit is a kill *during* the write.
* ``log``: the stage's stderr shows a line containing a marker (progress lines of
  :mod:`recspark.progress`, ``[recspark] ...`` messages).
* ``delay``: seconds after the start.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pyspark.sql import SparkSession

from recspark import schema as S
from recspark import tables as T

KillKind = Literal["path", "log", "delay"]

# Environment variable set in every process a fault run starts (inherited by the JVM, Python
# workers and Horovod tasks): how leftovers of a killed run are found.
MARKER_ENV = "RECSPARK_FAULT_RUN"

# Tables each stage writes and that must come out the same after a kill and a rerun.
# silver/ingest_runs is a log of runs (a killed run may or may not have logged itself).
STAGE_TABLES: dict[str, tuple[str, ...]] = {
    "ingest": (T.SILVER_ITEMS, T.SILVER_EVENTS, T.SILVER_QUARANTINE, T.SILVER_INTERACTIONS),
    "embed": (T.GOLD_ITEM_EMBEDDINGS, T.GOLD_USER_EMBEDDINGS),
    "train": (T.GOLD_ITEM_VECTORS, T.GOLD_USER_VECTORS),
    "recommend": (T.GOLD_RECOMMENDATIONS,),
}

# The key of each table: a key present twice is a duplicate (the table registry's).
TABLE_KEYS: dict[str, tuple[str, ...]] = {t.name: t.key for t in T.TABLES}

# Columns that name the run or the time of writing: they differ between any two runs.
IGNORED_COLUMNS: frozenset[str] = frozenset(
    {S.RUN_ID, S.GENERATED_AT, S.INGESTED_AT, S.QUARANTINED_AT, S.EMBEDDED_AT}
)


@dataclass(frozen=True)
class KillPoint:
    """When to SIGKILL a running stage."""

    label: str
    kind: KillKind
    target: str | float  # glob under the warehouse, log marker, or seconds
    nth: int = 1  # path: the nth distinct matching file

    def __post_init__(self) -> None:
        if self.kind == "delay" and not isinstance(self.target, (int, float)):
            raise ValueError(f"kill point {self.label!r}: delay needs seconds")
        if self.kind in ("path", "log") and not isinstance(self.target, str):
            raise ValueError(f"kill point {self.label!r}: {self.kind} needs a string")
        if self.nth < 1:
            raise ValueError(f"kill point {self.label!r}: nth must be >= 1")


@dataclass(frozen=True)
class FaultCase:
    """One kill-and-rerun: start ``stage`` on a copy of the warehouse snapshot ``base``, kill it
    at ``point``, run it again, and compare its tables with those of snapshot ``expect``."""

    stage: str
    point: KillPoint
    base: str
    expect: str
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.stage}@{self.base}: {self.point.label}"


def _p(label: str, target: str, nth: int = 1) -> KillPoint:
    return KillPoint(label, "path", target, nth)


# Where each stage can die while it writes. Globs are relative to the warehouse.
KILL_POINTS: dict[str, tuple[KillPoint, ...]] = {
    "ingest": (
        _p("mid items write (data files, no commit)", "silver/items/*.parquet"),
        _p("after the items commit", "silver/items/_delta_log/*.json"),
        _p("mid events MERGE (data files, no commit)", "silver/events/event_date=*/*.parquet"),
        _p("after the events commit", "silver/events/_delta_log/*.json", 1),
        _p("mid quarantine write", "silver/quarantine/*.parquet"),
        _p("mid interactions overwrite", "silver/interactions/*.parquet"),
        _p("after the interactions commit", "silver/interactions/_delta_log/*.json"),
    ),
    "embed": (
        KillPoint("while the model embeds items", "log", "embed: 1 Spark stage"),
        _p("mid item-embeddings MERGE", "gold/item_embeddings/*.parquet"),
        _p("after the item-embeddings commit", "gold/item_embeddings/_delta_log/*.json"),
        _p("mid user-embeddings overwrite", "gold/user_embeddings/*.parquet"),
    ),
    "train": (
        _p("while building the training data", "models/*.partial/data/examples/*.parquet"),
        _p("after the training data is ready", "models/*.partial/data/_READY"),
        _p("after the first checkpoint", "models/*.partial/checkpoints/last.pt"),
        _p("after the third checkpoint", "models/*.partial/checkpoints/last.pt", 3),
        _p("mid item-vectors overwrite", "gold/item_vectors/*.parquet"),
        _p("after the item-vectors commit", "gold/item_vectors/_delta_log/*.json"),
    ),
    "recommend": (
        KillPoint("while scoring", "log", "recommend: 1 Spark stage"),
        _p("mid recommendations overwrite", "gold/recommendations/*.parquet"),
    ),
}

# The uninterrupted chain of snapshots (name, stage run to get it from the previous one).
# "ingest" runs twice: a first load of part of the events, then all of them (a MERGE into
# existing tables); kills of the first load start from an empty warehouse.
SNAPSHOT_CHAIN: tuple[tuple[str, str], ...] = (
    ("empty", ""),
    ("first_load", "ingest"),
    ("ingested", "ingest"),
    ("embedded", "embed"),
    ("trained", "train"),
    ("recommended", "recommend"),
)


def plan_kills(
    stages: Sequence[str],
    points: Mapping[str, Sequence[KillPoint]] = KILL_POINTS,
    chain: Sequence[tuple[str, str]] = SNAPSHOT_CHAIN,
    first_load_points: int = 2,
) -> list[FaultCase]:
    """Every (stage, kill point) case to try, in pipeline order.

    Each case starts from the snapshot before the stage in ``chain`` and expects the one after
    it. A stage that appears twice in the chain (the first load and the incremental ingest)
    gets its first ``first_load_points`` points on the first occurrence and all of them on
    the last.
    """
    unknown = [s for s in stages if s not in points]
    if unknown:
        raise ValueError(f"no kill points for stages {unknown}; known: {sorted(points)}")
    cases: list[FaultCase] = []
    steps = [(chain[i - 1][0], name, stage) for i, (name, stage) in enumerate(chain) if i > 0]
    for stage in stages:
        mine = [(base, expect) for base, expect, st in steps if st == stage]
        if not mine:
            raise ValueError(f"stage {stage!r} is not in the snapshot chain")
        for i, (base, expect) in enumerate(mine):
            last = i == len(mine) - 1
            chosen = points[stage] if last else points[stage][:first_load_points]
            cases.extend(FaultCase(stage, p, base, expect) for p in chosen)
    return cases


def stage_command(
    recspark: str, stage: str, config: str, overrides: Iterable[str] = ()
) -> list[str]:
    """``recspark <stage> --config CONFIG --set k=v ...``."""
    cmd = [recspark, stage, "--config", config]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


SandboxKind = Literal["full", "read_only"]


def sandbox_command(
    kind: SandboxKind,
    folder: str,
    cmd: Sequence[str],
    *,
    euid: int,
    size_kb: int = 256,
    keep: str | None = None,
) -> list[str]:
    """``cmd`` run in a private mount namespace where ``folder`` is a ``size_kb`` tmpfs
    (``full``) or a read-only bind mount of itself (``read_only``).

    Unprivileged users get a user namespace too (``unshare --map-root-user``). With ``keep``
    (``full`` only), the tmpfs's contents are copied there after ``cmd`` ends (the tmpfs
    disappears with the namespace), and the exit status is ``cmd``'s.
    """
    if kind == "full":
        script = 'mount -t tmpfs -o size="$2"k recspark-full "$0" || exit 97; shift 2; '
        if keep is not None:
            script += '"$@"; rc=$?; cp -a "$0"/. "$KEEP"/ || exit 98; exit $rc'
        else:
            script += 'exec "$@"'
        args = [folder, "-", str(size_kb)]
    else:
        script = (
            'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" || exit 97; shift 2; exec "$@"'
        )
        args = [folder, "-", "0"]
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if euid != 0:
        prefix.append("--map-root-user")
    env = ["env", f"KEEP={keep}"] if keep is not None and kind == "full" else []
    return [*env, *prefix, "sh", "-c", script, *args, *cmd]


def no_dac_override_command(cmd: Sequence[str], *, euid: int) -> list[str]:
    """``cmd`` without root's power to ignore file permissions (``setpriv`` drops the
    capabilities when ``euid`` is 0); unchanged for other users."""
    if euid != 0:
        return list(cmd)
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]


def sandbox_unavailable(kind: SandboxKind | Literal["no_dac_override"]) -> str | None:
    """Why this machine cannot run the sandbox ``kind`` (None when it can)."""
    euid = os.geteuid()
    if kind == "no_dac_override":
        if euid != 0:
            return None
        probe = no_dac_override_command(["true"], euid=euid)
        tool = "setpriv"
    else:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"recspark-sandbox-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        probe = sandbox_command(kind, str(tmp), ["true"], euid=euid)
        tool = "unshare (mount namespaces)"
    try:
        if shutil.which(probe[0]) is None:
            return f"{probe[0]} is not installed"
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{tool} failed: {e}"
    finally:
        if kind != "no_dac_override":
            shutil.rmtree(tmp, ignore_errors=True)
    if done.returncode != 0:
        err = " ".join(done.stderr.split())[:200]
        return f"{tool} is not permitted here (exit {done.returncode}: {err})"
    return None


@dataclass
class StageRun:
    """What one run of a stage did."""

    command: list[str]
    returncode: int | None
    killed: bool
    seconds: float
    kill_seconds: float | None = None
    leftovers: int = 0  # processes of the run still alive after the kill (then killed)
    stderr_tail: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def error_lines(self) -> list[str]:
        """The ``recspark: error:`` lines of stderr."""
        return [ln for ln in self.stderr_tail.splitlines() if ln.startswith("recspark: error:")]


class _Watcher:
    """Decides when a kill point is reached (polled by :func:`run_stage`)."""

    def __init__(self, point: KillPoint | None, warehouse: str, stderr_path: Path) -> None:
        self.point = point
        self.warehouse = warehouse
        self.stderr_path = stderr_path
        # A file version is (path, inode, mtime): os.replace frees the old inode, which the
        # next temporary file often gets again, so the inode alone misses new versions.
        self.seen: set[tuple[str, int, int]] = set()
        # Files that match before the run starts do not count (an incremental run writes
        # into tables that already have data files and commits).
        self.before = self._matches()

    def _matches(self) -> set[tuple[str, int, int]]:
        p = self.point
        found: set[tuple[str, int, int]] = set()
        if p is None or p.kind != "path":
            return found
        for f in glob.glob(os.path.join(self.warehouse, str(p.target))):
            try:
                st = os.stat(f)
                found.add((f, st.st_ino, st.st_mtime_ns))
            except OSError:
                continue  # replaced between glob and stat: seen at the next poll
        return found

    def reached(self, elapsed: float) -> bool:
        p = self.point
        if p is None:
            return False
        if p.kind == "delay":
            return elapsed >= float(p.target)
        if p.kind == "log":
            try:
                return str(p.target) in self.stderr_path.read_text(errors="replace")
            except OSError:
                return False
        self.seen |= self._matches() - self.before
        return len(self.seen) >= p.nth


def _pids_with_marker(marker: str) -> list[int]:
    """Processes whose environment holds ``MARKER_ENV=marker`` (Linux /proc)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                out: dict[str, Any] = json.loads(line)
                return out
            except ValueError:
                continue
    return {}


def run_stage(
    cmd: Sequence[str],
    warehouse: str,
    log_dir: str,
    point: KillPoint | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 1800.0,
    poll_s: float = 0.05,
) -> StageRun:
    """Run ``cmd`` to its end, or SIGKILL its whole process group when ``point`` is reached.

    Every process of the run carries a marker in its environment; after a kill, any that
    outlived the group kill (e.g. one that started its own session) is killed by id and
    counted in ``leftovers``.
    """
    marker = uuid.uuid4().hex
    full_env = dict(os.environ if env is None else env)
    full_env[MARKER_ENV] = marker
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    tag = f"{time.strftime('%H%M%S')}-{marker[:6]}"
    out_path, err_path = logs / f"{tag}.out", logs / f"{tag}.err"
    watcher = _Watcher(point, warehouse, err_path)
    t0 = time.perf_counter()
    killed = False
    kill_at: float | None = None
    leftovers = 0
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=err, env=full_env, cwd=cwd, start_new_session=True
        )
        try:
            while proc.poll() is None:
                elapsed = time.perf_counter() - t0
                if watcher.reached(elapsed):
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed, kill_at = True, elapsed
                    break
                if elapsed > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    raise TimeoutError(f"{' '.join(cmd)} ran over {timeout:.0f}s (log {err_path})")
                time.sleep(poll_s)
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Kill whatever of this run is still alive, by id.
            for _ in range(20):
                pids = [p for p in _pids_with_marker(marker) if p != os.getpid()]
                if not pids:
                    break
                leftovers = max(leftovers, len(pids))
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
    stderr = err_path.read_text(errors="replace")
    return StageRun(
        command=list(cmd),
        returncode=proc.returncode,
        killed=killed,
        seconds=time.perf_counter() - t0,
        kill_seconds=kill_at,
        leftovers=leftovers,
        stderr_tail="\n".join(stderr.splitlines()[-40:]),
        summary=_last_json(out_path.read_text(errors="replace")),
    )


# ---------------------------------------------------------------------------------------------
# Comparing tables


@dataclass(frozen=True)
class TableDiff:
    """How a table after kill-and-rerun differs from the uninterrupted run's."""

    table: str
    expected_rows: int
    actual_rows: int
    lost: int  # expected keys missing
    extra: int  # keys that the uninterrupted run does not have
    duplicates: int  # rows beyond the first of a key
    changed: int  # keys present in both with different values

    @property
    def equal(self) -> bool:
        return not (self.lost or self.extra or self.duplicates or self.changed)


def normalize(value: Any) -> Any:
    """A plain, comparable form of a Spark value (rows, arrays, maps, decimals, times)."""
    if isinstance(value, Mapping):
        return {str(k): normalize(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if hasattr(value, "asDict"):
        return normalize(value.asDict(recursive=True))
    if hasattr(value, "tolist"):  # numpy arrays / scalars
        return normalize(value.tolist())
    return value


def close(a: Any, b: Any, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """``a == b``, floats (also inside lists and dicts) within a tolerance."""
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            close(x, y, rel_tol, abs_tol) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel_tol, abs_tol) for k in a)
    return bool(a == b)


def compare_rows(
    table: str,
    expected: Sequence[Mapping[str, Any]],
    actual: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    ignore: Iterable[str] = IGNORED_COLUMNS,
) -> TableDiff:
    """Compare two tables' rows by key, ignoring run-specific columns (pure)."""
    skip = set(ignore)

    def clean(row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: normalize(v) for k, v in row.items() if k not in skip}

    def key_of(row: Mapping[str, Any]) -> str:
        return json.dumps([normalize(row.get(k)) for k in keys], default=str)

    exp: dict[str, dict[str, Any]] = {}
    for r in expected:
        exp.setdefault(key_of(r), clean(r))
    counts = Counter(key_of(r) for r in actual)
    act: dict[str, dict[str, Any]] = {}
    for r in actual:
        act.setdefault(key_of(r), clean(r))
    return TableDiff(
        table=table,
        expected_rows=len(expected),
        actual_rows=len(actual),
        lost=sum(1 for k in exp if k not in act),
        extra=sum(1 for k in act if k not in exp),
        duplicates=sum(n - 1 for n in counts.values() if n > 1),
        changed=sum(1 for k, row in exp.items() if k in act and not close(row, act[k])),
    )


def read_rows(spark: SparkSession, warehouse: str, name: str) -> list[dict[str, Any]] | None:
    """All rows of a warehouse table as dicts, or None when the table does not exist."""
    path = T.table_path(warehouse, name)
    if not T.exists(spark, path):
        return None
    return [r.asDict(recursive=True) for r in spark.read.format("delta").load(path).collect()]


def compare_tables(
    spark: SparkSession, expected_wh: str, actual_wh: str, names: Iterable[str]
) -> list[TableDiff]:
    """:func:`compare_rows` for each table ``names`` of two warehouses (a missing table has no
    rows)."""
    diffs = []
    for name in names:
        exp = read_rows(spark, expected_wh, name) or []
        act = read_rows(spark, actual_wh, name) or []
        diffs.append(compare_rows(name, exp, act, TABLE_KEYS[name]))
    return diffs


def copy_warehouse(src: str, dst: str) -> None:
    """A fresh copy of a warehouse snapshot (Delta logs hold relative paths: copies work)."""
    if os.path.exists(dst):
        shutil.rmtree(dst)
    if os.path.exists(src):
        shutil.copytree(src, dst, symlinks=True)
    else:
        os.makedirs(dst)
