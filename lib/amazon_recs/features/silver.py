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
    cutoff: str | None = None,
) -> DataFrame:
    """silver.interactions from review and event signals (``review_signals``,
    ``event_signals``): one row per pair (``pair_interactions``), integer ids, split.

    Implicit confidence grows with the weight; every signal is a positive one.
    """
    joined = pair_interactions(signals).join(user_ids, USER, how="inner").join(item_ids, ITEM, how="inner")
    return schemas.conform(
        with_split(joined, test_fraction, min_user, protocol=protocol, seed=seed, cutoff=cutoff),
        schemas.INTERACTIONS,
        "silver/interactions",
    )


# Real catalogues escape text once or twice (Amazon 2018: "Music &amp; Photography",
# "Maggiano&#39;s") and cut HTML mid-tag (a title that is only '<span class="a-size-').
_UNESCAPE = "org.apache.commons.text.StringEscapeUtils"  # in every Spark 3.5 distribution
_TAG = r"<[a-zA-Z/!][^<>]*>"  # a tag starts with a name, / or !: "3 < 5 mm > 2" is text
_CUT_TAG = r"<[a-zA-Z/!][^<>]*$"  # a tag the text ends inside of
_BLANKS = r"[\s\u00a0]+"  # Java's \s leaves out the no-break space &nbsp; decodes to
_SENTENCE = r"^(.{8,}?[.!?])(\s|$)"
TITLE_MAX_CHARS = 120


def unescape_html(c: Column) -> Column:
    """HTML entities decoded (named and numeric), twice for text escaped twice.

    A JVM method call, which Spark treats as non-deterministic: it is evaluated where
    it stands (no common-subexpression reuse, not inside an aggregate), so callers
    project it once into a column and work on that (``cleaned_products``)."""
    once = F.reflect(F.lit(_UNESCAPE), F.lit("unescapeHtml4"), c)
    # reflect() turns a null result into the text "null": nulls are kept out.
    return F.when(c.isNotNull(), F.reflect(F.lit(_UNESCAPE), F.lit("unescapeHtml4"), once))


def strip_markup(c: Column) -> Column:
    """HTML tags (and a tag cut off at the end) removed, white space folded and trimmed;
    empty becomes null."""
    no_tags = F.regexp_replace(F.regexp_replace(c, _TAG, " "), _CUT_TAG, " ")
    return F.nullif(F.trim(F.regexp_replace(no_tags, _BLANKS, " ")), F.lit(""))


def clean_text(c: Column | str) -> Column:
    """Entities decoded, then markup stripped (escaped markup, "&lt;b&gt;", is markup
    too). For one-off columns; a frame's text fields go through ``cleaned_products``."""
    return strip_markup(unescape_html(F.col(c) if isinstance(c, str) else c))


def _first_sentence(c: Column) -> Column:
    """The first sentence of a cleaned text, else its first TITLE_MAX_CHARS characters
    cut at a word."""
    sentence = F.regexp_extract(c, _SENTENCE, 1)
    short = F.when(F.length(c) <= TITLE_MAX_CHARS, c).otherwise(
        F.concat(F.regexp_extract(F.substring(c, 1, TITLE_MAX_CHARS), r"^(.*\S)\s", 1), F.lit("…"))
    )
    return F.when((sentence != "") & (F.length(sentence) <= TITLE_MAX_CHARS), sentence).otherwise(short)


def _words(name: str) -> Column:
    return F.concat_ws(" ", F.coalesce(F.col(name), F.array().cast("array<string>")))


# The text fields of bronze products as cleaning sees them (arrays joined by a space).
TEXT_FIELDS = {
    "title": lambda: F.col("title"),
    "brand": lambda: F.col("brand"),
    "description": lambda: _words("description"),
    "features": lambda: _words("features"),
    "first_feature": lambda: F.element_at(F.col("features"), 1),
    "categories": lambda: _words("categories"),
    "category": lambda: F.element_at(F.col("categories"), -1),
}
# Where a displayed title comes from, in this order: a title that is only markup (or
# missing) is never shown; the next field that has text is.
TITLE_SOURCES = ("title", "description", "features", "brand")


def cleaned_products(products: DataFrame) -> DataFrame:
    """``products`` with, per TEXT_FIELDS entry, ``_raw_<f>``, ``_decoded_<f>`` and the
    cleaned ``_clean_<f>``, and the displayed ``_title`` with its ``_title_source``:
    the cleaned title, else the first sentence of the description, else of the first
    feature, else the brand (null when none has text)."""
    raw = products.select("*", *[make().alias(f"_raw_{name}") for name, make in TEXT_FIELDS.items()])
    decoded = raw.select(
        "*", *[unescape_html(F.col(f"_raw_{n}")).alias(f"_decoded_{n}") for n in TEXT_FIELDS]
    )
    cleaned = decoded.select(
        "*", *[strip_markup(F.col(f"_decoded_{n}")).alias(f"_clean_{n}") for n in TEXT_FIELDS]
    )
    candidates = {
        "title": F.col("_clean_title"),
        "description": _first_sentence(F.col("_clean_description")),
        "features": _first_sentence(F.col("_clean_first_feature")),
        "brand": F.col("_clean_brand"),
    }
    source = F.lit(None).cast("string")
    for name in reversed(TITLE_SOURCES):
        source = F.when(candidates[name].isNotNull(), F.lit(name)).otherwise(source)
    return cleaned.select(
        "*", F.coalesce(*candidates.values()).alias("_title"), source.alias("_title_source")
    )


def text_cleaning(products: DataFrame) -> dict:
    """What cleaning did to bronze ``products``, per field: values with entities decoded,
    with markup removed, emptied by it (only markup), and the titles taken from another
    field (by field) or missing."""
    counts = []
    for name in ("title", "brand", "description", "features", "categories"):
        raw, decoded = F.col(f"_raw_{name}"), F.col(f"_decoded_{name}")
        counts += [
            F.sum((decoded != raw).cast("long")).alias(f"{name}.entities_decoded"),
            F.sum(decoded.rlike(f"{_TAG}|{_CUT_TAG}").cast("long")).alias(f"{name}.markup_removed"),
            F.sum(((F.trim(raw) != "") & F.col(f"_clean_{name}").isNull()).cast("long")).alias(
                f"{name}.only_markup"
            ),
        ]
    source = F.col("_title_source")
    counts += [F.sum((source == name).cast("long")).alias(f"title.from_{name}") for name in TITLE_SOURCES[1:]]
    counts.append(F.sum(source.isNull().cast("long")).alias("title.missing"))
    row = cleaned_products(products).agg(*counts).first()
    out: dict = {}
    for key, value in row.asDict().items():
        field, what = key.split(".")
        out.setdefault(field, {})[what] = int(value or 0)
    return out


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
    cleaned = cleaned_products(products).select(
        ITEM,
        F.col("_title").alias("title"),
        F.col("_clean_category").alias("category"),
        F.col("_clean_brand").alias("brand"),
        "price",
        F.concat_ws(
            " ",
            "_clean_title",
            "_clean_brand",
            "_clean_categories",
            "_clean_features",
            "_clean_description",
            clean_text(_words("tags")),
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
