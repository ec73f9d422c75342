"""Unit tests for amazon_recs.models.topk and amazon_recs.models.lists on small inline frames."""

from __future__ import annotations

import numpy as np
import pytest
from chispa import assert_approx_df_equality, assert_df_equality

from amazon_recs.models import lists as rc
from amazon_recs.models import topk

SCORED = "user_idx int, item_idx int, score double"
CANDIDATES = "user_idx int, item_idx int, score double, because_idx int, source string"


def assert_same(df, expected):
    assert_df_equality(df, expected, ignore_row_order=True, ignore_nullable=True)


# --- topk ------------------------------------------------------------------------


def test_top_k_ranks_with_item_tie_break(spark):
    scored = spark.createDataFrame(
        [
            (1, 5, 0.9),
            (1, 7, 0.5),
            (1, 3, 0.5),
            (1, 2, 0.5),
            (1, 9, 0.1),
            (2, 4, 0.2),
            (3, 8, 1.0),
            (3, 6, 1.0),
        ],
        SCORED,
    )
    expected = spark.createDataFrame(
        [(1, 5, 0.9, 1), (1, 2, 0.5, 2), (1, 3, 0.5, 3), (2, 4, 0.2, 1), (3, 6, 1.0, 1), (3, 8, 1.0, 2)],
        SCORED + ", rank int",
    )
    assert_same(topk.top_k(scored, 3), expected)


def test_top_k_groups_by_several_columns(spark):
    scored = spark.createDataFrame(
        [(1, 10, 100, 0.3), (1, 10, 101, 0.7), (1, 11, 100, 0.2), (2, 10, 102, 0.1)],
        "user_idx int, item_idx int, because_idx int, agree double",
    )
    best = topk.top_k(scored, 1, col_user=["user_idx", "item_idx"], col_item="because_idx", col_score="agree")
    assert sorted((r.user_idx, r.item_idx, r.because_idx, r["rank"]) for r in best.collect()) == [
        (1, 10, 101, 1),
        (1, 11, 100, 1),
        (2, 10, 102, 1),
    ]


def test_filter_seen(spark):
    candidates = spark.createDataFrame(
        [(1, 1, 0.5), (1, 2, 0.4), (2, 1, 0.3), (2, 3, 0.2), (3, 3, 0.1)], SCORED
    )
    # Extra columns and duplicate rows in seen must not matter.
    seen = spark.createDataFrame(
        [(1, 2, 5.0), (2, 3, 1.0), (2, 3, 4.0), (4, 1, 3.0)], "user_idx int, item_idx int, weight double"
    )
    expected = spark.createDataFrame([(1, 1, 0.5), (2, 1, 0.3), (3, 3, 0.1)], SCORED)
    assert_same(topk.filter_seen(candidates, seen), expected)


def test_minmax_per_user(spark):
    scored = spark.createDataFrame(
        [(1, 1, 2.0), (1, 2, 4.0), (1, 3, 6.0), (2, 1, 3.0), (2, 2, 3.0)]
        + [(3, 5, -7.0), (4, 1, -1.0), (4, 2, 1.0)],
        SCORED,
    )
    expected = spark.createDataFrame(
        [(1, 1, 0.0), (1, 2, 0.5), (1, 3, 1.0), (2, 1, 1.0), (2, 2, 1.0)]
        + [(3, 5, 1.0), (4, 1, 0.0), (4, 2, 1.0)],
        SCORED,
    )
    assert_approx_df_equality(
        topk.minmax_per_user(scored), expected, 1e-12, ignore_row_order=True, ignore_nullable=True
    )


# --- fill_to_k -----------------------------------------------------------------------


def test_fill_to_k_tops_up_from_fallback(spark):
    primary = spark.createDataFrame(
        [
            # User 1 is short (2 of 3); item 11 is also in the fallback.
            (1, 10, 0.9, 100, "content"),
            (1, 11, 0.5, 101, "content"),
            # User 3 has more than k: only the best 3 stay, none from fallback.
            (3, 20, 0.1, None, "content"),
            (3, 21, 0.4, None, "content"),
            (3, 22, 0.3, None, "content"),
            (3, 23, 0.2, None, "content"),
        ],
        CANDIDATES,
    )
    # The fallback's own order (by its score) is 12, 14, 13, 11 for every user.
    fallback = spark.createDataFrame(
        [
            (u, item, s, None, "popular")
            for u in (1, 2, 3)
            for item, s in [(11, 0.9), (12, 0.8), (13, 0.6), (14, 0.7)]
        ],
        CANDIDATES,
    )
    expected = spark.createDataFrame(
        [
            # Primary rows first, in their order and with their scores; then the
            # fallback's best item not already listed, with score 0.
            (1, 10, 0.9, 100, "content", 1),
            (1, 11, 0.5, 101, "content", 2),
            (1, 12, 0.0, None, "popular", 3),
            # A user without primary rows gets the fallback's top k.
            (2, 11, 0.0, None, "popular", 1),
            (2, 12, 0.0, None, "popular", 2),
            (2, 14, 0.0, None, "popular", 3),
            (3, 21, 0.4, None, "content", 1),
            (3, 22, 0.3, None, "content", 2),
            (3, 23, 0.2, None, "content", 3),
        ],
        CANDIDATES + ", rank int",
    )
    assert_same(rc.fill_to_k(primary, fallback, 3), expected)


# --- blend -------------------------------------------------------------------------------


def test_blend_fuses_normalised_scores_by_weight(spark):
    als = spark.createDataFrame(
        [
            # user 1: min-max -> item 1: 1.0, item 2: 0.5, item 3: 0.0
            (1, 1, 4.0, 50, "als"),
            (1, 2, 2.0, 51, "als"),
            (1, 3, 0.0, 52, "als"),
            # user 2: all equal -> 1.0 each
            (2, 1, 3.0, 60, "als"),
            (2, 2, 3.0, 61, "als"),
        ],
        CANDIDATES,
    )
    content = spark.createDataFrame(
        [
            # user 1: item 2 -> 0.0, item 4 -> 1.0
            (1, 2, 0.3, 70, "content"),
            (1, 4, 0.9, 71, "content"),
        ],
        CANDIDATES,
    )
    popular = spark.createDataFrame(
        [
            # user 1: item 1 -> 0.0, item 4 -> 1.0, item 5 -> 0.5
            (1, 1, 10.0, None, "popular"),
            (1, 4, 30.0, None, "popular"),
            (1, 5, 20.0, None, "popular"),
            # user 2: equal -> 1.0 each
            (2, 1, 5.0, None, "popular"),
            (2, 3, 5.0, None, "popular"),
        ],
        CANDIDATES,
    )
    # A model with weight 0 is left out even though it scores item 9 highest.
    ignored = spark.createDataFrame([(1, 9, 100.0, None, "other"), (1, 8, 0.0, None, "other")], CANDIDATES)
    weights = {"als": 0.7, "content": 0.2, "popular": 0.1, "other": 0.0}

    blended = rc.blend({"als": als, "content": content, "popular": popular, "other": ignored}, weights, 3)

    # Fused by hand: sum over models of weight * normalised score.
    # user 1: item 1 = 0.7*1.0 + 0.1*0.0 = 0.70 (als), item 2 = 0.7*0.5 + 0.2*0.0 = 0.35 (als),
    #         item 4 = 0.2*1.0 + 0.1*1.0 = 0.30 (content gives 0.2 > popular 0.1),
    #         item 5 = 0.1*0.5 = 0.05, item 3 = 0.0 -> cut by k = 3.
    # user 2: item 1 = 0.7 + 0.1 = 0.80 (als), item 2 = 0.70 (als), item 3 = 0.10 (popular).
    expected = spark.createDataFrame(
        [
            (1, 1, 0.70, 50, "als", 1),
            (1, 2, 0.35, 51, "als", 2),
            (1, 4, 0.30, 71, "content", 3),
            (2, 1, 0.80, 60, "als", 1),
            (2, 2, 0.70, 61, "als", 2),
            (2, 3, 0.10, None, "popular", 3),
        ],
        CANDIDATES + ", rank int",
    )
    assert_approx_df_equality(blended, expected, 1e-9, ignore_row_order=True, ignore_nullable=True)


def test_item_trust_rises_with_interactions_and_is_one_when_off():
    trust = rc.item_trust(np.array([0, 1, 5, 95]), 5.0)
    assert trust.tolist() == pytest.approx([0.0, 1 / 6, 0.5, 0.95])
    assert rc.item_trust(np.array([0, 3]), 0.0).tolist() == [1.0, 1.0]


def test_blend_moves_als_weight_to_content_on_items_without_collaborative_signal(spark):
    # One user. ALS normalises items 1, 2, 4 to 1, 0.5, 0; content items 3, 2, 5 to
    # 1, 0.75, 0; popularity item 1 to 1. Trust: item 1 0.95, item 2 0.5, item 4 0.2,
    # items 3 and 5 (new) are not in the table: 0.
    als = spark.createDataFrame(
        [(1, 1, 2.0, 10, "als"), (1, 2, 1.0, 10, "als"), (1, 4, 0.0, 10, "als")], CANDIDATES
    )
    content = spark.createDataFrame(
        [(1, 3, 0.9, 11, "content"), (1, 2, 0.8, 12, "content"), (1, 5, 0.5, 13, "content")], CANDIDATES
    )
    popular = spark.createDataFrame([(1, 1, 3.0, None, "popular")], CANDIDATES)
    trust = spark.createDataFrame([(1, 0.95), (2, 0.5), (4, 0.2)], "item_idx int, trust double")
    weights = {"als": 0.7, "content": 0.2, "popular": 0.1}
    candidates = {"als": als, "content": content, "popular": popular}

    plain = {r.item_idx: (r.score, r.source) for r in rc.blend(candidates, weights, 5).collect()}
    trusted = rc.blend(candidates, weights, 5, trust).collect()
    by_item = {r.item_idx: (r.score, r.source) for r in trusted}

    assert plain[2] == pytest.approx((0.7 * 0.5 + 0.2 * 0.75, "als"))
    assert plain[3] == pytest.approx((0.2, "content"))
    # The new item 3 gets content's weight and all of ALS's: (0.2 + 0.7) * 1.0.
    assert by_item[3] == pytest.approx((0.9, "content"))
    # Item 2, proposed by both: ALS keeps 0.7 * 0.5 of its weight, content takes the rest.
    assert by_item[2] == pytest.approx((0.5 * (0.7 * 0.5) + 0.75 * (0.2 + 0.7 * 0.5), "content"))
    # Items 1 and 4, which content does not propose: nothing to move to, ALS keeps its weight.
    assert by_item[1] == pytest.approx((0.7 + 0.1, "als"))
    assert by_item[1] == pytest.approx(plain[1])
    assert by_item[4] == pytest.approx(plain[4])
    assert [r.item_idx for r in sorted(trusted, key=lambda r: r["rank"])][:3] == [3, 1, 2]


# --- with_reason ---------------------------------------------------------------------------


def test_with_reason(spark):
    items = spark.createDataFrame(
        [
            ("p1", 1, "Red Wallet", "Accessories"),
            ("p2", 2, None, "Accessories"),
            ("p3", 3, "Shoe", "Shoes"),
            ("p4", 4, "Thing", None),
        ],
        "item_id string, item_idx int, title string, category string",
    )
    recs = spark.createDataFrame(
        [
            (1, 3, 0.9, 1, "als", 1),  # because with a title (and the item has a category)
            (1, 4, 0.8, 2, "content", 2),  # because item without title -> its item_id
            (2, 3, 0.0, None, "popular", 1),  # no because, item with category
            (2, 4, 0.0, None, "popular", 2),  # no because, item without category
            (2, 9, 0.0, None, "popular", 3),  # item unknown to items
        ],
        CANDIDATES + ", rank int",
    )
    out = rc.with_reason(recs, items)
    assert set(recs.columns) <= set(out.columns)
    got = sorted((r.user_idx, r.item_idx, r["rank"], r.reason) for r in out.collect())
    assert got == [
        (1, 3, 1, "because you rated Red Wallet"),
        (1, 4, 2, "because you rated p2"),
        (2, 3, 1, "popular in Shoes"),
        (2, 4, 2, "popular with shoppers"),
        (2, 9, 3, "popular with shoppers"),
    ]


@pytest.mark.parametrize("source", ["als", "popular"])
def test_as_candidates_shape(spark, source):
    recs = spark.createDataFrame([(1, 2, 0.5, 1)], "user_idx int, item_idx int, score float, rank int")
    out = rc.as_candidates(recs, source)
    assert out.columns == rc.CANDIDATE_COLUMNS
    row = out.first()
    assert (row.user_idx, row.item_idx, row.score, row.because_idx, row.source) == (1, 2, 0.5, None, source)
