"""A stage leaves nothing cached: every stage of a pipeline shares one driver."""

from __future__ import annotations

import pytest

from amazon_recs.pipeline.base import stage
from amazon_recs.spark import persisted_rdd_ids


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
