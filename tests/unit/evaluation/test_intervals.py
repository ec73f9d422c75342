"""The bootstrap intervals: seeded Poisson weights per (user, replicate), paired
differences, segments, and the same answer however the users are partitioned."""

from __future__ import annotations

import numpy as np
import pytest

from amazon_recs.evaluation import intervals
from amazon_recs.evaluation.metrics import PER_USER_METRICS

MODELS = ["als", "hybrid", "popular"]


def test_poisson_weights_are_poisson_one_and_a_function_of_seed_user_and_replicate():
    users = np.arange(20_000, dtype=np.int64) * 7919
    weights = intervals.poisson_weights(users, 0, 50, seed=42)
    assert weights.shape == (50, 20_000)
    assert weights.mean() == pytest.approx(1.0, abs=0.01)
    assert weights.var() == pytest.approx(1.0, abs=0.02)
    assert (weights == 0).mean() == pytest.approx(np.exp(-1), abs=0.01)
    # Replicates 10..19 drawn on their own are the same rows; another seed differs.
    assert np.array_equal(intervals.poisson_weights(users, 10, 10, seed=42), weights[10:20])
    assert not np.array_equal(intervals.poisson_weights(users, 0, 50, seed=43), weights)


def _per_user(spark, n_users: int, partitions: int):
    rng = np.random.default_rng(5)
    rows = []
    for u in range(n_users):
        ndcg = float(rng.random() < 0.3) * rng.random()
        for model, value in (("als", ndcg), ("hybrid", ndcg + 0.1), ("popular", rng.random() * 0.2)):
            rows.append((model, f"u{u:04d}", *[value] * len(PER_USER_METRICS)))
    schema = "model string, user_id string, " + ", ".join(f"{m} double" for m in PER_USER_METRICS)
    return spark.createDataFrame(rows, schema).repartition(partitions), rows


def test_intervals_cover_the_mean_at_the_width_of_its_standard_error(spark):
    per_user, rows = _per_user(spark, 600, 3)
    reps = intervals.bootstrap(per_user, MODELS, seed=42, replicates=400)
    als = np.array([r[2] for r in rows if r[0] == "als"])
    assert reps.users[intervals.ALL] == 600
    assert reps.means[intervals.ALL][reps.columns.index("als/ndcg")] == pytest.approx(als.mean())
    low, high = reps.interval(intervals.ALL, "als", "ndcg", 0.95)
    assert low < als.mean() < high
    # A normal interval is 2 x 1.96 standard errors wide: the bootstrap's within 15%.
    assert high - low == pytest.approx(2 * 1.96 * als.std() / np.sqrt(600), rel=0.15)


def test_differences_are_paired_and_the_answer_ignores_partitioning(spark):
    per_user, _ = _per_user(spark, 600, 3)
    reps = intervals.bootstrap(per_user, MODELS, seed=42, replicates=200)
    # The hybrid is als + 0.1 for every user: each one's interval is wide, the paired
    # difference has none at all.
    paired = reps.paired(intervals.ALL, "hybrid", "als", "ndcg", 0.95)
    assert paired["diff"] == pytest.approx(0.1)
    assert (paired["low"], paired["high"]) == (pytest.approx(0.1), pytest.approx(0.1))
    low, high = reps.interval(intervals.ALL, "hybrid", "ndcg", 0.95)
    assert high - low > 0.02
    # Exactly the same numbers, not nearly: the sums do not depend on the rows' order.
    again = intervals.bootstrap(
        per_user.repartition(7).sortWithinPartitions("ndcg"), MODELS, seed=42, replicates=200
    )
    assert np.array_equal(again.draws[intervals.ALL], reps.draws[intervals.ALL])
    assert np.array_equal(again.means[intervals.ALL], reps.means[intervals.ALL])
    other_seed = intervals.bootstrap(per_user, MODELS, seed=7, replicates=200)
    assert not np.allclose(other_seed.draws[intervals.ALL], reps.draws[intervals.ALL])


def test_segments_are_resampled_within_their_own_users(spark):
    per_user, rows = _per_user(spark, 300, 2)
    light = [f"u{u:04d}" for u in range(0, 300, 3)]
    segments = spark.createDataFrame([(u, "light") for u in light], "user_id string, segment string")
    reps = intervals.bootstrap(per_user, MODELS, seed=42, replicates=100, segments=segments)
    assert reps.users == {intervals.ALL: 300, "light": 100}
    chosen = set(light)
    expected = np.mean([r[2] for r in rows if r[0] == "popular" and r[1] in chosen])
    assert reps.means["light"][reps.columns.index("popular/recall")] == pytest.approx(expected)
    assert reps.draws["light"].shape == (100, len(MODELS) * len(PER_USER_METRICS))


def test_the_users_without_a_row_resample_as_zeros(spark):
    """Given every evaluated user, the per-user rows may leave out the all-zero ones
    (only users with a hit are scored): the same means and draws, exactly."""
    per_user, rows = _per_user(spark, 400, 3)
    segments = spark.createDataFrame(
        [(f"u{u:04d}", "light") for u in range(0, 400, 4)], "user_id string, segment string"
    )
    full = intervals.bootstrap(per_user, MODELS, seed=42, replicates=100, segments=segments)
    nonzero = per_user.filter(" OR ".join(f"{m} != 0" for m in PER_USER_METRICS))
    assert nonzero.count() < per_user.count()
    users = spark.createDataFrame([(f"u{u:04d}",) for u in range(400)], "user_id string")
    sparse = intervals.bootstrap(nonzero, MODELS, seed=42, replicates=100, segments=segments, users=users)
    assert sparse.users == full.users == {intervals.ALL: 400, "light": 100}
    for segment in full.draws:
        assert np.array_equal(sparse.means[segment], full.means[segment])
        assert np.array_equal(sparse.draws[segment], full.draws[segment])
