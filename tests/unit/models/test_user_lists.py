"""models.user_lists against the Spark reference functions it replaces in the recommend stage.

The reference is what the recommend stage did before (and tuning still does):
each model's candidates as Spark rows, then ``fill_to_k``, ``blend`` and the
random baseline. On small inline data with the awkward users (one who has seen
almost the whole catalogue, one whose items have no content neighbours, one with
a duplicated interaction), every list must be the same item by item.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from pyspark.sql import functions as F

from amazon_recs.models import baseline as m_baseline
from amazon_recs.models import item_knn as m_item_knn
from amazon_recs.models import ivf, training
from amazon_recs.models import lists as rc
from amazon_recs.models import popular as m_popular
from amazon_recs.models import user_lists as ul
from amazon_recs.models.als import AlsParams, fit_als

N_USERS, N_ITEMS, K, N, SEED = 30, 25, 4, 6, 11
WEIGHTS = {"als": 0.45, "content": 0.2, "item_knn": 0.2, "popular": 0.15}
ALMOST_ALL, NO_NEIGHBOURS, DUPLICATED = 0, 1, 2
LONELY_ITEMS = (20, 21)  # no content neighbours; items 23 and 24 are never rated, so
# they have no ALS factors and no popularity: only the random baseline can show them


def shop(spark):
    rng = np.random.default_rng(5)
    start = dt.datetime(2023, 1, 1)
    rows = []
    for u in range(N_USERS):
        if u == ALMOST_ALL:
            rated = list(range(22))  # 22 of 25: items 22, 23, 24 are left, and only 22 is rated
        elif u == NO_NEIGHBOURS:
            rated = list(LONELY_ITEMS)
        else:
            rated = sorted(rng.choice(23, size=int(rng.integers(1, 7)), replace=False).tolist())
        for i in rated:
            rows.append(
                (u, int(i), float(rng.integers(1, 6)), start + dt.timedelta(days=int(rng.integers(0, 400))))
            )
    rows.append(rows[-1] if rows[-1][0] == DUPLICATED else next(r for r in rows if r[0] == DUPLICATED))
    train = spark.createDataFrame(rows, "user_idx int, item_idx int, weight double, ts timestamp")
    items = spark.createDataFrame(
        [(i, f"p{i}", f"Product {i}" if i % 5 else None, f"cat{i % 4}") for i in range(N_ITEMS)],
        "item_idx int, item_id string, title string, category string",
    )
    pairs = [
        (a, b, float(round(rng.uniform(0.1, 0.9), 3)))
        for a in range(20)
        for b in range(N_ITEMS)
        if a != b and b not in LONELY_ITEMS and rng.random() < 0.3
    ]
    neighbours = spark.createDataFrame(pairs, "item_idx int, neighbour_idx int, similarity double")
    user_ids = spark.createDataFrame([(f"u{u}", u) for u in range(N_USERS)], "user_id string, user_idx int")
    return train, items, neighbours, user_ids


def reference(spark, models, train, items, half_trust=0.0):
    """The recommend stage's lists before user_lists (Spark rows and windows)."""
    cands = training.candidates(models, train, N, K)
    lists = {name: rc.fill_to_k(df, cands["popular"], K) for name, df in cands.items()}
    trust = None
    if half_trust > 0:
        n = F.col("interactions").cast("double")
        trust = models.popularity.select("item_idx", (n / (n + F.lit(half_trust))).alias("trust"))
    lists["hybrid"] = rc.blend(cands, WEIGHTS, K, trust)
    users = train.select("user_idx").distinct()
    random = m_baseline.recommend_random(items, users, train, K, SEED)
    lists["random"] = rc.fill_to_k(rc.as_candidates(random, "random"), cands["popular"], K)
    return {
        (name, r.user_idx, r["rank"]): (r.item_idx, r.score, r.source, r.because_idx)
        for name, df in lists.items()
        for r in df.collect()
    }


@pytest.fixture(scope="module")
def fitted(spark):
    train, items, neighbours, user_ids = shop(spark)
    train = train.cache()
    als = fit_als(train, AlsParams(rank=4, max_iter=5))
    models = training.Models(
        als=als,
        neighbours=neighbours,
        popularity=m_popular.fit_popularity(train, 60.0).cache(),
        item_knn=m_item_knn.fit_item_knn(
            train, m_item_knn.ItemKnnParams(neighbours=5, shrinkage=1.0)
        ).cache(),
    )
    yield spark, train, items, neighbours, user_ids, models
    train.unpersist()


# ALS through the inverted file with every cluster probed: the same lists, found
# through the head (N items), its floors and the clusters of the other 17 items.
EVERY_CLUSTER = ul.AlsSearch("ivf", probe_fraction=1.0, head_multiple=1)


@pytest.mark.parametrize(
    "block_floats, half_trust, search",
    [
        (ul.BLOCK_FLOATS, 0.0, None),
        (3 * N_ITEMS, 0.0, None),
        (3 * N_ITEMS, 2.0, None),
        (ul.BLOCK_FLOATS, 0.0, EVERY_CLUSTER),
        (3 * N, 2.0, EVERY_CLUSTER),
    ],
)
def test_every_list_matches_the_spark_reference(fitted, block_floats, half_trust, search):
    spark, train, items, neighbours, user_ids, models = fitted
    expected = reference(spark, models, train, items, half_trust)
    catalogue = ul.catalogue(
        items,
        models.als.itemFactors,
        neighbours,
        models.popularity,
        SEED,
        half_trust,
        search,
        N,
        models.item_knn,
    )
    assert len(catalogue.item_knn) == models.item_knn.count() > 0
    assert (catalogue.als_trust < 1).any() == (half_trust > 0)
    assert (catalogue.als_index is not None) == (search is not None)
    if search is not None:
        assert len(catalogue.als_index.head) == N and catalogue.als_index.clusters > 1
    users = ul.per_user(train, models.als.userFactors, user_ids, SEED)
    timer = spark.sparkContext.accumulator(0.0)
    got_rows = ul.user_lists(users, catalogue, K, N, WEIGHTS, timer, block_floats=block_floats).collect()
    got = {(r.model, r.user_idx, r["rank"]): (r.item_idx, r.score, r.source, r.because_idx) for r in got_rows}

    assert set(got) == set(expected)
    assert all(r.user_id == f"u{r.user_idx}" for r in got_rows)
    for key, (item, score, source, because) in expected.items():
        g_item, g_score, g_source, g_because = got[key]
        assert (g_item, g_source) == (item, source), key
        assert g_score == pytest.approx(score, rel=1e-6, abs=1e-9), key
        # The reference explains an ALS item only within ALS's top k; here every
        # ALS-led row shown is explained, so where the reference has a reason, it agrees.
        if because is not None:
            assert g_because == because, key
        elif source == "als":
            assert g_because is not None, key
        else:
            assert g_because is None, key
    assert timer.value > 0

    # The shapes that matter, checked directly as well.
    lists = {}
    for r in got_rows:
        lists.setdefault((r.model, r.user_idx), []).append(r)
    seen = {(r.user_idx, r.item_idx) for r in train.collect()}
    for (model, user), rows in lists.items():
        assert len(rows) == K or user == ALMOST_ALL, (model, user)
        assert not any((user, r.item_idx) in seen for r in rows)
    # Three items are left for the user who rated 22 of 25. ALS, item-kNN and popularity
    # know only item 22 (23 and 24 were never rated); content reaches the others by their text.
    for model in ("als", "item_knn", "popular"):
        assert [r.item_idx for r in lists[(model, ALMOST_ALL)]] == [22], model
    for model in ("content", "hybrid", "random"):
        assert {r.item_idx for r in lists[(model, ALMOST_ALL)]} <= {22, 23, 24}, model
    assert {r.item_idx for r in lists[("random", ALMOST_ALL)]} == {22, 23, 24}
    # Content has nothing for a user whose items have no neighbours: popularity fills the list.
    assert {r.source for r in lists[("content", NO_NEIGHBOURS)]} == {"popular"}
    # Item-kNN's lists come from its own neighbours, and the hybrid takes some of them.
    assert {r.source for rows in lists.values() for r in rows} >= {"item_knn"}
    assert any(
        r.source == "item_knn" for (model, _), rows in lists.items() if model == "hybrid" for r in rows
    )


def test_search_recall_is_measured_only_for_an_index(fitted):
    spark, train, items, neighbours, user_ids, models = fitted
    args = (items, models.als.itemFactors, neighbours, models.popularity, SEED, 0.0)
    exact = ul.catalogue(*args, ul.AlsSearch("exact"), N)
    assert ul.calibrate_search(models.als.userFactors, exact, N, K, 100, SEED, 0.99) == (exact, {})
    indexed = ul.catalogue(*args, EVERY_CLUSTER, N)
    same, recall = ul.calibrate_search(models.als.userFactors, indexed, N, K, 10, SEED)
    assert same is indexed and recall["als_search_users"] == 10
    assert recall[f"als_search_recall_at_{N}"] == recall[f"als_search_recall_at_{K}"] == 1.0
    assert "als_search_recall_target" not in recall
    # Probing one cluster of several can only lose items, and the recall says how many.
    one = ul.catalogue(*args, ul.AlsSearch("ivf", probe_fraction=0.01, head_multiple=1), N)
    assert one.als_index.probe == 1
    _, partial = ul.calibrate_search(models.als.userFactors, one, N, K, N_USERS, SEED)
    assert 0 < partial[f"als_search_recall_at_{N}"] < 1


def test_the_probe_is_calibrated_on_some_users_and_measured_on_others(fitted):
    spark, train, items, neighbours, user_ids, models = fitted
    args = (items, models.als.itemFactors, neighbours, models.popularity, SEED, 0.0)
    one = ul.catalogue(*args, ul.AlsSearch("ivf", probe_fraction=0.01, head_multiple=1), N)
    half = N_USERS // 2
    calibrated, recall = ul.calibrate_search(models.als.userFactors, one, N, K, half, SEED, 1.0)
    index = calibrated.als_index
    assert recall["als_search_recall_target"] == 1.0
    assert recall["als_search_calibration_users"] == recall["als_search_users"] == half
    assert recall["als_search_probe"] == index.probe > one.als_index.probe == 1
    assert index.clusters == one.als_index.clusters and calibrated.items is one.items
    # The choice is the fewest probes reaching the target on the calibration half: the
    # users sampled first, every other one, by the seeded hash recall_users orders by.
    sample = models.als.userFactors.orderBy(F.xxhash64(F.lit(SEED), "id"), "id").limit(2 * half)
    chooser = np.asarray([r.features for r in sample.collect()], np.float32)[0::2]
    none = np.empty(0, np.int64)
    exact = ul.als_top_n(chooser, one.als_factors, none, none, N)

    def recall_at(probe):
        found = ul.als_top_n(chooser, one.als_factors, none, none, N, dataclasses.replace(index, probe=probe))
        return ivf.recall(found, exact)

    assert recall_at(index.probe) == 1.0 > recall_at(index.probe - 1)
    # A target the probe of one already meets keeps one.
    low, _ = ul.calibrate_search(models.als.userFactors, one, N, K, half, SEED, 0.01)
    assert low.als_index.probe == 1


def test_walk_is_the_first_unseen_steps_of_each_row():
    """The vectorised walk against a plain loop, with wrap-around and a row that has seen
    everything but two places."""
    rng = np.random.default_rng(3)
    length, n_rows, n = 40, 60, 7
    order = rng.permutation(length) * 2  # places need not be 0..length-1
    seen = {
        r: set(rng.choice(order, size=int(rng.integers(0, 12)), replace=False).tolist())
        for r in range(n_rows)
    }
    seen[5] = set(order.tolist()) - {int(order[3]), int(order[30])}
    seen[6] = set(order.tolist())
    rows = np.array([r for r in range(n_rows) for _ in seen[r]], np.int64)
    places = np.array([p for r in range(n_rows) for p in sorted(seen[r])], np.int64)
    starts = rng.integers(0, length, n_rows)
    flat = ul._walk(n_rows, order, rows, places, n, starts)
    for r in range(n_rows):
        expected = [
            int(order[(starts[r] + s) % length])
            for s in range(length)
            if int(order[(starts[r] + s) % length]) not in seen[r]
        ][:n]
        assert flat.places[flat.rows == r].tolist() == expected, r


def test_candidate_arrays_are_the_spark_candidates(fitted):
    """Tuning's weight search reads ``candidate_arrays``: every model's N candidates per
    user, item for item and score for score, as ``training.candidates`` makes them as
    Spark rows, and in rank order within each model."""
    spark, train, items, neighbours, user_ids, models = fitted
    cat = ul.catalogue(
        items, models.als.itemFactors, neighbours, models.popularity, SEED, n=N, item_knn=models.item_knn
    )
    users = ul.per_user(train, models.als.userFactors, user_ids, SEED)
    got = {}
    for r in ul.candidate_arrays(users, cat, N).collect():
        assert len(r["items"]) == len(r["scores"]) == len(r["models"])
        for item, score, m in zip(r["items"], r["scores"], r["models"], strict=True):
            got.setdefault((rc.COMPONENTS[m], r.user_idx), []).append((item, score))
    expected = {}
    for name, df in training.candidates(models, train, N, K).items():
        for r in df.collect():
            expected.setdefault((name, r.user_idx), []).append((r.item_idx, r.score))
    assert got.keys() == expected.keys()
    assert {name for name, _ in got} == set(rc.COMPONENTS)
    for key, rows in expected.items():
        ranked = sorted(rows, key=lambda r: (-r[1], r[0]))
        assert [i for i, _ in got[key]] == [i for i, _ in ranked], key
        assert [s for _, s in got[key]] == pytest.approx([s for _, s in ranked], rel=1e-9), key
    assert len(got["popular", ALMOST_ALL]) == 1  # only item 22 is rated and unseen
