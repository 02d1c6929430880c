"""The ``recspark`` command: subcommands call the same ``run(spark, cfg)`` functions that
``jobs/<stage>.py`` call under spark-submit.

User errors (bad config, missing input, unreadable model, ...) end with one line on stderr and a
non-zero exit; only bugs show a traceback. :func:`main` (the console script, the function a
Databricks ``python_wheel_task`` calls, and the body of ``jobs/<stage>.py``) raises
``SystemExit(code)`` on failure, since a platform that calls the function ignores its return
value; :func:`exit_status` is the same work returning the code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from recspark.config import DEFAULT_CONFIG, Config, load_config
from recspark.errors import RecsparkError, StorageError
from recspark.log import LEVELS, get_logger, set_level
from recspark.progress import progress
from recspark.session import configure, require_delta
from recspark.storage import local_path, local_warehouse_dir
from recspark.summary import StageSummary

STAGES: tuple[str, ...] = ("generate", "ingest", "embed", "train", "recommend", "evaluate")
# What `recspark run` runs, in order (it never generates or overwrites input).
PIPELINE: tuple[str, ...] = ("ingest", "embed", "train", "recommend", "evaluate")

# Commands that write to the MLflow store (checked before Spark starts, unless it is off).
TRACKED: tuple[str, ...] = ("train", "recommend", "evaluate", "promote")

StageFn = Callable[[SparkSession, Config], dict[str, Any]]


def stage_function(name: str) -> StageFn:
    """``recspark.<name>.job.run``."""
    module = importlib.import_module(f"recspark.{name}.job")
    fn: StageFn = module.run
    return fn


_PATH_IN_TEXT = re.compile(r"(?:file:)?(/[^\s'\"\]\),;]+)")
# Bytes the warehouse check writes: a disk that cannot take this cannot take a table either.
WRITE_CHECK_BYTES = 64 * 1024


def check_writable(folder: str, probe_bytes: int = WRITE_CHECK_BYTES) -> None:
    """Create ``folder`` if needed and write (then delete) a small probe file in it.

    Raises:
        StorageError: one line naming the folder and the reason (read-only, full, denied).
    """
    path = Path(folder)
    probe: str | None = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".recspark-write-check-", dir=path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\0" * probe_bytes)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        where = f" ({e.filename})" if e.filename and str(e.filename) != folder else ""
        raise StorageError(f"warehouse {folder} is not writable: {e.strerror or e}{where}") from e
    finally:
        if probe is not None and os.path.exists(probe):
            os.unlink(probe)


def preflight(names: Sequence[str], cfg: Config) -> None:
    """Checks that need no Spark, so that a bad warehouse or model folder fails in a second:
    a local warehouse must be writable; ``embed`` needs a readable model folder."""
    if any(n in PIPELINE for n in names):
        cfg.locations()  # a Unity Catalog warehouse needs a file location
        folder = local_warehouse_dir(cfg.warehouse, cfg.spark.master)
        if folder is not None:
            check_writable(folder)
    if "embed" in names:
        from recspark.embed.model import encode_settings

        encode_settings(cfg.embed)
    if cfg.mlflow.enabled and any(n in TRACKED for n in names):
        from recspark.registry.store import check, store

        check(store(cfg.mlflow, cfg.locations()))


def storage_failure(text: str, warehouse: str) -> str | None:
    """The one-line message for an unexpected error that is a storage failure, else None.

    Names the first path in ``text`` under the warehouse (else the first path at all, else
    the warehouse).
    """
    from recspark.write_failures import storage_problem

    problem = storage_problem(text)
    if problem is None:
        return None
    paths = _PATH_IN_TEXT.findall(text)
    base = local_path(warehouse) or warehouse
    under = [p for p in paths if p.startswith(base)]
    where = under[0] if under else (paths[0] if paths else None)
    at = f" at {where}" if where else ""
    return (
        f"storage failure{at}: {problem} (warehouse {warehouse}); committed tables keep "
        "their last version: free space or fix permissions and run the command again"
    )


def build_session(cfg: Config) -> SparkSession:
    """The session for a run, from the one factory in ``recspark.session``.

    Raises:
        DependencyError: the session's JVM lacks the Delta jars (one line naming the fix).
    """
    session = configure(SparkSession.builder, cfg.spark).getOrCreate()
    require_delta(session)
    return session


def run_stages(
    names: Sequence[str], cfg: Config, spark: SparkSession | None = None, report: bool = False
) -> list[StageSummary]:
    """Run stages in order on one session and print each stage's summary as a JSON line.

    With ``report``, write the run's HTML report under the warehouse and print its path.
    """
    cfg = cfg.with_run_id()
    log = get_logger()
    own = spark is None
    session = build_session(cfg) if spark is None else spark
    summaries: list[StageSummary] = []
    try:
        for name in names:
            t0 = time.perf_counter()
            log.info("%s: started (run %s)", name, cfg.run_id)
            with progress(session, name):
                figures = stage_function(name)(session, cfg)
            seconds = time.perf_counter() - t0
            summary = StageSummary.of(name, str(cfg.run_id), seconds, figures)
            summaries.append(summary)
            print(summary.to_json(), flush=True)
        if report:
            from recspark.reporting.writer import write_run_report

            path = write_run_report(session, cfg, summaries)
            log.info("report: %s", path)
    finally:
        if own:
            session.stop()
    return summaries


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help=f"YAML config (default {DEFAULT_CONFIG})")
    common.add_argument(
        "--log-level",
        default="INFO",
        choices=LEVELS,
        type=str.upper,
        help="progress messages on stderr: DEBUG, INFO (default), WARNING or ERROR",
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set input.events=/data/events.jsonl",
    )
    p = argparse.ArgumentParser(prog="recspark", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in STAGES:
        sub.add_parser(name, parents=[common], help=f"run the {name} stage")
    sub.add_parser("run", parents=[common], help="ingest, embed, train, recommend, evaluate")
    pr = sub.add_parser(
        "promote",
        parents=[common],
        help="move the champion alias to a registered version whose NDCG@10 beats the champion's",
    )
    pr.add_argument("--version", default=None, help="the candidate (default: the newest version)")
    ds = sub.add_parser("datasets", parents=[common], help="prepare a public data set as input")
    ds.add_argument("name", choices=["movielens-100k"])
    ds.add_argument("--out", default="data/ml-100k", help="where to write events and items")
    return p


def exit_status(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default ``sys.argv[1:]``) and return its exit status.

    0 on success; a user error prints one ``recspark: error: ...`` line and returns the error's
    ``exit_code`` (2-5, see :mod:`recspark.errors`); 130 on Ctrl-C. Bad arguments raise
    argparse's ``SystemExit(2)``; bugs raise.
    """
    args = parser().parse_args(argv)
    set_level(args.log_level)
    cfg: Config | None = None
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "datasets":
            from recspark.datasets import prepare

            print(json.dumps(prepare(args.name, args.out), sort_keys=True))
            return 0
        if args.command == "promote":
            preflight(["promote"], cfg)
            from recspark.registry.promote import run as promote

            session = build_session(cfg)
            try:
                print(json.dumps(promote(session, cfg, args.version), sort_keys=True))
            finally:
                session.stop()
            return 0
        names = PIPELINE if args.command == "run" else (args.command,)
        preflight(names, cfg)
        run_stages(names, cfg, report=args.command == "run")
    except RecsparkError as e:
        print(f"recspark: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("recspark: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full or read-only disk is the user's to fix: no traceback
        text = f"{e}"
        if isinstance(e, OSError) and e.filename:
            text = f"{e.filename}: {e.strerror or e}"
        message = storage_failure(text, cfg.warehouse) if cfg is not None else None
        if message is None:
            raise
        print(f"recspark: error: {message}", file=sys.stderr)
        return StorageError.exit_code
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """The ``recspark`` command: :func:`exit_status`, with ``SystemExit(code)`` when it fails.

    Callers that ignore the return value (Databricks' wheel launcher, ``spark-submit``) still
    see the failure.
    """
    code = exit_status(argv)
    if code != 0:
        raise SystemExit(code)


def _one_line(text: str) -> str:
    """Error messages are one line (a wrapped Java message may carry newlines)."""
    return " ".join(text.split())


if __name__ == "__main__":
    main()
