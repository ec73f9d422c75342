"""All reading and writing of files and tables: the only module that touches storage.

Paths are plain strings that Spark's Hadoop file systems understand: local
paths, ``file://`` or ``s3://`` URIs. Tables are Delta tables addressed by path
under ``paths.warehouse`` (``bronze/reviews``, ``gold/metrics``, ...).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from amazon_recs.config import Config
from amazon_recs.errors import InputError, StageOrderError

# Hadoop writes local URIs as file:/x, Spark's file metadata sometimes as
# file:///x; both are folded to the latter so a file has one id everywhere.
_LOCAL_SCHEME = r"^file:/(?!/)"


def canonical_uri(uri: str) -> str:
    return re.sub(_LOCAL_SCHEME, "file:///", uri)


@dataclass(frozen=True)
class InputFile:
    """One input file as the file system lists it.

    ``path`` is what Spark reads; ``uri`` is its escaped form, the same string
    Spark reports in ``_metadata.file_path``, and so the file's id in tables.
    """

    path: str
    uri: str
    size: int
    modified_ms: int


def list_files(spark: SparkSession, pattern: str, allow_none: bool = False) -> list[InputFile]:
    """Files matching a path or glob (directories are listed one level deep).

    Raises:
        InputError: nothing matches ``pattern`` (unless ``allow_none``: then no files).
    """
    jvm = spark.sparkContext._jvm
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(pattern)
    fs = path.getFileSystem(hadoop_conf)
    statuses = fs.globStatus(path) or []
    files: list[InputFile] = []
    # Every call below is a round trip to the JVM (thousands of event files): each one once.
    for status in statuses:
        children = fs.listStatus(status.getPath()) if status.isDirectory() else [status]
        for child in children:
            if not child.isFile():
                continue
            path = child.getPath()
            name = path.toString()
            if not name.rsplit("/", 1)[-1].startswith((".", "_")):
                uri = canonical_uri(path.toUri().toString())
                files.append(InputFile(name, uri, child.getLen(), child.getModificationTime()))
    if not files and not allow_none:
        raise InputError(f"no input files match '{pattern}'")
    return sorted(files, key=lambda f: f.path)


def list_folder_names(spark: SparkSession, pattern: str) -> list[str]:
    """The names (last path segment) of the folders matching a glob, sorted; none is []."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(pattern)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return sorted(s.getPath().getName() for s in (fs.globStatus(path) or []) if s.isDirectory())


def fingerprint(files: list[InputFile]) -> str:
    """A short id that changes when any file is added, removed or rewritten."""
    digest = hashlib.sha1()
    for f in files:
        digest.update(f"{f.uri}|{f.size}|{f.modified_ms}\n".encode())
    return digest.hexdigest()[:12]


def _source_file():
    """``source_file``: the file a row was read from, as ``InputFile.uri`` spells it."""
    return F.regexp_replace("_metadata.file_path", _LOCAL_SCHEME, "file:///").alias("source_file")


def read_lines(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """Text lines of ``files`` (gzip decoded by extension) with file and line number.

    Returns:
        Columns ``source_file``, ``line_number`` (1-based) and ``value``.
    """
    if len(files) > MAX_LISTED_PATHS and max(f.size for f in files) <= WHOLE_FILE_MAX_BYTES:
        return _many_small_files(spark, files)
    lines = spark.read.text([f.path for f in files]).select(
        _source_file(),
        F.monotonically_increasing_id().alias("_pos"),
        "value",
    )
    return lines.transform(with_line_numbers).select("source_file", "line_number", "value")


# Many small files (activity events: one object each) are read another way. Spark
# resolves every path it is given one status call at a time (30 s for 3,000 event files
# locally; a request each on S3), and numbering their lines costs a pass of its own.
MAX_LISTED_PATHS = 64
WHOLE_FILE_MAX_BYTES = 4 * 2**20
WHOLE_FILES_PER_TASK = 64 * 2**20  # bytes of small files one task reads
_LINE_BREAK = r"\r\n|\r|\n"


def _many_small_files(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """``read_lines`` for many small files: their folders listed once each, every file read
    whole as one row (kept only when listed in ``files``), and split into numbered lines."""
    folders = sorted({f.path.rsplit("/", 1)[0] for f in files})
    # Spark plans a file as at least spark.sql.files.openCostInBytes (4 MiB): 3,000 event
    # files of a hundred bytes would be 94 tasks, and every later stage as many.
    parts = max(spark.sparkContext.defaultParallelism, -(-sum(f.size for f in files) // WHOLE_FILES_PER_TASK))
    whole = spark.read.text(folders, wholetext=True).coalesce(parts).select(_source_file(), "value")
    # A broadcast semi-join, not isin(): a literal per file would cost a call into the JVM each.
    listed = spark.createDataFrame([(f.uri,) for f in files], "source_file string")
    whole = whole.join(F.broadcast(listed), "source_file", "left_semi")
    # As the line reader does: a break ends a line, and a last line needs none.
    text = F.regexp_replace("value", f"({_LINE_BREAK})$", "")
    lines = whole.select("source_file", F.posexplode(F.split(text, _LINE_BREAK)).alias("_at", "value"))
    return lines.select("source_file", (F.col("_at") + 1).cast("int").alias("line_number"), "value")


def read_parquet_rows(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """Rows of Parquet files as JSON text, numbered per file like lines.

    Returns:
        Columns ``source_file``, ``line_number`` (1-based row) and ``value`` (the row as JSON).
    """
    rows = spark.read.parquet(*[f.path for f in files])
    data_columns = [F.col(f"`{c}`") for c in rows.columns]
    numbered = rows.select(
        _source_file(),
        F.monotonically_increasing_id().alias("_pos"),
        F.to_json(F.struct(*data_columns)).alias("value"),
    )
    return numbered.transform(with_line_numbers).select("source_file", "line_number", "value")


ROW_BITS = 33  # monotonically_increasing_id(): partition index above bit 33, row inside it below


def with_line_numbers(rows: DataFrame, col_file: str = "source_file", col_pos: str = "_pos") -> DataFrame:
    """``line_number`` (1-based, per file) from ``_pos``, a ``monotonically_increasing_id()``.

    Ids increase with the partition index and with the position inside a partition,
    and a file's splits are planned in offset order. So a line's number is the lines
    of its file in earlier partitions, plus its place among its file's lines in its
    own partition. Those per (file, partition) counts are the only thing the driver
    sees; the lines themselves stay where they are read (no shuffle, no window).
    """
    parts = rows.select(
        col_file,
        F.shiftright(col_pos, ROW_BITS).alias("_part"),
        (F.col(col_pos) % (1 << ROW_BITS)).alias("_row"),
    )
    pieces = sorted(
        (r[col_file], r["_part"], r["_first"], r["_n"])
        for r in parts.groupBy(col_file, "_part")
        .agg(F.min("_row").alias("_first"), F.count("*").alias("_n"))
        .collect()
    )
    starts, seen = [], {}
    for file, part, first, n in pieces:
        starts.append((file, part, seen.get(file, 0) - first))
        seen[file] = seen.get(file, 0) + n
    offsets = rows.sparkSession.createDataFrame(
        starts or [("", -1, 0)], f"{col_file} string, _part long, _shift long"
    )
    return (
        rows.withColumn("_part", F.shiftright(col_pos, ROW_BITS))
        .join(F.broadcast(offsets), [col_file, "_part"], how="inner")
        .withColumn("line_number", (F.col(col_pos) % (1 << ROW_BITS) + F.col("_shift") + 1).cast("int"))
        .drop("_part", "_shift", col_pos)
    )


def first_line(spark: SparkSession, file: InputFile) -> str | None:
    """The first non-blank line of a text file (decompressed), or None."""
    row = spark.read.text(file.path).filter(F.trim("value") != "").limit(1).collect()
    return row[0]["value"] if row else None


def read_error(spark: SparkSession, file: InputFile, fmt: str) -> str | None:
    """Read a whole file; None if that works, else the first line of the error."""
    try:
        reader = spark.read.parquet if fmt == "parquet" else spark.read.text
        reader(file.path).count()
        return None
    except Exception as exc:  # any decoding failure quarantines the file
        message = str(getattr(exc, "java_exception", exc))
        return message.strip().splitlines()[0][:300] if message.strip() else type(exc).__name__


def table_path(config: Config, name: str) -> str:
    """Where table ``layer/name`` lives, e.g. ``table_path(cfg, "gold/metrics")``."""
    return f"{config.require('paths.warehouse').rstrip('/')}/{name}"


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def read_table(spark: SparkSession, config: Config, name: str, version: int | None = None) -> DataFrame:
    """Read a Delta table, at its commit ``version`` when given (time travel), else its
    latest; a missing table names the stage that writes it."""
    path = table_path(config, name)
    if not table_exists(spark, path):
        raise StageOrderError(
            f"table {name} does not exist at {path}: run the stage that writes it first "
            f"(make run runs them all in order)"
        )
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(path)


def table_version(spark: SparkSession, config: Config, name: str) -> int:
    """The latest commit version of a Delta table (one read of its log)."""
    path = table_path(config, name)
    if not table_exists(spark, path):
        raise StageOrderError(f"table {name} does not exist at {path}: run the stage that writes it first")
    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def overwrite_table(df: DataFrame, config: Config, name: str, partition_by: list[str] | None = None) -> str:
    """Replace a table's contents (schema included) in one Delta commit."""
    path = table_path(config, name)
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)
    return path


MODEL_VERSION = "model_version"


def write_version(
    df: DataFrame, config: Config, name: str, version: str, partition_by: list[str] | None = None
) -> str:
    """Replace ``version``'s rows of a table kept per model version, in one Delta commit,
    leaving every other version's rows as they are (``replaceWhere`` on the version's
    partition). ``df`` holds that version's rows only. The table is partitioned by
    model_version, then ``partition_by``; one that does not exist yet, or that was
    written in another layout (before gold tables were kept per version), is created
    afresh. Old versions go with ``drop_versions``.
    """
    spark = df.sparkSession
    path = table_path(config, name)
    layout = [MODEL_VERSION, *(partition_by or [])]
    writer = df.write.format("delta").mode("overwrite").partitionBy(*layout)
    if table_exists(spark, path) and partition_columns(spark, path) == layout:
        quoted = version.replace("'", "''")
        writer = writer.option("replaceWhere", f"{MODEL_VERSION} = '{quoted}'")
    else:
        writer = writer.option("overwriteSchema", "true")
    writer.save(path)
    return path


def read_version(spark: SparkSession, config: Config, name: str, version: str) -> DataFrame:
    """``version``'s rows of a table kept per model version (only its partition is read)."""
    return read_table(spark, config, name).filter(F.col(MODEL_VERSION) == version)


def drop_versions(spark: SparkSession, config: Config, name: str, keep: list[str]) -> list[str]:
    """Delete the rows of every version but ``keep`` from a table kept per model version,
    and say which versions went: whole partitions, so a metadata-only commit (none when
    nothing goes). A reader of an earlier snapshot keeps its files until ``VACUUM``
    removes them (not before its retention period)."""
    path = table_path(config, name)
    if not keep or not table_exists(spark, path):
        return []
    held = [r[0] for r in spark.read.format("delta").load(path).select(MODEL_VERSION).distinct().collect()]
    gone = sorted(v for v in held if v not in keep)
    if gone:
        DeltaTable.forPath(spark, path).delete(F.col(MODEL_VERSION).isin(*gone))
    return gone


def partition_columns(spark: SparkSession, path: str) -> list[str]:
    return list(DeltaTable.forPath(spark, path).detail().select("partitionColumns").first()[0])


def merge_table(
    spark: SparkSession,
    df: DataFrame,
    config: Config,
    name: str,
    keys: list[str],
    update_when_changed: str | None = None,
) -> str:
    """Upsert ``df`` into a table on its natural key ``keys``.

    Rows whose key exists are left alone, or updated when the column named by
    ``update_when_changed`` (a content hash) differs. ``df`` must be unique on
    ``keys``. Re-merging the same rows changes nothing.
    """
    path = table_path(config, name)
    if not table_exists(spark, path):
        df.write.format("delta").mode("overwrite").save(path)
        return path
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    merge = DeltaTable.forPath(spark, path).alias("t").merge(df.alias("s"), condition)
    if update_when_changed:
        col = update_when_changed
        merge = merge.whenMatchedUpdateAll(condition=f"NOT (t.`{col}` <=> s.`{col}`)")
    merge.whenNotMatchedInsertAll().execute()
    return path


def local_path(uri: str) -> Path | None:
    """The local file system path of ``uri``, or None for a remote store (s3://, ...)."""
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file:").removeprefix("//"))
    if "://" in uri or uri.startswith(("s3:", "s3a:", "s3n:")):
        return None
    return Path(uri)


def write_bytes(spark: SparkSession, path: str, data: bytes) -> None:
    """Write a small file (a report, a plot, a DDL file, a version pointer) atomically:
    a reader sees the old content or the new, never a part.

    Locally: a temporary file beside it, then a rename over it (Hadoop's local
    ``create(overwrite)`` truncates in place). On S3 a PUT is atomic already, so
    remote paths go through Hadoop's file system as one object.
    """
    local = local_path(path)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        # Hadoop's checksum of an older write would no longer match: reads would fail.
        local.with_name(f".{local.name}.crc").unlink(missing_ok=True)
        return
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def upload(spark: SparkSession, local: str, path: str) -> None:
    """Copy the local file ``local`` to ``path`` (any Hadoop file system), replacing it."""
    _copy(spark, f"file://{os.path.abspath(local)}", path)


def download(spark: SparkSession, path: str, local: str) -> bool:
    """Copy ``path`` (any Hadoop file system) to the local file ``local``; False when
    there is no such file."""
    return _copy(spark, path, f"file://{os.path.abspath(local)}")


def _copy(spark: SparkSession, source: str, target: str) -> bool:
    """One file copied by the JVM, streamed between any two Hadoop file systems (S3A's
    own copyFromLocalFile fails for a file in hadoop-aws 3.3.4); the local one raw, so
    no .crc file is written beside it. False when ``source`` does not exist."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    fs = jvm.org.apache.hadoop.fs

    def located(uri: str):
        path = fs.Path(uri)
        return (
            fs.FileSystem.getLocal(conf).getRaw() if uri.startswith("file:") else path.getFileSystem(conf)
        ), path

    (source_fs, source_path), (target_fs, target_path) = located(source), located(target)
    if not source_fs.exists(source_path):
        return False
    fs.FileUtil.copy(source_fs, source_path, target_fs, target_path, False, True, conf)
    return True


def write_text(spark: SparkSession, path: str, text: str) -> None:
    write_bytes(spark, path, text.encode("utf-8"))


def read_text(spark: SparkSession, path: str) -> str | None:
    """Read a small text file, or None when it does not exist."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        return None
    stream = fs.open(hpath)
    try:
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
        lines = []
        while (line := reader.readLine()) is not None:
            lines.append(line)
        return "\n".join(lines)
    finally:
        stream.close()
