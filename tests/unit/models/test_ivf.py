"""models.ivf: the inverted-file ALS search against the exact search it stands in for."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from amazon_recs.errors import ConfigError
from amazon_recs.models import ivf
from amazon_recs.models import user_lists as ul


def seen_pairs(rng, n_users, n_items, almost_all):
    """Random seen items per user, sorted by user, with duplicates; user ``almost_all`` has
    seen every item but three, user 1 nothing."""
    users, items = [], []
    for u in range(n_users):
        if u == 1:
            continue
        chosen = np.arange(n_items - 3) if u == almost_all else rng.choice(n_items, int(rng.integers(1, 9)))
        users += [u] * len(chosen)
        items += list(chosen)
    users += [2, 2]  # a duplicated pair
    items += [items[users.index(2)]] * 2
    order = np.lexsort((items, users))
    return np.asarray(users)[order], np.asarray(items)[order]


def clustered_factors(rng, n_users, n_items, rank=8, topics=12):
    """Users and items around a few topics, item norms skewed like popularity's."""
    centres = rng.normal(size=(topics, rank))
    items = centres[rng.integers(0, topics, n_items)] + 0.5 * rng.normal(size=(n_items, rank))
    items *= (rng.pareto(2.0, n_items) + 0.2)[:, None]
    users = centres[rng.integers(0, topics, n_users)] + 0.5 * rng.normal(size=(n_users, rank))
    return users.astype(np.float32), items.astype(np.float32)


def test_every_cluster_probed_gives_the_exact_search_tie_for_tie():
    rng = np.random.default_rng(3)
    users, items = clustered_factors(rng, 120, 400)
    # Rounded factors: many equal scores, so the order on ties (item ascending) is tested.
    users, items = np.round(users), np.round(items * 2) / 2
    s_user, s_item = seen_pairs(rng, len(users), len(items), almost_all=0)
    index = ivf.build(items, 10, probe_fraction=1.0, seed=1, head_multiple=3)
    assert len(index.head) == 30 and index.clusters > 5 and index.probe == index.clusters
    for block in (ul.BLOCK_FLOATS, 7 * len(index.head)):  # one block, and several
        exact = ul.als_top_n(users, items, s_user, s_item, 10)
        found = ul.als_top_n(users, items, s_user, s_item, 10, index, block_floats=block)
        for a, b in zip(found, exact, strict=True):
            np.testing.assert_array_equal(a, b)
    assert sorted(found[1][found[0] == 0]) == [len(items) - 3, len(items) - 2, len(items) - 1]


def test_a_partial_probe_finds_most_of_the_top_n_and_only_true_unseen_scores():
    rng = np.random.default_rng(4)
    users, items = clustered_factors(rng, 400, 3000)
    s_user, s_item = seen_pairs(rng, len(users), len(items), almost_all=5)
    index = ivf.build(items, 20, probe_fraction=0.125, seed=2, head_multiple=5)
    assert index.probe < index.clusters
    exact = ul.als_top_n(users, items, s_user, s_item, 20)
    rows, cols, scores = ul.als_top_n(users, items, s_user, s_item, 20, index)
    recall = ivf.recall((rows, cols, scores), exact)
    assert 0.9 <= recall <= 1.0
    assert not np.isin(rows * len(items) + cols, s_user * len(items) + s_item).any()
    np.testing.assert_allclose(scores, np.einsum("ij,ij->i", users[rows], items[cols]), rtol=1e-5)
    for u in range(len(users)):  # each user's list: 20 entries (3 for the user who saw all but 3), best first
        mine = scores[rows == u]
        assert len(mine) == (3 if u == 5 else 20)
        assert (np.diff(mine) <= 0).all()


def test_the_fewest_probes_reaching_the_target_are_chosen():
    rng = np.random.default_rng(7)
    users, items = clustered_factors(rng, 300, 3000)
    none = np.empty(0, np.int64)
    index = ivf.build(items, 20, probe_fraction=1.0, seed=2, head_multiple=2)
    exact = ul.als_top_n(users, items, none, none, 20)
    measured = {}

    def recall_of(candidate):
        measured[candidate.probe] = ivf.recall(ul.als_top_n(users, items, none, none, 20, candidate), exact)
        return measured[candidate.probe]

    recalls = [recall_of(dataclasses.replace(index, probe=p)) for p in range(1, index.clusters + 1)]
    assert recalls[0] < 0.99 < recalls[-1] == 1.0  # a weak head: one cluster is not enough
    assert all(a <= b for a, b in zip(recalls, recalls[1:], strict=False))  # never falls with the probe
    for target in (0.9, 0.99, 1.0):
        measured.clear()
        chosen = ivf.fewest_probes(index, recall_of, target)
        assert recalls[chosen.probe - 1] >= target
        assert chosen.probe == 1 or recalls[chosen.probe - 2] < target
        assert len(measured) <= int(np.ceil(np.log2(index.clusters))) + 1  # a bisection, not a scan
        assert (chosen.head is index.head) and (chosen.members is index.members)
    # Unreachable (recall is at most 1): every cluster.
    assert ivf.fewest_probes(index, recall_of, 1.5).probe == index.clusters
    # A catalogue that fits in the head has no clusters to choose from.
    small = ivf.build(items[:30], 20, 0.5, seed=0)
    assert small.clusters == 0 and ivf.fewest_probes(small, recall_of, 1.0) is small


def test_kmeans_assigns_each_point_its_nearest_centre():
    rng = np.random.default_rng(5)
    points = np.vstack([rng.normal(c, 0.1, size=(50, 2)) for c in (-5, 0, 5)]).astype(np.float32)
    centres, assigned = ivf.kmeans(points, 3, seed=0)
    d = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(assigned, d.argmin(axis=1))
    assert sorted(np.bincount(assigned)) == [50, 50, 50]


def test_a_catalogue_smaller_than_the_head_is_all_head():
    items = np.random.default_rng(6).normal(size=(15, 4)).astype(np.float32)
    index = ivf.build(items, 5, 0.5, seed=0)
    assert len(index.head) == 15 and index.clusters == 0
    users = np.ones((2, 4), np.float32)
    none = np.empty(0, np.int64)
    found = ul.als_top_n(users, items, none, none, 5, index)
    exact = ul.als_top_n(users, items, none, none, 5)
    for a, b in zip(found, exact, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_search_setting_is_checked_and_auto_switches_on_size():
    assert not ul.AlsSearch("auto", ivf_min_items=100).uses_index(99)
    assert ul.AlsSearch("auto", ivf_min_items=100).uses_index(100)
    assert ul.AlsSearch("ivf").uses_index(1) and not ul.AlsSearch("exact").uses_index(10**9)
    with pytest.raises(ConfigError, match="auto, exact or ivf"):
        ul.AlsSearch("annoy")
    with pytest.raises(ConfigError, match="ivf_probe_fraction"):
        ul.AlsSearch("ivf", probe_fraction=0.0)
    for target in (0.0, 1.5):
        with pytest.raises(ConfigError, match="ivf_recall_target"):
            ul.AlsSearch("ivf", recall_target=target)
    assert ul.AlsSearch("ivf", recall_target=1.0).recall_target == 1.0
