"""The content model's LSH at its configured settings: the plan's S-curve, the
signatures' bit agreement, the per-band candidate cap, recall against the exact
search on a catalogue with planted near-duplicates, and determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from amazon_recs.ingest.product_text import product_texts, product_words, word
from amazon_recs.models import content as m_content
from amazon_recs.models import lsh
from amazon_recs.models.content import ContentParams


def test_plan_takes_the_fewest_bands_that_meet_the_target():
    for items, similarity, recall in [
        (3_000, 0.8, 0.9),
        (100_000, 0.8, 0.9),
        (1_000_000, 0.85, 0.95),
        (50, 0.5, 0.8),
    ]:
        plan = lsh.plan(items, similarity, recall, window=32, rounds=3)
        assert plan.bits == max(4, math.ceil(math.log2(items / 32)))
        assert plan.s_curve(similarity) >= recall
        assert lsh.s_curve(similarity, plan.bits, plan.bands - 1) < recall
        # the S-curve: rising in the cosine, low for unrelated pairs
        curve = [plan.s_curve(c) for c in (0.0, 0.3, 0.5, 0.8, 0.95)]
        assert curve == sorted(curve) and curve[0] < (0.35 if items >= 3_000 else 0.5)


def test_signature_bits_agree_as_often_as_simhash_predicts():
    rng = np.random.default_rng(3)
    width, bits = 400, 64 * 32
    base = sp.random(1, width, density=0.1, random_state=4, format="csr")
    rows = [base]
    for mix in (0.2, 0.6, 1.5):  # the same vector plus more and more noise: falling cosines
        noise = sp.random(1, width, density=0.1, random_state=int(rng.integers(1 << 30)), format="csr")
        rows.append(base + mix * noise)
    x = sp.vstack(rows).tocsr()
    x = sp.diags(1 / np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())) @ x
    x = x.tocsr()
    x.sort_indices()
    sig = lsh.signatures(
        x.indptr.astype(np.int64), x.indices.astype(np.int32), x.data, 0, x.shape[0], bits // 64, 11
    )
    unpacked = np.unpackbits(sig.astype(">u8").view(np.uint8), axis=1)
    for j in range(1, x.shape[0]):
        cosine = float(x[0].multiply(x[j]).sum())
        agree = float((unpacked[0] == unpacked[j]).mean())
        # 2,048 bits: the standard error of the share is at most 0.011
        assert agree == pytest.approx(lsh.bit_agreement(cosine), abs=0.04), (cosine, agree)
    again = lsh.signatures(
        x.indptr.astype(np.int64), x.indices.astype(np.int32), x.data, 0, x.shape[0], bits // 64, 11
    )
    assert np.array_equal(sig, again)


def test_a_huge_bucket_gives_each_item_only_its_window_of_nearest_in_order():
    # 500 items of one identical signature (one bucket in every band) and 20 others.
    total, window = 520, 8
    plan = lsh.LshPlan(bits=6, bands=3, window=window, rounds=0)
    sig = np.zeros((total, plan.words), np.uint64)
    sig[500:] = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
    orders, positions, prefixes = lsh.band_tables(sig, plan)
    mark = np.full(total, -1, np.int64)
    cands = np.empty(plan.bands * window, np.int64)
    for q in (0, 3, 250, 499, 505):
        m = lsh.band_candidates(q, orders, positions, prefixes, window, mark, cands)
        got = set(cands[:m].tolist())
        assert q not in got
        assert len(got) == m <= window  # the same window in every band: no more than one window
        same_bucket = set(range(500)) if q < 500 else set(range(500, 520))
        assert got <= same_bucket
        # the items next to q in the band's order (stable sort: by row), window wide
        p = positions[0, q]
        lo = max(min(p - window // 2, (500 if q < 500 else 520) - window - 1), 0 if q < 500 else 500)
        assert got == {int(orders[0, i]) for i in range(lo, lo + window + 1)} - {q}


@pytest.fixture(scope="module")
def catalogue(spark):
    """3,000 generated product texts: families of near-duplicates inside topics, and
    the configured content settings (``ContentParams()`` is conf/base.yaml's, which
    tests/unit/pipeline/test_params.py holds it to)."""
    texts = product_texts(3_000, seed=5)
    items = spark.createDataFrame(list(enumerate(texts)), "item_idx int, text string")
    params = ContentParams()
    tokens = m_content.with_tokens(items)
    vectors = (
        m_content.fit_tfidf(tokens, params).transform(tokens).select("item_idx", m_content.VECTOR).cache()
    )
    yield params, vectors, m_content.collect_vectors(vectors)
    vectors.unpersist()


def test_lsh_at_the_configured_settings_finds_the_exact_neighbours(catalogue):
    params, vectors, collected = catalogue
    plan = params.lsh_plan(3_000)
    assert plan.window < 3_000 / 10  # the search is far from exhaustive
    got = m_content.lsh_neighbours(vectors, params, collected=collected).cache()
    rows = got.collect()
    assert len(rows) > 3_000 * params.neighbours * 0.9
    by_item: dict[int, list] = {}
    for r in rows:
        by_item.setdefault(r.item_idx, []).append(r)
    ids, matrix = collected
    position = {int(i): p for p, i in enumerate(ids)}
    for item, found in by_item.items():
        assert len(found) <= params.neighbours
        ranked = sorted(found, key=lambda r: r["rank"])
        assert [r["rank"] for r in ranked] == list(range(1, len(found) + 1))
        assert all(a.similarity >= b.similarity for a, b in zip(ranked, ranked[1:], strict=False))
        assert item not in {r.neighbour_idx for r in found}
        for r in ranked[:3]:  # exact cosines, not estimates
            exact = matrix[position[item]].multiply(matrix[position[r.neighbour_idx]]).sum()
            assert r.similarity == pytest.approx(exact, abs=1e-9)
            assert r.similarity >= params.min_similarity

    recall = m_content.sampled_recall(vectors, got, params, collected)
    assert recall >= 0.9
    everything = m_content.neighbour_recall(
        got,
        m_content.sparse_neighbours(vectors, params.min_similarity, params.neighbours, collected=collected),
    )
    assert everything >= 0.9
    # the refinement rounds are what lift the weak neighbours: the bands alone find far fewer
    bands_only = m_content.lsh_neighbours(vectors, replace(params, lsh_rounds=0), collected=collected)
    assert m_content.sampled_recall(vectors, bands_only, params, collected) < recall - 0.1
    got.unpersist()


def test_lsh_is_deterministic_given_the_seed(catalogue):
    params, vectors, collected = catalogue
    small = replace(params, lsh_rounds=0)

    def pairs(p):
        return sorted(
            (r.item_idx, r.neighbour_idx, r["rank"])
            for r in m_content.lsh_neighbours(vectors, p, collected=collected).collect()
        )

    first = pairs(small)
    assert first == pairs(small)
    assert first != pairs(replace(small, seed=small.seed + 1))


def test_generated_texts_plant_near_duplicate_families():
    items, indices = product_words(2_000, seed=3)
    assert np.all(np.diff(items) >= 0) and items.max() == 1_999
    texts = product_texts(2_000, seed=3)
    assert texts == product_texts(2_000, seed=3)
    assert len({word(i) for i in range(5_000)}) == 5_000
    # items 0.. are the first family's members: same words mostly
    first, second = set(texts[0].split()), set(texts[1].split())
    x = sp.csr_matrix((np.ones(len(items)), (items, indices)))
    x.data[:] = 1.0
    overlap = (x @ x.T).toarray()
    np.fill_diagonal(overlap, 0)
    share = overlap.max(1) / np.asarray(x.sum(1)).ravel()
    assert np.median(share) > 0.5  # most products have a near-duplicate
    assert first and second


def test_reverse_lists_keep_the_rows_ranking_each_row_highest():
    lists = np.array([[1, 2, -1], [2, 0, 3], [1, -1, -1], [2, 1, 0]], np.int32)
    counts = np.array([2, 3, 1, 3], np.int32)
    reverse, reverse_counts = lsh.reverse_lists(lists, counts, cap=2)
    # who lists 2: 0 (place 1), 1 (place 0), 3 (place 0) -> rank first, then row: 1, 3
    assert reverse[2].tolist() == [1, 3] and reverse_counts[2] == 2
    assert reverse[0].tolist() == [1, 3] and reverse_counts[0] == 2  # 1 at place 1, 3 at place 2
    assert reverse[3].tolist() == [1, -1] and reverse_counts[3] == 1
    assert sorted(reverse[1].tolist()) == [0, 2]  # 0, 2 and 3 at places 0, 0, 1: cap 2
    moved = lists[:, [1, 0, 2]].copy()
    moved[3, 2] = 3
    assert lsh.fresh_entries(lists, moved, counts).tolist() == [
        [False, False, False],
        [False, False, False],
        [False, False, False],
        [False, False, True],
    ]
