"""``recspark generate``: write synthetic events and catalog (and what was injected) as input."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recspark.config import Config
from recspark.errors import ConfigError
from recspark.generate import faults as GF
from recspark.generate import transforms as G
from recspark.generate.config import GenerateConfig
from recspark.io import hadoop_path, write_text


def expected_counts(fault_counts: dict[tuple[str, int], int]) -> dict[str, Any]:
    """What ingest must report for generated input, from line counts by (fault, copy)."""
    accepted = duplicates = 0
    reasons: dict[str, int] = {}
    for (fault, copy), n in fault_counts.items():
        outcome = "accepted" if fault == GF.CLEAN else GF.EXPECTED_OUTCOME[fault]
        if outcome == "duplicate":
            if copy == 0:
                accepted += n
            else:
                duplicates += n
        elif outcome == "accepted":
            accepted += n
        else:
            reasons[outcome] = reasons.get(outcome, 0) + n
    return {
        "read": sum(fault_counts.values()),
        "accepted": accepted,
        "duplicates": duplicates,
        "quarantined": sum(reasons.values()),
        "quarantined_by_reason": dict(sorted(reasons.items())),
    }


def _write_lines(spark: SparkSession, lines: DataFrame, out: str, gzip: bool) -> None:
    """Write one text column as ``part-NNNNN.jsonl[.gz]`` files with stable names."""
    tmp = out.rstrip("/") + "._tmp"
    writer = lines.write.mode("overwrite")
    if gzip:
        writer = writer.option("compression", "gzip")
    writer.text(tmp)
    fs, tmp_path = hadoop_path(spark, tmp)
    _, out_path = hadoop_path(spark, out)
    fs.delete(out_path, True)
    fs.mkdirs(out_path)
    parts = sorted(
        st.getPath().getName()
        for st in fs.listStatus(tmp_path)
        if st.getPath().getName().startswith("part-")
    )
    suffix = ".jsonl.gz" if gzip else ".jsonl"
    for i, name in enumerate(parts):
        fs.rename(
            hadoop_path(spark, f"{tmp}/{name}")[1],
            hadoop_path(spark, f"{out}/part-{i:05d}{suffix}")[1],
        )
    fs.delete(tmp_path, True)


def _end_epoch(cfg: Config) -> int:
    """``generate.end`` as epoch seconds."""
    g = cfg.generate
    try:
        end = datetime.fromisoformat(g.end.replace("Z", "+00:00"))
    except ValueError as e:
        raise ConfigError(
            f"{cfg.source}: key 'generate.end': expected ISO-8601, found {g.end!r}"
        ) from e
    return int(end.timestamp())


def _behaviour(g: GenerateConfig) -> G.Behaviour:
    return G.Behaviour(
        session_mean_events=g.session_mean_events,
        event_id_fraction=g.event_id_fraction,
        session_id_fraction=g.session_id_fraction,
        item_popularity_exponent=g.item_popularity_exponent,
        user_activity_exponent=g.user_activity_exponent,
        taste_strength=g.taste_strength,
        cold_items=g.cold_items,
        facets=g.facets,
        facet_strength=g.facet_strength,
    )


def _events(spark: SparkSession, cfg: Config, end_epoch: int) -> DataFrame:
    """The clean events of the configured users and bots (no faults yet)."""
    g = cfg.generate
    n_sessions = max(round(g.events / max(g.session_mean_events, 1.0)), 1)
    clean = G.generate_clean_events(
        spark.range(n_sessions, numPartitions=max(g.files, 1)),
        users=g.users,
        items=g.items,
        categories=g.categories,
        end_epoch=end_epoch,
        days=g.days,
        seed=cfg.seed,
        behaviour=_behaviour(g),
    )
    if g.bot_users == 0:
        return clean
    bots = G.generate_bot_events(
        spark.range(g.bot_users * g.bot_events_per_user),
        per_user=g.bot_events_per_user,
        items=g.items,
        end_epoch=end_epoch,
        days=g.days,
        seed=cfg.seed,
    )
    return clean.unionByName(bots)


def _write(spark: SparkSession, g: GenerateConfig, lines: DataFrame, items: DataFrame) -> None:
    """Write the events and the catalog under ``generate.output`` in ``generate.format``."""
    out = g.output.rstrip("/")
    if g.format == "jsonl":
        _write_lines(spark, lines.select(GF.LINE), f"{out}/events", g.gzip)
        _write_lines(
            spark,
            items.coalesce(1)
            .orderBy("index")
            .select(
                F.to_json(F.struct("item_id", "title", "description", "category")).alias("value")
            ),
            f"{out}/items",
            False,
        )
        return
    parsed = lines.select(
        F.from_json(
            GF.LINE,
            "event_id string, user_id string, item_id string, "
            "event_type string, event_ts string, value string, "
            "session_id string",
        ).alias("e")
    ).select("e.*")
    parsed.write.mode("overwrite").parquet(f"{out}/events")
    items.drop("index").coalesce(1).write.mode("overwrite").parquet(f"{out}/items")


def run(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Generate the configured data set under ``generate.output``; return injected counts."""
    g = cfg.generate
    end_epoch = _end_epoch(cfg)
    out = g.output.rstrip("/")
    items = G.generate_items(
        spark.range(g.items), categories=g.categories, seed=cfg.seed, facets=g.facets
    )
    lines = GF.with_faults(
        _events(spark, cfg, end_epoch),
        rates=g.faults,
        seed=cfg.seed,
        allow_malformed=g.format == "jsonl",
    )
    # Kept for the count of injected faults after the write (one generation, not two).
    lines = (
        lines.repartition(max(g.files, 1), "session")
        .sortWithinPartitions("session", "k", "copy")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    _write(spark, g, lines, items)
    counts = {
        (r[GF.FAULT], int(r["copy"])): int(r["n"])
        for r in lines.groupBy(GF.FAULT, "copy").agg(F.count(F.lit(1)).alias("n")).collect()
    }
    lines.unpersist()
    expected = expected_counts(counts)
    manifest = {
        "seed": cfg.seed,
        "events_path": f"{out}/events",
        "items_path": f"{out}/items",
        "items": g.items,
        "lines_by_fault": {f"{k[0]}/{k[1]}": v for k, v in sorted(counts.items())},
        "expected_ingest": expected,
    }
    write_text(spark, f"{out}/manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    return {"output": out, **expected}
