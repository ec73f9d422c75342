"""The evaluate stage: every model's metrics on the held-out test split into
``gold/metrics``, the metrics at each k, and the report with its plots."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from amazon_recs import io, schemas
from amazon_recs.config import Config
from amazon_recs.errors import ConfigError
from amazon_recs.evaluation import metrics as ev
from amazon_recs.evaluation import report
from amazon_recs.features.split import TEST, TRAIN
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import stage
from amazon_recs.schemas import ITEM, SPLIT, USER


@stage
def run_evaluate(spark: SparkSession, config: Config) -> dict:
    k = config.require("evaluate.k")
    recs = io.read_table(spark, config, "gold/recommendations")
    version = recs.select("model_version").first()[0]
    info = versions.model_info(spark, config, version)
    interactions = versions.read_input(spark, config, version, "silver/interactions", info)
    truth = interactions.filter(F.col(SPLIT) == TEST)
    catalogue = versions.read_input(spark, config, version, "silver/items", info).count()

    train = interactions.filter(F.col(SPLIT) == TRAIN).select(USER, ITEM)
    ks = curve_ks(config)
    # Every cut-off in one pass over the lists; the summary is tiny (models x ks x metrics).
    summaries = ev.summarise(ev.per_user_metrics_at(recs, truth.select(USER, ITEM), [k, *ks])).cache()
    cold_max = config.require("evaluate.cold_item_max_train")
    metrics = (
        summaries.filter(F.col("k") == k)
        .unionByName(ev.coverage(recs, catalogue, k))
        .unionByName(ev.novelty(recs, train, k))
        .unionByName(ev.cold_metrics(recs, truth, train, k, cold_max))
        .withColumn("model_version", F.lit(version))
    )
    io.overwrite_table(schemas.conform(metrics, schemas.METRICS, "gold/metrics"), config, "gold/metrics")
    rows = [r.asDict() for r in io.read_table(spark, config, "gold/metrics").collect()]
    cold_slice = ev.cold_truth(truth, train, cold_max)
    cold = {
        "max_train": cold_max,
        "interactions": cold_slice.count(),
        "users": cold_slice.select(USER).distinct().count(),
        "test_interactions": truth.count(),
    }
    curve = [r.asDict() for r in summaries.filter(F.col("k").isin(ks)).collect()]
    path = report.write_metrics_report(
        spark,
        config,
        rows,
        versions.tuning(spark, config, version),
        info.get("lsh_recall"),
        curve,
        neighbour_method=info.get("neighbour_method", "lsh"),
        cold=cold,
    )
    return {
        "model_version": version,
        "metrics": rows,
        "curve": curve,
        "cold": cold,
        "report": path,
        "lsh_recall": info.get("lsh_recall"),
        "neighbour_method": info.get("neighbour_method"),
    }


def curve_ks(config: Config) -> list[int]:
    """The cut-offs of the metrics-against-k plot (``evaluate.curve_ks``), checked."""
    ks = sorted(set(config.require("evaluate.curve_ks")))
    top_k = config.require("recommend.k")
    if not ks or ks[0] < 1 or ks[-1] > top_k:
        raise ConfigError(f"evaluate.curve_ks must be between 1 and recommend.k ({top_k}), got {ks}")
    return ks
