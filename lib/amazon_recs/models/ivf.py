"""Every user's top-n items by ALS score without scoring the whole catalogue: an
inverted file (IVF) over the item factors, for catalogues where the exact product
costs more than the rest of the run (``recommend.als_search: ivf``).

The exact search scores users x items: 2M users x 500k items is 1e12 dot products,
about an hour on two cores. The index cuts that to a few percent of the items per
user, found like this:

1. **A head, always scored.** The ``head`` items with the largest factor norms
   (the ones that lead most users' lists) are scored densely for every user, seen
   items masked. A user's n-th best unseen head score is a floor ``tau``: the
   user's true n-th best unseen score is at least that high, so any item below it
   can be dropped as soon as it is scored.
2. **Clusters, a few probed.** The other items are clustered by k-means after the
   usual reduction of inner-product search to nearest neighbours (each item
   vector v gets the extra coordinate sqrt(M^2 - |v|^2), M the largest norm; a
   user x gets 0 there, so x.v orders like the distance of x/|x| to v). A user
   scores only the ``probe`` clusters whose centres are nearest in that sense,
   and keeps the scores at or above ``tau``: a few times n entries per user.
3. **Exact merge.** Head and cluster entries are merged; seen items are dropped
   and the ``n`` best kept by score, then item position (the exact search's order).
   A user left with fewer than ``n`` while more items are unseen (one who has seen
   most of what was probed) is searched exactly.

What is approximate is only step 2's choice of clusters: an item of the user's
true top-n can sit in a cluster that was not probed. ``recall`` measures that on
sampled users against the exact search, and ``fewest_probes`` chooses the probe
from it: the fewest clusters whose recall on a sample reaches a target. How many
that takes depends on the factors, not only on the catalogue's size: on the
generated 10M shop (696 clusters) the head alone finds 0.9997 of the top 100, and
probing a sixteenth of the clusters costs 2.4x the scoring of probing one.

Cost per user: rank x (head + probed items) multiply-adds plus the entries kept;
per batch, one matrix product per cluster (the batch's users probing it x its items).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from amazon_recs.models.topk import best_per_row

# k-means is fitted on at most this many items (the rest are only assigned), for
# this many Lloyd iterations; the distances are computed this many items at a time.
KMEANS_SAMPLE = 100_000
KMEANS_ITERATIONS = 10
CHUNK = 16_384


@dataclass(frozen=True)
class ItemIndex:
    """The item factors' inverted file. Items are named by their row in the factor matrix."""

    head: np.ndarray  # int64: rows scored for every user
    centres: np.ndarray  # float32, clusters x rank: the centres' first rank coordinates
    offsets: np.ndarray  # float32 per cluster: |centre|^2 / 2 (probe order is x^.c - |c|^2/2)
    ptr: np.ndarray  # int64, clusters + 1: CSR bounds of each cluster in ``members``
    members: np.ndarray  # int64: rows of the non-head items, grouped by cluster
    probe: int  # clusters each user scores

    @property
    def clusters(self) -> int:
        return len(self.centres)


def build(
    factors: np.ndarray, n: int, probe_fraction: float, seed: int, head_multiple: int = 20
) -> ItemIndex:
    """The index of ``factors`` (items x rank) for top-``n`` searches.

    Sizes, from the catalogue: a head of ``head_multiple`` x n items (a user's floor
    is then the n-th of 20n strong items: on the 1M shop it keeps about n cluster
    scores per user), about sqrt(items) clusters of the rest (k-means' cost and a
    cluster's size then both grow as sqrt(items)), of which ``probe_fraction`` (at
    least one) are probed.
    """
    factors = np.asarray(factors, np.float32)
    n_items = len(factors)
    norms = np.linalg.norm(factors, axis=1)
    by_norm = np.lexsort((np.arange(n_items), -norms))
    head = np.sort(by_norm[: min(n_items, head_multiple * n)])
    rest = np.sort(by_norm[len(head) :])
    if not len(rest):
        empty = np.zeros((0, factors.shape[1]), np.float32)
        return ItemIndex(head, empty, np.zeros(0, np.float32), np.zeros(1, np.int64), rest, 0)
    top = float(norms.max())
    lifted = np.hstack([factors[rest], np.sqrt(np.maximum(top * top - norms[rest] ** 2, 0.0))[:, None]])
    clusters = max(1, min(len(rest), round(math.sqrt(len(rest)))))
    centres, assigned = kmeans(lifted.astype(np.float32), clusters, seed)
    keep = np.bincount(assigned, minlength=len(centres)) > 0  # drop clusters left empty
    renumber = np.cumsum(keep) - 1
    centres, assigned = centres[keep], renumber[assigned]
    order = np.argsort(assigned, kind="stable")
    ptr = np.zeros(len(centres) + 1, np.int64)
    np.cumsum(np.bincount(assigned, minlength=len(centres)), out=ptr[1:])
    return ItemIndex(
        head=head,
        centres=np.ascontiguousarray(centres[:, :-1]),
        offsets=((centres**2).sum(axis=1) / 2).astype(np.float32),
        ptr=ptr,
        members=rest[order],
        probe=max(1, min(len(centres), math.ceil(probe_fraction * len(centres)))),
    )


def fewest_probes(index: ItemIndex, recall_of: Callable[[ItemIndex], float], target: float) -> ItemIndex:
    """``index`` probing the fewest clusters for which ``recall_of`` (the recall on a
    sample of users) reaches ``target``; every cluster when no fewer do.

    Recall cannot fall when one more cluster is probed: the users' floors come from
    the head alone, so a larger probe only scores more items, and an item of the
    exact top-n that was found stays among the n best found. So a bisection over
    1..clusters finds the fewest in about log2(clusters) measurements.
    """
    if not index.clusters:
        return index
    lo, hi = 1, index.clusters
    while lo < hi:
        mid = (lo + hi) // 2
        if recall_of(dataclasses.replace(index, probe=mid)) >= target:
            hi = mid
        else:
            lo = mid + 1
    return dataclasses.replace(index, probe=lo)


def kmeans(points: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means, fitted on a seeded sample, then every point assigned.

    Returns:
        (centres, assignment): clusters x dims, and each point's centre.
    """
    rng = np.random.default_rng(seed)
    sample = points[np.sort(rng.choice(len(points), min(len(points), KMEANS_SAMPLE), replace=False))]
    centres = sample[np.sort(rng.choice(len(sample), clusters, replace=False))].copy()
    for _ in range(KMEANS_ITERATIONS):
        assigned = nearest(sample, centres)
        counts = np.bincount(assigned, minlength=clusters)
        sums = np.zeros_like(centres, dtype=np.float64)
        np.add.at(sums, assigned, sample)
        filled = counts > 0  # an empty cluster keeps its centre
        centres[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    return centres, nearest(points, centres)


def nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each point's nearest centre (Euclidean), ``CHUNK`` points at a time."""
    half_norms = (centres.astype(np.float64) ** 2).sum(axis=1) / 2
    out = np.empty(len(points), np.int64)
    for lo in range(0, len(points), CHUNK):
        out[lo : lo + CHUNK] = np.argmax(points[lo : lo + CHUNK] @ centres.T - half_norms, axis=1)
    return out


def top_n(
    users: np.ndarray,
    factors: np.ndarray,
    index: ItemIndex,
    seen_user: np.ndarray,
    seen_item: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's ``n`` best unseen items, searched through ``index``.

    Args:
        users: user factors, users x rank (float32).
        factors: the item factors the index was built on.
        seen_user, seen_item: the seen pairs (row of ``users``, row of ``factors``),
            sorted by user.
        n: items per user.

    Returns:
        (user, item, score) flat, by user then rank: score descending, then item.
    """
    n_users = len(users)
    seen_key = np.unique(seen_user * len(factors) + seen_item)
    # 1. The head, dense: each user's floor (the n-th best unseen head score; -inf
    # when the head holds fewer than n unseen items) and the head scores reaching it.
    head_scores = users @ factors[index.head].T
    head_pos = np.searchsorted(index.head, seen_item)
    in_head = (head_pos < len(index.head)) & (
        index.head[np.minimum(head_pos, len(index.head) - 1)] == seen_item
    )
    head_scores[seen_user[in_head], head_pos[in_head]] = -np.inf
    width = head_scores.shape[1]
    floor = np.full(n_users, -np.inf, np.float32)
    if 0 < n <= width:
        floor = np.partition(head_scores, width - n, axis=1)[:, width - n]
    r, j = np.nonzero((head_scores >= floor[:, None]) & (head_scores > -np.inf))
    parts = [(r, index.head[j], head_scores[r, j])]
    # 2. The probed clusters, each one matrix product over the users probing it.
    if index.clusters:
        parts += _probed(users, factors, index, floor)
    rows, items, scores = (np.concatenate(p) for p in zip(*parts, strict=True))
    unseen = ~np.isin(rows * len(factors) + items, seen_key)
    rows, items, scores = rows[unseen], items[unseen], scores[unseen]
    # 3. The exact order over everything kept.
    best, _ = best_per_row(rows, scores, n, items)
    rows, items, scores = rows[best], items[best], scores[best]
    # 4. A user left with fewer than n though more are unseen (one who has seen most of
    # what was probed) is searched exactly: rare, and bounded by such users' count.
    unseen_items = len(factors) - np.bincount(seen_key // len(factors), minlength=n_users)
    short = np.flatnonzero(np.bincount(rows, minlength=n_users) < np.minimum(n, unseen_items))
    if len(short):
        rows, items, scores = _exact_for(short, users, factors, seen_key, n, (rows, items, scores))
    return rows, items, scores


def _exact_for(short, users, factors, seen_key, n, found):
    """``found`` with the lists of the users ``short`` replaced by an exact search."""
    scores = users[short] @ factors.T
    seen_user, seen_item = seen_key // len(factors), seen_key % len(factors)
    mine = np.isin(seen_user, short)
    scores[np.searchsorted(short, seen_user[mine]), seen_item[mine]] = -np.inf
    r, j = np.nonzero(scores > -np.inf)
    best, _ = best_per_row(r, scores[r, j], n, j)
    rows, items, values = found
    keep = ~np.isin(rows, short)
    merged = (
        np.r_[rows[keep], short[r[best]]],
        np.r_[items[keep], j[best]],
        np.r_[values[keep], scores[r[best], j[best]]],
    )
    order = np.argsort(merged[0], kind="stable")
    return tuple(a[order] for a in merged)


def _probed(users, factors, index: ItemIndex, floor) -> list[tuple]:
    """(user, item, score) of every probed-cluster score at or above the user's floor."""
    norms = np.linalg.norm(users, axis=1, keepdims=True)
    unit = users / np.where(norms > 0, norms, 1.0)
    closeness = unit @ index.centres.T - index.offsets
    probed = np.argpartition(-closeness, index.probe - 1, axis=1)[:, : index.probe]
    pair_user = np.repeat(np.arange(len(users)), index.probe)
    pair_cluster = probed.ravel()
    order = np.argsort(pair_cluster, kind="stable")
    pair_user, pair_cluster = pair_user[order], pair_cluster[order]
    bounds = np.searchsorted(pair_cluster, np.arange(index.clusters + 1))
    parts = []
    for c in np.flatnonzero(np.diff(bounds)):
        who = pair_user[bounds[c] : bounds[c + 1]]
        items = index.members[index.ptr[c] : index.ptr[c + 1]]
        scores = users[who] @ factors[items].T
        r, j = np.nonzero(scores >= floor[who, None])
        parts.append((who[r], items[j], scores[r, j]))
    return parts


def recall(found: tuple, exact: tuple) -> float:
    """The share of ``exact``'s (user, item) pairs that ``found`` has too (1.0 when empty)."""
    (f_rows, f_items), (e_rows, e_items) = found[:2], exact[:2]
    if not len(e_rows):
        return 1.0
    width = int(max(f_items.max(initial=0), e_items.max(initial=0))) + 1
    return float(np.isin(e_rows * width + e_items, f_rows * width + f_items).mean())
