"""io.write_version / read_version / drop_versions: gold tables that keep one partition
per model version, so an export never rewrites the rows a reader of the previous
version is reading."""

from __future__ import annotations

from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from amazon_recs import io

SCHEMA = "user_id string, model string, rank int, model_version string"


def rows(spark, version, users, models=("als", "hybrid")):
    data = [(u, m, r, version) for u in users for m in models for r in (1, 2)]
    return spark.createDataFrame(data + data[:1], SCHEMA)  # a duplicated row is kept as written


def held(spark, config, name):
    table = io.read_table(spark, config, name)
    return sorted((r.model_version, r["count"]) for r in table.groupBy("model_version").count().collect())


def test_a_version_is_replaced_alone_and_the_others_are_left_as_written(spark, config):
    name = "gold/recommendations"
    io.write_version(rows(spark, "v1", ["a", "b"]), config, name, "v1", ["model"])
    io.write_version(rows(spark, "v2", ["a", "b", "c"]), config, name, "v2", ["model"])
    path = io.table_path(config, name)
    v1_files = sorted((Path(path) / "model_version=v1").rglob("*.parquet"))
    assert v1_files
    commit = io.table_version(spark, config, name)

    io.write_version(rows(spark, "v2", ["d"]), config, name, "v2", ["model"])  # a re-export of v2

    assert held(spark, config, name) == [("v1", 9), ("v2", 5)]
    assert sorted((Path(path) / "model_version=v1").rglob("*.parquet")) == v1_files
    assert sorted(io.read_version(spark, config, name, "v1").collect()) == sorted(
        rows(spark, "v1", ["a", "b"]).collect()
    )
    assert io.table_version(spark, config, name) == commit + 1  # one commit
    assert io.partition_columns(spark, path) == ["model_version", "model"]
    got = io.read_version(spark, config, name, "v2").select("user_id").distinct().collect()
    assert [r.user_id for r in got] == ["d"]
    # A reader of the commit before the re-export still reads that v2 whole.
    old = io.read_table(spark, config, name, commit).filter(F.col("model_version") == "v2")
    assert old.select("user_id").distinct().count() == 3


def test_rows_of_another_version_are_refused(spark, config):
    io.write_version(rows(spark, "v1", ["a"]), config, "gold/metrics", "v1")
    with pytest.raises(Exception, match="(?i)replaceWhere|does not conform|DELTA_REPLACE_WHERE_MISMATCH"):
        io.write_version(rows(spark, "v3", ["a"]), config, "gold/metrics", "v2")
    assert held(spark, config, "gold/metrics") == [("v1", 5)]


def test_a_table_of_the_old_layout_is_rewritten_once_in_the_new_one(spark, config):
    """Gold tables written before they were kept per version (partitioned by model, or
    not at all) are replaced whole by the first export of the new code."""
    name = "gold/user_recommendations"
    io.overwrite_table(rows(spark, "v0", ["a", "b"]), config, name, partition_by=["model"])
    io.write_version(rows(spark, "v1", ["c"]), config, name, "v1", ["model"])
    assert held(spark, config, name) == [("v1", 5)]
    assert io.partition_columns(spark, io.table_path(config, name)) == ["model_version", "model"]


def test_old_versions_are_dropped_by_partition_and_named(spark, config):
    name = "gold/popular_fallback"
    for version in ("v1", "v2", "v3"):
        io.write_version(rows(spark, version, ["a"]), config, name, version)
    commit = io.table_version(spark, config, name)
    assert io.drop_versions(spark, config, name, ["v3", "v2"]) == ["v1"]
    assert held(spark, config, name) == [("v2", 5), ("v3", 5)]
    assert io.drop_versions(spark, config, name, ["v3", "v2"]) == []  # nothing to do: no commit
    assert io.table_version(spark, config, name) == commit + 1
    history = DeltaTable.forPath(spark, io.table_path(config, name)).history(1).first()
    assert history["operation"] == "DELETE"
    assert io.drop_versions(spark, config, "gold/absent", ["v3"]) == []


def test_a_stage_reading_lists_the_current_version_lacks_is_told_to_run_recommend(spark, config):
    from amazon_recs.errors import StageOrderError
    from amazon_recs.pipeline import versions

    io.write_version(rows(spark, "v1", ["a"]), config, "gold/recommendations", "v1", ["model"])
    assert versions.read_lists(spark, config, "v1", "evaluate").count() == 5
    with pytest.raises(
        StageOrderError, match="no lists of the current version v2: run the recommend stage before export"
    ):
        versions.read_lists(spark, config, "v2", "export")
