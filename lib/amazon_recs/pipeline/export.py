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

from amazon_recs import failpoints, io
from amazon_recs.aws import athena
from amazon_recs.config import Config
from amazon_recs.models import lists as rc
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import stage
from amazon_recs.schemas import ITEM, ITEM_IDX, MODEL, MODEL_VERSION, RANK, SCORE, USER
from amazon_recs.serving import dynamodb, interface, writer
from amazon_recs.serving.gold_tables import FALLBACK_TABLE, REFRESHED_TABLE, VERSIONED_TABLES, VERSIONS_TABLE
from amazon_recs.serving.validation import SERVED_MODELS
from amazon_recs.spark import session_conf

log = logging.getLogger(__name__)
SERVING_TABLE = "gold/user_recommendations"
# The most items whose titles are broadcast to every task (~100 bytes each: 50 MB).
BROADCAST_TITLES = 500_000
# How far back the replaced version's rows are looked for in the serving tables' history.
HISTORY_LOOKBACK = 200


def _latest_commit(spark: SparkSession, config: Config, name: str) -> int | None:
    path = io.table_path(config, name)
    return io.table_version(spark, config, name) if io.table_exists(spark, path) else None


@stage
def run_export(spark: SparkSession, config: Config) -> dict:
    """Serving layout: one row per (user, model) holding the ordered top-k with titles,
    and the popular list for users the version does not know; the Athena DDL beside
    the gold tables; and, when enabled, the DynamoDB serving store.

    Each gold table holds one partition per model version: this export replaces its
    version's partitions (a re-export of the same version included), never another's,
    so a reader of the version served until now reads it whole. Once everything is
    written, the version is recorded in ``gold/versions`` (what the gold-table reader
    serves), and the versions of all but the last ``export.keep_versions`` publishes
    are deleted from the gold tables.
    """
    version = versions.current_version(spark, config)
    recs = versions.read_lists(spark, config, version, "export")
    items = versions.read_input(spark, config, version, "silver/items").select(ITEM, "title", "category")
    # The commits holding the version served until now: its DynamoDB items get their TTL
    # from these rows once the new version is live.
    before = {name: _latest_commit(spark, config, name) for name in (SERVING_TABLE, FALLBACK_TABLE)}
    with session_conf(spark, SERVING_WRITE_CONF):
        path = io.write_version(serving_rows(recs, items), config, SERVING_TABLE, version, [MODEL])
    served = io.read_version(spark, config, SERVING_TABLE, version)
    # Lists refresh wrote under this version before a re-export of it are older than these.
    io.write_version(served.limit(0), config, REFRESHED_TABLE, version, [MODEL])
    io.write_version(popular_fallback(spark, config, version), config, FALLBACK_TABLE, version)
    ddl_path = f"{config.require('paths.warehouse').rstrip('/')}/gold/athena_ddl.sql"
    io.write_text(spark, ddl_path, athena.athena_ddl(config))
    summary = {"serving_table": path, "athena_ddl": ddl_path, "model_version": version}
    if config.require("export.dynamodb.enabled"):
        summary["dynamodb"] = publish(spark, config, served, version, before=before)
    summary["versions_kept"] = record_version(spark, config, version)
    return summary


def record_version(spark: SparkSession, config: Config, version: str) -> list[str]:
    """Append ``version`` to ``gold/versions`` (it is now the one readers serve), then
    delete from every gold table the versions of all but the last ``export.keep_versions``
    publishes; returns the versions kept, newest first."""
    row = spark.createDataFrame(
        [(version, datetime.now(tz=UTC))], "model_version string, published_at timestamp"
    )
    row.write.format("delta").mode("append").save(io.table_path(config, VERSIONS_TABLE))
    latest = (
        io.read_table(spark, config, VERSIONS_TABLE)
        .groupBy("model_version")
        .agg(F.max("published_at").alias("published_at"))
        .orderBy(F.desc("published_at"), F.desc("model_version"))
        .limit(max(1, int(config.require("export.keep_versions"))))
        .collect()
    )
    keep = [r["model_version"] for r in latest]
    for name in VERSIONED_TABLES:
        dropped = io.drop_versions(spark, config, name, keep)
        if dropped:
            log.info("%s: deleted the rows of replaced version(s) %s", name, ", ".join(dropped))
    return keep


def serving_rows(recs: DataFrame, items: DataFrame) -> DataFrame:
    """The serving layout of ``gold/recommendations`` rows: one row per (user, model) with
    the ordered top-k, titles and categories from ``items`` (item_id, title, category).

    Written under ``SERVING_WRITE_CONF``: grouped by (model_version, model, user), the
    order the table's partitions are written in."""
    return (
        with_titles(recs, items)
        .groupBy(MODEL_VERSION, MODEL, USER)
        .agg(
            F.sort_array(
                F.collect_list(F.struct("rank", ITEM, "title", "category", "score", "reason"))
            ).alias("items")
        )
        .select(USER, MODEL, MODEL_VERSION, "items")
    )


# The serving rows' write: the lists aggregated by sort, which keeps the order of its
# input, that of the table's partitions, so the write does not sort again. A hash
# aggregation of lists sorts its input anew once a task holds more than 128 users, and
# the write then sorts its output: at 10M reviews the stage took 418 s, now 344 s.
# (Smaller tasks, 250 instead of 16, spilled nothing but took 12% more time.)
SERVING_WRITE_CONF = {"spark.sql.execution.useObjectHashAggregateExec": "false"}


def with_titles(recs: DataFrame, items: DataFrame) -> DataFrame:
    """``recs`` with each item's title and category, arranged for a grouping by user.

    Up to ``BROADCAST_TITLES`` items, the rows are exchanged on the user alone (all the
    grouping needs) and the titles joined after the exchange from a broadcast table, so
    the shuffle carries ids and scores, not texts. A larger catalogue is joined as
    Spark plans it."""
    if items.count() > BROADCAST_TITLES:
        return recs.join(items, ITEM, how="left")
    return recs.repartition(USER).join(F.broadcast(items), ITEM, how="left")


def popular_fallback(spark: SparkSession, config: Config, version: str) -> DataFrame:
    """The version's k most popular products with their reasons: what an unknown user
    is shown, from DynamoDB or from the gold tables alike."""
    k = config.require("recommend.k")
    popularity = spark.read.format("delta").load(f"{versions.model_dir(config, version)}/popularity")
    items = versions.read_input(spark, config, version, "silver/items")
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


def fallback_items(spark: SparkSession, config: Config, version: str) -> list[dict]:
    """``version``'s ``gold/popular_fallback`` in rank order, in the serving layout's fields."""
    rows = (
        io.read_version(spark, config, FALLBACK_TABLE, version).orderBy(RANK).drop("model_version").collect()
    )
    return [r.asDict() for r in rows]


def publish(
    spark: SparkSession,
    config: Config,
    served: DataFrame,
    version: str,
    client_factory=dynamodb.make_writer_client,
    before: dict[str, int | None] | None = None,
) -> dict:
    """Write ``version``'s lists of the served models to DynamoDB from the executors, then
    switch readers over, then let the version it replaced expire.

    Each of ``export.dynamodb.max_concurrency`` partitions writes its rows with
    one client; only counts come back to the driver. The new version's items
    carry no TTL: the live version never expires, however long until the next
    publish. The pointer moves last, and only from the version it was when the
    export started. Then the replaced version's items (read from ``before``: the
    commits of the serving tables that held it) are written again with
    ``expires_at`` = now + ``export.dynamodb.replaced_ttl_hours``, time for
    readers that read the old pointer (and for a rollback) before TTL removes them.
    """
    # Only what the API serves: the random floor is for evaluation (and Athena).
    served = served.filter(F.col(MODEL).isin(*SERVED_MODELS))
    settings = dynamodb.StoreSettings.from_config(config)
    client = client_factory(settings)
    if config.require("export.dynamodb.create_table"):
        dynamodb.ensure_table(client, settings.table)
    previous = dynamodb.current_version(client, settings.table)
    previous_version = previous["model_version"] if previous else None
    if previous_version == version:
        # Readers are on these very lists already (a version is immutable), and refresh
        # may have replaced some users' lists under it since: rewriting would undo that.
        log.info("version %s is already live in DynamoDB %s: nothing rewritten", version, settings.table)
        return {
            "table": settings.table,
            "model_version": version,
            "previous_version": previous_version,
            "already_live": True,
            "lists": 0,
        }
    now = time.time()
    generated_at = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds")
    stats = write_lists(config, served, settings, version, generated_at, None, client_factory)
    expected = served.count()
    if stats.items != expected:
        raise interface.ServingError(f"wrote {stats.items} lists to DynamoDB but the version has {expected}")
    fallback = writer.list_item(
        dynamodb.FALLBACK_PK, version, fallback_items(spark, config, version), generated_at, None
    )
    stats += writer.write_items(client, settings, [fallback])
    failpoints.reached("export.before_switch")
    dynamodb.switch_version(client, settings.table, version, generated_at, previous_version)
    log.info("published version %s to DynamoDB %s: %s", version, settings.table, stats)
    expired = 0
    if previous_version is not None and previous_version != version:
        expires_at = int(time.time() + config.require("export.dynamodb.replaced_ttl_hours") * 3600)
        expired = expire_version(
            spark,
            config,
            previous_version,
            previous["generated_at"],
            before or {},
            expires_at,
            client_factory,
        )
    return {
        "table": settings.table,
        "model_version": version,
        "previous_version": previous_version,
        "lists": stats.items - 1,
        "batches": stats.batches,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "unprocessed_retried": stats.unprocessed,
        "previous_lists_expiring": expired,
    }


def write_lists(
    config, rows: DataFrame, settings, version, generated_at, expires_at, client_factory
) -> writer.WriteStats:
    """Rows (user_id, model, items) as DynamoDB list items, written from
    ``export.dynamodb.max_concurrency`` partitions; the summed write counts."""
    write = partial(
        writer.write_partition,
        settings=settings,
        version=version,
        generated_at=generated_at,
        expires_at=expires_at,
        client_factory=client_factory,
    )
    rows = rows.select(USER, MODEL, "items").repartition(config.require("export.dynamodb.max_concurrency"))
    return sum((writer.WriteStats(*t) for t in rows.rdd.mapPartitions(write).collect()), writer.WriteStats())


def _commit_holding(
    spark: SparkSession, config: Config, name: str, version: str, start: int | None
) -> int | None:
    """The latest commit of table ``name``, at most ``start``, holding ``version``'s rows.

    Normally ``start`` itself: the commit the export found before overwriting. After a
    run killed between its overwrite and the pointer switch, the re-run finds its own
    version's rows there, and the replaced version's one overwrite (and any refresh
    MERGEs) earlier. At most ``HISTORY_LOOKBACK`` commits are read, one row each; a
    commit whose files were vacuumed ends the search.
    """
    if start is None:
        return None
    for commit in range(start, max(-1, start - HISTORY_LOOKBACK), -1):
        try:
            rows = io.read_table(spark, config, name, commit).filter(F.col("model_version") == version)
            if rows.limit(1).count():
                return commit
        except Exception as exc:  # a vacuumed commit: Spark's error types vary by cause
            log.info("stopped looking for version %s in %s at commit %d: %s", version, name, commit, exc)
            return None
    return None


def expire_version(
    spark: SparkSession,
    config: Config,
    version: str,
    generated_at: str,
    before: dict[str, int | None],
    expires_at: int,
    client_factory=dynamodb.make_writer_client,
) -> int:
    """Give the DynamoDB items of a replaced ``version`` their TTL, by writing them again
    from the serving tables' commits that held it. Returns the lists written (0 with a
    warning when those commits are gone or held another version: its items then keep
    no TTL and stay until deleted by hand)."""
    commit = _commit_holding(spark, config, SERVING_TABLE, version, before.get(SERVING_TABLE))
    rows = None
    if commit is not None:
        old = io.read_table(spark, config, SERVING_TABLE, commit)
        rows = old.filter((F.col("model_version") == version) & F.col(MODEL).isin(*SERVED_MODELS))
    if rows is None:
        log.warning(
            "the lists of the replaced version %s are not in %s's history: their DynamoDB items keep no TTL",
            version,
            SERVING_TABLE,
        )
        return 0
    settings = dynamodb.StoreSettings.from_config(config)
    stats = write_lists(config, rows, settings, version, generated_at, expires_at, client_factory)
    fallback_commit = _commit_holding(spark, config, FALLBACK_TABLE, version, before.get(FALLBACK_TABLE))
    if fallback_commit is not None:
        items = io.read_table(spark, config, FALLBACK_TABLE, fallback_commit)
        items = [r.asDict() for r in items.filter(F.col("model_version") == version).orderBy(RANK).collect()]
        if items:
            for item in items:
                item.pop("model_version", None)
            fallback = writer.list_item(dynamodb.FALLBACK_PK, version, items, generated_at, expires_at)
            writer.write_items(client_factory(settings), settings, [fallback])
    log.info("the %d lists of replaced version %s expire at %d", stats.items, version, expires_at)
    return stats.items
