"""The refresh stage: fresh lists, between batch runs, for the users who acted.

The nightly run retrains everything; ``refresh`` is the cheap step between two
runs. It reads the activity event files (``input.events``) the current model
version has not seen (not in its ``silver/event_files``) with ingest's parser (the
same accepted, rejected and duplicate rules), keeps the events the version was not
trained on (not in ``silver/events`` at the commit the version was trained on),
and recomputes every model's list for only the users they name:

- each user's seen items are their training interactions in the version plus
  the new events, folded per (user, item) as the features stage folds them;
- ALS: the user's factors solved against the version's fixed item factors
  (``models.fold_in``), with the version's confidence and regularisation, so a
  user the model has never seen gets personal lists from their first events;
- content, popularity, the random floor and the hybrid: their usual scoring
  (``models.user_lists``), with the version's tuned weights.

The item-sized parts of every model (``user_lists.Catalogue``) are the recommend
stage's, saved beside the version's models (``versions.save_catalogue``) and mapped
by the tasks as they are; only for a version whose recommend stage saved none are
they collected again from the model parts (five Spark queries, ~10 s at 1M reviews).

The lists are published under the current version: into ``gold/refreshed_recommendations``
(one MERGE into a table of the refreshed lists alone, which readers of the gold tables
consult before ``gold/user_recommendations``: rewriting every user's lists for a
thousand users would cost more than the rest of the refresh) and, with
``export.dynamodb.enabled``, into DynamoDB, one item per (user, model) replaced
whole (a reader sees the old list or the new one). Both must already hold the
current version (the export ran for it). Each refresh appends what it did to
``gold/refresh_log``. Events stay where they are: the next full run ingests them.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pyspark import Broadcast
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from amazon_recs import io, schemas
from amazon_recs.config import Config
from amazon_recs.errors import StageOrderError
from amazon_recs.features import silver as fe
from amazon_recs.features.split import TRAIN
from amazon_recs.ingest import sources as ig
from amazon_recs.models import lists as rc
from amazon_recs.models import user_lists
from amazon_recs.models.fold_in import fold_in
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.base import progress, stage
from amazon_recs.pipeline.export import serving_rows, write_lists
from amazon_recs.pipeline.ingest import unread_event_files
from amazon_recs.pipeline.recommend import als_half_trust, als_search, hybrid_weights, item_knn_neighbours
from amazon_recs.schemas import (
    ITEM,
    ITEM_IDX,
    MODEL,
    MODEL_VERSION,
    RATING,
    SPLIT,
    TS,
    USER,
    USER_IDX,
    WEIGHT,
)
from amazon_recs.serving import dynamodb
from amazon_recs.serving.gold_tables import REFRESHED_TABLE, VERSIONS_TABLE
from amazon_recs.serving.validation import SERVED_MODELS
from amazon_recs.spark import MappedShare, share

REFRESH_LOG = "gold/refresh_log"
# Up to this many acting users, ALS scores every item (an exact search) instead of
# going through the inverted file: 100k users x 50k items is a second of BLAS. Above,
# the saved catalogue's index (the probe the batch run calibrated) is searched.
REFRESH_EXACT_MAX_USERS = 100_000
NEW_USER = -1  # the user_idx of a user the version does not know (never written to a table)


@stage
def run_refresh(spark: SparkSession, config: Config) -> dict:
    started = time.perf_counter()
    refresh_id = uuid.uuid4().hex[:12]
    version = versions.current_version(spark, config)
    info = versions.model_info(spark, config, version)
    served_version = _check_served(spark, config, version)
    events, read = new_events(spark, config, version, info)
    summary = {"refresh_id": refresh_id, "model_version": version, **read}
    if not summary["events_new"]:
        progress(f"no events since version {version} was trained: nothing to refresh")
        return _logged(spark, config, {**summary, "users": 0, "new_users": 0, "lists": 0}, started)

    progress(f"{summary['events_new']:,} new events read in {time.perf_counter() - started:.1f}s")
    seed = config.require("split.seed")
    k, n = config.require("recommend.k"), config.require("recommend.candidates")
    step = time.perf_counter()
    items = versions.read_input(spark, config, version, "silver/items", info)
    item_ids = versions.read_input(spark, config, version, "silver/item_ids", info)
    users = acting_users(spark, config, version, info, events, item_ids, seed).cache()
    counts = users.agg(F.count(F.lit(1)), F.sum((F.col(USER_IDX) == NEW_USER).cast("long"))).first()
    progress(
        f"{counts[0]:,} users acted since version {version} ({counts[1] or 0:,} new to it); "
        f"their histories in {time.perf_counter() - step:.1f}s"
    )
    step = time.perf_counter()
    exact = counts[0] <= REFRESH_EXACT_MAX_USERS
    catalogue = versions.share_catalogue(spark, config, version)
    summary["catalogue"] = "saved" if catalogue is not None else "collected"
    if catalogue is None:  # a version whose recommend stage saved none
        catalogue = share(spark, _catalogue(spark, config, version, items, seed, n, users, exact))
    progress(f"catalogue ({summary['catalogue']}) in {time.perf_counter() - step:.1f}s")
    als = _als_params(spark, config, version, info)
    lists = refreshed_lists(users, catalogue, k, n, hybrid_weights(spark, config, version), als, exact)

    step = time.perf_counter()
    recs = rc.to_gold(rc.with_reason(lists, items), version, item_ids)
    rows = serving_rows(recs, items.select(ITEM, "title", "category")).cache()
    summary.update(users=counts[0], new_users=counts[1] or 0, lists=rows.count())
    progress(f"{summary['lists']:,} lists in {time.perf_counter() - step:.1f}s")
    step = time.perf_counter()
    io.merge_table(
        spark, rows, config, REFRESHED_TABLE, [MODEL_VERSION, USER, MODEL], update_when_changed="items"
    )
    progress(f"merged into {REFRESHED_TABLE} in {time.perf_counter() - step:.1f}s")
    if served_version is not None:
        step = time.perf_counter()
        written = summary["dynamodb_lists"] = publish_lists(config, rows, served_version)
        progress(f"{written:,} lists written to DynamoDB in {time.perf_counter() - step:.1f}s")
    rows.unpersist()
    users.unpersist()
    return _logged(spark, config, summary, started)


def _check_served(spark: SparkSession, config: Config, version: str) -> str | None:
    """The version DynamoDB serves (None when publishing is off); both it and the serving
    table must be ``version``: refreshed lists are written under the version they came from.

    Raises:
        StageOrderError: the export has not run for ``version``.
    """
    path = io.table_path(config, VERSIONS_TABLE)
    # The version the export published last (the gold tables keep a few: one partition each).
    latest = (
        io.read_table(spark, config, VERSIONS_TABLE)
        .orderBy(F.desc("published_at"))
        .select(MODEL_VERSION)
        .first()
        if io.table_exists(spark, path)
        else None
    )
    if latest is None or latest[0] != version:
        raise StageOrderError(
            f"the gold tables serve version {latest[0] if latest else 'none'} ({VERSIONS_TABLE}), not the "
            f"current version {version}: run the export stage before refresh"
        )
    if not config.require("export.dynamodb.enabled"):
        return None
    settings = dynamodb.StoreSettings.from_config(config)
    pointer = dynamodb.current_version(dynamodb.make_client(settings), settings.table)
    if pointer is None or pointer["model_version"] != version:
        served = pointer["model_version"] if pointer else "none"
        raise StageOrderError(
            f"DynamoDB table {settings.table} serves version {served}, not the current version {version}: "
            "run the export stage before refresh"
        )
    return version


def new_events(spark: SparkSession, config: Config, version: str, info: dict) -> tuple[DataFrame, dict]:
    """The accepted events the version was not trained on, one per event id, and the counts:
    every event line read is accepted, rejected (the next ingest quarantines it with its
    reason) or a duplicate.

    Only the event files the version has not seen are read: those not in its
    ``silver/event_files`` as they are now (same path and size), and only the day
    folders from shortly before the newest it had are listed
    (``ingest.unread_event_files``), so a refresh reads what arrived since the
    version's features run, not every event file ever written.
    """
    listed, files, since = unread_event_files(spark, config, seen_event_files(spark, config, info))
    counts = {
        "event_files": len(listed),
        "event_files_read": len(files),
        "events_read": 0,
        "events_rejected": 0,
        "events_duplicate": 0,
    }
    if since is not None:
        progress(f"event folders from {since} on listed: {len(listed):,} files, {len(files):,} not seen")
    if not files:
        return spark.createDataFrame([], schemas.BRONZE_EVENTS), {**counts, "events_new": 0}
    accepted, _, log = ig.ingest_source(spark, config, "events", files, f"refresh-{version}")
    totals = log.agg(*[F.sum(c).alias(c) for c in ("lines_read", "rejected", "duplicates")]).first()
    seen = "silver/events"
    if seen in info.get("inputs", {}):
        trained = io.read_table(spark, config, seen, info["inputs"][seen]).select("event_id")
        accepted = accepted.join(trained, "event_id", how="left_anti")
    accepted = accepted.cache()
    counts.update(
        events_read=int(totals["lines_read"] or 0),
        events_rejected=int(totals["rejected"] or 0),
        events_duplicate=int(totals["duplicates"] or 0),
        events_new=accepted.count(),
    )
    return accepted, counts


def seen_event_files(spark: SparkSession, config: Config, info: dict) -> DataFrame | None:
    """The event files the version's features run had read whole (``silver/event_files``
    at the commit the version recorded); None for a version from before they were recorded."""
    seen = "silver/event_files"
    return (
        io.read_table(spark, config, seen, info["inputs"][seen]) if seen in info.get("inputs", {}) else None
    )


def acting_users(
    spark: SparkSession,
    config: Config,
    version: str,
    info: dict,
    events: DataFrame,
    item_ids: DataFrame,
    seed: int,
) -> DataFrame:
    """One row per user with new events, as ``user_lists.per_user`` makes them: their
    training interactions in the version plus the events, folded per (user, item) by
    ``features.silver.pair_interactions`` (the training row counts as the pair's opinion
    so far). A user the version does not know has ``user_idx`` NEW_USER; events on
    items it does not know are left out (the next run gives those items ids)."""
    user_ids = versions.read_input(spark, config, version, "silver/user_ids", info)
    interactions = versions.read_input(spark, config, version, "silver/interactions", info)
    acting = events.select(USER).distinct()
    history = (
        interactions.filter(F.col(SPLIT) == TRAIN)
        .join(acting, USER, how="left_semi")
        .select(
            USER,
            ITEM,
            F.col(WEIGHT).alias(RATING),
            WEIGHT,
            TS,
            F.lit(True).alias("_explicit"),
            F.lit("").alias("_tie"),
        )
    )
    signals = history.unionByName(fe.event_signals(events, config.require("events.weights")))
    pairs = fe.pair_interactions(signals).join(F.broadcast(item_ids), ITEM, how="inner")
    seen = pairs.groupBy(USER).agg(
        F.sort_array(F.collect_list(F.struct(ITEM_IDX, F.col(WEIGHT).cast("double").alias(WEIGHT)))).alias(
            "_s"
        )
    )
    known = F.col(USER_IDX).isNotNull()
    return (
        acting.join(user_ids, USER, how="left")
        .join(seen, USER, how="left")
        .select(
            USER,
            F.coalesce(USER_IDX, F.lit(NEW_USER)).cast("int").alias(USER_IDX),
            F.lit(None).cast("array<float>").alias(user_lists.FACTORS),
            F.coalesce(F.col(f"_s.{ITEM_IDX}"), F.array().cast("array<int>")).alias(user_lists.SEEN_ITEMS),
            F.coalesce(F.col(f"_s.{WEIGHT}"), F.array().cast("array<double>")).alias(user_lists.SEEN_WEIGHTS),
            F.when(known, F.xxhash64(F.lit(seed), USER_IDX))
            .otherwise(F.xxhash64(F.lit(seed), USER))
            .alias(user_lists.START),
        )
    )


def refreshed_lists(
    users: DataFrame,
    catalogue: Broadcast | MappedShare,
    k: int,
    n: int,
    weights: dict,
    als: dict,
    exact: bool = True,
) -> DataFrame:
    """Every model's list for ``users`` (``acting_users``), ALS factors folded in per batch,
    from the shared ``catalogue``; ``exact``: ALS scores every item, whatever index it has."""
    weights = {m: float(weights.get(m, 0.0)) for m in user_lists.COMPONENTS}
    reg_param, alpha = float(als["reg_param"]), float(als["alpha"])

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        shared = catalogue.value
        if exact:
            shared = dataclasses.replace(shared, als_index=None)
        factors64 = shared.als_factors.astype(np.float64)
        gram = factors64.T @ factors64
        for batch in batches:
            if len(batch):
                batch[user_lists.FACTORS] = folded_factors(batch, shared, reg_param, alpha, gram)
                out, _ = user_lists.lists_for_batch(batch, shared, k, n, weights, user_lists.BLOCK_FLOATS)
                yield out

    # A batch has a fixed cost (every item scored by popularity, the random walk, ...), so
    # the few acting users go in one partition per core, not one per shuffle partition.
    cores = max(1, users.sparkSession.sparkContext.defaultParallelism)
    return users.coalesce(cores).mapInPandas(run, user_lists.LIST_SCHEMA)


def folded_factors(
    batch: pd.DataFrame, cat: user_lists.Catalogue, reg_param: float, alpha: float, gram: np.ndarray
) -> list:
    """Each user's ALS factors from their seen items with item factors (None without any)."""
    rows, places, weights = user_lists.seen_entries(batch, cat)
    cols = cat.als_column[places]
    has_factors = cols != user_lists.NO_ITEM
    rows, cols, weights = rows[has_factors], cols[has_factors], weights[has_factors]
    factors = fold_in(cat.als_factors, rows, cols, weights, len(batch), reg_param, alpha, gram)
    has = np.bincount(rows, minlength=len(batch)) > 0
    return [factors[i] if has[i] else None for i in range(len(batch))]


def publish_lists(config: Config, rows: DataFrame, version: str) -> int:
    """The refreshed lists of the served models into DynamoDB under ``version``, from the
    executors; each item replaces one list whole. Returns the items written."""
    settings = dynamodb.StoreSettings.from_config(config)
    generated_at = datetime.now(tz=UTC).isoformat(timespec="seconds")
    served = rows.filter(F.col(MODEL).isin(*SERVED_MODELS))
    return write_lists(
        config, served, settings, version, generated_at, None, dynamodb.make_writer_client
    ).items


def _catalogue(
    spark, config, version, items: DataFrame, seed, n, users: DataFrame, exact: bool
) -> user_lists.Catalogue:
    """The version's catalogue for the acting ``users``, collected, for a version whose
    recommend stage saved none: the content and item-kNN neighbours of the items they
    have seen only (a user's scores come from those alone; 1.5M content rows at 1M
    reviews otherwise), and, when ``exact``, no ALS index (cheaper than building the
    batch run's)."""
    from pyspark.ml.recommendation import ALSModel

    src = versions.model_dir(config, version)
    search = als_search(config)
    if exact:
        search = dataclasses.replace(search, method="exact")
    seen = users.select(F.explode(user_lists.SEEN_ITEMS).alias(ITEM_IDX)).distinct()
    neighbours = spark.read.format("delta").load(f"{src}/item_neighbours")
    item_knn = item_knn_neighbours(spark, src)
    return user_lists.catalogue(
        items,
        ALSModel.load(f"{src}/als").itemFactors,
        neighbours.join(F.broadcast(seen), ITEM_IDX, "left_semi"),
        spark.read.format("delta").load(f"{src}/popularity"),
        seed,
        als_half_trust(spark, config, version),
        search,
        n,
        None if item_knn is None else item_knn.join(F.broadcast(seen), ITEM_IDX, "left_semi"),
    )


def _als_params(spark, config, version, info) -> dict:
    """The confidence and regularisation the version's ALS was fitted with: recorded in
    its model_info, else tuned, else configured."""
    if "als_params" in info:
        return info["als_params"]
    tuned = (versions.tuning(spark, config, version) or {}).get("als", {})
    return {key: tuned.get(key, config.require(f"als.{key}")) for key in ("reg_param", "alpha")}


def _logged(spark: SparkSession, config: Config, summary: dict, started: float) -> dict:
    """``summary`` with its seconds, appended as one row to ``gold/refresh_log``."""
    summary["seconds"] = round(time.perf_counter() - started, 2)
    row = {**summary, "refreshed_at": datetime.now(tz=UTC).replace(tzinfo=None)}
    fields = REFRESH_LOG_SCHEMA.fields
    frame = spark.createDataFrame([tuple(row.get(f.name) for f in fields)], REFRESH_LOG_SCHEMA)
    # mergeSchema: a log begun before a column existed takes it on, older rows null.
    frame.write.format("delta").mode("append").option("mergeSchema", "true").save(
        io.table_path(config, REFRESH_LOG)
    )
    return summary


REFRESH_LOG_SCHEMA = T.StructType(
    [T.StructField(name, T.StringType()) for name in ("refresh_id", "model_version")]
    + [T.StructField("refreshed_at", T.TimestampType())]
    + [
        T.StructField(name, T.LongType())
        for name in (
            "event_files",
            "event_files_read",
            "events_read",
            "events_rejected",
            "events_duplicate",
            "events_new",
            "users",
            "new_users",
            "lists",
            "dynamodb_lists",
        )
    ]
    + [T.StructField("seconds", T.DoubleType())]
)
