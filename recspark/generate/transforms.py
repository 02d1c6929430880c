"""Synthetic behaviour logs and catalog, built from ``spark.range`` (no driver-side loops).

Every random draw is a hash of (seed, a tag, row ids), so the same seed gives the same data at
any scale and on any cluster. Item text words correlate with latent user tastes: each user
prefers one or two categories, and each category has its own vocabulary. Within a category,
items differ by a facet (who or what they are for: beginners, experts, families, ...) that their
title and description state in words, as a real catalog's do, and each user leans towards one
facet: two items of a category are not alike to every user, and their text says how.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.generate.config import FaultRates

FAULT = "fault"
LINE = "line"
CLEAN = "clean"
BOT = "bot"
# Fault kinds in the order their probability bands are laid out (see ``fault_kind``).
FAULT_KINDS: tuple[str, ...] = (
    "duplicate_line",
    "resent_event",
    "malformed_json",
    "missing_field",
    "bad_timestamp",
    "out_of_window",
    "unknown_event_type",
    "unknown_item",
)
# What ingest must make of each kind: a quarantine reason, or "duplicate" (one extra line).
EXPECTED_OUTCOME: dict[str, str] = {
    "duplicate_line": "duplicate",
    "resent_event": "duplicate",
    "malformed_json": "malformed_json",
    "missing_field": "missing_field",
    "bad_timestamp": "bad_timestamp",
    "out_of_window": "out_of_window",
    "unknown_event_type": "unknown_event_type",
    "unknown_item": "unknown_item",
    BOT: "bot",
}

_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Jazz", ("saxophone", "swing", "bebop", "trumpet", "improvisation", "club", "vinyl", "blues")),
    (
        "Science Fiction",
        ("starship", "galaxy", "android", "alien", "warp", "colony", "robot", "orbit"),
    ),
    ("Cooking", ("recipe", "kitchen", "spice", "bread", "pasta", "oven", "flavour", "sauce")),
    ("Hiking", ("trail", "mountain", "backpack", "summit", "forest", "boots", "campfire", "ridge")),
    (
        "Gaming",
        ("console", "quest", "level", "multiplayer", "controller", "arcade", "boss", "pixel"),
    ),
    (
        "Gardening",
        ("soil", "seeds", "roses", "compost", "greenhouse", "tulips", "pruning", "herbs"),
    ),
    (
        "Fitness",
        ("workout", "cardio", "muscle", "yoga", "running", "strength", "stretch", "protein"),
    ),
    (
        "Photography",
        ("camera", "lens", "aperture", "portrait", "landscape", "shutter", "tripod", "film"),
    ),
    (
        "History",
        ("empire", "medieval", "dynasty", "archive", "revolution", "castle", "ancient", "war"),
    ),
    ("Travel", ("passport", "island", "beach", "airport", "hotel", "journey", "city", "cruise")),
    (
        "Finance",
        ("stocks", "budget", "savings", "investment", "market", "dividend", "tax", "bonds"),
    ),
    ("Poetry", ("verse", "sonnet", "rhyme", "stanza", "metaphor", "lyric", "ballad", "haiku")),
)
# Facets cut across categories: what an item is like, beyond its topic.
_FACETS: tuple[tuple[str, ...], ...] = (
    ("beginner", "basics", "introduction", "simple", "first", "easy"),
    ("advanced", "masterclass", "technique", "professional", "expert", "precision"),
    ("kids", "family", "children", "playful", "together", "fun"),
    ("budget", "affordable", "value", "thrifty", "bargain", "cheap"),
    ("luxury", "premium", "exclusive", "elegant", "signature", "gourmet"),
    ("retro", "vintage", "nostalgic", "heritage", "traditional", "timeless"),
)
_GENERIC = (
    "classic",
    "new",
    "essential",
    "complete",
    "modern",
    "deluxe",
    "great",
    "little",
    "guide",
    "collection",
    "edition",
    "story",
    "series",
    "volume",
    "the",
    "best",
    "of",
    "for",
    "with",
    "and",
    "every",
    "day",
    "home",
    "life",
    "world",
)
_ADJECTIVES = ("Ultimate", "Midnight", "Golden", "Silent", "Wild", "Hidden", "Bright", "Secret")
# view, click, add_to_cart, purchase, rating: cumulative shares.
_TYPE_BANDS: tuple[tuple[str, float], ...] = (
    ("view", 0.70),
    ("click", 0.88),
    ("add_to_cart", 0.94),
    ("purchase", 0.97),
    ("rating", 1.0),
)
_OFFSETS = ("Z", "+00:00", "+02:00", "-05:00", "+05:30")
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
        tuple(name for name, _ in _TOPICS), (c % len(_TOPICS)) / F.lit(float(len(_TOPICS)))
    )
    extra = F.floor(c / len(_TOPICS))
    return F.when(extra == 0, base).otherwise(
        F.concat(base, F.lit(" "), (extra + 1).cast("string"))
    )


def _topic_words(c: Column) -> Column:
    arrays = [F.array(*[F.lit(w) for w in words]) for _, words in _TOPICS]
    return F.element_at(F.array(*arrays), ((c % len(_TOPICS)) + 1).cast("int"))


def _sentence(text: Column) -> Column:
    return F.concat(F.upper(F.substring(text, 1, 1)), F.substring(text, 2, 1 << 20), F.lit("."))


def item_id_expr(index: Column) -> Column:
    return F.format_string("item-%06d", index)


def item_facet(index: Column, categories: int, facets: int) -> Column:
    """The facet of item ``index`` (0..facets-1): its rank within its category modulo
    ``facets``, so every facet has items of every popularity."""
    return F.pmod(F.floor(index / F.lit(categories)), F.lit(max(facets, 1)))


def generate_items(
    ids: DataFrame, *, categories: int, seed: int, facets: int = len(_FACETS)
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
    if facets > len(_FACETS):
        raise ValueError(f"facets must be at most {len(_FACETS)}, found {facets}")
    cat = F.col("id") % categories
    words = _topic_words(cat)
    generic = F.array(*[F.lit(w) for w in _GENERIC])
    n_words = (20 + F.floor(uniform(seed, "dlen", "id") * 40)).cast("int")
    if facets > 0:
        fwords = F.element_at(
            F.array(*[F.array(*[F.lit(w) for w in ws]) for ws in _FACETS[:facets]]),
            (item_facet(F.col("id"), categories, facets) + 1).cast("int"),
        )
        n_fw = len(_FACETS[0])
        share_topic, share_facet = 0.45, 0.25
    else:
        fwords, n_fw, share_topic, share_facet = generic, len(_GENERIC), 0.6, 0.0

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
                    (F.floor(uniform(seed, "dg", F.col("id"), k) * len(_GENERIC)) + 1).cast("int"),
                )
            )
        )

    desc_words = F.transform(F.sequence(F.lit(1), n_words), word)
    # The title's second word: the facet's (the topic's when there are no facets).
    t1 = F.floor(uniform(seed, "t1", "id") * (n_fw if facets > 0 else 8)) + 1
    second = F.initcap(F.element_at(fwords if facets > 0 else words, t1.cast("int")))
    title = F.concat_ws(
        " ",
        _pick(_ADJECTIVES, uniform(seed, "t0", "id")),
        second,
        F.initcap(F.element_at(words, (F.floor(uniform(seed, "t2", "id") * 8) + 1).cast("int"))),
        F.concat(F.lit("#"), F.col("id").cast("string")),
    )
    return ids.select(
        item_id_expr(F.col("id")).alias(S.ITEM_ID),
        title.alias(S.TITLE),
        _sentence(F.array_join(desc_words, " ")).alias(S.DESCRIPTION),
        _category_name(cat, categories).alias(S.CATEGORY),
        F.col("id").alias("index"),
    )


def generate_clean_events(
    sessions: DataFrame,
    *,
    users: int,
    items: int,
    categories: int,
    end_epoch: int,
    days: int,
    seed: int,
    session_mean_events: float,
    event_id_fraction: float,
    session_id_fraction: float,
    item_popularity_exponent: float,
    user_activity_exponent: float,
    taste_strength: float,
    cold_items: float,
    facets: int = 0,
    facet_strength: float = 0.0,
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
    s = F.col("id")
    user = F.floor(F.pow(uniform(seed, "user", s), F.lit(user_activity_exponent)) * users)
    start = F.lit(float(end_epoch - days * 86400)) + uniform(seed, "start", s) * (
        days * 86400 - 7200
    )
    length = 1 + F.floor(-F.log(1 - uniform(seed, "len", s)) * max(session_mean_events - 1, 0.0))
    gap = 10 + uniform(seed, "gap", s) * 110
    base = sessions.select(
        s.alias("session"),
        user.cast("long").alias("_user"),
        start.alias("_start"),
        gap.alias("_gap"),
        F.posexplode(F.sequence(F.lit(0), F.least(length, F.lit(200)).cast("int") - 1)).alias(
            "k", "_x"
        ),
    ).drop("_x")
    k = F.col("k")
    fav = F.pmod(F.xxhash64(F.lit(seed), F.lit("taste"), F.col("_user")), F.lit(categories))
    fav2 = F.pmod(F.xxhash64(F.lit(seed), F.lit("taste2"), F.col("_user")), F.lit(categories))
    follows = uniform(seed, "follow", "session", k) < taste_strength
    second = uniform(seed, "second", "session", k) < 0.3
    rand_cat = F.floor(uniform(seed, "rcat", "session", k) * categories)
    cat = F.when(follows, F.when(second, fav2).otherwise(fav)).otherwise(rand_cat)
    per_cat = max(items // categories, 1)
    warm = max(int(per_cat * (1 - cold_items)), 1)
    pop = F.pow(uniform(seed, "rank", "session", k), F.lit(item_popularity_exponent))
    rank = F.floor(pop * warm)
    if facets > 0 and facet_strength > 0 and warm >= facets:
        # Ranks r with r % facets == the user's facet (see item_facet), by popularity.
        ufacet = F.pmod(F.xxhash64(F.lit(seed), F.lit("facet"), F.col("_user")), F.lit(facets))
        in_facet = follows & (uniform(seed, "infacet", "session", k) < facet_strength)
        rank = F.when(in_facet, ufacet + F.floor(pop * (warm // facets)) * facets).otherwise(rank)
    index = F.least(cat + rank * categories, F.lit(items - 1))
    ut = uniform(seed, "type", "session", k)
    etype: Column = F.lit(_TYPE_BANDS[-1][0])
    for name, upper in reversed(_TYPE_BANDS[:-1]):
        etype = F.when(ut < upper, F.lit(name)).otherwise(etype)
    rating = F.when(follows, 4 + F.floor(uniform(seed, "r", "session", k) * 2)).otherwise(
        1 + F.floor(uniform(seed, "r", "session", k) * 5)
    )
    price = F.round(5 + uniform(seed, "price", "session", k) * 95, 2)
    value = F.when(etype == "rating", rating.cast("double")).when(etype == "purchase", price)
    has_id = uniform(seed, "hasid", "session", k) < event_id_fraction
    event_id = F.when(
        has_id,
        F.concat(
            F.lit("e-"),
            F.substring(
                F.sha2(
                    F.concat_ws(
                        ":", F.lit(str(seed)), F.col("session").cast("string"), k.cast("string")
                    ),
                    256,
                ),
                1,
                20,
            ),
        ),
    )
    has_session = uniform(seed, "hassess", "session") < session_id_fraction
    epoch = F.col("_start") + k * F.col("_gap") + uniform(seed, "jit", "session", k)
    return base.select(
        "session",
        "k",
        F.format_string("user-%06d", F.col("_user")).alias(S.USER_ID),
        item_id_expr(index).alias(S.ITEM_ID),
        etype.alias(S.EVENT_TYPE),
        epoch.alias("epoch"),
        value.alias(S.VALUE),
        event_id.alias(S.EVENT_ID),
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


def fault_kind(u: Column, rates: FaultRates) -> Column:
    """The fault an event gets from a uniform draw ``u``: bands of ``rates`` in FAULT_KINDS
    order, else ``clean``."""
    out: Column = F.lit(CLEAN)
    upper = sum(getattr(rates, k) for k in FAULT_KINDS)
    for kind in reversed(FAULT_KINDS):
        out = F.when(u < upper, F.lit(kind)).otherwise(out)
        upper -= getattr(rates, kind)
    return out


def _ts_text(epoch: Column, style: Column) -> Column:
    """Event time in one of several contract formats (chosen by ``style`` 0..4)."""
    offset = F.element_at(F.array(*[F.lit(o) for o in _OFFSETS]), (style + 1).cast("int"))
    hours = F.when(offset.isin("Z", "+00:00"), 0.0).when(offset == "+02:00", 2.0)
    hours = hours.when(offset == "-05:00", -5.0).otherwise(5.5)
    local = F.timestamp_seconds(epoch + hours * 3600)
    iso = F.concat(F.date_format(local, "yyyy-MM-dd'T'HH:mm:ss.SSS"), offset)
    return iso


def with_faults(
    events: DataFrame, *, rates: FaultRates, seed: int, allow_malformed: bool = True
) -> DataFrame:
    """Inject faults and render each event as its JSON Lines text.

    Args:
        events: output of :func:`generate_clean_events` or :func:`generate_bot_events`
            (bot rows, with negative ``session``, get no faults).

    Returns:
        ``line`` (the JSON text), ``fault`` (``clean``, ``bot`` or a FAULT_KINDS entry),
        ``copy`` (0, or 1 for the second line of a duplicate/re-sent event) and ``session``.
    """
    is_bot = F.col("session") < 0
    u = uniform(seed, "fault", "session", "k")
    kind = F.when(is_bot, F.lit(BOT)).otherwise(fault_kind(u, rates))
    if not allow_malformed:
        kind = F.when(kind == "malformed_json", F.lit(CLEAN)).otherwise(kind)
    df = events.withColumn(FAULT, kind)
    # Re-sent events need an id to be recognised; the second copy comes 5-60 s later.
    df = df.withColumn(
        S.EVENT_ID,
        F.when(
            (F.col(FAULT) == "resent_event") & F.col(S.EVENT_ID).isNull(),
            F.concat(
                F.lit("r-"), F.col("session").cast("string"), F.lit("-"), F.col("k").cast("string")
            ),
        ).otherwise(F.col(S.EVENT_ID)),
    )
    copies = F.when(
        F.col(FAULT).isin("duplicate_line", "resent_event"), F.array(F.lit(0), F.lit(1))
    )
    df = df.withColumn("copy", F.explode(F.coalesce(copies, F.array(F.lit(0)))))
    epoch = F.col("epoch") + F.when(
        (F.col(FAULT) == "resent_event") & (F.col("copy") == 1),
        5 + uniform(seed, "resend", "session", "k") * 55,
    ).otherwise(0.0)
    style = F.floor(uniform(seed, "tsstyle", "session", "k") * 8)
    # Styles 0-4: ISO with an offset; 5: epoch seconds; 6: epoch ms; 7: epoch ms as a string.
    # Events without an event_id use millisecond precision so that the hash key stays unique.
    as_text = F.when(style < 5, _ts_text(epoch, style)).when(
        style == 7, F.format_string("%d", F.floor(epoch * 1000).cast("long"))
    )
    as_number = F.when(style == 5, F.format_string("%.3f", epoch)).when(
        style == 6, F.format_string("%d", F.floor(epoch * 1000).cast("long"))
    )
    fault = F.col(FAULT)
    ts_text = (
        F.when(fault == "bad_timestamp", F.lit("not-a-time"))
        .when(fault == "out_of_window", F.lit("1999-06-01T00:00:00Z"))
        .otherwise(as_text)
    )
    ts_number = F.when(fault.isin("bad_timestamp", "out_of_window"), F.lit(None)).otherwise(
        as_number
    )
    user = F.when(fault == "missing_field", F.lit(None)).otherwise(F.col(S.USER_ID))
    item = F.when(
        fault == "unknown_item",
        F.concat(
            F.lit("ghost-"), F.col("session").cast("string"), F.lit("-"), F.col("k").cast("string")
        ),
    ).otherwise(F.col(S.ITEM_ID))
    etype = F.when(fault == "unknown_event_type", F.lit("hover")).otherwise(F.col(S.EVENT_TYPE))
    value_text = F.when(F.col(S.VALUE).isNotNull(), F.format_string("%s", F.col(S.VALUE)))
    body = F.to_json(
        F.struct(
            F.col(S.EVENT_ID).alias(S.EVENT_ID),
            user.alias(S.USER_ID),
            item.alias(S.ITEM_ID),
            etype.alias(S.EVENT_TYPE),
            F.coalesce(ts_text, F.lit("__NUM__")).alias(S.EVENT_TS),
            value_text.alias(S.VALUE),
            F.col(S.SESSION_ID).alias(S.SESSION_ID),
        )
    )
    # Epoch numbers are written as JSON numbers, not strings.
    body = F.when(
        ts_number.isNotNull(),
        F.regexp_replace(body, '"__NUM__"', ts_number),
    ).otherwise(body)
    line = F.when(fault == "malformed_json", F.substring(body, 1, 25)).otherwise(body)
    return df.select(line.alias(LINE), FAULT, "copy", "session", "k")
