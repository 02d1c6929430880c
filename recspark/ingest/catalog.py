"""The catalog: parse, validate and deduplicate item records; the text embedded for an item.

Nothing here reads, writes, counts or collects.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recspark import schema as S
from recspark.ingest.classify import IS_DUPLICATE, with_status
from recspark.ingest.validate import (
    clean,
    first_failure,
    parse_json_records,
    record_checks,
)


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
        F.when(loser & ~same, F.lit(S.Reason.DUPLICATE_ITEM_ID))
        .otherwise(F.col(S.REASON))
        .alias(S.REASON),
        F.when(loser & ~same, F.col(S.ITEM_ID)).otherwise(F.col(S.DETAIL)).alias(S.DETAIL),
        (loser & same).alias(IS_DUPLICATE),
    )
    return with_status(out)


def to_silver_items(accepted: DataFrame) -> DataFrame:
    """Select the columns of ``silver/items``."""
    return accepted.select(S.ITEM_ID, S.TITLE, S.DESCRIPTION, S.CATEGORY, S.TEXT, S.TEXT_HASH)
