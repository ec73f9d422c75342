"""Ranking helpers shared by every model: top-k per user, seen-item removal."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs.schemas import ITEM_IDX, RANK, SCORE, USER_IDX


def top_k(
    scored: DataFrame,
    k: int,
    col_user: str | list[str] = USER_IDX,
    col_item: str = ITEM_IDX,
    col_score: str = SCORE,
) -> DataFrame:
    """Keep each user's ``k`` best rows and number them 1..k in ``rank``.

    ``col_user`` may be a list of columns to rank within each group of them.
    Ties in score are broken by item id, so the result is deterministic.
    """
    groups = [col_user] if isinstance(col_user, str) else col_user
    order = Window.partitionBy(*groups).orderBy(F.desc(col_score), F.asc(col_item))
    return scored.withColumn(RANK, F.row_number().over(order)).filter(F.col(RANK) <= k)


def filter_seen(
    candidates: DataFrame, seen: DataFrame, col_user: str = USER_IDX, col_item: str = ITEM_IDX
) -> DataFrame:
    """Remove (user, item) pairs the user already interacted with."""
    return candidates.join(seen.select(col_user, col_item), [col_user, col_item], how="left_anti")


def max_seen_per_user(seen: DataFrame, col_user: str = USER_IDX) -> int:
    """The largest number of items any one user has seen (0 when none)."""
    row = seen.groupBy(col_user).count().agg(F.max("count")).first()
    return int(row[0] or 0)


def minmax_per_user(scored: DataFrame, col_user: str = USER_IDX, col_score: str = SCORE) -> DataFrame:
    """Rescale each user's scores to [0, 1]; a user whose scores are all equal gets 1."""
    per_user = Window.partitionBy(col_user)
    lo, hi = F.min(col_score).over(per_user), F.max(col_score).over(per_user)
    return scored.withColumn(
        col_score, F.when(hi > lo, (F.col(col_score) - lo) / (hi - lo)).otherwise(F.lit(1.0))
    )
