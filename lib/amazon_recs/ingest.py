"""Ingest: raw JSON lines -> bronze.reviews, bronze.products, bronze.rejects, bronze.ingest_log.

Every input line ends up in exactly one place: an accepted row, a reject row
with its reason, or the blank-line count; the ingest log reconciles them per
file. Tables are merged on natural keys, so re-ingesting the same files changes
no row.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from amazon_recs import io, schemas
from amazon_recs.config import Config
from amazon_recs.errors import InputError
from amazon_recs.schemas import ITEM, RATING, TS, USER

CORRUPT = "_corrupt"
REASON = "reason"
STATUS = "status"

# Amazon Reviews 2023. Scalars are read as strings and cast by us, so a value of
# the wrong type becomes a reject with a reason instead of a silent null.
REVIEWS_2023_RAW = T.StructType(
    [
        T.StructField(name, T.StringType())
        for name in (
            "user_id", "asin", "parent_asin", "rating", "timestamp", "title", "text",
            "verified_purchase", "helpful_vote",
        )
    ]
    + [T.StructField(CORRUPT, T.StringType())]
)

PRODUCTS_2023_RAW = T.StructType(
    [
        T.StructField("parent_asin", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("features", T.ArrayType(T.StringType())),
        T.StructField("description", T.ArrayType(T.StringType())),
        T.StructField("categories", T.ArrayType(T.StringType())),
        T.StructField("main_category", T.StringType()),
        T.StructField("store", T.StringType()),
        T.StructField("price", T.StringType()),
        T.StructField(CORRUPT, T.StringType()),
    ]
)

# The largest epoch milliseconds a Spark timestamp (microseconds in a long) can hold.
MAX_TS_MS = (2**63 - 1) // 1000

REVIEW_KEY = [USER, "asin", TS]
PRODUCT_KEY = [ITEM]


@dataclass(frozen=True)
class IngestResult:
    run_id: str
    log: list[dict]


def parse_json_lines(lines: DataFrame, raw_schema: T.StructType) -> DataFrame:
    """Parse ``value`` as a JSON object into column ``j``; malformed lines keep ``j._corrupt``."""
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    return lines.withColumn("j", F.from_json("value", raw_schema, options))


def _blank(value: Column) -> Column:
    # Any white space, tabs and a stray \r from Windows line ends included.
    return value.rlike(r"^\s*$")


def _not_an_object(value: Column) -> Column:
    return ~value.rlike(r"^\s*\{")


def _missing(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def with_review_status(parsed: DataFrame, config: Config) -> DataFrame:
    """Add ``status`` (accepted / rejected / blank) and ``reason`` to parsed review lines."""
    lo, hi = config.require("input.rating_min"), config.require("input.rating_max")
    j = F.col("j")
    rating = j["rating"].cast("double")
    ts_ms = j["timestamp"].cast("long")
    reason = (
        F.when(_blank(F.col("value")), F.lit(None))
        .when(_not_an_object(F.col("value")), F.lit("not a JSON object"))
        .when(j[CORRUPT].isNotNull(), F.lit("malformed JSON"))
        .when(_missing(j["user_id"]), F.lit("missing user id"))
        .when(_missing(_item_column(j, config)), F.lit("missing item id"))
        .when(j["rating"].isNull(), F.lit("missing rating"))
        .when(rating.isNull(), F.lit("rating is not a number"))
        .when((rating < lo) | (rating > hi), F.lit(f"rating outside [{lo:g}, {hi:g}]"))
        .when(j["timestamp"].isNull(), F.lit("missing timestamp"))
        .when(ts_ms.isNull() | (ts_ms <= 0), F.lit("timestamp is not a positive integer"))
        # timestamp_millis throws on overflow, which would fail the whole ingest.
        .when(ts_ms > MAX_TS_MS, F.lit("timestamp out of range"))
    )
    return _with_status(parsed, reason)


def with_product_status(parsed: DataFrame) -> DataFrame:
    """Add ``status`` and ``reason`` to parsed product metadata lines."""
    j = F.col("j")
    reason = (
        F.when(_blank(F.col("value")), F.lit(None))
        .when(_not_an_object(F.col("value")), F.lit("not a JSON object"))
        .when(j[CORRUPT].isNotNull(), F.lit("malformed JSON"))
        .when(_missing(j["parent_asin"]), F.lit("missing item id"))
    )
    return _with_status(parsed, reason)


def _with_status(parsed: DataFrame, reason: Column) -> DataFrame:
    return parsed.withColumn(REASON, reason).withColumn(
        STATUS,
        F.when(_blank(F.col("value")), "blank")
        .when(F.col(REASON).isNotNull(), "rejected")
        .otherwise("accepted"),
    )


def _item_column(j: Column, config: Config) -> Column:
    # parent_asin folds a product's variants together; fall back to asin where
    # a line has none.
    if config.require("input.item_key") == "parent_asin":
        return F.coalesce(F.nullif(F.trim(j["parent_asin"]), F.lit("")), j["asin"])
    return j["asin"]


def to_bronze_reviews(statused: DataFrame, config: Config, run_id: str) -> DataFrame:
    """Accepted review lines in the canonical bronze schema, unique on the natural key."""
    j = F.col("j")
    rows = statused.filter(F.col(STATUS) == "accepted").select(
        F.trim(j["user_id"]).alias(USER),
        F.trim(_item_column(j, config)).alias(ITEM),
        F.trim(j["asin"]).alias("asin"),
        j["rating"].cast("double").alias(RATING),
        F.timestamp_millis(j["timestamp"].cast("long")).alias(TS),
        j["title"].alias("review_title"),
        j["text"].alias("review_text"),
        (F.lower(j["verified_purchase"]) == "true").alias("verified"),
        j["helpful_vote"].cast("int").alias("helpful_votes"),
        "source_file",
        "line_number",
        F.lit(run_id).alias("ingest_run_id"),
    )
    return schemas.conform(_first_per_key(rows, REVIEW_KEY), schemas.BRONZE_REVIEWS, "bronze/reviews")


def to_bronze_products(statused: DataFrame, run_id: str) -> DataFrame:
    """Accepted product lines in the canonical bronze schema, one row per item."""
    j = F.col("j")
    price = F.regexp_extract(j["price"], r"(\d+(?:\.\d+)?)", 1)
    categories = F.coalesce(j["categories"], F.array().cast("array<string>"))
    rows = statused.filter(F.col(STATUS) == "accepted").select(
        F.trim(j["parent_asin"]).alias(ITEM),
        j["title"].alias("title"),
        j["description"].alias("description"),
        j["features"].alias("features"),
        F.when(F.size(categories) > 0, categories)
        .otherwise(F.array(j["main_category"]))
        .alias("categories"),
        j["store"].alias("brand"),
        F.when(price != "", price.cast("double")).alias("price"),
        "source_file",
        "line_number",
        F.lit(run_id).alias("ingest_run_id"),
        F.sha2("value", 256).alias("record_hash"),
    )
    return schemas.conform(_first_per_key(rows, PRODUCT_KEY), schemas.BRONZE_PRODUCTS, "bronze/products")


def _first_per_key(rows: DataFrame, key: list[str]) -> DataFrame:
    # The first occurrence (by file, then line) wins, deterministically.
    first = Window.partitionBy(*key).orderBy("source_file", "line_number")
    return rows.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")


def to_rejects(statused: DataFrame, kind: str, run_id: str, max_chars: int) -> DataFrame:
    """Rejected lines with the reason, the raw text cut to ``max_chars``."""
    rows = statused.filter(F.col(STATUS) == "rejected").select(
        F.lit(kind).alias("kind"),
        "source_file",
        "line_number",
        F.substring("value", 1, max_chars).alias("raw"),
        F.col(REASON).alias("reason"),
        F.lit(run_id).alias("ingest_run_id"),
    )
    return schemas.conform(rows, schemas.REJECTS, "bronze/rejects")


def reconcile(statused: DataFrame, files: list[io.InputFile], kind: str, run_id: str) -> DataFrame:
    """Per input file: lines read = accepted + rejected + blank, with duplicate keys counted.

    Files with no lines at all (zero-byte, or empty after decompression) are
    listed with zeros rather than missing from the log.
    """
    spark = statused.sparkSession
    counts = statused.groupBy("source_file").agg(
        F.count(F.lit(1)).alias("lines_read"),
        F.sum((F.col(STATUS) == "accepted").cast("long")).alias("accepted"),
        F.sum((F.col(STATUS) == "rejected").cast("long")).alias("rejected"),
        F.sum((F.col(STATUS) == "blank").cast("long")).alias("blank"),
    )
    listed = spark.createDataFrame([(f.uri, f.size) for f in files], "source_file string, bytes long")
    return (
        listed.join(counts, "source_file", how="left")
        .fillna(0, ["lines_read", "accepted", "rejected", "blank"])
        .select(
            F.lit(run_id).alias("ingest_run_id"),
            F.lit(kind).alias("kind"),
            "source_file",
            "bytes",
            "lines_read",
            "accepted",
            "rejected",
            "blank",
        )
    )


def check_reject_rate(log_rows: list[dict], rejects: DataFrame, max_rate: float) -> None:
    """Fail with the file and its top reasons when too many of its lines were rejected."""
    for row in log_rows:
        read = row["lines_read"] - row["blank"]
        if read and row["rejected"] / read > max_rate:
            top = (
                rejects.filter(F.col("source_file") == row["source_file"])
                .groupBy("reason")
                .count()
                .orderBy(F.desc("count"), "reason")
                .limit(3)
                .collect()
            )
            reasons = "; ".join(f"{r['reason']} ({r['count']})" for r in top)
            raise InputError(
                f"{row['source_file']}: {row['rejected']} of {read} lines rejected "
                f"({row['rejected'] / read:.1%} > input.max_reject_rate {max_rate:.1%}); "
                f"top reasons: {reasons}. See bronze/rejects."
            )


def ingest_source(
    spark: SparkSession, config: Config, kind: str, files: list[io.InputFile], run_id: str
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Parse one source's files into (accepted bronze rows, rejects, log)."""
    raw_schema = REVIEWS_2023_RAW if kind == "reviews" else PRODUCTS_2023_RAW
    parsed = parse_json_lines(io.read_lines(spark, files), raw_schema)
    statused = (
        with_review_status(parsed, config) if kind == "reviews" else with_product_status(parsed)
    ).cache()
    accepted = (
        to_bronze_reviews(statused, config, run_id)
        if kind == "reviews"
        else to_bronze_products(statused, run_id)
    )
    rejects = to_rejects(statused, kind, run_id, config.require("input.reject_max_chars"))
    return accepted, rejects, reconcile(statused, files, kind, run_id)
