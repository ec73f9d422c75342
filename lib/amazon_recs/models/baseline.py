"""Random recommendations: the floor every model must clear."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs.models.topk import filter_seen, top_k
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX


def recommend_random(
    items: DataFrame, users: DataFrame, seen: DataFrame, n: int, max_seen: int, seed: int
) -> DataFrame:
    """``n`` unseen items per user, drawn without replacement, the same for the same seed.

    Items are shuffled once (by a seeded hash); each user reads ``n + max_seen``
    consecutive items of that shuffle from a seeded offset of their own, so the
    work is users x (n + max_seen), never users x catalogue.

    Returns:
        Columns user_idx, item_idx, score (1 down to 0 along the list), rank.
    """
    catalogue = items.select(ITEM_IDX).distinct()
    size = catalogue.count()
    shuffled = catalogue.withColumn(
        "_pos", F.row_number().over(Window.orderBy(F.xxhash64(F.lit(seed), ITEM_IDX), ITEM_IDX)) - 1
    )
    span = min(n + max_seen, size)
    reads = (
        users.select(USER_IDX)
        .distinct()
        .select(
            USER_IDX,
            F.pmod(F.xxhash64(F.lit(seed), USER_IDX), F.lit(size)).alias("_offset"),
            F.explode(F.sequence(F.lit(0), F.lit(span - 1))).alias("_step"),
        )
    )
    candidates = (
        reads.withColumn("_pos", F.pmod(F.col("_offset") + F.col("_step"), F.lit(size)))
        .join(F.broadcast(shuffled), "_pos", how="inner")
        .withColumn(SCORE, 1.0 - F.col("_step") / F.lit(float(span)))
        .select(USER_IDX, ITEM_IDX, SCORE)
    )
    return top_k(filter_seen(candidates, seen), n)
