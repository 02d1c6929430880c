"""Synthetic behaviour logs and catalog, built from ``spark.range`` (no driver-side loops).

Every random draw is a hash of (seed, a tag, row ids), so the same seed gives the same data at
any scale and on any cluster. Item text words correlate with latent user tastes: each user
prefers one or two categories, and each category has its own vocabulary. Within a category,
items differ by a facet (who or what they are for: beginners, experts, families, ...) that their
title and description state in words, as a real catalog's do, and each user leans towards one
facet: two items of a category are not alike to every user, and their text says how.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.generate import words as W

# view, click, add_to_cart, purchase, rating: cumulative shares.
_TYPE_BANDS: tuple[tuple[str, float], ...] = (
    ("view", 0.70),
    ("click", 0.88),
    ("add_to_cart", 0.94),
    ("purchase", 0.97),
    ("rating", 1.0),
)
_TWO53 = float(1 << 53)


def uniform(seed: int, tag: str, *cols: Column | str) -> Column:
    """A deterministic uniform draw in [0, 1) from (seed, tag, cols)."""
    h = F.xxhash64(F.lit(seed), F.lit(tag), *[F.col(c) if isinstance(c, str) else c for c in cols])
    return F.pmod(h, F.lit(1 << 53)).cast("double") / F.lit(_TWO53)


def _pick(words: tuple[str, ...], u: Column) -> Column:
    arr = F.array(*[F.lit(w) for w in words])
    return F.element_at(arr, (F.floor(u * len(words)) + 1).cast("int"))


def _category_name(c: Column, categories: int) -> Column:
    base = _pick(
        tuple(name for name, _ in W.TOPICS), (c % len(W.TOPICS)) / F.lit(float(len(W.TOPICS)))
    )
    extra = F.floor(c / len(W.TOPICS))
    return F.when(extra == 0, base).otherwise(
        F.concat(base, F.lit(" "), (extra + 1).cast("string"))
    )


def _topic_words(c: Column) -> Column:
    arrays = [F.array(*[F.lit(w) for w in words]) for _, words in W.TOPICS]
    return F.element_at(F.array(*arrays), ((c % len(W.TOPICS)) + 1).cast("int"))


def _sentence(text: Column) -> Column:
    return F.concat(F.upper(F.substring(text, 1, 1)), F.substring(text, 2, 1 << 20), F.lit("."))


def item_id_expr(index: Column) -> Column:
    return F.format_string("item-%06d", index)


def item_facet(index: Column, categories: int, facets: int) -> Column:
    """The facet of item ``index`` (0..facets-1): its rank within its category modulo
    ``facets``, so every facet has items of every popularity."""
    return F.pmod(F.floor(index / F.lit(categories)), F.lit(max(facets, 1)))


def _facet_words(facets: int, categories: int) -> tuple[Column, int, float, float]:
    """The words of each item's facet (the generic words when ``facets`` is 0), their number,
    and the shares of a description's words drawn from the topic and from the facet."""
    if facets > 0:
        fwords = F.element_at(
            F.array(*[F.array(*[F.lit(w) for w in ws]) for ws in W.FACETS[:facets]]),
            (item_facet(F.col("id"), categories, facets) + 1).cast("int"),
        )
        return fwords, len(W.FACETS[0]), 0.45, 0.25
    return F.array(*[F.lit(w) for w in W.GENERIC]), len(W.GENERIC), 0.6, 0.0


def _description(
    seed: int, words: Column, fwords: Column, n_fw: int, share_topic: float, share_facet: float
) -> Column:
    """An item's description: 20-59 words, each from its topic, its facet or the generic
    words, by the shares given."""
    generic = F.array(*[F.lit(w) for w in W.GENERIC])
    n_words = (20 + F.floor(uniform(seed, "dlen", "id") * 40)).cast("int")

    def word(k: Column) -> Column:
        u = uniform(seed, "dtopic", F.col("id"), k)
        return (
            F.when(
                u < share_topic,
                F.element_at(
                    words, (F.floor(uniform(seed, "dw", F.col("id"), k) * 8) + 1).cast("int")
                ),
            )
            .when(
                u < share_topic + share_facet,
                F.element_at(
                    fwords, (F.floor(uniform(seed, "df", F.col("id"), k) * n_fw) + 1).cast("int")
                ),
            )
            .otherwise(
                F.element_at(
                    generic,
                    (F.floor(uniform(seed, "dg", F.col("id"), k) * len(W.GENERIC)) + 1).cast("int"),
                )
            )
        )

    desc_words = F.transform(F.sequence(F.lit(1), n_words), word)
    return _sentence(F.array_join(desc_words, " "))


def _title(seed: int, words: Column, fwords: Column, n_fw: int, facets: int) -> Column:
    """An item's title: an adjective, its facet's word (the topic's when there are no
    facets), a topic word and ``#<id>``."""
    t1 = F.floor(uniform(seed, "t1", "id") * (n_fw if facets > 0 else 8)) + 1
    second = F.initcap(F.element_at(fwords if facets > 0 else words, t1.cast("int")))
    return F.concat_ws(
        " ",
        _pick(W.ADJECTIVES, uniform(seed, "t0", "id")),
        second,
        F.initcap(F.element_at(words, (F.floor(uniform(seed, "t2", "id") * 8) + 1).cast("int"))),
        F.concat(F.lit("#"), F.col("id").cast("string")),
    )


def generate_items(
    ids: DataFrame, *, categories: int, seed: int, facets: int = len(W.FACETS)
) -> DataFrame:
    """The item catalog: one row per id of ``ids`` (``spark.range(items)``).

    Args:
        ids: needs ``id`` (0..n-1).
        facets: facets in use (0 = none: the text says the category only).

    Returns:
        ``item_id``, ``title``, ``description``, ``category`` and ``index``. Item ``i`` belongs
        to category ``i % categories`` and facet ``item_facet(i)``; its words come mostly from
        that category's vocabulary, and from its facet's.
    """
    if facets > len(W.FACETS):
        raise ValueError(f"facets must be at most {len(W.FACETS)}, found {facets}")
    cat = F.col("id") % categories
    words = _topic_words(cat)
    fwords, n_fw, share_topic, share_facet = _facet_words(facets, categories)
    return ids.select(
        item_id_expr(F.col("id")).alias(S.ITEM_ID),
        _title(seed, words, fwords, n_fw, facets).alias(S.TITLE),
        _description(seed, words, fwords, n_fw, share_topic, share_facet).alias(S.DESCRIPTION),
        _category_name(cat, categories).alias(S.CATEGORY),
        F.col("id").alias("index"),
    )


@dataclass(frozen=True)
class Behaviour:
    """How the generated users behave (see :class:`~recspark.generate.config.GenerateConfig`).

    ``taste_strength``: the share of events within the user's two categories;
    ``facet_strength``: the share of those that pick an item of the user's facet.
    """

    session_mean_events: float
    event_id_fraction: float
    session_id_fraction: float
    item_popularity_exponent: float
    user_activity_exponent: float
    taste_strength: float
    cold_items: float
    facets: int = 0
    facet_strength: float = 0.0


def _session_events(
    sessions: DataFrame, *, users: int, end_epoch: int, days: int, seed: int, b: Behaviour
) -> DataFrame:
    """One row per event of each session: ``session``, ``k`` (position in session), ``_user``,
    ``_start`` (the session's start, epoch seconds) and ``_gap`` (seconds between events)."""
    s = F.col("id")
    user = F.floor(F.pow(uniform(seed, "user", s), F.lit(b.user_activity_exponent)) * users)
    start = F.lit(float(end_epoch - days * 86400)) + uniform(seed, "start", s) * (
        days * 86400 - 7200
    )
    mean = max(b.session_mean_events - 1, 0.0)
    length = 1 + F.floor(-F.log(1 - uniform(seed, "len", s)) * mean)
    gap = 10 + uniform(seed, "gap", s) * 110
    return sessions.select(
        s.alias("session"),
        user.cast("long").alias("_user"),
        start.alias("_start"),
        gap.alias("_gap"),
        F.posexplode(F.sequence(F.lit(0), F.least(length, F.lit(200)).cast("int") - 1)).alias(
            "k", "_x"
        ),
    ).drop("_x")


def _item_index(*, items: int, categories: int, seed: int, b: Behaviour, follows: Column) -> Column:
    """The index of an event's item: a category (one of the user's two when the event
    ``follows`` their taste, else any), then an item of it by popularity (of the user's facet,
    with probability ``facet_strength``, when it follows)."""
    k = F.col("k")
    fav = F.pmod(F.xxhash64(F.lit(seed), F.lit("taste"), F.col("_user")), F.lit(categories))
    fav2 = F.pmod(F.xxhash64(F.lit(seed), F.lit("taste2"), F.col("_user")), F.lit(categories))
    second = uniform(seed, "second", "session", k) < 0.3
    rand_cat = F.floor(uniform(seed, "rcat", "session", k) * categories)
    cat = F.when(follows, F.when(second, fav2).otherwise(fav)).otherwise(rand_cat)
    per_cat = max(items // categories, 1)
    warm = max(int(per_cat * (1 - b.cold_items)), 1)
    pop = F.pow(uniform(seed, "rank", "session", k), F.lit(b.item_popularity_exponent))
    rank = F.floor(pop * warm)
    if b.facets > 0 and b.facet_strength > 0 and warm >= b.facets:
        # Ranks r with r % facets == the user's facet (see item_facet), by popularity.
        ufacet = F.pmod(F.xxhash64(F.lit(seed), F.lit("facet"), F.col("_user")), F.lit(b.facets))
        in_facet = follows & (uniform(seed, "infacet", "session", k) < b.facet_strength)
        rank = F.when(in_facet, ufacet + F.floor(pop * (warm // b.facets)) * b.facets).otherwise(
            rank
        )
    return F.least(cat + rank * categories, F.lit(items - 1))


def _type_and_value(seed: int, follows: Column) -> tuple[Column, Column]:
    """An event's type (by the shares of ``_TYPE_BANDS``) and value: a rating (high when the
    event ``follows`` the user's taste) or a purchase's price, else null."""
    k = F.col("k")
    ut = uniform(seed, "type", "session", k)
    etype: Column = F.lit(_TYPE_BANDS[-1][0])
    for name, upper in reversed(_TYPE_BANDS[:-1]):
        etype = F.when(ut < upper, F.lit(name)).otherwise(etype)
    rating = F.when(follows, 4 + F.floor(uniform(seed, "r", "session", k) * 2)).otherwise(
        1 + F.floor(uniform(seed, "r", "session", k) * 5)
    )
    price = F.round(5 + uniform(seed, "price", "session", k) * 95, 2)
    value = F.when(etype == "rating", rating.cast("double")).when(etype == "purchase", price)
    return etype, value


def _event_id(seed: int, fraction: float) -> Column:
    """``e-`` and a hash of (seed, session, k) for a ``fraction`` of the events, else null."""
    k = F.col("k")
    text = F.concat_ws(":", F.lit(str(seed)), F.col("session").cast("string"), k.cast("string"))
    has_id = uniform(seed, "hasid", "session", k) < fraction
    return F.when(has_id, F.concat(F.lit("e-"), F.substring(F.sha2(text, 256), 1, 20)))


def generate_clean_events(
    sessions: DataFrame,
    *,
    users: int,
    items: int,
    categories: int,
    end_epoch: int,
    days: int,
    seed: int,
    behaviour: Behaviour,
) -> DataFrame:
    """Clean events, a session per row of ``sessions`` (``spark.range(n_sessions)``).

    An event follows the user's taste with probability ``taste_strength`` (one of the user's
    two categories); such an event then picks, with probability ``facet_strength``, an item of
    the user's facet within that category. Within those choices, items are drawn by popularity.

    Returns:
        ``session``, ``k`` (position in session), ``user_id``, ``item_id``, ``event_type``,
        ``epoch`` (double seconds), ``value``, ``event_id`` and ``session_id`` (nulls where the
        input should lack them).
    """
    b = behaviour
    base = _session_events(sessions, users=users, end_epoch=end_epoch, days=days, seed=seed, b=b)
    k = F.col("k")
    follows = uniform(seed, "follow", "session", k) < b.taste_strength
    index = _item_index(items=items, categories=categories, seed=seed, b=b, follows=follows)
    etype, value = _type_and_value(seed, follows)
    has_session = uniform(seed, "hassess", "session") < b.session_id_fraction
    epoch = F.col("_start") + k * F.col("_gap") + uniform(seed, "jit", "session", k)
    return base.select(
        "session",
        "k",
        F.format_string("user-%06d", F.col("_user")).alias(S.USER_ID),
        item_id_expr(index).alias(S.ITEM_ID),
        etype.alias(S.EVENT_TYPE),
        epoch.alias("epoch"),
        value.alias(S.VALUE),
        _event_id(seed, b.event_id_fraction).alias(S.EVENT_ID),
        F.when(has_session, F.concat(F.lit("s-"), F.col("session").cast("string"))).alias(
            S.SESSION_ID
        ),
    )


def generate_bot_events(
    ids: DataFrame, *, per_user: int, items: int, end_epoch: int, days: int, seed: int
) -> DataFrame:
    """Events of bot users: one event every 3 s for ``per_user`` events, from ``ids`` =
    ``spark.range(bot_users * per_user)``. Same columns as :func:`generate_clean_events`."""
    b = F.floor(F.col("id") / per_user)
    k = F.col("id") % per_user
    start = F.lit(float(end_epoch - days * 86400)) + uniform(seed, "botstart", b) * (
        days * 86400 - per_user * 3 - 3600
    )
    index = F.floor(uniform(seed, "botitem", "id") * items)
    return ids.select(
        (F.lit(-1) - b).alias("session"),
        k.alias("k"),
        F.format_string("bot-%03d", b).alias(S.USER_ID),
        item_id_expr(index).alias(S.ITEM_ID),
        F.lit("view").alias(S.EVENT_TYPE),
        (start + k * 3 + uniform(seed, "botjit", "id") * 0.5).alias("epoch"),
        F.lit(None).cast("double").alias(S.VALUE),
        F.concat(F.lit("b-"), F.col("id").cast("string")).alias(S.EVENT_ID),
        F.lit(None).cast("string").alias(S.SESSION_ID),
    )
