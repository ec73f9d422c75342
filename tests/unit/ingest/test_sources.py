"""Ingest: every raw line is accepted, rejected with its reason, or counted blank.

Most tests read the tables of one ingest run (module fixture ``ingested``) over a
small set of hand-written files; the run is then repeated to check idempotency.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.errors import InputError
from amazon_recs.ingest import sources as ig
from amazon_recs.pipeline.ingest import run_ingest

TEST_CONFIG = Path(__file__).resolve().parents[3] / "conf" / "test.yaml"
TABLES = ("bronze/reviews", "bronze/products", "bronze/rejects", "bronze/ingest_log")

T1 = 1_600_000_000_000  # 2020-09-13T12:26:40Z in epoch milliseconds
GOOD = {
    "rating": 5.0,
    "title": "Love it",
    "text": "Great serum",
    "asin": "A1-1",
    "parent_asin": "A1",
    "user_id": "U1",
    "timestamp": T1,
    "helpful_vote": 2,
    "verified_purchase": True,
}


def rec(drop: tuple[str, ...] = (), **changes) -> str:
    """GOOD with some fields changed or dropped, as one JSON line."""
    record = {k: v for k, v in {**GOOD, **changes}.items() if k not in drop}
    return json.dumps(record)


# a.jsonl: line number -> (line, reason); reason None = accepted, "blank" = blank.
REVIEW_LINES = [
    (rec(), None),  # 1
    (rec(), None),  # 2 exact duplicate of line 1: accepted, stored once
    ('{"user_id": "U2", "asin": ', "malformed JSON"),  # 3
    (json.dumps([json.loads(rec())]), "not a JSON object"),  # 4 an array
    ('"just a string"', "not a JSON object"),  # 5
    ("", "blank"),  # 6
    ("   ", "blank"),  # 7
    (rec(drop=("user_id",)), "missing user id"),  # 8
    (rec(user_id=" "), "missing user id"),  # 9
    (rec(drop=("asin", "parent_asin")), "missing item id"),  # 10
    (rec(drop=("parent_asin", "verified_purchase"), user_id="U4", asin="B7"), None),  # 11 asin fallback
    (rec(user_id="U5", parent_asin="", asin="B8"), None),  # 12 empty parent_asin: asin
    (rec(drop=("rating",)), "missing rating"),  # 13
    (rec(rating="five"), "rating is not a number"),  # 14
    (rec(rating=9.0), "rating outside [1, 5]"),  # 15
    (rec(rating=0), "rating outside [1, 5]"),  # 16
    (rec(drop=("timestamp",)), "missing timestamp"),  # 17
    (rec(timestamp="yesterday"), "timestamp is not a positive integer"),  # 18
    (rec(timestamp=T1 + 0.5), "timestamp is not a positive integer"),  # 19
    (rec(timestamp=-5), "timestamp is not a positive integer"),  # 20
    (rec(timestamp=10**17), "timestamp out of range"),  # 21 would overflow a Spark timestamp
    (
        rec(user_id="U2", asin="A2-1", parent_asin="A2", rating=3, helpful_vote=0, verified_purchase=False),
        None,
    ),  # 22
    (rec(rating=1.0, title="Changed my mind"), None),  # 23 same key as line 1: line 1 wins
]

# "more reviews.jsonl.gz" (a space in the name, gzipped)
GZ_LINES = [
    (rec(user_id="U3", asin="C1-2", parent_asin="C1", timestamp=T1 + 1000), None),  # 1
    (rec(), None),  # 2 duplicate of a.jsonl line 1, which comes first
    ("", "blank"),  # 3
    ('{"user_id": "U9"', "malformed JSON"),  # 4
    ("\t \t", "blank"),  # 5 tabs are white space too
]

PRODUCT_LINES = [
    (
        json.dumps(
            {
                "parent_asin": "P1",
                "title": "Velour Serum",
                "categories": ["Beauty", "Skin Care"],
                "main_category": "All Beauty",
                "store": "Velour",
                "price": "$12.50",
                "features": ["Gentle"],
                "description": ["A serum."],
            }
        ),
        None,
    ),
    (json.dumps({"parent_asin": "P1", "title": "Later copy"}), None),  # duplicate key: first wins
    (
        json.dumps(
            {
                "parent_asin": "P2",
                "title": "Noctis Cologne",
                "categories": [],
                "main_category": "All Beauty",
                "price": None,
            }
        ),
        None,
    ),
    ("", "blank"),
    ('{"parent_asin": "P3", "title": ', "malformed JSON"),
    ('["P4"]', "not a JSON object"),
    (json.dumps({"title": "no id"}), "missing item id"),
]

REJECT_CHARS = 40


def text_of(lines) -> str:
    return "\n".join(line for line, _ in lines) + "\n"


def table(spark, config, name):
    return spark.read.format("delta").load(io.table_path(config, name))


def snapshot(spark, config) -> dict[str, list]:
    return {name: sorted(table(spark, config, name).collect(), key=repr) for name in TABLES}


def counts(lines) -> dict[str, int]:
    reasons = [reason for _, reason in lines]
    return {
        "lines_read": len(lines),
        "accepted": reasons.count(None),
        "rejected": sum(r not in (None, "blank") for r in reasons),
        "blank": reasons.count("blank"),
    }


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    reviews_dir, products_dir = root / "reviews", root / "products"
    reviews_dir.mkdir()
    products_dir.mkdir()
    files = {
        "a": reviews_dir / "a.jsonl",
        "gz": reviews_dir / "more reviews.jsonl.gz",
        "empty": reviews_dir / "empty.jsonl",
        "meta": products_dir / "meta.jsonl",
    }
    files["a"].write_text(text_of(REVIEW_LINES), encoding="utf-8")
    files["gz"].write_bytes(gzip.compress(text_of(GZ_LINES).encode("utf-8")))
    files["empty"].write_bytes(b"")
    files["meta"].write_text(text_of(PRODUCT_LINES), encoding="utf-8")
    # Not input: Hadoop markers and hidden files are skipped when listing a folder.
    (reviews_dir / "_SUCCESS").write_text("")
    (reviews_dir / ".a.jsonl.crc").write_text("garbage\n")

    config = load_config(
        TEST_CONFIG,
        [
            f"paths.raw={root / 'raw'}",
            f"paths.warehouse={root / 'warehouse'}",
            f"spark.checkpoint_dir={root / 'checkpoints'}",
            f"input.reviews={reviews_dir}",  # a folder: its files
            f"input.products={products_dir}/*.jsonl",  # a glob
            "input.max_reject_rate=1.0",
            f"input.reject_max_chars={REJECT_CHARS}",
        ],
    )
    summary = run_ingest(spark, config)
    uris = {key: path.as_uri() for key, path in files.items()}
    return {
        "config": config,
        "summary": summary,
        "files": files,
        "uris": uris,
        "tables": snapshot(spark, config),
    }


def test_each_rejected_line_has_its_reason(spark, ingested):
    uris = ingested["uris"]
    expected = (
        [("reviews", uris["a"], n, r) for n, (_, r) in enumerate(REVIEW_LINES, 1) if r not in (None, "blank")]
        + [("reviews", uris["gz"], n, r) for n, (_, r) in enumerate(GZ_LINES, 1) if r not in (None, "blank")]
        + [
            ("products", uris["meta"], n, r)
            for n, (_, r) in enumerate(PRODUCT_LINES, 1)
            if r not in (None, "blank")
        ]
    )
    rejects = table(spark, ingested["config"], "bronze/rejects")
    actual = sorted(
        tuple(row) for row in rejects.select("kind", "source_file", "line_number", "reason").collect()
    )
    assert actual == sorted(expected)


def test_rejects_keep_the_raw_line_cut_to_the_limit_and_the_run_id(spark, ingested):
    rejects = table(spark, ingested["config"], "bronze/rejects").filter(F.col("kind") == "reviews")
    by_line = {(r["source_file"], r["line_number"]): r for r in rejects.collect()}
    a = ingested["uris"]["a"]
    assert by_line[(a, 3)]["raw"] == REVIEW_LINES[2][0]  # shorter than the limit
    assert by_line[(a, 14)]["raw"] == REVIEW_LINES[13][0][:REJECT_CHARS]
    assert {r["ingest_run_id"] for r in by_line.values()} == {ingested["summary"]["ingest_run_id"]}


def test_accepted_reviews_are_unique_on_the_natural_key(spark, ingested):
    uris = ingested["uris"]
    actual = table(spark, ingested["config"], "bronze/reviews").select(
        "user_id",
        "item_id",
        "asin",
        "rating",
        F.unix_millis("ts").alias("ts_ms"),
        "review_title",
        "verified",
        "helpful_votes",
        "source_file",
        "line_number",
    )
    expected = spark.createDataFrame(
        [
            ("U1", "A1", "A1-1", 5.0, T1, "Love it", True, 2, uris["a"], 1),
            ("U4", "B7", "B7", 5.0, T1, "Love it", None, 2, uris["a"], 11),
            ("U5", "B8", "B8", 5.0, T1, "Love it", True, 2, uris["a"], 12),
            ("U2", "A2", "A2-1", 3.0, T1, "Love it", False, 0, uris["a"], 22),
            ("U3", "C1", "C1-2", 5.0, T1 + 1000, "Love it", True, 2, uris["gz"], 1),
        ],
        "user_id string, item_id string, asin string, rating double, ts_ms long, review_title string, "
        "verified boolean, helpful_votes int, source_file string, line_number int",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_accepted_products_one_row_per_item(spark, ingested):
    actual = table(spark, ingested["config"], "bronze/products").select(
        "item_id", "title", "categories", "brand", "price", "features", "line_number"
    )
    expected = spark.createDataFrame(
        [
            ("P1", "Velour Serum", ["Beauty", "Skin Care"], "Velour", 12.5, ["Gentle"], 1),
            # No categories: the main category stands in.
            ("P2", "Noctis Cologne", ["All Beauty"], None, None, None, 3),
        ],
        "item_id string, title string, categories array<string>, brand string, price double, "
        "features array<string>, line_number int",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_ingest_log_reconciles_every_file(spark, ingested):
    uris, files = ingested["uris"], ingested["files"]
    log = table(spark, ingested["config"], "bronze/ingest_log")
    run_id = ingested["summary"]["ingest_run_id"]
    # duplicates: accepted lines whose natural key an earlier line had. a.jsonl
    # lines 2 and 23 repeat line 1; the gz file's line 2 repeats a.jsonl line 1
    # (a.jsonl sorts first); the products file repeats P1.
    expected_rows = [
        ("reviews", uris["a"], files["a"].stat().st_size, *counts(REVIEW_LINES).values(), 0, 2, None),
        ("reviews", uris["gz"], files["gz"].stat().st_size, *counts(GZ_LINES).values(), 0, 1, None),
        ("reviews", uris["empty"], 0, 0, 0, 0, 0, 0, 0, None),  # zero-byte file: listed, with zeros
        ("products", uris["meta"], files["meta"].stat().st_size, *counts(PRODUCT_LINES).values(), 0, 1, None),
    ]
    expected = spark.createDataFrame(
        [(run_id, *row) for row in expected_rows],
        "ingest_run_id string, kind string, source_file string, bytes long, lines_read long, "
        "accepted long, rejected long, blank long, header long, duplicates long, error string",
    )
    assert_df_equality(log, expected, ignore_row_order=True, ignore_nullable=True)
    for row in log.collect():
        assert row["lines_read"] == row["accepted"] + row["rejected"] + row["blank"], row
    # Spelled out for a.jsonl: duplicates count as accepted lines, stored once.
    a = log.filter(F.col("source_file") == uris["a"]).first()
    assert (a["lines_read"], a["accepted"], a["rejected"], a["blank"]) == (23, 6, 15, 2)


def test_summary_lists_the_log_rows(ingested):
    files = ingested["summary"]["files"]
    assert len(files) == 4
    assert sorted((f["kind"], f["source_file"]) for f in files) == sorted(
        [("reviews", ingested["uris"][k]) for k in ("a", "gz", "empty")]
        + [("products", ingested["uris"]["meta"])]
    )


def test_reingesting_the_same_files_changes_no_row(spark, ingested):
    config = ingested["config"]
    summary = run_ingest(spark, config)
    assert summary["ingest_run_id"] == ingested["summary"]["ingest_run_id"]
    after = snapshot(spark, config)
    for name in TABLES:
        assert after[name] == ingested["tables"][name], name
    assert len(after["bronze/reviews"]) == 5


# --- reject rate ----------------------------------------------------------------


def test_reject_rate_above_the_limit_fails_naming_file_and_top_reason(spark, config, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = [
        rec(),
        rec(rating="five", user_id="X"),
        rec(rating="5 stars", user_id="Y"),
        rec(drop=("user_id",)),
        "",
        "",
        "",
    ]
    bad.write_text("\n".join(lines) + "\n")
    config = config.with_overrides([f"input.reviews={bad}", "input.products="])
    assert config.require("input.max_reject_rate") == 0.05
    with pytest.raises(InputError) as err:
        run_ingest(spark, config)
    message = str(err.value)
    assert bad.as_uri() in message
    assert "3 of 4 lines rejected" in message  # blank lines are not counted
    assert "top reasons: rating is not a number (2); missing user id (1)" in message
    # Rejects and the log are written before the check; the reviews are not.
    assert table(spark, config, "bronze/rejects").count() == 3
    assert not io.table_exists(spark, io.table_path(config, "bronze/reviews"))


def _rejects(spark, rows):
    return spark.createDataFrame(rows, "source_file string, reason string")


def _log(name, read, rejected, blank=0):
    return {"source_file": name, "lines_read": read, "rejected": rejected, "blank": blank}


def test_reject_rate_at_the_limit_passes(spark):
    rejects = _rejects(spark, [("f", "missing rating")])
    ig.check_reject_rate([_log("f", 20, 1)], rejects, 0.05)  # 5% is not above 5%
    ig.check_reject_rate([_log("f", 0, 0), _log("g", 3, 0, blank=3)], rejects, 0.0)  # nothing read


def test_reject_rate_names_the_failing_file_and_its_own_top_reasons(spark):
    rejects = _rejects(
        spark,
        [("ok", "malformed JSON")] * 5
        + [("bad", "missing rating")] * 2
        + [("bad", "missing user id")] * 2
        + [("bad", "malformed JSON"), ("bad", "missing timestamp")],
    )
    log = [_log("ok", 1000, 5), _log("bad", 20, 6, blank=10)]
    with pytest.raises(InputError) as err:
        ig.check_reject_rate(log, rejects, 0.05)
    message = str(err.value)
    assert message.startswith("bad: 6 of 10 lines rejected (60.0% > input.max_reject_rate 5.0%)")
    # Count first, then name; three at most.
    assert "top reasons: missing rating (2); missing user id (2); malformed JSON (1). " in message


# --- listing and reading files -----------------------------------------------------


def test_glob_matching_nothing_is_an_input_error(spark, tmp_path):
    pattern = str(tmp_path / "nothing-*.jsonl")
    with pytest.raises(InputError, match="no input files match"):
        io.list_files(spark, pattern)


def test_folder_with_only_markers_is_an_input_error(spark, tmp_path):
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".part.crc").write_text("x")
    with pytest.raises(InputError, match="no input files match"):
        io.list_files(spark, str(tmp_path))


def test_run_ingest_with_missing_input_is_an_input_error(spark, config, tmp_path):
    config = config.with_overrides([f"input.reviews={tmp_path}/missing/*.jsonl.gz", "input.products="])
    with pytest.raises(InputError, match="missing"):
        run_ingest(spark, config)


def test_list_files_lists_a_folder_one_level_deep_sorted(spark, tmp_path):
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"{}\n"))
    (tmp_path / "a.jsonl").write_text("{}\n{}\n")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text("{}\n")
    files = io.list_files(spark, str(tmp_path))
    assert [Path(f.uri.removeprefix("file://")).name for f in files] == ["a.jsonl", "b.jsonl.gz"]
    assert [f.uri for f in files] == [(tmp_path / "a.jsonl").as_uri(), (tmp_path / "b.jsonl.gz").as_uri()]
    assert files[0].size == 6
    only_gz = io.list_files(spark, str(tmp_path / "*.gz"))
    assert [f.uri for f in only_gz] == [(tmp_path / "b.jsonl.gz").as_uri()]


def test_fingerprint_changes_when_a_file_changes(spark, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("{}\n")
    before = io.fingerprint(io.list_files(spark, str(path)))
    assert io.fingerprint(io.list_files(spark, str(path))) == before
    path.write_text("{}\n{}\n")
    assert io.fingerprint(io.list_files(spark, str(path))) != before


def test_line_numbers_follow_the_file_across_splits(spark, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"n": n, "pad": "x" * 40}) + "\n" for n in range(1, 121)))
    spark.conf.set("spark.sql.files.maxPartitionBytes", "512")  # about ten splits
    try:
        assert spark.read.text(str(path)).rdd.getNumPartitions() > 5
        lines = io.read_lines(spark, io.list_files(spark, str(path)))
        rows = lines.select("line_number", F.get_json_object("value", "$.n").cast("int").alias("n")).collect()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert len(rows) == 120
    assert all(r["line_number"] == r["n"] for r in rows)


def test_item_key_asin_and_rating_bounds_come_from_config(spark, config, tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        "\n".join([rec(rating=9.0), rec(drop=("asin",), user_id="U2"), rec(rating=11, user_id="U3")]) + "\n"
    )
    config = config.with_overrides(["input.item_key=asin", "input.rating_max=10"])
    accepted, rejects, _ = ig.ingest_source(spark, config, "reviews", io.list_files(spark, str(path)), "r1")
    assert [(r["item_id"], r["rating"]) for r in accepted.collect()] == [("A1-1", 9.0)]
    assert sorted((r["line_number"], r["reason"]) for r in rejects.collect()) == [
        (2, "missing item id"),
        (3, "rating outside [1, 10]"),
    ]
