"""Ingest: raw files -> bronze.reviews, bronze.products, bronze.item_tags,
bronze.rejects and bronze.ingest_log.

Every input line ends up in exactly one place: an accepted row, a reject row
with its reason, or the blank (or CSV header) count; the ingest log reconciles
them per file. A file that cannot be read at all (a corrupt gzip) is
quarantined whole: a reject row with line number 0 and the error, and its log
row says so. Tables are merged on natural keys, so re-ingesting the same files
changes no row.
"""

from __future__ import annotations

import csv
import logging

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from amazon_recs import io, schemas
from amazon_recs.config import Config
from amazon_recs.errors import ConfigError, InputError
from amazon_recs.events import EVENT_ID_PATTERN, EVENT_TYPES, EXPLICIT_EVENTS
from amazon_recs.ingest import formats, movielens
from amazon_recs.schemas import ITEM, RATING, TS, USER

log = logging.getLogger(__name__)

REASON = "reason"
STATUS = "status"
ACCEPTED, REJECTED, BLANK, HEADER = "accepted", "rejected", "blank", "header"

# The largest epoch milliseconds a Spark timestamp (microseconds in a long) can hold.
MAX_TS_MS = (2**63 - 1) // 1000
REPLACEMENT_CHAR = "\ufffd"

KEYS = {
    "reviews": [USER, "asin", TS],
    "products": [ITEM],
    "tags": [USER, ITEM, "tag"],
    "events": ["event_id"],
}
TABLES = {
    "reviews": "bronze/reviews",
    "products": "bronze/products",
    "tags": "bronze/item_tags",
    "events": "bronze/events",
}
EVENTS_FORMAT = "events"  # not an input.format: the API's event lines
LOG_COUNTS = ["lines_read", ACCEPTED, REJECTED, BLANK, HEADER, "duplicates"]


def _blank(value: Column) -> Column:
    # Any white space: tabs and a stray \r from Windows line ends included.
    return value.rlike(r"^\s*$")


def _invalid_utf8(value: Column) -> Column:
    # Spark keeps a text line's bytes as read: bytes that are not UTF-8 only become
    # U+FFFD when the string is decoded, which encode() does first, so they differ.
    return value.contains(REPLACEMENT_CHAR) | (value.cast("binary") != F.encode(value, "UTF-8"))


def _missing(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def _line_reason(kind: str, config: Config) -> Column:
    """Why a parsed line is rejected (null when it is fine), first failing check wins."""
    f = F.col("f")
    reason = (
        F.when(_invalid_utf8(F.col("value")), F.lit("invalid UTF-8"))
        .when(F.col(formats.SHAPE).isNotNull(), F.col(formats.SHAPE))
        .when(_missing(f["item"]), F.lit("missing item id"))
    )
    if kind == "products":
        return reason
    reason = reason.when(_missing(f["user"]), F.lit("missing user id"))
    if kind == "tags":
        return reason.when(_missing(f["tag"]), F.lit("missing tag"))
    rated = F.lit(True)
    if kind == "events":
        reason = (
            reason.when(_missing(f["event_id"]), F.lit("missing event id"))
            .when(~f["event_id"].rlike(EVENT_ID_PATTERN), F.lit("event id is not 1-64 of A-Z a-z 0-9 _ -"))
            .when(
                ~f["event_type"].isin(*EVENT_TYPES) | f["event_type"].isNull(),
                F.lit(f"event type is not one of {', '.join(EVENT_TYPES)}"),
            )
        )
        # Only a rating event needs a rating; a rating on a purchase or view is ignored.
        rated = f["event_type"].isin(*EXPLICIT_EVENTS)
    lo, hi = config.require("input.rating_min"), config.require("input.rating_max")
    rating = f["rating"].cast("double")
    ts = f["timestamp"].cast("long")
    return (
        reason.when(rated & f["rating"].isNull(), F.lit("missing rating"))
        .when(rated & (rating.isNull() | F.isnan(rating)), F.lit("rating is not a number"))
        .when(rated & ((rating < lo) | (rating > hi)), F.lit(f"rating outside [{lo:g}, {hi:g}]"))
        .when(_missing(f["timestamp"]), F.lit("missing timestamp"))
        .when(ts.isNull() | (ts <= 0), F.lit("timestamp is not a positive integer"))
        # timestamp_millis throws on overflow, which would fail the whole ingest.
        .when(ts > F.lit(MAX_TS_MS) / f["ts_unit_ms"], F.lit("timestamp out of range"))
    )


def with_status(parsed: DataFrame, kind: str, config: Config) -> DataFrame:
    """Add ``status`` (accepted / rejected / blank / header) and ``reason``."""
    return parsed.withColumn(
        REASON,
        F.when(_blank(F.col("value")) | (F.col(formats.SHAPE) == formats.HEADER), F.lit(None)).otherwise(
            _line_reason(kind, config)
        ),
    ).withColumn(
        STATUS,
        F.when(F.col(formats.SHAPE) == formats.HEADER, HEADER)
        .when(_blank(F.col("value")), BLANK)
        .when(F.col(REASON).isNotNull(), REJECTED)
        .otherwise(ACCEPTED),
    )


def _provenance(run_id: str) -> list[Column]:
    return [F.col("source_file"), F.col("line_number"), F.lit(run_id).alias("ingest_run_id")]


def to_bronze_reviews(statused: DataFrame, config: Config, run_id: str) -> DataFrame:
    """Accepted review lines in the canonical bronze schema, unique on the natural key."""
    f = F.col("f")
    max_chars = config.require("input.max_text_chars")
    rows = statused.filter(F.col(STATUS) == ACCEPTED).select(
        F.trim(f["user"]).alias(USER),
        F.trim(f["item"]).alias(ITEM),
        F.trim(f["asin"]).alias("asin"),
        f["rating"].cast("double").alias(RATING),
        F.timestamp_millis(f["timestamp"].cast("long") * f["ts_unit_ms"]).alias(TS),
        F.substring(f["title"], 1, max_chars).alias("review_title"),
        F.substring(f["text"], 1, max_chars).alias("review_text"),
        (F.lower(f["verified"]) == "true").alias("verified"),
        f["helpful"].cast("int").alias("helpful_votes"),
        *_provenance(run_id),
    )
    return schemas.conform(_first_per_key(rows, KEYS["reviews"]), schemas.BRONZE_REVIEWS, "bronze/reviews")


def to_bronze_products(statused: DataFrame, config: Config, run_id: str) -> DataFrame:
    """Accepted product lines in the canonical bronze schema, one row per item."""
    f = F.col("f")
    max_chars = config.require("input.max_text_chars")
    # A number after at most a short currency prefix ("$1,299.00", "12.5"); some 2018
    # metadata holds page CSS in price (".a-box-inner{background-color:#fff}..."): no price.
    price = F.regexp_extract(F.regexp_replace(f["price"], ",", ""), r"^\D{0,5}(\d+(?:\.\d+)?)", 1)
    rows = statused.filter(F.col(STATUS) == ACCEPTED).select(
        F.trim(f["item"]).alias(ITEM),
        F.substring(f["title"], 1, max_chars).alias("title"),
        f["description"].alias("description"),
        f["features"].alias("features"),
        f["categories"].alias("categories"),
        f["brand"].alias("brand"),
        F.when(price != "", price.cast("double")).alias("price"),
        *_provenance(run_id),
        F.sha2("value", 256).alias("record_hash"),
    )
    return schemas.conform(_first_per_key(rows, KEYS["products"]), schemas.BRONZE_PRODUCTS, "bronze/products")


def to_bronze_tags(statused: DataFrame, config: Config, run_id: str) -> DataFrame:
    """Accepted tag lines: (user, item, tag), the tag trimmed and lower-cased."""
    f = F.col("f")
    rows = statused.filter(F.col(STATUS) == ACCEPTED).select(
        F.trim(f["user"]).alias(USER),
        F.trim(f["item"]).alias(ITEM),
        F.lower(F.trim(f["tag"])).alias("tag"),
        *_provenance(run_id),
    )
    return schemas.conform(_first_per_key(rows, KEYS["tags"]), schemas.BRONZE_TAGS, "bronze/item_tags")


def to_bronze_events(statused: DataFrame, config: Config, run_id: str) -> DataFrame:
    """Accepted event lines, one row per event id (a re-delivered event is a duplicate).

    ``rating`` is kept for rating events only; ``received_at`` (when the API took the
    event) may be absent from events written by other producers.
    """
    f = F.col("f")
    received = f["received_at"].cast("long")
    rows = statused.filter(F.col(STATUS) == ACCEPTED).select(
        F.trim(f["event_id"]).alias("event_id"),
        f["event_type"].alias("event_type"),
        F.trim(f["user"]).alias(USER),
        F.trim(f["item"]).alias(ITEM),
        F.when(f["event_type"].isin(*EXPLICIT_EVENTS), f["rating"].cast("double")).alias(RATING),
        F.timestamp_millis(f["timestamp"].cast("long")).alias(TS),
        F.when((received > 0) & (received <= MAX_TS_MS), F.timestamp_millis(received)).alias("received_at"),
        *_provenance(run_id),
    )
    return schemas.conform(_first_per_key(rows, KEYS["events"]), schemas.BRONZE_EVENTS, "bronze/events")


TO_BRONZE = {
    "reviews": to_bronze_reviews,
    "products": to_bronze_products,
    "tags": to_bronze_tags,
    "events": to_bronze_events,
}


def _first_per_key(rows: DataFrame, key: list[str]) -> DataFrame:
    # The first occurrence (by file, then line) wins, deterministically.
    first = Window.partitionBy(*key).orderBy("source_file", "line_number")
    return rows.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")


def to_rejects(statused: DataFrame, kind: str, run_id: str, max_chars: int) -> DataFrame:
    """Rejected lines with the reason, the raw text cut to ``max_chars``."""
    rows = statused.filter(F.col(STATUS) == REJECTED).select(
        F.lit(kind).alias("kind"),
        "source_file",
        "line_number",
        F.substring("value", 1, max_chars).alias("raw"),
        F.col(REASON).alias("reason"),
        F.lit(run_id).alias("ingest_run_id"),
    )
    return schemas.conform(rows, schemas.REJECTS, "bronze/rejects")


def unreadable_rejects(spark: SparkSession, unreadable: dict[str, str], kind: str, run_id: str) -> DataFrame:
    """One reject row (line 0) for each file that could not be read at all."""
    rows = [(kind, uri, 0, None, f"unreadable file: {error}", run_id) for uri, error in unreadable.items()]
    return spark.createDataFrame(rows, schemas.REJECTS)


def reconcile(
    statused: DataFrame, files: list[io.InputFile], kind: str, run_id: str, unreadable: dict[str, str]
) -> DataFrame:
    """Per input file: lines read = accepted + rejected + blank + header.

    ``duplicates`` counts the accepted lines whose natural key an earlier line
    (this file or an earlier one) already had: the bronze table keeps one row
    per key, so it grows by accepted - duplicates on a first ingest.

    Files with no lines (zero-byte, or empty after decompression) are listed
    with zeros; unreadable files with zeros and their error.
    """
    spark = statused.sparkSession
    counts = (
        _with_duplicate_flag(statused, kind)
        .groupBy("source_file")
        .agg(
            F.count(F.lit(1)).alias("lines_read"),
            *[F.sum((F.col(STATUS) == s).cast("long")).alias(s) for s in (ACCEPTED, REJECTED, BLANK, HEADER)],
            F.sum(F.col("_duplicate").cast("long")).alias("duplicates"),
        )
    )
    listed = spark.createDataFrame(
        [(f.uri, f.size, unreadable.get(f.uri)) for f in files],
        "source_file string, bytes long, error string",
    )
    return (
        listed.join(counts, "source_file", how="left")
        .fillna(0, LOG_COUNTS)
        .select(
            F.lit(run_id).alias("ingest_run_id"),
            F.lit(kind).alias("kind"),
            "source_file",
            "bytes",
            *LOG_COUNTS,
            "error",
        )
    )


def _natural_key(kind: str) -> list[Column]:
    f = F.col("f")
    if kind == "reviews":
        return [F.trim(f["user"]), F.trim(f["asin"]), f["timestamp"].cast("long") * f["ts_unit_ms"]]
    if kind == "tags":
        return [F.trim(f["user"]), F.trim(f["item"]), F.lower(F.trim(f["tag"]))]
    if kind == "events":
        return [F.trim(f["event_id"])]
    return [F.trim(f["item"])]


def _with_duplicate_flag(statused: DataFrame, kind: str) -> DataFrame:
    keys = [k.alias(f"_k{i}") for i, k in enumerate(_natural_key(kind))]
    names = [f"_k{i}" for i in range(len(keys))]
    accepted = F.col(STATUS) == ACCEPTED
    # Only accepted lines take part; the others get a group of their own.
    keyed = statused.select("*", *keys).withColumn("_accepted", accepted)
    first = Window.partitionBy("_accepted", *names).orderBy("source_file", "line_number")
    return keyed.withColumn("_duplicate", accepted & (F.row_number().over(first) > 1))


def check_reject_rate(
    log_rows: list[dict], rejects: DataFrame, max_rate: float, as_one: str | None = None
) -> None:
    """Fail with the file and its top reasons when too many of its lines were rejected.

    ``as_one``: the files are judged together under this name (activity events land a
    file per event, so one bad event would otherwise be a file of 100% rejects).
    """
    if as_one is not None and log_rows:
        counts = ("lines_read", "blank", "header", "rejected")
        log_rows = [{"source_file": as_one, **{c: sum(r.get(c, 0) for r in log_rows) for c in counts}}]
    for row in log_rows:
        read = row["lines_read"] - row["blank"] - row.get("header", 0)
        if read and row["rejected"] / read > max_rate:
            mine = (
                rejects if as_one is not None else rejects.filter(F.col("source_file") == row["source_file"])
            )
            top = mine.groupBy("reason").count().orderBy(F.desc("count"), "reason").limit(3).collect()
            reasons = "; ".join(f"{r['reason']} ({r['count']})" for r in top)
            raise InputError(
                f"{row['source_file']}: {row['rejected']} of {read} lines rejected "
                f"({row['rejected'] / read:.1%} > input.max_reject_rate {max_rate:.1%}); "
                f"top reasons: {reasons}. See bronze/rejects."
            )


def resolve_format(
    spark: SparkSession, config: Config, files: list[io.InputFile], kind: str = "reviews"
) -> str:
    """The configured family, or the detected one for ``auto`` (never a silent guess)."""
    if kind == "events":  # the API's own lines, whatever the reviews' family
        return EVENTS_FORMAT
    name = formats.check_format(config.require("input.format"))
    if name != "auto":
        return name
    readable = [f for f in files if f.size > 0]
    source = readable[0].uri if readable else "input"
    detected = formats.detect(io.first_line(spark, readable[0]) if readable else None, source)
    log.info("input.format auto: %s read as %s", source, detected)
    return detected


def parse(spark: SparkSession, config: Config, kind: str, files: list[io.InputFile], fmt: str) -> DataFrame:
    """Lines of one source parsed by its family into ``shape`` and ``f``."""
    if fmt == EVENTS_FORMAT:
        return formats.events(io.read_lines(spark, files), config)
    if fmt in formats.JSON_PARSERS:
        if kind not in formats.JSON_PARSERS[fmt]:
            raise ConfigError(f"input.{kind} is not read for format {fmt}")
        return formats.JSON_PARSERS[fmt][kind](io.read_lines(spark, files), config)
    if fmt == "parquet":
        return formats.GENERIC_PARSERS[kind](io.read_parquet_rows(spark, files), config, None)
    if fmt == movielens.FORMAT:
        return movielens.PARSERS[kind](io.read_lines(spark, files), config, files)
    lines = io.read_lines(spark, files)
    return formats.GENERIC_PARSERS[kind](lines, config, _csv_header(lines, kind))


def _csv_header(lines: DataFrame, kind: str) -> list[str]:
    headers = {r["source_file"]: r["value"] for r in lines.filter("line_number = 1").collect()}
    distinct = set(headers.values())
    if len(distinct) > 1:
        raise InputError(f"input.{kind}: files have different CSV headers: {headers}")
    if not distinct:
        raise InputError(f"input.{kind}: no CSV header found (all files are empty)")
    return next(csv.reader([distinct.pop()]))


def ingest_source(
    spark: SparkSession, config: Config, kind: str, files: list[io.InputFile], run_id: str
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Parse one source's files into (accepted bronze rows, rejects, log).

    Zero-byte files are not opened; a file whose decompression fails is found
    by reading each file on its own, then left out and reported.
    """
    fmt = resolve_format(spark, config, files, kind)
    readable = [f for f in files if f.size > 0]
    unreadable: dict[str, str] = {}
    statused = None
    if readable:
        statused, unreadable = _parse_readable(spark, config, kind, readable, fmt)
    if statused is None:
        statused = _empty_statused(spark, config, kind, fmt)
    accepted = TO_BRONZE[kind](statused, config, run_id)
    rejects = to_rejects(statused, kind, run_id, config.require("input.reject_max_chars"))
    if unreadable:
        rejects = rejects.unionByName(unreadable_rejects(spark, unreadable, kind, run_id))
    return accepted, rejects, reconcile(statused, files, kind, run_id, unreadable)


def _kept(parsed: DataFrame) -> DataFrame:
    """The parsed lines, kept for the accepted rows, the rejects and the counts.

    On disk, not in memory: every line with its text (3 GB of columns at 10M
    reviews) would be built in memory in column batches first, which ran the
    driver out of a 4 GiB heap in a task; written to disk it streams batch by batch.
    """
    return parsed.persist(StorageLevel.DISK_ONLY)


def _parse_readable(spark, config, kind, files, fmt) -> tuple[DataFrame | None, dict[str, str]]:
    statused = None
    try:
        statused = _kept(with_status(parse(spark, config, kind, files, fmt), kind, config))
        statused.count()  # reads every file once; the cache serves the rest
        return statused, {}
    except Exception:  # a file that cannot be decoded; find which, below
        if statused is not None:
            statused.unpersist()
    unreadable = {f.uri: err for f in files if (err := io.read_error(spark, f, fmt)) is not None}
    good = [f for f in files if f.uri not in unreadable]
    if not good:
        return None, unreadable
    statused = _kept(with_status(parse(spark, config, kind, good, fmt), kind, config))
    statused.count()
    return statused, unreadable


def _empty_statused(spark, config, kind, fmt) -> DataFrame:
    lines = spark.createDataFrame([], "source_file string, line_number int, value string")
    if fmt == EVENTS_FORMAT:
        parsed = formats.events(lines, config)
    elif fmt in formats.JSON_PARSERS:
        parsed = formats.JSON_PARSERS[fmt][kind](lines, config)
    else:
        header = list(formats.mapped_columns(config, formats.MAPPING_SECTION[kind]).values())
        parsed = formats.GENERIC_PARSERS[kind](lines, config, header if fmt == "csv" else None)
    return with_status(parsed, kind, config)
