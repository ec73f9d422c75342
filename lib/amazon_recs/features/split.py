"""Holding out test (and validation) interactions: per user by time, at random or the
last one, or by one time cut for everyone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.schemas import ITEM, SPLIT, TS, USER

TRAIN, TEST = "train", "test"
TEMPORAL, RANDOM = "temporal", "random"
GLOBAL_TEMPORAL, LEAVE_LAST_OUT = "global_temporal", "leave_last_out"
PROTOCOLS = (TEMPORAL, RANDOM, GLOBAL_TEMPORAL, LEAVE_LAST_OUT)


@dataclass(frozen=True)
class SplitParams:
    """How each user's interactions are held out (``split.*`` in the configuration)."""

    test_fraction: float = 0.2
    min_user_interactions: int = 4
    protocol: str = TEMPORAL
    seed: int = 42
    cutoff: str | None = None  # global_temporal: a date; else the (1 - test_fraction) quantile of time


def with_split(
    interactions: DataFrame,
    test_fraction: float,
    min_user_interactions: int,
    col_user: str = USER,
    protocol: str = TEMPORAL,
    seed: int = 0,
    cutoff: str | None = None,
) -> DataFrame:
    """Hold out test interactions: ``split`` is ``train`` or ``test``.

    Per user (``temporal``, ``random``, ``leave_last_out``), users with at least
    ``min_user_interactions`` keep some of their interactions for test and others
    train on all: ``temporal`` their latest ``test_fraction`` (at least one),
    ``random`` a seeded random ``test_fraction`` (stratified by user, the protocol of
    published MovieLens benchmarks), ``leave_last_out`` their latest one.

    ``global_temporal`` is one time cut for everyone, as production sees it: every
    interaction at or after ``cutoff`` (a date, UTC) is test, or, without a date,
    every one after the time by which ``1 - test_fraction`` of them happened (a job
    computes it). No user's future trains another's model. A user whose every
    interaction is after the cut has no train rows: a cold user, evaluated apart.
    """
    if protocol == GLOBAL_TEMPORAL:
        cut = time_cut(interactions, test_fraction, cutoff)
        return interactions.withColumn(SPLIT, F.when(F.unix_micros(TS) >= cut, TEST).otherwise(TRAIN))
    if protocol in (TEMPORAL, LEAVE_LAST_OUT):
        order = [F.desc(TS), F.desc(ITEM)]
    elif protocol == RANDOM:
        order = [F.xxhash64(F.lit(seed), col_user, ITEM), F.col(ITEM)]
    else:
        raise ConfigError(f"split.protocol '{protocol}' is not one of {', '.join(PROTOCOLS)}")
    held_out_first = Window.partitionBy(col_user).orderBy(*order)
    per_user = Window.partitionBy(col_user)
    n = F.count(F.lit(1)).over(per_user)
    share = F.lit(1) if protocol == LEAVE_LAST_OUT else F.greatest(F.lit(1), F.floor(n * test_fraction))
    n_test = F.when(n >= min_user_interactions, share).otherwise(0)
    return interactions.withColumn(
        SPLIT, F.when(F.row_number().over(held_out_first) <= n_test, TEST).otherwise(TRAIN)
    )


def time_cut(interactions: DataFrame, test_fraction: float, cutoff: str | None) -> int:
    """The global cut in microseconds since the epoch: ``cutoff`` (an ISO date or time,
    UTC unless it says otherwise), else the time below which ``1 - test_fraction`` of
    ``interactions`` fall (to 0.01% of the rows)."""
    if cutoff:
        try:
            cut = datetime.fromisoformat(str(cutoff))
        except ValueError:
            raise ConfigError(f"split.cutoff '{cutoff}' is not a date (YYYY-MM-DD) or an ISO time") from None
        return round((cut if cut.tzinfo else cut.replace(tzinfo=UTC)).timestamp() * 1e6)
    if not 0 < test_fraction < 1:
        raise ConfigError(f"split.test_fraction must be between 0 and 1, got {test_fraction}")
    seconds = interactions.select(F.unix_micros(F.col(TS)).cast("double").alias("_us"))
    quantile = seconds.approxQuantile("_us", [1.0 - test_fraction], 1e-4)
    # Just after the quantile: the rows at it train, so at most test_fraction is held out.
    return round(quantile[0]) + 1 if quantile else 0  # no interactions: nothing to cut
