"""Tuning on a validation split carved from training (never the test split).

ALS's rank, regularisation and alpha are chosen by NDCG@k on validation over
the grid in ``tune.als_grid``; item-kNN's neighbours and shrinkage over
``tune.item_knn_grid``; popularity's half-life over
``tune.popular_half_life_days`` (0: plain counts); the hybrid's fusion weights
by NDCG@k over every weight vector on a simplex grid of step
``tune.weight_step``, searched per user in numpy (``weight_search``). All score
a seeded sample of at most ``tune.max_validation_users`` validation users; the
fits use every fit row. The best grid points' models give the candidates the
weights are searched on, so tuning fits ALS once per grid point (item-kNN once
per shrinkage: fewer neighbours are a prefix of more), and the train stage once
more on the whole training split.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.evaluation import metrics as ev
from amazon_recs.features import split as sp
from amazon_recs.models import als as m_als
from amazon_recs.models import item_knn as m_item_knn
from amazon_recs.models import lists as rc
from amazon_recs.models import popular as m_popular
from amazon_recs.models import user_lists
from amazon_recs.models import weight_search as ws
from amazon_recs.models.content import NEIGHBOUR, SIMILARITY
from amazon_recs.models.topk import BLOCK_FLOATS, collect_columns, index_of, top_n_per_row
from amazon_recs.models.training import COMPONENTS, Content, ModelParams, Models, fit_models
from amazon_recs.schemas import ITEM_IDX, SCORE, SPLIT, USER, USER_IDX

log = logging.getLogger(__name__)

COMBO = "combo"
# The names ALS.train gives the factor RDDs it leaves persisted for its model.
ALS_FACTOR_RDDS = ("userFactors", "itemFactors")


@dataclass(frozen=True)
class TuneParams:
    """What tuning searches and how it scores (``tune.*``, ``evaluate.k``,
    ``recommend.candidates``, and the test split's protocol for validation).

    ``max_validation_users`` bounds the validation users scored (0: all of them).
    """

    als_grid: Mapping[str, list] = field(
        default_factory=lambda: {"rank": [32], "reg_param": [0.1], "alpha": [0.5, 1.0, 5.0, 20.0]}
    )
    item_knn_grid: Mapping[str, list] = field(
        default_factory=lambda: {"neighbours": [20, 50, 100], "shrinkage": [0.0, 10.0, 50.0]}
    )
    # Popularity's half-lives tried (popular.half_life_days; 0: no decay).
    popular_half_life_days: tuple[float, ...] = (0.0, 30.0, 90.0, 365.0)
    weight_step: float = 0.1
    k: int = 10
    candidates: int = 100
    max_validation_users: int = 20000
    # The hybrid's trust in ALS per item (lists.item_trust) tried with the weights; 0: off.
    als_half_trust: tuple[float, ...] = (0.0, 1.0, 5.0)
    # Validation's cold items (evaluate.cold_item_max_train): every weight vector is also
    # scored on them, for the report; the choice stays by NDCG@k on all validation items.
    cold_item_max_train: int = 5
    split: sp.SplitParams = field(default_factory=sp.SplitParams)


def carve_validation(train: DataFrame, params: sp.SplitParams) -> tuple[DataFrame, DataFrame]:
    """Split training rows into (fit, validation) with the test protocol and fraction.

    A global time cut is made again within the training rows at their own quantile
    (the configured date would hold out nothing: every training row is before it)."""
    split = sp.with_split(
        train.drop(SPLIT),
        params.test_fraction,
        params.min_user_interactions,
        protocol=params.protocol,
        seed=params.seed + 1,
        cutoff=None,
    ).cache()
    return split.filter(F.col(SPLIT) == sp.TRAIN), split.filter(F.col(SPLIT) == sp.TEST)


def filter_sampled_users(validation: DataFrame, max_users: int, seed: int, col_user: str = USER) -> DataFrame:
    """The rows of at most ``max_users`` of the users in ``validation`` (0: every user).

    The users kept are those with the smallest hash of (seed, user id): the same
    users on every run whatever the partitioning (unlike ``sample()``), and a
    user stays chosen as others join. The hash takes the stable user id, not the
    index, which is rebuilt with the data.
    """
    if max_users <= 0:
        return validation
    chosen = (
        validation.select(col_user)
        .distinct()
        .withColumn("_hash", F.xxhash64(F.lit(seed), col_user))
        .orderBy("_hash", col_user)  # a total order: user ids are distinct
        .limit(max_users)
        .select(col_user)
    )
    return validation.join(chosen, col_user, how="left_semi")


def ndcg_by(recs: DataFrame, validation: DataFrame, k: int, col_model: str) -> dict:
    """NDCG@k per value of ``col_model`` on idx columns."""
    per_user = ev.per_user_metrics(
        recs,
        validation.select(USER_IDX, ITEM_IDX),
        k,
        col_user=USER_IDX,
        col_item=ITEM_IDX,
        col_model=col_model,
    )
    return {
        r[col_model]: r["ndcg"]
        for r in per_user.groupBy(col_model).agg(ev.exact_mean("ndcg").alias("ndcg")).collect()
    }


def als_grid(grid: Mapping[str, list]) -> list[dict]:
    """Every combination of the grid's values, as {setting: value}."""
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def tune_als(
    fit: DataFrame,
    validation: DataFrame,
    als: m_als.AlsParams,
    grid: Mapping[str, list],
    k: int,
    users: UserItems | None = None,
) -> tuple[dict, list[dict], ALSModel]:
    """The grid point with the best validation NDCG@k, every point's score, and the
    best point's model fitted on ``fit`` (so that nobody fits it again).

    Every point is fitted on all of ``fit`` and scored on the users of
    ``validation`` alone (the only ones NDCG counts): pass a sample of them to
    bound the scoring. The scoring is in the driver, in numpy, as
    ``als.recommend_als`` lists (``UserItems.ndcg_factors``): the sampled users'
    factors and the item factors are collected, which took a third of a point's
    time at 1M as Spark rows (a top-k job, then a join, a window and sums).
    ``users``, when given, are ``UserItems.for_validation(fit, validation)``.
    Only the best model so far is kept: a point that loses gives its factors
    back at once, so memory holds one model, not the grid.
    """
    spark = fit.sparkSession
    users = users or UserItems.for_validation(fit, validation)
    sampled = spark.createDataFrame([(int(u),) for u in users.users], "id int") if len(users.users) else None
    results: list[dict] = []
    best, best_model, best_factors = None, None, {}
    for point in als_grid(grid):
        trial = dataclasses.replace(als, **point)
        before = _factor_rdds(spark)
        model = m_als.fit_als(fit, trial)
        factors = {i: rdd for i, rdd in _factor_rdds(spark).items() if i not in before}
        score = 0.0
        if sampled is not None:
            user_ids, user_factors = collect_columns(
                model.userFactors.join(F.broadcast(sampled), "id", how="left_semi"), "id", "features"
            )
            item_ids, item_factors = collect_columns(model.itemFactors, "id", "features")
            score = users.ndcg_factors(user_ids, user_factors, item_ids, item_factors, k)
        log.info("tune als %s: validation ndcg@%d = %.4f", point, k, score)
        results.append({**point, "ndcg": score})
        # Strictly better only: the first of equal points wins, as max() chose before.
        if best is None or _als_order(results[-1]) > _als_order(best):
            _unpersist(best_factors)
            best, best_model, best_factors = results[-1], model, factors
        else:
            _unpersist(factors)
    return {key: best[key] for key in grid}, results, best_model


def tune_item_knn(
    fit: DataFrame,
    validation: DataFrame,
    params: m_item_knn.ItemKnnParams,
    grid: Mapping[str, list],
    k: int,
    users: UserItems | None = None,
) -> tuple[dict, list[dict], DataFrame]:
    """Item-kNN's grid point with the best validation NDCG@k, every point's score, and the
    best point's neighbours fitted on ``fit``.

    A point's neighbours are the first ``neighbours`` of the same fit with more, so
    each setting other than ``neighbours`` is fitted once, with the most the grid
    asks for. Every point is scored in the driver, in numpy, as the recommend stage
    lists (``user_lists.by_neighbours``): the neighbours are item-sized and the
    validation users' histories bounded by ``tune.max_validation_users``; scoring
    them as Spark rows (a join, a group and a window per point) took minutes at 1M.
    ``users``, when given, are ``UserItems.of(fit, validation)``, collected once by
    the caller for every model it tunes.
    """
    unknown = set(grid) - {f.name for f in dataclasses.fields(m_item_knn.ItemKnnParams)}
    if unknown:
        raise ConfigError(f"tune.item_knn_grid: unknown settings {sorted(unknown)}")
    points = als_grid(grid)
    most = max(grid.get("neighbours", [params.neighbours]))
    users = users or UserItems.for_validation(fit, validation)
    by_fit: dict[tuple, list[int]] = {}
    for i, point in enumerate(points):
        by_fit.setdefault(_fit_key(point), []).append(i)
    fits: dict[tuple, DataFrame] = {}
    scores: dict[int, float] = {}
    for key, members in by_fit.items():
        trial = dataclasses.replace(params, **{**points[members[0]], "neighbours": most})
        fits[key] = m_item_knn.fit_item_knn(fit, trial).cache()
        items, neighbours, sims, rank = collect_columns(fits[key], ITEM_IDX, NEIGHBOUR, SIMILARITY, "rank")
        for i in members:
            kept = rank <= dataclasses.replace(params, **points[i]).neighbours
            scores[i] = users.ndcg(items[kept], neighbours[kept], sims[kept], k)
            log.info("tune item_knn %s: validation ndcg@%d = %.4f", points[i], k, scores[i])
    results = [{**point, "ndcg": scores[i]} for i, point in enumerate(points)]
    # Ties go to fewer neighbours (a cheaper model), then to more shrinkage.
    best = max(results, key=lambda r: (round(r["ndcg"], 12), -r.get("neighbours", 0), r.get("shrinkage", 0)))
    chosen = {name: best[name] for name in grid}
    for other, df in fits.items():
        if other != _fit_key(chosen):
            df.unpersist()
    neighbours = dataclasses.replace(params, **chosen).neighbours
    return chosen, results, fits[_fit_key(chosen)].filter(F.col("rank") <= neighbours)


def tune_popular(
    fit: DataFrame, users: UserItems, half_lives: tuple[float, ...], k: int
) -> tuple[float, list[dict], DataFrame]:
    """Popularity's half-life with the best validation NDCG@k, every one's score, and
    the best one's popularity fitted on ``fit``.

    Each half-life is an aggregation over the fit rows; its ranking is item-sized and
    scored in the driver (``UserItems.ndcg_ranking``). Ties go to the longer
    half-life, 0 (no decay) counting as the longest.
    """
    results, fits = [], {}
    for half_life in half_lives:
        fits[half_life] = m_popular.fit_popularity(fit, half_life).cache()
        items, scores = collect_columns(fits[half_life], ITEM_IDX, SCORE)
        order = np.asarray(items, np.int64)[np.lexsort((items, -np.asarray(scores, np.float64)))]
        score = users.ndcg_ranking(order, k)
        log.info("tune popular half_life_days %g: validation ndcg@%d = %.4f", half_life, k, score)
        results.append({"half_life_days": half_life, "ndcg": score})
    best = max(results, key=lambda r: (round(r["ndcg"], 12), r["half_life_days"] == 0, r["half_life_days"]))
    chosen = best["half_life_days"]
    for half_life, df in fits.items():
        if half_life != chosen:
            df.unpersist()
    return chosen, results, fits[chosen]


def _fit_key(point: Mapping) -> tuple:
    return tuple(sorted((name, v) for name, v in point.items() if name != "neighbours"))


@dataclass(frozen=True)
class UserItems:
    """The validation users' fit items (``seen``, by row) and validation items (``truth``)
    as flat arrays, users numbered 0.. in ``users`` (every validation user, ascending)."""

    users: np.ndarray
    seen_rows: np.ndarray
    seen_items: np.ndarray
    truth_rows: np.ndarray
    truth_items: np.ndarray

    @staticmethod
    def for_validation(fit: DataFrame, validation: DataFrame) -> UserItems:
        """The validation users' fit rows (only theirs are collected) and validation rows."""
        return UserItems.of(
            fit.join(validation.select(USER_IDX).distinct(), USER_IDX, how="left_semi"), validation
        )

    @staticmethod
    def of(fit: DataFrame, validation: DataFrame) -> UserItems:
        s_users, s_items = collect_columns(fit.select(USER_IDX, ITEM_IDX).distinct(), USER_IDX, ITEM_IDX)
        t_users, t_items = collect_columns(
            validation.select(USER_IDX, ITEM_IDX).distinct(), USER_IDX, ITEM_IDX
        )
        users = np.unique(np.asarray(t_users, np.int64))
        s_rows = np.searchsorted(users, np.asarray(s_users, np.int64))
        known = s_rows < len(users)
        known[known] = users[s_rows[known]] == np.asarray(s_users, np.int64)[known]
        by_row = np.argsort(s_rows[known], kind="stable")  # once, not for every grid point
        return UserItems(
            users,
            s_rows[known][by_row].astype(np.int64),
            np.asarray(s_items, np.int64)[known][by_row],
            np.searchsorted(users, np.asarray(t_users, np.int64)).astype(np.int64),
            np.asarray(t_items, np.int64),
        )

    def ndcg(self, items: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, k: int) -> float:
        """Mean NDCG@k over the users of item-kNN's lists from these neighbours (a user
        without a list counts 0, as ``metrics.per_user_metrics`` counts them)."""
        n_users = len(self.users)
        if not n_users:
            return 0.0
        every = [np.asarray(a, np.int64) for a in (items, neighbours, self.seen_items, self.truth_items)]
        size = int(max((int(a.max()) for a in every if len(a)), default=-1)) + 1
        lists = user_lists.NeighbourLists.of(every[0], every[1], np.asarray(sims, np.float64), size)
        flat = user_lists.by_neighbours(
            n_users, lists, size, self.seen_rows, self.seen_items, np.ones(len(self.seen_rows)), k
        )
        first = np.searchsorted(flat.rows, np.arange(n_users))
        rank = np.arange(len(flat.rows)) - first[flat.rows] + 1
        hit = np.isin(flat.rows * size + flat.places, self.truth_rows * size + self.truth_items)
        return self._mean_ndcg(flat.rows[hit], rank[hit], k)

    def ndcg_factors(
        self,
        user_ids: np.ndarray,
        user_factors: np.ndarray,
        item_ids: np.ndarray,
        item_factors: np.ndarray,
        k: int,
        block_floats: int = BLOCK_FLOATS,
    ) -> float:
        """Mean NDCG@k over the users of ALS's lists from these factors, listed as
        ``als.recommend_als`` lists them: float32 dot products with every item, the
        user's seen items left out, score descending then item ascending. A
        validation user without factors gets no list (counts 0). The work is the
        sampled users times the catalogue, in blocks of at most ``block_floats`` scores.
        """
        n_users = len(self.users)
        if not n_users or not len(item_ids) or not len(user_ids):
            return 0.0
        by_id = np.argsort(item_ids, kind="stable")
        item_ids = np.asarray(item_ids, np.int64)[by_id]
        item_matrix = np.ascontiguousarray(np.asarray(item_factors)[by_id], dtype=np.float32)
        found, rows = index_of(self.users, np.asarray(user_ids, np.int64))
        user_matrix = np.asarray(user_factors, np.float32)[found]
        order = np.argsort(rows, kind="stable")
        rows, user_matrix = rows[order], user_matrix[order]
        seen_found, seen_at = index_of(item_ids, self.seen_items)
        seen_rows = self.seen_rows[seen_found]  # ascending: UserItems keeps them by row
        size = len(item_ids)
        truth_found, truth_at = index_of(item_ids, self.truth_items)
        truth_keys = np.sort(self.truth_rows[truth_found] * size + truth_at)
        block = max(1, block_floats // size)
        hit_rows, hit_ranks = [], []
        for start in range(0, len(rows), block):
            block_rows = rows[start : start + block]
            scores = user_matrix[start : start + block] @ item_matrix.T
            lo, hi = np.searchsorted(seen_rows, [block_rows[0], block_rows[-1] + 1])
            mine = np.searchsorted(block_rows, seen_rows[lo:hi])
            mine_ok = block_rows[np.minimum(mine, len(block_rows) - 1)] == seen_rows[lo:hi]
            scores[mine[mine_ok], seen_at[lo:hi][mine_ok]] = -np.inf
            cols, valid = top_n_per_row(scores, k)
            row, place = np.nonzero(valid)
            keys = block_rows[row] * size + cols[row, place]
            hit = np.isin(keys, truth_keys)
            hit_rows.append(block_rows[row][hit])
            hit_ranks.append(place[hit] + 1)
        return self._mean_ndcg(np.concatenate(hit_rows), np.concatenate(hit_ranks), k)

    def ndcg_ranking(self, order: np.ndarray, k: int) -> float:
        """Mean NDCG@k over the users of one ranking shared by all (item ids, best first),
        each user's list its first ``k`` items they have not seen, as
        ``popular.recommend_popular`` lists for the users with fit rows: a validation
        item at place q of ``order`` ranks q minus the user's seen items placed before it."""
        n_users = len(self.users)
        if not n_users:
            return 0.0
        order = np.asarray(order, np.int64)
        size = 1 + int(max(a.max(initial=-1) for a in (order, self.seen_items, self.truth_items)))
        place = np.full(size, -1, np.int64)
        place[order] = np.arange(len(order))
        seen_place = place[self.seen_items]
        listed = seen_place >= 0
        seen_key = np.sort(self.seen_rows[listed] * len(order) + seen_place[listed])
        truth_place = place[self.truth_items]
        found = truth_place >= 0
        rows, at = self.truth_rows[found], truth_place[found]
        key = rows * len(order) + at
        after = np.searchsorted(seen_key, key)
        seen_before = after - np.searchsorted(seen_key, rows * len(order))
        rank = at - seen_before + 1
        # A seen item is never listed, and a user without fit rows gets no list (counts
        # 0), as the other models' tuning scores them.
        has_list = np.bincount(self.seen_rows, minlength=n_users) > 0
        hit = (rank <= k) & ~np.isin(key, seen_key) & has_list[rows]
        return self._mean_ndcg(rows[hit], rank[hit], k)

    def _mean_ndcg(self, hit_rows: np.ndarray, hit_ranks: np.ndarray, k: int) -> float:
        """Mean NDCG@k over the users from their hits (user row, rank 1..k); a user
        without a hit counts 0, as ``metrics.per_user_metrics`` counts them."""
        n_users = len(self.users)
        discount = ws.discounts(k)
        dcg = np.bincount(hit_rows, weights=discount[hit_ranks - 1], minlength=n_users)
        relevant = np.bincount(self.truth_rows, minlength=n_users)
        return float(np.sum(np.where(relevant > 0, dcg / ws.ideal_dcg(relevant, k), 0.0)) / n_users)


def _als_order(result: dict) -> tuple:
    # Ties go to the stronger regularisation.
    return (result["ndcg"], -result.get("reg_param", 0))


def _factor_rdds(spark: SparkSession) -> dict[int, object]:
    """The persisted RDDs that hold fitted ALS models' factors, by id."""
    persisted = spark.sparkContext._jsc.getPersistentRDDs()
    return {i: rdd for i, rdd in persisted.items() if rdd.name() in ALS_FACTOR_RDDS}


def _unpersist(rdds: Mapping[int, object]) -> None:
    for rdd in rdds.values():
        rdd.unpersist(False)


def weight_grid(step: float, names: tuple[str, ...] = COMPONENTS) -> list[dict[str, float]]:
    """Every weight vector on the simplex with the given step (weights sum to 1)."""
    units = round(1 / step)
    return [
        {name: round(c / units, 6) for name, c in zip(names, counts, strict=True)}
        for counts in itertools.product(range(units + 1), repeat=len(names))
        if sum(counts) == units
    ]


def candidates_per_user(lists: Mapping[str, DataFrame], validation: DataFrame) -> DataFrame:
    """One row per validation user: the distinct validation items (``truth``), and
    every model's candidates as aligned arrays ``items``, ``scores`` and ``models``
    (the model's index in COMPONENTS), null for a user without candidates."""
    stacked = None
    for m, name in enumerate(COMPONENTS):
        if name not in lists:  # a model not fitted proposes nothing
            continue
        part = lists[name].select(USER_IDX, ITEM_IDX, F.col(SCORE).cast("double"), F.lit(m).alias("model"))
        stacked = part if stacked is None else stacked.unionByName(part)
    # One array of structs, split into fields afterwards: the three stay aligned.
    per_user = (
        stacked.groupBy(USER_IDX)
        .agg(F.collect_list(F.struct(ITEM_IDX, SCORE, "model")).alias("_c"))
        .select(
            USER_IDX,
            F.col(f"_c.{ITEM_IDX}").alias("items"),
            F.col(f"_c.{SCORE}").alias("scores"),
            F.col("_c.model").alias("models"),
        )
    )
    return with_truth(per_user, validation)


def sampled_candidates(
    models: Models, fit: DataFrame, items: DataFrame, sample: DataFrame, params: TuneParams
) -> DataFrame:
    """The sampled validation users' candidates (``user_idx``, and aligned ``items``,
    ``scores``, ``models``: see ``with_truth``), from ``models`` fitted on ``fit``: each
    user's candidates made in one pass by ``user_lists.candidate_arrays``, as the
    recommend stage makes them (ALS scored exactly), instead of one Spark job of rows
    per model (at 1M, 97 s for 20k users, item-kNN's 53 s of it)."""
    users = sample.select(USER_IDX).distinct()
    scored = fit.join(users, USER_IDX, how="left_semi")
    cat = user_lists.catalogue(
        items,
        models.als.itemFactors,
        models.neighbours,
        models.popularity,
        params.split.seed,
        n=params.candidates,
        item_knn=models.item_knn,
    )
    per_user = user_lists.per_user(
        scored, models.als.userFactors, scored.select(USER, USER_IDX).distinct(), params.split.seed
    )
    return user_lists.candidate_arrays(per_user, cat, params.candidates)


def with_truth(candidates: DataFrame, truth: DataFrame) -> DataFrame:
    """``candidates_per_user``'s rows: each user of ``truth`` (user_idx, item_idx rows)
    with the distinct items as ``truth`` and the user's ``candidates`` row (user_idx and
    aligned ``items``, ``scores``, ``models``), null for a user without one."""
    per_user = truth.groupBy(USER_IDX).agg(F.collect_set(ITEM_IDX).alias("truth"))
    return per_user.join(candidates, USER_IDX, how="left").select("truth", "items", "scores", "models")


def interactions_by_item(popularity: DataFrame) -> np.ndarray:
    """The training interactions that ``popularity`` counts, indexed by item id
    (item-sized; 0 for an id it does not list)."""
    ids, counts = collect_columns(popularity, ITEM_IDX, "interactions")
    interactions = np.zeros(int(ids.max()) + 1 if len(ids) else 0)
    interactions[ids.astype(np.int64)] = counts
    return interactions


def tune_weights(
    spark: SparkSession,
    lists: Mapping[str, DataFrame],
    validation: DataFrame,
    k: int,
    step: float,
    item_trust: np.ndarray | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Fusion weights maximising validation NDCG@k over the simplex grid of ``step``.

    Each validation user's candidates become one row, scored under every weight
    vector at once in numpy (``weight_search``): the work is users x their own
    candidates x weight vectors, with no cross join and no global sort. Only
    each partition's sums (one number per weight vector) reach the driver.
    ``item_trust`` (by item id, see ``weight_search.ndcg_sums``) blends as the
    recommend stage does. ``spark`` is kept for callers; the frames carry their session.
    """
    return search_weights(candidates_per_user(lists, validation), k, step, item_trust)


def search_weights(
    per_user: DataFrame, k: int, step: float, item_trust: np.ndarray | None = None
) -> tuple[dict[str, float], list[dict]]:
    """``tune_weights`` on its per-user rows: ``truth`` (the validation items), and the
    candidates as aligned ``items``, ``scores`` and ``models`` (``candidates_per_user``'s
    layout, or ``user_lists.candidate_arrays`` joined with the truth)."""
    grid = weight_grid(step)
    weights = np.array([[w[name] for w in grid] for name in COMPONENTS])  # models x W
    sums = per_user.mapInPandas(
        functools.partial(
            ws.partition_sums,
            weights=weights,
            k=k,
            col_truth="truth",
            col_items="items",
            col_scores="scores",
            col_models="models",
            item_trust=item_trust,
        ),
        "ndcg_sum array<double>, users long",
    ).collect()
    users = sum(r.users for r in sums)
    # Averaged over every validation user, as metrics.per_user_metrics does.
    ndcg = np.sum([r.ndcg_sum for r in sums], axis=0) / users if users else np.zeros(len(grid))
    results = [{**grid[i], "ndcg": float(ndcg[i])} for i in range(len(grid))]
    # Ties go to the weights closest to ALS alone, then to fewer moving parts.
    best = max(
        results, key=lambda r: (round(r["ndcg"], 12), r["als"], -r["content"], -r.get("item_knn", 0.0))
    )
    return {name: best[name] for name in COMPONENTS}, results


def cold_tradeoff(results: list[dict], half_trust: float, weights: Mapping[str, float]) -> dict:
    """What the hybrid's settings (``results``: every trust setting and weight vector,
    with ``ndcg`` and ``cold_ndcg``) do for validation's cold items: the ``chosen``
    setting's row, ALS alone's (all weight on ALS, trust off; None when off was not
    tried), and ``matching_als``: the best overall among the settings scoring at least
    ALS alone on the cold items (None when none does), the price of serving new
    products as well as ALS does."""

    def point(r: Mapping) -> tuple:
        return (r["als_half_trust"], *(r[n] for n in COMPONENTS))

    chosen = next(r for r in results if point(r) == (half_trust, *(weights[n] for n in COMPONENTS)))
    als = next((r for r in results if r["als_half_trust"] == 0 and r["als"] == 1), None)
    matching = [r for r in results if als is not None and r["cold_ndcg"] >= als["cold_ndcg"]]
    # On a tie, the first in the search's order (trust ascending, then the grid's).
    best = max(matching, key=lambda r: round(r["ndcg"], 12), default=None)
    return {"chosen": chosen, "als": als, "matching_als": best}


def tune(
    spark: SparkSession,
    train: DataFrame,
    items: DataFrame,
    models: ModelParams,
    params: TuneParams,
    content: Content | None = None,
) -> dict:
    """ALS parameters and hybrid weights chosen on validation; a summary for the report.

    ``content``, when given, is the already fitted content model (it does not
    depend on the split, so it is not refitted here).
    """
    k = params.k
    fit, validation = carve_validation(train, params.split)
    sample = filter_sampled_users(validation, params.max_validation_users, params.split.seed).cache()
    users = UserItems.for_validation(fit, sample)  # collected once, for every model's grid
    als_params, als_results, als_model = tune_als(fit, sample, models.als, params.als_grid, k, users)
    knn_params, knn_results, knn_neighbours = tune_item_knn(
        fit, sample, models.item_knn, params.item_knn_grid, k, users
    )
    half_life, popular_results, popularity = tune_popular(fit, users, params.popular_half_life_days, k)
    tuned = dataclasses.replace(
        models,
        als=dataclasses.replace(models.als, **als_params),
        item_knn=dataclasses.replace(models.item_knn, **knn_params),
        popular=dataclasses.replace(models.popular, half_life_days=half_life),
    )
    # The best grid points' models are the ones fit_models would fit again: reuse them.
    fitted = fit_models(
        spark,
        fit,
        items,
        tuned,
        check_recall=False,
        content=content,
        als=als_model,
        item_knn=knn_neighbours,
        popularity=popularity,
    )
    # Candidates for the sampled users only, made as the recommend stage makes them (one
    # pass, numpy per user); the models saw every fit row. Searched under every setting.
    candidates = sampled_candidates(fitted, fit, items, sample, params).cache()
    per_user = with_truth(candidates, sample).cache()
    # The same users scored on their cold validation items alone (the item had at most
    # cold_item_max_train fit interactions), to report what each setting does for new products.
    cold_sample = ev.cold_truth(
        sample, fit, params.cold_item_max_train, USER_IDX, ITEM_IDX, with_counts=True
    ).cache()
    cold_per_user = with_truth(candidates, cold_sample).cache()
    cold_slice = ev.slice_composition(cold_sample, USER_IDX, ITEM_IDX)
    has_cold, cold_seconds = cold_slice["interactions"] > 0, 0.0
    # Each trust setting with its best weights; on a tie the one moving less weight wins.
    best, weight_results = None, []
    interactions = interactions_by_item(fitted.popularity)  # collected once for every setting
    for half_trust in sorted(params.als_half_trust):
        trust = rc.item_trust(interactions, half_trust) if half_trust > 0 else None
        weights, results = search_weights(per_user, k, params.weight_step, trust)
        if has_cold:
            started = time.perf_counter()
            cold_results = search_weights(cold_per_user, k, params.weight_step, trust)[1]
            cold_seconds += time.perf_counter() - started
            results = [{**r, "cold_ndcg": c["ndcg"]} for r, c in zip(results, cold_results, strict=True)]
        top = max(r["ndcg"] for r in results)
        log.info(
            "tune hybrid als_half_trust %g: weights %s, validation ndcg@%d = %.4f",
            half_trust,
            weights,
            k,
            top,
        )
        weight_results += [{**r, "als_half_trust": half_trust} for r in results]
        if best is None or round(top, 12) > round(best[2], 12):
            best = (half_trust, weights, top)
    half_trust, weights, top = best
    cold = {
        "max_train": params.cold_item_max_train,
        "interactions": cold_slice["interactions"],
        "users": cold_slice["users"],
        **(cold_tradeoff(weight_results, half_trust, weights) if has_cold else {}),
    }
    for frame in (candidates, per_user, cold_sample, cold_per_user):
        frame.unpersist()
    if has_cold:
        chosen, als, matching = cold["chosen"], cold["als"], cold["matching_als"]
        log.info(
            "tune cold items (%d validation interactions of %d users, scored in %.1fs): ndcg@%d on "
            "them %.4f for the chosen setting, %s for ALS alone, %s for the best setting matching ALS",
            cold["interactions"],
            cold["users"],
            cold_seconds,
            k,
            chosen["cold_ndcg"],
            "-" if als is None else f"{als['cold_ndcg']:.4f}",
            "-" if matching is None else f"{matching['cold_ndcg']:.4f} ({matching['ndcg']:.4f} overall)",
        )
    log.info(
        "tuned als %s, item_knn %s, popular half_life_days %g, hybrid weights %s and als_half_trust %g "
        "(validation ndcg@%d %.4f)",
        als_params,
        knn_params,
        half_life,
        weights,
        half_trust,
        k,
        top,
    )
    return {
        "als": als_params,
        "item_knn": knn_params,
        "popular": {"half_life_days": half_life},
        "hybrid_weights": weights,
        "als_half_trust": half_trust,
        "validation_ndcg": top,
        "als_grid": als_results,
        "item_knn_grid": knn_results,
        "popular_grid": popular_results,
        # every (trust setting, weight vector) scored, with its validation ndcg
        "weight_grid": weight_results,
        # what the settings do for validation's cold items (cold_tradeoff)
        "cold_validation": cold,
        "validation_users": validation.select(USER_IDX).distinct().count(),
        # the users tuning scored: a sample of at most tune.max_validation_users
        "validation_users_scored": sample.select(USER_IDX).distinct().count(),
    }
