"""The public data sets in ../shared/data, end to end: exact reconciliation,
idempotent re-ingest, and recommendations plus metrics for each.

Skipped with a reason where the files are absent (a user's own clone).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.pipeline.registry import STAGE_ORDER, stage_function
from amazon_recs.schemas import MODELS
from tests.conftest import ROOT, SHARED_DATA, shared_data

pytestmark = pytest.mark.integration

# dataset -> (a folder it needs, {file name: lines in the file}) from ../shared/data/README.md
DATASETS = {
    "gift_cards": (
        "amazon-2018/gift_cards",
        {"Gift_Cards_5.json.gz": 2972, "meta_Gift_Cards.json.gz": 1547},
    ),
    "all_beauty": ("amazon-2018/all_beauty", {"All_Beauty_5.json.gz": 5269}),
    "ml-latest-small": (
        "movielens/ml-latest-small",
        # ratings and movies carry a header line each, tags too
        {"ratings.csv": 100837, "movies.csv": 9743, "tags.csv": 3684},
    ),
}
BRONZE = ("bronze/reviews", "bronze/products", "bronze/item_tags", "bronze/rejects", "bronze/ingest_log")
# Smaller models than `make run` uses: these tests check the plumbing on real
# shapes; quality is measured by the benchmarks.
FAST = [
    "als.rank=16",
    "als.max_iter=8",
    # The configured LSH, not the exact search `auto` picks for these catalogues:
    # its recall on real product text is checked below.
    "content.method=lsh",
    "recommend.candidates=40",
    "tune.als_grid={rank: [16], reg_param: [0.1], alpha: [5.0]}",
    "tune.weight_step=0.25",
]


def snapshot(spark, config) -> dict[str, list]:
    out = {}
    for name in BRONZE:
        path = io.table_path(config, name)
        if io.table_exists(spark, path):
            out[name] = sorted(spark.read.format("delta").load(path).collect(), key=repr)
    return out


@pytest.fixture(scope="module", params=list(DATASETS))
def dataset(request, spark, tmp_path_factory):
    name = request.param
    folder, files = DATASETS[name]
    shared_data(folder)  # skips when absent
    root = tmp_path_factory.mktemp(name)
    config = load_config(
        ROOT / "conf" / f"{name}.yaml",
        [
            f"paths.shared_data={SHARED_DATA}",
            f"paths.raw={root / 'raw'}",
            f"paths.warehouse={root / 'warehouse'}",
            f"paths.models={root / 'models'}",
            f"paths.reports={root / 'reports'}",
            *FAST,
        ],
    )
    ingest = stage_function("ingest")(spark, config)
    first = snapshot(spark, config)
    second_ingest = stage_function("ingest")(spark, config)
    second = snapshot(spark, config)
    summaries = {stage: stage_function(stage)(spark, config) for stage in STAGE_ORDER if stage != "ingest"}
    return {
        "name": name,
        "config": config,
        "files": files,
        "ingest": ingest,
        "second_ingest": second_ingest,
        "first": first,
        "second": second,
        "summaries": summaries,
    }


def test_ingest_reconciles_exactly(spark, dataset):
    log = {row["source_file"].rsplit("/", 1)[-1]: row for row in dataset["ingest"]["files"]}
    assert {name: row["lines_read"] for name, row in log.items()} == dataset["files"]
    for row in log.values():
        assert row["error"] is None
        assert row["lines_read"] == row["accepted"] + row["rejected"] + row["blank"] + row["header"]
    # A bronze table holds one row per natural key: accepted lines less duplicates.
    config = dataset["config"]
    for kind, table in (
        ("reviews", "bronze/reviews"),
        ("products", "bronze/products"),
        ("tags", "bronze/item_tags"),
    ):
        rows = [r for r in log.values() if r["kind"] == kind]
        if rows:
            expected = sum(r["accepted"] - r["duplicates"] for r in rows)
            assert io.read_table(spark, config, table).count() == expected, table
    rejected = sum(r["rejected"] for r in log.values())
    assert io.read_table(spark, config, "bronze/rejects").count() == rejected


def test_second_ingest_changes_no_row(dataset):
    assert dataset["second_ingest"]["ingest_run_id"] == dataset["ingest"]["ingest_run_id"]
    assert dataset["second"].keys() == dataset["first"].keys()
    for table, rows in dataset["first"].items():
        assert dataset["second"][table] == rows, table


def test_every_user_gets_ten_unseen_products_from_every_model(spark, dataset):
    config = dataset["config"]
    recs = io.read_table(spark, config, "gold/recommendations")
    train = io.read_table(spark, config, "silver/interactions").filter("split = 'train'")
    users = train.select("user_id").distinct().count()
    per_model = {
        r["model"]: r
        for r in recs.groupBy("model", "user_id")
        .agg(F.countDistinct("item_id").alias("n"))
        .groupBy("model")
        .agg(F.count(F.lit(1)).alias("users"), F.min("n").alias("lo"), F.max("n").alias("hi"))
        .collect()
    }
    assert set(per_model) == set(MODELS)
    for model, row in per_model.items():
        assert (row["users"], row["lo"], row["hi"]) == (users, 10, 10), model
    assert recs.join(train.select("user_id", "item_id"), ["user_id", "item_id"], how="inner").count() == 0


def test_metrics_for_every_model(spark, dataset):
    metrics = io.read_table(spark, dataset["config"], "gold/metrics")
    got = {(r["model"], r["metric"]) for r in metrics.collect()}
    for model in MODELS:
        for metric in ("precision", "recall", "ndcg", "map", "hit_rate", "mrr", "coverage", "novelty"):
            assert (model, metric) in got
    ndcg = {r["model"]: r["value"] for r in metrics.filter("metric = 'ndcg'").collect()}
    # Real structure exists in all three: collaborative filtering beats popularity.
    assert ndcg["als"] > ndcg["popular"], ndcg


def test_lsh_finds_the_exact_neighbours_of_real_product_text(spark, dataset):
    train = dataset["summaries"]["train"]
    if dataset["name"] == "all_beauty":  # reviews only: no product has text
        assert (train["neighbour_method"], train["lsh_recall"]) == (None, None)
        return
    assert train["neighbour_method"] == "lsh"
    assert train["lsh_recall"] >= 0.9, train["lsh_recall"]
    report = (Path(dataset["config"].require("paths.reports")) / "metrics.md").read_text()
    assert f"LSH found {train['lsh_recall']:.1%} of the exact" in report


def test_cold_item_slice_is_measured(spark, dataset):
    metrics = io.read_table(spark, dataset["config"], "gold/metrics")
    cold = dataset["summaries"]["evaluate"]["cold"]
    assert 0 < cold["interactions"] < cold["test_interactions"]
    rows = metrics.filter(F.col("metric").startswith("cold_")).collect()
    got = {(r["model"], r["metric"]): r for r in rows}
    for model in MODELS:
        assert got[(model, "cold_ndcg")]["users"] == cold["users"]
    # What the slice holds decides what a model can do on it, and the report says it.
    report = (Path(dataset["config"].require("paths.reports")) / "metrics.md").read_text()
    assert f"from {cold['users']} users, with {cold['items']} products" in report
    new = cold["new_item_interactions"]
    if dataset["name"] == "gift_cards":
        # 1,547 products in the metadata, 148 of them reviewed, all before the test split.
        assert new == 0 and "None of these products is new" in report
    elif dataset["name"] == "all_beauty":
        # Reviews only, and most of the slice is products first reviewed in the test split.
        assert new > cold["interactions"] / 2
        assert f"{new} of these interactions are with products that had no training interaction" in report
        assert "no model here has a signal for those, since no product has text" in report


MARKUP = r"<[a-zA-Z/!]|&[a-zA-Z]+;|&#[0-9]+;|&#[xX][0-9a-fA-F]+;"


def test_displayed_text_is_never_markup_or_escaped(spark, dataset):
    config = dataset["config"]
    items = io.read_table(spark, config, "silver/items")
    for column in ("title", "category", "brand"):
        bad = items.filter(F.col(column).rlike(MARKUP)).select(column).limit(3).collect()
        assert not bad, (column, bad)
    served = io.read_table(spark, config, "gold/user_recommendations").select(F.explode("items").alias("i"))
    assert not served.filter(F.col("i.title").rlike(MARKUP) | F.col("i.reason").rlike(MARKUP)).take(1)
    cleaning = dataset["summaries"]["features"]["text_cleaning"]
    if dataset["name"] == "gift_cards":
        # 1,547 products, their titles escaped like "Maggiano&#39;s Gift Card": decoded, counted.
        assert cleaning["title"]["entities_decoded"] >= 100, cleaning
        titles = {r["title"] for r in items.select("title").collect()}
        assert "Maggiano's Gift Card" in titles
        assert "Maggiano s Gift Card" not in titles
