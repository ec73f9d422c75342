"""Item-kNN on co-interactions: each item's nearest items by the users they share.

    sim(i, j) = co(i, j) / (sqrt(n_i * n_j) + shrinkage)

``co(i, j)`` is the number of training users who interacted with both items,
``n_i`` the users of item ``i``: the cosine of the items' binary user vectors at
shrinkage 0; the shrinkage pulls pairs with little co-support towards 0 (a pair
seen together once among popular items is not a neighbour). Each item keeps its
``neighbours`` best other items (similarity descending, then item ascending), and
a user's score for an item is the sum of its similarities to the user's items,
the best contributor giving the reason ("because you bought X"): the scoring of
``content.recommend_content``, with these neighbours instead of the text's.

How it runs, and what it costs. The binary item x user matrix (one entry per
distinct training pair: 1M pairs are 12 MB) is collected once and broadcast;
Spark tasks take blocks of items and compute their rows of co-counts as one
sparse product, then shrink and keep each row's best. The product's work is the
sum over users of their item count squared, so one heavy user would dominate it:
a user with more than ``max_user_items`` items counts with that many of them, a
sample chosen by a hash of (user, item), the same on every run. Blocks are cut
by that work (``BLOCK_WORK`` multiply-adds each), so a block's memory stays
bounded however popular its items are. The total is at most the number of users
times ``max_user_items`` squared, linear in the users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.models.content import NEIGHBOUR, NEIGHBOURS_SCHEMA, SIMILARITY, recommend_content
from amazon_recs.models.topk import best_per_row, collect_columns
from amazon_recs.schemas import ITEM_IDX, USER_IDX, WEIGHT
from amazon_recs.spark import share

log = logging.getLogger(__name__)

# Multiply-adds of the sparse product per task block. Its co-count rows are at most
# this many entries, and a worker holds about 70 bytes per entry while it filters
# them and keeps each row's best: 8M entries are ~0.5 GB per worker (16M took the
# two workers to 2.8 GB at 10M reviews).
BLOCK_WORK = 1 << 23


@dataclass(frozen=True)
class ItemKnnParams:
    """The item-kNN model's settings (``item_knn.*``)."""

    neighbours: int = 100
    shrinkage: float = 10.0
    min_support: int = 1  # pairs with fewer shared users are never neighbours
    max_user_items: int = 500  # a heavier user counts with a fixed sample of this many items

    def __post_init__(self):
        if self.neighbours < 1:
            raise ConfigError(f"item_knn.neighbours must be at least 1, not {self.neighbours}")
        if self.shrinkage < 0:
            raise ConfigError(f"item_knn.shrinkage must be 0 or more, not {self.shrinkage}")
        if self.min_support < 1:
            raise ConfigError(f"item_knn.min_support must be at least 1, not {self.min_support}")
        if self.max_user_items < 2:
            raise ConfigError(f"item_knn.max_user_items must be at least 2, not {self.max_user_items}")


def capped_pairs(train: DataFrame, max_user_items: int) -> DataFrame:
    """The distinct (user, item) pairs of ``train``; a user with more than
    ``max_user_items`` items keeps the ``max_user_items`` of smallest hash(user, item)."""
    pairs = train.select(USER_IDX, ITEM_IDX).dropna().distinct()
    counts = pairs.groupBy(USER_IDX).agg(F.count(F.lit(1)).alias("_n"))
    heavy = counts.filter(F.col("_n") > max_user_items).select(USER_IDX)
    light = pairs.join(heavy, USER_IDX, how="left_anti")
    # Only the heavy users' pairs go through the window (ranked by hash within each
    # user), so its shuffle is as large as their histories, not the table.
    sampled = (
        pairs.join(F.broadcast(heavy), USER_IDX, how="left_semi")
        .withColumn("_h", F.xxhash64(USER_IDX, ITEM_IDX))
        .withColumn("_r", F.row_number().over(Window.partitionBy(USER_IDX).orderBy("_h", ITEM_IDX)))
        .filter(F.col("_r") <= max_user_items)
        .select(USER_IDX, ITEM_IDX)
    )
    return light.unionByName(sampled)


def collect_matrix(pairs: DataFrame) -> tuple[np.ndarray, sp.csr_matrix]:
    """(item ids ascending, the binary item x user CSR matrix in that row order).

    The pairs come as numpy columns (``collect_columns``), not through ``toPandas``:
    at 8.4M pairs a Row object per pair took 3.5 GB of the driver and 100 s."""
    items, users = collect_columns(pairs, ITEM_IDX, USER_IDX)
    ids, rows = np.unique(items.astype(np.int32, copy=False), return_inverse=True)
    _, cols = np.unique(users.astype(np.int32, copy=False), return_inverse=True)
    del items, users
    matrix = sp.csr_matrix(
        (np.ones(len(rows), np.float64), (rows, cols)), shape=(len(ids), int(cols.max(initial=-1)) + 1)
    )
    matrix.sum_duplicates()
    return ids.astype(np.int32), matrix


def block_starts(item_work: np.ndarray, work: int) -> np.ndarray:
    """Consecutive item blocks whose product work (``item_work``: per item, the sum
    over its users of their item count) stays within ``work``; a single item above
    it is a block."""
    starts, total = [0], 0.0
    for i, cost in enumerate(item_work):
        if total and total + cost > work:
            starts.append(i)
            total = 0.0
        total += cost
    return np.asarray(starts, np.int64)


def neighbours_of_block(
    ids: np.ndarray,
    matrix: sp.csr_matrix,
    transposed: sp.csr_matrix,
    users: np.ndarray,
    start: int,
    stop: int,
    params: ItemKnnParams,
) -> pd.DataFrame:
    """Rows ``start``..``stop`` of the item x item similarities, each row's best kept.
    ``users`` holds each item's user count; the square root of the integer product
    n_i * n_j (exact in float64) makes equal similarities equal to the last bit, so
    their ties go to the smaller item."""
    co = (matrix[start:stop] @ transposed).tocoo()
    rows, cols, counts = co.row + np.int32(start), co.col, co.data  # int32: item places
    del co
    keep = (rows != cols) & (counts >= params.min_support)
    rows, cols, counts = rows[keep], cols[keep], counts[keep]
    del keep
    sims = counts / (np.sqrt(users[rows] * users[cols]) + params.shrinkage)
    index, rank = best_per_row(rows, sims, params.neighbours, cols)
    return pd.DataFrame(
        {
            ITEM_IDX: ids[rows[index]],
            NEIGHBOUR: ids[cols[index]],
            SIMILARITY: sims[index].astype(np.float64),
            "rank": rank.astype(np.int32),
        }
    )


def fit_item_knn(train: DataFrame, params: ItemKnnParams, block_work: int = BLOCK_WORK) -> DataFrame:
    """Each trained item's ``params.neighbours`` nearest items (module docstring).

    Returns:
        Columns item_idx, neighbour_idx, similarity, rank (``content.NEIGHBOURS_SCHEMA``).
    """
    spark = train.sparkSession
    ids, matrix = collect_matrix(capped_pairs(train, params.max_user_items))
    if not len(ids):
        return spark.createDataFrame([], NEIGHBOURS_SCHEMA)
    transposed = matrix.T.tocsr()  # user x item
    users = np.diff(matrix.indptr).astype(np.float64)  # each item's user count
    item_work = matrix @ np.diff(transposed.indptr).astype(np.float64)  # an item row's multiply-adds
    starts = block_starts(item_work, block_work)
    work = float(item_work.sum())
    log.info(
        "item-kNN: %d items, %d users, %d pairs; %.3g multiply-adds in %d blocks",
        len(ids),
        matrix.shape[1],
        matrix.nnz,
        work,
        len(starts),
    )
    shared = share(spark, (ids, matrix, transposed, users, np.r_[starts, len(ids)]), mapped=True)

    def search(batches):
        ids, matrix, transposed, users, bounds = shared.value
        for batch in batches:
            for b in batch["id"].to_numpy():
                yield neighbours_of_block(
                    ids, matrix, transposed, users, int(bounds[b]), int(bounds[b + 1]), params
                )

    tasks = max(1, min(len(starts), spark.sparkContext.defaultParallelism * 4))
    return spark.range(0, len(starts), 1, numPartitions=tasks).mapInPandas(search, NEIGHBOURS_SCHEMA)


def recommend_item_knn(neighbours: DataFrame, train: DataFrame, n: int) -> DataFrame:
    """Each user's ``n`` best unseen items: the sum of their similarities to the user's
    items (each counted once, whatever its weight), with the item that contributes
    most as the reason.

    Returns:
        Columns user_idx, item_idx, score, because_idx, rank.
    """
    seen = train.select(USER_IDX, ITEM_IDX).dropna().distinct().withColumn(WEIGHT, F.lit(1.0))
    return recommend_content(neighbours, seen, n)
