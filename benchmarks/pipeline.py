"""Whole-pipeline scale benchmark: `recspark run` at growing sizes, then the daily batch.

    .venv/bin/python benchmarks/pipeline.py --sizes 1000000 10000000 --out /tmp/recspark-pipe

For each size it generates events (users = size / 100, items = size / 200, as the demo's
200k / 2,000 / 1,000), runs ``recspark run`` on them in a fresh process (one JVM, every stage
in order, as a user runs it) and reads each stage's seconds from the summaries the command
prints. It prints seconds, events per second per core and the per-event cost of each stage
at the largest size relative to the smallest (target: at most 1.2x).

Then the daily case, at the largest size: a batch of ``--daily-fraction`` (1%) of the history,
generated with another seed (``--daily-seed``) on the day after it, is ingested (a) into a copy
of the warehouse that the run left, as one more file in its input folder
(``ingest.mode=incremental`` reads only that file), and (b) into an empty warehouse. The copy
is removed afterwards, so the daily case can be run again on the same history. Target: (a) at
most 2x (b), so that the cost of a daily run follows the batch, not the history.
``--daily-repeat N`` runs (a) and (b) N times each, alternating, and also prints the factor of
each case's fastest run: single runs of (b) took 32.0 to 42.2 s on one day, which moved a
single factor more than a change to (a) did. The copy leaves out
``models/`` (training's output, 8.9 GB of the 10M warehouse), which ingest never reads.

``--daily-embed`` also times embed's users' part around each (a): on the copy without
``gold/user_embeddings``, ``recspark embed`` computes every user's vector; after the batch, it
computes only the users whose interactions the batch changed (read from the change data feed of
``silver/interactions``, which a warehouse made before the feed was on needs switched on once:
``ALTER TABLE delta.`<warehouse>/silver/interactions` SET TBLPROPERTIES
(delta.enableChangeDataFeed = true)``).

``--stages ingest`` runs only those stages (each as its own command, in order) instead of
``recspark run``: the daily case needs only ingest's tables, and the whole pipeline at 10M takes
hours on two cores.

``--reuse`` keeps generated data and warehouses of an earlier run (the daily step then needs
the warehouse of the largest size), and runs on them only the ``--stages`` their ``run.json``
does not hold yet, adding their figures to it: ``--sizes 10000000 --stages evaluate --reuse
--no-daily`` adds evaluate to a 10M run that stopped before it. ``--no-daily`` skips the daily
case. Figures are wall-clock seconds on this machine's ``spark.master`` (local[2] unless
``--set spark.master=...``); run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECSPARK = [sys.executable, "-m", "recspark.cli"]
STAGES = ("ingest", "embed", "train", "recommend", "evaluate")
GENERATED_END = datetime(2026, 11, 1, tzinfo=UTC)  # recspark.generate's default end


@dataclass(frozen=True)
class StageRun:
    """One stage's figures in one run."""

    stage: str
    seconds: float
    summary: dict[str, object]


def shape(events: int) -> dict[str, int]:
    """The demo's proportions at ``events`` (pure)."""
    return {"events": events, "users": max(events // 100, 10), "items": max(events // 200, 10)}


def generate_args(out: Path, events: int, *, seed: int, end: datetime, days: int) -> list[str]:
    """``recspark generate`` overrides for ``events`` events under ``out`` (pure)."""
    s = shape(events)
    sets = {
        "generate.output": str(out),
        "generate.events": s["events"],
        "generate.users": s["users"],
        "generate.items": s["items"],
        "generate.end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "generate.days": days,
        "seed": seed,
    }
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def run_args(data: Path, warehouse: Path, extra: list[str]) -> list[str]:
    """Overrides that point a command at ``data`` and ``warehouse`` (pure)."""
    sets = [
        f"input.events={data / 'events'}",
        f"input.items={data / 'items'}",
        f"warehouse={warehouse}",
    ]
    return [arg for s in sets for arg in ("--set", s)] + extra


def recspark(command: str, args: list[str], log: Path) -> list[StageRun]:
    """Run ``recspark <command> ARGS`` in a fresh process; its stages' figures.

    Raises:
        RuntimeError: with the command, exit code and the log's tail, when it fails.
    """
    cmd = [*RECSPARK, command, *args]
    t0 = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    runs = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            summary = json.loads(line)
            runs.append(StageRun(str(summary.get("stage")), float(summary["seconds"]), summary))
    print(f"  {command}: {wall:.1f} s wall ({log})", flush=True)
    return runs


def events_read(ingest_summary: dict[str, object]) -> object:
    """The event records an ingest run read, from its summary (pure)."""
    events = ingest_summary.get("events")
    return events.get("read") if isinstance(events, dict) else None


def per_event(runs: list[StageRun], events: int, cores: int) -> dict[str, float]:
    """Core-microseconds per input event of each stage (pure)."""
    return {r.stage: r.seconds * cores * 1e6 / events for r in runs}


def missing_stages(requested: list[str], recorded: list[dict[str, object]]) -> list[str]:
    """The ``requested`` stages that no ``recorded`` run (a ``run.json``) holds, in order (pure)."""
    done = {r.get("stage") for r in recorded}
    return [s for s in STAGES if s in requested and s not in done]


def run_stages(stages: list[str], args: list[str], root: Path) -> list[StageRun]:
    """``recspark run`` when ``stages`` are all of them, else each stage's own command."""
    if list(stages) == list(STAGES):
        return recspark("run", args, root / "run.log")
    return [r for s in stages for r in recspark(s, args, root / f"{s}.log")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--out", type=Path, default=Path("/tmp/recspark-pipe"))
    ap.add_argument("--daily-fraction", type=float, default=0.01)
    ap.add_argument("--cores", type=int, default=2, help="cores of spark.master (local[2])")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--daily-seed", type=int, default=7)
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-daily", action="store_true", help="skip the daily case")
    ap.add_argument("--daily-repeat", type=int, default=1, help="runs of each daily case")
    ap.add_argument(
        "--daily-embed", action="store_true", help="time embed's users' part around each (a)"
    )
    a = ap.parse_args()
    extra = [arg for s in a.extra for arg in ("--set", s)]
    sizes = sorted(a.sizes)
    results: dict[int, list[StageRun]] = {}
    for n in sizes:
        root = a.out / str(n)
        data, wh = root / "data", root / "warehouse"
        if not (a.reuse and (data / "events").exists()):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            gen = generate_args(data, n, seed=42, end=GENERATED_END, days=28)
            recspark("generate", gen, root / "generate.log")
        recorded: list[dict[str, object]] = []
        if a.reuse and (root / "run.json").exists():
            recorded = json.loads((root / "run.json").read_text())
        else:
            shutil.rmtree(wh, ignore_errors=True)
        todo = missing_stages(a.stages, recorded)
        if todo:
            runs = run_stages(todo, run_args(data, wh, extra), root)
            recorded += [r.__dict__ for r in runs]
            (root / "run.json").write_text(json.dumps(recorded, default=str))
        results[n] = [StageRun(**r) for r in json.loads((root / "run.json").read_text())]

    print("\n| stage | " + " | ".join(f"{n:,} events: s (core-µs/event)" for n in sizes) + " |")
    print("| --- | " + " | ".join("---:" for _ in sizes) + " |")
    costs = {n: per_event(results[n], n, a.cores) for n in sizes}
    stages = [s for s in STAGES if all(any(r.stage == s for r in results[n]) for n in sizes)]
    for stage in stages:
        cells = [
            f"{next(r.seconds for r in results[n] if r.stage == stage):.1f} ({costs[n][stage]:.1f})"
            for n in sizes
        ]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    for n in sizes:  # what evaluate's time went to (its summary, from this version on)
        ev = next((r.summary for r in results[n] if r.stage == "evaluate"), {})
        seconds_by_model = ev.get("seconds_by_model")
        if isinstance(seconds_by_model, dict):
            by_model = ", ".join(f"{m} {v:.1f} s" for m, v in seconds_by_model.items())
            print(f"evaluate at {n:,} events, by model: {by_model}")
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        print(f"\nper-event cost at {hi:,} / at {lo:,} (target <= 1.2x):")
        for stage in stages:
            print(f"  {stage}: {costs[hi][stage] / costs[lo][stage]:.2f}x")

    if a.no_daily:
        return
    # The daily batch: into the largest warehouse (incremental) and into an empty one.
    n = sizes[-1]
    root = a.out / str(n)
    batch_n = max(int(n * a.daily_fraction), 1000)
    batch = root / "daily"
    shutil.rmtree(batch, ignore_errors=True)
    end = GENERATED_END + timedelta(days=1)
    recspark(
        "generate",
        generate_args(batch, batch_n, seed=a.daily_seed, end=end, days=1),
        root / "g.log",
    )
    history_items = root / "data" / "items"
    files = sorted((batch / "events").glob("part-*"))
    # One more file in the history's input folder, under a name no earlier daily run used (the
    # stream knows files by path), ingested into a copy of the history's warehouse.
    added = [root / "data" / "events" / f"daily{a.daily_seed}-{f.name}" for f in files]
    copy = root / "daily-warehouse"
    empty = root / "daily-empty-warehouse"
    base = ["--set", f"input.items={history_items}"]
    history: list[StageRun] = []
    alone: list[StageRun] = []
    embeds: list[tuple[StageRun, StageRun]] = []
    repeat = max(1, a.daily_repeat)
    for i in range(repeat):
        run = f"-{i + 1}" if repeat > 1 else ""  # each run's log kept
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root / "warehouse", copy, ignore=_top_level(root / "warehouse", "models"))
        args = run_args(root / "data", copy, extra)
        try:
            if a.daily_embed:
                shutil.rmtree(copy / "gold" / "user_embeddings")
                every = recspark("embed", args, root / f"daily-embed-all{run}.log")[0]
            for f, to in zip(files, added, strict=True):
                shutil.copy(f, to)
            history += recspark(
                "ingest",
                [*args, "--set", "ingest.mode=incremental"],
                root / f"daily-history{run}.log",
            )[:1]
            if a.daily_embed:
                embeds.append(
                    (every, recspark("embed", args, root / f"daily-embed-batch{run}.log")[0])
                )
        finally:
            for to in added:
                to.unlink(missing_ok=True)
            shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
        alone += recspark(
            "ingest",
            [
                "--set",
                f"input.events={batch / 'events'}",
                "--set",
                f"warehouse={empty}",
                *base,
                *extra,
            ],
            root / f"daily-empty{run}.log",
        )[:1]
    for h, e in zip(history, alone, strict=True):
        print(
            f"\ndaily batch: into the {n:,}-event warehouse {h.seconds:.1f} s (read "
            f"{events_read(h.summary)} records), into an empty one {e.seconds:.1f} s (read "
            f"{events_read(e.summary)}): {h.seconds / e.seconds:.2f}x (target <= 2x)"
        )
    for every, batch_users in embeds:
        full, changes = every.summary, batch_users.summary
        print(
            f"daily embed, users' part: every user {full['users_seconds']} s "
            f"({full['users_refresh']}, {full['users']:,} users), after the batch "
            f"{changes['users_seconds']} s ({changes['users_refresh']}, "
            f"{changes['users_changed']} users changed: {changes['users_refresh_reason']}): "
            f"{float(str(changes['users_seconds'])) / float(str(full['users_seconds'])):.2f}x"
        )
    if len(history) > 1:
        fast_h, fast_e = min(r.seconds for r in history), min(r.seconds for r in alone)
        print(
            f"fastest of {len(history)} runs each: {fast_h:.1f} s against {fast_e:.1f} s: "
            f"{fast_h / fast_e:.2f}x (target <= 2x)"
        )


def _top_level(src: Path, *names: str) -> Callable[[str, list[str]], set[str]]:
    """A ``copytree(src, ...)`` ignore function: ``names`` directly under ``src`` (pure)."""

    def ignore(folder: str, entries: list[str]) -> set[str]:
        return {e for e in entries if e in names} if Path(folder) == src else set()

    return ignore


if __name__ == "__main__":
    main()
