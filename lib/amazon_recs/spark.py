"""The one place a SparkSession is built, from configuration."""

from __future__ import annotations

import mmap
import os
import pickle
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pyspark import Broadcast, SparkFiles
from pyspark.sql import SparkSession

from amazon_recs.config import Config

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def spark_conf(config: Config) -> dict[str, str]:
    """The Spark properties a configuration asks for (pure; used by tests and EMR steps)."""
    conf = {
        "spark.master": config.require("spark.master"),
        "spark.app.name": config.require("spark.app_name"),
        "spark.driver.memory": config.require("spark.driver_memory"),
        "spark.sql.shuffle.partitions": str(config.require("spark.shuffle_partitions")),
        "spark.ui.enabled": str(config.require("spark.ui")).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        # Delta writes stay deterministic and small on a laptop.
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.databricks.delta.properties.defaults.enableChangeDataFeed": "false",
        **DELTA_CONF,
    }
    if config.get("spark.buffer_page_size"):
        conf["spark.buffer.pageSize"] = str(config.require("spark.buffer_page_size"))
    packages = config.require("spark.packages")
    if packages:
        conf["spark.jars.packages"] = ",".join(packages)
    if config.get("spark.ivy_dir"):
        conf["spark.jars.ivy"] = os.path.abspath(config.require("spark.ivy_dir"))
    if config.get("spark.driver_host"):
        conf["spark.driver.host"] = config.require("spark.driver_host")
        conf["spark.driver.bindAddress"] = config.require("spark.driver_host")
    if config.require("aws.s3a"):
        conf.update(s3a_conf(config))
    log_dir = config.require("spark.log_dir")
    if log_dir:
        # Takes effect when this process starts the JVM (bin/spark-submit passes it at launch).
        from amazon_recs.launch import java_options, log_file

        conf["spark.driver.extraJavaOptions"] = java_options(log_file(config))
    return conf


def s3a_conf(config: Config) -> dict[str, str]:
    """Hadoop settings that make ``s3://`` URIs go through S3A, as EMRFS does on EMR.

    Credentials are left to S3A's default chain (environment variables,
    profile, instance role); an endpoint means a local stand-in, spoken to
    with path-style addressing.
    """
    conf = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        # Delta writes its checksum files through Spark's checkpoint file
        # manager; S3A has no FileContext for the s3 scheme, so use FileSystem.
        "spark.sql.streaming.checkpointFileManagerClass": (
            "org.apache.spark.sql.execution.streaming.FileSystemBasedCheckpointFileManager"
        ),
        "spark.hadoop.fs.s3a.endpoint.region": config.require("aws.region"),
    }
    endpoint = config.require("aws.s3_endpoint")
    if endpoint:
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https")).lower(),
            }
        )
    return conf


def get_spark(config: Config) -> SparkSession:
    """Return the active session, or build one from ``config``.

    Under ``spark-submit`` (and on EMR) the JVM already exists and the master,
    packages and memory given to spark-submit win; the settings here then only
    fill in what was not given.
    """
    builder = SparkSession.builder
    for key, value in spark_conf(config).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if config.require("aws.s3a"):
        # Also on a session that existed before (spark-submit, tests): Hadoop
        # reads these when it first opens an s3:// path.
        hadoop = spark.sparkContext._jsc.hadoopConfiguration()
        for key, value in s3a_conf(config).items():
            if key.startswith("spark.hadoop."):
                hadoop.set(key.removeprefix("spark.hadoop."), value)
            else:
                spark.conf.set(key, value)
    spark.sparkContext.setLogLevel(config.require("spark.log_level"))
    checkpoint_dir = config.require("spark.checkpoint_dir")
    if checkpoint_dir:
        spark.sparkContext.setCheckpointDir(checkpoint_dir)
    return spark


def persisted_rdd_ids(spark: SparkSession) -> set[int]:
    """Ids of the RDDs persisted now: DataFrame caches, ALS's factors, Delta's snapshot state."""
    return set(spark.sparkContext._jsc.getPersistentRDDs().keys())


# Broadcasts made by ``share``, oldest first: each lives until the caches of the
# stage (or test module) that made it are released.
_SHARED: list[Broadcast | MappedShare] = []


def share(spark: SparkSession, value, mapped: bool = False) -> Broadcast | MappedShare:
    """Broadcast ``value`` to the tasks of the running stage; it is destroyed, in the
    driver too, when the stage's caches are released (``releasing_caches``).

    A Python broadcast otherwise stays in the driver's block store for as long as
    any plan that used it is reachable: item factors, co-occurrence and term
    matrices, stage after stage, and in a test session pipeline after pipeline,
    until storage has borrowed the memory tasks need to run.

    ``mapped``: the value's numpy arrays are read from one memory-mapped file per
    machine (``MappedShare``) instead of being unpickled into every Python worker;
    they are read-only.
    """
    shared = MappedShare(spark, value) if mapped else spark.sparkContext.broadcast(value)
    _SHARED.append(shared)
    return shared


def share_file(spark: SparkSession, path: str, own: bool = False) -> MappedShare:
    """``share(mapped=True)`` of a value already in a local file ``dump_mapped`` wrote:
    the tasks map that file, and nothing is pickled again. The file is left in place
    when the share is destroyed, unless ``own``: then it is moved into the share and
    deleted with it (a copy made for it)."""
    shared = MappedShare(spark, path=path, own=own)
    _SHARED.append(shared)
    return shared


# The MappedShare values this process has opened, by file name: the newest only.
_MAPPED: dict[str, object] = {}
_ALIGN = 64  # each array's bytes start at a multiple of this in the file
# The file's header: (pickle size, arrays), then (offset, size) of each array, then the pickle.
_PAIR = struct.Struct("<QQ")


def dump_mapped(value, path: str) -> None:
    """Write ``value`` to ``path`` in the layout ``load_mapped`` maps: pickled with its
    numpy arrays out of band (pickle protocol 5), the file holding the small pickle,
    then each array's bytes at an aligned offset."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    table = []
    at = _aligned(_PAIR.size * (1 + len(views)) + len(head))
    for view in views:
        table.append((at, view.nbytes))
        at = _aligned(at + view.nbytes)
    with open(path, "wb") as f:
        f.write(_PAIR.pack(len(head), len(views)))
        for offset, size in table:
            f.write(_PAIR.pack(offset, size))
        f.write(head)
        for (offset, _), view in zip(table, views, strict=True):
            f.seek(offset)
            f.write(view)


def load_mapped(path: str):
    """The value ``dump_mapped`` wrote to ``path``, its arrays read-only views of the
    file mapped into memory (pages are read as they are touched)."""
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    head_size, count = _PAIR.unpack_from(view, 0)
    table = [_PAIR.unpack_from(view, _PAIR.size * (1 + i)) for i in range(count)]
    start = _PAIR.size * (1 + count)
    return pickle.loads(
        view[start : start + head_size], buffers=[view[offset : offset + size] for offset, size in table]
    )


class MappedShare:
    """A value shared with the tasks through one file per machine that every Python
    worker maps into memory, instead of a broadcast each worker unpickles.

    The file (``dump_mapped``) holds the value's small pickle, then each of its
    numpy arrays' bytes. A worker maps the file and unpickles the arrays as
    read-only views of it, so the two workers of a 2-core machine share one copy
    of the pages (at 500k items, the recommend stage's catalogue is 0.75 GB: a
    broadcast put one copy in each worker). The file reaches the executors
    through ``SparkContext.addFile``. Given a ``path``, that file is shared as it
    is (kept, or with ``own`` moved in); else ``value`` is written to a file of the
    share's own. The share's own file is deleted with it.
    """

    def __init__(self, spark: SparkSession, value=None, path: str | None = None, own: bool = False):
        # addFile knows a file by its name: each share's name is its own.
        self.name = f"amazon-recs-shared-{uuid.uuid4().hex}.bin"
        self._dir = tempfile.mkdtemp(prefix="amazon-recs-shared-")
        self._path = os.path.join(self._dir, self.name)
        if path is None:
            dump_mapped(value, self._path)
        elif own:
            shutil.move(path, self._path)
        else:
            # A name of its own for the same file (Spark would add a symbolic link under
            # its target's name): a hard link, or a copy across file systems.
            try:
                os.link(path, self._path)
            except OSError:
                shutil.copyfile(path, self._path)
        spark.sparkContext.addFile(self._path)
        self._local = spark.sparkContext.master.startswith("local")

    def __getstate__(self) -> dict:
        return {"name": self.name}  # what a task needs: the file's name

    @property
    def value(self):
        value = _MAPPED.get(self.name)
        if value is None:
            _MAPPED.clear()  # a worker keeps the newest value mapped, not every stage's
            value = _MAPPED[self.name] = load_mapped(SparkFiles.get(self.name))
        return value

    def destroy(self, blocking: bool = False) -> None:
        """Delete the driver's file or link (and, in local mode, the executors' copy of
        it: a worker that still maps it keeps its pages until it lets go)."""
        _MAPPED.pop(self.name, None)
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._local:
            with suppress(OSError):
                os.remove(SparkFiles.get(self.name))


def _aligned(at: int) -> int:
    return -(-at // _ALIGN) * _ALIGN


def unshare(shared: Broadcast | MappedShare) -> None:
    """Destroy a broadcast ``share`` made as soon as the jobs that read it are done."""
    _SHARED.remove(shared)
    shared.destroy(blocking=False)


def release_caches(
    spark: SparkSession, keep: set[int] | frozenset[int] = frozenset(), shared_since: int = 0
) -> None:
    """Drop every DataFrame cache, unpersist every persisted RDD but those in ``keep``,
    and destroy the broadcasts ``share`` made since the ``shared_since``-th."""
    spark.catalog.clearCache()
    for rdd_id, rdd in spark.sparkContext._jsc.getPersistentRDDs().items():
        if rdd_id not in keep:
            rdd.unpersist(False)
    _destroy_shared(shared_since)


def _destroy_shared(since: int) -> None:
    while len(_SHARED) > since:
        _SHARED.pop().destroy(blocking=False)


@contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Spark SQL ``settings`` for the queries planned inside (a DataFrame is planned
    when an action or a write runs), restored on the way out."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


@contextmanager
def sharing() -> Iterator[None]:
    """On the way out, destroy the broadcasts ``share`` made inside: for one turn of a
    loop whose jobs have all run by then (a tuning grid's point), so the stage
    holds one turn's broadcasts, not every turn's."""
    since = len(_SHARED)
    try:
        yield
    finally:
        _destroy_shared(since)


@contextmanager
def releasing_caches(spark: SparkSession) -> Iterator[None]:
    """On the way out, drop every DataFrame cache, unpersist the RDDs persisted inside
    and destroy the broadcasts shared inside.

    One driver runs every stage of a pipeline (and a test session runs dozens of
    pipelines). A cached DataFrame keeps its physical plan, and the plan keeps
    the broadcast hash tables of its joins in the driver's memory; without this
    they pile up, run after run, until the heap is exhausted. What a stage
    returns is figures, never a DataFrame that still needs its broadcasts.
    """
    keep = persisted_rdd_ids(spark)
    shared_since = len(_SHARED)
    try:
        yield
    finally:
        release_caches(spark, keep, shared_since)


def driver_facts(spark: SparkSession) -> dict:
    """What the running driver really got: master, the JVM's heap limit, Spark's log file."""
    jvm = spark.sparkContext._jvm
    return {
        "master": spark.sparkContext.master,
        "max_heap_bytes": int(jvm.java.lang.Runtime.getRuntime().maxMemory()),
        "log_file": jvm.java.lang.System.getProperty("amazon_recs.log_file"),
    }
