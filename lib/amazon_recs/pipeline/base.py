"""What every stage shares: the signature and the cache release around each run."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from pyspark.sql import SparkSession

from amazon_recs.config import Config
from amazon_recs.spark import releasing_caches

Stage = Callable[[SparkSession, Config], dict]


def stage(run: Stage) -> Stage:
    """A stage leaves nothing cached behind: what it cached ends with it."""

    @wraps(run)
    def released(spark: SparkSession, config: Config) -> dict:
        with releasing_caches(spark):
            return run(spark, config)

    return released
