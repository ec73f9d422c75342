"""The ingest stage: every input line to bronze (accepted, rejected with a reason, or
counted), merged on natural keys so a re-run changes nothing."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs import io
from amazon_recs.config import Config
from amazon_recs.events import DAY_FOLDER, DAY_FOLDER_PATTERN, day_of
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


def event_files(spark: SparkSession, config: Config, since: str | None = None) -> list[io.InputFile]:
    """The activity event files under ``input.events``; none yet is no events.

    With ``since`` (a day, YYYY-MM-DD) and a glob with a ``dt=*`` folder, only the
    day folders from ``since`` on are listed (and any not named by a day): the
    activity function lands each event in the folder of the day it arrived, so
    an older folder gets no new files, and a listing costs the recent days, not
    every day since the shop opened.
    """
    glob = config.require("input.events")
    if not glob:
        return []
    head, folder, tail = glob.partition(f"/{DAY_FOLDER}=*/")
    if since is not None and folder:
        names = io.list_folder_names(spark, f"{head}/{DAY_FOLDER}=*")
        days = [n for n in names if (day := day_of(n)) is None or day >= since]
        if not days:
            return []
        # A Hadoop glob alternative, {a,b}: one listing of the parent, one per kept day.
        glob = f"{head}/{{{','.join(days)}}}/{tail}"
    return io.list_files(spark, glob, allow_none=True)


def unread_event_files(
    spark: SparkSession, config: Config, read_whole: DataFrame | None
) -> tuple[list[io.InputFile], list[io.InputFile], str | None]:
    """The event files listed, those of them not read whole before, and the first day
    listed (None: every folder).

    ``read_whole`` is an event-files table (``source_file``, ``bytes``: every line of
    those is in bronze), or None when there is none yet. The folders listed are
    those from ``events.relisted_days`` days before the newest day it holds: a file
    landed up to that late in a folder already read is still found. A file in that
    table at its present size is not read again; one written to since (another
    size) is; its events merge on their ids.
    """
    since = None
    if read_whole is not None:
        day = F.regexp_extract("source_file", rf"/{DAY_FOLDER_PATTERN}/[^/]*$", 1)
        newest = read_whole.agg(F.max(F.when(day != "", day))).first()[0]
        if newest is not None:
            back = timedelta(days=int(config.require("events.relisted_days")))
            since = (date.fromisoformat(newest) - back).isoformat()
            # One row per file of the days listed: the driver holds them as it holds the listing.
            read_whole = read_whole.filter((day == "") | (day >= since))
    listed = event_files(spark, config, since)
    if read_whole is None or not listed:
        return listed, listed, since
    done = {
        (r["source_file"], r["bytes"]) for r in read_whole.select("source_file", "bytes").toLocalIterator()
    }
    return listed, [f for f in listed if (f.uri, f.size) not in done], since


@stage
def run_ingest(spark: SparkSession, config: Config) -> dict:
    config = movielens.configured(spark, config)  # input.movielens: the release's own settings
    sources = {kind: io.list_files(spark, glob) for kind, glob in input_globs(config).items()}
    read_whole = (
        io.read_table(spark, config, EVENT_FILES_TABLE)
        if io.table_exists(spark, io.table_path(config, EVENT_FILES_TABLE))
        else None
    )
    listed, events, since = unread_event_files(spark, config, read_whole)
    run_id = io.fingerprint([f for files in sources.values() for f in files] + listed)
    if events:
        sources["events"] = events

    logs = []
    for kind, files in sources.items():
        accepted, rejects, log = ig.ingest_source(spark, config, kind, files, run_id)
        # One row per input file. Its duplicate counts rank every accepted line's key
        # in a window over all the lines: collected once, the rows are both written
        # and checked (the merge and a collect would each run that window).
        counted = log.collect()
        log = spark.createDataFrame(counted, schema=log.schema)
        io.merge_table(spark, rejects, config, "bronze/rejects", ["kind", "source_file", "line_number"])
        io.merge_table(spark, log, config, "bronze/ingest_log", ["ingest_run_id", "kind", "source_file"])
        log_rows = [r.asDict() for r in counted]
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
        "event_files_since": since,
    }
