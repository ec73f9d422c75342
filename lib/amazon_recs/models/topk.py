"""Ranking helpers shared by every model: top-k per user, seen-item removal."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from amazon_recs.models.jit import njit_cached
from amazon_recs.schemas import ITEM_IDX, RANK, SCORE, USER_IDX
from amazon_recs.spark import share


def top_k(
    scored: DataFrame,
    k: int,
    col_user: str | list[str] = USER_IDX,
    col_item: str = ITEM_IDX,
    col_score: str = SCORE,
) -> DataFrame:
    """Keep each user's ``k`` best rows and number them 1..k in ``rank``.

    ``col_user`` may be a list of columns to rank within each group of them.
    Ties in score are broken by item id, so the result is deterministic.
    """
    groups = [col_user] if isinstance(col_user, str) else col_user
    order = Window.partitionBy(*groups).orderBy(F.desc(col_score), F.asc(col_item))
    return scored.withColumn(RANK, F.row_number().over(order)).filter(F.col(RANK) <= k)


def filter_seen(
    candidates: DataFrame, seen: DataFrame, col_user: str = USER_IDX, col_item: str = ITEM_IDX
) -> DataFrame:
    """Remove (user, item) pairs the user already interacted with."""
    return candidates.join(seen.select(col_user, col_item), [col_user, col_item], how="left_anti")


def minmax_per_user(scored: DataFrame, col_user: str = USER_IDX, col_score: str = SCORE) -> DataFrame:
    """Rescale each user's scores to [0, 1]; a user whose scores are all equal gets 1."""
    per_user = Window.partitionBy(col_user)
    lo, hi = F.min(col_score).over(per_user), F.max(col_score).over(per_user)
    return scored.withColumn(
        col_score, F.when(hi > lo, (F.col(col_score) - lo) / (hi - lo)).otherwise(F.lit(1.0))
    )


# --- per-user exclusion on executors ------------------------------------------------------------
#
# Seen items are excluded user by user, so a user's work is bounded by the
# user's own history (n + seen_u), never by the heaviest user's. The arrays
# shared by every user (item factors, a popularity ranking, a shuffle of the
# catalogue) are item-sized: they are collected once and broadcast.

SEEN = "_seen"
# The largest score matrix (users x items, float32) a block may hold. With
# argpartition's int64 indices and a boolean mask beside it, a block costs about
# 14 bytes per float: ~110 MB of Python worker memory at 8M floats.
BLOCK_FLOATS = 8 * 1024 * 1024


def ranked_schema(col_user: str = USER_IDX, col_item: str = ITEM_IDX, col_score: str = SCORE) -> T.StructType:
    """What the per-user recommenders promise: user, item, score (double), rank 1..n."""
    return T.StructType(
        [
            T.StructField(col_user, T.IntegerType(), False),
            T.StructField(col_item, T.IntegerType(), False),
            T.StructField(col_score, T.DoubleType(), False),
            T.StructField(RANK, T.IntegerType(), False),
        ]
    )


def with_seen_items(
    users: DataFrame, seen: DataFrame, col_user: str = USER_IDX, col_item: str = ITEM_IDX
) -> DataFrame:
    """Each distinct user of ``users`` with the array of items they have seen in ``seen``
    (column ``SEEN``; null for a user with none). One groupBy and one join: linear."""
    per_user = seen.groupBy(col_user).agg(F.collect_set(col_item).alias(SEEN))
    return users.select(col_user).distinct().join(per_user, col_user, how="left")


def collect_columns(df: DataFrame, *cols: str) -> list[np.ndarray]:
    """Columns of a frame the driver means to hold as numpy arrays; an array column
    becomes a 2-D array. Each Arrow batch becomes numpy on the executors and travels
    as one pickled record, so neither side holds a Python object per row. It is for
    item-sized frames and for the pairs item-kNN turns into its shared matrix; never
    for a user-sized one (a row per user)."""

    def to_arrays(batches):
        for batch in batches:
            if len(batch):
                arrays = [_as_array(batch[c]) for c in cols]
                yield pd.DataFrame({"payload": [pickle.dumps(arrays, protocol=pickle.HIGHEST_PROTOCOL)]})

    rows = df.select(*cols).mapInPandas(to_arrays, "payload binary").collect()
    if not rows:
        return [np.empty(0) for _ in cols]
    # Each payload and each part is let go once copied: the columns are held about
    # once, not three times (item-kNN's neighbours at 500k items are 0.7 GB).
    parts = []
    for at, row in enumerate(rows):
        parts.append(pickle.loads(row.payload))
        rows[at] = row = None
    columns = []
    for i in range(len(cols)):
        columns.append(np.concatenate([p[i] for p in parts]))
        for p in parts:
            p[i] = None
    return columns


def _as_array(column: pd.Series) -> np.ndarray:
    """A pandas column from Arrow as numpy: an array column stacked into 2-D."""
    values = column.to_numpy()
    if values.dtype == object and len(values) and isinstance(values[0], np.ndarray | list):
        return np.stack(values)
    return values


def index_of(ids: np.ndarray, values: np.ndarray, sorter: np.ndarray | None = None) -> tuple:
    """Where each of ``values`` is in ``ids``: ``ids`` sorted, or ``ids[sorter]`` sorted.

    Returns:
        (found, index): a mask over ``values``, and the index in ``ids`` of those found.
    """
    if not len(ids) or not len(values):
        return np.zeros(len(values), bool), np.empty(0, np.int64)
    at = np.minimum(np.searchsorted(ids, values, sorter=sorter), len(ids) - 1)
    if sorter is not None:
        at = sorter[at]
    found = ids[at] == values
    return found, at[found]


def flat_seen(seen_lists, ids: np.ndarray, sorter: np.ndarray | None = None) -> tuple:
    """(row, index in ``ids``) of every seen item of every row; items not in ``ids`` are skipped.

    ``seen_lists`` holds one array (or None) per row.
    """
    lengths = np.fromiter((0 if s is None else len(s) for s in seen_lists), np.int64, len(seen_lists))
    if not lengths.sum():
        return np.empty(0, np.int64), np.empty(0, np.int64)
    flat = np.concatenate([np.asarray(s, dtype=ids.dtype) for s in seen_lists if s is not None and len(s)])
    rows = np.repeat(np.arange(len(seen_lists)), lengths)
    found, at = index_of(ids, flat, sorter)
    return rows[found], at


def top_n_per_row(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` highest finite scores, by score descending then column ascending
    (``top_k``'s order); -inf (or NaN) marks an excluded entry.

    Rows narrower than 64n go through a bounded heap of the ``n`` best so far
    (compiled): a score enters only when it beats the heap's worst.

    Wider rows go through a floor first: the columns are cut into groups (at
    least 2n), and the ``n``-th largest group maximum is a floor no row's
    ``n``-th best score lies under (``n`` groups each hold a score at or above
    it). Only the groups reaching the floor are read again, and only their
    scores at or above it, typically a few times ``n``, are sorted. One pass
    for the maxima is memory-bound numpy, faster there than the heap's
    compare per column.

    Returns:
        (cols, valid), both rows x min(n, columns): the chosen columns in rank order,
        and whether each is real (a row with fewer finite scores is padded at the end).
    """
    n_rows, n_cols = scores.shape
    k = min(n, n_cols)
    if k <= 0 or not n_rows:
        return np.zeros((n_rows, max(k, 0)), np.int64), np.zeros((n_rows, max(k, 0)), bool)
    if n_cols < 64 * k:
        cols, counts = _heap_top_rows(np.ascontiguousarray(scores), k)
        return cols, np.arange(k) < counts[:, None]
    # Groups of `size` columns, at least 2k groups (n_cols >= 64k), the columns left over in
    # a last group. Group j holds the columns j, j + groups, j + 2 groups, ...: its maximum
    # is an elementwise maximum of contiguous slices, the fastest reduction numpy has.
    size = max(8, n_cols // (16 * k))
    groups = n_cols // size
    body = scores[:, : groups * size].reshape(n_rows, size, groups)
    maxima = body.max(axis=1)
    rest = scores[:, groups * size :]
    if rest.shape[1]:
        maxima = np.concatenate([maxima, rest.max(axis=1, keepdims=True)], axis=1)
    floor = np.partition(maxima, maxima.shape[1] - k, axis=1)[:, maxima.shape[1] - k]
    # Only the groups reaching the floor are read again: about k of them per row.
    sel_rows, sel_groups = np.nonzero((maxima >= floor[:, None]) & (maxima > -np.inf))
    in_body = sel_groups < groups
    values = np.full((len(sel_rows), size), -np.inf, scores.dtype)
    values[in_body] = body[sel_rows[in_body], :, sel_groups[in_body]]
    values[~in_body, : rest.shape[1]] = rest[sel_rows[~in_body]]
    at, offset = np.nonzero((values >= floor[sel_rows][:, None]) & (values > -np.inf))
    rows = sel_rows[at]
    cols = np.where(in_body[at], offset * groups + sel_groups[at], groups * size + offset)
    index, rank = best_per_row(rows, scores[rows, cols], k, cols)
    out_cols = np.zeros((n_rows, k), np.int64)
    valid = np.zeros((n_rows, k), bool)
    out_cols[rows[index], rank - 1] = cols[index]
    valid[rows[index], rank - 1] = True
    return out_cols, valid


def best_per_row(
    rows: np.ndarray, scores: np.ndarray, n: int, cols: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n`` best of flat entries (row, col, score): score descending, then col
    ascending (``top_k``'s order).

    Without ``cols`` the entries must come sorted by (row, col); the position then
    breaks ties. Entries are grouped by row (a stable radix sort unless already
    grouped) and each row's best are chosen through a bounded heap (compiled).

    Returns:
        (index, rank): the chosen entries' indices in (row, rank) order, and their ranks 1..n.
    """
    rows = np.asarray(rows)
    if not len(rows) or n <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(rows) > 1 and (rows[1:] < rows[:-1]).any():
        order = np.argsort(rows, kind="stable")
    else:
        order = np.arange(len(rows))
    ties = np.arange(len(rows)) if cols is None else np.asarray(cols, np.int64)
    grouped = rows[order]
    heads = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    bounds = np.r_[heads, len(rows)].astype(np.int64)
    scores = np.asarray(scores)
    chosen, rank = _heap_best_in_runs(
        bounds, np.ascontiguousarray(scores[order]), np.ascontiguousarray(ties[order]), int(n)
    )
    return order[chosen], rank


@njit_cached()
def _worse(s1, t1, s2, t2) -> bool:
    """Entry 1 ranks after entry 2: a lower score, or an equal score and a larger tie key."""
    return s1 < s2 or (s1 == s2 and t1 > t2)


@njit_cached()
def _swap(hs, ht, hi, a, b):
    """Exchange heap entries ``a`` and ``b`` (score, tie key, index)."""
    hs[a], hs[b] = hs[b], hs[a]
    ht[a], ht[b] = ht[b], ht[a]
    hi[a], hi[b] = hi[b], hi[a]


@njit_cached()
def _heap_push_pop(hs, ht, hi, size, s, t, i, k):
    """Add (score s, tie t, index i) to the heap of the ``k`` best (worst at the root);
    returns the heap's new size. An entry not better than a full heap's root is dropped."""
    if size < k:
        j = size
        size += 1
        hs[j], ht[j], hi[j] = s, t, i
        while j > 0:
            parent = (j - 1) // 2
            if _worse(hs[j], ht[j], hs[parent], ht[parent]):
                _swap(hs, ht, hi, j, parent)
                j = parent
            else:
                break
        return size
    if not _worse(hs[0], ht[0], s, t):
        return size
    hs[0], ht[0], hi[0] = s, t, i
    _sift_down(hs, ht, hi, 0, size)
    return size


@njit_cached()
def _sift_down(hs, ht, hi, j, size):
    while True:
        child = 2 * j + 1
        if child >= size:
            return
        if child + 1 < size and _worse(hs[child + 1], ht[child + 1], hs[child], ht[child]):
            child += 1
        if _worse(hs[child], ht[child], hs[j], ht[j]):
            _swap(hs, ht, hi, j, child)
            j = child
        else:
            return


@njit_cached()
def _drain(hs, ht, hi, size, out):
    """Empty the heap into ``out`` best first (the heap's indices); returns the count."""
    count = size
    while size > 0:
        out[size - 1] = hi[0]
        size -= 1
        hs[0], ht[0], hi[0] = hs[size], ht[size], hi[size]
        _sift_down(hs, ht, hi, 0, size)
    return count


@njit_cached()
def _heap_top_rows(scores, k):
    n_rows, n_cols = scores.shape
    cols = np.zeros((n_rows, k), np.int64)
    counts = np.zeros(n_rows, np.int64)
    hs = np.empty(k, scores.dtype)
    ht = np.empty(k, np.int64)
    hi = np.empty(k, np.int64)
    for r in range(n_rows):
        size = 0
        for c in range(n_cols):
            s = scores[r, c]
            if s == -np.inf or s != s:
                continue
            if size == k and s <= hs[0]:  # columns ascend: an equal score ranks after the root
                continue
            size = _heap_push_pop(hs, ht, hi, size, s, c, c, k)
        counts[r] = _drain(hs, ht, hi, size, cols[r])
    return cols, counts


@njit_cached()
def _heap_best_in_runs(bounds, scores, ties, n):
    """For each run [bounds[g], bounds[g + 1]), its ``n`` best entries (score desc, tie asc):
    their positions in (run, rank) order and their ranks 1..n."""
    total = 0
    for g in range(len(bounds) - 1):
        total += min(n, bounds[g + 1] - bounds[g])
    chosen = np.empty(total, np.int64)
    rank = np.empty(total, np.int64)
    hs = np.empty(n, scores.dtype)
    ht = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    at = 0
    for g in range(len(bounds) - 1):
        size = 0
        for i in range(bounds[g], bounds[g + 1]):
            size = _heap_push_pop(hs, ht, hi, size, scores[i], ties[i], i, n)
        count = _drain(hs, ht, hi, size, chosen[at:])
        for j in range(count):
            rank[at + j] = j + 1
        at += count
    return chosen, rank


def first_unseen_steps(seen_at: np.ndarray, start: int, length: int, n: int) -> np.ndarray:
    """The first ``n`` steps of a walk over ``length`` places from ``start`` (wrapping
    once) that avoid the places in ``seen_at``. Costs n + len(seen_at), whatever ``length``."""
    skip = (seen_at - start) % length
    limit = min(length, n + len(skip))
    free = np.ones(limit, bool)
    free[skip[skip < limit]] = False
    return np.flatnonzero(free)[:n]


def walk_unseen(
    per_user: DataFrame,
    order: np.ndarray,
    n: int,
    order_scores: np.ndarray | None = None,
    col_start: str | None = None,
    col_user: str = USER_IDX,
    col_item: str = ITEM_IDX,
    col_score: str = SCORE,
) -> DataFrame:
    """Each user's first ``n`` unseen items along ``order`` (item ids, broadcast).

    Args:
        per_user: ``col_user``, ``SEEN`` (as ``with_seen_items`` makes) and, when
            ``col_start`` is given, the place in ``order`` each user starts from
            (the walk then wraps round once); otherwise every user starts at the top.
        order_scores: the score of each place in ``order``; without it, scores go
            from 1 down along the list (1 - (rank - 1) / n).

    Returns:
        Columns user_idx, item_idx, score, rank (rank 1..n; fewer when fewer are unseen).
    """
    spark = per_user.sparkSession
    schema = ranked_schema(col_user, col_item, col_score)
    order = np.asarray(order)
    if n <= 0 or not len(order):
        return spark.createDataFrame([], schema)
    sorter = np.argsort(order, kind="stable")
    shared = share(spark, (order, sorter, order_scores))

    def walk(batches):
        order, sorter, order_scores = shared.value
        for batch in batches:
            users, seen = batch[col_user].to_numpy(), batch[SEEN].to_numpy()
            starts = batch[col_start].to_numpy() if col_start else np.zeros(len(users), np.int64)
            rows, at = flat_seen(seen, order, sorter)
            bounds = np.searchsorted(rows, np.arange(len(users) + 1))
            out_users, out_steps, out_starts, out_ranks = [], [], [], []
            for j in range(len(users)):
                steps = first_unseen_steps(at[bounds[j] : bounds[j + 1]], int(starts[j]), len(order), n)
                out_users.append(np.full(len(steps), users[j]))
                out_steps.append(steps)
                out_starts.append(np.full(len(steps), starts[j]))
                out_ranks.append(np.arange(1, len(steps) + 1))
            if not out_users:
                continue
            places = (np.concatenate(out_starts) + np.concatenate(out_steps)) % len(order)
            ranks = np.concatenate(out_ranks)
            scores = order_scores[places] if order_scores is not None else 1.0 - (ranks - 1) / n
            yield pd.DataFrame(
                {
                    col_user: np.concatenate(out_users).astype(np.int32),
                    col_item: order[places].astype(np.int32),
                    col_score: np.asarray(scores, np.float64),
                    RANK: ranks.astype(np.int32),
                }
            )

    columns = [col_user, SEEN] + ([col_start] if col_start else [])
    return per_user.select(*columns).mapInPandas(walk, schema)
