"""Random recommendations: the floor every model must clear."""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.models.topk import collect_columns, walk_unseen, with_seen_items
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX

START = "_start"


def recommend_random(
    items: DataFrame,
    users: DataFrame,
    seen: DataFrame,
    n: int,
    seed: int,
    col_user: str = USER_IDX,
    col_item: str = ITEM_IDX,
    col_score: str = SCORE,
) -> DataFrame:
    """``n`` unseen items per user, drawn without replacement, the same for the same seed.

    The catalogue is shuffled once (ordered by a seeded hash of the item, then
    the item) and broadcast; each user reads consecutive items of it from a
    seeded offset of their own, wrapping round, skipping their seen items until
    ``n`` are taken: ``n`` + their seen items of work per user.

    Returns:
        Columns user_idx, item_idx, score (1 down towards 0 along the list:
        1 - (rank - 1) / n), rank.
    """
    catalogue = items.select(col_item).distinct()
    ids, hashes = collect_columns(
        catalogue.withColumn("_hash", F.xxhash64(F.lit(seed), col_item)), col_item, "_hash"
    )
    shuffled = ids[np.lexsort((ids, hashes))]
    per_user = with_seen_items(users, seen, col_user, col_item).withColumn(
        START, F.pmod(F.xxhash64(F.lit(seed), col_user), F.lit(max(len(shuffled), 1)))
    )
    return walk_unseen(
        per_user, shuffled, n, col_start=START, col_user=col_user, col_item=col_item, col_score=col_score
    )
