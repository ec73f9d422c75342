"""The recommend stage: every model's top-k per user from the current version (ALS,
item-kNN, content, popularity, the hybrid blend, the random floor), with reasons, into
``gold/recommendations``. Each user is handled once, in ``models.user_lists``."""

from __future__ import annotations

import time

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.features.split import TRAIN
from amazon_recs.models import lists as rc
from amazon_recs.models import user_lists
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import progress, stage
from amazon_recs.schemas import ITEM_IDX, MODEL, SPLIT, USER_IDX, WEIGHT
from amazon_recs.spark import session_conf

# The lists' write keeps every shuffle's spark.shuffle_partitions tasks. Adaptive
# execution would merge them by their bytes, but a user's cost is in Python scoring,
# not in the bytes of their row: at 1M reviews the 16 tasks became 3 (two of 219k
# users, one of 62k), so for the last 12 s of 57 one core was idle. Smaller tasks
# also sort less for the write's partitions by model: the JVM's peak in the stage
# went from 4.3 to 2.7 GiB at 1M.
LISTS_WRITE_CONF = {"spark.sql.adaptive.coalescePartitions.enabled": "false"}


def hybrid_weights(spark: SparkSession, config: Config, version: str) -> dict[str, float]:
    """The weights tuned for ``version``, or the configured ones when it was not tuned."""
    tuned = versions.tuning(spark, config, version)
    return tuned["hybrid_weights"] if tuned else config.require("recommend.hybrid_weights")


def als_half_trust(spark: SparkSession, config: Config, version: str) -> float:
    """The hybrid's trust setting tuned for ``version``, or the configured one."""
    tuned = versions.tuning(spark, config, version)
    if tuned and "als_half_trust" in tuned:
        return float(tuned["als_half_trust"])
    return float(config.require("recommend.als_half_trust"))


def item_knn_neighbours(spark: SparkSession, model_dir: str) -> DataFrame | None:
    """The version's item-kNN neighbours; None for a version saved before item-kNN was one
    of the models (its item-kNN lists are then popularity's)."""
    path = f"{model_dir}/{versions.ITEM_KNN_NEIGHBOURS}"
    return spark.read.format("delta").load(path) if io.table_exists(spark, path) else None


def als_search(config: Config) -> user_lists.AlsSearch:
    return user_lists.AlsSearch(
        method=config.require("recommend.als_search"),
        ivf_min_items=config.require("recommend.ivf_min_items"),
        probe_fraction=config.require("recommend.ivf_probe_fraction"),
        recall_target=config.get("recommend.ivf_recall_target"),
    )


@stage
def run_recommend(spark: SparkSession, config: Config) -> dict:
    version = versions.current_version(spark, config)
    src = versions.model_dir(config, version)
    k, n = config.require("recommend.k"), config.require("recommend.candidates")
    seed = config.require("split.seed")
    info = versions.model_info(spark, config, version)
    interactions = versions.read_input(spark, config, version, "silver/interactions", info)
    items = versions.read_input(spark, config, version, "silver/items", info)
    train = interactions.filter(F.col(SPLIT) == TRAIN).select(USER_IDX, ITEM_IDX, WEIGHT)
    als = ALSModel.load(f"{src}/als")

    search = als_search(config)
    started = time.perf_counter()
    catalogue = user_lists.catalogue(
        items,
        als.itemFactors,
        spark.read.format("delta").load(f"{src}/item_neighbours"),
        spark.read.format("delta").load(f"{src}/popularity"),
        seed,
        als_half_trust(spark, config, version),
        search,
        n,
        item_knn_neighbours(spark, src),
    )
    collected = time.perf_counter() - started
    catalogue, recall = user_lists.calibrate_search(
        als.userFactors,
        catalogue,
        n,
        k,
        config.require("recommend.als_search_recall_users"),
        seed,
        search.recall_target,
    )
    calibrated_in = time.perf_counter() - started - collected
    index = catalogue.als_index
    progress(
        f"catalogue of {catalogue.size:,} items collected in {collected:.1f}s "
        f"({catalogue.als_factors.nbytes / 2**20:.0f} MiB of ALS factors, "
        f"{len(catalogue.content):,} content and {len(catalogue.item_knn):,} item-kNN neighbours); "
        "ALS search: "
        + (
            f"index of {index.clusters:,} clusters ({index.probe} probed per user) and a head of "
            f"{len(index.head):,} items"
            if index is not None
            else "exact"
        )
    )
    calibrated = "als_search_recall_target" in recall
    if calibrated:
        progress(
            f"ALS search probe: the fewest clusters whose recall at {n} reaches "
            f"{recall['als_search_recall_target']} on {recall['als_search_calibration_users']:,} "
            f"sampled users (chosen and measured in {calibrated_in:.1f}s)"
        )
    if recall:
        progress(
            f"ALS search recall on {recall['als_search_users']:,} {'other ' if calibrated else ''}"
            "sampled users: "
            f"{recall[f'als_search_recall_at_{n}']:.4f} at {n}, "
            f"{recall[f'als_search_recall_at_{k}']:.4f} at {k}"
        )
    saving = time.perf_counter()
    versions.save_catalogue(spark, config, version, catalogue)  # refresh maps it
    progress(f"catalogue saved beside the version's models in {time.perf_counter() - saving:.1f}s")
    user_ids = versions.read_input(spark, config, version, "silver/user_ids", info)
    users = user_lists.per_user(train, als.userFactors, user_ids, seed)
    timer = spark.sparkContext.accumulator(0.0)
    lists = user_lists.user_lists(users, catalogue, k, n, hybrid_weights(spark, config, version), timer)
    # The broadcast holds the catalogue now (pickled to a file): at 500k items the driver's
    # own copy is a gigabyte that nothing reads while the workers make the lists.
    del catalogue, index
    item_ids = versions.read_input(spark, config, version, "silver/item_ids", info)
    gold = rc.to_gold(rc.with_reason(lists, items), version, item_ids)

    started = time.perf_counter()
    with session_conf(spark, LISTS_WRITE_CONF):
        io.write_version(gold, config, "gold/recommendations", version, [MODEL])
    seconds = round(time.perf_counter() - started, 2)
    progress(
        f"every user's lists in {seconds:.1f}s (of which ALS scores and top-{n}: "
        f"{timer.value:.1f}s of worker time over {spark.sparkContext.defaultParallelism} workers)"
    )
    counts = io.read_version(spark, config, "gold/recommendations", version).groupBy(MODEL).count().collect()
    return {
        "model_version": version,
        **{f"rows_{r[MODEL]}": r["count"] for r in counts},
        "seconds_lists": seconds,
        "seconds_als_scores_worker": round(timer.value, 2),
        **recall,
    }
