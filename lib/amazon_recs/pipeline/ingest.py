"""The ingest stage: every input line to bronze (accepted, rejected with a reason, or
counted), merged on natural keys so a re-run changes nothing."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.ingest import movielens
from amazon_recs.ingest import sources as ig
from amazon_recs.ingest.sample import META_FILE, REVIEWS_FILE, generate_sample
from amazon_recs.pipeline.base import stage

# The event files ingest has read whole (schemas.EVENT_FILES).
EVENT_FILES_TABLE = "bronze/event_files"


def input_globs(config: Config) -> dict[str, str]:
    """Each configured source's glob; with no reviews configured, the generated sample.

    The sample is written under ``paths.raw`` only when it is not there yet.
    """
    globs = {kind: config.require(f"input.{kind}") for kind in ("reviews", "products", "tags")}
    if not globs["reviews"]:
        raw = Path(config.require("paths.raw"))
        if not (raw / REVIEWS_FILE).exists() or not (raw / META_FILE).exists():
            generate_sample(raw, **config.require("sample"))
        globs = {"reviews": str(raw / REVIEWS_FILE), "products": str(raw / META_FILE)}
    return {kind: glob for kind, glob in globs.items() if glob}


def event_files(spark: SparkSession, config: Config) -> list[io.InputFile]:
    """The activity event files under ``input.events``; none yet is no events."""
    glob = config.require("input.events")
    return io.list_files(spark, glob, allow_none=True) if glob else []


def files_not_in(files: list[io.InputFile], read_whole: DataFrame) -> list[io.InputFile]:
    """``files`` but those ``read_whole`` (an event-files table: source_file, bytes)
    lists at their present size: every line of those is in bronze already. A file
    written to since it was read (another size) is read again; its events merge on
    their ids."""
    # One row per file ever ingested: the driver holds their names as it holds the listing.
    done = {
        (r["source_file"], r["bytes"]) for r in read_whole.select("source_file", "bytes").toLocalIterator()
    }
    return [f for f in files if (f.uri, f.size) not in done]


def unread_event_files(spark: SparkSession, config: Config, files: list[io.InputFile]) -> list[io.InputFile]:
    """The listed event files a previous ingest has not read whole (``bronze/event_files``):
    a full run reads what arrived since the last one, not every event file ever written."""
    if not files or not io.table_exists(spark, io.table_path(config, EVENT_FILES_TABLE)):
        return files
    return files_not_in(files, io.read_table(spark, config, EVENT_FILES_TABLE))


@stage
def run_ingest(spark: SparkSession, config: Config) -> dict:
    config = movielens.configured(spark, config)  # input.movielens: the release's own settings
    sources = {kind: io.list_files(spark, glob) for kind, glob in input_globs(config).items()}
    listed = event_files(spark, config)
    run_id = io.fingerprint([f for files in sources.values() for f in files] + listed)
    events = unread_event_files(spark, config, listed)
    if events:
        sources["events"] = events

    logs = []
    for kind, files in sources.items():
        accepted, rejects, log = ig.ingest_source(spark, config, kind, files, run_id)
        io.merge_table(spark, rejects, config, "bronze/rejects", ["kind", "source_file", "line_number"])
        io.merge_table(spark, log, config, "bronze/ingest_log", ["ingest_run_id", "kind", "source_file"])
        log_rows = [r.asDict() for r in log.collect()]  # one row per input file
        # Rejects and the log are written first, so a failed run can be inspected.
        as_one = config.require("input.events") if kind == "events" else None
        ig.check_reject_rate(log_rows, rejects, config.require("input.max_reject_rate"), as_one)
        update = "record_hash" if kind == "products" else None
        io.merge_table(spark, accepted, config, ig.TABLES[kind], ig.KEYS[kind], update)
        if kind == "events":  # last: a file is listed once its lines are all in bronze
            files_done = log.select("source_file", "bytes", "ingest_run_id")
            io.merge_table(spark, files_done, config, EVENT_FILES_TABLE, ["source_file", "bytes"])
        logs.extend(log_rows)
    return {
        "ingest_run_id": run_id,
        "files": logs,
        "event_files": len(listed),
        "event_files_read": len(events),
    }
