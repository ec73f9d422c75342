"""pipeline.run_lock: one run at a time on a warehouse, dead holders taken over."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from amazon_recs.io import local_path
from amazon_recs.pipeline import run_lock as rl


def lock(tmp_path, run_id, **kw):
    return rl.RunLock(tmp_path, run_id, ["ingest", "features"], **{"ttl_s": 60, "heartbeat_s": 30, **kw})


def test_a_second_run_is_refused_naming_the_holder_until_the_first_releases(tmp_path):
    first = lock(tmp_path, "run-a")
    assert first.acquire() is None
    holder = first.read()
    assert (holder.run_id, holder.pid, holder.stages) == ("run-a", os.getpid(), ["ingest", "features"])
    with pytest.raises(rl.WarehouseLocked) as refused:
        lock(tmp_path, "run-b").acquire()
    message = str(refused.value)
    assert "run run-a" in message and f"pid {os.getpid()}" in message and "since 20" in message
    assert str(tmp_path / rl.LOCK_NAME) in message and refused.value.exit_code == 4
    first.release()
    assert not (tmp_path / rl.LOCK_NAME).exists()
    with lock(tmp_path, "run-b") as second:
        assert second.read().run_id == "run-b"
    assert not (tmp_path / rl.LOCK_NAME).exists()


def test_a_lock_not_renewed_within_its_ttl_is_taken_over(tmp_path):
    stalled = lock(tmp_path, "run-a")
    stalled.acquire()
    stalled._stop.set()  # a hung run: alive (this very pid), but no longer renewing
    old = time.time() - 61
    os.utime(tmp_path / rl.LOCK_NAME, (old, old))
    taker = lock(tmp_path, "run-b")
    taken = taker.acquire()
    assert taken.run_id == "run-a"
    assert taker.read().run_id == "run-b"
    assert (tmp_path / f"{rl.LOCK_NAME}.taken-by-run-b").exists()
    # The stalled run learns it at its next renewal, stops at its next stage, and its
    # release leaves the new holder's lock alone.
    stalled.renew()
    with pytest.raises(rl.WarehouseLocked, match="lost the warehouse lock: taken over by run run-b"):
        stalled.check()
    stalled.release()
    assert taker.read().run_id == "run-b"
    taker.release()


def test_the_lock_of_a_pid_gone_from_this_host_is_taken_over_at_once(tmp_path):
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = lock(tmp_path, "run-dead")
    dead.me.pid = int(child.stdout)  # as if that process had taken it, then been killed
    assert dead._create()
    taken = lock(tmp_path, "run-b").acquire()
    assert taken.run_id == "run-dead" and taken.pid == int(child.stdout)


def test_a_live_holder_renews_and_keeps_its_lock(tmp_path):
    holder = lock(tmp_path, "run-a", ttl_s=1.0, heartbeat_s=0.05)
    holder.acquire()
    path = tmp_path / rl.LOCK_NAME
    os.utime(path, (time.time() - 0.9, time.time() - 0.9))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 0.2  # renewed by the heartbeat
    with pytest.raises(rl.WarehouseLocked):
        lock(tmp_path, "run-b", ttl_s=1.0, heartbeat_s=0.05).acquire()
    holder.check()
    holder.release()


def test_of_runs_starting_together_exactly_one_gets_the_lock(tmp_path):
    for attempt in range(10):
        where = tmp_path / str(attempt)
        start = threading.Barrier(4)
        results = []

        def run(i, where=where, start=start, results=results):
            candidate = lock(where, f"run-{i}")
            start.wait()
            try:
                candidate.acquire()
                results.append(("held", i))
            except rl.WarehouseLocked:
                results.append(("refused", i))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r for r, _ in results) == ["held", "refused", "refused", "refused"]


def test_an_unreadable_lock_counts_from_its_modification_time(tmp_path):
    (tmp_path / rl.LOCK_NAME).write_text("{half a fi")
    with pytest.raises(rl.WarehouseLocked, match="run \\?"):
        lock(tmp_path, "run-b").acquire()
    old = time.time() - 61
    os.utime(tmp_path / rl.LOCK_NAME, (old, old))
    assert lock(tmp_path, "run-b").acquire().run_id == "?"


def test_only_local_warehouses_hold_a_lock():
    assert local_path("data/warehouse") == Path("data/warehouse")
    assert local_path("file:///tmp/w") == Path("/tmp/w") == local_path("file:/tmp/w")
    assert local_path("s3://bucket/warehouse") is None and local_path("s3a://b/w") is None
    with pytest.raises(ValueError, match="shorter than its ttl"):
        rl.RunLock(Path("/tmp"), "x", [], ttl_s=10, heartbeat_s=10)
