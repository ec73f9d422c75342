"""The export stage: the serving layout (``gold/user_recommendations``), the popular
list for unknown users, the Athena DDL, and, when enabled, the DynamoDB publish:
every list of the version first, then the pointer."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from functools import partial

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.aws import athena
from amazon_recs.config import Config
from amazon_recs.models import lists as rc
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import stage
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, RANK, SCORE, USER
from amazon_recs.serving import dynamodb, interface, writer
from amazon_recs.serving.gold_tables import FALLBACK_TABLE

log = logging.getLogger(__name__)


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
    io.write_text(spark, ddl_path, athena.athena_ddl(config))
    summary = {"serving_table": path, "athena_ddl": ddl_path}
    if config.require("export.dynamodb.enabled"):
        served = io.read_table(spark, config, "gold/user_recommendations")
        summary["dynamodb"] = publish(spark, config, served, version)
    return summary


def popular_fallback(spark: SparkSession, config: Config, version: str) -> DataFrame:
    """The version's k most popular products with their reasons: what an unknown user
    is shown, from DynamoDB or from the gold tables alike."""
    k = config.require("recommend.k")
    popularity = spark.read.format("delta").load(f"{versions.model_dir(config, version)}/popularity")
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
    client_factory=dynamodb.make_client,
) -> dict:
    """Write ``version``'s lists to DynamoDB from the executors, then switch readers over.

    Each of ``export.dynamodb.max_concurrency`` partitions writes its rows with
    one client; only counts come back to the driver. The pointer moves last,
    and only from the version it was when the export started.
    """
    settings = dynamodb.StoreSettings.from_config(config)
    client = client_factory(settings)
    if config.require("export.dynamodb.create_table"):
        dynamodb.ensure_table(client, settings.table)
    previous = dynamodb.current_version(client, settings.table)
    now = time.time()
    generated_at = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")
    expires_at = int(now) + int(config.require("export.dynamodb.ttl_days") * 86_400)

    write = partial(
        writer.write_partition,
        settings=settings,
        version=version,
        generated_at=generated_at,
        expires_at=expires_at,
        client_factory=client_factory,
    )
    rows = served.select(USER, MODEL, "items").repartition(config.require("export.dynamodb.max_concurrency"))
    stats = sum((writer.WriteStats(*t) for t in rows.rdd.mapPartitions(write).collect()), writer.WriteStats())
    expected = served.count()
    if stats.items != expected:
        raise interface.ServingError(f"wrote {stats.items} lists to DynamoDB but the version has {expected}")
    fallback = writer.list_item(
        dynamodb.FALLBACK_PK, version, fallback_items(spark, config), generated_at, expires_at
    )
    stats += writer.write_items(client, settings, [fallback])
    dynamodb.switch_version(
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
