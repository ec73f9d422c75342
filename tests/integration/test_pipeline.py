"""The whole pipeline on a small generated sample, as `make run` runs it."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import load_config
from amazon_recs.errors import ConfigError
from amazon_recs.pipeline import versions
from amazon_recs.pipeline.recommend import hybrid_weights
from amazon_recs.pipeline.registry import STAGE_ORDER, stage_function
from amazon_recs.schemas import MODELS
from amazon_recs.spark import persisted_rdd_ids
from tests.conftest import ROOT, TEST_CONFIG
from tests.tables import assert_same_rows, sorted_rows

pytestmark = pytest.mark.integration

K = 10
REPORT_FILES = ("metrics.md", "metrics_by_model.png", "metrics_at_k.png")


def run_all(spark, config) -> dict:
    return {stage: stage_function(stage)(spark, config) for stage in STAGE_ORDER}


@pytest.fixture(scope="module")
def pipeline(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = load_config(
        TEST_CONFIG,
        [
            f"paths.raw={root / 'raw'}",
            f"paths.warehouse={root / 'warehouse'}",
            f"paths.models={root / 'models'}",
            f"paths.reports={root / 'reports'}",
        ],
    )
    before = persisted_rdd_ids(spark)
    summaries = run_all(spark, config)
    summaries["left_persisted"] = persisted_rdd_ids(spark) - before
    return config, summaries


def test_ingest_reconciles_every_line(spark, pipeline):
    config, summaries = pipeline
    files = summaries["ingest"]["files"]
    assert {f["kind"] for f in files} == {"reviews", "products"}
    for f in files:
        assert f["lines_read"] > 0
        assert f["lines_read"] == f["accepted"] + f["rejected"] + f["blank"]
    rejects = io.read_table(spark, config, "bronze/rejects").count()
    assert rejects == sum(f["rejected"] for f in files) > 0  # the sample plants bad lines


def test_the_pipeline_leaves_nothing_persisted(pipeline):
    # Caches (and the broadcast tables their plans hold) would otherwise pile
    # up in a driver that runs pipeline after pipeline, until its heap is gone.
    _, summaries = pipeline
    assert summaries["left_persisted"] == set()


def test_every_user_gets_ten_distinct_unseen_products_per_model(spark, pipeline):
    config, _ = pipeline
    recs = io.read_table(spark, config, "gold/recommendations")
    interactions = io.read_table(spark, config, "silver/interactions")
    users = interactions.filter("split = 'train'").select("user_id").distinct().count()

    per_user = recs.groupBy("model", "user_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.countDistinct("item_id").alias("distinct_items"),
        F.collect_set("rank").alias("ranks"),
    )
    summary = {
        r["model"]: r
        for r in per_user.groupBy("model")
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.min("n").alias("min_n"),
            F.max("n").alias("max_n"),
            F.min("distinct_items").alias("min_distinct"),
            F.min(F.size("ranks")).alias("min_ranks"),
        )
        .collect()
    }
    assert set(summary) == set(MODELS)
    for model, row in summary.items():
        assert row["users"] == users, model
        assert (row["min_n"], row["max_n"], row["min_distinct"], row["min_ranks"]) == (K, K, K, K), model

    seen = interactions.filter("split = 'train'").select("user_id", "item_id")
    leaked = recs.join(seen, ["user_id", "item_id"], how="inner").count()
    assert leaked == 0


def test_metrics_show_the_planted_structure(spark, pipeline):
    config, _ = pipeline
    metrics = {
        (r["model"], r["metric"]): r["value"] for r in io.read_table(spark, config, "gold/metrics").collect()
    }
    for model in MODELS:
        for metric in ("precision", "recall", "ndcg"):
            assert 0.0 <= metrics[(model, metric)] <= 1.0
    assert metrics[("als", "ndcg")] > metrics[("popular", "ndcg")]
    assert metrics[("hybrid", "ndcg")] > metrics[("popular", "ndcg")]
    # Random is the floor; popularity is a real signal on a long-tailed shop.
    assert metrics[("random", "ndcg")] < metrics[("popular", "ndcg")]
    assert metrics[("random", "novelty")] > metrics[("popular", "novelty")]


def test_reasons_and_serving_layout(spark, pipeline):
    config, summaries = pipeline
    recs = io.read_table(spark, config, "gold/recommendations")
    assert recs.filter(F.col("reason").isNull()).count() == 0
    assert recs.filter("model = 'als' AND reason LIKE 'because you rated %'").count() > 0
    serving = io.read_table(spark, config, "gold/user_recommendations")
    first = serving.filter("model = 'hybrid'").orderBy("user_id").first()
    assert [item["rank"] for item in first["items"]] == list(range(1, K + 1))
    ddl = io.read_text(spark, summaries["export"]["athena_ddl"])
    assert "TBLPROPERTIES ('table_type'='DELTA')" in ddl


def report_files(config) -> dict[str, bytes]:
    reports = Path(config.require("paths.reports"))
    return {name: (reports / name).read_bytes() for name in REPORT_FILES}


def test_report_holds_every_model_and_the_plots(pipeline):
    config, summaries = pipeline
    files = report_files(config)
    text = files["metrics.md"].decode()
    for model in MODELS:
        assert f"| {model} |" in text
    for png in REPORT_FILES[1:]:
        assert files[png].startswith(b"\x89PNG\r\n\x1a\n"), png
        assert f"]({png})" in text
        width, height = struct.unpack(">II", files[png][16:24])
        assert width > 400 and height > 200, png

    curve = summaries["evaluate"]["curve"]
    assert {r["k"] for r in curve} == set(config.require("evaluate.curve_ks"))
    at_10 = {(r["model"], r["metric"]): r["value"] for r in summaries["evaluate"]["metrics"]}
    for model in MODELS:
        for metric in ("recall", "hit_rate"):  # can only grow with k
            values = [
                r["value"]
                for r in sorted(curve, key=lambda r: r["k"])
                if (r["model"], r["metric"]) == (model, metric)
            ]
            assert values == sorted(values), (model, metric)
        # The curve's k=10 point is the report's figure.
        ndcg_10 = next(r["value"] for r in curve if (r["model"], r["metric"], r["k"]) == (model, "ndcg", K))
        assert ndcg_10 == pytest.approx(at_10[(model, "ndcg")])


def test_rerun_gives_the_same_tables_and_report(spark, pipeline):
    config, summaries = pipeline
    before = {
        t: sorted_rows(spark, config, t)
        for t in ("bronze/reviews", "silver/user_ids", "gold/recommendations", "gold/metrics")
    }
    report_before = report_files(config)
    version_dir = Path(summaries["train"]["model_dir"])
    # The recommend stage's catalogue, saved beside the models, is written again whole.
    catalogue = version_dir / versions.CATALOGUE_FILE
    catalogue_before = catalogue.read_bytes()
    saved = {f: f.stat().st_mtime_ns for f in version_dir.rglob("*") if f != catalogue}
    again = run_all(spark, config)
    assert again["train"]["model_version"] == summaries["train"]["model_version"]
    # Versions are immutable: the same inputs find their version saved and reuse it.
    assert (summaries["train"]["reused"], again["train"]["reused"]) == (False, True)
    assert {f: f.stat().st_mtime_ns for f in version_dir.rglob("*") if f != catalogue} == saved
    assert catalogue.read_bytes() == catalogue_before
    for table, rows in before.items():
        assert_same_rows(sorted_rows(spark, config, table), rows, table)
    assert report_files(config) == report_before


def test_bad_setting_is_one_line_and_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "amazon_recs.cli", "run", "--config", "conf/local.yaml", "--set", "als.rnk=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown setting 'als.rnk'")
    assert "Traceback" not in result.stderr


def test_tuning_on_validation_is_recorded_and_used(spark, pipeline):
    config, summaries = pipeline
    tuning = summaries["train"]["tuning"]
    grid = config.require("tune.als_grid")
    assert len(tuning["als_grid"]) == len(grid["rank"]) * len(grid["reg_param"]) * len(grid["alpha"])
    assert tuning["als"] == {k: max(tuning["als_grid"], key=lambda r: r["ndcg"])[k] for k in grid}
    assert sum(tuning["hybrid_weights"].values()) == pytest.approx(1.0)
    version = summaries["train"]["model_version"]
    assert hybrid_weights(spark, config, version) == tuning["hybrid_weights"]
    report = io.read_text(spark, summaries["evaluate"]["report"])
    assert "## Tuning" in report and "validation" in report
    # Item-kNN is tuned over its own grid, and the version keeps the chosen model.
    knn_grid = config.require("tune.item_knn_grid")
    assert len(tuning["item_knn_grid"]) == len(knn_grid["neighbours"]) * len(knn_grid["shrinkage"])
    assert tuning["item_knn"] in [{k: r[k] for k in knn_grid} for r in tuning["item_knn_grid"]]
    assert "Item-kNN" in report
    from amazon_recs.pipeline import versions

    info = versions.model_info(spark, config, version)
    assert info["item_knn_params"]["neighbours"] == tuning["item_knn"]["neighbours"]
    saved = spark.read.format("delta").load(
        f"{versions.model_dir(config, version)}/{versions.ITEM_KNN_NEIGHBOURS}"
    )
    assert saved.count() == info["item_knn_pairs"] == summaries["train"]["item_knn_pairs"] > 0
    per_item = saved.groupBy("item_idx").count().agg(F.max("count")).first()[0]
    assert per_item <= tuning["item_knn"]["neighbours"]


def test_the_gold_table_store_serves_the_export_without_spark(spark, pipeline):
    from amazon_recs.pipeline.versions import model_dir
    from amazon_recs.serving import gold_tables, stores

    config, summaries = pipeline
    version = summaries["train"]["model_version"]
    store = stores.store_from_config(config)
    assert isinstance(store, gold_tables.GoldTableStore)
    assert store.current_version()["model_version"] == version

    served = sorted(
        io.read_table(spark, config, "gold/user_recommendations").collect(), key=lambda r: tuple(r[:2])
    )
    for row in served[:: max(1, len(served) // 60)]:
        got = store.get_recommendations(row["user_id"], row["model"])
        assert (got.fallback, got.model_version) == (False, version)
        assert got.items == [item.asDict() for item in row["items"]]

    # An unknown user gets gold/popular_fallback, the list the export also
    # publishes to DynamoDB: the version's k highest popularity scores.
    unknown = store.get_recommendations("never-seen-user", "hybrid")
    fallback = io.read_table(spark, config, "gold/popular_fallback").orderBy("rank").collect()
    assert {r["model_version"] for r in fallback} == {version}
    assert unknown.fallback and len(unknown.items) == K
    assert unknown.items == [{k: v for k, v in r.asDict().items() if k != "model_version"} for r in fallback]
    popularity = spark.read.format("delta").load(f"{model_dir(config, version)}/popularity")
    top = (
        popularity.join(io.read_table(spark, config, "silver/items"), "item_idx")
        .orderBy(F.desc("score"), "item_idx")
        .limit(K)
    )
    assert [i["item_id"] for i in unknown.items] == [r["item_id"] for r in top.collect()]
    assert all(i["reason"].startswith("popular ") for i in unknown.items)

    user = served[0]["user_id"]
    interactions = io.read_table(spark, config, "silver/interactions").filter(F.col("user_id") == user)
    newest_first = [r["item_id"] for r in interactions.orderBy(F.desc("ts"), "item_id").collect()]
    assert [r["item_id"] for r in store.history(user)] == newest_first
    assert len(store.metrics()) == io.read_table(spark, config, "gold/metrics").count()


def test_later_stages_read_the_commits_the_model_was_trained_on(spark, pipeline):
    from delta.tables import DeltaTable

    from amazon_recs.pipeline import versions

    config, _ = pipeline
    version = versions.current_version(spark, config)
    inputs = versions.model_info(spark, config, version)["inputs"]
    assert set(inputs) == set(versions.INPUT_TABLES)
    # The commits train read: the latest when it was fitted (the rerun above wrote the same
    # rows again as new commits and reused the saved version, which keeps its own).
    for name in versions.INPUT_TABLES:
        assert 0 <= inputs[name] <= io.table_version(spark, config, name), name
    metrics = sorted_rows(spark, config, "gold/metrics")
    # The split changes under the trained model (a features run in between): every
    # held-out row is gone from the latest commit.
    io.overwrite_table(
        io.read_table(spark, config, "silver/interactions").filter("split = 'train'"),
        config,
        "silver/interactions",
    )
    assert io.read_table(spark, config, "silver/interactions").filter("split = 'test'").count() == 0
    try:
        stage_function("evaluate")(spark, config)
        # measured on the pinned split
        assert_same_rows(sorted_rows(spark, config, "gold/metrics"), metrics, "gold/metrics")
    finally:
        path = io.table_path(config, "silver/interactions")
        DeltaTable.forPath(spark, path).restoreToVersion(inputs["silver/interactions"])
    assert io.read_table(spark, config, "silver/interactions").filter("split = 'test'").count() > 0


def test_a_version_is_visible_only_once_saved_whole(spark, pipeline, monkeypatch):
    """A train run that dies while saving leaves no version directory and the pointer
    where it was; the next run clears the leftover and saves the version whole."""
    from amazon_recs.pipeline import versions

    config, _ = pipeline
    models = Path(config.require("paths.models"))
    current = versions.current_version(spark, config)
    other = config.with_overrides(["tune.enabled=false"])  # other settings: another version

    def killed(*args):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(versions, "complete", killed)
    with pytest.raises(KeyboardInterrupt):
        stage_function("train")(spark, other)
    monkeypatch.undo()
    (staged,) = models.glob(f"{versions.STAGING}*")
    assert (staged / "als").is_dir() and (staged / "model_info.json").is_file()
    version = staged.name.removeprefix(versions.STAGING).rsplit("-", 1)[0]
    assert version != current and not (models / version).exists()
    assert versions.current_version(spark, other) == current  # readers still see the old one
    try:
        summary = stage_function("train")(spark, other)
        assert (summary["model_version"], summary["reused"]) == (version, False)
        assert versions.is_complete(spark, other, version) and not list(models.glob(f"{versions.STAGING}*"))
        assert versions.current_version(spark, other) == version
        with pytest.raises(ConfigError, match="is saved already and versions are immutable"):
            stage_function("train")(spark, other.with_overrides([f"run.model_version={version}"]))
    finally:
        io.write_text(spark, versions.pointer_path(config), current)
