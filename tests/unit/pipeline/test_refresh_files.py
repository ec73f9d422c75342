"""Refresh opens only the event files its version has not seen, in the recent day folders."""

from __future__ import annotations

from amazon_recs import io, schemas
from amazon_recs.pipeline.ingest import unread_event_files
from amazon_recs.pipeline.refresh import seen_event_files

SEEN = "silver/event_files"


def _land(root, day: str, name: str, size: int) -> str:
    folder = root / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("x" * (size - 1) + "\n")
    return f"file://{folder / name}"


def _names(files) -> list[str]:
    return sorted(f.uri.rsplit("/", 2)[1] + "/" + f.uri.rsplit("/", 1)[1] for f in files)


def test_refresh_skips_the_files_the_version_saw_and_reads_new_and_appended_ones(spark, config, tmp_path):
    root = tmp_path / "events"
    config = config.with_overrides([f"input.events={root}/dt=*/*.json"])
    a = _land(root, "2026-01-01", "a.json", 10)
    b = _land(root, "2026-01-01", "b.json", 20)
    seen = [(a, 10, "run1"), (b, 20, "run1")]
    io.overwrite_table(spark.createDataFrame(seen, schemas.EVENT_FILES), config, SEEN)
    info = {"inputs": {SEEN: io.table_version(spark, config, SEEN)}}
    # A later features run (another version's) lists more: this version keeps its commit.
    c = _land(root, "2026-01-01", "c.json", 5)
    io.overwrite_table(spark.createDataFrame(seen + [(c, 5, "run2")], schemas.EVENT_FILES), config, SEEN)
    _land(root, "2026-01-01", "b.json", 26)  # appended to since this version read it
    _land(root, "2026-01-02", "d.json", 7)

    listed, unseen, since = unread_event_files(spark, config, seen_event_files(spark, config, info))

    assert since == "2025-12-31"  # a day before the newest day the version read (events.relisted_days)
    assert len(listed) == 4
    assert _names(unseen) == ["dt=2026-01-01/b.json", "dt=2026-01-01/c.json", "dt=2026-01-02/d.json"]


def test_a_version_trained_before_event_files_were_recorded_reads_every_file(spark, config, tmp_path):
    root = tmp_path / "events"
    config = config.with_overrides([f"input.events={root}/dt=*/*.json"])
    _land(root, "2020-01-01", "a.json", 10)
    _land(root, "2026-01-01", "b.json", 20)
    info = {"inputs": {"silver/interactions": 3}}
    listed, unseen, since = unread_event_files(spark, config, seen_event_files(spark, config, info))
    assert (
        since is None
        and listed == unseen
        and _names(unseen) == ["dt=2020-01-01/a.json", "dt=2026-01-01/b.json"]
    )
    empty = config.with_overrides([f"input.events={tmp_path / 'none'}/dt=*/*.json"])
    assert unread_event_files(spark, empty, None) == ([], [], None)
