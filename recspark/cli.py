"""The ``recspark`` command: subcommands call the same ``run(spark, cfg)`` functions that
``jobs/<stage>.py`` call under spark-submit.

User errors (bad config, missing input, unreadable model, ...) end with one line on stderr and a
non-zero exit; only bugs show a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from recspark.config import DEFAULT_CONFIG, Config, load_config
from recspark.errors import RecsparkError
from recspark.progress import progress
from recspark.session import configure

STAGES: tuple[str, ...] = ("generate", "ingest", "embed", "train", "recommend", "evaluate")
# What `recspark run` runs, in order (it never generates or overwrites input).
PIPELINE: tuple[str, ...] = ("ingest", "embed", "train", "recommend", "evaluate")

StageFn = Callable[[SparkSession, Config], dict[str, Any]]


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def with_run_id(cfg: Config) -> Config:
    """The config with ``run_id`` filled in, so that every stage of one run shares it."""
    return cfg if cfg.run_id else dataclasses.replace(cfg, run_id=new_run_id())


def stage_function(name: str) -> StageFn:
    """``recspark.<name>.job.run``."""
    module = importlib.import_module(f"recspark.{name}.job")
    fn: StageFn = module.run
    return fn


def build_session(cfg: Config) -> SparkSession:
    """The session for a run, from the one factory in ``recspark.session``."""
    return configure(SparkSession.builder, cfg.spark).getOrCreate()


def run_stages(
    names: Sequence[str], cfg: Config, spark: SparkSession | None = None, report: bool = False
) -> list[dict[str, Any]]:
    """Run stages in order on one session and print each stage's summary as a JSON line.

    With ``report``, write the run's HTML report under the warehouse and print its path.
    """
    cfg = with_run_id(cfg)
    own = spark is None
    session = build_session(cfg) if spark is None else spark
    summaries: list[dict[str, Any]] = []
    try:
        for name in names:
            t0 = time.perf_counter()
            print(f"[recspark] {name}: started (run {cfg.run_id})", file=sys.stderr, flush=True)
            with progress(session, name):
                summary = dict(stage_function(name)(session, cfg))
            summary.setdefault("stage", name)
            summary["seconds"] = round(time.perf_counter() - t0, 2)
            summaries.append(summary)
            print(json.dumps(summary, default=str, sort_keys=True), flush=True)
        if report:
            from recspark.report import write_run_report

            path = write_run_report(session, cfg, summaries)
            print(f"[recspark] report: {path}", file=sys.stderr, flush=True)
    finally:
        if own:
            session.stop()
    return summaries


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help=f"YAML config (default {DEFAULT_CONFIG})")
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
    ds = sub.add_parser("datasets", parents=[common], help="prepare a public data set as input")
    ds.add_argument("name", choices=["movielens-100k"])
    ds.add_argument("--out", default="data/ml-100k", help="where to write events and items")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "datasets":
            from recspark.datasets import prepare

            print(json.dumps(prepare(args.name, args.out), sort_keys=True))
            return 0
        names = PIPELINE if args.command == "run" else (args.command,)
        run_stages(names, cfg, report=args.command == "run")
    except RecsparkError as e:
        print(f"recspark: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("recspark: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
