"""Per-user exclusion of seen items: the numpy kernels, and ALS, popularity and random
recommendations against brute-force references on small inline data."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality

from amazon_recs.models import als as m_als
from amazon_recs.models import baseline as m_baseline
from amazon_recs.models import popular as m_popular
from amazon_recs.models import topk

RANKED = "user_idx int, item_idx int, score double, rank int"


def reference_top_n(scores: dict[int, float], seen: set[int], n: int) -> list[tuple[int, float]]:
    """Brute force: every unseen item, by score descending then item ascending, first n."""
    return sorted(((i, s) for i, s in scores.items() if i not in seen), key=lambda p: (-p[1], p[0]))[:n]


def ranked_rows(per_user: dict[int, list[tuple[int, float]]]) -> list[tuple]:
    return [(u, i, float(s), r) for u, pairs in per_user.items() for r, (i, s) in enumerate(pairs, 1)]


# --- numpy kernels --------------------------------------------------------------------------


def test_top_n_per_row_breaks_ties_by_column_and_skips_excluded():
    inf = np.inf
    scores = np.array(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0, 0.0],  # three-way tie across the cut
            [-inf, 5.0, -inf, -inf, 4.0, -inf],  # two left: fewer than n
            [-inf] * 6,  # everything excluded
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],  # all equal
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        ],
        dtype=np.float32,
    )
    cols, valid = topk.top_n_per_row(scores, 2)
    got = [[int(c) for c, v in zip(cs, vs, strict=True) if v] for cs, vs in zip(cols, valid, strict=True)]
    assert got == [[1, 2], [1, 4], [], [0, 1], [0, 1]]
    for row, picked in zip(scores, got, strict=True):
        ref = reference_top_n({i: s for i, s in enumerate(row) if s > -inf}, set(), 2)
        assert picked == [i for i, _ in ref]
    cols, valid = topk.top_n_per_row(scores, 10)  # n beyond the columns: every finite one
    assert cols.shape == (5, 6)
    assert valid.sum(axis=1).tolist() == [6, 2, 0, 6, 6]
    assert cols[0][valid[0]].tolist() == [1, 2, 4, 3, 0, 5]


def test_top_n_per_row_matches_a_full_sort_on_random_ties():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float32)  # many ties
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    for n in (1, 5, 29, 30):
        cols, valid = topk.top_n_per_row(scores, n)
        for row, cs, vs in zip(scores, cols, valid, strict=True):
            ref = reference_top_n({i: s for i, s in enumerate(row) if s > -np.inf}, set(), n)
            assert cs[vs].tolist() == [i for i, _ in ref]
            assert vs.tolist() == sorted(vs.tolist(), reverse=True)  # real ones first


def test_first_unseen_steps_walks_from_start_and_wraps_once():
    assert topk.first_unseen_steps(np.array([0, 2]), 0, 6, 3).tolist() == [1, 3, 4]
    # from place 4 of 6: places 4, 5, 0, 1, ...; place 5 and 0 are seen
    assert topk.first_unseen_steps(np.array([5, 0]), 4, 6, 3).tolist() == [0, 3, 4]
    assert topk.first_unseen_steps(np.array([1, 2, 3]), 2, 4, 3).tolist() == [2]  # one left
    assert topk.first_unseen_steps(np.arange(4), 1, 4, 3).tolist() == []
    assert topk.first_unseen_steps(np.array([], np.int64), 3, 5, 9).tolist() == [0, 1, 2, 3, 4]


def test_with_seen_items_keeps_users_without_any(spark):
    users = spark.createDataFrame([(1,), (2,), (2,)], "user_idx int")
    seen = spark.createDataFrame([(1, 5), (1, 5), (1, 6), (3, 7)], "user_idx int, item_idx int")
    got = {r.user_idx: r[topk.SEEN] for r in topk.with_seen_items(users, seen).collect()}
    assert sorted(got) == [1, 2]
    assert sorted(got[1]) == [5, 6] and got[2] is None


# --- ALS: blocked scores against every dot product ------------------------------------------

# Small integer factors: every float32 dot product is exact, so ties are real ties.
ITEM_FACTORS = {
    0: [1, 0],
    2: [0, 1],
    3: [1, 1],
    5: [1, 1],  # ties with 3
    6: [2, -1],
    7: [-1, 2],
    8: [0, 0],
    9: [2, 2],
    11: [1, 1],  # ties with 3 and 5
    12: [-2, 0],
}
USER_FACTORS = {
    0: [1, 1],  # no seen items at all
    1: [1, 2],  # has seen all but two items
    2: [3, 1],  # has seen every item
    3: [1, 1],  # duplicate seen rows, and an item the model does not know
    4: [0, 0],  # every score ties
    5: [-1, 0],
    6: [2, -3],
    7: [1, 0],
    8: [0, 1],  # not asked for
}
SEEN_ALS = (
    [(1, i) for i in ITEM_FACTORS if i not in (7, 12)]
    + [(2, i) for i in ITEM_FACTORS]
    + [(3, 9), (3, 9), (3, 3), (3, 99)]
    + [(5, 12), (6, 6), (7, 0), (8, 2)]
)
ASKED = [0, 1, 2, 3, 4, 5, 6, 7, 10]  # 10 has no factors


def als_reference(n: int) -> list[tuple]:
    out = {}
    for u in ASKED:
        if u in USER_FACTORS:
            scores = {i: float(np.dot(USER_FACTORS[u], f)) for i, f in ITEM_FACTORS.items()}
            out[u] = reference_top_n(scores, {i for v, i in SEEN_ALS if v == u}, n)
    return ranked_rows(out)


def factors_frame(spark, factors: dict):
    rows = [(k, [float(x) for x in v]) for k, v in reversed(list(factors.items()))]  # not in id order
    return spark.createDataFrame(rows, "id int, features array<float>")


# One user per block, two per block, and every user in one block.
@pytest.mark.parametrize(
    ("n", "block_floats"),
    [(4, len(ITEM_FACTORS)), (1, 2 * len(ITEM_FACTORS) + 1), (20, topk.BLOCK_FLOATS)],
)
def test_recommend_from_factors_matches_brute_force(spark, n, block_floats):
    users = spark.createDataFrame([(u,) for u in ASKED + ASKED], "user_idx int").repartition(3)
    seen = spark.createDataFrame(SEEN_ALS, "user_idx int, item_idx int")
    got = m_als.recommend_from_factors(
        factors_frame(spark, USER_FACTORS), factors_frame(spark, ITEM_FACTORS), users, seen, n, block_floats
    )
    expected = spark.createDataFrame(als_reference(n), RANKED)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    assert got.columns == ["user_idx", "item_idx", "score", "rank"]


def test_recommend_from_factors_random_floats_several_blocks(spark):
    rng = np.random.default_rng(3)
    items = {i: rng.normal(size=8).astype(np.float32) for i in range(0, 300, 3)}
    users = {u: rng.normal(size=8).astype(np.float32) for u in range(60)}
    seen = [(u, i) for u in users for i in items if rng.random() < 0.2]
    got = m_als.recommend_from_factors(
        factors_frame(spark, users),
        factors_frame(spark, items),
        spark.createDataFrame([(u,) for u in users], "user_idx int"),
        spark.createDataFrame(seen, "user_idx int, item_idx int"),
        10,
        block_floats=7 * len(items),  # blocks of 7 users
    )
    seen_by = {}
    for u, i in seen:
        seen_by.setdefault(u, set()).add(i)
    ref = {
        u: reference_top_n(
            {i: float(np.dot(f.astype(np.float64), v)) for i, v in items.items()}, seen_by.get(u, set()), 10
        )
        for u, f in users.items()
    }
    expected = spark.createDataFrame(ranked_rows(ref), RANKED)
    assert_approx_df_equality(got, expected, 1e-5, ignore_row_order=True, ignore_nullable=True)


# --- popularity ----------------------------------------------------------------------------

POPULARITY = [(1, 5.0), (2, 9.0), (3, 5.0), (4, 7.0), (5, 1.0), (6, 5.0), (7, 0.5)]  # 1, 3, 6 tie
SEEN_POP = (
    [(10, 2), (10, 4), (10, 4), (10, 42)]  # duplicates, and an item without popularity
    + [(11, i) for i, _ in POPULARITY if i != 5]  # one item left
    + [(12, i) for i, _ in POPULARITY]  # none left
    + [(14, 3), (15, 1)]  # 15 is not asked for
)
ASKED_POP = [10, 11, 12, 13, 14]  # 13 has seen nothing


@pytest.mark.parametrize("n", [3, 10])
def test_recommend_popular_walks_the_ranking_per_user(spark, n):
    popularity = spark.createDataFrame(
        [(i, s, 1) for i, s in POPULARITY], "item_idx int, score double, interactions long"
    )
    users = spark.createDataFrame([(u,) for u in ASKED_POP + [13]], "user_idx int")
    seen = spark.createDataFrame(SEEN_POP, "user_idx int, item_idx int")
    got = m_popular.recommend_popular(popularity, users, seen, n)
    scores = dict(POPULARITY)
    ref = {u: reference_top_n(scores, {i for v, i in SEEN_POP if v == u}, n) for u in ASKED_POP}
    expected = spark.createDataFrame(ranked_rows(ref), RANKED)
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


# --- random ----------------------------------------------------------------------------------


def random_reference(spark, items: list[int], users: list[int], seen: set, n: int, seed: int) -> list[tuple]:
    """Today's definition, walked by hand: the catalogue ordered by (xxhash64(seed, item),
    item); each user reads from pmod(xxhash64(seed, user), size), wrapping, skipping seen."""
    hashes = spark.createDataFrame([(i,) for i in items], "v int").selectExpr("v", f"xxhash64({seed}, v) h")
    order = [r.v for r in sorted(hashes.collect(), key=lambda r: (r.h, r.v))]
    starts = spark.createDataFrame([(u,) for u in users], "v int").selectExpr("v", f"xxhash64({seed}, v) h")
    out = {}
    for r in starts.collect():
        start = r.h % len(order)  # Python's % is pmod
        walk = [order[(start + s) % len(order)] for s in range(len(order))]
        picked = [i for i in walk if (r.v, i) not in seen][:n]
        out[r.v] = [(i, 1.0 - k / n) for k, i in enumerate(picked)]
    return ranked_rows(out)


def test_recommend_random_matches_a_walk_by_hand(spark):
    items = list(range(0, 40, 2))
    users = list(range(8))
    seen = (
        [(0, i) for i in items[:-2]]  # two left
        + [(1, i) for i in items]  # none left
        + [(2, 4), (2, 4), (2, 6), (2, 99)]
        + [(5, i) for i in items[::3]]
    )  # users 3, 4, 6, 7 have seen nothing
    got = m_baseline.recommend_random(
        spark.createDataFrame([(i,) for i in items + items[:3]], "item_idx int"),  # duplicates
        spark.createDataFrame([(u,) for u in users], "user_idx int"),
        spark.createDataFrame(seen, "user_idx int, item_idx int"),
        5,
        seed=11,
    )
    expected = spark.createDataFrame(random_reference(spark, items, users, set(seen), 5, 11), RANKED)
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


def test_recommendations_do_not_depend_on_partitioning(spark):
    users = spark.createDataFrame([(u,) for u in ASKED], "user_idx int")
    seen = spark.createDataFrame(SEEN_ALS, "user_idx int, item_idx int")
    items = spark.createDataFrame([(i,) for i in ITEM_FACTORS], "item_idx int")
    popularity = spark.createDataFrame(
        [(i, float(i % 4), 1) for i in ITEM_FACTORS], "item_idx int, score double, interactions long"
    )

    def runs(parts: int) -> list:
        u, s = users.repartition(parts), seen.repartition(parts)
        return [
            sorted(df.collect())
            for df in (
                m_als.recommend_from_factors(
                    factors_frame(spark, USER_FACTORS), factors_frame(spark, ITEM_FACTORS), u, s, 3, 10
                ),
                m_popular.recommend_popular(popularity, u, s, 3),
                m_baseline.recommend_random(items, u, s, 3, seed=5),
            )
        ]

    assert runs(1) == runs(4)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_top_n_per_row_on_wide_rows_matches_a_full_sort(n):
    """Rows wide enough for the chunk-maximum floor (and a tail chunk): many ties, excluded
    entries, a row excluded but for a few columns, one all excluded, one all equal."""
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 6, size=(40, 16 * n * 5 + 7)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[1, :] = -np.inf
    scores[1, [4, scores.shape[1] // 2, scores.shape[1] - 1]] = [2.0, 2.0, 7.0]
    scores[2, :] = -np.inf
    scores[3, :] = 1.5
    scores[4, :] = rng.normal(size=scores.shape[1])  # no ties
    cols, valid = topk.top_n_per_row(scores, n)
    assert cols.shape == valid.shape == (40, n)
    for row, cs, vs in zip(scores, cols, valid, strict=True):
        ref = reference_top_n({i: s for i, s in enumerate(row) if s > -np.inf}, set(), n)
        assert cs[vs].tolist() == [i for i, _ in ref]
        assert vs.tolist() == sorted(vs.tolist(), reverse=True)


def test_collect_columns_brings_every_row_as_numpy_with_arrays_stacked(spark):
    rows = [(i, float(i) / 2, [float(i), -float(i), 0.5]) for i in range(25)]
    df = spark.createDataFrame(rows, "id int, score double, features array<float>").repartition(4)
    ids, scores, features = topk.collect_columns(df, "id", "score", "features")
    order = np.argsort(ids)
    assert ids[order].tolist() == list(range(25))
    assert scores[order].tolist() == [i / 2 for i in range(25)]
    assert features.shape == (25, 3)
    assert features[order].tolist() == [[float(i), -float(i), 0.5] for i in range(25)]
    empty = topk.collect_columns(df.filter("id < 0"), "id", "features")
    assert [len(a) for a in empty] == [0, 0]


@pytest.mark.parametrize("with_cols", [True, False])
def test_best_per_row_matches_a_lexsort_on_unsorted_rows_with_ties(with_cols):
    rng = np.random.default_rng(9)
    rows = rng.integers(0, 40, 2000)
    cols = rng.permutation(2000)
    scores = rng.integers(0, 6, 2000).astype(np.float64)
    scores[::97] = -np.inf
    if not with_cols:  # entries sorted by (row, col); position breaks ties
        order = np.lexsort((cols, rows))
        rows, cols, scores = rows[order], cols[order], scores[order]
    index, rank = topk.best_per_row(rows, scores, 7, cols if with_cols else None)
    expected = []
    for r in range(40):
        mine = np.flatnonzero(rows == r)
        expected += list(mine[np.lexsort((cols[mine], -scores[mine]))][:7])
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(
        rank, np.concatenate([np.arange(1, min(7, (rows == r).sum()) + 1) for r in range(40)])
    )
