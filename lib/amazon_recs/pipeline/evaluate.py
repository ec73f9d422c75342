"""The evaluate stage: every model's metrics on the held-out test split into
``gold/metrics``, the metrics at each k, and the report with its plots."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs import io, schemas
from amazon_recs.config import Config
from amazon_recs.errors import ConfigError
from amazon_recs.evaluation import intervals, report
from amazon_recs.evaluation import metrics as ev
from amazon_recs.features.split import GLOBAL_TEMPORAL, TEST, TRAIN
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import stage
from amazon_recs.schemas import ITEM, MODEL, SPLIT, USER

HYBRID = "hybrid"
SEGMENTS = ("light", "heavy")


@stage
def run_evaluate(spark: SparkSession, config: Config) -> dict:
    k = config.require("evaluate.k")
    version = versions.current_version(spark, config)
    recs = versions.read_lists(spark, config, version, "evaluate")
    info = versions.model_info(spark, config, version)
    interactions = versions.read_input(spark, config, version, "silver/interactions", info)
    truth = interactions.filter(F.col(SPLIT) == TEST)
    cold_users = None
    if config.require("split.protocol") == GLOBAL_TEMPORAL:
        # Users with nothing before the cut: no model knows them (they are served the
        # popular fallback). Counted here and left out of every model's metrics; the
        # per-user protocols leave every test user train rows.
        known = interactions.filter(F.col(SPLIT) == TRAIN).select(USER).distinct()
        cold_test = truth.join(known, USER, how="left_anti").cache()
        cold_users = {"users": cold_test.select(USER).distinct().count(), "interactions": cold_test.count()}
        truth = truth.join(known, USER, how="left_semi")
    catalogue = versions.read_input(spark, config, version, "silver/items", info).count()

    train = interactions.filter(F.col(SPLIT) == TRAIN).select(USER, ITEM)
    ks = curve_ks(config)
    # The lists are read twice: once for their hits (a semi-join on the held-out pairs'
    # hashes, never an exchange of the lists), once for how often each model lists each
    # item (coverage and novelty). Everything else is the hits (~1% of the rows) and
    # the evaluated users: a user without a hit scores 0 on every metric.
    rel = truth.select(USER, ITEM).distinct().cache()
    n_rel = ev.relevant_counts(rel).cache()
    evaluated = n_rel.count()
    hits = ev.hit_rows(recs, rel, max(k, *ks)).cache()
    listed = ev.listed_items(recs, k).cache()
    models = sorted(r[MODEL] for r in listed.select(MODEL).distinct().collect())
    model_frame = spark.createDataFrame([(m,) for m in models], f"{MODEL} string")
    # Every cut-off in one pass over the hits; the summary is tiny (models x ks x metrics).
    hit_users = ev.hit_user_metrics(hits, n_rel, [k, *ks]).cache()
    summaries = ev.summarise_hits(hit_users, models, [k, *ks], evaluated)
    cold_max = config.require("evaluate.cold_item_max_train")
    cold_slice = ev.cold_truth(truth, train, cold_max, with_counts=True).cache()
    # Each cold-slice user's metrics, summarised below and resampled for their intervals.
    cold_user = ev.cold_per_user_from_hits(hits, cold_slice, model_frame, k).cache()
    metrics = (
        ev.coverage_of(listed, catalogue, k)
        .unionByName(ev.novelty_of(listed, train, k))
        .unionByName(ev.cold_summary(cold_user, k))
    )
    rows = [r for r in summaries if r["k"] == k] + [r.asDict() for r in metrics.collect()]
    at_k = hit_users.filter(F.col("k") == k).drop("k")
    seed, replicates = config.require("split.seed"), config.require("evaluate.bootstrap_replicates")
    level = config.require("evaluate.confidence")
    everyone = intervals.bootstrap(
        at_k, models, seed, replicates, user_segments(train, config), users=n_rel.select(USER)
    )
    cold_reps = intervals.bootstrap(cold_user, models, seed, replicates)
    rows = with_intervals(rows, everyone, cold_reps, level)
    rows += segment_rows(everyone, models, k, level)
    rows = [{**r, "model_version": version} for r in rows]
    frame = spark.createDataFrame(
        [tuple(r.get(f.name) for f in schemas.METRICS) for r in rows], schemas.METRICS
    )
    io.write_version(frame, config, "gold/metrics", version)
    paired = paired_differences(everyone, models, level)
    cold = {"max_train": cold_max, **ev.slice_composition(cold_slice), "test_interactions": truth.count()}
    curve = [r for r in summaries if r["k"] in ks]
    path = report.write_metrics_report(
        spark,
        config,
        rows,
        versions.tuning(spark, config, version),
        info.get("lsh_recall"),
        curve,
        neighbour_method=info.get("neighbour_method", "lsh"),
        cold=cold,
        cold_users=cold_users,
        paired=paired,
        segments=segment_bounds(config),
    )
    return {
        "model_version": version,
        "metrics": rows,
        "curve": curve,
        "cold": cold,
        "cold_users": cold_users,
        "paired": paired,
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


def segment_bounds(config: Config) -> dict[str, int]:
    """Light users have at most ``light_max_train`` training interactions, heavy users
    at least ``heavy_min_train`` (``evaluate.segments``)."""
    bounds = {
        key: config.require(f"evaluate.segments.{key}") for key in ("light_max_train", "heavy_min_train")
    }
    if not 0 <= bounds["light_max_train"] < bounds["heavy_min_train"]:
        raise ConfigError(f"evaluate.segments: light_max_train must be below heavy_min_train, got {bounds}")
    return bounds


def user_segments(train: DataFrame, config: Config) -> DataFrame:
    """(user, segment) of the light and heavy users by training interactions; the users
    between them are in neither."""
    bounds = segment_bounds(config)
    n = F.col("_n")
    segment = F.when(n <= bounds["light_max_train"], "light").when(n >= bounds["heavy_min_train"], "heavy")
    counts = train.groupBy(USER).agg(F.count(F.lit(1)).alias("_n"))
    return counts.select(USER, segment.alias("segment")).filter(F.col("segment").isNotNull())


def with_intervals(
    rows: list[dict], everyone: intervals.Replicates, cold: intervals.Replicates, level: float
) -> list[dict]:
    """``rows`` of gold/metrics with their bootstrap interval where the metric is a mean
    over users (the cold-item slice's from its own users)."""
    out = []
    for row in rows:
        metric, reps = row["metric"], everyone
        if metric.startswith(ev.COLD):
            metric, reps = metric[len(ev.COLD) :], cold
        low = high = None
        if metric in ev.PER_USER_METRICS and intervals.ALL in reps.draws:
            low, high = reps.interval(intervals.ALL, row[MODEL], metric, level)
        out.append({**row, "ci_low": low, "ci_high": high})
    return out


def segment_rows(reps: intervals.Replicates, models: list[str], k: int, level: float) -> list[dict]:
    """gold/metrics rows of the light and heavy users: ``<segment>_<metric>``."""
    rows = []
    for segment in SEGMENTS:
        if segment not in reps.means:
            continue
        for model in models:
            for metric in ev.PER_USER_METRICS:
                low, high = reps.interval(segment, model, metric, level)
                value = reps.means[segment][reps.columns.index(f"{model}/{metric}")]
                rows.append(
                    {
                        MODEL: model,
                        "metric": f"{segment}_{metric}",
                        "k": k,
                        "value": float(value),
                        "users": reps.users[segment],
                        "ci_low": low,
                        "ci_high": high,
                    }
                )
    return rows


def paired_differences(reps: intervals.Replicates, models: list[str], level: float) -> list[dict]:
    """The hybrid against each other model, per metric: mean difference and interval
    over the same users' resamples (all users, then each segment)."""
    if HYBRID not in models or intervals.ALL not in reps.draws:
        return []
    out = []
    for segment in (intervals.ALL, *SEGMENTS):
        if segment not in reps.draws:
            continue
        for other in models:
            if other != HYBRID:
                for metric in ev.PER_USER_METRICS:
                    out.append({"segment": segment, **reps.paired(segment, HYBRID, other, metric, level)})
    return out
