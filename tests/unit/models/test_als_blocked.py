"""The blocked ALS solver: its kernel against numpy, its model against MLlib's.

Both solvers fit the implicit-feedback model of Hu, Koren and Volinsky with
MLlib's conventions (confidence 1 + alpha |r|, preference r > 0, regularisation
scaled by a row's positive ratings); they start from different random factors,
so they are compared by what must hold for any fit: the normal equations at the
end, the training objective, and what they recommend.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from amazon_recs.errors import ConfigError
from amazon_recs.models import als as m_als
from amazon_recs.models import als_blocked as ab

RANK, ALPHA, REG = 4, 3.0, 0.1


def normal_equations(cols, vals, other, reg, alpha):
    """One row's factors by numpy, written from the formula, not from the kernel."""
    rank = other.shape[1]
    y = other.astype(np.float64)
    a = y.T @ y
    b = np.zeros(rank)
    positives = 0
    for j, r in zip(cols, vals, strict=True):
        c1 = alpha * abs(r)
        a += c1 * np.outer(y[j], y[j])
        if r > 0:
            b += (1 + c1) * y[j]
            positives += 1
    return np.linalg.solve(a + reg * positives * np.eye(rank), b)


# Rank 12: rows of up to 4 weighted ratings take the Woodbury path, longer ones
# Cholesky; rank 4: only single ratings take Woodbury; alpha 0: Cholesky always.
@pytest.mark.parametrize("rank, alpha", [(12, ALPHA), (4, ALPHA), (12, 0.0)])
def test_kernel_solves_the_normal_equations_row_by_row(rank, alpha):
    rng = np.random.default_rng(3)
    other = rng.standard_normal((12, rank)).astype(np.float32)
    rows = [
        ([0, 3, 3, 7], [1.0, 2.0, 2.0, 5.0]),  # a duplicated column counts twice, as in MLlib
        ([5], [4.0]),  # a single rating
        ([1, 2, 11], [-2.0, 0.0, 3.0]),  # a negative and a zero rating: no preference
        ([4, 6, 8, 9, 10], [1.0, 1.0, 1.0, 1.0, 1.0]),
        ([2, 9], [-1.0, 0.0]),  # no positive rating: all zeros
        (list(range(12)), list(rng.integers(1, 6, 12).astype(float))),  # heavy
    ]
    indptr = np.cumsum([0] + [len(c) for c, _ in rows]).astype(np.int64)
    cols = np.concatenate([c for c, _ in rows]).astype(np.int32)
    vals = np.concatenate([v for _, v in rows]).astype(np.float32)
    gram = other.astype(np.float64).T @ other.astype(np.float64)
    out = np.empty((len(rows), rank), np.float32)

    ab.solve_rows(indptr, cols, vals, other, gram, alpha, REG, out)

    for r, (c, v) in enumerate(rows):
        assert out[r] == pytest.approx(normal_equations(c, v, other, REG, alpha), rel=1e-4, abs=1e-5), r
    assert not out[4].any()


def test_a_block_solved_in_threads_gives_the_same_bits_as_in_one():
    # Runs of consecutive rows with about as many ratings each: a heavy row first
    # (one run may hold it alone), rows without ratings, more threads than rows.
    rng = np.random.default_rng(8)
    other = rng.standard_normal((40, 12)).astype(np.float32)
    lengths = [40, 0, 1, 3, 0, 7, 2, 1, 1, 5, 12, 2]
    indptr = np.cumsum([0, *lengths]).astype(np.int64)
    cols = rng.integers(0, 40, indptr[-1]).astype(np.int32)
    vals = rng.integers(-1, 6, indptr[-1]).astype(np.float32)
    block = ab.Block(np.arange(len(lengths), dtype=np.int32), indptr, cols, vals)
    gram = other.astype(np.float64).T @ other.astype(np.float64)
    one = ab._solve(block, other, gram, 12, REG, ALPHA, threads=1)
    assert one.any()
    for threads in (2, 3, 20):
        assert np.array_equal(ab._solve(block, other, gram, 12, REG, ALPHA, threads=threads), one), threads
    none = np.empty(0, np.int32)
    empty = ab.Block(none, np.zeros(1, np.int64), none, np.empty(0, np.float32))
    assert ab._solve(empty, other, gram, 12, REG, ALPHA, threads=2).shape == (0, 12)


def shop(spark, seed=5, n_users=60, n_items=30):
    """Two tastes (even and odd items), a heavy user who rated almost everything,
    users with one rating, a duplicated row."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        if u == 0:
            items = range(n_items - 2)
        elif u % 10 == 1:
            items = [int(rng.integers(n_items))]
        else:
            items = rng.choice(np.arange(u % 2, n_items, 2), size=int(rng.integers(2, 8)), replace=False)
        rows += [(u, int(i), float(rng.integers(1, 6))) for i in items]
    rows.append(rows[-1])
    return spark.createDataFrame(rows, "user_idx int, item_idx int, weight double"), rows


def factors_of(frame):
    return {r.id: np.asarray(r.features, np.float64) for r in frame.collect()}


def objective(rows, users, items, reg, alpha):
    """MLlib's implicit objective: sum over all pairs of c (p - x.y)^2 + reg (n_u |x|^2 + n_i |y|^2)."""
    x = np.array([users[u] for u in sorted(users)])
    y = np.array([items[i] for i in sorted(items)])
    u_at = {u: k for k, u in enumerate(sorted(users))}
    i_at = {i: k for k, i in enumerate(sorted(items))}
    scores = x @ y.T
    conf = np.ones_like(scores)
    pref = np.zeros_like(scores)
    n_u, n_i = np.zeros(len(x)), np.zeros(len(y))
    for u, i, r in rows:
        conf[u_at[u], i_at[i]] += alpha * abs(r)
        pref[u_at[u], i_at[i]] = 1.0
        n_u[u_at[u]] += 1
        n_i[i_at[i]] += 1
    fit = (conf * (pref - scores) ** 2).sum()
    return fit + reg * ((n_u * (x**2).sum(1)).sum() + (n_i * (y**2).sum(1)).sum())


@pytest.fixture(scope="module")
def params():
    return m_als.AlsParams(rank=RANK, max_iter=10, reg_param=REG, alpha=ALPHA, seed=7)


def test_blocked_fit_is_an_mllib_model_of_the_same_quality(spark, params):
    train, rows = shop(spark)
    persisted = set(spark.sparkContext._jsc.getPersistentRDDs())
    blocked = m_als.fit_als(train, replace(params, solver="blocked"))
    # the ratings it cached by user and by item are released
    assert set(spark.sparkContext._jsc.getPersistentRDDs()) == persisted
    mllib = m_als.fit_als(train, replace(params, solver="mllib"))

    users, items = factors_of(blocked.userFactors), factors_of(blocked.itemFactors)
    assert set(users) == {u for u, _, _ in rows} and set(items) == {i for _, i, _ in rows}
    assert all(len(f) == RANK for f in users.values())
    # Users are solved last: each user's factors solve the normal equations against the items.
    item_matrix = np.zeros((max(items) + 1, RANK), np.float32)
    for i, f in items.items():
        item_matrix[i] = f
    for u in (0, 1, 2, 11):
        mine = [(i, r) for uu, i, r in rows if uu == u]
        expected = normal_equations([i for i, _ in mine], [r for _, r in mine], item_matrix, REG, ALPHA)
        assert users[u] == pytest.approx(expected, rel=1e-3, abs=1e-4), u
    # The same objective as MLlib's fit, within a few percent (different random starts).
    ours = objective(rows, users, items, REG, ALPHA)
    theirs = objective(rows, factors_of(mllib.userFactors), factors_of(mllib.itemFactors), REG, ALPHA)
    assert ours <= 1.05 * theirs
    # And the model works as MLlib's does: recommendForUserSubset, transform.
    recs = blocked.recommendForUserSubset(train.select("user_idx").distinct().limit(3), 2).collect()
    assert len(recs) == 3 and all(len(r.recommendations) == 2 for r in recs)
    assert blocked.transform(train).filter("prediction is null").count() == 0


def test_blocked_fit_does_not_depend_on_the_partitioning_nor_on_where_it_runs(spark, params):
    train, _ = shop(spark, seed=9)
    blocked = replace(params, solver="blocked")
    first = m_als.fit_als(train.coalesce(1), blocked)
    second = m_als.fit_als(train.repartition(7, "item_idx").orderBy("weight"), blocked)
    in_driver = m_als.fit_als(train.repartition(3), replace(params, solver="local"))
    for a, b in (
        (first.userFactors, second.userFactors),
        (first.itemFactors, second.itemFactors),
        (first.userFactors, in_driver.userFactors),
        (first.itemFactors, in_driver.itemFactors),
    ):
        fa, fb = factors_of(a), factors_of(b)
        assert fa.keys() == fb.keys()
        assert all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_blocks_hold_a_bounded_result_each_and_do_not_change_the_factors(spark, params, monkeypatch):
    # A multiple of the cores, each block's factors within RESULT_BYTES.
    assert ab._parts(2_000_000, 32, 2) == 8  # 10M reviews: 256 MB of user factors
    assert ab._parts(250_000, 32, 2) == 2  # 1M reviews: 32 MB
    assert ab._parts(1, 32, 4) == 4
    train, _ = shop(spark, seed=9)
    blocked = replace(params, solver="blocked")
    few = m_als.fit_als(train, blocked)
    made = []
    real = ab._blocks
    monkeypatch.setattr(ab, "RESULT_BYTES", 64)  # a few rows of factors per block
    monkeypatch.setattr(ab, "_blocks", lambda *a: made.append(a[-1]) or real(*a))
    many = m_als.fit_als(train, blocked)
    assert min(made) > 2
    for a, b in ((few.userFactors, many.userFactors), (few.itemFactors, many.itemFactors)):
        fa, fb = factors_of(a), factors_of(b)
        assert fa.keys() == fb.keys()
        assert all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_auto_chooses_by_the_ratings_and_the_size_of_the_broadcast_factors(spark, params):
    train, _ = shop(spark)
    auto = replace(params, solver="auto")
    assert m_als.choose_solver(train, auto) == "local"  # ~300 ratings
    assert m_als.choose_solver(train, replace(auto, local_max_ratings=100)) == "blocked"
    # 60 users x rank 4 x 4 bytes is 0.9 KiB: over a limit of 0 MB
    assert (
        m_als.choose_solver(train, replace(auto, local_max_ratings=100, blocked_max_factors_mb=0)) == "mllib"
    )
    assert m_als.choose_solver(train, replace(params, solver="mllib")) == "mllib"
    with pytest.raises(
        ConfigError, match="als.solver must be one of auto, local, blocked, mllib, not 'fast'"
    ):
        m_als.fit_als(train, replace(params, solver="fast"))
