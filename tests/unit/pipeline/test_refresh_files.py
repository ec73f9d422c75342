"""Refresh opens only the event files its version has not seen."""

from __future__ import annotations

from amazon_recs import io, schemas
from amazon_recs.io import InputFile
from amazon_recs.pipeline.refresh import unseen_files

SEEN = "silver/event_files"


def _file(name: str, size: int) -> InputFile:
    return InputFile(f"/events/{name}", f"file:///events/{name}", size, 1_700_000_000_000)


def test_refresh_skips_the_files_the_version_saw_and_reads_new_and_appended_ones(spark, config):
    seen = [("file:///events/a.json", 10, "run1"), ("file:///events/b.json", 20, "run1")]
    io.overwrite_table(spark.createDataFrame(seen, schemas.EVENT_FILES), config, SEEN)
    info = {"inputs": {SEEN: io.table_version(spark, config, SEEN)}}
    # A later features run (another version's) lists more: this version keeps its commit.
    later = seen + [("file:///events/c.json", 5, "run2")]
    io.overwrite_table(spark.createDataFrame(later, schemas.EVENT_FILES), config, SEEN)

    listed = [_file("a.json", 10), _file("b.json", 26), _file("c.json", 5), _file("d.json", 7)]
    unseen = unseen_files(spark, config, listed, info)
    # b.json was appended to since (26 bytes, not 20); c.json came after this version.
    assert [f.uri.rsplit("/", 1)[1] for f in unseen] == ["b.json", "c.json", "d.json"]


def test_a_version_trained_before_event_files_were_recorded_reads_every_file(spark, config):
    listed = [_file("a.json", 10), _file("b.json", 20)]
    assert unseen_files(spark, config, listed, {"inputs": {"silver/interactions": 3}}) == listed
    assert unseen_files(spark, config, [], {}) == []
