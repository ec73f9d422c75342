"""Parity of the Spark ranking metrics with numbers worked out by hand.

k = 3. Held-out items (truth), with a duplicate row for u1:
    u1: {a, b}          (|rel| = 2)
    u2: {c, d, e, f}    (|rel| = 4 > k)
    u3: {g}             (|rel| = 1)
u4 has recommendations but no held-out items, so it is not evaluated.

Recommendations (rank: item; ranks beyond k are ignored):
    m1  u1: 1 a, 2 x, 3 b, 4 y      u2: 1 x, 2 c, 3 d, 4 e      u3: (none)     u4: 1 a
    m2  u1: 1 y, 2 z, 3 x           u2: 1 c, 2 d, 3 e           u3: 1 x, 2 g

With L(r) = log2(r + 1): L(1) = 1, L(2) = log2(3), L(3) = 2.
"""

from __future__ import annotations

import math
import random

import pytest

from amazon_recs.evaluation import metrics as ev

K = 3
L2 = math.log2(3)  # log2(2 + 1)

# Worked by hand from the docstring formulas of amazon_recs.evaluation.metrics.
EXPECTED_PER_USER = {
    # m1 u1: hits at ranks 1 and 3.
    ("m1", "u1"): {
        "precision": 2 / 3,
        "recall": 2 / 2,
        "ndcg": (1 / 1 + 1 / 2) / (1 / 1 + 1 / L2),  # ideal: 2 hits at ranks 1, 2
        "map": (1 / 1 + 2 / 3) / 2,  # precision@1 = 1, precision@3 = 2/3; min(|rel|, k) = 2
        "hit_rate": 1.0,
        "mrr": 1.0,
    },
    # m1 u2: hits at ranks 2 and 3; e at rank 4 does not count.
    ("m1", "u2"): {
        "precision": 2 / 3,
        "recall": 2 / 4,
        "ndcg": (1 / L2 + 1 / 2) / (1 + 1 / L2 + 1 / 2),  # ideal: min(4, 3) = 3 hits
        "map": (1 / 2 + 2 / 3) / 3,
        "hit_rate": 1.0,
        "mrr": 1 / 2,
    },
    # m1 has nothing for u3: zero everywhere, but u3 still counts.
    ("m1", "u3"): {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "hit_rate": 0.0, "mrr": 0.0},
    # m2 u1: a list without any hit.
    ("m2", "u1"): {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0, "hit_rate": 0.0, "mrr": 0.0},
    # m2 u2: three hits out of four relevant items; a perfect list at k = 3.
    ("m2", "u2"): {
        "precision": 3 / 3,
        "recall": 3 / 4,
        "ndcg": 1.0,
        "map": (1 + 1 + 1) / 3,
        "hit_rate": 1.0,
        "mrr": 1.0,
    },
    # m2 u3: hit at rank 2.
    ("m2", "u3"): {
        "precision": 1 / 3,
        "recall": 1 / 1,
        "ndcg": (1 / L2) / 1,
        "map": (1 / 2) / 1,
        "hit_rate": 1.0,
        "mrr": 1 / 2,
    },
}

EXPECTED_SUMMARY = {
    ("m1", "precision"): (2 / 3 + 2 / 3 + 0) / 3,
    ("m1", "recall"): (1 + 0.5 + 0) / 3,
    ("m1", "ndcg"): ((1.5 / (1 + 1 / L2)) + (1 / L2 + 0.5) / (1.5 + 1 / L2) + 0) / 3,
    ("m1", "map"): ((5 / 3) / 2 + (7 / 6) / 3 + 0) / 3,
    ("m1", "hit_rate"): 2 / 3,
    ("m1", "mrr"): (1 + 0.5 + 0) / 3,
    ("m2", "precision"): (0 + 1 + 1 / 3) / 3,
    ("m2", "recall"): (0 + 0.75 + 1) / 3,
    ("m2", "ndcg"): (0 + 1 + 1 / L2) / 3,
    ("m2", "map"): (0 + 1 + 0.5) / 3,
    ("m2", "hit_rate"): 2 / 3,
    ("m2", "mrr"): (0 + 1 + 0.5) / 3,
}

RECS = [
    ("m1", "u1", "a", 1),
    ("m1", "u1", "x", 2),
    ("m1", "u1", "b", 3),
    ("m1", "u1", "y", 4),
    ("m1", "u2", "x", 1),
    ("m1", "u2", "c", 2),
    ("m1", "u2", "d", 3),
    ("m1", "u2", "e", 4),
    ("m1", "u4", "a", 1),
    ("m2", "u1", "y", 1),
    ("m2", "u1", "z", 2),
    ("m2", "u1", "x", 3),
    ("m2", "u2", "c", 1),
    ("m2", "u2", "d", 2),
    ("m2", "u2", "e", 3),
    ("m2", "u3", "x", 1),
    ("m2", "u3", "g", 2),
]
TRUTH = [
    ("u1", "a"),
    ("u1", "b"),
    ("u1", "a"),  # duplicate: counts once
    ("u2", "c"),
    ("u2", "d"),
    ("u2", "e"),
    ("u2", "f"),
    ("u3", "g"),
]


@pytest.fixture
def recs(spark):
    return spark.createDataFrame(RECS, "model string, user_id string, item_id string, rank int")


@pytest.fixture
def truth(spark):
    return spark.createDataFrame(TRUTH, "user_id string, item_id string")


def test_per_user_metrics_and_summary_match_hand_computation(recs, truth):
    per_user = ev.per_user_metrics(recs, truth, K).cache()
    rows = per_user.collect()
    got = {(r.model, r.user_id): {m: r[m] for m in ev.PER_USER_METRICS} for r in rows}
    # One row per (model, evaluated user); u4 has no truth and is left out.
    assert sorted(got) == sorted(EXPECTED_PER_USER)
    for key, expected in EXPECTED_PER_USER.items():
        assert got[key] == pytest.approx(expected, abs=1e-12), key

    summary = ev.summarise(per_user, K).collect()
    assert {(r.model, r.metric): r.value for r in summary} == pytest.approx(EXPECTED_SUMMARY, abs=1e-12)
    assert {(r.model, r.metric, r.k, r.users) for r in summary} == {
        (model, metric, K, 3) for model, metric in EXPECTED_SUMMARY
    }
    per_user.unpersist()


def test_per_user_metrics_ignore_ranks_beyond_k(recs, truth):
    """At k = 4, m1 u2's item e (rank 4) now counts, and m1 u1's y stays a miss."""
    got = {(r.model, r.user_id): r for r in ev.per_user_metrics(recs, truth, 4).collect()}
    u2 = got[("m1", "u2")]
    assert u2.precision == pytest.approx(3 / 4)
    assert u2.recall == pytest.approx(3 / 4)
    assert u2.map == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 4)
    u1 = got[("m1", "u1")]
    assert u1.precision == pytest.approx(2 / 4)
    assert u1.ndcg == pytest.approx((1 + 1 / 2) / (1 + 1 / L2))


def test_coverage(recs):
    rows = ev.coverage(recs, catalogue_size=10, k=K).collect()
    got = {r.model: (r.metric, r.value, r.k, r.users) for r in rows}
    assert got == {
        # top-3 items: u1 {a, x, b}, u2 {x, c, d}, u4 {a} -> {a, b, c, d, x}; y and e are rank 4.
        "m1": ("coverage", pytest.approx(5 / 10), K, 3),
        # u1 {y, z, x}, u2 {c, d, e}, u3 {x, g} -> 7 items.
        "m2": ("coverage", pytest.approx(7 / 10), K, 3),
    }


def test_novelty_is_mean_self_information_with_add_one_smoothing(spark):
    # Training: 3 users; item p seen by all 3, q by 1 (twice: counted once), r by none.
    train = spark.createDataFrame(
        [("u1", "p"), ("u2", "p"), ("u3", "p"), ("u1", "q"), ("u1", "q")], "user_id string, item_id string"
    )
    recs = spark.createDataFrame(
        [
            ("m", "u1", "r", 1),
            ("m", "u2", "q", 1),
            ("m", "u2", "r", 2),
            ("m", "u3", "p", 3),  # beyond k = 2: ignored
            ("n", "u3", "p", 1),
        ],
        "model string, user_id string, item_id string, rank int",
    )
    got = {r.model: (r.value, r.users) for r in ev.novelty(recs, train, k=2).collect()}
    info = {"p": -math.log2(4 / 4), "q": -math.log2(2 / 4), "r": -math.log2(1 / 4)}
    assert got["m"] == (pytest.approx((info["r"] + info["q"] + info["r"]) / 3), 2)
    assert got["n"] == (pytest.approx(0.0), 1)


def test_metrics_at_several_ks_in_one_pass_equal_each_k_alone(recs, truth):
    at = {(r.model, r.user_id, r.k): r for r in ev.per_user_metrics_at(recs, truth, [4, 1, K, 2]).collect()}
    for k in (1, 2, K, 4):
        alone = ev.per_user_metrics(recs, truth, k).collect()
        assert alone
        for r in alone:
            both = at[(r.model, r.user_id, k)]
            assert {m: both[m] for m in ev.PER_USER_METRICS} == pytest.approx(
                {m: r[m] for m in ev.PER_USER_METRICS}, abs=1e-12
            ), (r.model, r.user_id, k)
    assert len(at) == 4 * len(EXPECTED_PER_USER)
    summary = {
        (r.model, r.metric, r.k): r.value
        for r in ev.summarise(ev.per_user_metrics_at(recs, truth, [K])).collect()
    }
    assert {(m, metric): v for (m, metric, _), v in summary.items()} == pytest.approx(
        EXPECTED_SUMMARY, abs=1e-12
    )


def test_cold_slice_keeps_held_out_items_with_few_training_interactions(spark, recs, truth):
    """Training counts: a 3 (two of them one user's duplicate rows: rows count), b 1,
    c 0, d 2, e 5, f 0, g 0. At most 1: b, c, f, g; u1 keeps b, u2 c and f, u3 g."""
    train = spark.createDataFrame(
        [("v1", "a"), ("v1", "a"), ("v2", "a"), ("v1", "b"), ("v1", "d"), ("v2", "d")]
        + [(f"w{i}", "e") for i in range(5)],
        "user_id string, item_id string",
    )
    cold = {(r.user_id, r.item_id) for r in ev.cold_truth(truth, train, 1).collect()}
    assert cold == {("u1", "b"), ("u2", "c"), ("u2", "f"), ("u3", "g")}
    assert {(r.user_id, r.item_id) for r in ev.cold_truth(truth, train, 0).collect()} == {
        ("u2", "c"),
        ("u2", "f"),
        ("u3", "g"),
    }
    counted = ev.cold_truth(truth, train, 1, with_counts=True)
    assert {(r.item_id, r[ev.TRAIN_N]) for r in counted.collect()} == {("b", 1), ("c", 0), ("f", 0), ("g", 0)}
    assert ev.slice_composition(counted) == {
        "interactions": 4,
        "users": 3,
        "items": 4,
        "new_item_interactions": 3,  # c, f and g: nobody's in training
    }

    got = {
        (r.model, r.metric): (r.value, r.users) for r in ev.cold_metrics(recs, truth, train, K, 1).collect()
    }
    assert {m for _, m in got} == {f"cold_{m}" for m in ev.PER_USER_METRICS}
    # m1: u1 b at rank 3 (1/3), u2 c at rank 2 (1/3), u3 nothing; m2: u1 none, u2 c at 1, u3 g at 2.
    assert got[("m1", "cold_precision")] == (pytest.approx((1 / 3 + 1 / 3 + 0) / 3), 3)
    assert got[("m1", "cold_recall")] == (pytest.approx((1 + 1 / 2 + 0) / 3), 3)
    assert got[("m2", "cold_hit_rate")] == (pytest.approx(2 / 3), 3)
    assert got[("m2", "cold_mrr")] == (pytest.approx((0 + 1 + 1 / 2) / 3), 3)


def test_summary_is_the_same_however_the_users_are_partitioned_and_ordered(spark):
    # A double sum's last bits follow the order Spark adds partial sums, which varies
    # after a shuffle; two runs of the same data must still write the same metrics.
    rng = random.Random(3)
    rows = [("als", f"u{u}", *[rng.random() ** 3 for _ in ev.PER_USER_METRICS]) for u in range(3000)]
    schema = "model string, user_id string, " + ", ".join(f"{m} double" for m in ev.PER_USER_METRICS)
    per_user = spark.createDataFrame(rows, schema)
    answers = set()
    for partitions, order in ((1, "user_id"), (7, "ndcg"), (5, "recall"), (11, "map")):
        shuffled = per_user.repartition(partitions).sortWithinPartitions(order)
        answers.add(tuple(sorted((r["metric"], r["value"]) for r in ev.summarise(shuffled, 10).collect())))
    assert len(answers) == 1
    (ndcg,) = [v for m, v in next(iter(answers)) if m == "ndcg"]
    assert ndcg == pytest.approx(math.fsum(r[4] for r in rows) / len(rows), rel=1e-15)


def test_novelty_is_the_same_however_the_lists_are_partitioned(spark):
    rng = random.Random(4)
    train = spark.createDataFrame(
        [(f"u{rng.randrange(400)}", f"i{min(int(rng.expovariate(0.01)), 999)}") for _ in range(5000)],
        "user_id string, item_id string",
    )
    rows = [("m", f"u{u}", f"i{rng.randrange(1000)}", r) for u in range(2000) for r in range(1, 11)]
    recs = spark.createDataFrame(rows, "model string, user_id string, item_id string, rank int")
    answers = {
        ev.novelty(recs.repartition(parts).sortWithinPartitions(order), train, k=10).first()["value"]
        for parts, order in ((1, "user_id"), (6, "item_id"), (9, "rank"))
    }
    assert len(answers) == 1


def _lists_with_collisions(spark, monkeypatch):
    """500 users x 2 models x 10 ranks, 3 held-out items each (some in the lists, some
    not), a model ("m3") without a single hit; every hash is made to collide modulo 7 so
    the broadcast semi-join lets through far more than the hits."""
    rng = random.Random(11)
    recs, truth = [], []
    for u in range(500):
        held = rng.sample(range(60), 3)
        truth += [(f"u{u}", f"i{i}") for i in held] + [(f"u{u}", f"i{held[0]}")]  # a duplicate
        for model in ("m1", "m2"):
            for rank, item in enumerate(rng.sample(range(60), 10), start=1):
                recs.append((model, f"u{u}", f"i{item}", rank))
        recs.append(("m3", f"u{u}", "never-held-out", 1))
    recs.append(("m1", "nobody", "i1", 1))  # a user with lists but nothing held out
    real = ev.F.xxhash64
    monkeypatch.setattr(ev.F, "xxhash64", lambda *cols: real(*cols) % 7)
    return (
        spark.createDataFrame(recs, "model string, user_id string, item_id string, rank int"),
        spark.createDataFrame(truth, "user_id string, item_id string"),
    )


def test_hits_through_the_hashed_semi_join_are_exactly_the_joined_rows(spark, monkeypatch):
    recs, truth = _lists_with_collisions(spark, monkeypatch)
    rel = truth.distinct()
    expected = {tuple(r) for r in recs.filter("rank <= 5").join(rel, ["user_id", "item_id"]).collect()}
    assert len(expected) > 100
    got = ev.hit_rows(recs, rel, 5)
    assert "BroadcastHashJoin" in got._jdf.queryExecution().executedPlan().toString()
    assert {tuple(r) for r in got.select("user_id", "item_id", "model", "rank").collect()} == expected
    monkeypatch.setattr(ev, "BROADCAST_PAIRS", 0)  # past the cap: a plain join, the same rows
    assert {tuple(r) for r in ev.hit_rows(recs, rel, 5).select(*got.columns).collect()} == expected


def test_summaries_from_the_hit_users_alone_equal_those_over_every_user(spark, monkeypatch):
    recs, truth = _lists_with_collisions(spark, monkeypatch)
    ks = [1, 5, 10]
    everyone = {
        (r.model, r.metric, r.k): (r.value, r.users)
        for r in ev.summarise(ev.per_user_metrics_at(recs, truth, ks)).collect()
    }
    rel = truth.distinct()
    n_rel = ev.relevant_counts(rel)
    hit_users = ev.hit_user_metrics(ev.hit_rows(recs, rel, 10), n_rel, ks)
    assert hit_users.select("user_id").distinct().count() < n_rel.count()  # the zeros are left out
    rows = ev.summarise_hits(hit_users, ["m1", "m2", "m3"], ks, n_rel.count())
    got = {(r["model"], r["metric"], r["k"]): (r["value"], r["users"]) for r in rows}
    assert set(got) == set(everyone)
    assert {key: v for key, (v, _) in got.items()} == pytest.approx(
        {key: v for key, (v, _) in everyone.items()}, abs=1e-15
    )
    assert {users for _, users in got.values()} == {users for _, users in everyone.values()} == {500}
    assert got[("m3", "ndcg", 10)] == (0.0, 500)
    assert got[("m1", "hit_rate", 10)][0] > 0.2


def test_the_cold_slice_from_the_hits_equals_its_own_pass_over_the_lists(spark, monkeypatch):
    recs, truth = _lists_with_collisions(spark, monkeypatch)
    slice_ = truth.filter(ev.F.col("item_id").isin([f"i{i}" for i in range(0, 60, 4)]))
    hits = ev.hit_rows(recs, truth.distinct(), 10)
    models = spark.createDataFrame([("m1",), ("m2",), ("m3",)], "model string")
    key = ("model", "user_id")
    alone = {
        (tuple(r[c] for c in key), m): r[m]
        for r in ev.cold_per_user(recs, slice_, 10).collect()
        for m in ev.PER_USER_METRICS
    }
    got = {
        (tuple(r[c] for c in key), m): r[m]
        for r in ev.cold_per_user_from_hits(hits, slice_, models, 10).collect()
        for m in ev.PER_USER_METRICS
    }
    assert len(alone) > 200 * len(ev.PER_USER_METRICS) and set(alone) == set(got)
    assert got == pytest.approx(alone, abs=1e-15)
    assert sum(got.values()) > 10
