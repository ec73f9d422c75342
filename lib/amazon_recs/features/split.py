"""Holding out test (and validation) interactions per user, by time or at random."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.schemas import ITEM, SPLIT, TS, USER

TRAIN, TEST = "train", "test"
TEMPORAL, RANDOM = "temporal", "random"


@dataclass(frozen=True)
class SplitParams:
    """How each user's interactions are held out (``split.*`` in the configuration)."""

    test_fraction: float = 0.2
    min_user_interactions: int = 4
    protocol: str = TEMPORAL
    seed: int = 42


def with_split(
    interactions: DataFrame,
    test_fraction: float,
    min_user_interactions: int,
    col_user: str = USER,
    protocol: str = TEMPORAL,
    seed: int = 0,
) -> DataFrame:
    """Hold out part of each user's interactions: ``split`` is ``train`` or ``test``.

    Users with at least ``min_user_interactions`` keep ``test_fraction`` of their
    interactions, at least one, for test; others train on all. ``temporal``
    holds out the most recent ones (closest to production); ``random`` a seeded
    random choice per user (stratified by user, the protocol of published
    MovieLens benchmarks).
    """
    if protocol == TEMPORAL:
        order = [F.desc(TS), F.desc(ITEM)]
    elif protocol == RANDOM:
        order = [F.xxhash64(F.lit(seed), col_user, ITEM), F.col(ITEM)]
    else:
        raise ConfigError(f"split.protocol '{protocol}' is not one of {TEMPORAL}, {RANDOM}")
    held_out_first = Window.partitionBy(col_user).orderBy(*order)
    per_user = Window.partitionBy(col_user)
    n = F.count(F.lit(1)).over(per_user)
    n_test = F.when(n >= min_user_interactions, F.greatest(F.lit(1), F.floor(n * test_fraction))).otherwise(0)
    return interactions.withColumn(
        SPLIT, F.when(F.row_number().over(held_out_first) <= n_test, TEST).otherwise(TRAIN)
    )
