"""Pure transforms of the ingest stage: raw records in, classified and clean DataFrames out.

Every input record is classified exactly once: quarantined (``reason`` set), a duplicate
(``is_duplicate``), or accepted. Nothing here reads, writes, counts or collects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window, WindowSpec
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from recspark import schema as S

CORRUPT = "_corrupt_record"
IS_DUPLICATE = "is_duplicate"
# A 64-bit hash of the record text: carried instead of the text through classification's
# shuffle (the dedup tie-break, and how the text of a record rejected there is found again).
RAW_HASH = "raw_hash"
STATUS = "status"  # accepted | quarantined | duplicate

# Reason codes written to silver/quarantine.
EMPTY_RECORD = "empty_record"
BAD_ENCODING = "bad_encoding"
MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
BAD_TIMESTAMP = "bad_timestamp"
OUT_OF_WINDOW = "out_of_window"
BAD_VALUE = "bad_value"
UNKNOWN_ITEM = "unknown_item"
BOT = "bot"
DUPLICATE_ITEM_ID = "duplicate_item_id"

_NUMBER = r"^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"
_ISO_WITH_OFFSET = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$"
)
# Epoch values at or above this are milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD = 1e11
_MAX_EPOCH_MS = 1e14
_EVENT_FIELDS = {f.name for f in S.RAW_EVENT_SCHEMA.fields}


def _with_corrupt(schema: StructType) -> StructType:
    return StructType([*schema.fields, StructField(CORRUPT, schema.fields[0].dataType)])


def _blank(c: Column) -> Column:
    # trim() drops spaces only: text that does not start with one is blank only when empty
    # (checked first, so the common case copies nothing).
    return c.isNull() | (c == "") | (c.startswith(" ") & (F.trim(c) == ""))


def first_failure(checks: Sequence[tuple[Column, str, Column]]) -> Column:
    """A struct ``(reason, detail)`` of the first check whose condition holds, else null.

    One CASE expression for both fields, so every condition is evaluated once per row.
    """
    out: Column = F.lit(None).cast("struct<reason:string,detail:string>")
    for cond, code, why in reversed(checks):
        hit = F.struct(F.lit(code).alias(S.REASON), why.cast("string").alias(S.DETAIL))
        out = F.when(cond, hit).otherwise(out)
    return out


def clean(name: str) -> Column:
    """A text field trimmed, with blank text as null."""
    return F.when(~_blank(F.col(name)), F.trim(F.col(name)))


# What Spark's JSON parser writes into a string field for a bare literal that is no string
# (NaN and +-Infinity come out quoted; INF is not accepted at all: malformed_json).
_BARE_BOOLEANS = ("true", "false")
_BARE_NON_FINITE = ('"NaN"', '"Infinity"', '"-Infinity"', "NaN", "Infinity", "-Infinity")


def record_checks(
    *, raw_col: str, required: Sequence[str], scalars: Sequence[str], numbers: Sequence[str] = ()
) -> list[tuple[Column, str, Column]]:
    """The checks every JSON record gets, in order: (condition, reason, detail).

    Empty record; bad encoding (U+FFFD, which reading puts for bytes that are not UTF-8, or a
    NUL byte, which no JSON text holds: UTF-16 or binary data); malformed JSON (not an object);
    a blank required field; and a value of the wrong JSON type where a scalar belongs: an
    object or array, a bare ``true``/``false``, or (except in ``numbers``, whose own checks
    reject them) a bare ``NaN``/``Infinity``. Numbers are accepted where text belongs (ids).
    """
    raw = F.col(raw_col)
    checks: list[tuple[Column, str, Column]] = [
        (_blank(raw), EMPTY_RECORD, F.lit(None)),
        (
            raw.contains("\ufffd") | raw.contains("\u0000"),
            BAD_ENCODING,
            F.when(raw.contains("\u0000"), F.lit("NUL byte")).otherwise(
                F.lit("not UTF-8 (U+FFFD)")
            ),
        ),
        (F.col(CORRUPT).isNotNull(), MALFORMED_JSON, F.lit(None)),
    ]
    for field in required:
        checks.append((_blank(F.col(field)), MISSING_FIELD, F.lit(field)))
    for field in scalars:
        text = F.ltrim(F.col(field))
        nested = text.startswith("{") | text.startswith("[")
        tokens = _BARE_BOOLEANS if field in numbers else _BARE_BOOLEANS + _BARE_NON_FINITE
        # The parsed text alone cannot tell `true` from `"true"`: the raw text confirms it
        # (a regex run only on the rare rows whose field reads as one of these words).
        bare = F.col(field).isin(*tokens) & raw.rlike(f'"{field}"\\s*:\\s*[+-]?[A-Za-z]')
        checks.append((F.coalesce(nested | bare, F.lit(False)), BAD_TYPE, F.lit(field)))
    return checks


def parse_json_records(
    raw: DataFrame,
    record_schema: StructType,
    *,
    raw_col: str = S.RAW,
) -> DataFrame:
    """Parse each raw JSON Lines record with an explicit, all-string schema.

    Args:
        raw: needs ``raw_col`` (the record's unchanged text).
        record_schema: the fields to extract; every field a string, so that numbers arriving
            as strings (and the reverse) are normalised later instead of rejected here.

    Returns:
        ``raw`` plus one column per schema field and ``_corrupt_record`` (the text when the
        record is not a JSON object).
    """
    parsed = F.from_json(
        F.col(raw_col),
        _with_corrupt(record_schema),
        {
            "mode": "PERMISSIVE",
            "columnNameOfCorruptRecord": CORRUPT,
            "allowNonNumericNumbers": "true",
        },
    )
    raw_text = F.col(raw_col)
    not_object = ~(raw_text.startswith("{") | F.ltrim(raw_text).startswith("{"))
    out = raw.withColumn("_p", parsed)
    cols = [F.col(f"_p.{f.name}").alias(f.name) for f in record_schema.fields]
    corrupt = F.when(out["_p"].isNull() | not_object, F.col(raw_col)).otherwise(
        F.col(f"_p.{CORRUPT}")
    )
    return out.select("*", *cols, corrupt.alias(CORRUPT)).drop("_p")


def parse_timestamp(c: Column) -> Column:
    """A string timestamp as UTC: ISO-8601 with an offset, or epoch seconds / milliseconds.

    Returns null when the text is neither (ISO without an offset is ambiguous: null too).
    """
    text = F.trim(c)
    num = F.when(text.rlike(_NUMBER), text.try_cast("double"))
    seconds = F.when(F.abs(num) >= _MS_THRESHOLD, num / 1000.0).otherwise(num)
    from_number = F.when(
        num.isNotNull() & (F.abs(num) < _MAX_EPOCH_MS), F.timestamp_seconds(seconds)
    )
    from_iso = F.when(text.rlike(_ISO_WITH_OFFSET), F.try_to_timestamp(text))
    return F.coalesce(from_number, from_iso)


def validate_events(
    parsed: DataFrame,
    *,
    event_types: Sequence[str] = S.EVENT_TYPES,
    min_ts: datetime,
    max_ts: datetime,
    raw_col: str = S.RAW,
) -> DataFrame:
    """Normalise parsed events and give each invalid one a reason.

    Args:
        parsed: output of :func:`parse_json_records` with the raw event schema.
        event_types: accepted event types (compared lower-cased and trimmed).
        min_ts: earliest accepted event time (inclusive, UTC).
        max_ts: latest accepted event time (inclusive, UTC).

    Returns:
        The same rows with normalised ``user_id``, ``item_id``, ``event_type`` (trimmed,
        lower-cased), ``event_ts`` (timestamp), ``value`` (double), ``event_id`` and
        ``session_id`` (blank -> null), plus ``reason`` and ``detail`` (null when valid). The
        first failing check wins.
    """
    # Parsed once into columns; the checks below refer to the columns, not the expressions.
    value_text = F.trim(F.col(S.VALUE))
    parsed = parsed.select(
        "*",
        parse_timestamp(F.col(S.EVENT_TS)).alias("_ts"),
        F.when(value_text.rlike(_NUMBER), value_text.try_cast("double")).alias("_value"),
        F.lower(F.trim(F.col(S.EVENT_TYPE))).alias("_etype"),
    )
    ts, value, etype = F.col("_ts"), F.col("_value"), F.col("_etype")

    checks = record_checks(
        raw_col=raw_col,
        required=S.REQUIRED_EVENT_FIELDS,
        scalars=tuple(f.name for f in S.RAW_EVENT_SCHEMA.fields),
        numbers=(S.EVENT_TS, S.VALUE),  # NaN / Infinity there: bad_timestamp / bad_value
    )
    checks += [
        (~etype.isin(list(event_types)), UNKNOWN_EVENT_TYPE, F.col(S.EVENT_TYPE)),
        (ts.isNull(), BAD_TIMESTAMP, F.col(S.EVENT_TS)),
        (
            (ts < F.lit(min_ts)) | (ts > F.lit(max_ts)),
            OUT_OF_WINDOW,
            F.col(S.EVENT_TS),
        ),
        (~_blank(F.col(S.VALUE)) & (value.isNull() | F.isnan(value)), BAD_VALUE, F.col(S.VALUE)),
    ]
    parsed = parsed.withColumn("_check", first_failure(checks))

    return parsed.select(
        F.col(raw_col),
        *[
            c
            for c in parsed.columns
            if c not in _EVENT_FIELDS and c not in (raw_col, CORRUPT) and not c.startswith("_")
        ],
        clean(S.EVENT_ID).alias(S.EVENT_ID),
        clean(S.USER_ID).alias(S.USER_ID),
        clean(S.ITEM_ID).alias(S.ITEM_ID),
        etype.alias(S.EVENT_TYPE),
        ts.alias(S.EVENT_TS),
        value.alias(S.VALUE),
        clean(S.SESSION_ID).alias(S.SESSION_ID),
        F.col(f"_check.{S.REASON}").alias(S.REASON),
        F.col(f"_check.{S.DETAIL}").alias(S.DETAIL),
    )


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


def _mark_duplicates(validated: DataFrame, *, tie_col: str) -> DataFrame:
    valid = F.col(S.REASON).isNull()
    first = F.row_number().over(_dedup_window(tie_col)) == 1
    return validated.withColumn(IS_DUPLICATE, F.when(valid, ~first).otherwise(F.lit(False)))


def mark_duplicates(validated: DataFrame, *, raw_col: str = S.RAW) -> DataFrame:
    """Add ``event_key`` and ``is_duplicate`` to validated events.

    Among valid records with the same key the earliest event wins (ties: source file, then
    the raw text); the others are duplicates. Invalid records are never duplicates: each one is
    quarantined on its own.

    Args:
        validated: output of :func:`validate_events` (needs ``reason``, ``event_ts``,
            ``source_file``, the id fields and ``raw``).
    """
    valid = F.col(S.REASON).isNull()
    marked = _mark_duplicates(validated, tie_col=raw_col)
    return marked.withColumn(S.EVENT_KEY, F.when(valid, event_key()))


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


def _accepted_so_far() -> Column:
    return F.col(S.REASON).isNull() & ~F.col(IS_DUPLICATE)


# Helper columns of classification, dropped before it returns.
HOUR = "_hour"  # the clock hour of an event still accepted (bots and sessions sort by it)
KNOWN = "_known"  # true when the event's item is in the catalog, else null
_HOUR_SIZE = "_n"  # the user's accepted events in that hour
_HOUR_FIRST = "_first"  # 1 on the first row of the hour
_BUSY_HOURS = "_busy_hours"
_PEAK = "_peak"
_PREVIOUS = "_previous"  # the time of the previous event of the user's sessions
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
    _PREVIOUS,
    CTX_LAST,
    CTX_START,
    CTX_BUSY,
    CTX_PEAK,
    CTX_EVENTS,
    _SEEN_KEY,
    _SEEN,
)


@dataclass(frozen=True)
class Context:
    """What an incremental batch needs to know of the events stored by earlier batches, so
    that it classifies its records as one ingest of everything would (see
    :mod:`recspark.ingest.incremental`, which builds it).

    Attributes:
        keys: ``event_key`` of the stored events (a batch's event with one of them is a
            duplicate).
        users: per user, ``_ctx_last`` and ``_ctx_start`` (the last stored event's time and its
            session's start: null when none), ``_ctx_busy`` and ``_ctx_peak`` (the stored busy
            hours and the largest stored hour, by the bot rule's count: null when none).
        hours: per user and clock hour (``_hour``), ``_ctx_events``: the stored events the bot
            rule counts.
    """

    keys: DataFrame
    users: DataFrame
    hours: DataFrame


def _whole(window: WindowSpec) -> WindowSpec:
    return window.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)


def _count_hours(df: DataFrame, *, order: Sequence[str]) -> DataFrame:
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


def _bot_statistics(
    *, events_per_hour: int, by_user: WindowSpec, stored: bool = False
) -> list[Column]:
    """Per user, over :func:`_count_hours`' output: how many hours hold ``events_per_hour``
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


def _is_bot(min_busy_hours: int) -> Column:
    return _accepted_so_far() & (F.col(_BUSY_HOURS) >= min_busy_hours)


def _bot_detail() -> Column:
    return F.format_string("%d busy hours, peak %d events/hour", F.col(_BUSY_HOURS), F.col(_PEAK))


def flag_bots(df: DataFrame, *, events_per_hour: int, min_busy_hours: int) -> DataFrame:
    """Quarantine (``reason = 'bot'``) every event of users with a sustained machine rate.

    A bot has at least ``min_busy_hours`` clock hours holding ``events_per_hour`` events or
    more. Only events still accepted count and are flagged.

    Args:
        df: output of :func:`mark_duplicates`.
    """
    order = (S.EVENT_TS,)  # any order: each hour has exactly one first row
    counted = _count_hours(df, order=order)
    by_user = Window.partitionBy(S.USER_ID).orderBy(HOUR, *order)
    stats = counted.select("*", *_bot_statistics(events_per_hour=events_per_hour, by_user=by_user))
    is_bot = _is_bot(min_busy_hours)
    return stats.select(
        *[c for c in df.columns if c not in (S.REASON, S.DETAIL)],
        F.when(is_bot, F.lit(BOT)).otherwise(F.col(S.REASON)).alias(S.REASON),
        F.when(is_bot, _bot_detail()).otherwise(F.col(S.DETAIL)).alias(S.DETAIL),
    )


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


def with_status(df: DataFrame) -> DataFrame:
    """Add ``status``: ``quarantined`` (a reason), ``duplicate``, or ``accepted``."""
    return df.withColumn(
        STATUS,
        F.when(F.col(S.REASON).isNotNull(), "quarantined")
        .when(F.col(IS_DUPLICATE), "duplicate")
        .otherwise("accepted"),
    )


def sessionize(events: DataFrame, *, gap_minutes: float) -> DataFrame:
    """Fill missing ``session_id``: a new session starts after ``gap_minutes`` of inactivity.

    Generated ids are ``<user_id>:<epoch seconds of the session's first event>``. Events that
    carry a ``session_id`` keep it. Ordering ties are broken by ``event_key``.

    Args:
        events: accepted events (needs ``user_id``, ``event_ts``, ``event_key``, ``session_id``).
    """
    by_user = Window.partitionBy(S.USER_ID).orderBy(S.EVENT_TS, S.EVENT_KEY)
    with_previous = events.withColumn(_PREVIOUS, _previous_time(F.lit(True), by_user))
    filled = _fill_sessions(
        with_previous, gap_minutes=gap_minutes, member=F.lit(True), by_user=by_user
    )
    return filled.drop(_PREVIOUS)


def _previous_time(member: Column, by_user: WindowSpec) -> Column:
    """The time of the user's previous row where ``member`` holds (null: none)."""
    return F.last(F.when(member, F.col(S.EVENT_TS)), ignorenulls=True).over(
        by_user.rowsBetween(Window.unboundedPreceding, -1)
    )


def _fill_sessions(
    df: DataFrame,
    *,
    gap_minutes: float,
    member: Column,
    by_user: WindowSpec,
    chain_start: Column | None = None,
) -> DataFrame:
    """:func:`sessionize` over the rows where ``member`` holds, given ``_previous`` (the time
    of the previous member, see :func:`_previous_time`); the other rows are passed through
    unchanged (they neither start nor continue a session).

    ``by_user`` must sort each user's members by time, ties broken deterministically; a
    prefix that is a non-decreasing function of the time (the clock hour) lets the window reuse
    an earlier sort. ``chain_start``: the start of the session that members continue before
    their first start (a stored session, see :class:`Context`).
    """
    ts, prev = F.col(S.EVENT_TS), F.col(_PREVIOUS)
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


def restore_text(
    classified: DataFrame, records: DataFrame, *, broadcast: bool = True, raw_col: str = S.RAW
) -> DataFrame:
    """Put back the record text that :func:`classify_events` did not carry.

    Classification carries the text only of records rejected before its shuffle; the rows
    without it (a ``bot``, an ``unknown_item``, or any other row) find it in ``records`` by
    source file and text hash. Identical lines of one file share a hash and a text; two
    different lines of one file would need equal 64-bit hashes to be confused.

    Args:
        classified: rows of :func:`classify_events` (needs ``raw``, ``raw_hash``,
            ``source_file``); usually the quarantined ones only.
        records: the input records it classified (``raw``, ``source_file``).
        broadcast: broadcast the rows to fill (few) instead of shuffling ``records``.

    Returns:
        ``classified`` with ``raw`` set on every row.
    """
    keys = [S.SOURCE_FILE, RAW_HASH]
    missing = classified.where(F.col(raw_col).isNull())
    wanted = missing.select(*keys).distinct()
    texts = (
        records.select(F.col(raw_col), S.SOURCE_FILE, F.xxhash64(raw_col).alias(RAW_HASH))
        .join(F.broadcast(wanted) if broadcast else wanted, keys, "left_semi")
        .dropDuplicates(keys)
    )
    found = missing.drop(raw_col).join(texts, keys, "left").select(*classified.columns)
    return classified.where(F.col(raw_col).isNotNull()).unionByName(found)


def to_silver_events(accepted: DataFrame, *, run_id: str) -> DataFrame:
    """Select the columns of ``silver/events`` (adds ``event_date`` and ``run_id``)."""
    return accepted.select(
        S.EVENT_KEY,
        S.EVENT_ID,
        S.USER_ID,
        S.ITEM_ID,
        S.EVENT_TYPE,
        S.EVENT_TS,
        S.VALUE,
        S.SESSION_ID,
        S.CATEGORY,
        S.SOURCE_FILE,
        F.lit(run_id).alias(S.RUN_ID),
        F.to_date(S.EVENT_TS).alias(S.EVENT_DATE),
    )


def to_quarantine(
    rejected: DataFrame, *, run_id: str, input_name: str, raw_col: str = S.RAW
) -> DataFrame:
    """Rows of ``silver/quarantine``: the unchanged record, reason, detail, source and run.

    ``record_key`` identifies the record (source file, text, and its occurrence among identical
    lines of that file), so re-quarantining the same input inserts nothing.

    Args:
        rejected: records with a ``reason`` (needs ``raw``, ``source_file``, ``reason``,
            ``detail``).
    """
    occurrence = F.row_number().over(
        Window.partitionBy(S.SOURCE_FILE, raw_col).orderBy(S.REASON, S.DETAIL)
    )
    key = F.sha2(
        F.concat_ws(
            "\u0001",
            F.lit(input_name),
            F.coalesce(F.col(S.SOURCE_FILE), F.lit("")),
            F.coalesce(F.col(raw_col), F.lit("")),
            occurrence.cast("string"),
        ),
        256,
    )
    return rejected.select(
        key.alias(S.RECORD_KEY),
        F.col(raw_col).alias(S.RAW),
        S.REASON,
        S.DETAIL,
        S.SOURCE_FILE,
        F.lit(run_id).alias(S.RUN_ID),
        F.lit(input_name).alias("input"),
    )


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
            filled as :func:`sessionize` does (in the same sort as the bot filter).
        context: the stored events of earlier batches (incremental ingest): an event whose key
            is stored is a duplicate, the bot rule adds the stored hours, and a user's first
            session continues the stored one when within the gap.

    Returns:
        One row per input record with the normalised event fields, ``category``, ``reason``,
        ``detail``, ``is_duplicate``, ``status``, ``event_key`` (accepted events), ``raw``
        (records rejected before the shuffle only: :func:`restore_text` finds the others)
        and ``raw_hash``. Reasons found after the shuffle take precedence in this order:
        duplicate, ``bot``, ``unknown_item``.
    """
    parsed = parse_json_records(raw, S.RAW_EVENT_SCHEMA)
    validated = validate_events(parsed, event_types=event_types, min_ts=min_ts, max_ts=max_ts)
    # Through the shuffle, a record's text (the widest field) goes only with the records that
    # are rejected already; the others carry its hash (see :func:`restore_text`).
    carried = validated.withColumn(RAW_HASH, F.xxhash64(S.RAW)).withColumn(
        S.RAW, F.when(F.col(S.REASON).isNotNull(), F.col(S.RAW))
    )
    # The catalog is looked up before the shuffle (broadcast: within each read task); an
    # unknown item is flagged after the bot filter, whose reason takes precedence.
    looked_up = _look_up_catalog(carried, items, broadcast=broadcast_catalog)
    # One shuffle by user serves dedup, bots and sessions: their windows all partition by
    # the user (and more), which a hash partitioning on the user already satisfies.
    marked = _mark_duplicates(looked_up.repartition(S.USER_ID), tie_col=RAW_HASH)
    if context is not None:
        marked = _mark_stored(marked, context.keys)
    # A time order without ties among accepted events (their dedup fields differ).
    order: tuple[str, ...] = (S.EVENT_TS, S.EVENT_ID, S.ITEM_ID, S.EVENT_TYPE)
    if bot_events_per_hour is not None:
        marked = _count_hours(marked, order=order)
        if context is not None:
            marked = marked.join(context.hours, [S.USER_ID, HOUR], "left").withColumn(
                _HOUR_SIZE, F.col(_HOUR_SIZE) + F.coalesce(F.col(CTX_EVENTS), F.lit(0))
            )
        order = (HOUR, *order)  # accepted events all have an hour: the same sort serves all
    if context is not None:
        marked = marked.join(context.users, S.USER_ID, "left")
    by_user = Window.partitionBy(S.USER_ID).orderBy(*order)
    # One more window pass over each user's events, in that sort: the bot statistics and each
    # event's previous session member. A bot's events are never accepted, so a user's session
    # members are known before the bot filter: the events accepted so far of known items.
    per_user: list[Column] = []
    is_bot: Column = F.lit(False)
    bot_detail: Column = F.lit(None)
    if bot_events_per_hour is not None:
        per_user += _bot_statistics(
            events_per_hour=bot_events_per_hour, by_user=by_user, stored=context is not None
        )
        is_bot, bot_detail = _is_bot(bot_min_busy_hours), _bot_detail()
    if session_gap_minutes is not None:
        known = F.col(KNOWN).isNotNull() | F.lit(not quarantine_unknown_items)
        member = _accepted_so_far() & known
        previous = _previous_time(member, by_user)
        if context is not None:
            previous = F.coalesce(previous, F.col(CTX_LAST))
        per_user.append(previous.alias(_PREVIOUS))
    if per_user:
        marked = marked.select("*", *per_user)
    unknown = _accepted_so_far() & ~is_bot & F.col(KNOWN).isNull() & F.lit(quarantine_unknown_items)
    flagged = marked.select(
        *[c for c in marked.columns if c not in (S.REASON, S.DETAIL)],
        F.when(is_bot, F.lit(BOT))
        .when(unknown, F.lit(UNKNOWN_ITEM))
        .otherwise(F.col(S.REASON))
        .alias(S.REASON),
        F.when(is_bot, bot_detail)
        .when(unknown, F.col(S.ITEM_ID))
        .otherwise(F.col(S.DETAIL))
        .alias(S.DETAIL),
    )
    out = with_status(flagged)
    accepted = F.col(STATUS) == "accepted"
    if session_gap_minutes is not None:
        out = _fill_sessions(
            out,
            gap_minutes=session_gap_minutes,
            member=accepted,
            by_user=by_user,
            chain_start=F.col(CTX_START) if context is not None else None,
        )
    helpers = [c for c in out.columns if c in _HELPERS]
    return out.drop(*helpers).withColumn(S.EVENT_KEY, F.when(accepted, event_key()))


def event_window(
    run_time: datetime, *, min_ts: datetime, lead_days: float
) -> tuple[datetime, datetime]:
    """The accepted event-time window: ``[min_ts, run_time + lead_days]``."""
    return min_ts, run_time + timedelta(days=lead_days)


# --- catalog --------------------------------------------------------------------------------


def compose_item_text(
    *, title: str = S.TITLE, category: str = S.CATEGORY, description: str = S.DESCRIPTION
) -> Column:
    """The one place that composes the text embedded for an item.

    ``"<title>. Category: <category>. <description>"``, leaving out the parts that are null or
    blank, with runs of white space folded to one space.
    """

    def part(c: Column, prefix: str = "") -> Column:
        t = F.trim(F.regexp_replace(c, r"\s+", " "))
        return F.when(t != "", F.concat(F.lit(prefix), t))

    return F.concat_ws(
        ". ", part(F.col(title)), part(F.col(category), "Category: "), part(F.col(description))
    )


def classify_items(raw: DataFrame, *, raw_col: str = S.RAW) -> DataFrame:
    """Parse and validate catalog records; one record per ``item_id`` is accepted.

    Args:
        raw: one row per catalog record with ``raw`` and ``source_file``.

    Returns:
        Rows with ``item_id``, ``title``, ``description``, ``category`` (trimmed; blank -> null),
        ``text``, ``text_hash``, ``reason``, ``detail``, ``is_duplicate`` and ``status``.
        Records repeating the accepted record's fields (title, description, category) are
        duplicates; a different record for an item id already accepted is quarantined as
        ``duplicate_item_id`` (the record of the latest source file wins, ties broken by the
        raw text, descending).
    """
    parsed = parse_json_records(raw, S.RAW_ITEM_SCHEMA)

    checks = record_checks(
        raw_col=raw_col,
        required=S.REQUIRED_ITEM_FIELDS,
        scalars=(S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CATEGORY),
    )
    base = parsed.withColumn("_check", first_failure(checks)).select(
        raw_col,
        S.SOURCE_FILE,
        clean(S.ITEM_ID).alias(S.ITEM_ID),
        clean(S.TITLE).alias(S.TITLE),
        clean(S.DESCRIPTION).alias(S.DESCRIPTION),
        clean(S.CATEGORY).alias(S.CATEGORY),
        F.col(f"_check.{S.REASON}").alias(S.REASON),
        F.col(f"_check.{S.DETAIL}").alias(S.DETAIL),
    )
    text = compose_item_text()
    base = base.withColumn(S.TEXT, text).withColumn(S.TEXT_HASH, F.sha2(text, 256))
    valid = F.col(S.REASON).isNull()
    order = Window.partitionBy(F.when(valid, F.col(S.ITEM_ID))).orderBy(
        F.col(S.SOURCE_FILE).desc(), F.col(raw_col).desc()
    )
    ranked = base.withColumn("_rank", F.row_number().over(order))
    # A duplicate repeats the winner's fields (after trimming), not merely its embedded text:
    # a record that differs in any field is quarantined, never dropped as a repeat.
    fields = F.struct(S.TITLE, S.DESCRIPTION, S.CATEGORY)
    winner = F.first(fields).over(order.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    ranked = ranked.withColumn("_winner", winner)
    loser = valid & (F.col("_rank") > 1)
    same = fields.eqNullSafe(F.col("_winner"))
    out = ranked.select(
        *[c for c in base.columns if c not in (S.REASON, S.DETAIL)],
        F.when(loser & ~same, F.lit(DUPLICATE_ITEM_ID)).otherwise(F.col(S.REASON)).alias(S.REASON),
        F.when(loser & ~same, F.col(S.ITEM_ID)).otherwise(F.col(S.DETAIL)).alias(S.DETAIL),
        (loser & same).alias(IS_DUPLICATE),
    )
    return with_status(out)


def to_silver_items(accepted: DataFrame) -> DataFrame:
    """Select the columns of ``silver/items``."""
    return accepted.select(S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CATEGORY, S.TEXT, S.TEXT_HASH)


# --- interactions ---------------------------------------------------------------------------


def build_interactions(
    events: DataFrame,
    *,
    event_weights: Mapping[str, float],
    decay_half_life_days: float | None = None,
) -> DataFrame:
    """One row per (user, item): implicit-feedback weight, count, first and last time.

    ``weight`` sums each event's type weight (types without a weight count 0), times
    ``2^(-age / half_life)`` when a half-life is given, age measured from the newest event.

    Args:
        events: needs ``user_id``, ``item_id``, ``event_type``, ``event_ts``.

    Returns:
        Columns of ``silver/interactions``: user_id, item_id, weight, count, first_ts, last_ts.
    """
    w: Column = F.lit(0.0)
    for etype, weight in sorted(event_weights.items()):
        w = F.when(F.col(S.EVENT_TYPE) == etype, F.lit(float(weight))).otherwise(w)
    df = events
    if decay_half_life_days is not None:
        newest = events.agg(F.max(S.EVENT_TS).alias("_newest"))
        df = events.crossJoin(F.broadcast(newest))
        age_days = (F.unix_micros(F.col("_newest")) - F.unix_micros(F.col(S.EVENT_TS))) / 86_400e6
        w = w * F.pow(F.lit(2.0), -age_days / F.lit(float(decay_half_life_days)))
    return df.groupBy(S.USER_ID, S.ITEM_ID).agg(
        F.sum(w).cast("double").alias(S.WEIGHT),
        F.count(F.lit(1)).alias(S.COUNT),
        F.min(S.EVENT_TS).alias(S.FIRST_TS),
        F.max(S.EVENT_TS).alias(S.LAST_TS),
    )
