"""Input families: each turns raw lines into one canonical shape, column ``f``.

A parser takes the lines of one source (``source_file``, ``line_number``,
``value``) and adds:

- ``shape``: why the line cannot be read at all (``malformed JSON``, ``not a JSON
  object``, ``wrong number of fields``), ``header`` for a CSV header line, or null;
- ``f``: a struct of the canonical fields, scalars still as strings so that
  ingest can reject a value of the wrong type with its reason.

Reviews: user, item, asin, rating, timestamp, ts_unit_ms, title, text,
verified, helpful. Products: item, title, description[], features[],
categories[], brand, price. Tags: user, item, tag.

Families (``input.format``): ``amazon2023``, ``amazon2018``, ``csv`` and
``parquet`` (generic interactions with a column mapping), or ``auto``, which
looks at the first line and says what it chose, or stops when unsure.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from amazon_recs.config import Config
from amazon_recs.errors import ConfigError, InputError

CORRUPT = "_corrupt"
SHAPE = "shape"
HEADER = "header"
FORMATS = ("amazon2023", "amazon2018", "csv", "parquet", "movielens")


def _empty_array() -> Column:
    return F.array().cast("array<string>")


def _strings(*names: str) -> T.StructType:
    return T.StructType(
        [T.StructField(n, T.StringType()) for n in names] + [T.StructField(CORRUPT, T.StringType())]
    )


def _with_arrays(schema: T.StructType, *names: str) -> T.StructType:
    fields = [f for f in schema.fields if f.name not in names]
    return T.StructType([T.StructField(n, T.ArrayType(T.StringType())) for n in names] + fields)


def _json(lines: DataFrame, schema: T.StructType) -> DataFrame:
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    j = F.from_json("value", schema, options)
    shape = (
        F.when(F.col("value").rlike(r"^\s*$"), F.lit(None))
        .when(~F.col("value").rlike(r"^\s*\{"), F.lit("not a JSON object"))
        .when(F.col("j")[CORRUPT].isNotNull(), F.lit("malformed JSON"))
    )
    return lines.withColumn("j", j).withColumn(SHAPE, shape)


def _blank_or(c: Column) -> Column:
    return F.when(F.trim(c) != "", c)


# --- Amazon Reviews 2023 ------------------------------------------------------

REVIEWS_2023 = _strings(
    "user_id",
    "asin",
    "parent_asin",
    "rating",
    "timestamp",
    "title",
    "text",
    "verified_purchase",
    "helpful_vote",
)
PRODUCTS_2023 = _with_arrays(
    _strings("parent_asin", "title", "main_category", "store", "price"),
    "features",
    "description",
    "categories",
)


def reviews_2023(lines: DataFrame, config: Config) -> DataFrame:
    parsed = _json(lines, REVIEWS_2023)
    j = F.col("j")
    # parent_asin folds a product's variants together; asin where a line has none.
    item = j["asin"]
    if config.require("input.item_key") == "parent_asin":
        item = F.coalesce(_blank_or(j["parent_asin"]), j["asin"])
    return parsed.withColumn(
        "f",
        F.struct(
            j["user_id"].alias("user"),
            item.alias("item"),
            j["asin"].alias("asin"),
            j["rating"].alias("rating"),
            j["timestamp"].alias("timestamp"),
            F.lit(1).alias("ts_unit_ms"),
            j["title"].alias("title"),
            j["text"].alias("text"),
            j["verified_purchase"].alias("verified"),
            j["helpful_vote"].alias("helpful"),
        ),
    )


def products_2023(lines: DataFrame, config: Config) -> DataFrame:
    parsed = _json(lines, PRODUCTS_2023)
    j = F.col("j")
    categories = F.coalesce(j["categories"], _empty_array())
    return parsed.withColumn(
        "f",
        F.struct(
            j["parent_asin"].alias("item"),
            j["title"].alias("title"),
            j["description"].alias("description"),
            j["features"].alias("features"),
            F.when(F.size(categories) > 0, categories)
            .otherwise(F.array(j["main_category"]))
            .alias("categories"),
            j["store"].alias("brand"),
            j["price"].alias("price"),
        ),
    )


# --- Amazon Review Data 2018 --------------------------------------------------

REVIEWS_2018 = _strings(
    "reviewerID", "asin", "overall", "unixReviewTime", "summary", "reviewText", "verified", "vote"
)
PRODUCTS_2018 = _with_arrays(
    _strings("asin", "title", "brand", "price", "main_cat"), "description", "feature", "category"
)


def reviews_2018(lines: DataFrame, config: Config) -> DataFrame:
    parsed = _json(lines, REVIEWS_2018)
    j = F.col("j")
    return parsed.withColumn(
        "f",
        F.struct(
            j["reviewerID"].alias("user"),
            j["asin"].alias("item"),
            j["asin"].alias("asin"),
            j["overall"].alias("rating"),
            j["unixReviewTime"].alias("timestamp"),
            F.lit(1000).alias("ts_unit_ms"),
            j["summary"].alias("title"),
            j["reviewText"].alias("text"),
            j["verified"].alias("verified"),
            # Votes come as text with thousands separators: "1,234".
            F.regexp_replace(j["vote"], ",", "").alias("helpful"),
        ),
    )


def products_2018(lines: DataFrame, config: Config) -> DataFrame:
    parsed = _json(lines, PRODUCTS_2018)
    j = F.col("j")
    # The category path repeats its root ("Gift Cards", "Gift Cards"); keep distinct levels.
    categories = F.array_distinct(F.coalesce(j["category"], _empty_array()))
    return parsed.withColumn(
        "f",
        F.struct(
            j["asin"].alias("item"),
            j["title"].alias("title"),
            j["description"].alias("description"),
            j["feature"].alias("features"),
            F.when(F.size(categories) > 0, categories).otherwise(F.array(j["main_cat"])).alias("categories"),
            j["brand"].alias("brand"),
            j["price"].alias("price"),
        ),
    )


# --- activity events (the API's POST /events) ---------------------------------

EVENTS = _strings("event_id", "event_type", "user_id", "item_id", "rating", "timestamp", "received_at")


def events(lines: DataFrame, config: Config) -> DataFrame:
    """The lines ``serving.api.event_record`` lands, whatever ``input.format`` the reviews have."""
    parsed = _json(lines, EVENTS)
    j = F.col("j")
    return parsed.withColumn(
        "f",
        F.struct(
            j["event_id"].alias("event_id"),
            j["event_type"].alias("event_type"),
            j["user_id"].alias("user"),
            j["item_id"].alias("item"),
            j["rating"].alias("rating"),
            j["timestamp"].alias("timestamp"),
            F.lit(1).alias("ts_unit_ms"),
            j["received_at"].alias("received_at"),
        ),
    )


# --- generic interactions: CSV or Parquet with a column mapping ---------------


# Where each source's column mapping lives under input.
MAPPING_SECTION = {"reviews": "columns", "products": "item_columns", "tags": "tag_columns"}


def mapped_columns(config: Config, section: str) -> dict[str, str]:
    """The configured (canonical name -> file column) pairs, unset ones left out."""
    return {k: v for k, v in config.require(f"input.{section}").items() if v}


def _csv(lines: DataFrame, header: list[str], wanted: dict[str, str], source: str) -> DataFrame:
    """Parse CSV lines by the file's header; the first line of each file is the header."""
    missing = sorted(set(wanted.values()) - set(header))
    if missing:
        raise InputError(f"{source}: header {header} lacks the configured column(s) {missing}")
    ddl = ", ".join(f"`{name}` STRING" for name in header) + f", `{CORRUPT}` STRING"
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    shape = (
        F.when(F.col("line_number") == 1, F.lit(HEADER))
        .when(F.col("value").rlike(r"^\s*$"), F.lit(None))
        .when(F.col("j")[CORRUPT].isNotNull(), F.lit("wrong number of fields"))
    )
    return lines.withColumn("j", F.from_csv("value", ddl, options)).withColumn(SHAPE, shape)


def _parquet_as_json(lines: DataFrame, wanted: dict[str, str]) -> DataFrame:
    schema = _strings(*sorted(set(wanted.values())))
    return _json(lines, schema)


def _generic(lines: DataFrame, config: Config, header: list[str] | None, section: str) -> DataFrame:
    wanted = mapped_columns(config, section)
    if header is None:
        return _parquet_as_json(lines, wanted)
    return _csv(lines, header, wanted, f"input.{section}")


def _get(j: Column, wanted: dict[str, str], key: str) -> Column:
    return j[wanted[key]] if key in wanted else F.lit(None).cast("string")


def reviews_generic(lines: DataFrame, config: Config, header: list[str] | None) -> DataFrame:
    wanted = mapped_columns(config, "columns")
    parsed = _generic(lines, config, header, "columns")
    j = F.col("j")
    unit = {"s": 1000, "ms": 1}[config.require("input.timestamp_unit")]
    # Without a rating column every interaction is an implicit 1.0.
    rating = _get(j, wanted, "rating") if "rating" in wanted else F.lit("1.0")
    return parsed.withColumn(
        "f",
        F.struct(
            _get(j, wanted, "user").alias("user"),
            _get(j, wanted, "item").alias("item"),
            _get(j, wanted, "item").alias("asin"),
            rating.alias("rating"),
            _get(j, wanted, "timestamp").alias("timestamp"),
            F.lit(unit).alias("ts_unit_ms"),
            F.lit(None).cast("string").alias("title"),
            F.lit(None).cast("string").alias("text"),
            F.lit(None).cast("string").alias("verified"),
            F.lit(None).cast("string").alias("helpful"),
        ),
    )


def products_generic(lines: DataFrame, config: Config, header: list[str] | None) -> DataFrame:
    wanted = mapped_columns(config, "item_columns")
    parsed = _generic(lines, config, header, "item_columns")
    j = F.col("j")
    separator = config.require("input.categories_separator")
    categories = _get(j, wanted, "categories")
    return parsed.withColumn(
        "f",
        F.struct(
            _get(j, wanted, "item").alias("item"),
            _get(j, wanted, "title").alias("title"),
            _empty_array().alias("description"),
            _empty_array().alias("features"),
            F.coalesce(F.split(categories, _regex_quote(separator)), _empty_array()).alias("categories"),
            F.lit(None).cast("string").alias("brand"),
            F.lit(None).cast("string").alias("price"),
        ),
    )


def tags_generic(lines: DataFrame, config: Config, header: list[str] | None) -> DataFrame:
    wanted = mapped_columns(config, "tag_columns")
    parsed = _generic(lines, config, header, "tag_columns")
    j = F.col("j")
    return parsed.withColumn(
        "f",
        F.struct(
            _get(j, wanted, "user").alias("user"),
            _get(j, wanted, "item").alias("item"),
            _get(j, wanted, "tag").alias("tag"),
        ),
    )


def _regex_quote(text: str) -> str:
    return "".join("\\" + ch if not ch.isalnum() else ch for ch in text)


Parser = Callable[..., DataFrame]
JSON_PARSERS: dict[str, dict[str, Parser]] = {
    "amazon2023": {"reviews": reviews_2023, "products": products_2023},
    "amazon2018": {"reviews": reviews_2018, "products": products_2018},
}
GENERIC_PARSERS: dict[str, Parser] = {
    "reviews": reviews_generic,
    "products": products_generic,
    "tags": tags_generic,
}


def detect(first_line: str | None, source: str) -> str:
    """Name the family of a file from its first non-blank line, or stop and say why."""
    import json

    if first_line is None:
        raise InputError(f"{source}: cannot detect the format of an empty file; set input.format")
    try:
        record = json.loads(first_line)
    except ValueError:
        raise InputError(
            f"{source}: first line is not JSON; for CSV or Parquet set input.format and input.columns"
        ) from None
    keys = set(record) if isinstance(record, dict) else set()
    if keys & {"reviewerID", "unixReviewTime", "overall"} or keys >= {"asin", "category"}:
        return "amazon2018"
    if keys & {"user_id", "parent_asin", "main_category"}:
        return "amazon2023"
    raise InputError(f"{source}: cannot tell the format from keys {sorted(keys)[:12]}; set input.format")


def check_format(name: str) -> str:
    if name not in (*FORMATS, "auto"):
        raise ConfigError(f"input.format '{name}' is not one of {', '.join((*FORMATS, 'auto'))}")
    return name
