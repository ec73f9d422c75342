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


def test_many_small_files_give_the_same_numbered_lines_as_a_few(spark, tmp_path):
    """Above io.MAX_LISTED_PATHS small files are read whole from their folders and split;
    the lines, their numbers, blanks, line breaks and gzip come out as the line reader's."""
    import gzip

    bodies = [
        b'{"a": 1}\n',  # one object, as the activity function writes it
        b'{"a": 2}',  # no break at the end
        b"x\r\ny\r\n",  # CRLF
        b"first\n\n\nfourth\n",  # blank lines inside
        b"\n",  # one blank line
        b"old mac\rline\n",  # a lone CR
        b"  spaced  \nlast",
    ]
    for n in range(io.MAX_LISTED_PATHS + 6):
        folder = tmp_path / f"dt=2026-01-0{n % 2 + 1}"
        folder.mkdir(exist_ok=True)
        body = bodies[n % len(bodies)] + f"file {n}".encode()
        if n % 5 == 0:
            (folder / f"{n:03d}.json.gz").write_bytes(gzip.compress(body))
        else:
            (folder / f"{n:03d}.json").write_bytes(body)
    (tmp_path / "dt=2026-01-01" / "not-listed.json").write_text("never read\n")
    files = [f for f in io.list_files(spark, str(tmp_path / "dt=*" / "*")) if "not-listed" not in f.path]
    assert len(files) > io.MAX_LISTED_PATHS

    def rows(df):
        return sorted(tuple(r) for r in df.select("source_file", "line_number", "value").collect())

    at_once = rows(io.read_lines(spark, files))
    few_at_a_time = sorted(
        row
        for start in range(0, len(files), 30)
        for row in rows(io.read_lines(spark, files[start : start + 30]))
    )
    assert at_once == few_at_a_time
    assert not any("never read" in value for _, _, value in at_once)
    assert len({file for file, _, _ in at_once}) == len(files)
