"""Chronological per-user holdout: the newest share of each user's interactions is the test set."""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recspark.schema import FIRST_TS, ITEM_ID, SPLIT, USER_ID, require_columns

TRAIN = "train"
TEST = "test"


def holdout_count(n: int, fraction: float, min_train: int = 1) -> int:
    """How many of a user's ``n`` interactions are held out (pure reference of the Spark rule).

    ``floor(n * fraction)``, at least 1 when ``fraction > 0``, and never leaving fewer than
    ``min_train`` interactions for training (users with ``n <= min_train`` keep everything).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), found {fraction}")
    want = math.floor(n * fraction)
    if fraction > 0:
        want = max(want, 1)
    return max(0, min(want, n - min_train))


def _holdout_count_col(n: Column, fraction: float, min_train: int) -> Column:
    want = F.floor(n * F.lit(fraction))
    if fraction > 0:
        want = F.greatest(want, F.lit(1))
    return F.greatest(F.least(want, n - F.lit(min_train)), F.lit(0))


def chronological_holdout(
    interactions: DataFrame,
    *,
    fraction: float,
    min_train: int = 1,
    user_col: str = USER_ID,
    item_col: str = ITEM_ID,
    ts_col: str = FIRST_TS,
) -> DataFrame:
    """Mark each user's newest interactions as ``test`` and the rest as ``train``.

    Order per user: ``first_ts`` (when the user first met the item), ties by ``item_id``; the
    last ``holdout_count(n, fraction, min_train)`` interactions are the test set.

    Args:
        interactions: needs ``user_id``, ``item_id``, ``first_ts``.
        fraction: the share held out, in [0, 1).
        min_train: interactions a user always keeps for training.

    Returns:
        ``interactions`` with a ``split`` column (``train`` or ``test``).
    """
    require_columns(interactions.columns, [user_col, item_col, ts_col], "interactions")
    holdout_count(1, fraction, min_train)  # validates fraction
    newest_first = Window.partitionBy(user_col).orderBy(F.desc(ts_col), F.desc(item_col))
    n = F.count(F.lit(1)).over(Window.partitionBy(user_col))
    return (
        interactions.withColumn("_pos", F.row_number().over(newest_first))
        .withColumn("_n_test", _holdout_count_col(n, fraction, min_train))
        .withColumn(SPLIT, F.when(F.col("_pos") <= F.col("_n_test"), TEST).otherwise(TRAIN))
        .drop("_pos", "_n_test")
    )


def train_events(
    events: DataFrame, split: DataFrame, *, user_col: str = USER_ID, item_col: str = ITEM_ID
) -> DataFrame:
    """The events a model may learn from: those of (user, item) pairs in the train split.

    Args:
        events: needs ``user_id``, ``item_id``.
        split: ``chronological_holdout`` output.

    Returns:
        ``events`` without the rows of held-out (user, item) pairs.
    """
    test = split.where(F.col(SPLIT) == TEST).select(user_col, item_col)
    return events.join(test, [user_col, item_col], "left_anti")
