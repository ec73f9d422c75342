"""A stage leaves nothing cached: every stage of a pipeline shares one driver."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from amazon_recs.pipeline.base import stage
from amazon_recs.spark import persisted_rdd_ids, share, unshare


def _cached_in_memory(spark) -> bool:
    return spark.range(7).storageLevel.useMemory


def test_a_stage_unpersists_what_it_cached_and_keeps_what_was_there(spark):
    kept = spark.sparkContext.parallelize(range(5)).setName("kept").persist()
    kept.count()
    inside = {}

    @stage
    def caching(spark, config):
        frame = spark.range(7).cache()
        frame.count()
        rdd = spark.sparkContext.parallelize(range(3)).persist()
        rdd.count()
        inside.update(rdd=rdd.id(), frame_cached=_cached_in_memory(spark), ids=persisted_rdd_ids(spark))
        return {"rows": frame.count()}

    try:
        assert caching(spark, None) == {"rows": 7}
        assert inside["frame_cached"] and inside["rdd"] in inside["ids"]
        after = persisted_rdd_ids(spark)
        assert inside["rdd"] not in after
        assert not _cached_in_memory(spark)  # the DataFrame cache is gone too
        assert kept.id() in after  # persisted before the stage: not the stage's to drop
    finally:
        kept.unpersist()


def test_a_failing_stage_still_releases_its_caches(spark):
    before = persisted_rdd_ids(spark)

    @stage
    def failing(spark, config):
        spark.sparkContext.parallelize(range(3)).persist().count()
        spark.range(7).cache().count()
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        failing(spark, None)
    assert persisted_rdd_ids(spark) <= before
    assert not _cached_in_memory(spark)


def _driver_holds(spark, shared) -> bool:
    """Whether the driver's block store still holds any block of this broadcast."""
    prefix = f"broadcast_{shared._jbroadcast.id()}"
    blocks = (
        spark.sparkContext._jvm.org.apache.spark.SparkEnv.get().blockManager().blockInfoManager().entries()
    )
    while blocks.hasNext():
        name = blocks.next()._1().name()
        if name == prefix or name.startswith(prefix + "_"):
            return True
    return False


def _released(spark, shared, seconds: float = 10.0) -> bool:
    """Destroying is asynchronous in the block store: wait for it, briefly."""
    deadline = time.monotonic() + seconds
    while _driver_holds(spark, shared) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _driver_holds(spark, shared)


def test_a_stage_destroys_the_broadcasts_it_shared_and_keeps_the_older_ones(spark):
    older = share(spark, list(range(1000)))
    inside = {}

    @stage
    def scoring(spark, config):
        table = share(spark, {i: i * i for i in range(1000)})
        done_early = share(spark, "read by one job only")
        rows = spark.range(5).rdd.map(lambda r: table.value[r.id] + len(done_early.value)).collect()
        unshare(done_early)
        inside.update(table=table, done_early=done_early, in_driver=_driver_holds(spark, table))
        return {"rows": rows}

    try:
        assert scoring(spark, None) == {"rows": [20, 21, 24, 29, 36]}
        assert inside["in_driver"]
        for shared in (inside["table"], inside["done_early"]):
            assert not shared._jbroadcast.isValid()
            assert _released(spark, shared)
        assert older._jbroadcast.isValid() and _driver_holds(spark, older)
        assert spark.range(3).rdd.map(lambda r: older.value[r.id + 10]).collect() == [10, 11, 12]
    finally:
        unshare(older)


def _mapped_in_worker(shared, column: str):
    """What a Python worker sees of a mapped share: its arrays' sums, whether they
    can be written, and whether they are views of a file the worker has mapped."""

    def probe(batches):
        import pandas as pd

        value = shared.value
        array = value[column]
        maps = open("/proc/self/maps").read()  # noqa: SIM115 (read whole, at once)
        for batch in batches:
            yield pd.DataFrame(
                {
                    "sum": [float(array.sum())] * len(batch),
                    "writeable": [bool(array.flags.writeable)] * len(batch),
                    "mapped": [shared.name in maps] * len(batch),
                    "text": [value["text"]] * len(batch),
                }
            )

    return probe


def test_a_mapped_share_reaches_the_workers_as_read_only_views_of_one_file(spark):
    factors = np.arange(30_000, dtype=np.float32).reshape(-1, 3)[:, 1]  # not contiguous: pickled in band
    value = {
        "ids": np.arange(10_000, dtype=np.int32),
        "factors": factors,
        "sims": np.linspace(0.0, 1.0, 7),
        "empty": np.empty(0, np.int64),
        "text": "kept as it was",
    }
    inside = {}

    @stage
    def mapping(spark, config):
        shared = share(spark, value, mapped=True)
        rows = (
            spark.range(4, numPartitions=2)
            .mapInPandas(
                _mapped_in_worker(shared, "ids"), "sum double, writeable boolean, mapped boolean, text string"
            )
            .collect()
        )
        inside.update(shared=shared, rows=rows, on_driver=shared.value)
        return {}

    mapping(spark, None)
    rows = inside["rows"]
    assert len(rows) == 4
    assert {r.sum for r in rows} == {float(np.arange(10_000).sum())}
    assert not any(r.writeable for r in rows)  # views of the file, which no task may change
    assert all(r.mapped for r in rows)
    assert {r.text for r in rows} == {"kept as it was"}
    seen = inside["on_driver"]
    for key in ("ids", "factors", "sims", "empty"):
        assert seen[key].dtype == value[key].dtype and np.array_equal(seen[key], value[key])
    # The stage's end destroyed it: the driver's file is gone.
    assert not os.path.exists(inside["shared"]._path)


def test_a_saved_catalogue_is_shared_as_it_is_and_outlives_the_share(spark, config):
    """What the recommend stage saves beside a version's models reaches the workers as
    views of that very file, which stays when the share goes; a version without one
    has none to share."""
    from amazon_recs.pipeline import versions

    value = {"ids": np.arange(5_000, dtype=np.int32), "text": "the recommend stage's"}
    saved = versions.save_catalogue(spark, config, "v1", value)
    assert saved == f"{versions.model_dir(config, 'v1')}/{versions.CATALOGUE_FILE}"
    versions.save_catalogue(spark, config, "v1", value)  # a re-run replaces it whole
    assert sorted(os.listdir(versions.model_dir(config, "v1"))) == [versions.CATALOGUE_FILE]
    inside = {}

    @stage
    def mapping(spark, config):
        shared = versions.share_catalogue(spark, config, "v1")
        rows = (
            spark.range(4, numPartitions=2)
            .mapInPandas(
                _mapped_in_worker(shared, "ids"), "sum double, writeable boolean, mapped boolean, text string"
            )
            .collect()
        )
        inside.update(shared=shared, rows=rows, missing=versions.share_catalogue(spark, config, "v2"))
        return {}

    mapping(spark, config)
    rows = inside["rows"]
    assert {r.sum for r in rows} == {float(np.arange(5_000).sum())}
    assert all(r.mapped for r in rows) and not any(r.writeable for r in rows)
    assert {r.text for r in rows} == {"the recommend stage's"}
    assert inside["missing"] is None
    assert not os.path.exists(inside["shared"]._path)  # the share's link is gone
    assert os.path.isfile(saved)  # the version's file is not
