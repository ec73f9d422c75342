"""Implicit ALS solved in blocks on the executors, with numba: the same algebra as MLlib.

MLlib's ALS spends most of a fit moving factors between user and item blocks
through shuffles and solving tiny systems in the JVM: at 1M ratings on 2 cores
it took 6.5x the time of the `implicit` library for the same model. Here the
ratings are grouped once, by user and by item, into one compressed sparse block
per partition (cached on the executors), and each half-iteration is one Spark
job: the other side's factors are broadcast, every block solves its rows'
normal equations in a numba kernel, and the solved factors come back to the
driver (they are users x rank and items x rank floats: 250k users at rank 32
are 32 MB). That broadcast is what bounds this solver: ``als.solver: auto``
uses it while the larger side's factors stay under ``als.blocked_max_factors_mb``
and MLlib's shuffle-based ALS above. Below ``als.local_max_ratings`` the same
kernel runs in the driver on one block per side (``local``), in a thread per
core (the kernel releases the GIL), where the two Spark jobs per iteration
would cost more than the solves.

The model is MLlib's (Hu, Koren and Volinsky 2008, as ``pyspark.ml.recommendation.ALS``
with ``implicitPrefs``): for a rating r, confidence - 1 is c1 = alpha * |r| and the
preference is 1 when r > 0; a row's factors solve

    (G + sum c1 y y^T + reg_param * n I) x = sum over r > 0 of (1 + c1) y

with G the other side's Gram matrix and n the row's positive ratings (MLlib's
scaled regularisation), in double precision: through the Woodbury identity
for a row with few ratings, by a Cholesky factorisation for the others. Item
factors are solved first, from seeded random unit user factors, as MLlib does.
The result is an ``ALSModel``, so everything downstream (saving, loading,
scoring) is unchanged. Rows are summed in (row, column, rating) order, so the
same ratings give the same factors whatever the partitioning.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from amazon_recs.models.jit import njit_cached
from amazon_recs.models.topk import collect_columns
from amazon_recs.schemas import ITEM_IDX, USER_IDX, WEIGHT
from amazon_recs.spark import session_conf

log = logging.getLogger(__name__)

BLOCK_SCHEMA = "ids binary, indptr binary, cols binary, vals binary"

# The most solved factors one task sends back. A task result above about 1 MB is
# fetched from the block manager into the driver's heap, copied once more on the way:
# at 10M reviews two user blocks of 1M users each (128 MB of factors) ran a 3 GiB
# heap out of memory.
RESULT_BYTES = 32 << 20


@dataclass(frozen=True)
class Block:
    """One partition's rows (users or items) as compressed sparse rows."""

    ids: np.ndarray  # int32, ascending: the row ids
    indptr: np.ndarray  # int64, len(ids) + 1
    cols: np.ndarray  # int32: the other side's ids
    vals: np.ndarray  # float32: the ratings


def fit_blocked(
    train: DataFrame, rank: int, max_iter: int, reg_param: float, alpha: float, seed: int, local: bool = False
) -> ALSModel:
    """Implicit ALS on (user_idx, item_idx, weight), as an MLlib ``ALSModel``.

    ``local``: the ratings are collected and solved in the driver process, one
    block per side, with the same kernel in as many threads as Spark's default
    parallelism and the driver's machine both allow: for an input whose ratings the
    driver holds easily, where the two Spark jobs of each half-iteration would
    cost more than the solves (the caller decides: ``als.local_max_ratings``).
    """
    spark = train.sparkSession
    sc = spark.sparkContext
    if local:
        u, i, w = collect_columns(train.select(USER_IDX, ITEM_IDX, WEIGHT), USER_IDX, ITEM_IDX, WEIGHT)
        frame = pd.DataFrame({USER_IDX: u, ITEM_IDX: i, WEIGHT: w})
        by_user = [_block(frame, USER_IDX, ITEM_IDX)] if len(frame) else []
        by_item = [_block(frame, ITEM_IDX, USER_IDX)] if len(frame) else []
        threads = max(1, min(sc.defaultParallelism, os.cpu_count() or 1))
    else:
        threads = 1
        largest = train.agg(F.max(USER_IDX), F.max(ITEM_IDX)).first()
        user_parts, item_parts = (_parts((v or 0) + 1, rank, sc.defaultParallelism) for v in largest)
        by_user = _blocks(train, USER_IDX, ITEM_IDX, user_parts)
        by_item = _blocks(train, ITEM_IDX, USER_IDX, item_parts)
    try:
        user_ids = _ids(by_user)
        item_ids = _ids(by_item)
        users = _initial(user_ids, rank, seed)
        items = np.zeros((int(item_ids[-1]) + 1 if len(item_ids) else 0, rank), np.float32)
        started = time.perf_counter()
        for iteration in range(1, max_iter + 1):
            began = time.perf_counter()
            items = _half(sc, by_item, users, len(items), rank, reg_param, alpha, threads)
            users = _half(sc, by_user, items, len(users), rank, reg_param, alpha, threads)
            seconds = time.perf_counter() - began
            (log.info if seconds >= 5 else log.debug)(
                "ALS iteration %d of %d: %.1fs", iteration, max_iter, seconds
            )
        log.info(
            "ALS (%s): %d users, %d items, rank %d, %d iterations in %.1fs",
            "in the driver" if local else "blocked",
            len(user_ids),
            len(item_ids),
            rank,
            max_iter,
            time.perf_counter() - started,
        )
    finally:
        if not local:
            by_user.unpersist(False)
            by_item.unpersist(False)
    return _model(spark, rank, user_ids, users, item_ids, items)


def _parts(rows: int, rank: int, cores: int) -> int:
    """Blocks for one side: a multiple of the cores, each block's solved factors
    (the task result the driver collects) at most ``RESULT_BYTES``."""
    waves = -(-rows * rank * 4 // (RESULT_BYTES * cores))
    return cores * max(1, waves)


def _ids(blocks) -> np.ndarray:
    """Every row id of the blocks (a list, or a cached RDD), ascending."""
    parts = [b.ids for b in blocks] if isinstance(blocks, list) else blocks.map(lambda b: b.ids).collect()
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int32)


def _block(df: pd.DataFrame, key: str, other: str) -> Block:
    """Ratings grouped by ``key``, sorted by (key, other, rating): a fixed summing order."""
    k = df[key].to_numpy().astype(np.int32)
    o = df[other].to_numpy().astype(np.int32)
    v = df[WEIGHT].to_numpy().astype(np.float32)
    order = np.lexsort((v, o, k))
    k, o, v = k[order], o[order], v[order]
    ids, counts = np.unique(k, return_counts=True)
    indptr = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Block(ids.astype(np.int32), indptr, o, v)


def _blocks(train: DataFrame, key: str, other: str, parts: int):
    """The ratings grouped by ``key`` into one ``Block`` per partition, cached."""

    def build(batches):
        frames = [b for b in batches if len(b)]
        if not frames:
            return
        block = _block(pd.concat(frames, ignore_index=True), key, other)
        yield pd.DataFrame(
            {
                "ids": [block.ids.tobytes()],
                "indptr": [block.indptr.tobytes()],
                "cols": [block.cols.tobytes()],
                "vals": [block.vals.tobytes()],
            }
        )

    rows = train.select(key, other, WEIGHT).repartition(parts, key).mapInPandas(build, BLOCK_SCHEMA)
    return rows.rdd.map(_decode).persist(StorageLevel.MEMORY_AND_DISK)


def _decode(row) -> Block:
    return Block(
        np.frombuffer(row.ids, np.int32),
        np.frombuffer(row.indptr, np.int64),
        np.frombuffer(row.cols, np.int32),
        np.frombuffer(row.vals, np.float32),
    )


def _initial(ids: np.ndarray, rank: int, seed: int) -> np.ndarray:
    """Seeded random unit vectors for the rows ``ids`` (zero elsewhere)."""
    factors = np.zeros((int(ids[-1]) + 1 if len(ids) else 0, rank), np.float32)
    draw = np.random.default_rng(seed).standard_normal((len(ids), rank))
    factors[ids] = draw / np.linalg.norm(draw, axis=1, keepdims=True)
    return factors


def _half(
    sc, blocks, other: np.ndarray, size: int, rank: int, reg_param: float, alpha: float, threads: int = 1
) -> np.ndarray:
    """Every row of ``blocks`` solved against the ``other`` side's factors: in this
    process for a list of blocks (in ``threads`` threads), on the executors (``other``
    broadcast) for an RDD."""
    wide = other.astype(np.float64)  # one copy, not two: the Gram matrix in half the time
    gram = wide.T @ wide
    factors = np.zeros((size, rank), np.float32)
    if isinstance(blocks, list):
        for block in blocks:
            factors[block.ids] = _solve(block, other, gram, rank, reg_param, alpha, threads)
        return factors
    shared = sc.broadcast(other)
    try:
        solved = blocks.map(
            lambda b: (b.ids, _solve(b, shared.value, gram, rank, reg_param, alpha))
        ).collect()
        for ids, rows in solved:
            factors[ids] = rows
    finally:
        shared.destroy()
    return factors


def _solve(
    block: Block,
    other: np.ndarray,
    gram: np.ndarray,
    rank: int,
    reg_param: float,
    alpha: float,
    threads: int = 1,
) -> np.ndarray:
    """The block's rows solved, split into ``threads`` runs of consecutive rows with
    about as many ratings each, solved at once (the kernel releases the GIL). Each
    row's solve is its own, so the split does not change a bit of the result."""
    out = np.empty((len(block.ids), rank), np.float32)
    cuts = np.searchsorted(block.indptr, np.linspace(0, block.indptr[-1], threads + 1)[1:-1])
    bounds = [0, *sorted({int(c) for c in cuts} - {0, len(block.ids)}), len(block.ids)]
    runs = list(zip(bounds[:-1], bounds[1:], strict=True))

    def solve(run):
        lo, hi = run
        indptr = block.indptr[lo : hi + 1]  # offsets into the whole block's cols and vals
        solve_rows(indptr, block.cols, block.vals, other, gram, alpha, reg_param, out[lo:hi])

    if len(runs) == 1:
        solve(runs[0])
    else:
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(solve, runs))
    return out


def _model(spark, rank: int, user_ids, users, item_ids, items) -> ALSModel:
    """An MLlib ALSModel over the solved factors (only rows that had ratings)."""

    def frame(ids, factors):
        # One float column per factor through Arrow (columns of primitives convert as a
        # whole), then one array column built by Spark: seconds faster than arrays in pandas.
        columns = {f"f{j}": factors[ids, j] for j in range(rank)}
        data = pd.DataFrame({"id": ids.astype(np.int32), **columns})
        flat = spark.createDataFrame(data)
        return flat.select(F.col("id").cast("int"), F.array(*columns).cast("array<float>").alias("features"))

    with session_conf(spark, {"spark.sql.execution.arrow.pyspark.enabled": "true"}):
        user_frame, item_frame = frame(user_ids, users), frame(item_ids, items)

    jvm = spark.sparkContext._jvm
    java = jvm.org.apache.spark.ml.recommendation.ALSModel(
        jvm.org.apache.spark.ml.util.Identifiable.randomUID("als"),
        rank,
        user_frame._jdf,
        item_frame._jdf,
    )
    java.setUserCol(USER_IDX).setItemCol(ITEM_IDX).setColdStartStrategy("drop")
    return ALSModel._from_java(java)


# --- kernel ---------------------------------------------------------------------------------------


@njit_cached(fastmath=True, nogil=True)
def solve_rows(indptr, cols, vals, other, gram, alpha, reg_param, out):
    """Row r's factors into ``out[r]``: the normal equations of the module docstring,
    in double precision. A row with few ratings (most users) is solved through the
    Woodbury identity from the precomputed inverse of G + reg_param * n I (about
    n rank^2 operations); the others by accumulating the matrix and a Cholesky
    factorisation (about rank^3 / 6 + n rank^2)."""
    rank = other.shape[1]
    # The Woodbury path needs G + reg n I invertible and every preferred item weighted.
    small = rank // 3 if reg_param > 0 and alpha > 0 else 0
    inverses = _shifted_inverses(gram, reg_param, small)
    a = np.empty((rank, rank))
    b = np.empty(rank)
    y = np.empty(rank)
    w = np.empty((max(small, 1), rank))
    s = np.empty((max(small, 1), max(small, 1)))
    d = np.empty(max(small, 1))
    c = np.empty(max(small, 1))
    z = np.empty(max(small, 1))
    rated = np.empty(max(small, 1), np.int64)
    for r in range(len(indptr) - 1):
        lo, hi = indptr[r], indptr[r + 1]
        weighted = 0
        positives = 0
        for p in range(lo, hi):
            if vals[p] != 0.0 and alpha != 0.0:
                weighted += 1
            if vals[p] > 0:
                positives += 1
        if positives == 0:  # no preference anywhere: the right-hand side is 0, so is x
            for i in range(rank):
                out[r, i] = 0.0
        elif weighted <= small and positives <= small:
            _woodbury_row(lo, hi, cols, vals, other, inverses[positives], alpha, rated, w, s, d, c, z, y)
            for i in range(rank):
                out[r, i] = y[i]
        else:
            a[:, :] = gram
            b[:] = 0.0
            for p in range(lo, hi):
                rating = vals[p]
                c1 = alpha * abs(rating)
                for i in range(rank):
                    y[i] = other[cols[p], i]
                if rating > 0:
                    for i in range(rank):
                        b[i] += (1.0 + c1) * y[i]
                if c1 != 0.0:
                    for i in range(rank):
                        ci = c1 * y[i]
                        for j in range(rank):  # the whole row: vectorises, unlike a triangle
                            a[i, j] += ci * y[j]
            for i in range(rank):
                a[i, i] += reg_param * positives
            _cholesky_solve(a, b, rank)
            for i in range(rank):
                out[r, i] = b[i]


@njit_cached(fastmath=True)
def _shifted_inverses(gram, reg_param, small):
    """(G + reg_param * m I)^-1 for m = 0 .. small (m = 0 is never used)."""
    rank = gram.shape[0]
    inverses = np.zeros((small + 1, rank, rank))
    a = np.empty((rank, rank))
    e = np.empty(rank)
    for m in range(1, small + 1):
        for col in range(rank):
            a[:, :] = gram
            for i in range(rank):
                a[i, i] += reg_param * m
                e[i] = 0.0
            e[col] = 1.0
            _cholesky_solve(a, e, rank)
            for i in range(rank):
                inverses[m, i, col] = e[i]
    return inverses


@njit_cached(fastmath=True, inline="always")
def _woodbury_row(lo, hi, cols, vals, other, inverse, alpha, rated, w, s, d, c, z, x):
    """x = (M + U^T C U)^-1 U^T d with M^-1 = ``inverse``, U the rated items' factors,
    C their c1 = alpha |r| and d their 1 + c1 (0 where r <= 0). With W = U M^-1 and
    S = C^-1 + U W^T: x = W^T (d - S^-1 (S - C^-1) d)."""
    rank = other.shape[1]
    n = 0
    for p in range(lo, hi):
        rating = vals[p]
        c1 = alpha * abs(rating)
        if c1 == 0.0:
            continue  # no confidence, no preference: the entry adds nothing
        rated[n] = cols[p]
        for i in range(rank):
            t = 0.0
            for k in range(rank):
                t += inverse[i, k] * other[cols[p], k]
            w[n, i] = t
        c[n] = c1
        d[n] = 1.0 + c1 if rating > 0 else 0.0
        n += 1
    # S = C^-1 + U W^T (symmetric), and the right-hand side (S - C^-1) d into z
    for j in range(n):
        for k in range(n):
            t = 0.0
            for i in range(rank):
                t += other[rated[j], i] * w[k, i]
            s[j, k] = t
    for j in range(n):
        t = 0.0
        for k in range(n):
            t += s[j, k] * d[k]
        z[j] = t
        s[j, j] += 1.0 / c[j]
    _cholesky_solve(s, z, n)
    for i in range(rank):
        t = 0.0
        for j in range(n):
            t += (d[j] - z[j]) * w[j, i]
        x[i] = t


@njit_cached(fastmath=True, inline="always")
def _cholesky_solve(a, b, rank):
    """Solve a x = b in place (x into b) for symmetric positive definite ``a``:
    a = L L^T with L in a's lower triangle, then two triangular solves."""
    for j in range(rank):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        d = np.sqrt(max(s, 1e-12))
        a[j, j] = d
        for i in range(j + 1, rank):
            t = a[i, j]
            for k in range(j):
                t -= a[i, k] * a[j, k]
            a[i, j] = t / d
    for i in range(rank):
        t = b[i]
        for k in range(i):
            t -= a[i, k] * b[k]
        b[i] = t / a[i, i]
    for i in range(rank - 1, -1, -1):
        t = b[i]
        for k in range(i + 1, rank):
            t -= a[k, i] * b[k]
        b[i] = t / a[i, i]
