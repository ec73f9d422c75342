"""Sign-random-projection LSH (SimHash) for cosine neighbours, with a capped window per
band and refinement through the neighbour graph; the kernels run inside Spark tasks.

How one item's neighbours are found (``content.method: lsh``):

1. **Signatures.** Every item gets ``bands * bits`` sign bits: bit j is the sign of
   the item's TF-IDF vector projected on a random direction. Two items whose
   cosine is c agree on a bit with probability p(c) = 1 - arccos(c) / pi.
2. **Bands (AND inside, OR across).** Band b is ``bits`` consecutive bits; items
   whose band agrees fall in one bucket. A pair meets in a band with probability
   p^bits and in some band with 1 - (1 - p^bits)^bands: the S-curve
   (``s_curve``). ``plan`` takes ``bits`` from the catalogue size (a random pair's
   bucket holds about ``window`` items) and ``bands`` from the target cosine and
   recall. With refinement on, this stage only has to find each item's closest
   neighbours; the graph step below walks from them to the rest.
3. **Capped buckets.** Inside a band the items are sorted by their signature
   starting at that band's bits (so a bucket is a run of equal prefixes, and the
   order inside it follows the bits after the band). An item takes at most
   ``window`` candidates from one band: the items nearest to it in that order,
   inside its bucket. A huge bucket (many near-identical texts, or text-poor
   items) therefore costs ``window`` per item, not its size, and the items it
   gives are the ones agreeing on the most further bits.
4. **Exact re-rank.** Candidates are deduplicated and scored by the exact cosine
   of their TF-IDF vectors; each item keeps its ``n`` best at or above the
   similarity floor (similarity descending, then item id).
5. **Refinement.** Up to ``rounds`` times, each item's candidates become its
   current neighbours, the items that list it, and the neighbours of both (at
   most about 2n + 2n^2), re-ranked exactly. A neighbour's neighbour is likely a
   neighbour (NN-descent's observation), and this finds the weaker neighbours
   (cosine 0.2-0.4) that no affordable number of bands catches. Only pairs
   reached through an entry new since the last round are scored (the others
   were scored then), and the rounds stop once one brings fewer than 1% new
   entries.

Every random choice comes from ``seed``: the same vectors give the same neighbours.
The projection directions are not stored: entry (term, bit) is +1 or -1 by a hash
of (seed, term, bit), so any task computes any item's signature without a
vocabulary-sized matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amazon_recs.models.jit import njit_cached

WORD_BITS = 64


@dataclass(frozen=True)
class LshPlan:
    """How many bits per band, bands, candidates per band and refinement rounds."""

    bits: int
    bands: int
    window: int
    rounds: int

    @property
    def words(self) -> int:
        """uint64 words of one signature."""
        return -(-self.bits * self.bands // WORD_BITS)

    def s_curve(self, cosine: float) -> float:
        """Probability that a pair at this cosine shares a bucket in some band."""
        return s_curve(cosine, self.bits, self.bands)


def bit_agreement(cosine: float) -> float:
    """P(one sign bit agrees) for two vectors at this cosine (Charikar's SimHash)."""
    return 1.0 - math.acos(max(-1.0, min(1.0, cosine))) / math.pi


def s_curve(cosine: float, bits: int, bands: int) -> float:
    """1 - (1 - p^bits)^bands: the chance that a pair at ``cosine`` meets in some band."""
    return 1.0 - (1.0 - bit_agreement(cosine) ** bits) ** bands


def plan(
    items: int,
    similarity: float,
    recall: float,
    window: int,
    rounds: int,
    max_bits: int = 24,
    max_bands: int = 128,
) -> LshPlan:
    """Bits per band so that a random pair's bucket (half the bits agree) holds about
    ``window`` items, then the fewest bands with which a pair at cosine
    ``similarity`` meets in some band with ``recall``.

    The bits grow with the catalogue even though a bucket larger than the window
    is cut by its order anyway: that order follows further bits, so the window
    is an AND of about log2(items / window) bits whatever the band's own width,
    and the S-curve (and the bands it asks for) must be computed with it.
    """
    bits = int(min(max_bits, max(4, math.ceil(math.log2(max(2, items) / max(1, window))))))
    p = bit_agreement(similarity) ** bits
    if p >= 1.0:
        bands = 1
    else:
        bands = math.ceil(math.log(1.0 - recall) / math.log(1.0 - p)) if p > 0 else max_bands
    return LshPlan(bits=bits, bands=int(min(max_bands, max(1, bands))), window=window, rounds=rounds)


# --- kernels (numba: a per-pair sparse dot is a few nanoseconds a term here, ~50 in numpy) ----


@njit_cached(inline="always")
def _mix(z: np.uint64) -> np.uint64:
    """splitmix64's finaliser: a well-spread 64-bit hash of z."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit_cached()
def signatures(indptr, indices, data, start, stop, words, seed):
    """Sign bits of rows ``start .. stop-1`` of a CSR matrix, ``words`` uint64 each.

    Bit k of word w is the sign of the row's dot product with the direction whose
    entry for term t is +1 or -1 by bit k of hash(seed, t, w).
    """
    out = np.zeros((stop - start, words), np.uint64)
    acc = np.zeros(WORD_BITS, np.float64)
    base = _mix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
    for r in range(start, stop):
        for w in range(words):
            acc[:] = 0.0
            for e in range(indptr[r], indptr[r + 1]):
                h = _mix(base ^ (np.uint64(indices[e]) * np.uint64(1_000_003) + np.uint64(w)))
                v = data[e]
                for k in range(WORD_BITS):
                    if (h >> np.uint64(k)) & np.uint64(1):
                        acc[k] += v
                    else:
                        acc[k] -= v
            word = np.uint64(0)
            for k in range(WORD_BITS):
                if acc[k] > 0.0:
                    word |= np.uint64(1) << np.uint64(WORD_BITS - 1 - k)
            out[r - start, w] = word
    return out


@njit_cached()
def band_key(sig, band, bits, words):
    """Per row, the 64 signature bits starting at bit band*bits (wrapping round): the
    band's own bits first, then the ones after it, which order a bucket inside."""
    total = words * WORD_BITS
    out = np.zeros(sig.shape[0], np.uint64)
    first = band * bits
    for r in range(sig.shape[0]):
        key = np.uint64(0)
        for k in range(WORD_BITS):
            b = (first + k) % total
            bit = (sig[r, b // WORD_BITS] >> np.uint64(WORD_BITS - 1 - b % WORD_BITS)) & np.uint64(1)
            key = (key << np.uint64(1)) | bit
        out[r] = key
    return out


@njit_cached()
def _score_and_keep(q, cands, m, dense, indptr, indices, data, n, min_similarity, best_c, best_s):
    """Exact cosines of q with cands[:m] (``dense`` holds q's vector) into the sorted top n;
    returns how many were kept."""
    kept = 0
    for i in range(m):
        c = cands[i]
        s = 0.0
        for e in range(indptr[c], indptr[c + 1]):
            s += dense[indices[e]] * data[e]
        if s < min_similarity:
            continue
        # insertion into best (similarity descending, then item ascending)
        if kept == n and (s < best_s[n - 1] or (s == best_s[n - 1] and c > best_c[n - 1])):
            continue
        j = kept if kept < n else n - 1
        while j > 0 and (best_s[j - 1] < s or (best_s[j - 1] == s and best_c[j - 1] > c)):
            best_s[j] = best_s[j - 1]
            best_c[j] = best_c[j - 1]
            j -= 1
        best_s[j] = s
        best_c[j] = c
        if kept < n:
            kept += 1
    return kept


@njit_cached()
def _buffers(queries, width, n):
    """Output rows (query, neighbour, similarity, rank) for ``queries`` rows of at most
    ``n`` each, and the scratch of ``_rank``: a dense row and the running top n."""
    size = queries * n
    out = (
        np.empty(size, np.int64),
        np.empty(size, np.int64),
        np.empty(size, np.float64),
        np.empty(size, np.int32),
    )
    work = (np.zeros(width, np.float64), np.empty(n, np.int64), np.empty(n, np.float64))
    return out, work


@njit_cached()
def _rank(q, cands, m, indptr, indices, data, n, min_similarity, work, out, at):
    """Score q against cands[:m] by exact cosine and append its top n to ``out`` at ``at``."""
    dense, best_c, best_s = work
    rows, cols, sims, ranks = out
    for e in range(indptr[q], indptr[q + 1]):
        dense[indices[e]] = data[e]
    kept = _score_and_keep(q, cands, m, dense, indptr, indices, data, n, min_similarity, best_c, best_s)
    for e in range(indptr[q], indptr[q + 1]):
        dense[indices[e]] = 0.0
    for j in range(kept):
        rows[at], cols[at], sims[at], ranks[at] = q, best_c[j], best_s[j], j + 1
        at += 1
    return at


@njit_cached()
def band_candidates(q, orders, positions, prefixes, window, mark, cands):
    """Row q's candidates from every band into ``cands``, each once (``mark[c] == q``
    once taken); returns how many. From one band: at most ``window`` rows of q's
    bucket, the nearest to q in the band's order (more on the side with room)."""
    total = orders.shape[1]
    m = 0
    mark[q] = q
    for b in range(orders.shape[0]):
        p = positions[b, q]
        key = prefixes[b, p]
        lo, hi = p, p + 1
        while hi - lo - 1 < window:
            grew = False
            if lo > 0 and prefixes[b, lo - 1] == key:
                lo -= 1
                grew = True
            if hi - lo - 1 < window and hi < total and prefixes[b, hi] == key:
                hi += 1
                grew = True
            if not grew:
                break
        for i in range(lo, hi):
            c = orders[b, i]
            if mark[c] != q:
                mark[c] = q
                cands[m] = c
                m += 1
    return m


@njit_cached()
def band_neighbours(
    queries, orders, positions, prefixes, window, indptr, indices, data, width, n, min_similarity
):
    """Each query row's ``n`` best candidates from the bands (see the module text).

    ``orders[b]`` lists the rows sorted by band b's key, ``positions[b]`` is its
    inverse and ``prefixes[b]`` the band's own bits in that order.
    Returns (rows, neighbours, similarities, ranks).
    """
    out, work = _buffers(len(queries), width, n)
    mark = np.full(orders.shape[1], -1, np.int64)
    cands = np.empty(orders.shape[0] * window, np.int64)
    at = 0
    for q in queries:
        m = band_candidates(q, orders, positions, prefixes, window, mark, cands)
        at = _rank(q, cands, m, indptr, indices, data, n, min_similarity, work, out, at)
    return out[0][:at], out[1][:at], out[2][:at], out[3][:at]


@njit_cached()
def graph_neighbours(queries, graph, indptr, indices, data, width, n, min_similarity):
    """One refinement round: each query row's ``n`` best, by exact cosine, among its
    current neighbours, the rows that list it (reverse neighbours), and the
    neighbours of both.

    ``graph`` is (lists, counts, fresh, reverse, reverse_counts): row i's
    neighbours are ``lists[i, :counts[i]]`` (-1 padded), ``fresh`` marks the
    entries new since the last round, and ``reverse`` lists the rows listing i.
    Only pairs through a fresh entry are scored (NN-descent's incremental
    search): a pair reached through two old entries was scored a round before.
    """
    lists, counts, fresh, reverse, reverse_counts = graph
    total, k = lists.shape
    out, work = _buffers(len(queries), width, n)
    mark = np.full(total, -1, np.int64)
    cands = np.empty((k + reverse.shape[1]) * (k + 1), np.int64)
    at = 0
    for q in queries:
        m = 0
        mark[q] = q
        for side in range(2):
            near, count = (lists, counts) if side == 0 else (reverse, reverse_counts)
            for i in range(count[q]):
                a = near[q, i]
                if mark[a] != q:
                    mark[a] = q
                    cands[m] = a
                    m += 1
                if side == 0:
                    new_link = fresh[q, i]
                else:  # q is in a's list: is that entry new?
                    new_link = False
                    for j in range(counts[a]):
                        if lists[a, j] == q:
                            new_link = fresh[a, j]
                            break
                for j in range(counts[a]):
                    c = lists[a, j]
                    if (new_link or fresh[a, j]) and mark[c] != q:
                        mark[c] = q
                        cands[m] = c
                        m += 1
        at = _rank(q, cands, m, indptr, indices, data, n, min_similarity, work, out, at)
    return out[0][:at], out[1][:at], out[2][:at], out[3][:at]


@njit_cached()
def fresh_entries(before, after, after_counts):
    """Which entries of ``after`` were not in the same row of ``before``."""
    total, k = after.shape
    out = np.zeros((total, k), np.bool_)
    for r in range(total):
        for j in range(after_counts[r]):
            c = after[r, j]
            new = True
            for i in range(before.shape[1]):
                if before[r, i] == c:
                    new = False
                    break
            out[r, j] = new
    return out


def reverse_lists(lists: np.ndarray, counts: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row, up to ``cap`` rows that list it, those ranking it highest first."""
    total, k = lists.shape
    rank = np.broadcast_to(np.arange(k, dtype=np.int32), lists.shape)
    valid = rank < counts[:, None]
    target, source, place = lists[valid], np.nonzero(valid)[0].astype(np.int32), rank[valid]
    order = np.lexsort((source, place, target))
    target, source = target[order], source[order]
    starts = np.searchsorted(target, np.arange(total))
    within = np.arange(len(target)) - starts[target]
    keep = within < cap
    out = np.full((total, cap), -1, np.int32)
    out[target[keep], within[keep]] = source[keep]
    return out, np.minimum(np.bincount(target, minlength=total), cap).astype(np.int32)


def band_tables(sig: np.ndarray, lsh: LshPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per band: rows sorted by the band's key, each row's place in that order, and the
    band's own bits (the bucket) in that order. 12 bytes per row and band."""
    total = sig.shape[0]
    orders = np.empty((lsh.bands, total), np.int32)
    positions = np.empty((lsh.bands, total), np.int32)
    prefixes = np.empty((lsh.bands, total), np.uint32)
    shift = np.uint64(WORD_BITS - lsh.bits)
    for b in range(lsh.bands):
        key = band_key(sig, b, lsh.bits, lsh.words)
        order = np.argsort(key, kind="stable")
        orders[b] = order
        positions[b, order] = np.arange(total, dtype=np.int32)
        prefixes[b] = (key[order] >> shift).astype(np.uint32)
    return orders, positions, prefixes
