"""What every stage shares: the signature, the cache release around each run, and
the progress lines of long stages."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from functools import wraps

from pyspark.sql import SparkSession

from amazon_recs.config import Config
from amazon_recs.errors import STATUS_FILE
from amazon_recs.spark import releasing_caches

Stage = Callable[[SparkSession, Config], dict]

log = logging.getLogger("amazon_recs")
# What runs now: the stage and its step, for progress lines and for the one line an
# error becomes (an out-of-memory error names both).
NOW: dict[str, str | None] = {"stage": None, "step": None}
# NOW is also kept where bin/spark-submit asks (STATUS_FILE): if Spark ends the JVM (an
# OutOfMemoryError in a task does), this process is stopped with it, and only the
# launcher is left to say where.


def _now(**what: str | None) -> None:
    NOW.update(what)
    if path := os.environ.get(STATUS_FILE):
        try:
            with open(path, "w") as f:
                json.dump(NOW, f)
        except OSError:  # it only improves an error message
            pass


def progress(step: str) -> None:
    """Say what a long stage is doing now, on the console and in any error it ends with."""
    _now(step=step)
    log.info("stage %s: %s", NOW["stage"] or "-", step)


def stage(run: Stage) -> Stage:
    """A stage leaves nothing cached behind: what it cached ends with it."""

    @wraps(run)
    def released(spark: SparkSession, config: Config) -> dict:
        _now(stage=run.__name__.removeprefix("run_"), step=None)
        with releasing_caches(spark):
            return run(spark, config)

    return released
