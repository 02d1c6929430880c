"""A small, documented search of recspark's training settings, on validation data only.

Every candidate runs ``recspark evaluate`` with ``evaluate.validation_only=true``: the test
split is left out and the training part is split again by the same chronological rule, so
nothing here looks at the test split. Candidates vary one setting at a time from the defaults
(temperature, recency half-life, id dropout, dim, epochs); the baselines are scored once on the
same validation split for reference. Needs a warehouse where ingest and embed have run.

    .venv/bin/python benchmarks/quality_search.py --set warehouse=warehouse-ml100k \\
        --set ingest.min_ts=1997-01-01T00:00:00Z --tag ml100k

Prints one line per candidate as it finishes and a markdown table at the end (NDCG, recall and
MAP at 10, coverage, diversity, cold recall, seconds). A candidate's model is kept under the
warehouse's models/evaluate/<version> (named by its settings, the inputs' versions and the cut),
so a rerun on the same tables reuses it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recspark.cli import build_session
from recspark.config import load_config
from recspark.evaluate import job

# One setting at a time from the defaults (name -> --set overrides).
CANDIDATES: dict[str, list[str]] = {
    "defaults": [],
    "temperature=0.1": ["train.temperature=0.1"],
    "temperature=0.025": ["train.temperature=0.025"],
    "half_life=3": ["train.recency_half_life=3"],
    "half_life=30": ["train.recency_half_life=30"],
    "id_dropout=0.1": ["train.item_id_dropout=0.1"],
    "id_dropout=0.5": ["train.item_id_dropout=0.5"],
    "dim=128": ["train.dim=128"],
    "epochs=16": ["train.epochs=16", "train.patience=3"],
}
METRICS = ("ndcg", "recall", "map", "coverage", "diversity", "cold_recall")


def run_one(
    spark: Any, config: str | None, base: list[str], extra: list[str], run_id: str, models: str
) -> tuple[dict[str, float], float]:
    overrides = [
        *base,
        *extra,
        "evaluate.validation_only=true",
        "evaluate.report=false",
        "evaluate.ks=[10]",
        f"evaluate.models=[{models}]",
        f"run_id={run_id}",
    ]
    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    summary = job.run(spark, cfg)
    return summary["metrics"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="dotted.key=value")
    ap.add_argument("--tag", default="search", help="prefix of the run ids")
    ap.add_argument("--only", nargs="*", default=None, help="candidate names to run")
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config, args.sets)
    spark = build_session(cfg)
    rows: list[tuple[str, dict[str, float], float]] = []
    try:
        if not args.no_baselines:
            m, secs = run_one(
                spark, args.config, args.sets, [], f"{args.tag}-baselines", "popularity,als,content"
            )
            for model in ("als", "content", "popularity"):
                vals = {k: m.get(f"{model}/{k}@10", float("nan")) for k in METRICS}
                rows.append((f"[{model}]", vals, secs))
                print(f"{model}: {vals}", file=sys.stderr, flush=True)
        names = args.only if args.only else list(CANDIDATES)
        for name in names:
            run_id = f"{args.tag}-{name.replace('=', '-').replace('.', 'p')}"
            m, secs = run_one(spark, args.config, args.sets, CANDIDATES[name], run_id, "recspark")
            vals = {k: m.get(f"recspark/{k}@10", float("nan")) for k in METRICS}
            rows.append((name, vals, secs))
            print(f"{name}: {vals} ({secs:.0f} s)", file=sys.stderr, flush=True)
    finally:
        spark.stop()
    print("| candidate | " + " | ".join(f"{k}@10" for k in METRICS) + " | seconds |")
    print("| --- | " + " | ".join("---:" for _ in METRICS) + " | ---: |")
    for name, vals, secs in rows:
        print(f"| {name} | " + " | ".join(f"{vals[k]:.4f}" for k in METRICS) + f" | {secs:.0f} |")


if __name__ == "__main__":
    main()
