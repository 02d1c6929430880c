"""Parsing and validation of input records: every record that breaks a rule gets its reason.

Raw JSON Lines text in, one column per field and ``reason``/``detail`` out (null when the
record is valid); the reason codes written to ``silver/quarantine`` live here. Nothing here
reads, writes, counts or collects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructField, StructType

from recspark import schema as S

CORRUPT = "_corrupt_record"

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
        (_blank(raw), S.Reason.EMPTY_RECORD, F.lit(None)),
        (
            raw.contains("\ufffd") | raw.contains("\u0000"),
            S.Reason.BAD_ENCODING,
            F.when(raw.contains("\u0000"), F.lit("NUL byte")).otherwise(
                F.lit("not UTF-8 (U+FFFD)")
            ),
        ),
        (F.col(CORRUPT).isNotNull(), S.Reason.MALFORMED_JSON, F.lit(None)),
    ]
    for field in required:
        checks.append((_blank(F.col(field)), S.Reason.MISSING_FIELD, F.lit(field)))
    for field in scalars:
        text = F.ltrim(F.col(field))
        nested = text.startswith("{") | text.startswith("[")
        tokens = _BARE_BOOLEANS if field in numbers else _BARE_BOOLEANS + _BARE_NON_FINITE
        # The parsed text alone cannot tell `true` from `"true"`: the raw text confirms it
        # (a regex run only on the rare rows whose field reads as one of these words).
        bare = F.col(field).isin(*tokens) & raw.rlike(f'"{field}"\\s*:\\s*[+-]?[A-Za-z]')
        checks.append((F.coalesce(nested | bare, F.lit(False)), S.Reason.BAD_TYPE, F.lit(field)))
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


def event_type_of(c: Column) -> Column:
    """An event type as it is checked and stored: trimmed, lower-cased."""
    return F.lower(F.trim(c))


def key_fields(parsed: DataFrame) -> DataFrame:
    """The fields an event's dedup key is made of (``user_id``, ``event_id``, ``item_id``,
    ``event_type``, ``event_ts``), normalised as :func:`validate_events` normalises them but
    without its checks: far cheaper, and a valid event's fields are the same.

    Args:
        parsed: output of :func:`parse_json_records` with the raw event schema.
    """
    return parsed.select(
        clean(S.USER_ID).alias(S.USER_ID),
        clean(S.EVENT_ID).alias(S.EVENT_ID),
        clean(S.ITEM_ID).alias(S.ITEM_ID),
        event_type_of(F.col(S.EVENT_TYPE)).alias(S.EVENT_TYPE),
        parse_timestamp(F.col(S.EVENT_TS)).alias(S.EVENT_TS),
    )


def _normalised(parsed: DataFrame) -> DataFrame:
    """Add ``_ts``, ``_value`` and ``_etype``: the event time, value and type parsed once into
    columns (the checks refer to the columns, not the expressions)."""
    value_text = F.trim(F.col(S.VALUE))
    return parsed.select(
        "*",
        parse_timestamp(F.col(S.EVENT_TS)).alias("_ts"),
        F.when(value_text.rlike(_NUMBER), value_text.try_cast("double")).alias("_value"),
        event_type_of(F.col(S.EVENT_TYPE)).alias("_etype"),
    )


def _event_checks(
    *, event_types: Sequence[str], min_ts: datetime, max_ts: datetime, raw_col: str
) -> list[tuple[Column, str, Column]]:
    """The checks of an event record, in order, over :func:`_normalised`'s columns."""
    ts, value, etype = F.col("_ts"), F.col("_value"), F.col("_etype")
    checks = record_checks(
        raw_col=raw_col,
        required=S.REQUIRED_EVENT_FIELDS,
        scalars=tuple(f.name for f in S.RAW_EVENT_SCHEMA.fields),
        numbers=(S.EVENT_TS, S.VALUE),  # NaN / Infinity there: bad_timestamp / bad_value
    )
    return [
        *checks,
        (~etype.isin(list(event_types)), S.Reason.UNKNOWN_EVENT_TYPE, F.col(S.EVENT_TYPE)),
        (ts.isNull(), S.Reason.BAD_TIMESTAMP, F.col(S.EVENT_TS)),
        ((ts < F.lit(min_ts)) | (ts > F.lit(max_ts)), S.Reason.OUT_OF_WINDOW, F.col(S.EVENT_TS)),
        (
            ~_blank(F.col(S.VALUE)) & (value.isNull() | F.isnan(value)),
            S.Reason.BAD_VALUE,
            F.col(S.VALUE),
        ),
    ]


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
    checks = _event_checks(event_types=event_types, min_ts=min_ts, max_ts=max_ts, raw_col=raw_col)
    checked = _normalised(parsed).withColumn("_check", first_failure(checks))
    return checked.select(
        F.col(raw_col),
        *[
            c
            for c in checked.columns
            if c not in _EVENT_FIELDS and c not in (raw_col, CORRUPT) and not c.startswith("_")
        ],
        clean(S.EVENT_ID).alias(S.EVENT_ID),
        clean(S.USER_ID).alias(S.USER_ID),
        clean(S.ITEM_ID).alias(S.ITEM_ID),
        F.col("_etype").alias(S.EVENT_TYPE),
        F.col("_ts").alias(S.EVENT_TS),
        F.col("_value").alias(S.VALUE),
        clean(S.SESSION_ID).alias(S.SESSION_ID),
        F.col(f"_check.{S.REASON}").alias(S.REASON),
        F.col(f"_check.{S.DETAIL}").alias(S.DETAIL),
    )


def event_window(
    run_time: datetime, *, min_ts: datetime, lead_days: float
) -> tuple[datetime, datetime]:
    """The accepted event-time window: ``[min_ts, run_time + lead_days]``."""
    return min_ts, run_time + timedelta(days=lead_days)
