"""The generator's facets: item text states the facet, and users lean towards theirs."""

from __future__ import annotations

from collections import Counter

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recspark.generate import transforms as G
from recspark.generate import words as W

CATEGORIES = 4


def test_item_text_states_its_facet_and_facets_zero_keeps_the_old_text(
    spark: SparkSession,
) -> None:
    items = G.generate_items(spark.range(48), categories=CATEGORIES, seed=1, facets=6).collect()
    for r in items:
        facet = (r["index"] // CATEGORIES) % 6
        words = set(W.FACETS[facet])
        assert r["title"].split()[1].lower() in words, r["title"]
        desc = {w.strip(".").lower() for w in r["description"].split()}
        others = set().union(*[set(ws) for f, ws in enumerate(W.FACETS) if f != facet])
        assert not desc & others  # only its own facet's words
    plain = G.generate_items(spark.range(48), categories=CATEGORIES, seed=1, facets=0).collect()
    every = set().union(*[set(ws) for ws in W.FACETS])
    assert not any(r["title"].split()[1].lower() in every for r in plain)


def test_events_lean_towards_the_user_s_facet(spark: SparkSession) -> None:
    n_items = 240
    ev = G.generate_clean_events(
        spark.range(3000),
        users=50,
        items=n_items,
        categories=CATEGORIES,
        end_epoch=1_700_000_000,
        days=7,
        seed=3,
        behaviour=G.Behaviour(
            session_mean_events=4.0,
            event_id_fraction=1.0,
            session_id_fraction=0.0,
            item_popularity_exponent=2.0,
            user_activity_exponent=1.0,
            taste_strength=0.8,
            cold_items=0.0,
            facets=6,
            facet_strength=0.5,
        ),
    )
    idx = F.regexp_extract("item_id", r"(\d+)$", 1).cast("int")
    rows = ev.select("user_id", G.item_facet(idx, CATEGORIES, 6).alias("f")).collect()
    per_user: dict[str, Counter[int]] = {}
    for r in rows:
        per_user.setdefault(r["user_id"], Counter())[int(r["f"])] += 1
    # Each user's most frequent facet takes far more than a sixth of their events.
    shares = [c.most_common(1)[0][1] / sum(c.values()) for c in per_user.values() if c.total() > 20]
    assert len(shares) > 10 and sum(shares) / len(shares) > 0.4
