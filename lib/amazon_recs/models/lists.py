"""Turning model candidates into top-k lists: backfill, hybrid blend, readable reasons."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs import schemas
from amazon_recs.models.topk import minmax_per_user, top_k
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, MODEL_VERSION, RANK, REASON, SCORE, USER, USER_IDX

SOURCE = "source"
BECAUSE = "because_idx"
RANDOM_SOURCE = "random"
CANDIDATE_COLUMNS = [USER_IDX, ITEM_IDX, SCORE, BECAUSE, SOURCE]


def as_candidates(recs: DataFrame, source: str) -> DataFrame:
    """A model's ranked output in the common candidate shape (``because_idx`` may be null)."""
    because = F.col(BECAUSE) if BECAUSE in recs.columns else F.lit(None).cast("int")
    return recs.select(
        USER_IDX, ITEM_IDX, F.col(SCORE).cast("double"), because.alias(BECAUSE), F.lit(source).alias(SOURCE)
    )


def fill_to_k(primary: DataFrame, fallback: DataFrame, k: int) -> DataFrame:
    """Each user's ``k`` items from ``primary``, topped up from ``fallback`` when short.

    Fallback rows rank after every primary row, in the fallback's own order, and
    carry score 0, so a list never reorders: content can run dry for a user whose
    items have no text, and that user still gets ``k`` products.
    """
    tiered = (
        primary.withColumn("_tier", F.lit(0))
        .withColumn("_by", F.col(SCORE))
        .unionByName(
            fallback.withColumn("_by", F.col(SCORE))
            .withColumn(SCORE, F.lit(0.0))
            .withColumn("_tier", F.lit(1))
        )
    )
    first_per_item = _best_tier_per_item(tiered)
    ordered = first_per_item.withColumn(
        "_order", F.struct((-F.col("_tier")).alias("tier"), F.col("_by").alias("score"))
    )
    return top_k(ordered, k, col_score="_order").select(*CANDIDATE_COLUMNS, RANK)


def _best_tier_per_item(tiered: DataFrame) -> DataFrame:
    best = tiered.groupBy(USER_IDX, ITEM_IDX).agg(F.min("_tier").alias("_tier"))
    return tiered.join(best, [USER_IDX, ITEM_IDX, "_tier"], how="inner")


def blend(candidates: Mapping[str, DataFrame], weights: Mapping[str, float], k: int) -> DataFrame:
    """Hybrid: per-user min-max normalised scores, fused by weight, top ``k``.

    An item a model did not propose counts 0 for that model. The model that
    contributed most to an item's fused score gives its reason.

    Args:
        candidates: model name -> candidates (user_idx, item_idx, score, because_idx, source).
        weights: model name -> fusion weight.
    """
    parts = [
        minmax_per_user(df)
        .withColumn("_contribution", F.col(SCORE) * F.lit(float(weights[name])))
        .select(USER_IDX, ITEM_IDX, "_contribution", BECAUSE, SOURCE)
        for name, df in candidates.items()
        if weights.get(name, 0.0) > 0
    ]
    stacked = parts[0]
    for part in parts[1:]:
        stacked = stacked.unionByName(part)
    fused = stacked.groupBy(USER_IDX, ITEM_IDX).agg(
        F.sum("_contribution").alias(SCORE),
        F.max_by(F.struct(BECAUSE, SOURCE), F.struct("_contribution", SOURCE)).alias("_top"),
    )
    return top_k(fused, k).select(
        USER_IDX,
        ITEM_IDX,
        SCORE,
        F.col(f"_top.{BECAUSE}").alias(BECAUSE),
        F.col(f"_top.{SOURCE}").alias(SOURCE),
        RANK,
    )


def with_reason(recs: DataFrame, items: DataFrame) -> DataFrame:
    """A sentence a person can read: "because you rated <title>" or "popular in <category>".

    Rows of the random baseline (``source`` "random") say so.
    """
    because = items.select(F.col(ITEM_IDX).alias(BECAUSE), F.coalesce("title", ITEM).alias("_because_title"))
    category = items.select(ITEM_IDX, F.col("category").alias("_category"))
    is_random = (F.col(SOURCE) == RANDOM_SOURCE) if SOURCE in recs.columns else F.lit(False)
    reason = (
        F.when(is_random, F.lit("a random pick (baseline)"))
        .when(F.col(BECAUSE).isNotNull(), F.concat(F.lit("because you rated "), F.col("_because_title")))
        .when(F.col("_category").isNotNull(), F.concat(F.lit("popular in "), F.col("_category")))
        .otherwise(F.lit("popular with shoppers"))
    )
    return (
        recs.join(F.broadcast(because), BECAUSE, how="left")
        .join(F.broadcast(category), ITEM_IDX, how="left")
        .withColumn(REASON, reason)
    )


def to_gold(recs: DataFrame, model_version: str, item_ids: DataFrame) -> DataFrame:
    """Lists with reasons (``user``, ``model``, ``item_idx``, ...) in the gold.recommendations
    schema: the external item id comes from the item-sized ``item_ids``, broadcast."""
    out = recs.join(F.broadcast(item_ids.select(ITEM_IDX, ITEM)), ITEM_IDX, how="inner").withColumn(
        MODEL_VERSION, F.lit(model_version)
    )
    return schemas.conform(
        out.select(USER, MODEL, RANK, ITEM, SCORE, REASON, MODEL_VERSION),
        schemas.RECOMMENDATIONS,
        "gold/recommendations",
    )
