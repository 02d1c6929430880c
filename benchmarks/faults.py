"""Fault matrix: kill each stage while it writes, run it again, compare with an uninterrupted run.

    .venv/bin/python benchmarks/faults.py --out /tmp/recspark-faults
    .venv/bin/python benchmarks/faults.py --stages ingest train --quick
    .venv/bin/python benchmarks/faults.py --out /tmp/recspark-faults --reuse  # same baselines

On a small generated data set it first runs the pipeline uninterrupted, keeping a copy of the
warehouse after each stage (``empty``, ``first_load`` = ingest of half the event files,
``ingested`` = ingest of all of them, a MERGE into the existing tables, ``embedded``,
``trained``, ``recommended``). Then, for each (stage, kill point) of
``tests.support.faults.plan_kills`` (taking the stages in turn, so that a run stopped with Ctrl-C
has tried every stage; it still prints the totals so far), it copies the snapshot before the
stage, starts ``.venv/bin/recspark <stage>``, SIGKILLs its whole process group at the kill
point, runs the stage again and compares the stage's tables with the snapshot after it
(sorted contents by key, run ids and write times ignored). A mismatch is followed by an
uninterrupted control run from the same snapshot, to tell a lost write from a stage that is
not deterministic.

Then: two ``ingest`` processes at the same time (from an empty warehouse and incrementally),
and the error cases (full and read-only warehouse, missing and unreadable model folder,
corrupted checkpoint), each expected to end with one ``recspark: error:`` line and a
non-zero exit.

Prints one line per case and the totals: kills survived, records lost (must be 0),
duplicates (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import SparkSession

from recspark.cli import build_session
from recspark.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the harness lives in tests/support
from tests.support import faults as FX

ROOT = Path(__file__).resolve().parents[1]
RECSPARK = str(ROOT / ".venv" / "bin" / "recspark")
CONFIG = str(ROOT / "conf" / "local.yaml")


@dataclass
class Bench:
    out: Path
    data: Path
    launcher: str
    timeout: float
    snapshots: dict[str, str]

    def overrides(self, warehouse: str, events: str | None = None) -> list[str]:
        return [
            f"warehouse={warehouse}",
            f"input.events={events or self.data / 'events'}",
            f"input.items={self.data / 'items'}",
            "spark.shuffle_partitions=4",
            "spark.driver_memory=2g",
            f"train.launcher={self.launcher}",
            "train.num_proc=2",
            "train.reader_pool=dummy",
            "train.reader_workers=1",
            "train.epochs=3",
            "train.patience=3",
            "train.dim=16",
            "train.batch_size=16",  # epochs of many steps: kills land between checkpoints
            "train.history_len=20",
            "train.data_files=2",
            "recommend.k=10",
        ]

    def events_for(self, snapshot: str) -> str | None:
        """The input of the ingest that produces ``snapshot``."""
        return str(self.data / "events" / "part-0000[01]*") if snapshot == "first_load" else None

    def cmd(self, stage: str, warehouse: str, events: str | None = None) -> list[str]:
        return FX.stage_command(RECSPARK, stage, CONFIG, self.overrides(warehouse, events))

    def run(
        self,
        stage: str,
        warehouse: str,
        point: FX.KillPoint | None = None,
        events: str | None = None,
        cmd: list[str] | None = None,
    ) -> FX.StageRun:
        return FX.run_stage(
            cmd or self.cmd(stage, warehouse, events),
            warehouse,
            str(self.out / "logs"),
            point,
            cwd=str(ROOT),
            timeout=self.timeout,
        )


def log(msg: str) -> None:
    print(msg, flush=True)


def fail(run: FX.StageRun, what: str) -> None:
    sys.exit(f"{what} failed (exit {run.returncode}):\n{run.stderr_tail}")


def build_snapshots(b: Bench, stages_needed: set[str], reuse: bool = False) -> None:
    """The uninterrupted run's warehouse after each stage (``reuse``: those already made)."""
    wh = str(b.out / "baseline")
    b.snapshots["empty"] = str(b.out / "snap_empty")
    FX.copy_warehouse(str(b.out / "nothing"), b.snapshots["empty"])
    previous = b.snapshots["empty"]
    for name, stage in FX.SNAPSHOT_CHAIN[1:]:
        if name not in stages_needed:
            break
        kept = b.out / f"snap_{name}"
        done = b.out / f"snap_{name}.done"
        if reuse and done.exists():
            b.snapshots[name] = previous = str(kept)
            log(f"  baseline {name:<12} reused")
            continue
        FX.copy_warehouse(previous, wh)
        run = b.run(stage, wh, events=b.events_for(name))
        if run.returncode != 0:
            fail(run, f"baseline {stage} -> {name}")
        b.snapshots[name] = previous = str(kept)
        FX.copy_warehouse(wh, str(kept))
        done.touch()
        log(f"  baseline {name:<12} {run.seconds:6.1f}s  ({stage})")


def diff_line(diffs: list[FX.TableDiff]) -> tuple[int, int, int, int]:
    return (
        sum(d.lost for d in diffs),
        sum(d.duplicates for d in diffs),
        sum(d.extra for d in diffs),
        sum(d.changed for d in diffs),
    )


def interleave(cases: list[FX.FaultCase]) -> list[FX.FaultCase]:
    """One case of each stage in turn (pipeline order within a stage), so that a run stopped
    early has tried every stage."""
    by_stage: dict[str, list[FX.FaultCase]] = {}
    for c in cases:
        by_stage.setdefault(c.stage, []).append(c)
    out: list[FX.FaultCase] = []
    while any(by_stage.values()):
        for queue in by_stage.values():
            if queue:
                out.append(queue.pop(0))
    return out


def run_matrix(
    spark: SparkSession, b: Bench, cases: list[FX.FaultCase], totals: dict[str, int]
) -> None:
    """Run each case, adding to ``totals`` as it goes (a stopped run keeps what it found)."""
    log(
        f"{'case':<62} {'kill@s':>7} {'rerun':>6} {'resumed':>11} "
        f"{'lost':>5} {'dup':>4} {'extra':>5} {'chg':>4}  verdict"
    )
    for i, case in enumerate(cases):
        wh = str(b.out / f"case{i:02d}")
        FX.copy_warehouse(b.snapshots[case.base], wh)
        events = b.events_for(case.expect)
        killed = b.run(case.stage, wh, case.point, events=events)
        rerun = b.run(case.stage, wh, events=events)
        totals["cases"] += 1
        totals["leftovers"] += killed.leftovers
        if rerun.returncode != 0:
            log(f"{case.name:<62} rerun failed (exit {rerun.returncode})")
            log("    " + rerun.stderr_tail.replace("\n", "\n    ")[-2000:])
            continue
        diffs = FX.compare_tables(spark, b.snapshots[case.expect], wh, FX.STAGE_TABLES[case.stage])
        lost, dup, extra, chg = diff_line(diffs)
        totals["lost"] += lost
        totals["duplicates"] += dup
        verdict = "ok" if all(d.equal for d in diffs) else "DIFFERENT"
        if verdict != "ok":
            control_wh = wh + "_control"
            FX.copy_warehouse(b.snapshots[case.base], control_wh)
            control = b.run(case.stage, control_wh, events=events)
            cdiffs = FX.compare_tables(
                spark, b.snapshots[case.expect], control_wh, FX.STAGE_TABLES[case.stage]
            )
            same_as_control = control.returncode == 0 and not all(d.equal for d in cdiffs)
            verdict += " (an uninterrupted rerun differs too: not deterministic)" * same_as_control
            shutil.rmtree(control_wh, ignore_errors=True)
            for d in diffs:
                if not d.equal:
                    log(f"    {d}")
        if killed.killed:
            totals["killed"] += 1
            totals["survived"] += verdict == "ok"
        kill_at = f"{killed.kill_seconds:.1f}" if killed.kill_seconds is not None else "missed"
        resumed = str(rerun.summary.get("resumed_from", "-"))
        log(
            f"{case.name:<62} {kill_at:>7} {rerun.returncode:>6} {resumed:>11} "
            f"{lost:>5} {dup:>4} {extra:>5} {chg:>4}  {verdict}"
        )
        shutil.rmtree(wh, ignore_errors=True)


def concurrent_ingest(spark: SparkSession, b: Bench, base: str, expect: str) -> tuple[int, int]:
    """Two ingest processes at once on a copy of ``base``; rerun if one failed; compare."""
    wh = str(b.out / f"concurrent_{base}")
    FX.copy_warehouse(b.snapshots[base], wh)
    events = b.events_for(expect)
    runs: list[FX.StageRun | None] = [None, None]

    def go(i: int) -> None:
        runs[i] = b.run("ingest", wh, events=events)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(1.0)  # both start their Spark session at about the same time
    for t in threads:
        t.join()
    outcomes = []
    for r in runs:
        if r is None:  # the thread died before its run ended: shown as such
            outcomes.append("no result")
            continue
        retried = sum("trying again" in ln for ln in r.stderr_tail.splitlines())
        if r.returncode == 0:
            outcomes.append(f"exit 0 ({retried} MERGE retries)")
        else:
            lines = r.error_lines
            outcomes.append(f"exit {r.returncode}: {lines[-1] if lines else r.stderr_tail[-300:]}")
    rerun_note = ""
    if any(r is not None and r.returncode != 0 for r in runs):
        rerun = b.run("ingest", wh, events=events)
        rerun_note = f"; rerun exit {rerun.returncode}"
    diffs = FX.compare_tables(spark, b.snapshots[expect], wh, FX.STAGE_TABLES["ingest"])
    lost, dup, extra, chg = diff_line(diffs)
    log(f"  two ingests from {base:<10}: " + " | ".join(outcomes) + rerun_note)
    log(
        f"    -> lost {lost}, duplicates {dup}, extra {extra}, changed {chg}: "
        + ("ok" if all(d.equal for d in diffs) else "DIFFERENT")
    )
    shutil.rmtree(wh, ignore_errors=True)
    return lost, dup


def error_cases(spark: SparkSession, b: Bench) -> None:
    euid = os.geteuid()

    def show(name: str, run: FX.StageRun) -> None:
        lines = run.error_lines
        shape = "one line" if len(lines) == 1 and "Traceback" not in run.stderr_tail else "BAD"
        text = lines[0] if lines else run.stderr_tail[-300:]
        log(f"  {name:<26} exit {run.returncode} {run.seconds:5.1f}s [{shape}] {text}")

    # Full warehouse: a tiny tmpfs mounted over it in a private mount namespace.
    reason = FX.sandbox_unavailable("full")
    if reason:
        log(f"  {'full warehouse':<26} skipped: {reason}")
    else:
        wh, keep = str(b.out / "full_wh"), str(b.out / "full_kept")
        for d in (wh, keep):
            FX.copy_warehouse(str(b.out / "nothing"), d)
        size_kb = 160
        cmd = FX.sandbox_command(
            "full",
            wh,
            b.cmd("ingest", wh, b.events_for("first_load")),
            euid=euid,
            size_kb=size_kb,
            keep=keep,
        )
        show(f"full warehouse ({size_kb} KiB)", b.run("ingest", wh, cmd=cmd))
        # Committed tables must hold rows of the uninterrupted run only, each once (an
        # earlier commit may lack later rows); the failed write must be invisible.
        bad, committed = 0, []
        for name in FX.STAGE_TABLES["ingest"]:
            rows = FX.read_rows(spark, keep, name)
            if rows is None:
                continue
            committed.append(name)
            exp = FX.read_rows(spark, b.snapshots["first_load"], name) or []
            d = FX.compare_rows(name, exp, rows, FX.TABLE_KEYS[name])
            bad += bool(d.extra or d.duplicates or d.changed)
        log(f"    committed before the disk filled: {', '.join(committed) or 'nothing'}")
        rerun = b.run("ingest", keep, events=b.events_for("first_load"))
        diffs = FX.compare_tables(spark, b.snapshots["first_load"], keep, FX.STAGE_TABLES["ingest"])
        log(
            f"    tables with rows of a half-done write: {bad}; "
            f"rerun with space: exit {rerun.returncode}, "
            + ("equal to the uninterrupted run" if all(d.equal for d in diffs) else "DIFFERENT")
        )
        for d in diffs:
            if not d.equal:
                log(f"    {d}")

    # Read-only warehouse: a read-only bind mount (root ignores chmod).
    wh = str(b.out / "ro_wh")
    FX.copy_warehouse(b.snapshots["first_load"], wh)
    reason = FX.sandbox_unavailable("read_only")
    if reason and euid == 0:
        log(f"  {'read-only warehouse':<26} skipped: {reason}")
    else:
        cmd = b.cmd("ingest", wh)
        if reason:
            os.chmod(wh, 0o555)
        else:
            cmd = FX.sandbox_command("read_only", wh, cmd, euid=euid)
        try:
            show("read-only warehouse", b.run("ingest", wh, cmd=cmd))
        finally:
            os.chmod(wh, 0o755)

    # Model folders.
    ingested = str(b.out / "model_wh")
    FX.copy_warehouse(b.snapshots["ingested"], ingested)
    missing = b.out / "no-such-model"
    cmd = FX.stage_command(
        RECSPARK, "embed", CONFIG, [*b.overrides(ingested), f"embed.model={missing}"]
    )
    show("missing model folder", b.run("embed", ingested, cmd=cmd))
    if FX.sandbox_unavailable("no_dac_override"):
        log(f"  {'unreadable model folder':<26} skipped: root cannot be denied reading here")
    else:
        model = b.out / "unreadable-model"
        model.mkdir(exist_ok=True)
        (model / "config.json").write_text("{}")
        os.chmod(model, 0)
        cmd = FX.stage_command(
            RECSPARK, "embed", CONFIG, [*b.overrides(ingested), f"embed.model={model}"]
        )
        try:
            run = b.run("embed", ingested, cmd=FX.no_dac_override_command(cmd, euid=euid))
        finally:
            os.chmod(model, 0o755)
        show("unreadable model folder", run)
    broken = b.out / "broken-model"
    broken.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        (broken / name).write_text("{ not json")
    (broken / "model.safetensors").write_bytes(os.urandom(4096))
    cmd = FX.stage_command(
        RECSPARK, "embed", CONFIG, [*b.overrides(ingested), f"embed.model={broken}"]
    )
    show("corrupt model files", b.run("embed", ingested, cmd=cmd))

    # Corrupted checkpoint: kill train after its first checkpoint, tear the file, run again.
    if "embedded" in b.snapshots:
        wh = str(b.out / "ckpt_wh")
        FX.copy_warehouse(b.snapshots["embedded"], wh)
        point = FX.KillPoint("first checkpoint", "path", "models/*.partial/checkpoints/last.pt")
        b.run("train", wh, point)
        ckpts = list(Path(wh).glob("models/*.partial/checkpoints/last.pt"))
        if ckpts:
            ckpts[0].write_bytes(ckpts[0].read_bytes()[:64])
            show("corrupted checkpoint", b.run("train", wh))
        else:
            log("  corrupted checkpoint       skipped: the kill came before a checkpoint")


MANIFEST = "bench.json"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def make_data(b: Bench, events: int) -> None:
    gen = FX.stage_command(
        RECSPARK,
        "generate",
        CONFIG,
        [
            f"generate.output={b.data}",
            f"generate.events={events}",
            f"generate.users={max(events // 60, 20)}",
            f"generate.items={max(events // 50, 30)}",
            "generate.bot_users=0",
            "generate.files=4",
        ],
    )
    run = FX.run_stage(gen, str(b.out), str(b.out / "logs"), cwd=str(ROOT), timeout=b.timeout)
    if run.returncode != 0:
        fail(run, "generate")
    log(f"data: {events} events ({run.summary.get('read')} records), launcher {b.launcher}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/recspark-faults")
    ap.add_argument("--stages", nargs="+", default=["ingest", "embed", "train", "recommend"])
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--launcher", default="horovod", choices=["horovod", "local"])
    ap.add_argument("--quick", action="store_true", help="two kill points per stage")
    ap.add_argument("--skip-errors", action="store_true")
    ap.add_argument("--skip-concurrent", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per stage run")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep the data and the uninterrupted runs' snapshots of an earlier run with the "
        "same --out, --events and --launcher (else they are made again)",
    )
    args = ap.parse_args()

    out = Path(args.out)
    manifest = {"events": args.events, "launcher": args.launcher}
    reuse = args.reuse and _read_json(out / MANIFEST) == manifest
    if not reuse:
        shutil.rmtree(out, ignore_errors=True)
    (out / "nothing").mkdir(parents=True, exist_ok=True)
    b = Bench(out, out / "data", args.launcher, args.timeout, {})
    t0 = time.perf_counter()
    if reuse:
        log(f"data and snapshots of the earlier run in {out} ({args.events} events)")
    else:
        make_data(b, args.events)
        (out / MANIFEST).write_text(json.dumps(manifest))

    points = dict(FX.KILL_POINTS)
    if args.quick:
        quick = {
            "ingest": (2, 3),
            "embed": (1, 3),
            "train": (2, 3),
            "recommend": (1,),
        }
        points = {s: tuple(FX.KILL_POINTS[s][i] for i in quick[s]) for s in FX.KILL_POINTS}
    cases = interleave(FX.plan_kills(args.stages, points, first_load_points=0 if args.quick else 2))
    needed = {c.expect for c in cases} | {"first_load", "ingested"}
    if not args.skip_errors:
        needed |= {"embedded"}
    order = [n for n, _ in FX.SNAPSHOT_CHAIN]
    last = max(order.index(n) for n in needed)
    needed = set(order[: last + 1])
    log(f"baseline (uninterrupted) runs: {', '.join(order[1 : last + 1])}")
    build_snapshots(b, needed, reuse)

    totals = {"cases": 0, "killed": 0, "survived": 0, "lost": 0, "duplicates": 0, "leftovers": 0}
    stopped = ""
    spark = build_session(load_config(CONFIG, ["spark.driver_memory=2g"]))
    try:
        log(f"\nkill matrix: {len(cases)} cases (SIGKILL of the whole process group, then rerun)")
        run_matrix(spark, b, cases, totals)
        if not args.skip_concurrent:
            log("\nconcurrent writers (two `recspark ingest` processes, same warehouse):")
            for base, expect in (("empty", "first_load"), ("first_load", "ingested")):
                lost, dup = concurrent_ingest(spark, b, base, expect)
                totals["lost"] += lost
                totals["duplicates"] += dup
        if not args.skip_errors:
            log("\nerror cases (expected: non-zero exit, one `recspark: error:` line):")
            error_cases(spark, b)
    except KeyboardInterrupt:
        stopped = " (STOPPED EARLY: totals of the cases done)"
    finally:
        spark.stop()
    log(
        f"\nkills survived: {totals['survived']}/{totals['killed']} kills "
        f"({totals['cases']} of {len(cases)} cases run, "
        f"{totals['cases'] - totals['killed']} kill points missed); "
        f"records lost: {totals['lost']}; duplicates: {totals['duplicates']}; "
        f"processes left after kills: {totals['leftovers']}; "
        f"{time.perf_counter() - t0:.0f}s{stopped}"
    )


if __name__ == "__main__":
    main()
