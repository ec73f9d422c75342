"""One run at a time on a warehouse: a lock file held while the run lives.

Two runs on one warehouse would interleave their stages (one's recommend reading
the other's model, gold tables overwritten under each other). Every run therefore
takes ``<warehouse>/_RUN_LOCK`` before its SparkSession starts:

- **Taking it** is an exclusive create (``O_CREAT | O_EXCL``): of two runs
  starting together exactly one succeeds. The file names the run: its id, host,
  pid, the stages it runs, when it started and when it last renewed the lock.
- **Holding it**: a daemon thread renews it every ``heartbeat_s`` seconds by
  setting the file's modification time (the renewal time; the content is never
  rewritten, so a renewal cannot overwrite another run's lock). A run that finds,
  at renewal, that the lock now names another run has lost it (taken over after
  it stalled) and stops at its next stage.
- **A second run** stops at once with a message naming the holder and since when.
- **A dead run's lock** is taken over: when its renewal is older than ``ttl_s``
  (the holder is dead or hung, on any machine), or at once when the holder ran on
  this host and its pid is gone. Taking over renames the old file aside first
  (``_RUN_LOCK.taken-by-<run id>``; of two takers only one rename succeeds), then
  creates a new one exclusively.
- **Releasing it** (the run ends, well or not) removes the file if it still
  names this run.

``RunLock`` is the lock file, for warehouses on a local or shared POSIX file
system. An ``s3://`` warehouse cannot hold a file lock (S3 has no exclusive create
that every client honours), and Delta on S3 is safe for one writer at a time only:
there ``DynamoLease`` holds the same lock as an item of a DynamoDB table, so that
runs on different machines (a laptop and an EMR cluster, two clusters) exclude each
other. Taking it is a conditional put (the item must not exist), renewing it a
conditional update of its renewal time (the item must still name this run), taking
over a dead holder a conditional delete of exactly the item that was read (its run
id and renewal time), releasing it a conditional delete. A renewal time is the
holder's clock and a taker compares it with its own, so clocks are assumed to agree
to well within the ttl (NTP; EC2's time sync keeps EMR nodes within milliseconds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs.errors import RecsError

log = logging.getLogger("amazon_recs")
LOCK_NAME = "_RUN_LOCK"


class WarehouseLocked(RecsError):
    """Another run holds the warehouse's lock."""

    exit_code = 4


def new_run_id() -> str:
    """Sortable and unique: the start time (UTC) and 6 random hex digits."""
    return f"{datetime.now(tz=UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@dataclass
class Holder:
    """What the lock file says about the run holding it."""

    run_id: str
    host: str
    pid: int
    stages: list[str]
    started_at: float
    renewed_at: float

    def describe(self, now: float) -> str:
        since = datetime.fromtimestamp(self.started_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"run {self.run_id} (pid {self.pid} on {self.host}, stages {', '.join(self.stages) or '-'}) "
            f"since {since}, last renewed {now - self.renewed_at:.0f}s ago"
        )


class _Lock:
    """What every run lock does: take, renew, check, take over, release. A backend says
    where the lock lives and gives the five atomic steps: ``_create`` (only if there is
    none), ``read``, ``_take_over`` (remove exactly the dead holder's lock), ``_renewed``
    (renew if still ours, then say who holds it) and ``_remove_mine``."""

    warehouse: str  # the warehouse the lock is for, for messages
    where: str  # where the lock lives, for messages
    remove_hint: str  # how a person removes a lock by hand

    def __init__(self, run_id: str, stages: list[str], ttl_s: float, heartbeat_s: float, clock):
        if heartbeat_s >= ttl_s:
            raise ValueError(f"the lock's heartbeat ({heartbeat_s}s) must be shorter than its ttl ({ttl_s}s)")
        self.me = Holder(run_id, socket.gethostname(), os.getpid(), list(stages), 0.0, 0.0)
        self.ttl_s, self.heartbeat_s, self.clock = ttl_s, heartbeat_s, clock
        self.lost: str | None = None  # why the lock was lost, if it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- taking and giving back -------------------------------------------------------

    def acquire(self) -> Holder | None:
        """Take the lock, or raise ``WarehouseLocked``. Returns the dead holder taken over, if any."""
        taken_over = None
        for _ in range(3):  # create; or take over a dead holder's lock, then create
            now = self.clock()
            self.me.started_at = self.me.renewed_at = now
            if self._create():
                self._start_heartbeat()
                return taken_over
            holder = self.read()
            if holder is None:  # released (or being taken over) between our two calls
                continue
            why_dead = self._dead(holder, now)
            if why_dead is None:
                raise WarehouseLocked(
                    f"the warehouse {self.warehouse} is in use by {holder.describe(now)}. "
                    f"Wait for it to end; a lock not renewed for {self.ttl_s:.0f}s (run.lock_ttl_seconds) "
                    f"is taken over; if that run is gone for sure, {self.remove_hint}"
                )
            if not self._take_over(holder):  # another taker was first, or the holder renewed
                continue
            log.warning("run lock: took over the lock of %s: %s", holder.describe(now), why_dead)
            taken_over = holder
        raise WarehouseLocked(f"could not take the lock {self.where}: other runs keep taking it")

    def release(self) -> None:
        """Stop renewing and remove the lock if it still names this run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s)
        self._remove_mine()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Raise if the lock was lost (taken over while this run stalled)."""
        if self.lost:
            raise WarehouseLocked(f"this run ({self.me.run_id}) lost the warehouse lock: {self.lost}")

    def _dead(self, holder: Holder, now: float) -> str | None:
        """Why ``holder`` counts as dead, or None while it may be alive."""
        if now - holder.renewed_at > self.ttl_s:
            return f"not renewed for {now - holder.renewed_at:.0f}s (ttl {self.ttl_s:.0f}s)"
        if holder.host == self.me.host and holder.pid > 0 and not _alive(holder.pid):
            return f"its pid {holder.pid} is gone from this host"
        return None

    # --- renewal ------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.renew()

    def renew(self) -> None:
        """Renew; if the lock now names another run (or none), it is lost. A renewal
        that fails (the lease's table out of reach) is tried again at the next beat;
        once the last renewal is older than the ttl, the lock counts as lost."""
        now = self.clock()
        try:
            holder = self._renewed(now)
        except Exception as exc:  # noqa: BLE001 - the heartbeat thread must not die silently
            log.warning("run lock: could not renew %s: %s", self.where, exc)
            if now - self.me.renewed_at > self.ttl_s:
                self.lost = f"not renewed for {now - self.me.renewed_at:.0f}s (ttl {self.ttl_s:.0f}s): {exc}"
                self._stop.set()
            return
        if holder is None or holder.run_id != self.me.run_id:
            self.lost = "taken over by " + (
                holder.describe(now) if holder else f"nobody ({self.where} was removed)"
            )
            self._stop.set()
            return
        self.me.renewed_at = now

    # --- the backend ----------------------------------------------------------------------

    def read(self) -> Holder | None:
        raise NotImplementedError

    def _create(self) -> bool:
        raise NotImplementedError

    def _take_over(self, holder: Holder) -> bool:
        raise NotImplementedError

    def _renewed(self, now: float) -> Holder | None:
        raise NotImplementedError

    def _remove_mine(self) -> None:
        raise NotImplementedError


class RunLock(_Lock):
    """The lock file ``<warehouse>/_RUN_LOCK`` of a warehouse on a (shared) file system."""

    def __init__(
        self,
        warehouse: Path,
        run_id: str,
        stages: list[str],
        ttl_s: float = 300.0,
        heartbeat_s: float = 30.0,
        clock=time.time,
    ):
        super().__init__(run_id, stages, ttl_s, heartbeat_s, clock)
        self.path = Path(warehouse) / LOCK_NAME
        self.warehouse, self.where = str(self.path.parent), str(self.path)
        self.remove_hint = f"delete {self.path}"

    def read(self) -> Holder | None:
        """The holder named by the lock file, or None when there is none."""
        try:
            renewed = self.path.stat().st_mtime
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # unreadable or half-written: it counts from its mtime
            data = {"run_id": "?", "host": "?", "pid": -1, "stages": [], "started_at": 0.0}
        return Holder(
            **{k: data.get(k) for k in Holder.__dataclass_fields__ if k != "renewed_at"}, renewed_at=renewed
        )

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        fields = {k: v for k, v in self.me.__dict__.items() if k != "renewed_at"}
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(fields, sort_keys=True))
        os.utime(self.path, (self.me.renewed_at, self.me.renewed_at))
        return True

    def _take_over(self, holder: Holder) -> bool:
        """Rename the dead holder's file aside: of two takers only one rename succeeds."""
        try:
            os.rename(self.path, self.path.with_name(f"{LOCK_NAME}.taken-by-{self.me.run_id}"))
        except FileNotFoundError:
            return False
        return True

    def _renewed(self, now: float) -> Holder | None:
        """Set the file's modification time, then read who holds it. Only the time is
        touched, so touching a lock another run has just taken only refreshes that live
        run's time."""
        try:
            os.utime(self.path, (now, now))
        except FileNotFoundError:
            pass
        return self.read()

    def _remove_mine(self) -> None:
        holder = self.read()
        if holder is not None and holder.run_id == self.me.run_id:
            self.path.unlink(missing_ok=True)


class DynamoLease(_Lock):
    """The lock of a warehouse anywhere (``s3://``) as an item of a DynamoDB table:
    ``pk = lock#<warehouse uri>``, ``sk = run``, with the holder's fields and its
    renewal time (``renewed_at``, epoch seconds). Every write is conditional, so of
    two runs on two machines exactly one holds it."""

    SK = "run"

    def __init__(
        self,
        client,
        table: str,
        warehouse: str,
        run_id: str,
        stages: list[str],
        ttl_s: float = 300.0,
        heartbeat_s: float = 30.0,
        clock=time.time,
    ):
        super().__init__(run_id, stages, ttl_s, heartbeat_s, clock)
        self.client, self.table, self.uri = client, table, warehouse.rstrip("/")
        self.warehouse = self.uri
        self.key = {"pk": {"S": f"lock#{self.uri}"}, "sk": {"S": self.SK}}
        self.where = f"the lease lock#{self.uri} in DynamoDB table {table}"
        self.remove_hint = f"delete the item pk=lock#{self.uri}, sk={self.SK} from DynamoDB table {table}"

    def acquire(self) -> Holder | None:
        try:
            return super().acquire()
        except (BotoCoreError, ClientError) as exc:
            raise RecsError(f"cannot take {self.where}: {exc}") from None

    def _remove_mine(self) -> None:
        try:
            self._conditional(
                "delete_item",
                Key=self.key,
                ConditionExpression="run_id = :me",
                ExpressionAttributeValues={":me": {"S": self.me.run_id}},
            )
        except (BotoCoreError, ClientError) as exc:  # it expires after its ttl
            log.warning(
                "run lock: could not release %s (it expires after %.0fs): %s", self.where, self.ttl_s, exc
            )

    def read(self) -> Holder | None:
        item = self.client.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get("Item")
        if item is None:
            return None
        try:
            return Holder(
                run_id=item["run_id"]["S"],
                host=item["host"]["S"],
                pid=int(item["pid"]["N"]),
                stages=[v["S"] for v in item["stages"]["L"]],
                started_at=float(item["started_at"]["N"]),
                renewed_at=float(item["renewed_at"]["N"]),
            )
        except (KeyError, ValueError):  # written by hand or by something else: counts as never renewed
            return Holder("?", "?", -1, [], 0.0, 0.0)

    def _create(self) -> bool:
        me = self.me
        item = {
            **self.key,
            "run_id": {"S": me.run_id},
            "host": {"S": me.host},
            "pid": {"N": str(me.pid)},
            "stages": {"L": [{"S": stage} for stage in me.stages]},
            "started_at": {"N": repr(me.started_at)},
            "renewed_at": {"N": repr(me.renewed_at)},
        }
        return self._conditional("put_item", Item=item, ConditionExpression="attribute_not_exists(pk)")

    def _take_over(self, holder: Holder) -> bool:
        """Delete the dead holder's item only if it is still exactly what was read: a
        holder that renewed meanwhile, or another taker that was first, wins."""
        if holder.run_id == "?":  # an unreadable item: whatever is there goes
            return self._conditional("delete_item", Key=self.key)
        return self._conditional(
            "delete_item",
            Key=self.key,
            ConditionExpression="run_id = :run AND renewed_at = :renewed",
            ExpressionAttributeValues={
                ":run": {"S": holder.run_id},
                ":renewed": {"N": repr(holder.renewed_at)},
            },
        )

    def _renewed(self, now: float) -> Holder | None:
        renewed = self._conditional(
            "update_item",
            Key=self.key,
            UpdateExpression="SET renewed_at = :now",
            ConditionExpression="run_id = :me",
            ExpressionAttributeValues={":now": {"N": repr(now)}, ":me": {"S": self.me.run_id}},
        )
        if renewed:
            return dataclasses.replace(self.me, renewed_at=now)
        return self.read()

    def _conditional(self, operation: str, **request) -> bool:
        """One conditional write: True when it was made, False when its condition failed."""
        try:
            getattr(self.client, operation)(TableName=self.table, **request)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs. A zombie does not: a run killed
    with its parent is reparented to PID 1, and where PID 1 does not reap (a container's
    init) it stays in the process table, dead, for as long as the container lives."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive unless a zombie
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS) or it went in between: kill() said it was there
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ")".
    return stat[stat.rindex(")") + 2 :][:1] != "Z"
