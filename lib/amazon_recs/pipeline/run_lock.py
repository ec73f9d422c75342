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

This lock is for warehouses on a local or shared POSIX file system. An ``s3://``
warehouse cannot hold it (S3 has no exclusive create that every client honours);
there the lock is not taken and the run says so (a lease in DynamoDB is the
planned answer).
"""

from __future__ import annotations

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


class RunLock:
    """The lock of one run on one warehouse directory; a context manager."""

    def __init__(
        self,
        warehouse: Path,
        run_id: str,
        stages: list[str],
        ttl_s: float = 300.0,
        heartbeat_s: float = 30.0,
        clock=time.time,
    ):
        if heartbeat_s >= ttl_s:
            raise ValueError(f"the lock's heartbeat ({heartbeat_s}s) must be shorter than its ttl ({ttl_s}s)")
        self.path = Path(warehouse) / LOCK_NAME
        self.me = Holder(run_id, socket.gethostname(), os.getpid(), list(stages), 0.0, 0.0)
        self.ttl_s, self.heartbeat_s, self.clock = ttl_s, heartbeat_s, clock
        self.lost: str | None = None  # why the lock was lost, if it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- taking and giving back -------------------------------------------------------

    def acquire(self) -> Holder | None:
        """Take the lock, or raise ``WarehouseLocked``. Returns the dead holder taken over, if any."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
                    f"the warehouse {self.path.parent} is in use by {holder.describe(now)}. "
                    f"Wait for it to end; a lock not renewed for {self.ttl_s:.0f}s (run.lock_ttl_seconds) "
                    f"is taken over; if that run is gone for sure, delete {self.path}"
                )
            aside = self.path.with_name(f"{LOCK_NAME}.taken-by-{self.me.run_id}")
            try:
                os.rename(self.path, aside)  # only one taker wins this rename
            except FileNotFoundError:
                continue
            log.warning("run lock: took over the lock of %s: %s", holder.describe(now), why_dead)
            taken_over = holder
        raise WarehouseLocked(f"could not take the lock {self.path}: other runs keep taking it")

    def release(self) -> None:
        """Stop renewing and remove the lock if it still names this run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s)
        holder = self.read()
        if holder is not None and holder.run_id == self.me.run_id:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Raise if the lock was lost (taken over while this run stalled)."""
        if self.lost:
            raise WarehouseLocked(f"this run ({self.me.run_id}) lost the warehouse lock: {self.lost}")

    # --- the file ---------------------------------------------------------------------

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
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        fields = {k: v for k, v in self.me.__dict__.items() if k != "renewed_at"}
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(fields, sort_keys=True))
        os.utime(self.path, (self.me.renewed_at, self.me.renewed_at))
        return True

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
        """Set the renewal time; then, if the lock names another run (or none), it is lost.

        Touching a lock another run has just taken only refreshes that live run's time."""
        now = self.clock()
        try:
            os.utime(self.path, (now, now))
        except FileNotFoundError:
            pass
        holder = self.read()
        if holder is None or holder.run_id != self.me.run_id:
            self.lost = "taken over by " + (
                holder.describe(now) if holder else "nobody (the file was removed)"
            )
            self._stop.set()
            return
        self.me.renewed_at = now


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
