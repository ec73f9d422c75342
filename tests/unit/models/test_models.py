"""Unit tests for the three models on small planted data."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from chispa import assert_approx_df_equality

from amazon_recs.errors import ConfigError
from amazon_recs.models import als as m_als
from amazon_recs.models import baseline as m_baseline
from amazon_recs.models import content as m_content
from amazon_recs.models import popular as m_popular
from amazon_recs.pipeline.params import als_params, content_params

# --- ALS ----------------------------------------------------------------------------------

N_USERS, BLOCK, SEEN_PER_USER = 40, 10, 6


def block_of(user: int) -> int:
    """Users 0..19 like items 0..9, users 20..39 like items 10..19."""
    return 0 if user < N_USERS // 2 else 1


def planted_train(spark):
    rows = []
    for u in range(N_USERS):
        b = block_of(u)
        for j in range(SEEN_PER_USER):
            item = b * BLOCK + (u + j) % BLOCK
            rows.append((u, item, float(1 + (u + j) % 5)))
    return spark.createDataFrame(rows, "user_idx int, item_idx int, weight double")


@pytest.fixture
def small_als(config):
    return replace(als_params(config), rank=4, max_iter=5)


@pytest.mark.parametrize("solver", ["local", "blocked", "mllib"])
def test_als_recommends_unseen_items_from_the_users_block(spark, small_als, solver):
    train = planted_train(spark).cache()
    n = 3
    users = train.select("user_idx").distinct()
    recs = m_als.recommend_als(
        m_als.fit_als(train, replace(small_als, solver=solver)), users, train, n
    ).collect()

    seen = {(r.user_idx, r.item_idx) for r in train.collect()}
    by_user: dict[int, list] = {}
    for r in recs:
        by_user.setdefault(r.user_idx, []).append(r)
    assert sorted(by_user) == list(range(N_USERS))
    own_block = 0
    for u, rows in by_user.items():
        assert sorted(r["rank"] for r in rows) == [1, 2, 3]
        assert len({r.item_idx for r in rows}) == n
        assert not any((u, r.item_idx) in seen for r in rows)
        ranked = sorted(rows, key=lambda r: r["rank"])
        assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
        own_block += sum(r.item_idx // BLOCK == block_of(u) for r in rows)
    # 4 unseen items are left in each user's own block, so all 3 can come from it.
    assert own_block >= 0.9 * N_USERS * n
    train.unpersist()


def test_recommend_als_scores_are_mllibs(spark, small_als):
    """Against MLlib's own recommendForUserSubset over the whole catalogue, seen items
    removed by hand: the same scores rank by rank, each the dot product of the factors."""
    train = planted_train(spark).cache()
    model = m_als.fit_als(train, small_als)
    users = train.select("user_idx").distinct()
    n_items = model.itemFactors.count()
    seen = {(r.user_idx, r.item_idx) for r in train.collect()}
    mllib: dict[int, list[float]] = {}
    for row in model.recommendForUserSubset(users, n_items).collect():
        unseen = [r for r in row.recommendations if (row.user_idx, r.item_idx) not in seen]
        mllib[row.user_idx] = [r.rating for r in unseen][:5]
    user_f = {r.id: r.features for r in model.userFactors.collect()}
    item_f = {r.id: r.features for r in model.itemFactors.collect()}

    got: dict[int, list] = {}
    for r in sorted(m_als.recommend_als(model, users, train, 5).collect(), key=lambda r: r["rank"]):
        got.setdefault(r.user_idx, []).append(r)
        assert r.score == pytest.approx(
            sum(a * b for a, b in zip(user_f[r.user_idx], item_f[r.item_idx], strict=True)), abs=1e-5
        )
    assert sorted(got) == sorted(mllib)
    for u, rows in got.items():
        assert [r["rank"] for r in rows] == list(range(1, len(mllib[u]) + 1))
        assert [r.score for r in rows] == pytest.approx(mllib[u], abs=1e-5)
    train.unpersist()


def test_fit_als_is_deterministic(spark, small_als):
    train = planted_train(spark).cache()
    users = train.select("user_idx").distinct()
    first = m_als.recommend_als(m_als.fit_als(train, small_als), users, train, 3)
    second = m_als.recommend_als(m_als.fit_als(train, small_als), users, train, 3)
    assert_approx_df_equality(first, second, 1e-6, ignore_row_order=True, ignore_nullable=True)
    train.unpersist()


# --- content ---------------------------------------------------------------------------------

ITEM_TEXTS = [
    (0, "Red leather wallet"),
    (1, "red leather belt"),
    (2, "Blue cotton shirt"),
    (3, "blue cotton socks"),
    (4, "brown leather wallet"),
    (5, "red wallet chain"),
    (6, "The and of it"),  # stop words only
    (7, None),  # no metadata
    (8, "  "),  # nothing but white space
    (9, "zebra giraffe"),  # words no other item uses
]
N_TEXT_ITEMS = 7  # 0..5 and 9


def test_with_tokens_drops_items_without_usable_text(spark):
    items = spark.createDataFrame(ITEM_TEXTS, "item_idx int, text string")
    tokens = {r.item_idx: r.tokens for r in m_content.with_tokens(items).collect()}
    assert sorted(tokens) == [0, 1, 2, 3, 4, 5, 9]
    assert tokens[0] == ["red", "leather", "wallet"]
    assert tokens[9] == ["zebra", "giraffe"]


def test_title_weight_repeats_the_title_and_category_words(spark):
    items = spark.createDataFrame(
        [
            (0, "Red wallet. Soft leather, two pockets", "Red wallet", "Wallets"),
            (1, "Blue socks", None, None),  # no title or category: the text alone
            (2, None, "Lost title", "Gone"),  # no text: still no vector
        ],
        "item_idx int, text string, title string, category string",
    )
    tokens = {r.item_idx: r.tokens for r in m_content.with_tokens(items, title_weight=3).collect()}
    assert sorted(tokens) == [0, 1]
    counts = {w: tokens[0].count(w) for w in set(tokens[0])}
    assert counts == {"red": 3, "wallet": 3, "wallets": 2, "soft": 1, "leather": 1, "two": 1, "pockets": 1}
    assert tokens[1] == ["blue", "socks"]
    assert m_content.with_tokens(items).collect()[0].tokens.count("red") == 1


def test_item_neighbours(spark, config):
    # The configured LSH: on 7 items with text every window holds them all, so
    # the expected pairs below are certain.
    params = content_params(config)
    items = spark.createDataFrame(ITEM_TEXTS, "item_idx int, text string")
    tokens = m_content.with_tokens(items).cache()
    tfidf = m_content.fit_tfidf(tokens, params)
    vectors = tfidf.transform(tokens).select("item_idx", m_content.VECTOR).cache()
    min_similarity = params.min_similarity

    rows = m_content.lsh_neighbours(vectors, replace(params, neighbours=20)).collect()
    sim = {(r.item_idx, r.neighbour_idx): r.similarity for r in rows}
    assert len(sim) == len(rows)  # one row per pair and direction

    # Cosine of the L2-normalised TF-IDF vectors, computed here from the vectors.
    vec = {r.item_idx: r[m_content.VECTOR] for r in vectors.collect()}

    def cosine(a: int, b: int) -> float:
        return float(vec[a].dot(vec[b]))

    for (a, b), s in sim.items():
        assert a != b
        assert 0.0 < s <= 1.0 + 1e-9
        assert sim[(b, a)] == pytest.approx(s)  # symmetric
        assert s == pytest.approx(cosine(a, b), abs=1e-9)
        assert s >= min_similarity
    # Items sharing words are neighbours (leather, wallet, red; blue cotton).
    for a, b in [(0, 1), (0, 4), (0, 5), (1, 5), (2, 3), (1, 4)]:
        assert (a, b) in sim, (a, b)
    # No shared words, no neighbour; an item whose words occur in no other item has
    # an all-zero vector and is similar to nothing (not to other such items either).
    for a, b in [(0, 2), (0, 3), (4, 2), (5, 3)]:
        assert (a, b) not in sim, (a, b)
    assert not any(9 in pair for pair in sim)

    # At most n per item: the best one, ties by neighbour id.
    best = m_content.lsh_neighbours(vectors, replace(params, neighbours=1)).collect()
    assert len(best) == len({r.item_idx for r in best})
    for r in best:
        top = max(s for (a, _), s in sim.items() if a == r.item_idx)
        assert r.similarity == pytest.approx(top)
        assert r["rank"] == 1
    tokens.unpersist()
    vectors.unpersist()


def test_recommend_content_scores_unseen_items(spark):
    neighbours = spark.createDataFrame(
        [
            (a, b, s)
            for a, b, s in [(0, 4, 0.5), (0, 1, 0.8), (1, 4, 0.2), (2, 3, 0.9), (1, 9, 0.6)]
            for a, b in [(a, b), (b, a)]
        ],
        "item_idx int, neighbour_idx int, similarity double",
    )
    train = spark.createDataFrame(
        [(100, 0, 4.0), (100, 1, 1.0), (101, 2, 2.0), (102, 7, 3.0)],
        "user_idx int, item_idx int, weight double",
    )
    # user 100 (total weight 5): item 4 = (4*0.5 + 1*0.2) / 5, reason 0 (2.0 > 0.2);
    # item 9 = 1*0.6 / 5, reason 1; items 0 and 1 are seen although they neighbour each other.
    # user 101: item 3 = 2*0.9 / 2. user 102's item has no neighbours: no rows.
    expected = spark.createDataFrame(
        [(100, 4, 0.44, 0, 1), (100, 9, 0.12, 1, 2), (101, 3, 0.9, 2, 1)],
        "user_idx int, item_idx int, score double, because_idx int, rank int",
    )
    got = m_content.recommend_content(neighbours, train, 5).select(
        "user_idx", "item_idx", "score", "because_idx", "rank"
    )
    assert_approx_df_equality(got, expected, 1e-12, ignore_row_order=True, ignore_nullable=True)


# --- popularity ----------------------------------------------------------------------------------

NEWEST = datetime(2024, 3, 31, 12, 0, 0)


def test_fit_popularity_half_life_weighting(spark):
    half_life = 90.0
    train = spark.createDataFrame(
        [
            (1, 1, NEWEST),
            (2, 1, NEWEST - timedelta(days=90)),  # one half-life old: 0.5
            (1, 2, NEWEST - timedelta(days=180)),  # two half-lives: 0.25
            (3, 2, NEWEST),
            (1, 3, NEWEST - timedelta(days=45)),  # half a half-life: sqrt(0.5)
            (2, 3, NEWEST - timedelta(days=45)),
        ],
        "user_idx int, item_idx int, ts timestamp",
    )
    popularity = m_popular.fit_popularity(train, half_life).collect()
    got = {r.item_idx: (r.score, r.interactions) for r in popularity}
    assert got == {
        1: (pytest.approx(1.5, abs=1e-12), 2),
        2: (pytest.approx(1.25, abs=1e-12), 2),
        3: (pytest.approx(2 * math.sqrt(0.5), abs=1e-12), 2),
    }


def test_fit_popularity_without_decay_counts_interactions(spark):
    train = spark.createDataFrame(
        [(1, 1, NEWEST), (2, 1, NEWEST - timedelta(days=900)), (1, 2, NEWEST - timedelta(days=1))],
        "user_idx int, item_idx int, ts timestamp",
    )
    got = {r.item_idx: (r.score, r.interactions) for r in m_popular.fit_popularity(train, 0.0).collect()}
    assert got == {1: (2.0, 2), 2: (1.0, 1)}
    with pytest.raises(ConfigError, match="half_life_days"):
        m_popular.fit_popularity(train, -1.0)


def test_recommend_popular_excludes_seen(spark):
    popularity = spark.createDataFrame(
        [(i, float(10 - i), 1) for i in range(1, 9)], "item_idx int, score double, interactions long"
    )
    seen = spark.createDataFrame([(1, 1), (1, 2), (2, 3), (2, 3)], "user_idx int, item_idx int")
    users = spark.createDataFrame([(1,), (2,), (3,), (3,)], "user_idx int")
    recs = m_popular.recommend_popular(popularity, users, seen, 3)
    got = sorted((r.user_idx, r["rank"], r.item_idx, r.score) for r in recs.collect())
    assert got == [
        (1, 1, 3, 7.0),
        (1, 2, 4, 6.0),
        (1, 3, 5, 5.0),
        (2, 1, 1, 9.0),
        (2, 2, 2, 8.0),
        (2, 3, 4, 6.0),
        (3, 1, 1, 9.0),
        (3, 2, 2, 8.0),
        (3, 3, 3, 7.0),
    ]


def test_random_baseline_draws_distinct_unseen_items_reproducibly(spark):
    items = spark.createDataFrame([(i,) for i in range(30)], "item_idx int")
    users = spark.createDataFrame([(u,) for u in range(6)], "user_idx int")
    # Users 0..5 have seen items u, u+1, u+2 (and a duplicate row).
    seen = spark.createDataFrame(
        [(u, u + d) for u in range(6) for d in range(3)] + [(0, 0)], "user_idx int, item_idx int"
    )
    first = m_baseline.recommend_random(items, users, seen, 5, seed=1).collect()
    again = m_baseline.recommend_random(items, users, seen, 5, seed=1).collect()
    other = m_baseline.recommend_random(items, users, seen, 5, seed=2).collect()

    def lists(rows):
        out = {}
        for r in sorted(rows, key=lambda r: (r.user_idx, r.rank)):
            out.setdefault(r.user_idx, []).append(r.item_idx)
        return out

    got = lists(first)
    assert got == lists(again)
    assert got != lists(other)
    assert sorted(got) == list(range(6))
    for u, picked in got.items():
        assert len(picked) == len(set(picked)) == 5
        assert not set(picked) & {u, u + 1, u + 2}
    # Not everyone gets the same list: offsets differ per user.
    assert len({tuple(p) for p in got.values()}) > 1


def test_exact_neighbours_match_lsh_on_a_tiny_catalogue_and_recall_counts_misses(spark, config):
    params = content_params(config)
    items = spark.createDataFrame(ITEM_TEXTS, "item_idx int, text string")
    tokens = m_content.with_tokens(items)
    vectors = (
        m_content.fit_tfidf(tokens, params).transform(tokens).select("item_idx", m_content.VECTOR).cache()
    )
    min_similarity = params.min_similarity
    lsh = m_content.lsh_neighbours(vectors, replace(params, neighbours=3))
    exact = m_content.exact_neighbours(vectors, min_similarity, 3)

    def pairs(df):
        return {(r.item_idx, r.neighbour_idx): round(r.similarity, 9) for r in df.collect()}

    assert pairs(exact) == pairs(lsh)
    assert m_content.neighbour_recall(lsh, exact) == pytest.approx(1.0)
    dropped = lsh.filter("rank > 1")  # keep all but each item's best neighbour
    expected = 1 - lsh.filter("rank = 1").count() / exact.count()
    assert m_content.neighbour_recall(dropped, exact) == pytest.approx(expected)


@pytest.mark.parametrize("dense", [False, True, 6])
def test_sparse_neighbours_match_the_term_join_in_blocks(spark, config, dense):
    """The exact search by blocked sparse products against the exact term join, on a
    catalogue with shared vocabulary, duplicate texts (ties, broken by neighbour id),
    an item of words nobody else uses and an item without text; blocks of 7 rows, by
    sparse products, by a dense product over every term in use, and by a dense one over
    the 6 most common terms plus sparse products of the rest."""
    import numpy as np

    rng = np.random.default_rng(8)
    words = [f"w{i:02d}" for i in range(40)]
    texts = [
        (i, " ".join(rng.choice(words, size=int(rng.integers(2, 7)), replace=False))) for i in range(150)
    ]
    texts += [(150, texts[3][1]), (151, texts[3][1]), (152, "solitary unmatched"), (153, None)]
    items = spark.createDataFrame(texts, "item_idx int, text string")
    params = content_params(config)
    tokens = m_content.with_tokens(items)
    vectors = (
        m_content.fit_tfidf(tokens, params).transform(tokens).select("item_idx", m_content.VECTOR).cache()
    )
    n = 5

    got = m_content.sparse_neighbours(vectors, params.min_similarity, n, block_rows=7, dense=dense).collect()
    want = m_content.exact_neighbours(vectors, params.min_similarity, n).collect()

    assert sorted((r.item_idx, r["rank"], r.neighbour_idx) for r in got) == sorted(
        (r.item_idx, r["rank"], r.neighbour_idx) for r in want
    )
    sims = {(r.item_idx, r.neighbour_idx): r.similarity for r in want}
    for r in got:
        assert r.similarity == pytest.approx(sims[(r.item_idx, r.neighbour_idx)], abs=1e-9)
    assert len(got) > 100 * n  # most items have their n neighbours: the test is not vacuous
    # Item 3's duplicates are each other's best neighbours (cosine 1), the lower id first.
    by_item = {(r.item_idx, r["rank"]): r.neighbour_idx for r in got}
    assert (by_item[(150, 1)], by_item[(150, 2)]) == (3, 151)
    assert not any(r.item_idx in (152, 153) or r.neighbour_idx in (152, 153) for r in got)
    vectors.unpersist()


def test_dense_terms_takes_the_common_terms_only_when_that_is_cheaper():
    import numpy as np

    items = 50_000
    freq = np.zeros(8192)
    freq[:200] = items * 0.6  # a shared vocabulary: each pair shares some of these terms
    freq[200:8000] = 6  # hashed rare words: a handful of items each
    dense = m_content._dense_terms(freq, items, None)
    assert dense.tolist() == list(range(200))
    # Real product text: no term in a large share of the catalogue. All sparse.
    freq[:200] = 40
    assert len(m_content._dense_terms(freq, items, None)) == 0
    assert len(m_content._dense_terms(freq, items, True)) == 8000
    assert m_content._dense_terms(freq, items, 3).tolist() == [0, 1, 2]
