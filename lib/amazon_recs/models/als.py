"""Implicit-feedback ALS (Hu, Koren and Volinsky 2008) with MLlib."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.models.als_blocked import fit_blocked
from amazon_recs.models.topk import (
    BLOCK_FLOATS,
    SEEN,
    collect_columns,
    flat_seen,
    ranked_schema,
    top_k,
    top_n_per_row,
    with_seen_items,
)
from amazon_recs.schemas import ITEM_IDX, SCORE, USER_IDX, WEIGHT
from amazon_recs.spark import share

FACTORS = "_factors"


@dataclass(frozen=True)
class AlsParams:
    """Implicit ALS's settings (``als.*`` in the configuration)."""

    rank: int = 32
    max_iter: int = 15
    reg_param: float = 0.1
    alpha: float = 5.0
    checkpoint_interval: int = 5
    num_blocks: int = 0  # user and item blocks; 0: Spark's default parallelism
    seed: int = 42
    # "local" (als_blocked in the driver), "blocked" (als_blocked on the executors:
    # numba solves, factors broadcast), "mllib", or "auto": local up to
    # local_max_ratings ratings, blocked while the larger side's factors are at most
    # blocked_max_factors_mb, MLlib above.
    solver: str = "auto"
    local_max_ratings: int = 2_000_000
    blocked_max_factors_mb: int = 1024


SOLVERS = ("auto", "local", "blocked", "mllib")


def fit_als(train: DataFrame, params: AlsParams) -> ALSModel:
    """Fit implicit ALS on (user_idx, item_idx, weight); confidence is 1 + alpha * weight.

    Every solver fits the same model (``als_blocked``'s docstring); ``solver`` picks
    one, ``auto`` by the input's size (``choose_solver``).
    """
    if params.solver not in SOLVERS:
        raise ConfigError(f"als.solver must be one of {', '.join(SOLVERS)}, not {params.solver!r}")
    solver = choose_solver(train, params)
    if solver in ("local", "blocked"):
        return fit_blocked(
            train,
            params.rank,
            params.max_iter,
            params.reg_param,
            params.alpha,
            params.seed,
            solver == "local",
        )
    return fit_mllib(train, params)


def choose_solver(train: DataFrame, params: AlsParams) -> str:
    """``auto``: local up to ``local_max_ratings`` ratings (two Spark jobs per
    iteration cost more than the solves there), then blocked while the larger
    side's factors (ids up to the largest, rank float32 each: what the blocked
    solver broadcasts) fit ``blocked_max_factors_mb``, then MLlib."""
    if params.solver != "auto":
        return params.solver
    ratings, *largest = train.agg(F.count(F.lit(1)), F.max(USER_IDX), F.max(ITEM_IDX)).first()
    if ratings <= params.local_max_ratings:
        return "local"
    rows = max((v or 0) + 1 for v in largest)
    megabytes = rows * params.rank * 4 / 2**20
    return "blocked" if megabytes <= params.blocked_max_factors_mb else "mllib"


def fit_mllib(train: DataFrame, params: AlsParams) -> ALSModel:
    """MLlib's ALS. The input is sorted so that the same data gives the same factors:
    ALS's partitioning, and so its floating-point sums, follow row order."""
    parallelism = train.sparkSession.sparkContext.defaultParallelism
    blocks = params.num_blocks or parallelism
    als = ALS(
        userCol=USER_IDX,
        itemCol=ITEM_IDX,
        ratingCol=WEIGHT,
        implicitPrefs=True,
        rank=params.rank,
        maxIter=params.max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        seed=params.seed,
        checkpointInterval=params.checkpoint_interval,
        coldStartStrategy="drop",
        numUserBlocks=blocks,
        numItemBlocks=blocks,
    )
    data = train.select(USER_IDX, ITEM_IDX, WEIGHT).orderBy(USER_IDX, ITEM_IDX).coalesce(parallelism)
    return als.fit(data)


def recommend_als(
    model: ALSModel, users: DataFrame, seen: DataFrame, n: int, block_floats: int = BLOCK_FLOATS
) -> DataFrame:
    """Each user's ``n`` best unseen items by predicted preference (MLlib's scores).

    See ``recommend_from_factors``; users without factors (unknown to the model)
    get no rows, as with MLlib's ``recommendForUserSubset``.

    Returns:
        Columns user_idx, item_idx, score, rank.
    """
    return recommend_from_factors(model.userFactors, model.itemFactors, users, seen, n, block_floats)


def recommend_from_factors(
    user_factors: DataFrame,
    item_factors: DataFrame,
    users: DataFrame,
    seen: DataFrame,
    n: int,
    block_floats: int = BLOCK_FLOATS,
    col_user: str = USER_IDX,
    col_item: str = ITEM_IDX,
    col_score: str = SCORE,
) -> DataFrame:
    """Each user's ``n`` highest unseen dot products with every item: a blocked matrix product.

    The item factors (items x rank float32, sorted by item) are broadcast: 500k
    items at rank 64 is 128 MB, the most this is meant for. Each user arrives
    with their factors and seen items; within an Arrow batch users are scored in
    blocks of at most ``block_floats`` scores (block users x items), their seen
    items set to -inf, and the top ``n`` taken per row (score descending, item
    ascending, as ``top_k``). A user's work is the catalogue's scores plus their
    own seen items; a user with fewer than ``n`` unseen items gets what remains.

    Args:
        user_factors, item_factors: ``id``, ``features`` (array<float>), as ALSModel's.

    Returns:
        Columns user_idx, item_idx, score (the float32 dot product, as a double), rank.
    """
    spark = users.sparkSession
    schema = ranked_schema(col_user, col_item, col_score)
    ids, factors = collect_columns(item_factors, "id", "features")
    if n <= 0 or not len(ids):
        return spark.createDataFrame([], schema)
    by_id = np.argsort(ids, kind="stable")
    shared = share(
        spark, (ids[by_id].astype(np.int32), np.ascontiguousarray(factors[by_id], dtype=np.float32))
    )
    block_users = max(1, block_floats // len(ids))

    def score(batches):
        item_ids, item_matrix = shared.value
        for batch in batches:
            if len(batch):
                yield from _top_n_blocks(batch, item_ids, item_matrix, n, block_users, schema.names)

    per_user = with_seen_items(users, seen, col_user, col_item).join(
        user_factors.select(F.col("id").alias(col_user), F.col("features").alias(FACTORS)),
        col_user,
        how="inner",
    )
    return per_user.select(col_user, FACTORS, SEEN).mapInPandas(score, schema)


def _top_n_blocks(batch, item_ids, item_matrix, n: int, block_users: int, names: list[str]):
    """One Arrow batch of (user, factors, seen), scored ``block_users`` users at a time."""
    col_user, col_item, col_score, col_rank = names
    users = batch[col_user].to_numpy()
    user_matrix = np.stack(batch[FACTORS].to_numpy()).astype(np.float32, copy=False)
    seen = batch[SEEN].to_numpy()
    for start in range(0, len(users), block_users):
        block = slice(start, start + block_users)
        scores = user_matrix[block] @ item_matrix.T
        rows, at = flat_seen(seen[block], item_ids)
        scores[rows, at] = -np.inf
        cols, valid = top_n_per_row(scores, n)
        row, place = np.nonzero(valid)
        chosen = cols[row, place]
        yield pd.DataFrame(
            {
                col_user: users[block][row].astype(np.int32),
                col_item: item_ids[chosen],
                col_score: scores[row, chosen].astype(np.float64),
                col_rank: (place + 1).astype(np.int32),
            }
        )


def dot(a: str, b: str):
    """Dot product of two array<float> columns, with built-in functions only."""
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0), lambda acc, v: acc + v)


def because_item(recs: DataFrame, seen: DataFrame, item_factors: DataFrame) -> DataFrame:
    """For each recommended (user, item), the seen item whose factors agree most with it.

    Returns:
        Columns user_idx, item_idx, because_idx.
    """
    f_rec = item_factors.select(F.col("id").alias(ITEM_IDX), F.col("features").alias("f_rec"))
    f_seen = item_factors.select(F.col("id").alias("because_idx"), F.col("features").alias("f_seen"))
    pairs = (
        recs.select(USER_IDX, ITEM_IDX)
        .join(seen.select(USER_IDX, F.col(ITEM_IDX).alias("because_idx")), USER_IDX, how="inner")
        .join(f_rec, ITEM_IDX, how="inner")
        .join(f_seen, "because_idx", how="inner")
        .withColumn("_agree", dot("f_rec", "f_seen"))
    )
    best = top_k(pairs, 1, col_user=[USER_IDX, ITEM_IDX], col_item="because_idx", col_score="_agree")
    return best.select(USER_IDX, ITEM_IDX, "because_idx")
