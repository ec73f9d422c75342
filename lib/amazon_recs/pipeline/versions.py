"""Model versions: how a version is named, where it is stored, which one is current.

A version is derived from the model settings, the training rows, the items and
the package version, so the same inputs give the same version; ``models/CURRENT``
names the one later stages use. A version's ``model_info.json`` records the Delta
commit of each silver table it was trained on (``inputs``); the stages after
training read those commits (time travel), never "latest", so a features run in
between cannot change the split under a trained model.
"""

from __future__ import annotations

import hashlib
import json

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs import __version__, io
from amazon_recs.config import Config
from amazon_recs.errors import StageOrderError
from amazon_recs.schemas import ITEM_IDX, TS, USER_IDX, WEIGHT

CURRENT_POINTER = "CURRENT"
# The silver tables a model is trained on and later stages read at the same commit.
INPUT_TABLES = ("silver/interactions", "silver/items", "silver/user_ids", "silver/item_ids")
VERSION_SECTIONS = ("split", "als", "content", "popular", "recommend", "tune")


def model_version(config: Config, train: DataFrame, items: DataFrame | None = None) -> str:
    """Derived from the model settings, the training rows, the items (their text feeds the
    content model) and the package version: same inputs, same version."""
    configured = config.require("run.model_version")
    if configured != "auto":
        return configured
    data_hash = train.select(F.sum(F.xxhash64(USER_IDX, ITEM_IDX, WEIGHT, TS).cast("decimal(38,0)"))).first()[
        0
    ]
    item_hash = None
    if items is not None:
        every_column = F.xxhash64(*[F.col(c) for c in sorted(items.columns)])
        item_hash = items.select(F.sum(every_column.cast("decimal(38,0)"))).first()[0]
    settings = {s: config.require(s) for s in VERSION_SECTIONS}
    fingerprint = [settings, str(data_hash), str(item_hash), __version__]
    digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def input_versions(spark: SparkSession, config: Config) -> dict[str, int]:
    """The latest commit of each input table, to train on and to record."""
    return {name: io.table_version(spark, config, name) for name in INPUT_TABLES}


def model_info(spark: SparkSession, config: Config, version: str) -> dict:
    """``model_info.json`` of ``version`` ({} when absent)."""
    return json.loads(io.read_text(spark, f"{model_dir(config, version)}/model_info.json") or "{}")


def read_input(spark: SparkSession, config: Config, version: str, name: str, info: dict | None = None):
    """Input table ``name`` at the commit ``version`` was trained on (the latest for a
    model trained before commits were recorded)."""
    info = model_info(spark, config, version) if info is None else info
    return io.read_table(spark, config, name, info.get("inputs", {}).get(name))


def model_dir(config: Config, version: str) -> str:
    return f"{config.require('paths.models').rstrip('/')}/{version}"


def pointer_path(config: Config) -> str:
    return f"{config.require('paths.models').rstrip('/')}/{CURRENT_POINTER}"


def current_version(spark: SparkSession, config: Config) -> str:
    pointer = pointer_path(config)
    version = io.read_text(spark, pointer)
    if not version:
        raise StageOrderError(f"no trained model at {pointer}: run the train stage first")
    return version.strip()


def tuning(spark: SparkSession, config: Config, version: str) -> dict | None:
    """What tuning chose for ``version`` (``tuning.json``), or None when it was not tuned."""
    tuned = io.read_text(spark, f"{model_dir(config, version)}/tuning.json")
    return json.loads(tuned) if tuned else None
