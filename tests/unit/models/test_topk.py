"""Per-user exclusion of seen items: the numpy kernels against brute-force references."""

from __future__ import annotations

import numpy as np

from amazon_recs.models import topk


def reference_top_n(scores: dict[int, float], seen: set[int], n: int) -> list[tuple[int, float]]:
    """Brute force: every unseen item, by score descending then item ascending, first n."""
    return sorted(((i, s) for i, s in scores.items() if i not in seen), key=lambda p: (-p[1], p[0]))[:n]


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
