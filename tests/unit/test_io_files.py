"""io.write_bytes / read_text: small files (reports, the CURRENT pointer) replaced atomically."""

from __future__ import annotations

import threading

from amazon_recs import io


def test_a_local_file_is_replaced_whole_and_hadoop_reads_the_new_content(spark, tmp_path):
    pointer = tmp_path / "models" / "CURRENT"
    # An older run wrote it through Hadoop's local file system, with a checksum beside it.
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(str(pointer))
    out = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(hpath, True)
    out.write(bytearray(b"old-version"))
    out.close()
    assert (tmp_path / "models" / ".CURRENT.crc").exists()

    io.write_text(spark, str(pointer), "new-version")
    assert io.read_text(spark, str(pointer)) == "new-version"
    assert not (tmp_path / "models" / ".CURRENT.crc").exists()
    assert sorted(p.name for p in pointer.parent.iterdir()) == ["CURRENT"]  # no temporary left


def test_a_reader_never_sees_a_part_of_the_pointer(spark, tmp_path):
    pointer = tmp_path / "CURRENT"
    versions = ["a" * 4096, "b" * 4096]
    io.write_text(spark, str(pointer), versions[0])
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(pointer.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        io.write_text(spark, str(pointer), versions[i % 2])
    stop.set()
    reader.join()
    assert seen <= set(versions) and seen


def test_only_local_paths_are_written_by_rename():
    assert io.local_path("/tmp/x") is not None and io.local_path("file:/tmp/x") is not None
    assert io.local_path("s3://bucket/models/CURRENT") is None
    assert io.local_path("s3a://bucket/models/CURRENT") is None
