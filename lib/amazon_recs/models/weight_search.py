"""NDCG@k of every fusion weight vector, one user's candidates at a time, in numpy.

The hybrid fuses each user's min-max normalised model scores with weights
(``lists.blend``). Searching the weights used to cross-join every user's
candidates with every weight vector and rank the product in Spark; here a
user's candidates form a (candidates x models) matrix, and the fused scores of
every weight vector are that matrix times the (models x W) weights. Only a
validation item's rank matters for NDCG, so each hit is ranked against its
user's other candidates under every weight vector at once: the work per user
is bounded by that user's candidates and hits.

Everything is computed exactly as Spark computes it today, so the search picks
the same weights: the same double arithmetic in the same order (no BLAS, whose
fused multiply-adds round differently and would break exact ties), and ties
in fused score broken by item id ascending, as ``topk.top_k`` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from amazon_recs.models.jit import njit_cached


def discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ideal_dcg(relevant: np.ndarray, k: int) -> np.ndarray:
    """Each user's best possible DCG@k with ``relevant`` held-out items (1 for none,
    so a quotient is defined; such a user's NDCG is 0 by the caller's rule)."""
    return np.cumsum(discounts(k))[np.clip(relevant, 1, k) - 1]


def minmax_by_group(scores: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Rescale scores to [0, 1] within each group, as ``topk.minmax_per_user``.

    A group whose scores are all equal gets 1; a missing score (NaN) gets 0
    where its group has a range and 1 where it has none, as the Spark version
    followed by ``fillna(0.0)`` gives.
    """
    lo = np.full(n_groups, np.inf)
    hi = np.full(n_groups, -np.inf)
    np.fmin.at(lo, group, scores)
    np.fmax.at(hi, group, scores)
    lo, hi = lo[group], hi[group]
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(hi > lo, (scores - lo) / (hi - lo), 1.0)
    scaled[np.isnan(scaled)] = 0.0
    return scaled


def _flat(arrays: Sequence, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-user arrays (None for none) as (lengths, one concatenated array)."""
    lengths = np.fromiter((0 if a is None else len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    parts = [np.asarray(a, dtype=dtype) for a in arrays if a is not None and len(a)]
    return lengths, (np.concatenate(parts) if parts else np.empty(0, dtype=dtype))


def _pair_key(user: np.ndarray, item: np.ndarray) -> np.ndarray:
    return (user.astype(np.int64) << 32) | (item.astype(np.int64) & 0xFFFFFFFF)


def ndcg_sums(
    truth: Sequence,
    items: Sequence,
    scores: Sequence,
    models: Sequence,
    weights: np.ndarray,
    k: int,
    item_trust: np.ndarray | None = None,
) -> np.ndarray:
    """Sum over users of NDCG@k under each weight vector.

    Args:
        truth: per user, the distinct validation items (at least one).
        items, scores, models: per user, aligned arrays of every model's candidates
            (item, raw score, model index), or None without candidates; a model
            proposes an item at most once per user.
        weights: (models x W) fusion weights, non-negative.
        k: list length.
        item_trust: the hybrid's trust in ALS by item id (``lists.item_trust``; an id
            past its end has trust 0), or None for none. With it, the models are
            ``lists.COMPONENTS`` (als first, content second) and each item's weights are
            ``lists.trust_weights`` where content proposes it to the user (ALS keeps
            its weight elsewhere), in the same arithmetic as ``user_lists``.

    Returns:
        (W,) sums of per-user NDCG@k; users without a hit add 0.
    """
    n_models, n_points = weights.shape
    sums = np.zeros(n_points)
    n_users = len(truth)
    lengths, item = _flat(items, np.int64)
    if not len(item):
        return sums
    user = np.repeat(np.arange(n_users), lengths)
    score = _flat(scores, np.float64)[1]
    model = _flat(models, np.int64)[1]
    norm = minmax_by_group(score, user * n_models + model, n_users * n_models)

    # One row per (user, item), items ascending within a user: the tie order.
    order = np.lexsort((item, user))
    user, item, model, norm = user[order], item[order], model[order], norm[order]
    starts_pair = np.r_[True, (user[1:] != user[:-1]) | (item[1:] != item[:-1])]
    pair = np.cumsum(starts_pair) - 1
    matrix = np.zeros((pair[-1] + 1, n_models))  # a model that did not propose an item: 0
    matrix[pair, model] = norm
    pair_user, pair_item = user[starts_pair], item[starts_pair]
    if item_trust is not None:
        known = pair_item < len(item_trust)
        pair_trust = np.where(known, item_trust[np.where(known, pair_item, 0)], 0.0)
        # ALS keeps its weight on an item content does not propose to the user (models[1]).
        by_content = np.zeros(len(pair_user), bool)
        by_content[pair[model == 1]] = True
        pair_trust = np.where(by_content, pair_trust, 1.0)

    truth_lengths, truth_items = _flat(truth, np.int64)
    truth_users = np.repeat(np.arange(n_users), truth_lengths)
    hits = np.flatnonzero(np.isin(_pair_key(pair_user, pair_item), _pair_key(truth_users, truth_items)))
    if not len(hits):
        return sums
    gains = np.zeros(k + 2)
    gains[1 : k + 1] = discounts(k)  # gains[rank]; rank k + 1 stands for "not in the top k"
    ideal = ideal_dcg(truth_lengths, k)
    per_user = np.bincount(pair_user, minlength=n_users)
    first = np.cumsum(per_user) - per_user
    hit_user = pair_user[hits]
    if item_trust is None:
        pair_trust = np.ones(len(pair_user))
    _hit_ranks_into(
        sums,
        np.ascontiguousarray(matrix),
        np.ascontiguousarray(pair_trust, np.float64),
        first[hit_user],
        per_user[hit_user],
        hits,
        ideal[hit_user],
        np.ascontiguousarray(weights, np.float64),
        gains,
        k,
        item_trust is not None,
    )
    return sums


@njit_cached()
def _hit_ranks_into(sums, matrix, trust, starts, counts, hits, ideal, weights, gains, k, trusted):
    """Each hit's rank among its user's candidates under every weight vector, its gain
    added to ``sums``. A user's candidates are ``matrix[start:start + count]`` (their
    normalised model scores, items ascending); the fused score is summed model by model
    in Spark's order (bit-identical scores, identical ties: an equal score ranks ahead
    when its item is smaller). Counting stops once k candidates are ahead: the hit is
    then out of the top k, whatever else follows."""
    n_models, n_points = weights.shape
    for h in range(len(hits)):
        start, count, own_at = starts[h], counts[h], hits[h]
        for w in range(n_points):
            own = _fused(matrix, trust, own_at, weights, w, n_models, trusted)
            ahead = 0
            for j in range(start, start + count):
                if j == own_at:
                    continue
                fused = _fused(matrix, trust, j, weights, w, n_models, trusted)
                if fused > own or (fused == own and j < own_at):
                    ahead += 1
                    if ahead >= k:
                        break
            if ahead < k:
                sums[w] += gains[ahead + 1] / ideal[h]


@njit_cached()
def _fused(matrix, trust, row, weights, w, n_models, trusted):
    if trusted:
        t = trust[row]
        fused = matrix[row, 0] * (weights[0, w] * t)
        fused += matrix[row, 1] * (weights[1, w] + weights[0, w] * (1 - t))
        for m in range(2, n_models):
            fused += matrix[row, m] * (weights[m, w] + 0 * t)
        return fused
    fused = matrix[row, 0] * weights[0, w]
    for m in range(1, n_models):
        fused += matrix[row, m] * weights[m, w]
    return fused


def partition_sums(
    batches: Iterator[pd.DataFrame],
    weights: np.ndarray,
    k: int,
    col_truth: str,
    col_items: str,
    col_scores: str,
    col_models: str,
    item_trust: np.ndarray | None = None,
) -> Iterator[pd.DataFrame]:
    """For ``mapInPandas``: one row per partition with the NDCG@k sums per weight
    vector (``ndcg_sum``) and the number of users (``users``)."""
    sums, users = np.zeros(weights.shape[1]), 0
    for batch in batches:
        sums += ndcg_sums(
            batch[col_truth].tolist(),
            batch[col_items].tolist(),
            batch[col_scores].tolist(),
            batch[col_models].tolist(),
            weights,
            k,
            item_trust,
        )
        users += len(batch)
    yield pd.DataFrame({"ndcg_sum": [sums.tolist()], "users": [users]})
