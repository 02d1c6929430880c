"""Column names and schemas of every input and table in the contract, in one place.

Transforms take column names as keyword arguments whose defaults come from here, so a
deployment with other names can pass its own without editing code.
"""

from __future__ import annotations

from enum import StrEnum

from pyspark.sql.types import (
    ArrayType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# --- input fields (contract: behaviour events) -------------------------------------------
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
EVENT_TS = "event_ts"
VALUE = "value"
SESSION_ID = "session_id"

# --- input fields (contract: item catalog) -----------------------------------------------
TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"

# --- derived columns ---------------------------------------------------------------------
RAW = "raw"  # the input record, unchanged (a JSON Lines line, or a Parquet row as JSON)
SOURCE_FILE = "source_file"
RUN_ID = "run_id"
REASON = "reason"
DETAIL = "detail"
RECORD_KEY = "record_key"  # identity of one input record, for idempotent quarantine writes
EVENT_KEY = "event_key"  # dedup key: event_id, else a hash of (user, item, type, ts)
EVENT_DATE = "event_date"
INGESTED_AT = "ingested_at"
QUARANTINED_AT = "quarantined_at"
TEXT = "text"
TEXT_HASH = "text_hash"
WEIGHT = "weight"
COUNT = "count"
LAST_TS = "last_ts"
FIRST_TS = "first_ts"
EMBEDDING = "embedding"
MODEL_NAME = "model_name"
EMBEDDED_AT = "embedded_at"
RANK = "rank"
SCORE = "score"
MODEL_VERSION = "model_version"
GENERATED_AT = "generated_at"
METRIC = "metric"
K = "k"
MODEL = "model"
SPLIT = "split"
VECTOR = "vector"  # gold/item_vectors, gold/user_vectors (train); scored by dot product
POPULARITY = "popularity"  # recommend/evaluate: sum of interaction weights of an item
IS_COLD = "is_cold"  # recommend/evaluate: an item with no interactions
SEEN = "seen"  # recommend: the items a user interacted with

# --- quarantine reason codes (silver/quarantine.reason) -----------------------------------


class Reason(StrEnum):
    """Why a record is quarantined: the values are the strings ``silver/quarantine`` holds."""

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


# Accepted event types (contract); their weights are configurable.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "rating")
# Fields every event must carry.
REQUIRED_EVENT_FIELDS: tuple[str, ...] = (USER_ID, ITEM_ID, EVENT_TYPE, EVENT_TS)
REQUIRED_ITEM_FIELDS: tuple[str, ...] = (ITEM_ID, TITLE)

# Raw events are parsed with every field as a string: numbers that arrive as strings (or
# strings that arrive as numbers) are normalised by ingest, not rejected by the reader.
RAW_EVENT_SCHEMA = StructType(
    [
        StructField(EVENT_ID, StringType()),
        StructField(USER_ID, StringType()),
        StructField(ITEM_ID, StringType()),
        StructField(EVENT_TYPE, StringType()),
        StructField(EVENT_TS, StringType()),
        StructField(VALUE, StringType()),
        StructField(SESSION_ID, StringType()),
    ]
)
RAW_ITEM_SCHEMA = StructType(
    [
        StructField(ITEM_ID, StringType()),
        StructField(TITLE, StringType()),
        StructField(DESCRIPTION, StringType()),
        StructField(CATEGORY, StringType()),
    ]
)

# A raw record as read: the unchanged text, where it came from, and the fields parsed out.
RAW_RECORD_SCHEMA = StructType(
    [StructField(RAW, StringType()), StructField(SOURCE_FILE, StringType())]
)

SILVER_EVENTS_SCHEMA = StructType(
    [
        StructField(EVENT_KEY, StringType(), False),
        StructField(EVENT_ID, StringType()),
        StructField(USER_ID, StringType(), False),
        StructField(ITEM_ID, StringType(), False),
        StructField(EVENT_TYPE, StringType(), False),
        StructField(EVENT_TS, TimestampType(), False),
        StructField(VALUE, DoubleType()),
        StructField(SESSION_ID, StringType(), False),
        StructField(CATEGORY, StringType()),
        StructField(SOURCE_FILE, StringType()),
        StructField(RUN_ID, StringType()),
        StructField(EVENT_DATE, DateType(), False),
    ]
)

QUARANTINE_SCHEMA = StructType(
    [
        StructField(RECORD_KEY, StringType(), False),
        StructField(RAW, StringType()),
        StructField(REASON, StringType(), False),
        StructField(DETAIL, StringType()),
        StructField(SOURCE_FILE, StringType()),
        StructField(RUN_ID, StringType()),
        StructField("input", StringType()),  # "events" or "items"
    ]
)

SILVER_ITEMS_SCHEMA = StructType(
    [
        StructField(ITEM_ID, StringType(), False),
        StructField(TITLE, StringType(), False),
        StructField(DESCRIPTION, StringType()),
        StructField(CATEGORY, StringType()),
        StructField(TEXT, StringType(), False),
        StructField(TEXT_HASH, StringType(), False),
    ]
)

INTERACTIONS_SCHEMA = StructType(
    [
        StructField(USER_ID, StringType(), False),
        StructField(ITEM_ID, StringType(), False),
        StructField(WEIGHT, DoubleType(), False),
        StructField(COUNT, LongType(), False),
        StructField(FIRST_TS, TimestampType(), False),
        StructField(LAST_TS, TimestampType(), False),
    ]
)

ITEM_EMBEDDINGS_SCHEMA = StructType(
    [
        StructField(ITEM_ID, StringType(), False),
        StructField(EMBEDDING, ArrayType(FloatType(), False), False),
        StructField(MODEL_NAME, StringType(), False),
        StructField(TEXT_HASH, StringType(), False),
    ]
)

USER_EMBEDDINGS_SCHEMA = StructType(
    [
        StructField(USER_ID, StringType(), False),
        StructField(EMBEDDING, ArrayType(FloatType(), False), False),
    ]
)

RECOMMENDATIONS_SCHEMA = StructType(
    [
        StructField(USER_ID, StringType(), False),
        StructField(RANK, IntegerType(), False),
        StructField(ITEM_ID, StringType(), False),
        StructField(SCORE, DoubleType(), False),
        StructField(REASON, StringType(), False),
        StructField(MODEL_VERSION, StringType(), False),
        StructField(RUN_ID, StringType(), False),
        StructField(GENERATED_AT, TimestampType(), False),
    ]
)

# gold/item_vectors and gold/user_vectors (train): one vector per item / user and model.
ITEM_VECTORS_SCHEMA = StructType(
    [
        StructField(ITEM_ID, StringType(), False),
        StructField(VECTOR, ArrayType(FloatType())),
        StructField(MODEL_VERSION, StringType(), False),
    ]
)

USER_VECTORS_SCHEMA = StructType(
    [
        StructField(USER_ID, StringType(), False),
        StructField(VECTOR, ArrayType(FloatType())),
        StructField(MODEL_VERSION, StringType(), False),
    ]
)

METRICS_SCHEMA = StructType(
    [
        StructField(RUN_ID, StringType(), False),
        StructField(MODEL, StringType(), False),
        StructField(METRIC, StringType(), False),
        StructField(K, IntegerType(), False),
        StructField("value", DoubleType(), False),
        StructField(MODEL_VERSION, StringType()),
        StructField(GENERATED_AT, TimestampType(), False),
    ]
)

# silver/event_hours: per user, clock hour and source file, the events the bot rule counts
# (valid, not duplicates): the state that lets an incremental batch count a user's hours
# across batches.
HOUR = "hour"
EVENTS = "events"
EVENT_HOURS_SCHEMA = StructType(
    [
        StructField(USER_ID, StringType(), False),
        StructField(HOUR, TimestampType(), False),
        StructField(SOURCE_FILE, StringType(), False),
        StructField(EVENTS, LongType(), False),
    ]
)

INGEST_RUNS_SCHEMA = StructType(
    [
        StructField(RUN_ID, StringType(), False),
        StructField("input", StringType(), False),
        StructField("read", LongType(), False),
        StructField("accepted", LongType(), False),
        StructField("inserted", LongType(), False),
        StructField("quarantined", LongType(), False),
        StructField("duplicates", LongType(), False),
        StructField("quarantined_by_reason", MapType(StringType(), LongType()), False),
        StructField("finished_at", TimestampType(), False),
    ]
)


def require_columns(df_columns: list[str], needed: list[str] | tuple[str, ...], what: str) -> None:
    """Raise SchemaError when any of ``needed`` is missing from ``df_columns``.

    Args:
        df_columns: the columns a DataFrame has.
        needed: the columns the caller needs.
        what: a name for the DataFrame in the message (a table path or a role).
    """
    from recspark.errors import SchemaError

    missing = [c for c in needed if c not in df_columns]
    if missing:
        raise SchemaError(
            f"{what}: expected columns {sorted(needed)}, missing {missing}; "
            f"found {sorted(df_columns)}"
        )
