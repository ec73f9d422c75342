"""Folding users into a trained ALS model: the trained factors back from the training
history, and factors that move toward what a user has just interacted with."""

from __future__ import annotations

import numpy as np
import pytest

from amazon_recs.models import als as m_als
from amazon_recs.models.fold_in import fold_in
from tests.unit.models.test_als_blocked import ALPHA, REG, factors_of, normal_equations, shop


@pytest.fixture(scope="module")
def fitted(spark):
    train, rows = shop(spark, seed=3)
    params = m_als.AlsParams(rank=8, max_iter=8, reg_param=REG, alpha=ALPHA, seed=7, solver="local")
    model = m_als.fit_als(train, params)
    users, items = factors_of(model.userFactors), factors_of(model.itemFactors)
    item_ids = np.array(sorted(items))
    matrix = np.array([items[i] for i in item_ids], np.float32)
    return rows, users, item_ids, matrix


def test_fold_in_of_the_training_history_gives_the_trained_factors(fitted):
    rows, users, item_ids, matrix = fitted
    order = sorted(users)
    row_of = {u: n for n, u in enumerate(order)}
    r = np.array([row_of[u] for u, _, _ in rows])
    c = np.searchsorted(item_ids, [i for _, i, _ in rows])
    w = np.array([v for _, _, v in rows], np.float32)
    folded = fold_in(matrix, r, c, w, len(order), REG, ALPHA)
    trained = np.array([users[u] for u in order])
    assert np.abs(folded - trained).max() < 1e-4 * max(1.0, np.abs(trained).max())


def test_a_new_user_solves_the_normal_equations_and_an_empty_one_gets_zeros(fitted):
    _, _, item_ids, matrix = fitted
    cols, vals = np.array([0, 3, 3, 5]), np.array([4.0, 1.0, 2.0, 5.0], np.float32)
    # Row 0: four interactions (one item twice); row 1: none; row 2: one, not positive.
    got = fold_in(matrix, np.array([0, 0, 0, 0, 2]), np.r_[cols, 1], np.r_[vals, 0.0], 3, REG, ALPHA)
    expected = normal_equations(cols, vals, matrix, REG, ALPHA)
    assert got[0] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert not got[1].any() and not got[2].any()


def test_an_interaction_moves_the_user_toward_its_item(fitted):
    rows, users, item_ids, matrix = fitted
    user = min(users)
    mine = [(i, v) for u, i, v in rows if u == user]
    target = next(c for c in range(len(item_ids)) if item_ids[c] not in {i for i, _ in mine})
    cols = np.searchsorted(item_ids, [i for i, _ in mine])
    vals = np.array([v for _, v in mine], np.float32)
    before = fold_in(matrix, np.zeros(len(cols), int), cols, vals, 1, REG, ALPHA)[0]
    after = fold_in(
        matrix, np.zeros(len(cols) + 1, int), np.r_[cols, target], np.r_[vals, 5.0], 1, REG, ALPHA
    )[0]
    assert after @ matrix[target] > before @ matrix[target]
