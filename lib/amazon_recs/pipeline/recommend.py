"""The recommend stage: each model's top-k per user from the current version, the
hybrid blend, the random floor, with reasons, into ``gold/recommendations``."""

from __future__ import annotations

import time

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.features.split import TRAIN
from amazon_recs.models import baseline as m_baseline
from amazon_recs.models import lists as rc
from amazon_recs.models import training
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import progress, stage
from amazon_recs.schemas import ITEM_IDX, MODEL, SPLIT, USER_IDX, WEIGHT


def hybrid_weights(spark: SparkSession, config: Config, version: str) -> dict[str, float]:
    """The weights tuned for ``version``, or the configured ones when it was not tuned."""
    tuned = versions.tuning(spark, config, version)
    return tuned["hybrid_weights"] if tuned else config.require("recommend.hybrid_weights")


@stage
def run_recommend(spark: SparkSession, config: Config) -> dict:
    version = versions.current_version(spark, config)
    src = versions.model_dir(config, version)
    k, n = config.require("recommend.k"), config.require("recommend.candidates")
    interactions = io.read_table(spark, config, "silver/interactions")
    items = io.read_table(spark, config, "silver/items")
    train = interactions.filter(F.col(SPLIT) == TRAIN).select(USER_IDX, ITEM_IDX, WEIGHT).cache()
    models = training.Models(
        als=ALSModel.load(f"{src}/als"),
        neighbours=spark.read.format("delta").load(f"{src}/item_neighbours"),
        popularity=spark.read.format("delta").load(f"{src}/popularity"),
    )

    candidates = training.candidates(models, train, n, k)
    seconds = {}
    for name, frame in candidates.items():  # cached: counting computes them once, and times each
        started = time.perf_counter()
        rows = frame.count()
        seconds[name] = round(time.perf_counter() - started, 2)
        progress(f"{name}: {rows:,} candidates (top {n} per user) in {seconds[name]:.1f}s")
    lists = {name: rc.fill_to_k(df, candidates["popular"], k) for name, df in candidates.items()}
    lists["hybrid"] = rc.blend(candidates, hybrid_weights(spark, config, version), k)
    users = train.select(USER_IDX).distinct()
    random_recs = m_baseline.recommend_random(items, users, train, k, config.require("split.seed"))
    lists[rc.RANDOM_SOURCE] = rc.fill_to_k(
        rc.as_candidates(random_recs, rc.RANDOM_SOURCE), candidates["popular"], k
    )

    user_ids = io.read_table(spark, config, "silver/user_ids")
    item_ids = io.read_table(spark, config, "silver/item_ids")
    gold = None
    for name, recs in lists.items():
        part = rc.to_gold(rc.with_reason(recs, items), name, version, user_ids, item_ids)
        gold = part if gold is None else gold.unionByName(part)
    io.overwrite_table(gold, config, "gold/recommendations", partition_by=[MODEL])
    counts = io.read_table(spark, config, "gold/recommendations").groupBy(MODEL).count().collect()
    return {
        "model_version": version,
        **{f"rows_{r[MODEL]}": r["count"] for r in counts},
        **{f"seconds_{name}_candidates": s for name, s in seconds.items()},
    }
