"""Turning model candidates into top-k lists: backfill, hybrid blend, readable reasons."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs import schemas
from amazon_recs.models.topk import minmax_per_user, top_k
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, MODEL_VERSION, RANK, REASON, SCORE, USER, USER_IDX

SOURCE = "source"
BECAUSE = "because_idx"
RANDOM_SOURCE = "random"
CANDIDATE_COLUMNS = [USER_IDX, ITEM_IDX, SCORE, BECAUSE, SOURCE]
# The models the hybrid blends, in the order of their names: on equal contributions
# to a hybrid item, the greater name gives the reason (``blend``'s max_by).
COMPONENTS = ("als", "content", "item_knn", "popular")


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


def item_trust(interactions: np.ndarray, half_trust: float) -> np.ndarray:
    """How far the hybrid trusts ALS on each item: n / (n + half_trust) for an item
    with n training interactions (0 for a new item, 1/2 at ``half_trust``, towards 1
    for a well-known one); 1 everywhere when ``half_trust`` is 0 (off)."""
    n = np.asarray(interactions, np.float64)
    if half_trust <= 0:
        return np.ones(len(n))
    return n / (n + float(half_trust))


def trust_weights(name: str, weights: Mapping[str, float], trust):
    """A model's fusion weight on each candidate item, given the item's ALS ``trust``
    (1 where content does not propose the item to the user: see ``blend``):
    ALS keeps ``w_als * trust``, content takes ``w_content + w_als * (1 - trust)``,
    other models keep their weight. Works on numpy arrays and Spark columns alike,
    with the same double arithmetic in the same order."""
    w_als = float(weights.get("als", 0.0))
    if name == "als":
        return w_als * trust
    if name == "content":
        return float(weights.get("content", 0.0)) + w_als * (1 - trust)
    return float(weights.get(name, 0.0)) + 0 * trust


def blend(
    candidates: Mapping[str, DataFrame],
    weights: Mapping[str, float],
    k: int,
    trust: DataFrame | None = None,
) -> DataFrame:
    """Hybrid: per-user min-max normalised scores, fused by weight, top ``k``.

    An item a model did not propose counts 0 for that model. The model that
    contributed most to an item's fused score gives its reason. With ``trust``
    (item_idx, trust: see ``item_trust``; an item not in it has trust 0), ALS's
    weight on an item with little collaborative signal moves to content
    (``trust_weights``) where content proposes that item to the user too (elsewhere
    there is nothing to move it to, and ALS keeps it); a candidate whose weight
    comes to 0 is left out.

    Args:
        candidates: model name -> candidates (user_idx, item_idx, score, because_idx, source).
        weights: model name -> fusion weight.
    """
    parts = []
    for name, df in candidates.items():
        if trust is None:
            if weights.get(name, 0.0) <= 0:
                continue
            weight = F.lit(float(weights[name]))
        else:
            df = df.join(
                F.broadcast(trust.select(ITEM_IDX, F.col("trust").alias("_trust"))), ITEM_IDX, "left"
            )
            item_trust = F.coalesce(F.col("_trust"), F.lit(0.0))
            if name == "als" and "content" in candidates:
                proposed = candidates["content"].select(USER_IDX, ITEM_IDX, F.lit(True).alias("_by_content"))
                df = df.join(proposed, [USER_IDX, ITEM_IDX], "left")
                item_trust = F.when(F.col("_by_content"), item_trust).otherwise(F.lit(1.0))
            weight = trust_weights(name, weights, item_trust)
        part = (
            minmax_per_user(df)
            .withColumn("_weight", weight)
            .filter(F.col("_weight") > 0)
            .withColumn("_contribution", F.col(SCORE) * F.col("_weight"))
            .select(USER_IDX, ITEM_IDX, "_contribution", BECAUSE, SOURCE)
        )
        parts.append(part)
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
