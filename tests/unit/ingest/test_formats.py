"""Ingest of the other input families and of awkward files.

Amazon 2018 JSON, CSV with a column mapping (MovieLens-style ratings, movies and
tags), Parquet, format detection, invalid UTF-8, very long lines, corrupt gzip
files and an incremental second ingest. Every line's fate is spelled out: a
bronze row, a reject with its reason, or a blank/header count in the log.

Whole-stage runs (``run_ingest``) are shared by module fixtures; the
cheaper cases call ``ingest.ingest_source`` and collect its frames.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.errors import ConfigError, InputError
from amazon_recs.ingest import sources as ig
from amazon_recs.pipeline.features import run_features
from amazon_recs.pipeline.ingest import run_ingest

TEST_CONFIG = Path(__file__).resolve().parents[3] / "conf" / "test.yaml"
LOG_COUNTS = ("lines_read", "accepted", "rejected", "blank", "header", "duplicates")

T18 = 1_529_193_600  # 2018-06-17T00:00:00Z in epoch seconds (unixReviewTime)


def module_config(root: Path, overrides: list[str]):
    return load_config(
        TEST_CONFIG,
        [
            f"paths.raw={root / 'raw'}",
            f"paths.warehouse={root / 'warehouse'}",
            f"spark.checkpoint_dir={root / 'checkpoints'}",
            *overrides,
        ],
    )


def table(spark, config, name):
    return spark.read.format("delta").load(io.table_path(config, name))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def log_by_file(log_rows) -> dict[str, dict]:
    return {r["source_file"]: {k: r[k] for k in (*LOG_COUNTS, "error")} for r in log_rows}


def assert_reconciles(log_rows) -> None:
    for r in log_rows:
        assert r["lines_read"] == r["accepted"] + r["rejected"] + r["blank"] + r["header"], r


def reasons_of(rejects) -> list[tuple[str, int, str]]:
    return sorted((r["source_file"], r["line_number"], r["reason"]) for r in rejects.collect())


def review_rows(df, *extra: str) -> list[tuple]:
    """Reviews as (user, item, rating, epoch ms, *extra), sorted."""
    cols = ["user_id", "item_id", "rating", F.unix_millis("ts").alias("ts_ms"), *extra]
    return sorted(tuple(r) for r in df.select(*cols).collect())


def files_of(spark, pattern) -> list[io.InputFile]:
    return io.list_files(spark, str(pattern))


# --- Amazon 2018: reviews, metadata, invalid UTF-8, long lines ------------------

REJECT_CHARS = 100
MAX_TEXT = 1000
LONG_TEXT = "".join(chr(ord("a") + i % 26) for i in range(50_000))


def r18(drop: tuple[str, ...] = (), **changes) -> str:
    record = {
        "overall": 5.0,
        "verified": True,
        "reviewTime": "06 17, 2018",
        "reviewerID": "R1",
        "asin": "B1",
        "style": {"Gift Amount:": " 50"},
        "reviewerName": "john",
        "reviewText": "Another great gift.",
        "summary": "Five Stars",
        "unixReviewTime": T18,
        "vote": "1,234",
    }
    record.update(changes)
    return json.dumps({k: v for k, v in record.items() if k not in drop}, ensure_ascii=False)


MALFORMED_LONG = '{"reviewerID": "R9", "reviewText": "' + "y" * 500  # never closed
REVIEWS_2018 = [
    r18(),  # 1
    r18(drop=("reviewerID",)),  # 2 missing user id
    r18(reviewerID="R2", overall="five"),  # 3 rating is not a number
    "",  # 4 blank
    r18(reviewerID="R2", asin="B2", overall=4.0, verified=False, reviewText=LONG_TEXT, drop=("vote",)),  # 5
    MALFORMED_LONG,  # 6 malformed JSON, longer than reject_max_chars
    r18(summary="Changed my mind", overall=1.0),  # 7 same key as line 1: a duplicate
    r18(reviewerID="R3", overall=3, vote="7", summary="Long " + "t" * 2000),  # 8 long title cut too
]
REVIEWS_2018_REASONS = {2: "missing user id", 3: "rating is not a number", 6: "malformed JSON"}

# Written as bytes: lines 2-4 are not valid UTF-8; the others must not suffer for it.
UTF8_LINES = [
    r18(reviewerID="R4", asin="B3").encode(),  # 1
    b'{"reviewerID": "R5\xff\xfe", "asin": "B3", "overall": 5.0, "unixReviewTime": 1529193600}',  # 2
    b"\xff\xfe" + r18(reviewerID="R6", asin="B3").encode(),  # 3 a stray UTF-16 byte order mark
    # 4: a two-byte sequence cut short
    b'{"reviewerID": "R7", "asin": "B3", "overall": 5.0, "unixReviewTime": 1529193600, "summary": "caf\xc3"}',
    r18(reviewerID="R8", asin="B3", reviewText="café ☕ ok", summary="naïve").encode(),  # 5 valid multi-byte
    r18(reviewerID="R9", asin="B4").encode(),  # 6
]

CSS_PRICE = (
    ".a-box-inner{background-color:#fff}#alohaBuyBoxWidget .selected{background-color:#fffbf3;"
    "border-color:#e77600;box-shadow:0 0 3px rgba(228,121,17,.5)}"
)
HTML_TITLE = '<span class="a-size-large">Amazon.com Gift Card</span> &amp; <b>Greeting</b>'
META_2018 = [
    json.dumps(
        {
            "category": ["Gift Cards", "Gift Cards"],
            "tech1": "",
            "description": ["Redeemable storewide."],
            "title": HTML_TITLE,
            "also_buy": [],
            "brand": "Amazon",
            "feature": ["Never expires"],
            "details": {"\n    Product Dimensions: \n    ": "3.4 x 2.1 inches"},
            "main_cat": "Grocery",
            "price": "$1,299.00",
            "asin": "G1",
            "imageURL": [],
        }
    ),
    json.dumps({"category": [], "title": "Plain Card", "main_cat": "Gift Cards", "price": "", "asin": "G2"}),
    json.dumps(
        {"category": ["Gift Cards", "Restaurants"], "title": "Diner", "price": "$25.00", "asin": "G3"}
    ),
    json.dumps({"category": ["Gift Cards"], "title": "no asin", "price": "$5.00"}),  # missing item id
    # Page CSS where the price should be (two products in the real Gift Cards metadata).
    json.dumps({"title": "Css", "price": CSS_PRICE, "asin": "G5", "main_cat": "Gift Cards"}),
]


@pytest.fixture(scope="module")
def amazon2018(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("amazon2018")
    (root / "reviews").mkdir()
    (root / "meta").mkdir()
    reviews = write_lines(root / "reviews" / "reviews.json", REVIEWS_2018)
    utf8 = root / "reviews" / "utf8.json"
    utf8.write_bytes(b"\n".join(UTF8_LINES) + b"\n")
    meta = write_lines(root / "meta" / "meta.json", META_2018)
    config = module_config(
        root,
        [
            "input.format=amazon2018",
            f"input.reviews={root / 'reviews'}/*.json",
            f"input.products={root / 'meta'}",
            f"input.max_text_chars={MAX_TEXT}",
            f"input.reject_max_chars={REJECT_CHARS}",
            "input.max_reject_rate=1.0",
        ],
    )
    summary = run_ingest(spark, config)
    return {
        "config": config,
        "summary": summary,
        "uris": {"reviews": reviews.as_uri(), "utf8": utf8.as_uri(), "meta": meta.as_uri()},
        "reviews": table(spark, config, "bronze/reviews"),
        "products": table(spark, config, "bronze/products"),
        "rejects": table(spark, config, "bronze/rejects"),
        "log": table(spark, config, "bronze/ingest_log").collect(),
    }


def test_amazon2018_reviews_map_to_bronze(amazon2018):
    uris = amazon2018["uris"]
    ms = T18 * 1000
    actual = review_rows(
        amazon2018["reviews"],
        "asin",
        "verified",
        "helpful_votes",
        "review_title",
        "source_file",
        "line_number",
    )
    title8 = ("Long " + "t" * 2000)[:MAX_TEXT]
    assert actual == [
        ("R1", "B1", 5.0, ms, "B1", True, 1234, "Five Stars", uris["reviews"], 1),  # line 7 repeats the key
        ("R2", "B2", 4.0, ms, "B2", False, None, "Five Stars", uris["reviews"], 5),
        ("R3", "B1", 3.0, ms, "B1", True, 7, title8, uris["reviews"], 8),
        ("R4", "B3", 5.0, ms, "B3", True, 1234, "Five Stars", uris["utf8"], 1),
        ("R8", "B3", 5.0, ms, "B3", True, 1234, "naïve", uris["utf8"], 5),
        ("R9", "B4", 5.0, ms, "B4", True, 1234, "Five Stars", uris["utf8"], 6),
    ]


def test_amazon2018_long_review_text_is_cut_to_max_text_chars(amazon2018):
    texts = {r["user_id"]: r["review_text"] for r in amazon2018["reviews"].collect()}
    assert len(texts["R2"]) == MAX_TEXT
    assert texts["R2"] == LONG_TEXT[:MAX_TEXT]
    assert texts["R1"] == "Another great gift."
    assert texts["R8"] == "café ☕ ok"  # valid multi-byte text is kept whole


def test_amazon2018_rejects_carry_exact_reasons(amazon2018):
    uris = amazon2018["uris"]
    expected = sorted(
        [(uris["reviews"], n, reason) for n, reason in REVIEWS_2018_REASONS.items()]
        + [(uris["utf8"], n, "invalid UTF-8") for n in (2, 3, 4)]
        + [(uris["meta"], 4, "missing item id")]
    )
    assert reasons_of(amazon2018["rejects"]) == expected
    kinds = {(r["source_file"], r["kind"]) for r in amazon2018["rejects"].collect()}
    assert kinds == {(uris["reviews"], "reviews"), (uris["utf8"], "reviews"), (uris["meta"], "products")}


def test_amazon2018_rejected_raw_is_cut_to_reject_max_chars(amazon2018):
    rejects = amazon2018["rejects"].filter(F.col("source_file") == amazon2018["uris"]["reviews"])
    raw = {r["line_number"]: r["raw"] for r in rejects.collect()}
    assert len(MALFORMED_LONG) > REJECT_CHARS
    assert raw[6] == MALFORMED_LONG[:REJECT_CHARS]
    assert raw[3] == REVIEWS_2018[2][:REJECT_CHARS]


def test_amazon2018_invalid_utf8_line_keeps_its_text_in_raw(amazon2018):
    rejects = amazon2018["rejects"].filter(F.col("source_file") == amazon2018["uris"]["utf8"])
    raw = {r["line_number"]: r["raw"] for r in rejects.collect()}
    # The undecodable bytes come back as replacement characters; the rest is intact.
    assert raw[2].startswith('{"reviewerID": "R5')
    assert "\ufffd" in raw[2]
    assert raw[2].endswith('"unixReviewTime": 1529193600}')


def test_amazon2018_products_keep_html_and_parse_price(amazon2018):
    rows = sorted(
        tuple(r)
        for r in amazon2018["products"]
        .select("item_id", "title", "categories", "brand", "price", "features", "description", "line_number")
        .collect()
    )
    assert rows == [
        ("G1", HTML_TITLE, ["Gift Cards"], "Amazon", 1299.0, ["Never expires"], ["Redeemable storewide."], 1),
        # No category path: main_cat stands in; an empty price is no price.
        ("G2", "Plain Card", ["Gift Cards"], None, None, None, None, 2),
        ("G3", "Diner", ["Gift Cards", "Restaurants"], None, 25.0, None, None, 3),
        ("G5", "Css", ["Gift Cards"], None, None, None, None, 5),
    ]


def test_amazon2018_log_reconciles_every_file(amazon2018):
    uris, log = amazon2018["uris"], amazon2018["log"]
    assert_reconciles(log)
    assert {r["ingest_run_id"] for r in log} == {amazon2018["summary"]["ingest_run_id"]}
    assert log_by_file(log) == {
        uris["reviews"]: dict(
            lines_read=8, accepted=4, rejected=3, blank=1, header=0, duplicates=1, error=None
        ),
        uris["utf8"]: dict(lines_read=6, accepted=3, rejected=3, blank=0, header=0, duplicates=0, error=None),
        uris["meta"]: dict(lines_read=5, accepted=4, rejected=1, blank=0, header=0, duplicates=0, error=None),
    }


# --- corrupt and empty gzip files -------------------------------------------------


def test_corrupt_gzip_is_quarantined_and_the_rest_ingested(spark, config, tmp_path):
    folder = tmp_path / "gz"
    folder.mkdir()
    good_lines = [r18(reviewerID=f"G{i}", asin=f"A{i % 3}") for i in range(40)]
    payload = gzip.compress(("\n".join(good_lines) + "\n").encode())
    files = {
        "good": folder / "a_good.json.gz",
        "truncated": folder / "b_truncated.json.gz",
        "garbage": folder / "c_garbage.json.gz",
        "empty": folder / "d_empty.json.gz",
    }
    files["good"].write_bytes(payload)
    files["truncated"].write_bytes(payload[: len(payload) // 2])
    # A valid gzip header (magic, deflate, flags, mtime, xfl, os) and then noise.
    # The first deflate block header, 0xff, names a block type that does not exist.
    files["garbage"].write_bytes(payload[:10] + bytes((255 - i * 37) % 256 for i in range(300)))
    files["empty"].write_bytes(b"")
    uris = {k: p.as_uri() for k, p in files.items()}
    config = config.with_overrides(
        ["input.format=amazon2018", f"input.reviews={folder}/*.json.gz", "input.products="]
    )

    summary = run_ingest(spark, config)  # does not raise

    assert sorted(r["user_id"] for r in table(spark, config, "bronze/reviews").collect()) == sorted(
        f"G{i}" for i in range(40)
    )
    log = {r["source_file"]: r for r in table(spark, config, "bronze/ingest_log").collect()}
    assert set(log) == set(uris.values())
    assert_reconciles(log.values())
    assert [log[uris["good"]][k] for k in LOG_COUNTS] == [40, 40, 0, 0, 0, 0]
    assert log[uris["good"]]["error"] is None
    for bad in ("truncated", "garbage"):
        row = log[uris[bad]]
        assert [row[k] for k in LOG_COUNTS] == [0] * 6, bad
        assert row["error"], bad
        assert row["bytes"] == files[bad].stat().st_size
    assert [log[uris["empty"]][k] for k in (*LOG_COUNTS, "bytes")] == [0] * 7
    assert log[uris["empty"]]["error"] is None

    rejects = table(spark, config, "bronze/rejects").collect()
    assert sorted((r["source_file"], r["line_number"], r["raw"]) for r in rejects) == [
        (uris["truncated"], 0, None),
        (uris["garbage"], 0, None),
    ]
    for r in rejects:
        assert r["reason"].startswith("unreadable file: "), r["reason"]
        assert r["reason"] == f"unreadable file: {log[r['source_file']]['error']}"
        assert r["ingest_run_id"] == summary["ingest_run_id"]
    assert len(summary["files"]) == 4


# --- CSV: MovieLens-style ratings, movies and tags -----------------------------------

RATINGS_1 = [
    ("userId,movieId,rating,timestamp", "header"),  # 1
    ("1,10,4.0,964982703", None),  # 2
    ('1,20,"3.5",964981247', None),  # 3 a quoted value
    ('"7,8",10,5.0,964982224', None),  # 4 a quoted field holding a comma
    ("2,10,6.0,964982224", "rating outside [0.5, 5]"),  # 5
    ("2,30,0.5,964983815", None),  # 6 allowed by input.rating_min=0.5
    ("3,10", "wrong number of fields"),  # 7
    ("3,20,4.0,964982703,extra", "wrong number of fields"),  # 8
    ("", "blank"),  # 9
    ('3,"40",five,964982703', "rating is not a number"),  # 10
    (",10,4.0,964982703", "missing user id"),  # 11
    ("3,50,4.0,", "missing timestamp"),  # 12
    ("1,10,2.0,964982703", None),  # 13 same key as line 2: a duplicate
]
RATINGS_2 = [("userId,movieId,rating,timestamp", "header"), ("4,10,5.0,1000000000", None)]
MOVIES = [
    ("movieId,title,genres", "header"),  # 1
    ("10,GoldenEye (1995),Action|Adventure|Thriller", None),  # 2
    ('11,"American President, The (1995)",Comedy|Drama|Romance', None),  # 3
    ("12,Dracula (1995),(no genres listed)", None),  # 4
    (",Untitled,Drama", "missing item id"),  # 5
]
TAGS = [
    ("userId,movieId,tag,timestamp", "header"),  # 1
    ("2,10,Funny,1445714994", None),  # 2
    ("2,10, funny ,1445714996", None),  # 3 the same tag once trimmed and lower-cased
    ("2,11,Highly Quotable,1445714996", None),  # 4
    ("3,10,,1445714996", "missing tag"),  # 5
    ("3,11,Bond", "wrong number of fields"),  # 6 the header has four fields
]

MOVIELENS_SETTINGS = [
    "input.format=csv",
    "input.columns.user=userId",
    "input.columns.item=movieId",
    "input.columns.rating=rating",
    "input.columns.timestamp=timestamp",
    "input.timestamp_unit=s",
    "input.rating_min=0.5",
    "input.item_columns.item=movieId",
    "input.item_columns.title=title",
    "input.item_columns.categories=genres",
    "input.tag_columns.user=userId",
    "input.tag_columns.item=movieId",
    "input.tag_columns.tag=tag",
    "input.max_reject_rate=1.0",
]


def csv_text(rows) -> str:
    return "\n".join(line for line, _ in rows) + "\n"


def expected_counts(rows, duplicates: int) -> dict:
    fates = [fate for _, fate in rows]
    return dict(
        lines_read=len(rows),
        accepted=fates.count(None),
        rejected=sum(f not in (None, "blank", "header") for f in fates),
        blank=fates.count("blank"),
        header=fates.count("header"),
        duplicates=duplicates,
        error=None,
    )


def expected_rejects(uri: str, rows) -> list[tuple[str, int, str]]:
    return [(uri, n, fate) for n, (_, fate) in enumerate(rows, 1) if fate not in (None, "blank", "header")]


@pytest.fixture(scope="module")
def movielens(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("movielens")
    for folder in ("ratings", "movies", "tags"):
        (root / folder).mkdir()
    paths = {
        "ratings_1": root / "ratings" / "ratings_1.csv",
        "ratings_2": root / "ratings" / "ratings_2.csv",
        "movies": root / "movies" / "movies.csv",
        "tags": root / "tags" / "tags.csv",
    }
    paths["ratings_1"].write_text(csv_text(RATINGS_1))
    paths["ratings_2"].write_text(csv_text(RATINGS_2))
    paths["movies"].write_text(csv_text(MOVIES))
    paths["tags"].write_text(csv_text(TAGS))
    config = module_config(
        root,
        [
            *MOVIELENS_SETTINGS,
            f"input.reviews={root / 'ratings'}/*.csv",
            f"input.products={paths['movies']}",
            f"input.tags={paths['tags']}",
        ],
    )
    summary = run_ingest(spark, config)
    return {
        "root": root,
        "config": config,
        "summary": summary,
        "paths": paths,
        "uris": {k: p.as_uri() for k, p in paths.items()},
        "log": table(spark, config, "bronze/ingest_log").collect(),
        "rejects": table(spark, config, "bronze/rejects"),
    }


def test_csv_ratings_parse_with_the_column_mapping(spark, movielens):
    uri1, uri2 = movielens["uris"]["ratings_1"], movielens["uris"]["ratings_2"]
    reviews = table(spark, movielens["config"], "bronze/reviews")
    assert review_rows(reviews, "asin", "source_file", "line_number") == [
        ("1", "10", 4.0, 964_982_703_000, "10", uri1, 2),  # line 13 repeats the key
        ("1", "20", 3.5, 964_981_247_000, "20", uri1, 3),
        ("2", "30", 0.5, 964_983_815_000, "30", uri1, 6),
        ("4", "10", 5.0, 1_000_000_000_000, "10", uri2, 2),
        ("7,8", "10", 5.0, 964_982_224_000, "10", uri1, 4),
    ]
    # No text columns in a ratings file.
    assert {(r["review_title"], r["review_text"], r["helpful_votes"]) for r in reviews.collect()} == {
        (None, None, None)
    }


def test_csv_rejects_carry_exact_reasons(movielens):
    uris = movielens["uris"]
    expected = sorted(
        expected_rejects(uris["ratings_1"], RATINGS_1)
        + expected_rejects(uris["movies"], MOVIES)
        + expected_rejects(uris["tags"], TAGS)
    )
    assert reasons_of(movielens["rejects"]) == expected
    raw = {(r["source_file"], r["line_number"]): r["raw"] for r in movielens["rejects"].collect()}
    assert raw[(uris["ratings_1"], 7)] == "3,10"


def test_csv_log_counts_headers_and_duplicates(movielens):
    uris, log = movielens["uris"], movielens["log"]
    assert_reconciles(log)
    assert log_by_file(log) == {
        uris["ratings_1"]: expected_counts(RATINGS_1, duplicates=1),
        uris["ratings_2"]: expected_counts(RATINGS_2, duplicates=0),
        uris["movies"]: expected_counts(MOVIES, duplicates=0),
        uris["tags"]: expected_counts(TAGS, duplicates=1),
    }
    ratings_1 = log_by_file(log)[uris["ratings_1"]]
    assert (ratings_1["accepted"], ratings_1["rejected"], ratings_1["header"]) == (5, 6, 1)  # spelled out


def test_movielens_movies_split_genres(spark, movielens):
    products = table(spark, movielens["config"], "bronze/products")
    rows = sorted(
        tuple(r) for r in products.select("item_id", "title", "categories", "line_number").collect()
    )
    assert rows == [
        ("10", "GoldenEye (1995)", ["Action", "Adventure", "Thriller"], 2),
        ("11", "American President, The (1995)", ["Comedy", "Drama", "Romance"], 3),
        ("12", "Dracula (1995)", ["(no genres listed)"], 4),
    ]


def test_movielens_tags_are_lower_cased_and_unique(spark, movielens):
    tags = table(spark, movielens["config"], "bronze/item_tags")
    rows = sorted(tuple(r) for r in tags.select("user_id", "item_id", "tag", "line_number").collect())
    assert rows == [("2", "10", "funny", 2), ("2", "11", "highly quotable", 4)]


def test_csv_files_with_different_headers_are_an_input_error(spark, movielens, tmp_path):
    other = tmp_path / "ratings_3.csv"
    other.write_text("userId,movieId,rating,timestamp,extra\n5,10,4.0,964982703,x\n")
    files = files_of(spark, movielens["paths"]["ratings_2"]) + files_of(spark, other)
    with pytest.raises(InputError, match="different CSV headers"):
        ig.ingest_source(spark, movielens["config"], "reviews", files, "run")


def test_csv_configured_column_missing_from_header_is_named(spark, movielens):
    config = movielens["config"].with_overrides(["input.columns.user=uid"])
    files = files_of(spark, movielens["paths"]["ratings_2"])
    with pytest.raises(InputError) as err:
        ig.ingest_source(spark, config, "reviews", files, "run")
    assert "['uid']" in str(err.value)
    assert "input.columns" in str(err.value)


def test_csv_without_a_rating_column_counts_every_interaction_as_one(spark, movielens):
    config = movielens["config"].with_overrides(["input.columns.rating="])
    files = files_of(spark, movielens["paths"]["ratings_1"])
    accepted, rejects, log = ig.ingest_source(spark, config, "reviews", files, "run")
    rows = review_rows(accepted)
    assert {r[2] for r in rows} == {1.0}
    # Lines 5 and 10 no longer fail on their rating (6.0, "five").
    assert sorted((u, i) for u, i, *_ in rows) == [
        ("1", "10"),
        ("1", "20"),
        ("2", "10"),
        ("2", "30"),
        ("3", "40"),
        ("7,8", "10"),
    ]
    assert sorted((r["line_number"], r["reason"]) for r in rejects.collect()) == [
        (7, "wrong number of fields"),
        (8, "wrong number of fields"),
        (11, "missing user id"),
        (12, "missing timestamp"),
    ]
    assert_reconciles(log.collect())


def test_csv_timestamp_unit_ms(spark, movielens, tmp_path):
    path = tmp_path / "ms.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703123\n")
    config = movielens["config"].with_overrides(["input.timestamp_unit=ms"])
    accepted, _, _ = ig.ingest_source(spark, config, "reviews", files_of(spark, path), "run")
    assert review_rows(accepted) == [("1", "10", 4.0, 964_982_703_123)]


# --- Parquet ----------------------------------------------------------------------------


def test_parquet_rows_are_numbered_and_checked(spark, config, tmp_path):
    folder = tmp_path / "interactions.parquet"
    rows = [
        ("u1", "i1", 4, 1_600_000_000_000),
        (None, "i2", 3, 1_600_000_001_000),
        ("u3", "i3", 5, 1_600_000_002_000),
    ]
    spark.createDataFrame(rows, "uid string, iid string, stars int, at long").coalesce(1).write.parquet(
        str(folder)
    )
    config = config.with_overrides(
        [
            "input.format=parquet",
            "input.columns.user=uid",
            "input.columns.item=iid",
            "input.columns.rating=stars",
            "input.columns.timestamp=at",
            "input.timestamp_unit=ms",
            "input.max_reject_rate=1.0",
        ]
    )
    files = files_of(spark, folder)  # the part file; _SUCCESS and .crc files are skipped
    assert len(files) == 1
    accepted, rejects, log = ig.ingest_source(spark, config, "reviews", files, "run")
    uri = files[0].uri
    assert review_rows(accepted, "source_file", "line_number") == [
        ("u1", "i1", 4.0, 1_600_000_000_000, uri, 1),
        ("u3", "i3", 5.0, 1_600_000_002_000, uri, 3),
    ]
    assert reasons_of(rejects) == [(uri, 2, "missing user id")]
    assert json.loads(rejects.first()["raw"]) == {"iid": "i2", "stars": 3, "at": 1_600_000_001_000}
    log_rows = log.collect()
    assert_reconciles(log_rows)
    assert log_by_file(log_rows) == {
        uri: dict(lines_read=3, accepted=2, rejected=1, blank=0, header=0, duplicates=0, error=None)
    }


# --- input.format=auto ------------------------------------------------------------------


def test_auto_detects_amazon2018_and_ingests_it(spark, config, tmp_path):
    path = write_lines(tmp_path / "reviews.json", [r18(), r18(reviewerID="R2", vote="12")])
    files = files_of(spark, path)
    config = config.with_overrides(["input.format=auto"])
    assert ig.resolve_format(spark, config, files) == "amazon2018"
    accepted, rejects, _ = ig.ingest_source(spark, config, "reviews", files, "run")
    assert review_rows(accepted, "helpful_votes") == [
        ("R1", "B1", 5.0, T18 * 1000, 1234),
        ("R2", "B1", 5.0, T18 * 1000, 12),
    ]
    assert rejects.count() == 0


def test_auto_refuses_a_csv_file_and_points_to_input_format(spark, config, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text(csv_text(RATINGS_2))
    config = config.with_overrides(["input.format=auto"])
    with pytest.raises(InputError, match=r"input\.format"):
        ig.ingest_source(spark, config, "reviews", files_of(spark, path), "run")


def test_unknown_format_name_is_a_config_error(spark, config, tmp_path):
    path = write_lines(tmp_path / "reviews.json", [r18()])
    config = config.with_overrides(["input.format=amazon2015"])
    with pytest.raises(ConfigError, match="amazon2015"):
        ig.ingest_source(spark, config, "reviews", files_of(spark, path), "run")


# --- incremental ingest and stable ids ------------------------------------------------------


def test_second_ingest_adds_only_new_rows_and_keeps_ids(spark, config, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    a_lines = [
        r18(reviewerID="ua", asin="i1"),
        r18(reviewerID="uc", asin="i2"),
        r18(reviewerID="ue", asin="i1", unixReviewTime=T18 + 1),
    ]
    b_lines = [
        r18(reviewerID="ua", asin="i1", overall=1.0),  # key already in A: not added, A's row stays
        r18(reviewerID="ub", asin="i2", unixReviewTime=T18 + 2),  # new user between old ones
        r18(reviewerID="a0", asin="i3"),  # new user sorting before every old one
        r18(reviewerID="uc", asin="i3", unixReviewTime=T18 + 5),  # old user, new item
    ]
    a = write_lines(folder / "a.json", a_lines)
    config = config.with_overrides(["input.format=amazon2018", f"input.reviews={folder}/*.json"])

    def reviews_by_key():
        return {
            (r["user_id"], r["asin"], r["ts"]): r.asDict()
            for r in table(spark, config, "bronze/reviews").collect()
        }

    def id_map(name, key, idx):
        return {r[key]: r[idx] for r in table(spark, config, name).collect()}

    first = run_ingest(spark, config)
    before = reviews_by_key()
    assert len(before) == 3
    assert {r["ingest_run_id"] for r in before.values()} == {first["ingest_run_id"]}
    run_features(spark, config)
    users_before = id_map("silver/user_ids", "user_id", "user_idx")
    items_before = id_map("silver/item_ids", "item_id", "item_idx")
    assert users_before == {"ua": 0, "uc": 1, "ue": 2}

    b = write_lines(folder / "b.json", b_lines)
    second = run_ingest(spark, config)
    assert second["ingest_run_id"] != first["ingest_run_id"]
    after = reviews_by_key()
    assert len(after) == len(before) + 3  # B's four lines, one of them a key A already had
    assert {k: v for k, v in after.items() if k in before} == before  # A's rows as they were
    new = [v for k, v in after.items() if k not in before]
    assert sorted(r["user_id"] for r in new) == ["a0", "ub", "uc"]
    assert {(r["source_file"], r["ingest_run_id"]) for r in new} == {(b.as_uri(), second["ingest_run_id"])}
    assert {r["rating"] for r in after.values() if r["user_id"] == "ua"} == {5.0}

    log = {
        r["source_file"]: r
        for r in table(spark, config, "bronze/ingest_log")
        .filter(F.col("ingest_run_id") == second["ingest_run_id"])
        .collect()
    }
    assert [log[a.as_uri()][k] for k in LOG_COUNTS] == [3, 3, 0, 0, 0, 0]
    assert [log[b.as_uri()][k] for k in LOG_COUNTS] == [4, 4, 0, 0, 0, 1]

    run_features(spark, config)
    users_after = id_map("silver/user_ids", "user_id", "user_idx")
    items_after = id_map("silver/item_ids", "item_id", "item_idx")
    assert {u: users_after[u] for u in users_before} == users_before
    assert {u: i for u, i in users_after.items() if u not in users_before} == {"a0": 3, "ub": 4}
    assert min(i for u, i in users_after.items() if u not in users_before) > max(users_before.values())
    assert {k: items_after[k] for k in items_before} == items_before
    assert items_after["i3"] == max(items_before.values()) + 1
