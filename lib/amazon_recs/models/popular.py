"""Time-decayed popularity: the cold-start fallback and the baseline to beat."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.models.topk import collect_columns, walk_unseen, with_seen_items
from amazon_recs.schemas import ITEM_IDX, SCORE, TS, USER_IDX

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class PopularParams:
    """Popularity's settings (``popular.*``)."""

    half_life_days: float = 90.0  # 0: no decay, every interaction counts 1


def fit_popularity(train: DataFrame, half_life_days: float) -> DataFrame:
    """Each item's interactions, each weighted 0.5 ** (age / half-life); with a
    half-life of 0, each weighted 1 (plain counts).

    Age is measured from the newest training interaction, not the wall clock,
    so the same data always gives the same scores.

    Returns:
        Columns item_idx, score, interactions.
    """
    if half_life_days < 0:
        raise ConfigError(f"popular.half_life_days must be 0 (no decay) or positive, got {half_life_days}")
    if half_life_days == 0:
        weight = F.lit(1.0)
    else:
        newest = train.agg(F.max(TS)).first()[0]
        age_days = (F.lit(newest).cast("long") - F.col(TS).cast("long")) / SECONDS_PER_DAY
        weight = F.pow(F.lit(0.5), age_days / half_life_days)
    return train.groupBy(ITEM_IDX).agg(
        F.sum(weight).alias(SCORE),
        F.count(F.lit(1)).alias("interactions"),
    )


def recommend_popular(
    popularity: DataFrame,
    users: DataFrame,
    seen: DataFrame,
    n: int,
    col_user: str = USER_IDX,
    col_item: str = ITEM_IDX,
    col_score: str = SCORE,
) -> DataFrame:
    """The ``n`` most popular items each user has not seen.

    The ranking (score descending, item ascending) is item-sized and broadcast;
    each user walks it from the top, skipping their own seen items, so a user
    costs ``n`` + their seen items, whoever else there is.

    Returns:
        Columns user_idx, item_idx, score, rank.
    """
    items, scores = collect_columns(popularity, col_item, col_score)
    order = np.lexsort((items, -scores.astype(np.float64)))
    return walk_unseen(
        with_seen_items(users, seen, col_user, col_item),
        items[order],
        n,
        order_scores=scores[order].astype(np.float64),
        col_user=col_user,
        col_item=col_item,
        col_score=col_score,
    )
