"""Every model's top-k list for every user in one pass over the users.

The recommend stage used to build each model's top-n candidates as Spark rows
(users x n x models), then backfill, blend and explain them with per-user
windows and joins over those rows: the part of the run that grew fastest. Here
each user arrives once, as one row (user, ALS factors, seen items and weights,
a random start), and leaves as the rows that are written: ``k`` per model,
with the item, score, rank, source and the seen item that explains it.

Inside ``mapInPandas`` everything is numpy over flat arrays for a whole Arrow
batch: the item-sized arrays (ALS item factors, the content and item-kNN
neighbours as sparse matrices, the popularity and random orders) are broadcast once; a user's
work is the catalogue's ALS scores (a BLAS product, in blocks) plus their own
seen items times a constant. Where scores are summed per (user, item), over a
user's seen items' neighbours or over the hybrid's models, two numba kernels go
through the batch one user at a time, summing into item-sized arrays: no sort.
No model's candidates ever leave the worker, and nobody's list depends on the
heaviest user's history.

The semantics are those of the Spark reference functions, which the tests
compare against: ``recommend_from_factors`` and
``because_item`` (ALS), ``recommend_content``, ``recommend_item_knn``, ``recommend_popular``,
``recommend_random``, and ``lists.fill_to_k`` / ``lists.blend``. A position in
the catalogue stands for an item everywhere: the catalogue is sorted by item,
so "item ascending" breaks ties here as it does there. Tuning's weight search
reads the same candidates, before fusion (``candidate_arrays``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from amazon_recs.errors import ConfigError
from amazon_recs.models import ivf
from amazon_recs.models import lists as rc
from amazon_recs.models.jit import njit_cached
from amazon_recs.models.lists import BECAUSE, COMPONENTS, RANDOM_SOURCE, SOURCE
from amazon_recs.models.topk import (  # _drain, _heap_push_pop: the bounded heap the kernels share
    BLOCK_FLOATS,
    _drain,
    _heap_push_pop,
    collect_columns,
    top_n_per_row,
)
from amazon_recs.schemas import ITEM_IDX, MODEL, RANK, SCORE, USER, USER_IDX, WEIGHT
from amazon_recs.spark import share

SEEN_ITEMS = "_seen_items"
SEEN_WEIGHTS = "_seen_weights"
FACTORS = "_factors"
START = "_start"
NO_ITEM = -1

LIST_SCHEMA = T.StructType(
    [
        T.StructField(USER, T.StringType(), False),
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField(MODEL, T.StringType(), False),
        T.StructField(RANK, T.IntegerType(), False),
        T.StructField(ITEM_IDX, T.IntegerType(), False),
        T.StructField(SCORE, T.DoubleType(), False),
        T.StructField(BECAUSE, T.IntegerType(), True),
        T.StructField(SOURCE, T.StringType(), False),
    ]
)


@dataclass(frozen=True)
class AlsSearch:
    """How each user's ALS candidates are found (``recommend.als_search``).

    ``exact`` scores every item; ``ivf`` searches an inverted file of the item
    factors (``models.ivf``); ``auto`` is ``ivf`` from ``ivf_min_items`` items with
    factors on, ``exact`` below. The index probes the fewest clusters whose recall
    against the exact search reaches ``recall_target`` on sampled users
    (``calibrate_search``), or ``probe_fraction`` of them when no target is set, no
    users are sampled (``recommend.als_search_recall_users`` 0) or none has factors.
    """

    method: str = "auto"
    ivf_min_items: int = 20_000
    probe_fraction: float = 0.0625
    head_multiple: int = 20  # the head holds head_multiple x candidates items
    recall_target: float | None = None

    def __post_init__(self):
        if self.method not in ("auto", "exact", "ivf"):
            raise ConfigError(f"recommend.als_search must be auto, exact or ivf, not {self.method!r}")
        if not 0 < self.probe_fraction <= 1:
            raise ConfigError(f"recommend.ivf_probe_fraction must be in (0, 1], not {self.probe_fraction}")
        if self.recall_target is not None and not 0 < self.recall_target <= 1:
            raise ConfigError(
                f"recommend.ivf_recall_target must be in (0, 1] or null, not {self.recall_target}"
            )

    def uses_index(self, items_with_factors: int) -> bool:
        return self.method == "ivf" or (self.method == "auto" and items_with_factors >= self.ivf_min_items)


@dataclass(frozen=True)
class NeighbourLists:
    """Each catalogue place's neighbours as CSR rows: those of place p are
    ``places[ptr[p]:ptr[p + 1]]`` (ascending) with their ``sims``."""

    ptr: np.ndarray  # int64, catalogue size + 1
    places: np.ndarray  # int32: a third of the catalogue's bytes at 500k items, in every worker
    sims: np.ndarray  # float64

    @staticmethod
    def of(src: np.ndarray, dst: np.ndarray, sims, size: int) -> NeighbourLists:
        """From (place, neighbour place, similarity) triples in any order."""
        by_src = np.lexsort((dst, src))
        ptr = np.zeros(size + 1, np.int64)
        np.cumsum(np.bincount(src, minlength=size), out=ptr[1:])
        return NeighbourLists(
            ptr, dst[by_src].astype(np.int32, copy=False), np.asarray(sims, np.float64)[by_src]
        )

    def __len__(self) -> int:
        return len(self.places)


@dataclass(frozen=True)
class Catalogue:
    """The item-sized arrays every user's lists are made from (broadcast once).

    Items are numbered by their place in ``items`` (sorted item_idx).
    """

    items: np.ndarray  # int32, sorted
    als_places: np.ndarray  # int64: the places of the items that have ALS factors, ascending
    als_factors: np.ndarray  # float32, len(als_places) x rank
    content: NeighbourLists  # the content model's neighbours (text)
    item_knn: NeighbourLists  # item-kNN's neighbours (co-interactions)
    popular_order: np.ndarray  # int64: places by popularity (score desc, item asc)
    popular_scores: np.ndarray  # float64, aligned with popular_order
    random_order: np.ndarray  # int64: places of the catalogue, shuffled by the seed
    als_trust: np.ndarray  # float64 per place: the hybrid's trust in ALS (lists.item_trust)
    als_index: ivf.ItemIndex | None = None  # when set, ALS scores are searched through it

    @property
    def size(self) -> int:
        return len(self.items)

    @cached_property
    def als_column(self) -> np.ndarray:
        """Each place's row in ``als_factors``; NO_ITEM for an item without factors."""
        column = np.full(self.size, NO_ITEM, np.int64)
        column[self.als_places] = np.arange(len(self.als_places))
        return column

    def place(self, item_idx: np.ndarray) -> np.ndarray:
        """The place of each item id; NO_ITEM for one not in the catalogue."""
        item_idx = np.asarray(item_idx, np.int64)
        if not self.size:
            return np.full(len(item_idx), NO_ITEM, np.int64)
        at = np.minimum(np.searchsorted(self.items, item_idx), self.size - 1)
        return np.where(self.items[at] == item_idx, at, NO_ITEM)


def catalogue(
    items: DataFrame,
    item_factors: DataFrame,
    neighbours: DataFrame,
    popularity: DataFrame,
    seed: int,
    half_trust: float = 0.0,
    search: AlsSearch | None = None,
    n: int = 100,
    item_knn: DataFrame | None = None,
) -> Catalogue:
    """Collect the item-sized model parts into numpy (every frame here is item-sized).

    The random order is the one of ``baseline.recommend_random``: the items
    sorted by a seeded xxhash64, then by item. ``half_trust`` sets the hybrid's
    trust in ALS per item from its training interactions (``lists.item_trust``).
    ``search`` says whether ALS candidates (``n`` per user) go through an index.
    ``item_knn`` holds item-kNN's neighbours (None: its lists are popularity's).
    """
    ids, hashes = collect_columns(
        items.select(ITEM_IDX).distinct().withColumn("_hash", F.xxhash64(F.lit(seed), ITEM_IDX)),
        ITEM_IDX,
        "_hash",
    )
    none = [np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0)]
    return assemble(
        ids,
        hashes,
        *collect_columns(item_factors, "id", "features"),
        collect_columns(neighbours, ITEM_IDX, "neighbour_idx", "similarity"),
        collect_columns(item_knn, ITEM_IDX, "neighbour_idx", "similarity") if item_knn is not None else none,
        collect_columns(popularity, ITEM_IDX, SCORE, "interactions"),
        seed,
        half_trust,
        search,
        n,
    )


def assemble(
    ids: np.ndarray,
    hashes: np.ndarray,
    f_ids: np.ndarray,
    factors: np.ndarray,
    content: list[np.ndarray],
    item_knn: list[np.ndarray],
    popularity: list[np.ndarray],
    seed: int,
    half_trust: float = 0.0,
    search: AlsSearch | None = None,
    n: int = 100,
) -> Catalogue:
    """``catalogue`` from its collected columns: items and their hashes, ALS factors,
    (item, neighbour, similarity) of the content model and of item-kNN, and (item,
    score, interactions) of popularity. The neighbour columns are the bulk (50M pairs
    at 500k items): they are never widened to int64, and each is dropped from
    ``content`` and ``item_knn`` (emptied in place) once it is placed."""
    p_ids, p_scores, p_counts = popularity
    cat = np.unique(
        np.concatenate(
            [np.unique(a).astype(np.int64) for a in (ids, f_ids, *content[:2], *item_knn[:2], p_ids)]
        )
    ).astype(np.int32)

    def places(values):
        return np.searchsorted(cat, np.asarray(values, np.int64)).astype(np.int64)

    def neighbour_lists(columns: list[np.ndarray]) -> NeighbourLists:
        src, dst = (np.searchsorted(cat, columns[i]).astype(np.int32) for i in (0, 1))
        sims = columns[2]
        columns.clear()
        return NeighbourLists.of(src, dst, sims, len(cat))

    by_id = np.argsort(f_ids, kind="stable")
    als_places = places(f_ids[by_id])
    als_factors = (
        np.ascontiguousarray(np.asarray(factors, np.float32)[by_id])
        if len(f_ids)
        else np.zeros((0, 1), np.float32)
    )
    pop_order = np.lexsort((p_ids, -p_scores.astype(np.float64)))
    interactions = np.zeros(len(cat))
    interactions[places(p_ids)] = p_counts
    return Catalogue(
        items=cat,
        als_places=als_places,
        als_factors=als_factors,
        content=neighbour_lists(content),
        item_knn=neighbour_lists(item_knn),
        popular_order=places(p_ids[pop_order]),
        popular_scores=np.asarray(p_scores, np.float64)[pop_order],
        random_order=places(ids[np.lexsort((ids, hashes))]),
        als_trust=rc.item_trust(interactions, half_trust),
        als_index=(
            ivf.build(als_factors, n, search.probe_fraction, seed, search.head_multiple)
            if search is not None and search.uses_index(len(als_factors))
            else None
        ),
    )


def per_user(train: DataFrame, user_factors: DataFrame, user_ids: DataFrame, seed: int) -> DataFrame:
    """One row per training user: external id, factors (null without), seen items with
    their weights, and where the user's random walk starts. One groupBy, two joins."""
    pairs = F.collect_list(F.struct(ITEM_IDX, F.col(WEIGHT).cast("double").alias(WEIGHT)))
    seen = (
        train.groupBy(USER_IDX)
        .agg(pairs.alias("_seen"))
        .select(
            USER_IDX,
            F.col(f"_seen.{ITEM_IDX}").alias(SEEN_ITEMS),
            F.col(f"_seen.{WEIGHT}").alias(SEEN_WEIGHTS),
        )
    )
    factors = user_factors.select(F.col("id").alias(USER_IDX), F.col("features").alias(FACTORS))
    return (
        seen.join(user_ids.select(USER_IDX, USER), USER_IDX, how="inner")
        .join(factors, USER_IDX, how="left")
        .withColumn(START, F.xxhash64(F.lit(seed), USER_IDX))
        .select(USER, USER_IDX, FACTORS, SEEN_ITEMS, SEEN_WEIGHTS, START)
    )


def calibrate_search(
    user_factors: DataFrame,
    cat: Catalogue,
    n: int,
    k: int,
    users: int,
    seed: int,
    recall_target: float | None = None,
) -> tuple[Catalogue, dict]:
    """``cat`` with its ALS index probing the fewest clusters that reach ``recall_target``
    (``ivf.fewest_probes``), and how much of the exact ALS top-``n`` (and top-``k``) the
    index then finds. ``2 x users`` users are sampled in the order of a seeded hash of
    their id (seen items not excluded on either side) and taken alternately: the first,
    third, ... choose the probe, and the others, held out, measure the recall reported,
    so the figure is not the one the choice was made on. Without a target the index
    keeps its probe and ``users`` users measure it. Unchanged, and an empty report,
    when the catalogue searches exactly."""
    index = cat.als_index
    if index is None or users <= 0:
        return cat, {}
    calibrate = recall_target is not None and index.clusters > 1
    by_hash = user_factors.orderBy(F.xxhash64(F.lit(seed), "id"), "id")
    (matrix,) = collect_columns(by_hash.limit(2 * users if calibrate else users), "features")
    if not len(matrix):
        return cat, {}
    matrix = np.asarray(matrix, np.float32)
    none = np.empty(0, np.int64)
    report = {}
    if calibrate and len(matrix) > 1:
        chooser, matrix = matrix[0::2], matrix[1::2]
        truth = als_top_n(chooser, cat.als_factors, none, none, n)

        def recall_of(candidate: ivf.ItemIndex) -> float:
            return ivf.recall(als_top_n(chooser, cat.als_factors, none, none, n, candidate), truth)

        index = ivf.fewest_probes(index, recall_of, recall_target)
        cat = dataclasses.replace(cat, als_index=index)
        report = {"als_search_recall_target": recall_target, "als_search_calibration_users": len(chooser)}
    exact = als_top_n(matrix, cat.als_factors, none, none, n)
    found = als_top_n(matrix, cat.als_factors, none, none, n, index)
    head_k = [_ranks(r[0], len(matrix)) <= k for r in (exact, found)]
    return cat, {
        "als_search_users": len(matrix),
        f"als_search_recall_at_{n}": round(ivf.recall(found, exact), 4),
        f"als_search_recall_at_{k}": round(
            ivf.recall(tuple(a[head_k[1]] for a in found), tuple(a[head_k[0]] for a in exact)), 4
        ),
        "als_search_clusters": index.clusters,
        "als_search_probe": index.probe,
        "als_search_head": len(index.head),
        **report,
    }


def user_lists(
    users: DataFrame,
    shared: Catalogue,
    k: int,
    n: int,
    weights: Mapping[str, float],
    timer=None,
    block_floats: int = BLOCK_FLOATS,
) -> DataFrame:
    """Each user of ``per_user`` with ``k`` rows per model (als, content, item_knn,
    popular, hybrid, random), fewer only when fewer items are unseen.

    ``n`` is the candidates per model the hybrid blends (``recommend.candidates``);
    ``timer``, an accumulator, receives the worker seconds spent on ALS scores.
    """
    spark = users.sparkSession
    broadcast = share(spark, shared, mapped=True)
    weights = {m: float(weights.get(m, 0.0)) for m in COMPONENTS}

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        cat = broadcast.value
        for batch in batches:
            if len(batch):
                out, als_seconds = lists_for_batch(batch, cat, k, n, weights, block_floats)
                if timer is not None:
                    timer.add(als_seconds)
                yield out

    return users.mapInPandas(run, LIST_SCHEMA)


# --- one Arrow batch -----------------------------------------------------------------------------


@dataclass
class Flat:
    """Per-user lists as flat arrays, sorted by (row, rank)."""

    rows: np.ndarray
    places: np.ndarray
    scores: np.ndarray
    because: np.ndarray  # a place, or NO_ITEM

    @staticmethod
    def empty() -> Flat:
        return Flat(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))

    def take(self, index: np.ndarray) -> Flat:
        return Flat(self.rows[index], self.places[index], self.scores[index], self.because[index])

    def then(self, other: Flat) -> Flat:
        """This list's entries followed by ``other``'s."""
        return Flat(
            *(
                np.concatenate([a, b])
                for a, b in zip(
                    (self.rows, self.places, self.scores, self.because),
                    (other.rows, other.places, other.scores, other.because),
                    strict=True,
                )
            )
        )


def lists_for_batch(
    batch: pd.DataFrame, cat: Catalogue, k: int, n: int, weights: Mapping[str, float], block_floats: int
) -> tuple[pd.DataFrame, float]:
    """Every model's list for the users of one batch, and the seconds ALS scoring took."""
    n_rows = len(batch)
    candidates, (seen_rows, seen_places, _), als_seconds = candidates_for_batch(batch, cat, n, block_floats)
    popular = candidates["popular"]
    starts = batch[START].to_numpy().astype(np.int64)
    random = _walk(
        n_rows, cat.random_order, seen_rows, seen_places, k, np.mod(starts, max(len(cat.random_order), 1))
    )
    ranks = _ranks(random.rows, n_rows)
    random.scores = 1.0 - (ranks - 1) / k

    hybrid, hybrid_source = _blend(candidates, weights, n_rows, k, cat.als_trust)
    parts = []
    for name, flat in (*candidates.items(), (RANDOM_SOURCE, random)):
        filled, source = _fill_to_k(flat, popular, n_rows, k, name, cat.size)
        parts.append((name, filled, source))
    parts.append(("hybrid", hybrid, hybrid_source))

    # ALS's reason is computed for the rows shown: its own list, and hybrid rows it leads.
    for name, flat, source in parts:
        if name in ("als", "hybrid"):
            mine = source == "als"
            flat.because[mine] = _als_because(flat.take(mine), cat, seen_rows, seen_places)
    return _frame(batch, cat, parts, n_rows), als_seconds


def candidates_for_batch(
    batch: pd.DataFrame, cat: Catalogue, n: int, block_floats: int
) -> tuple[dict[str, Flat], tuple, float]:
    """Each model's ``n`` candidates for the users of one batch (what the hybrid fuses),
    the batch's seen entries (``seen_entries``), and the seconds ALS scoring took."""
    n_rows = len(batch)
    seen_rows, seen_places, seen_weights = seen_entries(batch, cat)
    started = time.perf_counter()
    als = _als(batch, cat, seen_rows, seen_places, n, block_floats)
    als_seconds = time.perf_counter() - started
    content = by_neighbours(n_rows, cat.content, cat.size, seen_rows, seen_places, seen_weights, n)
    # Item-kNN counts each seen item once, whatever its weight (``item_knn.recommend_item_knn``).
    pairs = np.unique(seen_rows * cat.size + seen_places)
    item_knn = by_neighbours(
        n_rows, cat.item_knn, cat.size, pairs // cat.size, pairs % cat.size, np.ones(len(pairs)), n
    )
    popular = _walk(n_rows, cat.popular_order, seen_rows, seen_places, n, np.zeros(n_rows, np.int64))
    popular.scores = cat.popular_scores[popular.scores.astype(np.int64)]
    candidates = {"als": als, "content": content, "item_knn": item_knn, "popular": popular}
    return candidates, (seen_rows, seen_places, seen_weights), als_seconds


CANDIDATES_SCHEMA = T.StructType(
    [
        T.StructField(USER_IDX, T.IntegerType(), False),
        T.StructField("items", T.ArrayType(T.IntegerType(), False), False),
        T.StructField("scores", T.ArrayType(T.DoubleType(), False), False),
        T.StructField("models", T.ArrayType(T.IntegerType(), False), False),
    ]
)


def candidate_arrays(
    users: DataFrame, shared: Catalogue, n: int, block_floats: int = BLOCK_FLOATS
) -> DataFrame:
    """Each user of ``per_user`` with every model's ``n`` candidates, before fusion, as
    aligned arrays: ``items`` (item_idx), ``scores`` (the model's raw score) and
    ``models`` (the model's index in COMPONENTS). Tuning's weight search reads this
    (``tuning.search_weights``): the candidates the recommend stage blends, made the
    way it makes them, one row per user."""
    spark = users.sparkSession
    broadcast = share(spark, shared, mapped=True)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        cat = broadcast.value
        for batch in batches:
            if len(batch):
                yield _candidate_frame(batch, cat, n, block_floats)

    return users.mapInPandas(run, CANDIDATES_SCHEMA)


def _candidate_frame(batch: pd.DataFrame, cat: Catalogue, n: int, block_floats: int) -> pd.DataFrame:
    n_rows = len(batch)
    candidates, _, _ = candidates_for_batch(batch, cat, n, block_floats)
    flats = [candidates[name] for name in COMPONENTS]
    rows = np.concatenate([f.rows for f in flats])
    order = np.argsort(rows, kind="stable")  # by user, models in COMPONENTS order, each by rank
    items = np.concatenate([f.places for f in flats])[order]
    items = cat.items[items].astype(np.int32) if len(items) else items.astype(np.int32)
    scores = np.concatenate([f.scores for f in flats])[order].astype(np.float64)
    models = np.concatenate([np.full(len(f.rows), m, np.int32) for m, f in enumerate(flats)])[order]
    bounds = _segments(rows[order], n_rows)

    def per_row(values: np.ndarray) -> list[np.ndarray]:
        return [values[bounds[i] : bounds[i + 1]] for i in range(n_rows)]

    return pd.DataFrame(
        {
            USER_IDX: batch[USER_IDX].to_numpy().astype(np.int32),
            "items": per_row(items),
            "scores": per_row(scores),
            "models": per_row(models),
        }
    )


def seen_entries(batch: pd.DataFrame, cat: Catalogue):
    """(row, place, weight) of every seen item of the batch, by row; unknown items dropped."""
    items = batch[SEEN_ITEMS].to_numpy()
    weights = batch[SEEN_WEIGHTS].to_numpy()
    lengths = np.fromiter((0 if s is None else len(s) for s in items), np.int64, len(items))
    if not lengths.sum():
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    rows = np.repeat(np.arange(len(items)), lengths)
    places = cat.place(np.concatenate([np.asarray(s, np.int64) for s in items if s is not None and len(s)]))
    w = np.concatenate([np.asarray(s, np.float64) for s in weights if s is not None and len(s)])
    known = places != NO_ITEM
    return rows[known], places[known], w[known]


def _segments(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Start of each row's run in ``rows`` (sorted), n_rows + 1 bounds."""
    return np.searchsorted(rows, np.arange(n_rows + 1))


def _ranks(rows: np.ndarray, n_rows: int) -> np.ndarray:
    """1-based rank of each entry within its row's run (``rows`` sorted)."""
    return np.arange(len(rows)) - _segments(rows, n_rows)[rows] + 1


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of ``counts`` consecutive positions from ``starts``: (each position's run, the position)."""
    run = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(len(run)) - np.repeat(np.cumsum(counts) - counts, counts)
    return run, np.repeat(starts, counts) + offset


def _best_per_group(values: np.ndarray, ties: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Within each run (starting at ``head``) of grouped ``values``, the index of the largest;
    on equal values, the one with the smallest ``ties``."""
    group = np.repeat(np.arange(len(head)), np.diff(np.r_[head, len(values)]))
    best = np.maximum.reduceat(values, head)
    candidate = np.where(values == best[group], ties, np.iinfo(np.int64).max)
    lowest = np.minimum.reduceat(candidate, head)
    hit = np.flatnonzero((values == best[group]) & (ties == lowest[group]))
    first = np.r_[True, group[hit][1:] != group[hit][:-1]]
    return hit[first]


def _als(batch, cat: Catalogue, seen_rows, seen_places, n: int, block_floats: int) -> Flat:
    """Each user's ``n`` best unseen items by factor dot product (as ``recommend_from_factors``),
    searched exactly or, with ``cat.als_index``, through the index (``models.ivf``)."""
    factors = batch[FACTORS].to_numpy()
    has = np.fromiter((f is not None for f in factors), bool, len(factors))
    if not has.any() or not len(cat.als_places) or n <= 0:
        return Flat.empty()
    users = np.flatnonzero(has)
    matrix = np.stack(factors[users]).astype(np.float32, copy=False)
    # The seen items as columns of the ALS item matrix, per scored user.
    user_of_row = np.full(len(batch), NO_ITEM, np.int64)
    user_of_row[users] = np.arange(len(users))
    s_user, s_col = user_of_row[seen_rows], cat.als_column[seen_places]
    mask = (s_user != NO_ITEM) & (s_col != NO_ITEM)
    rows, cols, scores = als_top_n(
        matrix, cat.als_factors, s_user[mask], s_col[mask], n, cat.als_index, block_floats
    )
    return Flat(users[rows], cat.als_places[cols], scores, np.full(len(rows), NO_ITEM, np.int64))


def als_top_n(
    users: np.ndarray,
    factors: np.ndarray,
    seen_user: np.ndarray,
    seen_col: np.ndarray,
    n: int,
    index: ivf.ItemIndex | None = None,
    block_floats: int = BLOCK_FLOATS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's ``n`` best unseen columns of ``factors`` by dot product, in blocks of
    users holding at most ``block_floats`` scores; ``seen_*`` sorted by user.

    Returns:
        (user row, column, score as float64), by user then rank.
    """
    width = len(index.head) if index is not None else len(factors)
    step = max(1, block_floats // max(width, 1))
    bounds = _segments(seen_user, len(users))
    parts = []
    for start in range(0, len(users), step):
        stop = min(start + step, len(users))
        lo, hi = bounds[start], bounds[stop]
        if index is not None:
            r, chosen, top = ivf.top_n(
                users[start:stop], factors, index, seen_user[lo:hi] - start, seen_col[lo:hi], n
            )
        else:
            scores = users[start:stop] @ factors.T
            scores[seen_user[lo:hi] - start, seen_col[lo:hi]] = -np.inf
            cols, valid = top_n_per_row(scores, n)
            r, place = np.nonzero(valid)
            chosen = cols[r, place]
            top = scores[r, chosen]
        parts.append((start + r, chosen, top.astype(np.float64)))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    rows, cols, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
    return rows, cols, scores


def _als_because(shown: Flat, cat: Catalogue, seen_rows, seen_places, chunk: int = 1 << 20) -> np.ndarray:
    """For each shown (row, item), the seen item whose factors agree most with it (ties: the
    lower item), as ``als.because_item``; NO_ITEM for a row without seen items with factors."""
    out = np.full(len(shown.rows), NO_ITEM, np.int64)
    if not len(out) or not len(cat.als_places):
        return out
    keep = cat.als_column[seen_places] != NO_ITEM
    s_rows, s_places = seen_rows[keep], seen_places[keep]
    n_rows = int(max(shown.rows.max(), s_rows.max() if len(s_rows) else 0)) + 1
    bounds = _segments(s_rows, n_rows)
    counts = bounds[shown.rows + 1] - bounds[shown.rows]
    rec_cols = cat.als_column[shown.places]
    ends = np.cumsum(counts)
    first = 0
    while first < len(out):  # pairs (shown entry, a seen item of its user), a chunk at a time
        last = max(first + 1, int(np.searchsorted(ends, ends[first] - counts[first] + chunk, side="right")))
        entries = np.arange(first, last)
        first = last
        run, seen_at = _expand(bounds[shown.rows[entries]], counts[entries])
        if not len(run):
            continue
        entry, because = entries[run], s_places[seen_at]
        agree = np.einsum(
            "ij,ij->i",
            cat.als_factors[rec_cols[entry]].astype(np.float64),
            cat.als_factors[cat.als_column[because]].astype(np.float64),
        )
        head = np.flatnonzero(np.r_[True, entry[1:] != entry[:-1]])  # entries come in runs
        out[entry[head]] = because[_best_per_group(agree, because, head)]
    return out


def by_neighbours(
    n_rows: int, lists: NeighbourLists, size: int, seen_rows, seen_places, seen_weights, n: int
) -> Flat:
    """score(u, j) = sum over seen i of weight(u, i) * sim(i, j) / the user's total weight,
    seen items excluded; the seen item contributing most is the reason (as ``recommend_content``).
    ``size`` bounds the places; the seen entries come by row (``seen_rows`` ascending).
    Returns each row's ``n`` best by (row, rank)."""
    if not len(seen_rows) or not len(lists) or n <= 0:
        return Flat.empty()
    rows, places, scores, because = _neighbour_top_n(
        _segments(seen_rows, n_rows),
        np.ascontiguousarray(seen_places, np.int64),
        np.ascontiguousarray(seen_weights, np.float64),
        lists.ptr,
        lists.places,
        lists.sims,
        size,
        n,
    )
    return Flat(rows, places, scores, because)


@njit_cached()
def _neighbour_top_n(seen_bounds, seen_places, seen_weights, ptr, nb_places, nb_sims, size, n):
    """``by_neighbours`` one row at a time: the row's neighbour contributions are summed
    into item-sized arrays (only the places touched are reset), so the cost is the
    row's seen items times their neighbours, with no sort; the row's ``n`` best unseen
    (score desc, place asc) come from a bounded heap."""
    n_rows = len(seen_bounds) - 1
    total = np.zeros(size)
    lead = np.zeros(size)
    because = np.full(size, -1, np.int64)
    touched = np.zeros(size, np.bool_)
    seen = np.zeros(size, np.bool_)
    touched_at = np.empty(size, np.int64)
    out_rows = np.empty(n_rows * n, np.int64)
    out_places = np.empty(n_rows * n, np.int64)
    out_scores = np.empty(n_rows * n)
    out_because = np.empty(n_rows * n, np.int64)
    hs, ht, hi = np.empty(n), np.empty(n, np.int64), np.empty(n, np.int64)
    at = 0
    for r in range(n_rows):
        lo, hi_ = seen_bounds[r], seen_bounds[r + 1]
        weight = 0.0
        for e in range(lo, hi_):
            weight += seen_weights[e]
            seen[seen_places[e]] = True
        m = 0
        for e in range(lo, hi_):
            p, w = seen_places[e], seen_weights[e]
            for a in range(ptr[p], ptr[p + 1]):
                j, c = nb_places[a], w * nb_sims[a]
                if not touched[j]:
                    touched[j] = True
                    touched_at[m] = j
                    m += 1
                    total[j], lead[j], because[j] = c, c, p
                else:
                    total[j] += c
                    if c > lead[j] or (c == lead[j] and p < because[j]):
                        lead[j], because[j] = c, p
        size_h = 0
        for t in range(m):
            j = touched_at[t]
            if not seen[j]:
                size_h = _heap_push_pop(hs, ht, hi, size_h, total[j] / weight, j, j, n)
            touched[j] = False
        for e in range(lo, hi_):
            seen[seen_places[e]] = False
        count = _drain(hs, ht, hi, size_h, out_places[at:])
        for q in range(at, at + count):
            j = out_places[q]
            out_rows[q], out_scores[q], out_because[q] = r, total[j] / weight, because[j]
        at += count
    return out_rows[:at], out_places[:at], out_scores[:at], out_because[:at]


def _walk(n_rows: int, order: np.ndarray, seen_rows, seen_places, n: int, starts: np.ndarray) -> Flat:
    """Each row's first ``n`` unseen places along ``order``, from its start, wrapping once
    (as ``topk.walk_unseen``). The entry's ``scores`` holds its step along ``order``.

    With s the user's seen steps from the start, sorted, and t_i = s_i - i, the r-th
    unseen step is r + #{i: t_i <= r}: n searches per user, whatever the catalogue.
    """
    length = len(order)
    if not length or n <= 0 or not n_rows:
        return Flat.empty()
    step_of_place = np.full(int(order.max()) + 1 if length else 0, NO_ITEM, np.int64)
    step_of_place[order] = np.arange(length)
    known = seen_places < len(step_of_place)
    rows, steps = seen_rows[known], step_of_place[seen_places[known]]
    rows, steps = rows[steps != NO_ITEM], steps[steps != NO_ITEM]
    steps = np.mod(steps - starts[rows], length)
    keys = np.unique(rows * (length + 1) + steps)  # sorted by row, then step; duplicates gone
    rows, steps = keys // (length + 1), keys % (length + 1)
    bounds = _segments(rows, n_rows)
    t = rows * (length + 1) + steps - (np.arange(len(rows)) - bounds[rows])
    want = np.arange(min(n, length))
    q_rows = np.repeat(np.arange(n_rows), len(want))
    q = np.tile(want, n_rows)
    skipped = np.searchsorted(t, q_rows * (length + 1) + q, side="right") - bounds[q_rows]
    step = q + skipped
    ok = step < length
    q_rows, step = q_rows[ok], step[ok]
    places = order[np.mod(starts[q_rows] + step, length)]
    return Flat(q_rows, places, step.astype(np.float64), np.full(len(q_rows), NO_ITEM, np.int64))


def _fill_to_k(
    primary: Flat, popular: Flat, n_rows: int, k: int, source: str, size: int
) -> tuple[Flat, np.ndarray]:
    """Each row's ``k`` first of ``primary``, then popular items it lacks, with score 0
    (as ``lists.fill_to_k``); ``size`` bounds the places. Returns the list and each entry's source."""
    top = primary.take(_ranks(primary.rows, n_rows) <= k)
    counts = np.bincount(top.rows, minlength=n_rows)
    short = counts < k
    if not short.any():
        return top, np.full(len(top.rows), source, dtype=object)
    listed = np.unique(primary.rows * size + primary.places)
    extra = popular.take(short[popular.rows])
    extra = extra.take(~np.isin(extra.rows * size + extra.places, listed))
    extra = extra.take(_ranks(extra.rows, n_rows) <= (k - counts)[extra.rows])
    extra = Flat(
        extra.rows, extra.places, np.zeros(len(extra.rows)), np.full(len(extra.rows), NO_ITEM, np.int64)
    )
    both = top.then(extra)
    tier = np.r_[np.zeros(len(top.rows), np.int64), np.ones(len(extra.rows), np.int64)]
    order = np.lexsort((np.arange(len(tier)), tier, both.rows))
    sources = np.r_[
        np.full(len(top.rows), source, dtype=object), np.full(len(extra.rows), "popular", dtype=object)
    ]
    return both.take(order), sources[order]


def _blend(
    candidates: Mapping[str, Flat], weights: Mapping[str, float], n_rows: int, k: int, trust: np.ndarray
):
    """Per-user min-max normalised scores fused by weight, top ``k`` (as ``lists.blend``);
    ALS's weight on an item content also proposes to the user moves to content as
    the item's ``trust`` (per place) falls (``lists.trust_weights``); the model
    that contributes most to an item gives its source and reason."""
    content = candidates["content"]
    by_content = content.rows * len(trust) + content.places
    parts = []
    for code, name in enumerate(COMPONENTS):
        flat = candidates[name]
        if not len(flat.rows):
            continue
        item_trust = trust[flat.places]
        if name == "als":  # nothing to move to where content has no say
            item_trust = np.where(np.isin(flat.rows * len(trust) + flat.places, by_content), item_trust, 1.0)
        weight = rc.trust_weights(name, weights, item_trust)
        keep = weight > 0
        if not keep.any():
            continue
        bounds = _segments(flat.rows, n_rows)
        nonempty = np.flatnonzero(bounds[1:] > bounds[:-1])
        lo = np.zeros(n_rows)
        hi = np.zeros(n_rows)
        lo[nonempty] = np.minimum.reduceat(flat.scores, bounds[nonempty])
        hi[nonempty] = np.maximum.reduceat(flat.scores, bounds[nonempty])
        low, high = lo[flat.rows], hi[flat.rows]
        spread = high > low
        norm = np.where(spread, (flat.scores - low) / np.where(spread, high - low, 1.0), 1.0)
        parts.append(
            (
                flat.rows[keep],
                flat.places[keep],
                norm[keep] * weight[keep],
                flat.because[keep],
                np.full(int(keep.sum()), code),
            )
        )
    if not parts:
        return Flat.empty(), np.empty(0, dtype=object)
    rows, places, contribution, because, code = (np.concatenate(p) for p in zip(*parts, strict=True))
    # Each part is by row: part p's entries of row r are bounds[p, r]:bounds[p, r + 1].
    offsets = np.cumsum([0] + [len(p[0]) for p in parts])
    bounds = np.stack([at + _segments(p[0], n_rows) for at, p in zip(offsets, parts, strict=False)])
    chosen = _fuse_top_k(bounds, places, contribution, code, len(trust), k)
    names = np.asarray(COMPONENTS, dtype=object)
    lead = chosen[1]
    return Flat(rows[lead], places[lead], chosen[0], because[lead]), names[code[lead]]


@njit_cached()
def _fuse_top_k(bounds, places, contribution, code, size, k):
    """``_blend``'s fusion one row at a time: each place's contributions summed over the
    parts (in part order) into item-sized arrays; the leading entry is the largest
    contribution, on a tie the larger ``code``. Returns each row's ``k`` best places
    (fused score desc, place asc) in (row, rank) order: (their fused scores, the index
    of their leading entry)."""
    n_parts, n_rows = bounds.shape[0], bounds.shape[1] - 1
    fused = np.zeros(size)
    lead = np.empty(size, np.int64)
    touched = np.zeros(size, np.bool_)
    touched_at = np.empty(size, np.int64)
    out_scores = np.empty(n_rows * k)
    out_lead = np.empty(n_rows * k, np.int64)
    chosen = np.empty(k, np.int64)
    hs, ht, hi = np.empty(k), np.empty(k, np.int64), np.empty(k, np.int64)
    at = 0
    for r in range(n_rows):
        m = 0
        for p in range(n_parts):
            for e in range(bounds[p, r], bounds[p, r + 1]):
                j, c = places[e], contribution[e]
                if not touched[j]:
                    touched[j] = True
                    touched_at[m] = j
                    m += 1
                    fused[j], lead[j] = c, e
                else:
                    fused[j] += c
                    best = contribution[lead[j]]
                    if c > best or (c == best and code[e] > code[lead[j]]):
                        lead[j] = e
        size_h = 0
        for t in range(m):
            j = touched_at[t]
            size_h = _heap_push_pop(hs, ht, hi, size_h, fused[j], j, j, k)
            touched[j] = False
        count = _drain(hs, ht, hi, size_h, chosen)
        for q in range(count):
            out_scores[at + q], out_lead[at + q] = fused[chosen[q]], lead[chosen[q]]
        at += count
    return out_scores[:at], out_lead[:at]


def _frame(batch: pd.DataFrame, cat: Catalogue, parts, n_rows: int) -> pd.DataFrame:
    users = batch[USER].to_numpy()
    user_idx = batch[USER_IDX].to_numpy()
    frames = []
    for name, flat, source in parts:
        if not len(flat.rows):
            continue
        because = flat.because
        frames.append(
            pd.DataFrame(
                {
                    USER: users[flat.rows],
                    USER_IDX: user_idx[flat.rows].astype(np.int32),
                    MODEL: name,
                    RANK: _ranks(flat.rows, n_rows).astype(np.int32),
                    ITEM_IDX: cat.items[flat.places].astype(np.int32),
                    SCORE: flat.scores.astype(np.float64),
                    BECAUSE: pd.Series(cat.items[np.maximum(because, 0)], dtype="Int32").mask(
                        because == NO_ITEM
                    ),
                    SOURCE: source,
                }
            )
        )
    if not frames:
        return pd.DataFrame({f.name: [] for f in LIST_SCHEMA.fields})
    return pd.concat(frames, ignore_index=True)
