"""The pipeline's stages. Each reads its inputs, transforms them with the pure
functions of the other modules, and writes its outputs: extract, transform, load.

A stage returns a small summary (counts, paths) for the job's closing report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial, reduce, wraps
from pathlib import Path

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from amazon_recs import evaluate as ev
from amazon_recs import features as fe
from amazon_recs import ingest as ig
from amazon_recs import io, report, schemas, serving, training
from amazon_recs import recommend as rc
from amazon_recs import tuning as tuning_mod
from amazon_recs.config import Config
from amazon_recs.errors import ConfigError, InputError, StageOrderError
from amazon_recs.gold_store import FALLBACK_TABLE
from amazon_recs.models import baseline as m_baseline
from amazon_recs.sample import META_FILE, REVIEWS_FILE, generate_sample
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, RANK, SCORE, SPLIT, TS, USER, USER_IDX, WEIGHT
from amazon_recs.spark import releasing_caches
from amazon_recs.topk import max_seen_per_user

log = logging.getLogger(__name__)

CURRENT_POINTER = "CURRENT"
VERSION_SECTIONS = ("split", "als", "content", "popular", "recommend", "tune")

Stage = Callable[[SparkSession, Config], dict]


def stage(run: Stage) -> Stage:
    """A stage leaves nothing cached behind: what it cached ends with it."""

    @wraps(run)
    def released(spark: SparkSession, config: Config) -> dict:
        with releasing_caches(spark):
            return run(spark, config)

    return released


# --- ingest -----------------------------------------------------------------


def input_globs(config: Config) -> dict[str, str]:
    """Each configured source's glob; with no reviews configured, the generated sample.

    The sample is written under ``paths.raw`` only when it is not there yet.
    """
    globs = {kind: config.require(f"input.{kind}") for kind in ("reviews", "products", "tags")}
    if not globs["reviews"]:
        raw = Path(config.require("paths.raw"))
        if not (raw / REVIEWS_FILE).exists() or not (raw / META_FILE).exists():
            generate_sample(raw, **config.require("sample"))
        globs = {"reviews": str(raw / REVIEWS_FILE), "products": str(raw / META_FILE)}
    return {kind: glob for kind, glob in globs.items() if glob}


@stage
def run_ingest(spark: SparkSession, config: Config) -> dict:
    sources = {kind: io.list_files(spark, glob) for kind, glob in input_globs(config).items()}
    run_id = io.fingerprint([f for files in sources.values() for f in files])

    logs = []
    for kind, files in sources.items():
        accepted, rejects, log = ig.ingest_source(spark, config, kind, files, run_id)
        io.merge_table(spark, rejects, config, "bronze/rejects", ["kind", "source_file", "line_number"])
        io.merge_table(spark, log, config, "bronze/ingest_log", ["ingest_run_id", "kind", "source_file"])
        log_rows = [r.asDict() for r in log.collect()]  # one row per input file
        # Rejects and the log are written first, so a failed run can be inspected.
        ig.check_reject_rate(log_rows, rejects, config.require("input.max_reject_rate"))
        update = "record_hash" if kind == "products" else None
        io.merge_table(spark, accepted, config, ig.TABLES[kind], ig.KEYS[kind], update)
        logs.extend(log_rows)
    return {"ingest_run_id": run_id, "files": logs}


# --- features ---------------------------------------------------------------


def _existing(spark: SparkSession, config: Config, name: str) -> DataFrame | None:
    path = io.table_path(config, name)
    return spark.read.format("delta").load(path) if io.table_exists(spark, path) else None


@stage
def run_features(spark: SparkSession, config: Config) -> dict:
    reviews = io.read_table(spark, config, "bronze/reviews")
    products = _existing(spark, config, "bronze/products")
    if products is None:
        products = spark.createDataFrame([], schema=schemas.BRONZE_PRODUCTS)
    tags = _existing(spark, config, "bronze/item_tags")
    if not reviews.take(1):
        raise InputError("bronze/reviews is empty: no review line was accepted; see bronze/rejects")

    user_ids = fe.extend_id_map(_existing(spark, config, "silver/user_ids"), reviews, USER, USER_IDX)
    item_keys = reviews.select(ITEM).unionByName(products.select(ITEM))
    item_ids = fe.extend_id_map(_existing(spark, config, "silver/item_ids"), item_keys, ITEM, ITEM_IDX)
    # Append-only: existing ids are never rewritten, new keys are inserted.
    io.merge_table(spark, user_ids, config, "silver/user_ids", [USER])
    io.merge_table(spark, item_ids, config, "silver/item_ids", [ITEM])
    user_ids = io.read_table(spark, config, "silver/user_ids")
    item_ids = io.read_table(spark, config, "silver/item_ids")

    interactions = fe.build_interactions(
        reviews,
        user_ids,
        item_ids,
        config.require("split.test_fraction"),
        config.require("split.min_user_interactions"),
        protocol=config.require("split.protocol"),
        seed=config.require("split.seed"),
    )
    io.overwrite_table(interactions, config, "silver/interactions")
    interactions = io.read_table(spark, config, "silver/interactions")
    io.overwrite_table(fe.build_items(products, item_ids, interactions, tags), config, "silver/items")
    io.overwrite_table(fe.build_users(interactions), config, "silver/users")
    counts = interactions.groupBy(SPLIT).count().collect()
    return {f"interactions_{r[SPLIT]}": r["count"] for r in counts}


# --- train ------------------------------------------------------------------


def model_version(config: Config, train: DataFrame) -> str:
    """Derived from the model settings and the training rows: same inputs, same version."""
    configured = config.require("run.model_version")
    if configured != "auto":
        return configured
    data_hash = train.select(F.sum(F.xxhash64(USER_IDX, ITEM_IDX, WEIGHT, TS).cast("decimal(38,0)"))).first()[
        0
    ]
    settings = {s: config.require(s) for s in VERSION_SECTIONS}
    digest = hashlib.sha1(json.dumps([settings, str(data_hash)], sort_keys=True).encode())
    return digest.hexdigest()[:12]


def model_dir(config: Config, version: str) -> str:
    return f"{config.require('paths.models').rstrip('/')}/{version}"


def current_version(spark: SparkSession, config: Config) -> str:
    pointer = f"{config.require('paths.models').rstrip('/')}/{CURRENT_POINTER}"
    version = io.read_text(spark, pointer)
    if not version:
        raise StageOrderError(f"no trained model at {pointer}: run the train stage first")
    return version.strip()


@stage
def run_train(spark: SparkSession, config: Config) -> dict:
    interactions = io.read_table(spark, config, "silver/interactions")
    items = io.read_table(spark, config, "silver/items")
    train = interactions.filter(F.col(SPLIT) == fe.TRAIN).cache()
    version = model_version(config, train)
    out = model_dir(config, version)

    content = training.fit_content(spark, items, config)  # the items alone: fitted once
    tuning = tuning_mod.tune(spark, train, items, config, content) if config.require("tune.enabled") else None
    if tuning:
        config = config.with_overrides([f"als.{key}={value}" for key, value in tuning["als"].items()])
        io.write_text(spark, f"{out}/tuning.json", json.dumps(tuning, indent=2, sort_keys=True))
    models = training.fit_models(spark, train, items, config, content=content)
    models.als.write().overwrite().save(f"{out}/als")
    if models.tfidf is not None:
        models.tfidf.write().overwrite().save(f"{out}/tfidf")
    models.neighbours.write.format("delta").mode("overwrite").save(f"{out}/item_neighbours")
    models.popularity.write.format("delta").mode("overwrite").save(f"{out}/popularity")
    io.write_text(spark, f"{out}/model_info.json", json.dumps({"lsh_recall": models.lsh_recall}))

    # The pointer moves last: readers see the old version or the whole new one.
    io.write_text(spark, f"{config.require('paths.models').rstrip('/')}/{CURRENT_POINTER}", version)
    return {"model_version": version, "model_dir": out, "tuning": tuning, "lsh_recall": models.lsh_recall}


def hybrid_weights(spark: SparkSession, config: Config, version: str) -> dict[str, float]:
    """The weights tuned for ``version``, or the configured ones when it was not tuned."""
    tuned = io.read_text(spark, f"{model_dir(config, version)}/tuning.json")
    return json.loads(tuned)["hybrid_weights"] if tuned else config.require("recommend.hybrid_weights")


# --- recommend --------------------------------------------------------------


@stage
def run_recommend(spark: SparkSession, config: Config) -> dict:
    version = current_version(spark, config)
    src = model_dir(config, version)
    k, n = config.require("recommend.k"), config.require("recommend.candidates")
    interactions = io.read_table(spark, config, "silver/interactions")
    items = io.read_table(spark, config, "silver/items")
    train = interactions.filter(F.col(SPLIT) == fe.TRAIN).select(USER_IDX, ITEM_IDX, WEIGHT).cache()
    max_seen = max_seen_per_user(train)
    models = training.Models(
        als=ALSModel.load(f"{src}/als"),
        neighbours=spark.read.format("delta").load(f"{src}/item_neighbours"),
        popularity=spark.read.format("delta").load(f"{src}/popularity"),
    )

    candidates = training.candidates(models, train, n, k, max_seen)
    lists = {name: rc.fill_to_k(df, candidates["popular"], k) for name, df in candidates.items()}
    lists["hybrid"] = rc.blend(candidates, hybrid_weights(spark, config, version), k)
    users = train.select(USER_IDX).distinct()
    random_recs = m_baseline.recommend_random(items, users, train, k, max_seen, config.require("split.seed"))
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
    return {"model_version": version, **{f"rows_{r[MODEL]}": r["count"] for r in counts}}


# --- evaluate ---------------------------------------------------------------


@stage
def run_evaluate(spark: SparkSession, config: Config) -> dict:
    k = config.require("evaluate.k")
    recs = io.read_table(spark, config, "gold/recommendations")
    version = recs.select("model_version").first()[0]
    interactions = io.read_table(spark, config, "silver/interactions")
    truth = interactions.filter(F.col(SPLIT) == fe.TEST)
    catalogue = io.read_table(spark, config, "silver/items").count()

    train = interactions.filter(F.col(SPLIT) == fe.TRAIN).select(USER, ITEM)
    per_user = ev.per_user_metrics(recs, truth.select(USER, ITEM), k)
    metrics = (
        ev.summarise(per_user, k)
        .unionByName(ev.coverage(recs, catalogue, k))
        .unionByName(ev.novelty(recs, train, k))
        .withColumn("model_version", F.lit(version))
    )
    io.overwrite_table(schemas.conform(metrics, schemas.METRICS, "gold/metrics"), config, "gold/metrics")
    rows = [r.asDict() for r in io.read_table(spark, config, "gold/metrics").collect()]
    curve = _metrics_against_k(recs, truth.select(USER, ITEM), config)
    tuned = io.read_text(spark, f"{model_dir(config, version)}/tuning.json")
    info = json.loads(io.read_text(spark, f"{model_dir(config, version)}/model_info.json") or "{}")
    path = report.write_metrics_report(
        spark, config, rows, json.loads(tuned) if tuned else None, info.get("lsh_recall"), curve
    )
    return {"model_version": version, "metrics": rows, "curve": curve, "report": path}


def _metrics_against_k(recs: DataFrame, truth: DataFrame, config: Config) -> list[dict]:
    """The per-user metrics at each k of ``evaluate.curve_ks`` (for the plot), in one job."""
    ks = sorted(set(config.require("evaluate.curve_ks")))
    top_k = config.require("recommend.k")
    if not ks or ks[0] < 1 or ks[-1] > top_k:
        raise ConfigError(f"evaluate.curve_ks must be between 1 and recommend.k ({top_k}), got {ks}")
    frames = [ev.summarise(ev.per_user_metrics(recs, truth, k), k) for k in ks]
    return [r.asDict() for r in reduce(DataFrame.unionByName, frames).collect()]


# --- export -----------------------------------------------------------------


@stage
def run_export(spark: SparkSession, config: Config) -> dict:
    """Serving layout: one row per (user, model) holding the ordered top-k with titles,
    and the popular list for users the version does not know; the Athena DDL beside
    the gold tables; and, when enabled, the DynamoDB serving store."""
    recs = io.read_table(spark, config, "gold/recommendations")
    version = recs.select("model_version").first()[0]
    items = io.read_table(spark, config, "silver/items").select(ITEM, "title", "category")
    serving_rows = (
        recs.join(items, ITEM, how="left")
        .groupBy(USER, MODEL, "model_version")
        .agg(
            F.sort_array(
                F.collect_list(F.struct("rank", ITEM, "title", "category", "score", "reason"))
            ).alias("items")
        )
    )
    path = io.overwrite_table(serving_rows, config, "gold/user_recommendations", partition_by=[MODEL])
    io.overwrite_table(popular_fallback(spark, config, version), config, FALLBACK_TABLE)
    ddl_path = f"{config.require('paths.warehouse').rstrip('/')}/gold/athena_ddl.sql"
    io.write_text(spark, ddl_path, report.athena_ddl(config))
    summary = {"serving_table": path, "athena_ddl": ddl_path}
    if config.require("export.dynamodb.enabled"):
        served = io.read_table(spark, config, "gold/user_recommendations")
        summary["dynamodb"] = publish(spark, config, served, version)
    return summary


def popular_fallback(spark: SparkSession, config: Config, version: str) -> DataFrame:
    """The version's k most popular products with their reasons: what an unknown user
    is shown, from DynamoDB or from the gold tables alike."""
    k = config.require("recommend.k")
    popularity = spark.read.format("delta").load(f"{model_dir(config, version)}/popularity")
    items = io.read_table(spark, config, "silver/items")
    top = (
        popularity.orderBy(F.desc(SCORE), ITEM_IDX)
        .limit(k)
        .withColumn(RANK, F.row_number().over(Window.orderBy(F.desc(SCORE), ITEM_IDX)))
        .withColumn(rc.BECAUSE, F.lit(None).cast("int"))
    )
    named = rc.with_reason(top, items).join(items.select(ITEM_IDX, ITEM, "title", "category"), ITEM_IDX)
    return named.select(
        RANK, ITEM, "title", "category", SCORE, "reason", F.lit(version).alias("model_version")
    )


def fallback_items(spark: SparkSession, config: Config) -> list[dict]:
    """``gold/popular_fallback`` in rank order, in the serving layout's fields."""
    rows = io.read_table(spark, config, FALLBACK_TABLE).orderBy(RANK).drop("model_version").collect()
    return [r.asDict() for r in rows]


def publish(
    spark: SparkSession,
    config: Config,
    served: DataFrame,
    version: str,
    client_factory=serving.make_client,
) -> dict:
    """Write ``version``'s lists to DynamoDB from the executors, then switch readers over.

    Each of ``export.dynamodb.max_concurrency`` partitions writes its rows with
    one client; only counts come back to the driver. The pointer moves last,
    and only from the version it was when the export started.
    """
    settings = serving.StoreSettings.from_config(config)
    client = client_factory(settings)
    if config.require("export.dynamodb.create_table"):
        serving.ensure_table(client, settings.table)
    previous = serving.current_version(client, settings.table)
    now = time.time()
    generated_at = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")
    expires_at = int(now) + int(config.require("export.dynamodb.ttl_days") * 86_400)

    write = partial(
        serving.write_partition,
        settings=settings,
        version=version,
        generated_at=generated_at,
        expires_at=expires_at,
        client_factory=client_factory,
    )
    rows = served.select(USER, MODEL, "items").repartition(config.require("export.dynamodb.max_concurrency"))
    stats = sum(
        (serving.WriteStats(*t) for t in rows.rdd.mapPartitions(write).collect()), serving.WriteStats()
    )
    expected = served.count()
    if stats.items != expected:
        raise serving.ServingError(f"wrote {stats.items} lists to DynamoDB but the version has {expected}")
    fallback = serving.list_item(
        serving.FALLBACK_PK, version, fallback_items(spark, config), generated_at, expires_at
    )
    stats += serving.write_items(client, settings, [fallback])
    serving.switch_version(
        client, settings.table, version, generated_at, previous["model_version"] if previous else None
    )
    log.info("published version %s to DynamoDB %s: %s", version, settings.table, stats)
    return {
        "table": settings.table,
        "model_version": version,
        "previous_version": previous["model_version"] if previous else None,
        "lists": stats.items - 1,
        "batches": stats.batches,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "unprocessed_retried": stats.unprocessed,
    }


STAGES = {
    "ingest": run_ingest,
    "features": run_features,
    "train": run_train,
    "recommend": run_recommend,
    "evaluate": run_evaluate,
    "export": run_export,
}
