"""Implicit-feedback ALS (Hu, Koren and Volinsky 2008) with MLlib."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.models.topk import filter_seen, top_k
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX, WEIGHT


@dataclass(frozen=True)
class AlsParams:
    """Implicit ALS's settings (``als.*`` in the configuration)."""

    rank: int = 32
    max_iter: int = 15
    reg_param: float = 0.1
    alpha: float = 5.0
    checkpoint_interval: int = 5
    seed: int = 42


def fit_als(train: DataFrame, params: AlsParams) -> ALSModel:
    """Fit implicit ALS on (user_idx, item_idx, weight); confidence is 1 + alpha * weight.

    The input is sorted so that the same data gives the same factors: ALS's
    partitioning, and so its floating-point sums, follow row order.
    """
    als = ALS(
        userCol=USER_IDX,
        itemCol=ITEM_IDX,
        ratingCol=WEIGHT,
        implicitPrefs=True,
        rank=params.rank,
        maxIter=params.max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        seed=params.seed,
        checkpointInterval=params.checkpoint_interval,
        coldStartStrategy="drop",
    )
    data = (
        train.select(USER_IDX, ITEM_IDX, WEIGHT)
        .orderBy(USER_IDX, ITEM_IDX)
        .coalesce(train.sparkSession.sparkContext.defaultParallelism)
    )
    return als.fit(data)


def recommend_als(model: ALSModel, users: DataFrame, seen: DataFrame, n: int, max_seen: int) -> DataFrame:
    """Each user's ``n`` best unseen items by predicted preference.

    ALS is asked for ``n + max_seen`` items so that ``n`` remain after removing
    the user's own, whoever the user is.

    Returns:
        Columns user_idx, item_idx, score, rank.
    """
    raw = model.recommendForUserSubset(users.select(USER_IDX).distinct(), n + max_seen)
    exploded = raw.select(USER_IDX, F.explode("recommendations").alias("r")).select(
        USER_IDX, F.col("r")[ITEM_IDX].alias(ITEM_IDX), F.col("r.rating").cast("double").alias(SCORE)
    )
    return top_k(filter_seen(exploded, seen), n)


def dot(a: str, b: str):
    """Dot product of two array<float> columns, with built-in functions only."""
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0), lambda acc, v: acc + v)


def because_item(recs: DataFrame, seen: DataFrame, item_factors: DataFrame) -> DataFrame:
    """For each recommended (user, item), the seen item whose factors agree most with it.

    Returns:
        Columns user_idx, item_idx, because_idx.
    """
    f_rec = item_factors.select(F.col("id").alias(ITEM_IDX), F.col("features").alias("f_rec"))
    f_seen = item_factors.select(F.col("id").alias("because_idx"), F.col("features").alias("f_seen"))
    pairs = (
        recs.select(USER_IDX, ITEM_IDX)
        .join(seen.select(USER_IDX, F.col(ITEM_IDX).alias("because_idx")), USER_IDX, how="inner")
        .join(f_rec, ITEM_IDX, how="inner")
        .join(f_seen, "because_idx", how="inner")
        .withColumn("_agree", dot("f_rec", "f_seen"))
    )
    best = top_k(pairs, 1, col_user=[USER_IDX, ITEM_IDX], col_item="because_idx", col_score="_agree")
    return best.select(USER_IDX, ITEM_IDX, "because_idx")
