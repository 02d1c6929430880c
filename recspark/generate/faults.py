"""Faults injected into the synthetic events, and each event rendered as its JSON Lines text.

A fault is drawn per event from :class:`~recspark.generate.config.FaultRates`; what ingest must
make of each kind is ``EXPECTED_OUTCOME`` (the manifest's expected counts).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.generate.config import FaultRates
from recspark.generate.transforms import uniform

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
_OFFSETS = ("Z", "+00:00", "+02:00", "-05:00", "+05:30")


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


def _with_fault_kinds(
    events: DataFrame, *, rates: FaultRates, seed: int, allow_malformed: bool
) -> DataFrame:
    """Add ``fault`` and ``copy`` (one row per line: a duplicate or re-sent event has two);
    a re-sent event without an id gets one, or it could not be recognised."""
    is_bot = F.col("session") < 0
    u = uniform(seed, "fault", "session", "k")
    kind = F.when(is_bot, F.lit(BOT)).otherwise(fault_kind(u, rates))
    if not allow_malformed:
        kind = F.when(kind == "malformed_json", F.lit(CLEAN)).otherwise(kind)
    df = events.withColumn(FAULT, kind)
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
    return df.withColumn("copy", F.explode(F.coalesce(copies, F.array(F.lit(0)))))


def _event_time(seed: int) -> tuple[Column, Column]:
    """A line's event time as JSON text and as a JSON number (one of them null), after its
    fault: the second copy of a re-sent event comes 5-60 s later."""
    fault = F.col(FAULT)
    epoch = F.col("epoch") + F.when(
        (fault == "resent_event") & (F.col("copy") == 1),
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
    ts_text = (
        F.when(fault == "bad_timestamp", F.lit("not-a-time"))
        .when(fault == "out_of_window", F.lit("1999-06-01T00:00:00Z"))
        .otherwise(as_text)
    )
    ts_number = F.when(fault.isin("bad_timestamp", "out_of_window"), F.lit(None)).otherwise(
        as_number
    )
    return ts_text, ts_number


def _line(seed: int) -> Column:
    """A line's JSON text, with its fault (a field missing, an unknown item or type, a bad
    time, or the text cut short)."""
    fault = F.col(FAULT)
    ts_text, ts_number = _event_time(seed)
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
    return F.when(fault == "malformed_json", F.substring(body, 1, 25)).otherwise(body)


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
    df = _with_fault_kinds(events, rates=rates, seed=seed, allow_malformed=allow_malformed)
    return df.select(_line(seed).alias(LINE), FAULT, "copy", "session", "k")
