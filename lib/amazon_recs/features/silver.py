"""Bronze -> silver: interactions, items, users and the stable integer id maps."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs import schemas
from amazon_recs.errors import ConfigError
from amazon_recs.events import EVENT_TYPES, EXPLICIT_EVENTS
from amazon_recs.features.split import TEMPORAL, TEST, TRAIN, with_split
from amazon_recs.schemas import ITEM, ITEM_IDX, RATING, SPLIT, TS, USER, USER_IDX, WEIGHT

# A signal is one thing a user said or did about an item: a review, or an activity
# event. Per (user, item) the signals fold into one interaction (``pair_interactions``).
SIGNAL_COLUMNS = (USER, ITEM, RATING, WEIGHT, TS, "_explicit", "_tie")


def review_signals(reviews: DataFrame) -> DataFrame:
    """Reviews as signals: an opinion (explicit), weighing its rating."""
    return reviews.select(
        USER,
        ITEM,
        RATING,
        F.col(RATING).alias(WEIGHT),
        TS,
        F.lit(True).alias("_explicit"),
        F.col("asin").alias("_tie"),
    )


def event_signals(events: DataFrame, weights: Mapping[str, float]) -> DataFrame:
    """Activity events as signals: a rating event is an opinion weighing its rating (as a
    review); a purchase or a view is an act weighing ``weights[event_type]``.

    Raises:
        ConfigError: an event type has no weight.
    """
    missing = sorted(set(EVENT_TYPES) - set(EXPLICIT_EVENTS) - set(weights))
    if missing:
        raise ConfigError(f"events.weights has no weight for {', '.join(missing)}")
    explicit = F.col("event_type").isin(*EXPLICIT_EVENTS)
    weight = F.when(explicit, F.col(RATING))
    for event_type, value in sorted(weights.items()):
        weight = weight.when(F.col("event_type") == event_type, F.lit(float(value)))
    return events.select(
        USER,
        ITEM,
        F.when(explicit, F.col(RATING)).alias(RATING),
        weight.alias(WEIGHT),
        TS,
        explicit.alias("_explicit"),
        F.col("event_id").alias("_tie"),
    )


def pair_interactions(signals: DataFrame) -> DataFrame:
    """One row per (user, item) from its signals (``SIGNAL_COLUMNS``): what the user said
    outranks what they did.

    The latest opinion (review or rating event; at the same time the higher rating)
    sets rating and weight: a user who rated a product twice changed their mind. An
    act at or after it (a purchase, a view) can only raise the weight; a pair with
    no opinion takes its heaviest act, and its weight as the rating. ``ts`` is the
    pair's latest signal. Folding later signals onto a pair's row taken as an
    opinion (what ``refresh`` does) gives the same row as folding them all.
    """
    pair = Window.partitionBy(USER, ITEM)
    said_at = F.max(F.when(F.col("_explicit"), F.col(TS))).over(pair)
    opinion = F.max_by(F.struct(RATING, WEIGHT), F.when(F.col("_explicit"), F.struct(TS, RATING, "_tie")))
    act = F.when(
        ~F.col("_explicit") & (F.col("_said").isNull() | (F.col(TS) >= F.col("_said"))), F.col(WEIGHT)
    )
    folded = (
        signals.withColumn("_said", said_at)
        .groupBy(USER, ITEM)
        .agg(opinion.alias("_opinion"), F.max(act).alias("_act"), F.max(TS).alias(TS))
    )
    return folded.select(
        USER,
        ITEM,
        F.coalesce(F.col(f"_opinion.{RATING}"), F.col("_act")).alias(RATING),
        F.greatest(F.col(f"_opinion.{WEIGHT}"), F.col("_act")).alias(WEIGHT),
        TS,
    )


def latest_per_pair(reviews: DataFrame, col_user: str = USER, col_item: str = ITEM) -> DataFrame:
    """One row per (user, item) of reviews alone: the latest review wins; ties go to the
    higher rating (``pair_interactions`` of review signals)."""
    renamed = reviews.withColumnRenamed(col_user, USER).withColumnRenamed(col_item, ITEM)
    pairs = pair_interactions(review_signals(renamed))
    return pairs.select(F.col(USER).alias(col_user), F.col(ITEM).alias(col_item), RATING, TS)


def extend_id_map(existing: DataFrame | None, keys: DataFrame, col_key: str, col_idx: str) -> DataFrame:
    """Append ids for keys not yet in the map; ids already given never change.

    New keys get the next integers in key order, so the same input always gives
    the same ids. ALS needs int32 ids, hence integers rather than hashes.

    Args:
        existing: the current map (``col_key``, ``col_idx``), or None on the first run.
        keys: a frame with column ``col_key`` (duplicates and nulls allowed).

    Returns:
        The whole map, old rows unchanged plus the new keys.
    """
    distinct = keys.select(col_key).where(F.col(col_key).isNotNull()).distinct()
    if existing is None:
        new = distinct
        offset = F.lit(-1)
        old = None
    else:
        new = distinct.join(existing, col_key, how="left_anti")
        offset = F.lit(existing.agg(F.max(col_idx)).first()[0] if existing.take(1) else -1)
        old = existing.select(col_key, col_idx)
    numbered = number_in_order(new, col_key, col_idx).withColumn(
        col_idx, (offset + 1 + F.col(col_idx)).cast("int")
    )
    return numbered if old is None else old.unionByName(numbered)


ROW_BITS = 33  # monotonically_increasing_id(): partition index above bit 33, row within it below


def number_in_order(keys: DataFrame, col_key: str, col_idx: str) -> DataFrame:
    """Number distinct ``keys`` 0, 1, 2, ... in key order, across all partitions.

    A global ``row_number()`` window would pull every key onto one task. Here the
    keys are range-sorted in parallel, each partition counts its rows, and a
    partition's numbers start after the rows of the partitions before it: the
    driver sees one count per partition, never the keys.
    """
    ordered = (
        keys.orderBy(col_key)
        .withColumn("_id", F.monotonically_increasing_id())
        .select(
            col_key,
            F.shiftright("_id", ROW_BITS).alias("_part"),
            (F.col("_id") % (1 << ROW_BITS)).alias("_row"),
        )
        .cache()
    )
    counts = sorted((r["_part"], r["count"]) for r in ordered.groupBy("_part").count().collect())
    starts, total = [], 0
    for part, count in counts:
        starts.append((part, total))
        total += count
    spark = keys.sparkSession
    offsets = spark.createDataFrame(starts or [(0, 0)], "_part long, _start long")
    return ordered.join(F.broadcast(offsets), "_part", how="inner").select(
        col_key, (F.col("_start") + F.col("_row")).alias(col_idx)
    )


def build_interactions(
    signals: DataFrame,
    user_ids: DataFrame,
    item_ids: DataFrame,
    test_fraction: float,
    min_user: int,
    protocol: str = TEMPORAL,
    seed: int = 0,
) -> DataFrame:
    """silver.interactions from review and event signals (``review_signals``,
    ``event_signals``): one row per pair (``pair_interactions``), integer ids, split.

    Implicit confidence grows with the weight; every signal is a positive one.
    """
    joined = pair_interactions(signals).join(user_ids, USER, how="inner").join(item_ids, ITEM, how="inner")
    return schemas.conform(
        with_split(joined, test_fraction, min_user, protocol=protocol, seed=seed),
        schemas.INTERACTIONS,
        "silver/interactions",
    )


def clean_text(c: Column) -> Column:
    """Strip HTML tags and entities, fold white space, trim; empty becomes null."""
    no_tags = F.regexp_replace(c, r"<[^>]*>", " ")
    no_entities = F.regexp_replace(no_tags, r"&[a-zA-Z]+;|&#\d+;|&#[xX][0-9a-fA-F]+;", " ")
    folded = F.trim(F.regexp_replace(no_entities, r"\s+", " "))
    return F.when(folded != "", folded)


def _joined(c: Column) -> Column:
    return clean_text(F.concat_ws(" ", F.coalesce(c, F.array().cast("array<string>"))))


def build_items(
    products: DataFrame, item_ids: DataFrame, interactions: DataFrame, tags: DataFrame | None = None
) -> DataFrame:
    """silver.items: every known item, cleaned text, category and popularity.

    Text joins title, brand, categories, features, description and, where a tag
    file was ingested, the item's distinct tags (MovieLens-style).

    Items reviewed but missing from the metadata keep a row with
    ``has_metadata`` false; the content model skips them, ALS does not.
    """
    popularity = (
        interactions.filter(F.col(SPLIT) == TRAIN).groupBy(ITEM).agg(F.count(F.lit(1)).alias("popularity"))
    )
    products = products.withColumn("_has_metadata", F.lit(True))
    if tags is not None:
        item_tags = tags.groupBy(ITEM).agg(F.array_sort(F.collect_set("tag")).alias("tags"))
        products = products.join(item_tags, ITEM, how="full")
    else:
        products = products.withColumn("tags", F.lit(None).cast("array<string>"))
    cleaned = products.select(
        ITEM,
        clean_text("title").alias("title"),
        F.element_at(F.col("categories"), -1).alias("category"),
        clean_text("brand").alias("brand"),
        "price",
        F.concat_ws(
            " ",
            clean_text("title"),
            clean_text("brand"),
            _joined(F.col("categories")),
            _joined(F.col("features")),
            _joined(F.col("description")),
            _joined(F.col("tags")),
        ).alias("text"),
        F.coalesce("_has_metadata", F.lit(False)).alias("has_metadata"),
    )
    return (
        item_ids.join(cleaned, ITEM, how="left")
        .join(popularity, ITEM, how="left")
        .select(
            ITEM,
            ITEM_IDX,
            "title",
            "category",
            "brand",
            "price",
            F.when(F.col("text") != "", F.col("text")).alias("text"),
            F.coalesce("popularity", F.lit(0)).cast("long").alias("popularity"),
            F.coalesce("has_metadata", F.lit(False)).alias("has_metadata"),
        )
    )


def build_users(interactions: DataFrame) -> DataFrame:
    """silver.users: per user, interaction counts by split and activity span."""
    return interactions.groupBy(USER, USER_IDX).agg(
        F.sum((F.col(SPLIT) == TRAIN).cast("long")).alias("train_interactions"),
        F.sum((F.col(SPLIT) == TEST).cast("long")).alias("test_interactions"),
        F.min(TS).alias("first_ts"),
        F.max(TS).alias("last_ts"),
    )
