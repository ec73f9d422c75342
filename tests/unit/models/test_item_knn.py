"""models.item_knn: co-interaction cosine with shrinkage, each item's best neighbours,
held to a plain Python reference on inline rows and to a dense one on MovieLens."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from amazon_recs.errors import ConfigError
from amazon_recs.models import item_knn
from amazon_recs.models.item_knn import ItemKnnParams
from tests.conftest import shared_data

SCHEMA = "user_idx int, item_idx int, weight double"


def reference(pairs: set[tuple[int, int]], params: ItemKnnParams) -> dict[int, list[tuple[int, float]]]:
    """Each item's neighbours, from the definition: pair counts over users."""
    by_user, users_of = defaultdict(set), defaultdict(set)
    for user, item in pairs:
        by_user[user].add(item)
        users_of[item].add(user)
    co = defaultdict(int)
    for items in by_user.values():
        for i in items:
            for j in items:
                if i != j:
                    co[i, j] += 1
    best = defaultdict(list)
    for (i, j), count in co.items():
        if count >= params.min_support:
            sim = count / (math.sqrt(len(users_of[i]) * len(users_of[j])) + params.shrinkage)
            best[i].append((j, sim))
    return {i: sorted(found, key=lambda p: (-p[1], p[0]))[: params.neighbours] for i, found in best.items()}


def fitted(spark, rows, params, **kw) -> dict[int, list[tuple[int, float]]]:
    found = item_knn.fit_item_knn(spark.createDataFrame(rows, SCHEMA), params, **kw).toPandas()
    out = defaultdict(list)
    for r in found.sort_values(["item_idx", "rank"]).itertuples():
        out[r.item_idx].append((r.neighbour_idx, r.similarity))
    return dict(out)


def assert_same(got, expected):
    assert got.keys() == expected.keys()
    for item, found in expected.items():
        assert [j for j, _ in got[item]] == [j for j, _ in found], item
        assert [s for _, s in got[item]] == pytest.approx([s for _, s in found], rel=1e-12), item


@pytest.fixture(scope="module")
def shop():
    """60 users over 40 items, popularity skewed, a repeated pair and rows without an item."""
    rng = random.Random(11)
    rows = []
    for user in range(60):
        for _ in range(rng.randint(1, 12)):
            rows.append((user, min(int(rng.expovariate(0.12)), 39), float(rng.randint(1, 5))))
    rows += [(0, rows[0][1], 2.0), (3, None, 1.0), (None, 5, 1.0)]
    return rows


@pytest.mark.parametrize(
    "params",
    [
        ItemKnnParams(neighbours=5, shrinkage=0.0),
        ItemKnnParams(neighbours=3, shrinkage=10.0),
        ItemKnnParams(neighbours=50, shrinkage=2.5, min_support=2),
    ],
)
def test_neighbours_are_the_shrunk_cosine_of_shared_users(spark, shop, params):
    pairs = {(u, i) for u, i, _ in shop if u is not None and i is not None}
    assert_same(fitted(spark, shop, params), reference(pairs, params))


def test_small_blocks_give_the_same_neighbours_as_one(spark, shop):
    params = ItemKnnParams(neighbours=4, shrinkage=5.0)
    assert_same(fitted(spark, shop, params, block_work=50), fitted(spark, shop, params, block_work=1 << 30))


def test_a_heavy_user_counts_with_a_fixed_sample_of_their_items(spark, shop):
    heavy = [(100, i, 1.0) for i in range(40)]
    rows = spark.createDataFrame(shop + heavy, SCHEMA)
    kept = item_knn.capped_pairs(rows, max_user_items=12).toPandas()
    per_user = kept.groupby("user_idx").size()
    assert per_user[100] == 12 and per_user.drop(100).max() <= 12
    again = item_knn.capped_pairs(rows.repartition(5), max_user_items=12).toPandas()
    assert set(map(tuple, kept.to_numpy())) == set(map(tuple, again.to_numpy()))
    # The neighbours are those of the sampled pairs.
    params = ItemKnnParams(neighbours=5, shrinkage=1.0, max_user_items=12)
    assert_same(fitted(spark, shop + heavy, params), reference(set(map(tuple, kept.to_numpy())), params))


def test_settings_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="item_knn.neighbours"):
        ItemKnnParams(neighbours=0)
    with pytest.raises(ConfigError, match="item_knn.shrinkage"):
        ItemKnnParams(shrinkage=-1.0)


def test_lists_sum_similarities_exclude_seen_items_and_name_the_best_contributor(spark):
    # Users' items: 0 {1 (weight 5), 3}, 1 {2, 3}, 2 {1, 4}, 3 {1, 2}.
    rows = [(0, 1, 5.0), (0, 3, 1.0), (1, 2, 1.0), (1, 3, 1.0)]
    rows += [(2, 1, 1.0), (2, 4, 1.0), (3, 1, 1.0), (3, 2, 1.0)]
    train = spark.createDataFrame(rows, SCHEMA)
    neighbours = item_knn.fit_item_knn(train, ItemKnnParams(neighbours=10, shrinkage=0.0))
    lists = item_knn.recommend_item_knn(neighbours, train, 3).toPandas()
    user3 = lists[lists.user_idx == 3].sort_values("rank")
    # User 3 has items 1 and 2: item 3 shares a user with each (1/sqrt(3*2) + 1/sqrt(2*2)),
    # item 4 with item 1 only (1/sqrt(3*1)); the weights of the rows do not count.
    assert list(user3.item_idx) == [3, 4]
    assert user3.score.iloc[0] == pytest.approx((1 / math.sqrt(6) + 1 / 2) / 2)
    assert list(user3.because_idx) == [2, 1]
    # User 0: item 2 scores 1/sqrt(6) + 1/2 against item 4's 1/sqrt(3); counting item 1
    # five times (its weight) would put item 4 first.
    assert list(lists[lists.user_idx == 0].sort_values("rank").item_idx) == [2, 4]
    for user, items in lists.groupby("user_idx").item_idx:
        assert not set(items) & {i for u, i, _ in rows if u == user}


def test_movielens_neighbours_match_a_dense_computation(spark):
    ratings = pd.read_csv(shared_data("movielens", "ml-latest-small", "ratings.csv"))
    rows = ratings.rename(columns={"userId": "user_idx", "movieId": "item_idx", "rating": "weight"})
    train = spark.createDataFrame(rows[["user_idx", "item_idx", "weight"]], SCHEMA)
    params = ItemKnnParams(neighbours=20, shrinkage=10.0, max_user_items=100_000)
    got = item_knn.fit_item_knn(train, params).toPandas()
    assert got.groupby("item_idx").size().max() == 20
    ids = np.unique(rows.item_idx)
    users = np.unique(rows.user_idx)
    matrix = np.zeros((len(ids), len(users)))
    matrix[np.searchsorted(ids, rows.item_idx), np.searchsorted(users, rows.user_idx)] = 1.0
    counts = matrix.sum(axis=1)
    sample = np.random.default_rng(1).choice(len(ids), 200, replace=False)
    co = matrix[sample] @ matrix.T
    sims = co / (np.sqrt(counts[sample, None] * counts[None, :]) + params.shrinkage)
    sims[np.arange(len(sample)), sample] = -1.0
    sims[co < 1] = -1.0
    by_item = {i: g.sort_values("rank") for i, g in got.groupby("item_idx")}
    for row, place in enumerate(sample):
        order = np.lexsort((ids, -sims[row]))[: params.neighbours]
        expected = [(int(ids[j]), sims[row, j]) for j in order if sims[row, j] > 0]
        mine = by_item.get(int(ids[place]))
        found = [] if mine is None else list(zip(mine.neighbour_idx, mine.similarity, strict=True))
        assert [j for j, _ in found] == [j for j, _ in expected], ids[place]
        assert [s for _, s in found] == pytest.approx([s for _, s in expected], rel=1e-12)
