"""Unit tests for amazon_recs.features on small inline frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from amazon_recs.errors import ConfigError
from amazon_recs.features import silver as fe
from amazon_recs.features import split as sp

T0 = datetime(2023, 1, 1, 12, 0, 0)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


# --- latest_per_pair ----------------------------------------------------------


def test_latest_per_pair_keeps_latest_then_highest_rating(spark):
    schema = "user_id string, item_id string, asin string, rating double, ts timestamp, review_text string"
    reviews = spark.createDataFrame(
        [
            # Same pair twice: the later review wins even with a lower rating.
            ("u1", "p1", "a1", 5.0, day(0), "first"),
            ("u1", "p1", "a1", 2.0, day(10), None),
            # Same pair, same ts (two variants of one product): the higher rating wins.
            ("u1", "p2", "a2", 3.0, day(5), "x"),
            ("u1", "p2", "a2b", 4.0, day(5), None),
            # An exact duplicate row folds to one row.
            ("u2", "p1", "a1", 1.0, day(3), None),
            ("u2", "p1", "a1", 1.0, day(3), None),
            # Identical but for a null asin: still one row for the pair.
            ("u2", "p3", None, 4.0, day(7), None),
            ("u2", "p3", "a3", 4.0, day(7), "y"),
            # A single review with null asin and text is kept as is.
            ("u3", "p3", None, 3.0, day(1), None),
        ],
        schema,
    )
    expected = spark.createDataFrame(
        [
            ("u1", "p1", 2.0, day(10)),
            ("u1", "p2", 4.0, day(5)),
            ("u2", "p1", 1.0, day(3)),
            ("u2", "p3", 4.0, day(7)),
            ("u3", "p3", 3.0, day(1)),
        ],
        "user_id string, item_id string, rating double, ts timestamp",
    )
    assert_df_equality(fe.latest_per_pair(reviews), expected, ignore_row_order=True, ignore_nullable=True)


# --- extend_id_map --------------------------------------------------------------


def _id_rows(df, key="user_id", idx="user_idx"):
    return sorted((r[key], r[idx]) for r in df.collect())


def test_extend_id_map_first_run_numbers_keys_in_order(spark):
    keys = spark.createDataFrame([("c",), ("a",), (None,), ("b",), ("a",), ("c",)], "user_id string")
    ids = fe.extend_id_map(None, keys, "user_id", "user_idx")
    assert dict(ids.dtypes)["user_idx"] == "int"
    assert _id_rows(ids) == [("a", 0), ("b", 1), ("c", 2)]


def test_extend_id_map_second_run_keeps_old_ids_and_appends(spark):
    # An existing map with a gap and not in key order: old ids must survive verbatim.
    existing = spark.createDataFrame([("m", 0), ("b", 7), ("x", 3)], "user_id string, user_idx int")
    keys = spark.createDataFrame([("b",), ("e",), (None,), ("d",), ("m",), ("d",), ("a",)], "user_id string")
    ids = fe.extend_id_map(existing, keys, "user_id", "user_idx")
    # New keys a, d, e get 8, 9, 10 in key order, after the max id 7; x is kept
    # although it is not among this run's keys.
    assert _id_rows(ids) == [("a", 8), ("b", 7), ("d", 9), ("e", 10), ("m", 0), ("x", 3)]


def test_extend_id_map_from_empty_existing_starts_at_zero(spark):
    existing = spark.createDataFrame([], "item_id string, item_idx int")
    keys = spark.createDataFrame([("q",), ("p",), ("q",)], "item_id string")
    ids = fe.extend_id_map(existing, keys, "item_id", "item_idx")
    assert _id_rows(ids, "item_id", "item_idx") == [("p", 0), ("q", 1)]


def test_numbering_spans_many_partitions_without_a_global_window(spark):
    # 500 keys shuffled over 7 partitions: the numbers are the keys' ranks, dense and
    # in order across partition boundaries, and the plan has no single-partition window.
    keys = [f"U{i:05d}" for i in range(500)]
    shuffled = sorted(keys, key=lambda k: hash((k, 11)))
    frame = spark.createDataFrame([(k,) for k in shuffled + shuffled[:40]], "user_id string").repartition(7)
    numbered = fe.number_in_order(frame.distinct(), "user_id", "user_idx")
    assert _id_rows(numbered) == [(k, i) for i, k in enumerate(keys)]
    ids = fe.extend_id_map(None, frame, "user_id", "user_idx")
    assert _id_rows(ids) == [(k, i) for i, k in enumerate(keys)]
    assert "Window" not in ids._jdf.queryExecution().executedPlan().toString()


# --- with_split -------------------------------------------------------------------


def test_with_split_holds_out_latest_fraction(spark):
    rows = []
    # (user, number of interactions). Items are numbered against time so that
    # ordering by item instead of by ts would pick the wrong ones.
    for user, n in [("u10", 10), ("u9", 9), ("u5", 5), ("u4", 4), ("u3", 3), ("u1", 1)]:
        for i in range(n):
            rows.append((user, f"i{n - i:02d}", day(i)))
    interactions = spark.createDataFrame(rows, "user_id string, item_id string, ts timestamp")
    split = sp.with_split(interactions, test_fraction=0.2, min_user_interactions=4)

    got: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for r in split.collect():
        assert r["split"] in (sp.TRAIN, sp.TEST)
        counts[r["user_id"]] = counts.get(r["user_id"], 0) + 1
        if r["split"] == sp.TEST:
            got.setdefault(r["user_id"], set()).add(r["item_id"])

    # Nothing dropped or duplicated.
    assert counts == {"u10": 10, "u9": 9, "u5": 5, "u4": 4, "u3": 3, "u1": 1}
    # The latest interaction of each user is the one at day(n - 1), item "i01";
    # then "i02" at day(n - 2), and so on.
    assert got == {
        "u10": {"i01", "i02"},  # floor(10 * 0.2) = 2
        "u9": {"i01"},  # floor(1.8) = 1
        "u5": {"i01"},  # floor(1.0) = 1
        "u4": {"i01"},  # floor(0.8) = 0, but at least 1
        # u3 and u1 have fewer than 4 interactions: nothing held out.
    }


# --- clean_text ---------------------------------------------------------------------


def test_clean_text(spark):
    cases = [
        ("<p>Great&nbsp;<b>phone</b></p>", "Great phone"),
        ("Tom &amp; Jerry&#39;s   mug", "Tom & Jerry's mug"),
        # Real Amazon 2018 metadata: escaped twice, escaped markup, a title cut inside a tag.
        ("Arts, Music &amp;amp; Photography", "Arts, Music & Photography"),
        ("&lt;b&gt;Bold&lt;/b&gt; claim", "Bold claim"),
        ('<span class="a-size-large a-color-', None),
        ('Gift card <span class="a-size-', "Gift card"),
        ("Size <5 mm & 3 > 2", "Size <5 mm & 3 > 2"),
        ("Caf&eacute;&#x2122;", "Café™"),
        ("  line one\n\tline   two  ", "line one line two"),
        ('<a href="x">link</a>text', "link text"),
        ("plain", "plain"),
        ("<br/>", None),
        ("&nbsp; &nbsp;", None),
        ("&nbsp; &amp;", "&"),
        ("   \n ", None),
        ("", None),
        (None, None),
    ]
    df = spark.createDataFrame(list(enumerate(c[0] for c in cases)), "id int, raw string")
    got = {r["id"]: r["clean"] for r in df.select("id", fe.clean_text(F.col("raw")).alias("clean")).collect()}
    assert got == {i: c[1] for i, c in enumerate(cases)}


def _products(spark, rows):
    return spark.createDataFrame(
        rows,
        "item_id string, title string, description array<string>, features array<string>, "
        "categories array<string>, brand string",
    )


def test_a_title_that_is_only_markup_is_never_displayed(spark):
    products = _products(
        spark,
        [
            ("a", "Maggiano&#39;s Gift Card", None, None, ["Gift Cards"], None),
            ("b", '<span class="a-size-', ["<p>Soft towel. Dries fast.</p>"], ["Cotton"], [], "Acme"),
            ("c", "<br/>", [], ["  A cotton towel for the kitchen and the bath  "], [], "Acme"),
            ("d", None, None, None, None, "Acme &amp; Sons"),
            ("e", "<div></div>", None, None, None, None),
            ("f", "  ", ["word " * 40], None, None, None),
        ],
    )
    shown = fe.cleaned_products(products).select("item_id", "_title", "_title_source").collect()
    got = {r["item_id"]: (r["_title"], r["_title_source"]) for r in shown}
    assert got == {
        "a": ("Maggiano's Gift Card", "title"),
        "b": ("Soft towel.", "description"),
        "c": ("A cotton towel for the kitchen and the bath", "features"),
        "d": ("Acme & Sons", "brand"),
        "e": (None, None),
        # No sentence end: the first 120 characters, cut at a word.
        "f": (("word " * 24).strip() + "…", "description"),
    }


def test_text_cleaning_is_counted_per_field(spark):
    products = _products(
        spark,
        [
            ("a", "Maggiano&#39;s <b>Gift</b> Card", None, None, ["Arts &amp; Crafts"], None),
            ("b", '<span class="a-size-', ["Soft towel. Dries fast."], None, [], "Acme"),
            ("c", "<br/>", None, None, None, "Acme &amp; Sons"),
            ("d", "Plain", ["&lt;p&gt;Escaped markup&lt;/p&gt;"], None, None, None),
            ("e", None, None, None, None, None),
        ],
    )
    got = fe.text_cleaning(products)
    assert got["title"] == {
        "entities_decoded": 1,
        "markup_removed": 3,
        "only_markup": 2,
        "from_description": 1,
        "from_features": 0,
        "from_brand": 1,
        "missing": 1,
    }
    assert got["categories"] == {"entities_decoded": 1, "markup_removed": 0, "only_markup": 0}
    assert got["brand"] == {"entities_decoded": 1, "markup_removed": 0, "only_markup": 0}
    # Escaped markup is decoded, then removed: counted as both.
    assert got["description"] == {"entities_decoded": 1, "markup_removed": 1, "only_markup": 0}


# --- build_items -----------------------------------------------------------------------


def test_build_items_metadata_and_train_popularity(spark):
    products = spark.createDataFrame(
        [
            (
                "p1",
                "Acme <b>Phone</b> &amp; case",
                ["<p>Great</p>"],
                ["5G", "  dual   SIM "],
                ["Electronics", "Phones"],
                "Acme",
                199.5,
            ),
            # Metadata present but empty: a row with has_metadata true and no text.
            ("p2", "  ", None, None, [], None, None),
        ],
        "item_id string, title string, description array<string>, features array<string>, "
        "categories array<string>, brand string, price double",
    )
    item_ids = spark.createDataFrame(
        [("p1", 0), ("p2", 1), ("p3", 2), ("p4", 3)], "item_id string, item_idx int"
    )
    interactions = spark.createDataFrame(
        [
            ("u1", "p1", "train"),
            ("u2", "p1", "train"),
            ("u3", "p1", "test"),
            ("u1", "p2", "test"),
            ("u1", "p3", "train"),
            ("u2", "p3", "test"),
        ],
        "user_id string, item_id string, split string",
    )
    expected = spark.createDataFrame(
        [
            (
                "p1",
                0,
                "Acme Phone & case",
                "Phones",
                "Acme",
                199.5,
                "Acme Phone & case Acme Electronics Phones 5G dual SIM Great",
                2,
                True,
            ),
            ("p2", 1, None, None, None, None, None, 0, True),
            # Reviewed but not in the metadata.
            ("p3", 2, None, None, None, None, None, 1, False),
            # Known id, neither metadata nor interactions.
            ("p4", 3, None, None, None, None, None, 0, False),
        ],
        "item_id string, item_idx int, title string, category string, brand string, price double, "
        "text string, popularity long, has_metadata boolean",
    )
    assert_df_equality(
        fe.build_items(products, item_ids, interactions),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_random_split_is_seeded_per_user_and_holds_out_the_same_share(spark):
    base = datetime(2024, 1, 1)
    rows = [(f"u{u}", f"i{i:02d}", 5.0, base + timedelta(days=i)) for u in range(4) for i in range(20)]
    interactions = spark.createDataFrame(rows, "user_id string, item_id string, rating double, ts timestamp")

    def held_out(seed):
        split = sp.with_split(interactions, 0.25, 4, protocol="random", seed=seed)
        return {(r.user_id, r.item_id) for r in split.filter(F.col("split") == "test").collect()}

    first = held_out(7)
    assert first == held_out(7)
    assert first != held_out(8)
    per_user = {u: {i for uu, i in first if uu == u} for u in ("u0", "u1", "u2", "u3")}
    assert all(len(items) == 5 for items in per_user.values())  # floor(20 * 0.25)
    latest = {f"i{i:02d}" for i in range(15, 20)}
    assert any(items != latest for items in per_user.values())  # not the temporal choice
    with pytest.raises(ConfigError, match="split.protocol 'weekly'"):
        sp.with_split(interactions, 0.25, 4, protocol="weekly")


def _split_rows(spark):
    # u_old acts on days 0-9, u_mid on days 5-14, u_new only on days 16-19: three
    # users whose histories end at different times, as a real catalogue's do.
    rows = [("u_old", f"a{d:02d}", day(d)) for d in range(10)]
    rows += [("u_mid", f"b{d:02d}", day(d)) for d in range(5, 15)]
    rows += [("u_new", f"c{d:02d}", day(d)) for d in range(16, 20)]
    return spark.createDataFrame(rows, "user_id string, item_id string, ts timestamp")


def _held_out(split) -> dict[str, set[str]]:
    got: dict[str, set[str]] = {}
    for r in split.filter(F.col("split") == sp.TEST).collect():
        got.setdefault(r["user_id"], set()).add(r["item_id"])
    return got


def test_global_temporal_cuts_everyone_at_one_time(spark):
    interactions = _split_rows(spark)
    # A date: everything on or after day 12 is test, whoever it belongs to.
    by_date = sp.with_split(
        interactions, 0.2, 4, protocol="global_temporal", cutoff=day(12).date().isoformat()
    )
    assert by_date.count() == 24
    assert _held_out(by_date) == {"u_mid": {"b12", "b13", "b14"}, "u_new": {f"c{d}" for d in range(16, 20)}}
    # u_old's latest interactions stay in train: the per-user protocol would hold them out.
    assert "u_old" in _held_out(sp.with_split(interactions, 0.2, 4, protocol="temporal"))
    # No date: the latest 25% of the 24 interactions, to the quantile's precision (the
    # quantile itself trains: at most 6).
    by_share = sp.with_split(interactions, 0.25, 4, protocol="global_temporal")
    held = _held_out(by_share)
    assert 5 <= sum(len(v) for v in held.values()) <= 6
    assert held["u_new"] == {f"c{d}" for d in range(16, 20)}
    assert held["u_mid"] <= {"b12", "b13", "b14"} and "u_old" not in held
    # u_new has no train rows: a cold user, kept (counted by evaluate), not dropped.
    train_users = {r["user_id"] for r in by_share.filter(F.col("split") == sp.TRAIN).collect()}
    assert "u_new" not in train_users


def test_global_temporal_reads_the_cut_as_utc_and_rejects_a_non_date(spark):
    interactions = spark.createDataFrame(
        [("u", "i1", datetime(2024, 1, 1, 23, 30)), ("u", "i2", datetime(2024, 1, 2, 0, 30))],
        "user_id string, item_id string, ts timestamp",
    )
    assert sp.time_cut(interactions, 0.2, "2024-01-02") == int(
        datetime(2024, 1, 2, tzinfo=UTC).timestamp() * 1e6
    )
    with pytest.raises(ConfigError, match="split.cutoff 'last week'"):
        sp.with_split(interactions, 0.2, 1, protocol="global_temporal", cutoff="last week")


def test_leave_last_out_holds_out_each_users_latest_one(spark):
    split = sp.with_split(_split_rows(spark), 0.5, 5, protocol="leave_last_out")
    # u_new has 4 interactions, under min_user_interactions: it trains on all.
    assert _held_out(split) == {"u_old": {"a09"}, "u_mid": {"b14"}}
    assert split.count() == 24
