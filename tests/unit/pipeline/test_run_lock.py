"""pipeline.run_lock: one run at a time on a warehouse, dead holders taken over.

Every behaviour is checked on both backends: the lock file of a local warehouse and
the DynamoDB lease of an ``s3://`` one (against the local DynamoDB server)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from amazon_recs.io import local_path
from amazon_recs.pipeline import run_lock as rl
from amazon_recs.serving import dynamodb

STAGES = ["ingest", "features"]


class Backend:
    """Keeps the locks a test makes, so that their heartbeats stop with the test (a
    held lock left beating would renew against a server stopped at the session end)."""

    def __init__(self):
        self.made = []

    def keep(self, lock):
        self.made.append(lock)
        return lock

    def close(self) -> None:
        for lock in self.made:
            lock._stop.set()


class FileBackend(Backend):
    def __init__(self, where: Path):
        super().__init__()
        self.where = where

    def lock(self, run_id, **kw):
        return self.keep(rl.RunLock(self.where, run_id, STAGES, **{"ttl_s": 60, "heartbeat_s": 30, **kw}))

    def age(self, seconds: float) -> None:
        """Make the lock's last renewal ``seconds`` old."""
        old = time.time() - seconds
        os.utime(self.where / rl.LOCK_NAME, (old, old))

    def exists(self) -> bool:
        return (self.where / rl.LOCK_NAME).exists()

    def corrupt(self) -> None:
        (self.where / rl.LOCK_NAME).write_text("{half a fi")

    def renewed_ago(self) -> float:
        return time.time() - (self.where / rl.LOCK_NAME).stat().st_mtime


class DynamoBackend(Backend):
    def __init__(self, endpoint: str, table: str):
        super().__init__()
        self.client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        self.table = table
        self.uri = f"s3://bucket-{uuid.uuid4().hex[:8]}/warehouse"  # one warehouse per test
        self.key = {"pk": {"S": f"lock#{self.uri}"}, "sk": {"S": "run"}}

    def lock(self, run_id, **kw):
        timing = {"ttl_s": 60, "heartbeat_s": 30, **kw}
        return self.keep(rl.DynamoLease(self.client, self.table, self.uri, run_id, STAGES, **timing))

    def age(self, seconds: float) -> None:
        self.client.update_item(
            TableName=self.table,
            Key=self.key,
            UpdateExpression="SET renewed_at = :t",
            ExpressionAttributeValues={":t": {"N": repr(time.time() - seconds)}},
        )

    def exists(self) -> bool:
        return "Item" in self.client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True)

    def corrupt(self) -> None:
        self.client.put_item(TableName=self.table, Item={**self.key, "note": {"S": "half a lease"}})

    def renewed_ago(self) -> float:
        return time.time() - self.lock("reader").read().renewed_at


@pytest.fixture(scope="module")
def lease_table(local_aws):
    client = boto3.client("dynamodb", endpoint_url=local_aws["dynamodb"], region_name="us-east-1")
    table = f"locks-{uuid.uuid4().hex[:8]}"
    dynamodb.ensure_table(client, table)
    return table


@pytest.fixture(params=["file", "dynamodb"])
def backend(request, tmp_path):
    if request.param == "file":
        made = FileBackend(tmp_path)
    else:
        local_aws, table = request.getfixturevalue("local_aws"), request.getfixturevalue("lease_table")
        made = DynamoBackend(local_aws["dynamodb"], table)
    yield made
    made.close()


def test_a_second_run_is_refused_naming_the_holder_until_the_first_releases(backend):
    first = backend.lock("run-a")
    assert first.acquire() is None
    holder = first.read()
    assert (holder.run_id, holder.pid, holder.stages) == ("run-a", os.getpid(), STAGES)
    with pytest.raises(rl.WarehouseLocked) as refused:
        backend.lock("run-b").acquire()
    message = str(refused.value)
    assert "run run-a" in message and f"pid {os.getpid()}" in message and "since 20" in message
    assert first.warehouse in message and first.remove_hint in message and refused.value.exit_code == 4
    first.release()
    assert not backend.exists()
    with backend.lock("run-b") as second:
        assert second.read().run_id == "run-b"
    assert not backend.exists()


def test_a_lock_not_renewed_within_its_ttl_is_taken_over(backend):
    stalled = backend.lock("run-a")
    stalled.acquire()
    stalled._stop.set()  # a hung run: alive (this very pid), but no longer renewing
    backend.age(61)
    taker = backend.lock("run-b")
    taken = taker.acquire()
    assert taken.run_id == "run-a"
    assert taker.read().run_id == "run-b"
    # The stalled run learns it at its next renewal, stops at its next stage, and its
    # release leaves the new holder's lock alone.
    stalled.renew()
    with pytest.raises(rl.WarehouseLocked, match="lost the warehouse lock: taken over by run run-b"):
        stalled.check()
    stalled.release()
    assert taker.read().run_id == "run-b"
    taker.release()


def test_a_taker_that_read_a_dead_lock_loses_to_a_renewal_in_between(backend):
    """Taking over removes exactly the lock that was read: if its holder renewed after
    the taker read it, the taker finds a live holder and is refused."""
    holder = backend.lock("run-a")
    holder.acquire()
    backend.age(61)
    taker = backend.lock("run-b")
    stale = taker.read()
    holder.renew()  # the slow holder comes back
    if isinstance(backend, DynamoBackend):
        assert not taker._take_over(stale)
    with pytest.raises(rl.WarehouseLocked, match="in use by run run-a"):
        taker.acquire()
    holder.check()
    holder.release()


def test_the_lock_of_a_pid_gone_from_this_host_is_taken_over_at_once(backend):
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = backend.lock("run-dead")
    dead.me.pid = int(child.stdout)  # as if that process had taken it, then been killed
    assert dead._create()
    taken = backend.lock("run-b").acquire()
    assert taken.run_id == "run-dead" and taken.pid == int(child.stdout)


def test_a_zombie_holder_counts_as_gone(backend):
    """A run killed with its parent is reparented to PID 1; a container's init may never
    reap it, so it stays in the process table as a zombie: dead, and its lock taken over."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].startswith(" Z"):
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.05)
    try:
        os.kill(child.pid, 0)  # still in the process table: kill() alone calls it alive
        assert not rl._alive(child.pid)
        assert rl._alive(os.getpid())
        dead = backend.lock("run-zombie")
        dead.me.pid = child.pid
        assert dead._create()
        assert backend.lock("run-b").acquire().run_id == "run-zombie"
    finally:
        child.wait()


def test_a_live_holder_renews_and_keeps_its_lock(backend):
    holder = backend.lock("run-a", ttl_s=1.0, heartbeat_s=0.05)
    holder.acquire()
    backend.age(0.9)
    time.sleep(0.3)
    assert backend.renewed_ago() < 0.2  # renewed by the heartbeat
    with pytest.raises(rl.WarehouseLocked):
        backend.lock("run-b", ttl_s=1.0, heartbeat_s=0.05).acquire()
    holder.check()
    holder.release()


def test_of_runs_starting_together_exactly_one_gets_the_lock(tmp_path, request):
    for attempt in range(10):
        backend = (
            FileBackend(tmp_path / str(attempt))
            if attempt % 2 == 0
            else DynamoBackend(
                request.getfixturevalue("local_aws")["dynamodb"], request.getfixturevalue("lease_table")
            )
        )
        start = threading.Barrier(4)
        results = []

        def run(i, backend=backend, start=start, results=results):
            candidate = backend.lock(f"run-{i}")
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
        backend.close()
        assert sorted(r for r, _ in results) == ["held", "refused", "refused", "refused"], type(backend)


def test_an_unreadable_lock_counts_from_its_last_known_renewal(backend):
    backend.corrupt()
    if isinstance(backend, FileBackend):  # a file has its modification time
        with pytest.raises(rl.WarehouseLocked, match="run \\?"):
            backend.lock("run-b").acquire()
        backend.age(61)
    assert backend.lock("run-b").acquire().run_id == "?"


def test_a_lease_that_cannot_be_renewed_for_its_ttl_is_lost(backend):
    holder = backend.lock("run-a", ttl_s=1.0, heartbeat_s=0.05)
    holder.acquire()
    holder._stop.set()
    holder._renewed = lambda now: (_ for _ in ()).throw(ConnectionError("no route to the lease"))
    holder.renew()  # within the ttl: a warning, still held
    holder.check()
    holder.me.renewed_at -= 2
    holder.renew()
    with pytest.raises(rl.WarehouseLocked, match="not renewed for 2s .*no route to the lease"):
        holder.check()


def test_only_local_warehouses_hold_a_lock_file():
    assert local_path("data/warehouse") == Path("data/warehouse")
    assert local_path("file:///tmp/w") == Path("/tmp/w") == local_path("file:/tmp/w")
    assert local_path("s3://bucket/warehouse") is None and local_path("s3a://b/w") is None
    with pytest.raises(ValueError, match="shorter than its ttl"):
        rl.RunLock(Path("/tmp"), "x", [], ttl_s=10, heartbeat_s=10)
