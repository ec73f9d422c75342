"""Column names and table schemas: defined once, checked at stage boundaries."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from amazon_recs.errors import SchemaError
from amazon_recs.models import MODELS  # noqa: F401 (re-exported: the models of gold tables)

USER = "user_id"
ITEM = "item_id"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
RATING = "rating"
WEIGHT = "weight"
TS = "ts"
SCORE = "score"
RANK = "rank"
MODEL = "model"
REASON = "reason"
MODEL_VERSION = "model_version"
SPLIT = "split"


BRONZE_REVIEWS = T.StructType(
    [
        T.StructField(USER, T.StringType(), False),
        T.StructField(ITEM, T.StringType(), False),
        T.StructField("asin", T.StringType(), True),
        T.StructField(RATING, T.DoubleType(), False),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField("review_title", T.StringType(), True),
        T.StructField("review_text", T.StringType(), True),
        T.StructField("verified", T.BooleanType(), True),
        T.StructField("helpful_votes", T.IntegerType(), True),
        T.StructField("source_file", T.StringType(), False),
        T.StructField("line_number", T.IntegerType(), False),
        T.StructField("ingest_run_id", T.StringType(), False),
    ]
)

BRONZE_PRODUCTS = T.StructType(
    [
        T.StructField(ITEM, T.StringType(), False),
        T.StructField("title", T.StringType(), True),
        T.StructField("description", T.ArrayType(T.StringType()), True),
        T.StructField("features", T.ArrayType(T.StringType()), True),
        T.StructField("categories", T.ArrayType(T.StringType()), True),
        T.StructField("brand", T.StringType(), True),
        T.StructField("price", T.DoubleType(), True),
        T.StructField("source_file", T.StringType(), False),
        T.StructField("line_number", T.IntegerType(), False),
        T.StructField("ingest_run_id", T.StringType(), False),
        T.StructField("record_hash", T.StringType(), False),
    ]
)

BRONZE_TAGS = T.StructType(
    [
        T.StructField(USER, T.StringType(), False),
        T.StructField(ITEM, T.StringType(), False),
        T.StructField("tag", T.StringType(), False),
        T.StructField("source_file", T.StringType(), False),
        T.StructField("line_number", T.IntegerType(), False),
        T.StructField("ingest_run_id", T.StringType(), False),
    ]
)

BRONZE_EVENTS = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField(USER, T.StringType(), False),
        T.StructField(ITEM, T.StringType(), False),
        T.StructField(RATING, T.DoubleType(), True),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField("received_at", T.TimestampType(), True),
        T.StructField("source_file", T.StringType(), False),
        T.StructField("line_number", T.IntegerType(), False),
        T.StructField("ingest_run_id", T.StringType(), False),
    ]
)

# The events a features run turned into interactions: what a model trained on them
# has seen, so ``refresh`` takes only the events after them.
SILVER_EVENTS = T.StructType(
    [
        T.StructField("event_id", T.StringType(), False),
        T.StructField("event_type", T.StringType(), False),
        T.StructField(USER, T.StringType(), False),
        T.StructField(ITEM, T.StringType(), False),
        T.StructField(TS, T.TimestampType(), False),
    ]
)

# The event files whose every line is in bronze (accepted, a duplicate or rejected),
# as ingest listed them: a file appended to since is a new (source_file, bytes).
# silver/event_files is its copy at a features run, so ``refresh`` reads only the
# files a version has not seen, not every event file ever written.
EVENT_FILES = T.StructType(
    [
        T.StructField("source_file", T.StringType(), False),
        T.StructField("bytes", T.LongType(), False),
        T.StructField("ingest_run_id", T.StringType(), False),
    ]
)

REJECTS = T.StructType(
    [
        T.StructField("kind", T.StringType(), False),
        T.StructField("source_file", T.StringType(), False),
        T.StructField("line_number", T.IntegerType(), False),
        T.StructField("raw", T.StringType(), True),
        T.StructField("reason", T.StringType(), False),
        T.StructField("ingest_run_id", T.StringType(), False),
    ]
)

INTERACTIONS = T.StructType(
    [
        T.StructField(USER, T.StringType(), False),
        T.StructField(ITEM, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(RATING, T.DoubleType(), False),
        T.StructField(WEIGHT, T.DoubleType(), False),
        T.StructField(TS, T.TimestampType(), False),
        T.StructField(SPLIT, T.StringType(), False),
    ]
)

RECOMMENDATIONS = T.StructType(
    [
        T.StructField(USER, T.StringType(), False),
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(ITEM, T.StringType(), False),
        T.StructField(SCORE, T.DoubleType(), False),
        T.StructField(REASON, T.StringType(), True),
        T.StructField(MODEL_VERSION, T.StringType(), False),
    ]
)

METRICS = T.StructType(
    [
        T.StructField(MODEL, T.StringType(), False),
        T.StructField("metric", T.StringType(), False),
        T.StructField("k", T.IntegerType(), False),
        T.StructField("value", T.DoubleType(), False),
        T.StructField("users", T.LongType(), False),
        # The 95% (evaluate.confidence) bootstrap interval over users; null for the
        # catalogue-level metrics (coverage, novelty).
        T.StructField("ci_low", T.DoubleType(), True),
        T.StructField("ci_high", T.DoubleType(), True),
        T.StructField(MODEL_VERSION, T.StringType(), False),
    ]
)


def conform(df: DataFrame, schema: T.StructType, name: str) -> DataFrame:
    """Select ``schema``'s columns in order, cast to its types.

    Raises:
        SchemaError: a column is missing, naming the table and the column.
    """
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise SchemaError(f"{name}: missing column(s) {', '.join(missing)}; has {', '.join(df.columns)}")
    return df.select([df[f.name].cast(f.dataType).alias(f.name) for f in schema.fields])
