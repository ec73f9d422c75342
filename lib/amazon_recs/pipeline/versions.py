"""Model versions: how a version is named, where it is stored, which one is current.

A version is derived from the model settings and the training rows, so the same
inputs give the same version; ``models/CURRENT`` names the one later stages use.
"""

from __future__ import annotations

import hashlib
import json

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.errors import StageOrderError
from amazon_recs.schemas import ITEM_IDX, TS, USER_IDX, WEIGHT

CURRENT_POINTER = "CURRENT"
VERSION_SECTIONS = ("split", "als", "content", "popular", "recommend", "tune")


def model_version(config: Config, train: DataFrame) -> str:
    """Derived from the model settings and the training rows: same inputs, same version."""
    configured = config.require("run.model_version")
    if configured != "auto":
        return configured
    data_hash = train.select(F.sum(F.xxhash64(USER_IDX, ITEM_IDX, WEIGHT, TS).cast("decimal(38,0)"))).first()[
        0
    ]
    settings = {s: config.require(s) for s in VERSION_SECTIONS}
    digest = hashlib.sha1(json.dumps([settings, str(data_hash)], sort_keys=True).encode())
    return digest.hexdigest()[:12]


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
