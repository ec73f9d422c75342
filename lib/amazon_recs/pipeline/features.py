"""The features stage: bronze -> silver interactions, items, users, the append-only id
maps and the train/test split."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from amazon_recs import io, schemas
from amazon_recs.config import Config
from amazon_recs.errors import InputError
from amazon_recs.features import silver as fe
from amazon_recs.pipeline.base import stage
from amazon_recs.pipeline.ingest import EVENT_FILES_TABLE
from amazon_recs.schemas import ITEM, ITEM_IDX, SPLIT, USER, USER_IDX


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
    events = _existing(spark, config, "bronze/events")
    if events is None:
        events = spark.createDataFrame([], schema=schemas.BRONZE_EVENTS)
    if not reviews.take(1):
        raise InputError("bronze/reviews is empty: no review line was accepted; see bronze/rejects")

    # Users and items first seen in events get ids like any other.
    user_keys = reviews.select(USER).unionByName(events.select(USER))
    user_ids = fe.extend_id_map(_existing(spark, config, "silver/user_ids"), user_keys, USER, USER_IDX)
    item_keys = reviews.select(ITEM).unionByName(products.select(ITEM)).unionByName(events.select(ITEM))
    item_ids = fe.extend_id_map(_existing(spark, config, "silver/item_ids"), item_keys, ITEM, ITEM_IDX)
    # Append-only: existing ids are never rewritten, new keys are inserted.
    io.merge_table(spark, user_ids, config, "silver/user_ids", [USER])
    io.merge_table(spark, item_ids, config, "silver/item_ids", [ITEM])
    user_ids = io.read_table(spark, config, "silver/user_ids")
    item_ids = io.read_table(spark, config, "silver/item_ids")

    signals = fe.review_signals(reviews).unionByName(
        fe.event_signals(events, config.require("events.weights"))
    )
    interactions = fe.build_interactions(
        signals,
        user_ids,
        item_ids,
        config.require("split.test_fraction"),
        config.require("split.min_user_interactions"),
        protocol=config.require("split.protocol"),
        seed=config.require("split.seed"),
        cutoff=config.require("split.cutoff"),
    )
    io.overwrite_table(interactions, config, "silver/interactions")
    # What the interactions hold of the events: a model trained on them has seen these.
    io.overwrite_table(
        schemas.conform(events, schemas.SILVER_EVENTS, "silver/events"), config, "silver/events"
    )
    event_files = _existing(spark, config, EVENT_FILES_TABLE)
    if event_files is None:
        event_files = spark.createDataFrame([], schema=schemas.EVENT_FILES)
    io.overwrite_table(event_files, config, "silver/event_files")
    interactions = io.read_table(spark, config, "silver/interactions")
    io.overwrite_table(fe.build_items(products, item_ids, interactions, tags), config, "silver/items")
    io.overwrite_table(fe.build_users(interactions), config, "silver/users")
    counts = interactions.groupBy(SPLIT).count().collect()
    return {
        **{f"interactions_{r[SPLIT]}": r["count"] for r in counts},
        # Per text field: entities decoded, markup removed, titles taken from other fields.
        "text_cleaning": fe.text_cleaning(products),
        "events": io.read_table(spark, config, "silver/events").count(),
    }
