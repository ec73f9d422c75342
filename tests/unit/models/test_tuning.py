"""Tuning on validation: the weight grid, the weight search, the validation carve."""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

import numpy as np
import pytest
from pyspark.sql import functions as F

from amazon_recs.features.split import SplitParams
from amazon_recs.models import als as m_als
from amazon_recs.models import item_knn as m_item_knn
from amazon_recs.models import lists as rc
from amazon_recs.models import popular as m_popular
from amazon_recs.models import tuning
from amazon_recs.models.content import NEIGHBOURS_SCHEMA
from amazon_recs.models.lists import as_candidates
from amazon_recs.models.topk import minmax_per_user, top_k
from amazon_recs.models.training import COMPONENTS, Content, ModelParams
from amazon_recs.pipeline.params import split_params


def test_weight_grid_covers_the_simplex():
    grid = tuning.weight_grid(0.25)
    assert len(grid) == math.comb(4 + 3, 3)  # compositions of 4 quarters into 4 weights
    assert all(sum(w.values()) == pytest.approx(1.0) for w in grid)
    assert {"als": 1.0, "content": 0.0, "item_knn": 0.0, "popular": 0.0} in grid
    assert {"als": 0.25, "content": 0.25, "item_knn": 0.0, "popular": 0.5} in grid
    assert {"als": 0.0, "content": 0.25, "item_knn": 0.5, "popular": 0.25} in grid
    assert len({tuple(sorted(w.items())) for w in grid}) == len(grid)


def test_tune_weights_finds_the_model_that_predicts_validation(spark):
    # Two users, two candidates per model; validation holds exactly content's
    # top item, so any weight on content that outranks the others wins.
    rows = {
        "als": [(1, 10, 0.9), (1, 11, 0.1), (2, 20, 0.9), (2, 21, 0.1)],
        "content": [(1, 12, 0.8), (1, 10, 0.2), (2, 22, 0.8), (2, 20, 0.2)],
        "item_knn": [(1, 9, 0.7), (1, 11, 0.6), (2, 19, 0.7), (2, 21, 0.6)],
        "popular": [(1, 11, 5.0), (1, 13, 4.0), (2, 21, 5.0), (2, 23, 4.0)],
    }
    lists = {
        name: as_candidates(spark.createDataFrame(r, "user_idx int, item_idx int, score double"), name)
        for name, r in rows.items()
    }
    validation = spark.createDataFrame([(1, 12), (2, 22)], "user_idx int, item_idx int")
    weights, results = tuning.tune_weights(spark, lists, validation, k=1, step=0.5)
    assert len(results) == 10
    scores = {tuple(r[n] for n in COMPONENTS): r["ndcg"] for r in results}
    assert scores[(0.0, 1.0, 0.0, 0.0)] == pytest.approx(1.0)
    assert scores[(1.0, 0.0, 0.0, 0.0)] == pytest.approx(0.0)
    assert scores[(0.0, 0.0, 1.0, 0.0)] == pytest.approx(0.0)
    assert scores[(0.0, 0.0, 0.0, 1.0)] == pytest.approx(0.0)
    assert weights == {"als": 0.0, "content": 1.0, "item_knn": 0.0, "popular": 0.0}


def spark_weight_search(spark, lists, validation, k, step, trust=None):
    """The weight search as it was: every user's candidates cross-joined with every
    weight vector, ranked by a window. The reference the numpy search must match.
    ``trust`` (item_idx, trust) blends as ``lists.blend`` does with it."""
    grid = tuning.weight_grid(step)
    combos = spark.createDataFrame(
        [(i, *(w[name] for name in COMPONENTS)) for i, w in enumerate(grid)],
        "combo int, " + ", ".join(f"w_{name} double" for name in COMPONENTS),
    )
    keys, normalised = ["user_idx", "item_idx"], None
    for name in COMPONENTS:
        proposed = F.lit(True).alias(f"p_{name}")
        part = minmax_per_user(lists[name]).select(*keys, F.col("score").alias(f"s_{name}"), proposed)
        normalised = part if normalised is None else normalised.join(part, keys, how="full")
    normalised = normalised.fillna(0.0, [f"s_{name}" for name in COMPONENTS])
    if trust is None:
        fused = normalised.crossJoin(F.broadcast(combos)).withColumn(
            "score", sum(F.col(f"w_{name}") * F.col(f"s_{name}") for name in COMPONENTS)
        )
    else:
        # ALS keeps its weight on an item content does not propose to the user.
        t = F.when(F.col("p_content"), F.coalesce(F.col("trust"), F.lit(0.0))).otherwise(F.lit(1.0))
        w = {name: F.col(f"w_{name}") for name in COMPONENTS}
        score = F.col("s_als") * (w["als"] * t) + F.col("s_content") * (w["content"] + w["als"] * (1 - t))
        for name in COMPONENTS[2:]:  # the others keep their weight, in the blend's order
            score = score + F.col(f"s_{name}") * (w[name] + 0 * t)
        fused = (
            normalised.join(trust, "item_idx", "left")
            .crossJoin(F.broadcast(combos))
            .withColumn("score", score)
        )
    ranked = top_k(fused, k, col_user=["combo", "user_idx"]).select("combo", "user_idx", "item_idx", "rank")
    scores = tuning.ndcg_by(ranked, validation, k, "combo")
    results = [{**grid[i], "ndcg": scores.get(i, 0.0)} for i in range(len(grid))]
    best = max(results, key=lambda r: (round(r["ndcg"], 12), r["als"], -r["content"], -r["item_knn"]))
    return {name: best[name] for name in COMPONENTS}, results


def python_weight_search(rows, truth, k, step):
    """NDCG@k per weight vector by hand: min-max per (user, model), fuse, sort by
    (score desc, item asc), average over validation users."""
    normalised = {}
    for name, triples in rows.items():
        for user in {u for u, _, _ in triples}:
            mine = [(i, s) for u, i, s in triples if u == user]
            present = [s for _, s in mine if s is not None]
            lo, hi = (min(present), max(present)) if present else (None, None)
            for item, s in mine:
                if lo is not None and hi > lo:
                    value = 0.0 if s is None else (s - lo) / (hi - lo)
                else:
                    value = 1.0
                normalised.setdefault((user, item), {})[name] = value
    out = []
    for w in tuning.weight_grid(step):
        total = 0.0
        for user, relevant in truth.items():
            fused = {}
            for (u, item), s in normalised.items():
                if u == user:
                    fused[item] = w["als"] * s.get("als", 0.0)
                    for name in COMPONENTS[1:]:
                        fused[item] += w[name] * s.get(name, 0.0)
            ranked = sorted(fused, key=lambda i: (-fused[i], i))[:k]
            dcg = sum(1 / math.log2(r + 2) for r, i in enumerate(ranked) if i in relevant)
            total += dcg / sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
        out.append(total / len(truth))
    return out


# Ties everywhere: equal scores within a list, items two models rank alike (so
# equal weights tie them), a null score, a user with fewer than k candidates, a
# validation user without any candidate, a candidate user outside validation.
TIED_ROWS = {
    "als": [(1, 10, 0.9), (1, 11, 0.9), (1, 12, 0.1), (2, 20, 3.0), (2, 21, 1.0), (3, 30, 1.0), (5, 50, 1.0)],
    "content": [(1, 12, 0.7), (1, 13, 0.7), (1, 10, 0.3), (2, 22, 2.0), (2, 20, None), (2, 23, 1.0)],
    "item_knn": [(1, 11, 0.4), (1, 14, 0.4), (2, 21, 1.5), (2, 20, 1.0), (4, 41, 1.0)],
    "popular": [(1, 13, 5.0), (1, 11, 4.0), (1, 14, 4.0), (2, 23, 9.0), (2, 21, 8.0), (3, 31, 2.0)],
}
TIED_TRUTH = {1: {11, 13}, 2: {21, 22}, 3: {31}, 4: {40}}


def lists_of(spark, rows):
    return {
        name: as_candidates(spark.createDataFrame(r, "user_idx int, item_idx int, score double"), name)
        for name, r in rows.items()
    }


def truth_of(spark, truth):
    pairs = [(u, i) for u, items in truth.items() for i in sorted(items)]
    return spark.createDataFrame(pairs + pairs[:2], "user_idx int, item_idx int")  # duplicates count once


@pytest.mark.parametrize("k, step", [(1, 0.5), (2, 0.25), (3, 0.1)])
def test_weight_search_equals_the_spark_and_python_references_with_ties(spark, k, step):
    lists, validation = lists_of(spark, TIED_ROWS), truth_of(spark, TIED_TRUTH)
    weights, results = tuning.tune_weights(spark, lists, validation, k, step)
    expected_weights, expected = spark_weight_search(spark, lists, validation, k, step)
    assert [{n: r[n] for n in COMPONENTS} for r in results] == tuning.weight_grid(step)
    assert [r["ndcg"] for r in results] == pytest.approx([r["ndcg"] for r in expected], abs=1e-12)
    assert [r["ndcg"] for r in results] == pytest.approx(python_weight_search(TIED_ROWS, TIED_TRUTH, k, step))
    assert weights == expected_weights


def test_weight_search_equals_the_spark_reference_on_random_lists(spark):
    # Scores on a coarse grid, so items tie within and across lists.
    rng = random.Random(7)
    rows = {
        name: [
            (u, i, rng.randint(0, 4) / 4)
            for u in range(30)
            for i in rng.sample(range(40), rng.randint(1, 12))
        ]
        for name in COMPONENTS
    }
    truth = {u: set(rng.sample(range(40), rng.randint(1, 4))) for u in range(0, 36, 2)}
    lists, validation = lists_of(spark, rows), truth_of(spark, truth)
    weights, results = tuning.tune_weights(spark, lists, validation, 5, 0.1)
    expected_weights, expected = spark_weight_search(spark, lists, validation, 5, 0.1)
    assert [r["ndcg"] for r in results] == pytest.approx([r["ndcg"] for r in expected], abs=1e-12)
    assert weights == expected_weights
    assert max(r["ndcg"] for r in results) > 0


def test_weight_search_with_item_trust_equals_the_spark_reference(spark):
    # Items 0..39 with 0..7 training interactions (item 39 past the trust array: trust 0).
    rng = random.Random(11)
    rows = {
        name: [
            (u, i, rng.randint(0, 4) / 4)
            for u in range(30)
            for i in rng.sample(range(40), rng.randint(1, 12))
        ]
        for name in COMPONENTS
    }
    truth = {u: set(rng.sample(range(40), rng.randint(1, 4))) for u in range(0, 36, 2)}
    interactions = np.array([i % 8 for i in range(39)], dtype=float)
    item_trust = rc.item_trust(interactions, 3.0)
    trust = spark.createDataFrame(
        [(i, float(t)) for i, t in enumerate(item_trust)], "item_idx int, trust double"
    )
    lists, validation = lists_of(spark, rows), truth_of(spark, truth)

    weights, results = tuning.tune_weights(spark, lists, validation, 5, 0.1, item_trust)
    expected_weights, expected = spark_weight_search(spark, lists, validation, 5, 0.1, trust)
    plain = tuning.tune_weights(spark, lists, validation, 5, 0.1)[1]

    assert [r["ndcg"] for r in results] == pytest.approx([r["ndcg"] for r in expected], abs=1e-12)
    assert weights == expected_weights
    # The trust changes the search (else this test would prove nothing).
    assert [r["ndcg"] for r in results] != pytest.approx([r["ndcg"] for r in plain], abs=1e-9)


def test_validation_is_carved_from_training_only(spark, config):
    base = datetime(2024, 1, 1)
    train = (
        spark.createDataFrame(
            [(u, u * 100 + i, 1.0, base + timedelta(days=i), "train") for u in range(3) for i in range(10)],
            "user_idx int, item_idx int, weight double, ts timestamp, split string",
        )
        .withColumn("user_id", F.col("user_idx").cast("string"))
        .withColumn("item_id", F.col("item_idx").cast("string"))
    )
    fit, validation = tuning.carve_validation(train, split_params(config))
    assert fit.count() + validation.count() == 30
    # temporal protocol, test_fraction 0.2: each user's 2 latest go to validation
    got = {(r.user_idx, r.item_idx) for r in validation.collect()}
    assert got == {(u, u * 100 + i) for u in range(3) for i in (8, 9)}
    assert fit.join(validation, ["user_idx", "item_idx"], how="inner").count() == 0


def test_the_validation_sample_is_a_deterministic_subset_of_the_right_size(spark):
    validation = spark.createDataFrame(
        [(f"u{u}", u, u * 10 + i) for u in range(40) for i in range(2)] + [("u3", 3, 30)],
        "user_id string, user_idx int, item_idx int",
    )

    def users(df):
        return {r.user_idx for r in df.select("user_idx").distinct().collect()}

    sample = tuning.filter_sampled_users(validation, 7, seed=42)
    chosen = users(sample)
    assert len(chosen) == 7
    # every row of a chosen user, nothing else (the duplicate row stays a duplicate)
    expected = sorted(tuple(r) for r in validation.collect() if r.user_idx in chosen)
    assert sorted(tuple(r) for r in sample.collect()) == expected
    # the same users whatever the partitioning; another seed, other users
    again = tuning.filter_sampled_users(validation.repartition(5, "item_idx"), 7, seed=42)
    assert users(again) == users(sample)
    assert users(tuning.filter_sampled_users(validation, 7, seed=43)) != users(sample)
    # a larger budget keeps the smaller sample's users; 0 or more than all: everyone
    assert users(sample) < users(tuning.filter_sampled_users(validation, 20, seed=42))
    assert users(tuning.filter_sampled_users(validation, 0, seed=42)) == set(range(40))
    assert tuning.filter_sampled_users(validation, 100, seed=42).count() == validation.count()


def test_item_knn_validation_ndcg_in_numpy_equals_the_spark_metric(spark):
    """tune_item_knn scores in numpy; the figure must be the one metrics.per_user_metrics
    gives on recommend_item_knn's Spark lists, for every neighbour count (a prefix of
    the fit), with a validation user who has no fit rows and duplicated rows."""
    rng = random.Random(3)
    fit_rows = [(u, i, 1.0) for u in range(40) for i in rng.sample(range(30), rng.randint(1, 9))]
    fit_rows += fit_rows[:5]  # duplicates count once
    fit = spark.createDataFrame(fit_rows, "user_idx int, item_idx int, weight double")
    truth = [(u, i) for u in range(0, 41, 2) for i in rng.sample(range(30), rng.randint(1, 4))]
    validation = spark.createDataFrame(
        truth + truth[:3], "user_idx int, item_idx int"
    )  # user 40: no fit rows
    users = tuning.UserItems.of(
        fit.join(validation.select("user_idx").distinct(), "user_idx", "left_semi"), validation
    )
    assert len(users.users) == 21
    neighbours = m_item_knn.fit_item_knn(fit, m_item_knn.ItemKnnParams(neighbours=8, shrinkage=2.0)).cache()
    items, others, sims, rank = (
        np.asarray(c)
        for c in zip(
            *[(r.item_idx, r.neighbour_idx, r.similarity, r["rank"]) for r in neighbours.collect()],
            strict=True,
        )
    )
    for k, n in ((3, 8), (5, 3), (10, 1)):
        kept = rank <= n
        got = users.ndcg(items[kept], others[kept], sims[kept], k)
        recs = m_item_knn.recommend_item_knn(neighbours.filter(F.col("rank") <= n), fit, k)
        expected = tuning.ndcg_by(recs.withColumn("combo", F.lit(0)), validation, k, "combo")[0]
        assert got == pytest.approx(expected, abs=1e-12), (k, n)
        assert got > 0


def test_als_validation_ndcg_in_numpy_equals_the_spark_metric(spark):
    """tune_als scores each grid point in numpy; the figure must be the one
    metrics.per_user_metrics gives on recommend_als's Spark lists, with a heavy user
    who has seen all but three items, validation items without factors or already
    seen, a validation user without fit rows (no list: 0), factors of users outside
    the validation set, duplicated rows, and the catalogue scored in small blocks."""
    rng = random.Random(7)
    fit_rows = [
        (u, i, float(1 + (u + i) % 3)) for u in range(40) for i in rng.sample(range(30), rng.randint(1, 9))
    ]
    fit_rows += [(41, i, 1.0) for i in range(27)]  # items 27-29 are all it has left
    fit_rows += fit_rows[:5]
    fit = spark.createDataFrame(fit_rows, "user_idx int, item_idx int, weight double")
    truth = [(u, i) for u in range(0, 40, 2) for i in rng.sample(range(32), rng.randint(1, 4))]
    truth += [(41, 28), (41, 5), (42, 3), (42, 4)]  # (41, 5) was seen; user 42 has no fit rows
    validation = spark.createDataFrame(truth + truth[:3], "user_idx int, item_idx int")
    scored = fit.join(validation.select("user_idx").distinct(), "user_idx", "left_semi")
    users = tuning.UserItems.of(scored, validation)
    model = m_als.fit_als(fit, m_als.AlsParams(rank=4, max_iter=5))
    user_ids, user_factors = tuning.collect_columns(model.userFactors, "id", "features")
    item_ids, item_factors = tuning.collect_columns(model.itemFactors, "id", "features")
    assert len(user_ids) == 41 and len(item_ids) == 30  # items 30 and 31: validation only
    for k in (1, 3, 10):
        expected = tuning.ndcg_by(
            m_als.recommend_als(model, scored.select("user_idx").distinct(), scored, k).withColumn(
                "combo", F.lit(0)
            ),
            validation,
            k,
            "combo",
        )[0]
        for block_floats in (tuning.BLOCK_FLOATS, 2 * 30):
            got = users.ndcg_factors(user_ids, user_factors, item_ids, item_factors, k, block_floats)
            assert got == pytest.approx(expected, abs=1e-12), (k, block_floats)
        assert expected > 0


def test_popular_validation_ndcg_in_numpy_equals_the_spark_metric(spark):
    """tune_popular scores a ranking in numpy; the figure must be the one
    metrics.per_user_metrics gives on recommend_popular's Spark lists, with tied
    scores (item id breaks them), a heavy user who has seen most of the ranking, a
    validation item also seen (never listed), an item without fit rows, a
    validation user without fit rows (no list: 0, as tuning scores the other models)
    and duplicated rows."""
    rng = random.Random(5)
    fit_rows = [(u, i, 1.0) for u in range(40) for i in rng.sample(range(25), rng.randint(1, 6))]
    fit_rows += [(41, i, 1.0) for i in range(22)]  # has seen most items
    fit_rows += fit_rows[:5]
    fit = spark.createDataFrame(fit_rows, "user_idx int, item_idx int, weight double")
    truth = [(u, i) for u in range(0, 42, 3) for i in rng.sample(range(30), rng.randint(1, 4))]
    truth += [(41, 23), (41, 3), (0, fit_rows[0][1])]  # (41, 3) and user 0's first item were seen
    truth += [(42, 10), (42, 11)]  # user 42: no fit rows, so no list (counts 0)
    validation = spark.createDataFrame(truth + truth[:3], "user_idx int, item_idx int")
    users = tuning.UserItems.of(
        fit.join(validation.select("user_idx").distinct(), "user_idx", "left_semi"), validation
    )
    # scores with ties: items 0-9 share one score
    popularity = spark.createDataFrame(
        [(i, float(max(i, 10) % 7), 1) for i in range(25)], "item_idx int, score double, interactions long"
    )
    items, scores = (
        np.asarray(c) for c in zip(*[(r.item_idx, r.score) for r in popularity.collect()], strict=True)
    )
    order = items[np.lexsort((items, -scores))]
    scored = fit.join(validation.select("user_idx").distinct(), "user_idx", "left_semi")
    for k in (1, 3, 10):
        got = users.ndcg_ranking(order, k)
        recs = m_popular.recommend_popular(popularity, scored.select("user_idx").distinct(), scored, k)
        expected = tuning.ndcg_by(recs.withColumn("combo", F.lit(0)), validation, k, "combo")[0]
        assert got == pytest.approx(expected, abs=1e-12), k
        assert got > 0


def test_tune_popular_picks_the_half_life_validation_prefers(spark):
    """Old interactions on item 1, recent ones on item 2, validation on item 2: a
    short half-life wins; validation on item 1: plain counts (0) win."""
    now = datetime(2024, 6, 1)
    rows = [(u, 1, now - timedelta(days=400)) for u in range(10)]
    rows += [(u, 2, now - timedelta(days=d)) for u, d in ((10, 1), (11, 2), (12, 3))]
    rows += [(u, 3, now - timedelta(days=200)) for u in range(13, 20)]
    rows += [(u, 9, now - timedelta(days=1000)) for u in range(20, 30)]  # the validation users' history
    fit = spark.createDataFrame(rows, "user_idx int, item_idx int, ts timestamp")
    for wanted, best in ((2, 30.0), (1, 0.0)):
        validation = spark.createDataFrame([(u, wanted) for u in range(20, 30)], "user_idx int, item_idx int")
        users = tuning.UserItems.of(
            fit.join(validation.select("user_idx").distinct(), "user_idx", "left_semi"), validation
        )
        chosen, results, popularity = tuning.tune_popular(fit, users, (0.0, 30.0, 365.0), 1)
        assert chosen == best
        assert [r["half_life_days"] for r in results] == [0.0, 30.0, 365.0]
        top = popularity.orderBy(F.desc("score")).first()
        assert top.item_idx == wanted


def tuning_point(result):
    return (result["neighbours"], result["shrinkage"])


def test_tune_fits_als_once_per_grid_point_and_reuses_the_best(spark, monkeypatch):
    fits, reused, knn_fits, knn_reused = [], [], [], []
    fit_als, fit_models, fit_item_knn = m_als.fit_als, tuning.fit_models, m_item_knn.fit_item_knn

    def counting_fit_als(train, params):
        fits.append((params, fit_als(train, params)))
        return fits[-1][1]

    def counting_fit_item_knn(train, params):
        knn_fits.append(params)
        return fit_item_knn(train, params)

    def recording_fit_models(*args, **kwargs):
        reused.append(kwargs.get("als"))
        knn_reused.append(kwargs.get("item_knn"))
        return fit_models(*args, **kwargs)

    monkeypatch.setattr(m_als, "fit_als", counting_fit_als)
    monkeypatch.setattr(m_item_knn, "fit_item_knn", counting_fit_item_knn)
    monkeypatch.setattr(tuning, "fit_models", recording_fit_models)
    base = datetime(2024, 1, 1)
    train = spark.createDataFrame(
        [
            (f"u{u}", u, f"i{i}", i, 1.0, base + timedelta(days=d), "train")
            for u in range(30)
            for d, i in enumerate(range(u % 7, u % 7 + 8))
        ],
        "user_id string, user_idx int, item_id string, item_idx int, weight double, ts timestamp, "
        "split string",
    )
    content = Content(None, spark.createDataFrame([], NEIGHBOURS_SCHEMA), None, None)
    grid = {"rank": [4], "reg_param": [0.1], "alpha": [1.0, 20.0]}
    knn_grid = {"neighbours": [2, 5], "shrinkage": [0.0, 5.0]}
    params = tuning.TuneParams(
        als_grid=grid,
        item_knn_grid=knn_grid,
        weight_step=0.5,
        k=3,
        candidates=5,
        max_validation_users=10,
        split=SplitParams(),
    )
    # MLlib's solver: its factors are persisted RDDs, which tuning must release.
    models = ModelParams(als=m_als.AlsParams(rank=4, max_iter=3, solver="mllib"))
    factors_before = set(tuning._factor_rdds(spark))

    summary = tuning.tune(spark, train, spark.createDataFrame([], "item_idx int"), models, params, content)

    # one fit per grid point, none for the candidates: the best point's model is reused
    assert sorted(p.alpha for p, _ in fits) == [1.0, 20.0]
    best = [model for p, model in fits if p.alpha == summary["als"]["alpha"]]
    assert reused == best
    # the losing point's factors were released; the best model's two remain
    assert len(set(tuning._factor_rdds(spark)) - factors_before) == 2
    # item-kNN: one fit per shrinkage with the most neighbours; every point scored; the
    # best point's neighbours (a prefix of its fit) handed on, not fitted again
    assert sorted((p.shrinkage, p.neighbours) for p in knn_fits) == [(0.0, 5), (5.0, 5)]
    assert len(summary["item_knn_grid"]) == 4
    chosen = summary["item_knn"]
    assert chosen["neighbours"] in (2, 5) and chosen["shrinkage"] in (0.0, 5.0)
    score = {tuning_point(r): r["ndcg"] for r in summary["item_knn_grid"]}
    assert score[tuning_point(chosen)] == max(score.values()) > 0
    (handed,) = knn_reused
    per_item = handed.groupBy("item_idx").count().agg(F.max("count")).first()[0]
    assert per_item <= chosen["neighbours"]
    assert (summary["validation_users"], summary["validation_users_scored"]) == (30, 10)
    assert set(summary) >= {
        "als",
        "item_knn",
        "hybrid_weights",
        "als_half_trust",
        "validation_ndcg",
        "als_grid",
        "item_knn_grid",
        "popular",
        "popular_grid",
    }
    assert summary["popular"]["half_life_days"] in params.popular_half_life_days
    assert len(summary["popular_grid"]) == len(params.popular_half_life_days)
    assert sum(summary["hybrid_weights"].values()) == pytest.approx(1.0)
    # every trust setting was searched with the weights, and the best of all was kept
    assert summary["als_half_trust"] in params.als_half_trust
    assert summary["validation_ndcg"] == pytest.approx(max(r["ndcg"] for r in summary["weight_grid"]))
    assert {r["als_half_trust"] for r in summary["weight_grid"]} == set(params.als_half_trust)
    # Every setting was also scored on validation's cold items: the users' latest items
    # include item 13, which nobody has in the fit rows.
    cold = summary["cold_validation"]
    assert cold["max_train"] == params.cold_item_max_train
    assert 0 < cold["users"] <= cold["interactions"]
    assert cold["users"] <= summary["validation_users_scored"]
    assert all(0 <= r["cold_ndcg"] <= 1 for r in summary["weight_grid"])
    chosen = cold["chosen"]
    assert chosen["als_half_trust"] == summary["als_half_trust"]
    assert {n: chosen[n] for n in COMPONENTS} == summary["hybrid_weights"]
    assert chosen["ndcg"] == summary["validation_ndcg"]
    assert (cold["als"]["als"], cold["als"]["als_half_trust"]) == (1.0, 0.0)
    assert cold["matching_als"]["cold_ndcg"] >= cold["als"]["cold_ndcg"]


def test_the_cold_tradeoff_is_the_best_overall_of_the_settings_matching_als_on_cold_items():
    def row(trust, als, content, ndcg, cold):
        weights = {"als": als, "content": content, "item_knn": 1 - als - content, "popular": 0.0}
        return {**weights, "als_half_trust": trust, "ndcg": ndcg, "cold_ndcg": cold}

    results = [
        row(0.0, 1.0, 0.0, 0.12, 0.039),  # ALS alone
        row(0.0, 0.1, 0.1, 0.178, 0.015),  # the best overall: chosen
        row(0.0, 0.4, 0.3, 0.157, 0.045),
        row(5.0, 0.4, 0.1, 0.158, 0.040),  # the best overall of those at least ALS's on cold
        row(5.0, 0.3, 0.0, 0.170, 0.0389),  # just under ALS on cold
    ]
    chosen = {"als": 0.1, "content": 0.1, "item_knn": 0.8, "popular": 0.0}
    tradeoff = tuning.cold_tradeoff(results, 0.0, chosen)
    assert tradeoff == {"chosen": results[1], "als": results[0], "matching_als": results[3]}
    # Without ALS alone among the settings (trust off not tried) there is nothing to match.
    without = tuning.cold_tradeoff(results[1:], 0.0, chosen)
    assert (without["als"], without["matching_als"]) == (None, None)
