"""Classification of events: every record quarantined, a duplicate, or accepted, exactly once.

Validated records (:mod:`recspark.ingest.validate`) go through one shuffle by user that serves
dedup, the bot rule and sessionization; unknown items are looked up in the catalog before it.
Nothing here reads, writes, counts or collects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.ingest.validate import parse_json_records, validate_events

IS_DUPLICATE = "is_duplicate"
# A 64-bit hash of the record text: carried instead of the text through classification's
# shuffle (the dedup tie-break, and how the text of a record rejected there is found again).
RAW_HASH = "raw_hash"
STATUS = "status"  # accepted | quarantined | duplicate

# Helper columns of classification, dropped before it returns.
HOUR = "_hour"  # the clock hour of an event still accepted (bots and sessions sort by it)
KNOWN = "_known"  # true when the event's item is in the catalog, else null
_HOUR_SIZE = "_n"  # the user's accepted events in that hour
_HOUR_FIRST = "_first"  # 1 on the first row of the hour
_BUSY_HOURS = "_busy_hours"
_PEAK = "_peak"
PREVIOUS = "_previous"  # the time of the previous event of the user's sessions
# The stored context of an incremental batch (see :class:`Context`).
CTX_LAST = "_ctx_last"  # the time of the user's last stored event
CTX_START = "_ctx_start"  # the start of the session that event belongs to
CTX_BUSY = "_ctx_busy"  # the user's stored busy hours
CTX_PEAK = "_ctx_peak"  # the user's largest stored hour
CTX_EVENTS = "_ctx_events"  # the user's stored events in one clock hour
_SEEN_KEY = "_seen_key"  # the key of a valid event, to look up among the stored ones
_SEEN = "_seen"  # true when an event with that key is stored already
_HELPERS = (
    HOUR,
    KNOWN,
    _HOUR_SIZE,
    _HOUR_FIRST,
    _BUSY_HOURS,
    _PEAK,
    PREVIOUS,
    CTX_LAST,
    CTX_START,
    CTX_BUSY,
    CTX_PEAK,
    CTX_EVENTS,
    _SEEN_KEY,
    _SEEN,
)
# A time order without ties among accepted events (their dedup fields differ).
_TIME_ORDER: tuple[str, ...] = (S.EVENT_TS, S.EVENT_ID, S.ITEM_ID, S.EVENT_TYPE)


@dataclass(frozen=True)
class Context:
    """What an incremental batch needs to know of the events stored by earlier batches, so
    that it classifies its records as one ingest of everything would (see
    :mod:`recspark.ingest.incremental`, which builds it).

    Attributes:
        keys: ``event_key`` of stored events, each once: at least those that the batch's
            events repeat (a batch's event with one of them is a duplicate). Broadcast it
            when it is small: the join then keeps the batch's partitioning by user.
        users: per user, ``_ctx_last`` and ``_ctx_start`` (the last stored event's time and its
            session's start: null when none), ``_ctx_busy`` and ``_ctx_peak`` (the stored busy
            hours and the largest stored hour, by the bot rule's count: null when none).
        hours: per user and clock hour (``_hour``), ``_ctx_events``: the stored events the bot
            rule counts.
    """

    keys: DataFrame
    users: DataFrame
    hours: DataFrame


def with_status(df: DataFrame) -> DataFrame:
    """Add ``status``: ``quarantined`` (a reason), ``duplicate``, or ``accepted``."""
    return df.withColumn(
        STATUS,
        F.when(F.col(S.REASON).isNotNull(), "quarantined")
        .when(F.col(IS_DUPLICATE), "duplicate")
        .otherwise("accepted"),
    )


def _accepted_so_far() -> Column:
    return F.col(S.REASON).isNull() & ~F.col(IS_DUPLICATE)


def _whole(window: WindowSpec) -> WindowSpec:
    return window.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)


# --- dedup ----------------------------------------------------------------------------------


def event_key(
    *,
    event_id: str = S.EVENT_ID,
    user_id: str = S.USER_ID,
    item_id: str = S.ITEM_ID,
    event_type: str = S.EVENT_TYPE,
    event_ts: str = S.EVENT_TS,
) -> Column:
    """The dedup key: ``id:`` + a hash of (user, event_id), else ``h:`` + a hash of (user,
    item, type, time in µs). An event id identifies one event of one user."""
    micros = F.unix_micros(F.col(event_ts)).cast("string")
    by_id = F.sha2(F.concat_ws("\u0001", F.col(user_id), F.col(event_id)), 256)
    hashed = F.sha2(
        F.concat_ws("\u0001", F.col(user_id), F.col(item_id), F.col(event_type), micros), 256
    )
    return F.when(F.col(event_id).isNotNull(), F.concat(F.lit("id:"), by_id)).otherwise(
        F.concat(F.lit("h:"), hashed)
    )


def _dedup_window(tie_col: str) -> WindowSpec:
    """Records of one event (the fields :func:`event_key` hashes, compared as they are), the
    earliest first (ties: source file, then ``tie_col``)."""
    no_id = F.col(S.EVENT_ID).isNull()
    return Window.partitionBy(
        S.USER_ID,
        S.EVENT_ID,
        F.when(no_id, F.col(S.ITEM_ID)),
        F.when(no_id, F.col(S.EVENT_TYPE)),
        F.when(no_id, F.col(S.EVENT_TS)),
    ).orderBy(F.col(S.EVENT_TS).asc(), F.col(S.SOURCE_FILE).asc(), F.col(tie_col).asc())


def flag_duplicates(validated: DataFrame, *, tie_col: str) -> DataFrame:
    """Add ``is_duplicate``: among valid records of one event, all but the earliest (ties:
    source file, then ``tie_col``). Invalid records are never duplicates."""
    valid = F.col(S.REASON).isNull()
    first = F.row_number().over(_dedup_window(tie_col)) == 1
    return validated.withColumn(IS_DUPLICATE, F.when(valid, ~first).otherwise(F.lit(False)))


def _mark_stored(marked: DataFrame, keys: DataFrame) -> DataFrame:
    """Mark as duplicates the valid events whose key is among ``keys`` (``event_key`` of the
    events stored by earlier batches, each once): the stored event came first."""
    valid = F.col(S.REASON).isNull()
    stored = keys.select(F.col(S.EVENT_KEY).alias(_SEEN_KEY), F.lit(True).alias(_SEEN))
    joined = marked.withColumn(_SEEN_KEY, F.when(valid, event_key())).join(
        stored, _SEEN_KEY, "left"
    )
    seen = valid & F.coalesce(F.col(_SEEN), F.lit(False))
    return joined.withColumn(IS_DUPLICATE, F.col(IS_DUPLICATE) | seen).drop(_SEEN_KEY, _SEEN)


# --- bots -----------------------------------------------------------------------------------


def count_hours(df: DataFrame, *, order: Sequence[str]) -> DataFrame:
    """Add ``_hour`` (events still accepted), the size of each user's hour and a 1 on its
    first row: one window pass, sorted by (user, ``_hour``, *order*)."""
    in_hour = Window.partitionBy(S.USER_ID, HOUR).orderBy(*order)
    return df.withColumn(
        HOUR, F.when(_accepted_so_far(), F.date_trunc("hour", F.col(S.EVENT_TS)))
    ).select(
        "*",
        F.count(HOUR).over(_whole(in_hour)).alias(_HOUR_SIZE),
        F.row_number().over(in_hour).alias(_HOUR_FIRST),
    )


def _add_stored_hours(counted: DataFrame, hours: DataFrame) -> DataFrame:
    """Add the stored events of each hour (``Context.hours``) to :func:`count_hours`' sizes."""
    return counted.join(hours, [S.USER_ID, HOUR], "left").withColumn(
        _HOUR_SIZE, F.col(_HOUR_SIZE) + F.coalesce(F.col(CTX_EVENTS), F.lit(0))
    )


def bot_statistics(
    *, events_per_hour: int, by_user: WindowSpec, stored: bool = False
) -> list[Column]:
    """Per user, over :func:`count_hours`' output: how many hours hold ``events_per_hour``
    events or more (each counted on its first row), and the largest hour.

    With ``stored``, ``_hour_size`` already includes the stored events of the hour
    (``_ctx_events``) and the user's stored hours count too: the stored busy hours
    (``_ctx_busy``), less those that this batch's hours recount, and the stored peak."""
    accepted = _accepted_so_far()
    first = accepted & (F.col(_HOUR_FIRST) == 1)
    busy = first & (F.col(_HOUR_SIZE) >= events_per_hour)
    n_busy: Column = F.count(F.when(busy, F.lit(1))).over(_whole(by_user))
    peak: Column = F.max(F.when(accepted, F.col(_HOUR_SIZE))).over(_whole(by_user))
    if stored:
        recounted = first & (F.coalesce(F.col(CTX_EVENTS), F.lit(0)) >= events_per_hour)
        n_busy = (
            n_busy
            - F.count(F.when(recounted, F.lit(1))).over(_whole(by_user))
            + F.coalesce(F.col(CTX_BUSY), F.lit(0))
        )
        peak = F.greatest(peak, F.col(CTX_PEAK))
    return [n_busy.alias(_BUSY_HOURS), peak.alias(_PEAK)]


def is_bot(min_busy_hours: int) -> Column:
    """True on the events still accepted of a user with ``min_busy_hours`` busy hours (over
    :func:`bot_statistics`' columns)."""
    return _accepted_so_far() & (F.col(_BUSY_HOURS) >= min_busy_hours)


def bot_detail() -> Column:
    """The quarantine detail of a bot's event (over :func:`bot_statistics`' columns)."""
    return F.format_string("%d busy hours, peak %d events/hour", F.col(_BUSY_HOURS), F.col(_PEAK))


# --- catalog and sessions -------------------------------------------------------------------


def _look_up_catalog(df: DataFrame, items: DataFrame, *, broadcast: bool) -> DataFrame:
    """Add ``category`` and ``_known`` (true when ``item_id`` is in the catalog, else null).

    Args:
        items: clean catalog with unique ``item_id`` and ``category``.
        broadcast: broadcast the catalog so that ``df`` is not shuffled.
    """
    catalog = items.select(
        F.col(S.ITEM_ID).alias("_cat_item"),
        F.col(S.CATEGORY).alias("_cat"),
        F.lit(True).alias(KNOWN),
    )
    if broadcast:
        catalog = F.broadcast(catalog)
    joined = df.join(catalog, df[S.ITEM_ID] == catalog["_cat_item"], "left")
    return joined.select(*df.columns, F.col("_cat").alias(S.CATEGORY), KNOWN)


def previous_time(member: Column, by_user: WindowSpec) -> Column:
    """The time of the user's previous row where ``member`` holds (null: none)."""
    return F.last(F.when(member, F.col(S.EVENT_TS)), ignorenulls=True).over(
        by_user.rowsBetween(Window.unboundedPreceding, -1)
    )


def fill_sessions(
    df: DataFrame,
    *,
    gap_minutes: float,
    member: Column,
    by_user: WindowSpec,
    chain_start: Column | None = None,
) -> DataFrame:
    """Fill missing ``session_id`` over the rows where ``member`` holds, given ``_previous``
    (the time of the previous member, see :func:`previous_time`): a session starts after
    ``gap_minutes`` of inactivity; generated ids are ``<user_id>:<epoch seconds of the
    session's first event>``. The other rows are passed through unchanged (they neither start
    nor continue a session).

    ``by_user`` must sort each user's members by time, ties broken deterministically; a
    prefix that is a non-decreasing function of the time (the clock hour) lets the window reuse
    an earlier sort. ``chain_start``: the start of the session that members continue before
    their first start (a stored session, see :class:`Context`).
    """
    ts, prev = F.col(S.EVENT_TS), F.col(PREVIOUS)
    gap = F.unix_micros(ts) - F.unix_micros(prev)
    starts = member & (prev.isNull() | (gap > F.lit(int(gap_minutes * 60 * 1_000_000))))
    marked = df.withColumn("_start", F.when(starts, ts))
    running = by_user.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    session_start = F.last("_start", ignorenulls=True).over(running)
    if chain_start is not None:
        session_start = F.coalesce(session_start, chain_start)
    generated = F.concat_ws(":", F.col(S.USER_ID), F.unix_seconds(session_start).cast("string"))
    filled = F.when(member, F.coalesce(F.col(S.SESSION_ID), generated)).otherwise(
        F.col(S.SESSION_ID)
    )
    return marked.withColumn(S.SESSION_ID, filled).drop("_start")


# --- the steps of classify_events -----------------------------------------------------------


def _carry_hash(validated: DataFrame) -> DataFrame:
    """Add ``raw_hash``; keep ``raw`` only on the records rejected already. Through the
    shuffle, a record's text (the widest field) goes only with those; the others carry its
    hash (see :func:`recspark.ingest.transforms.restore_text`)."""
    return validated.withColumn(RAW_HASH, F.xxhash64(S.RAW)).withColumn(
        S.RAW, F.when(F.col(S.REASON).isNotNull(), F.col(S.RAW))
    )


def _mark_duplicates(looked_up: DataFrame, context: Context | None) -> DataFrame:
    """Shuffle by user and mark the duplicates, in the batch and of stored events. One shuffle
    by user serves dedup, bots and sessions: their windows all partition by the user (and
    more), which a hash partitioning on the user already satisfies."""
    marked = flag_duplicates(looked_up.repartition(S.USER_ID), tie_col=RAW_HASH)
    return marked if context is None else _mark_stored(marked, context.keys)


def _sort_by_user(
    marked: DataFrame, *, count: bool, context: Context | None
) -> tuple[DataFrame, WindowSpec]:
    """Add the bot rule's hour counts (when ``count``) and each user's stored context; return
    the frame and the per-user window in the one sort that every later pass shares."""
    order = _TIME_ORDER
    if count:
        marked = count_hours(marked, order=order)
        if context is not None:
            marked = _add_stored_hours(marked, context.hours)
        order = (HOUR, *order)  # accepted events all have an hour: the same sort serves all
    if context is not None:
        marked = marked.join(context.users, S.USER_ID, "left")
    return marked, Window.partitionBy(S.USER_ID).orderBy(*order)


def _flag_per_user(
    marked: DataFrame,
    by_user: WindowSpec,
    *,
    bot_events_per_hour: int | None,
    bot_min_busy_hours: int,
    session_gap_minutes: float | None,
    quarantine_unknown_items: bool,
    stored: bool,
) -> DataFrame:
    """One more window pass over each user's events, in the shared sort: the bot statistics
    and each event's previous session member; then the reasons found after the shuffle
    (``bot`` first, then ``unknown_item``) and ``status``."""
    per_user: list[Column] = []
    bot: Column = F.lit(False)
    detail: Column = F.lit(None)
    if bot_events_per_hour is not None:
        per_user += bot_statistics(
            events_per_hour=bot_events_per_hour, by_user=by_user, stored=stored
        )
        bot, detail = is_bot(bot_min_busy_hours), bot_detail()
    if session_gap_minutes is not None:
        # A bot's events are never accepted, so a user's session members are known before the
        # bot filter: the events accepted so far of known items.
        known = F.col(KNOWN).isNotNull() | F.lit(not quarantine_unknown_items)
        previous = previous_time(_accepted_so_far() & known, by_user)
        if stored:
            previous = F.coalesce(previous, F.col(CTX_LAST))
        per_user.append(previous.alias(PREVIOUS))
    if per_user:
        marked = marked.select("*", *per_user)
    unknown = _accepted_so_far() & ~bot & F.col(KNOWN).isNull() & F.lit(quarantine_unknown_items)
    flagged = marked.select(
        *[c for c in marked.columns if c not in (S.REASON, S.DETAIL)],
        F.when(bot, F.lit(S.Reason.BOT))
        .when(unknown, F.lit(S.Reason.UNKNOWN_ITEM))
        .otherwise(F.col(S.REASON))
        .alias(S.REASON),
        F.when(bot, detail)
        .when(unknown, F.col(S.ITEM_ID))
        .otherwise(F.col(S.DETAIL))
        .alias(S.DETAIL),
    )
    return with_status(flagged)


def classify_events(
    raw: DataFrame,
    items: DataFrame,
    *,
    min_ts: datetime,
    max_ts: datetime,
    event_types: Sequence[str] = S.EVENT_TYPES,
    quarantine_unknown_items: bool = True,
    broadcast_catalog: bool = True,
    bot_events_per_hour: int | None = 600,
    bot_min_busy_hours: int = 3,
    session_gap_minutes: float | None = None,
    context: Context | None = None,
) -> DataFrame:
    """Parse, validate, deduplicate, flag bots and join the catalog: every record, classified.

    Args:
        raw: one row per input record with ``raw`` and ``source_file``.
        items: the clean catalog (``item_id``, ``category``).
        bot_events_per_hour: None switches the bot filter off.
        session_gap_minutes: when given, accepted events also get their ``session_id``
            filled as :func:`fill_sessions` does (in the same sort as the bot filter).
        context: the stored events of earlier batches (incremental ingest): an event whose key
            is stored is a duplicate, the bot rule adds the stored hours, and a user's first
            session continues the stored one when within the gap.

    Returns:
        One row per input record with the normalised event fields, ``category``, ``reason``,
        ``detail``, ``is_duplicate``, ``status``, ``event_key`` (accepted events), ``raw``
        (records rejected before the shuffle only: ``restore_text`` finds the others) and
        ``raw_hash``. Reasons found after the shuffle take precedence in this order:
        duplicate, ``bot``, ``unknown_item``.
    """
    parsed = parse_json_records(raw, S.RAW_EVENT_SCHEMA)
    validated = validate_events(parsed, event_types=event_types, min_ts=min_ts, max_ts=max_ts)
    # The catalog is looked up before the shuffle (broadcast: within each read task); an
    # unknown item is flagged after the bot filter, whose reason takes precedence.
    looked_up = _look_up_catalog(_carry_hash(validated), items, broadcast=broadcast_catalog)
    marked, by_user = _sort_by_user(
        _mark_duplicates(looked_up, context), count=bot_events_per_hour is not None, context=context
    )
    out = _flag_per_user(
        marked,
        by_user,
        bot_events_per_hour=bot_events_per_hour,
        bot_min_busy_hours=bot_min_busy_hours,
        session_gap_minutes=session_gap_minutes,
        quarantine_unknown_items=quarantine_unknown_items,
        stored=context is not None,
    )
    accepted = F.col(STATUS) == "accepted"
    if session_gap_minutes is not None:
        chain = F.col(CTX_START) if context is not None else None
        out = fill_sessions(
            out,
            gap_minutes=session_gap_minutes,
            member=accepted,
            by_user=by_user,
            chain_start=chain,
        )
    helpers = [c for c in out.columns if c in _HELPERS]
    return out.drop(*helpers).withColumn(S.EVENT_KEY, F.when(accepted, event_key()))
