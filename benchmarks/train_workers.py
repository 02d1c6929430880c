"""Training step time and worker memory with 1 and 2 Horovod workers on the data a train
stage wrote (issue 18: train at 10M events was killed for memory, and its steps were slow).

    .venv/bin/python benchmarks/train_workers.py --model <warehouse>/models/<version>[.partial]

``--model`` is a model folder whose ``data/`` the train stage wrote (a ``.partial`` one of a
stopped run will do). For each process count of ``--procs``, this file runs itself under
``horovodrun --gloo -np N``: every worker builds the stage's ``TrainSpec`` from the folder's
data sizes and the default config, with torch threads shared out as ``recspark train`` plans
them (``plan_launch``: cores // N), and times ``train_step`` over the first epoch of the
validation phase (the Petastorm reader included, validation not). Printed per process count:
ms per step (steps ``--warm`` to ``--steps``), examples per second summed over the workers, and
each worker's memory after loading, at step ``--warm`` and at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

RESULT = "RESULT "


def worker(model: str, procs: int, steps: int, warm: int) -> None:
    """One Horovod worker: ``steps`` training steps; rank 0 prints the result as JSON."""
    import psutil

    from recspark.config import Config
    from recspark.train import loop
    from recspark.train.distributed import HorovodComm
    from recspark.train.plan import DataPlan, plan_launch
    from recspark.train.trainer import train_spec

    data_dir = os.path.join(model, "data")
    with open(os.path.join(data_dir, "_READY")) as f:
        info = json.load(f)
    cfg = Config()
    tc = dataclasses.replace(cfg.train, num_proc=procs)
    cores = os.cpu_count() or 1
    plan = plan_launch(tc, slots=cores, cores=cores, master=f"local[{cores}]", max_proc=procs)
    proc = psutil.Process()
    with tempfile.TemporaryDirectory() as work:
        spec = train_spec(cfg, info, DataPlan(procs, True), plan, data_dir, work, "bench")
        comm = HorovodComm()
        run = loop.resume(spec, comm)
        loaded = proc.memory_info().rss
        inputs = loop.phase_inputs(run, loop.PHASE_VALIDATE)
        _, batches = loop.epoch_batches(run, loop.PHASE_VALIDATE, 1)
        t0 = at_warm = time.perf_counter()
        rss_warm = loaded
        for i in range(1, steps + 1):
            batch = next(batches, None)
            if batch is None:
                raise SystemExit(f"the shard has fewer than {steps} batches")
            loop.train_step(run, inputs, batch)
            if i == warm:
                at_warm, rss_warm = time.perf_counter(), proc.memory_info().rss
        ms = (time.perf_counter() - at_warm) / (steps - warm) * 1e3
        rss = [float(v) for v in (loaded, rss_warm, proc.memory_info().rss)]
        mem = comm.allreduce(rss, "max")
        out = {
            "procs": procs,
            "threads": plan.torch_threads,
            "ms_per_step": comm.allreduce([ms], "max")[0],
            "seconds": time.perf_counter() - t0,
            "gib_loaded": mem[0] / 2**30,
            "gib_warm": mem[1] / 2**30,
            "gib_end": mem[2] / 2**30,
            "batch": spec.batch_size,
        }
        if comm.rank == 0:
            print(RESULT + json.dumps(out), flush=True)


def launch(model: str, procs: int, steps: int, warm: int) -> dict:
    """Run :func:`worker` under ``horovodrun`` and return rank 0's result."""
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "horovodrun"),
        "--gloo",
        "-np",
        str(procs),
        "-H",
        f"localhost:{procs}",
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--model",
        model,
        "--procs",
        str(procs),
        "--steps",
        str(steps),
        "--warm",
        str(warm),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    for line in res.stdout.splitlines():
        if RESULT in line:
            return dict(json.loads(line.split(RESULT, 1)[1]))
    tail = "\n".join((res.stdout + res.stderr).splitlines()[-20:])
    raise SystemExit(f"{' '.join(cmd)} exited {res.returncode} without a result:\n{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--warm", type=int, default=100)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not 0 < a.warm < a.steps:
        raise SystemExit(f"--warm must be in (0, --steps), found {a.warm} and {a.steps}")
    if a.worker:
        worker(a.model, a.procs[0], a.steps, a.warm)
        return
    print(f"{a.model}: steps {a.warm}-{a.steps} of the first epoch")
    print(
        "| workers | torch threads each | ms / step | examples / s (all workers) | "
        "GiB loaded | GiB at step warm | GiB at the end |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in a.procs:
        r = launch(a.model, n, a.steps, a.warm)
        rate = n * r["batch"] / (r["ms_per_step"] / 1e3)
        print(
            f"| {n} | {r['threads']} | {r['ms_per_step']:.1f} | {rate:,.0f} | "
            f"{r['gib_loaded']:.2f} | {r['gib_warm']:.2f} | {r['gib_end']:.2f} |"
        )


if __name__ == "__main__":
    main()
