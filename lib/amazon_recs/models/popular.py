"""Time-decayed popularity: the cold-start fallback and the baseline to beat."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.models.topk import filter_seen, top_k
from amazon_recs.schemas import ITEM_IDX, SCORE, TS, USER_IDX

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class PopularParams:
    """Popularity's settings (``popular.*``)."""

    half_life_days: float = 90.0


def fit_popularity(train: DataFrame, half_life_days: float) -> DataFrame:
    """Each item's interactions, each weighted 0.5 ** (age / half-life).

    Age is measured from the newest training interaction, not the wall clock,
    so the same data always gives the same scores.

    Returns:
        Columns item_idx, score, interactions.
    """
    newest = train.agg(F.max(TS)).first()[0]
    age_days = (F.lit(newest).cast("long") - F.col(TS).cast("long")) / SECONDS_PER_DAY
    return train.groupBy(ITEM_IDX).agg(
        F.sum(F.pow(F.lit(0.5), age_days / half_life_days)).alias(SCORE),
        F.count(F.lit(1)).alias("interactions"),
    )


def recommend_popular(
    popularity: DataFrame, users: DataFrame, seen: DataFrame, n: int, max_seen: int
) -> DataFrame:
    """The ``n`` most popular items each user has not seen.

    Only the ``n + max_seen`` most popular items can make anyone's list, so the
    cross join is users x that many, never users x catalogue.

    Returns:
        Columns user_idx, item_idx, score, rank.
    """
    head = top_k(popularity.withColumn("_all", F.lit(0)), n + max_seen, col_user="_all").select(
        ITEM_IDX, SCORE
    )
    candidates = users.select(USER_IDX).distinct().crossJoin(F.broadcast(head))
    return top_k(filter_seen(candidates, seen), n)
