"""Latency of the recommendations Lambda handler against the local DynamoDB server.

Publishes a synthetic version (``--users`` users x the four served models, ten
products each, and the popular fallback) to a fresh table, then calls
``amazon_recs.serving.api.recommendations_handler`` in this process with API Gateway
proxy events, one after another: ``--warmup`` calls first (not counted), then
``--requests`` timed ones. A seeded mix: ``--unknown-share`` of the calls ask for a
user the version does not know (the fallback path: three reads instead of two),
the rest a known user and a random served model, ``k`` 10. Each call's wall time
covers the whole handler: event parsing, validation, the pointer read (strongly
consistent), the list read, JSON encoding.

``--clients N --duration S`` adds a run under load: N client processes (each its own
warm function: its own client and pointer cache) call the handler back to back for
S seconds, while this process publishes a second version from a quarter of the
way through (so that the switch, slowed by the load, falls inside the run), as the
export does (every list first, then the pointer, then the replaced version's TTL).
Every product's title names the version it was published in, so a response whose
items are not all of its ``model_version`` is counted as mixed; errors and mixed
responses must be none.

By default the servers are started for the run by ``bootstrap/local/services.sh``
on ports and a state folder of their own (and stopped after); ``--endpoint`` points
at a running one (e.g. ``make up``'s http://127.0.0.1:8000). Only 127.0.0.1 is ever
contacted.

    python bench/api_latency.py --requests 2000 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

from report_block import write_block

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "bootstrap" / "local" / "services.sh"
LOCAL_ENV = {  # the local servers take any key; the caller's AWS credentials are never used
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
VERSION = "bench-v1"
SECOND_VERSION = "bench-v2"  # published during the run under load
K = 10
MODELS = ("hybrid", "als", "item_knn", "content", "popular")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_dynamodb(endpoint: str | None) -> Iterator[str]:
    """``endpoint`` as given, or dynalite started (and stopped) for this run."""
    if endpoint:
        if urlsplit(endpoint).hostname not in ("127.0.0.1", "localhost"):
            sys.exit(f"error: --endpoint must be on 127.0.0.1, got {endpoint}")
        yield endpoint
        return
    with tempfile.TemporaryDirectory(prefix="api-latency-") as home:
        env = {
            **os.environ,
            **LOCAL_ENV,
            "AWS_LOCAL_HOME": home,
            "AWS_LOCAL_S3_PORT": str(free_port()),
            "AWS_LOCAL_DYNAMODB_PORT": str(port := free_port()),
        }
        up = subprocess.run(["bash", str(SERVICES), "up"], env=env, capture_output=True, text=True)
        if up.returncode:
            sys.exit(f"error: could not start the local servers:\n{up.stdout}{up.stderr}")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            subprocess.run(["bash", str(SERVICES), "down"], env=env, capture_output=True, text=True)


def publish(
    endpoint: str, users: int, seed: int, version: str = VERSION, table: str | None = None
) -> tuple[str, list[str], int]:
    """``users`` users' lists for every served model as ``version``, then the pointer
    moved to it (from the version it names, if any); a fresh table unless ``table`` is
    given. Returns (table, user ids, items written)."""
    from amazon_recs.serving import dynamodb, writer

    table = table or f"bench-{uuid.uuid4().hex[:10]}"
    settings = dynamodb.StoreSettings(table=table, region=LOCAL_ENV["AWS_REGION"], endpoint_url=endpoint)
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, table)
    rng = random.Random(f"{seed}-{version}")
    catalogue = [
        (f"B{n:09d}", f"Product {n} with a title of usual length ({version})", f"Category {n % 10}")
        for n in range(500)
    ]

    def ranked() -> list[dict]:
        picks = rng.sample(catalogue, K)
        return [
            {
                "rank": r,
                "item_id": i,
                "title": t,
                "category": c,
                "score": 1 - r / 20,
                "reason": f"because you rated {t}",
            }
            for r, (i, t, c) in enumerate(picks, start=1)
        ]

    ids = [f"U{n:07d}" for n in range(users)]
    generated = "2026-01-01T00:00:00+00:00"
    items = [
        writer.list_item(dynamodb.rec_key(m, u), version, ranked(), generated, None, user_id=u, model=m)
        for u in ids
        for m in MODELS
    ]
    items.append(writer.list_item(dynamodb.FALLBACK_PK, version, ranked(), generated, None))
    writer.write_items(client, settings, items)
    previous = dynamodb.current_version(client, table)
    previous = previous["model_version"] if previous else None
    dynamodb.switch_version(client, table, version, generated, expected=previous)
    return table, ids, len(items)


def event(user_id: str, model: str) -> dict:
    return {
        "path": f"/recommendations/{user_id}",
        "httpMethod": "GET",
        "pathParameters": {"user_id": user_id},
        "queryStringParameters": {"model": model, "k": str(K)},
        "body": None,
    }


@dataclass(frozen=True)
class Call:
    fallback: bool
    ms: float
    at: float = 0.0  # seconds since the load run started
    version: str = ""
    mixed: bool = False
    error: str = ""


def call(handler, users: list[str], unknown_share: float, rng: random.Random) -> Call:
    """One request for a random (known or unknown) user and served model, checked."""
    unknown = rng.random() < unknown_share
    user = f"X{rng.randrange(10**7):07d}" if unknown else rng.choice(users)
    request = event(user, rng.choice(MODELS))
    started = time.perf_counter_ns()
    response = handler(request, None)
    elapsed = (time.perf_counter_ns() - started) / 1e6
    if response["statusCode"] != 200:
        return Call(unknown, elapsed, error=f"{response['statusCode']} {response['body']}")
    body = json.loads(response["body"])
    if body["fallback"] != unknown:
        return Call(unknown, elapsed, error=f"{user} came back with the wrong fallback flag")
    version = body["model_version"]
    mixed = len(body["items"]) != K or any(not i["title"].endswith(f"({version})") for i in body["items"])
    return Call(unknown, elapsed, version=version, mixed=mixed)


def run(handler, users: list[str], n: int, unknown_share: float, rng: random.Random) -> list[Call]:
    calls = []
    for _ in range(n):
        done = call(handler, users, unknown_share, rng)
        if done.error or done.mixed:
            sys.exit(f"error: {done.error or 'a response mixed versions'}")
        calls.append(done)
    return calls


def client_process(endpoint: str, table: str, users: list[str], args, index: int, start_at: float, queue):
    """One warm function: its own handler state, calling back to back until the deadline."""
    os.environ.update({"AMAZON_RECS_TABLE": table, "AMAZON_RECS_DYNAMODB_ENDPOINT": endpoint})
    from amazon_recs.serving import api

    api._store.cache_clear()  # the parent's client (and its sockets) must not be shared after fork
    rng = random.Random(f"{args.seed}-{index}")
    run(api.recommendations_handler, users, 20, args.unknown_share, rng)  # warm: client, pointer
    while time.time() < start_at:
        time.sleep(0.001)
    calls = []
    while (now := time.time()) < start_at + args.duration:
        done = call(api.recommendations_handler, users, args.unknown_share, rng)
        calls.append(Call(done.fallback, done.ms, now - start_at, done.version, done.mixed, done.error))
    queue.put(calls)


def under_load(endpoint: str, table: str, users: list[str], args) -> tuple[list[Call], dict]:
    """``args.clients`` processes for ``args.duration`` seconds; a new version published
    (lists, pointer, then the old version's TTL) by this process from a quarter of the way."""
    import multiprocessing

    from amazon_recs.serving import dynamodb, writer

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start_at = time.time() + 3.0  # every client warm before the clock starts
    clients = [
        context.Process(target=client_process, args=(endpoint, table, users, args, i, start_at, queue))
        for i in range(args.clients)
    ]
    for process in clients:
        process.start()
    time.sleep(max(0.0, start_at + args.duration / 4 - time.time()))
    began = time.time()
    _, _, written = publish(endpoint, args.users, args.seed, SECOND_VERSION, table)
    switched = time.time()
    settings = dynamodb.StoreSettings(table=table, region=LOCAL_ENV["AWS_REGION"], endpoint_url=endpoint)
    client = dynamodb.make_client(settings)
    expiring = [  # the replaced version's lists again, with their TTL (as export's expire_version)
        {**item, dynamodb.TTL_ATTRIBUTE: {"N": str(int(switched) + 24 * 3600)}}
        for page in client.get_paginator("scan").paginate(TableName=table)
        for item in page["Items"]
        if item["sk"]["S"] == VERSION and item["pk"]["S"] != "pointer"
    ]
    writer.write_items(client, settings, expiring)
    publish_info = {
        "items": written,
        "seconds": switched - began,
        "at": began - start_at,
        "switched_at": switched - start_at,
        "expired": len(expiring),
        "expire_seconds": time.time() - switched,
    }
    calls = [c for _ in clients for c in queue.get(timeout=args.duration + 120)]
    for process in clients:
        process.join(timeout=30)
    return calls, publish_info


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]


def summary_row(name: str, ms: Sequence[float], seconds: float | None = None) -> str:
    rate = f"{len(ms) / seconds:,.0f}" if seconds else "-"
    cells = [percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), max(ms), statistics.fmean(ms)]
    return f"| {name} | {len(ms):,} | " + " | ".join(f"{v:.2f}" for v in cells) + f" | {rate} |"


def machine() -> str:
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.M).group(1))
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    load = Path("/proc/loadavg").read_text().split()[0]
    return (
        f"{len(os.sched_getaffinity(0))} CPUs (nproc), {mem_kib / 2**20:.1f} GiB RAM, "
        f"{cpu.group(1).strip() if cpu else platform.processor()}, load average {load} at start"
    )


def dynalite_version() -> str:
    return json.loads((ROOT / "bootstrap/local/dynalite/package.json").read_text())["dependencies"][
        "dynalite"
    ]


def report(
    args: argparse.Namespace, argv: Sequence[str], calls: list[Call], seconds: float, load: str
) -> str:
    known = [c.ms for c in calls if not c.fallback]
    fallback = [c.ms for c in calls if c.fallback]
    command = "python bench/api_latency.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [
        "### Recommendations API latency (local DynamoDB)",
        "",
        f"`{command}` on {date.today().isoformat()}; {load}; Python {platform.python_version()}, "
        f"boto3 {version('boto3')}, dynalite {dynalite_version()} (Node {node_version()}).",
        "",
        f"`recommendations_handler` called in-process, one call at a time, {args.requests:,} timed calls "
        f"after {args.warmup:,} warm-up calls, on a version of {args.users:,} users x {len(MODELS)} models "
        f"(k {K}); {args.unknown_share:.0%} of the calls for unknown users (the popular fallback). "
        "Milliseconds per call:",
        "",
        "| calls | n | p50 | p90 | p99 | max | mean | calls/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        summary_row("all", [c.ms for c in calls], seconds),
        summary_row("known user (1 read)", known),
    ]
    if fallback:
        lines.append(summary_row("unknown user (2 reads)", fallback))
    lines += [
        "",
        "Each call reads the list (GetItem); an unknown user's call reads the fallback list too. The "
        "version pointer (GetItem, strongly consistent) is read once per `api.pointer_cache_seconds` "
        "(5 s) by a warm function, not on every call (it was before: p50 5.23 ms, 175 calls/s on "
        "2026-11-28). dynalite is a Node.js emulation on LevelDB "
        "sharing the 2 cores with the client, so these figures are the handler and HTTP round trips, "
        "not DynamoDB's own latency; API Gateway and Lambda start-up are not included.",
    ]
    return "\n".join(lines)


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() or "?"
    except OSError:
        return "?"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed calls (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before timing (default 200)")
    parser.add_argument("--users", type=int, default=1000, help="users in the published version")
    parser.add_argument("--unknown-share", type=float, default=0.1, help="share of calls for unknown users")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clients", type=int, default=0, help="client processes for the run under load")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the run under load")
    parser.add_argument("--endpoint", help="a running local DynamoDB (default: start one for the run)")
    parser.add_argument("--out", type=Path, help="Markdown file to write the table into (e.g. BENCHMARKS.md)")
    args = parser.parse_args(argv)
    if args.clients < 0 or args.duration <= 0:
        parser.error("--clients must be >= 0 and --duration positive")
    if args.requests < 1 or args.warmup < 0 or args.users < 1 or not 0 <= args.unknown_share < 1:
        parser.error("--requests and --users must be positive, --warmup >= 0, --unknown-share in [0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AMAZON_RECS_CONFIG", "AMAZON_RECS_S3_ENDPOINT"):
        os.environ.pop(name, None)
    os.environ.update(LOCAL_ENV)
    logging.getLogger("amazon_recs").setLevel(logging.ERROR)  # dynalite has no TTL: known, not news
    load = machine()
    from amazon_recs.serving import api

    with local_dynamodb(args.endpoint) as endpoint:
        started = time.perf_counter()
        table, users, written = publish(endpoint, args.users, args.seed)
        first_publish = (written, time.perf_counter() - started)
        os.environ.update({"AMAZON_RECS_TABLE": table, "AMAZON_RECS_DYNAMODB_ENDPOINT": endpoint})
        rng = random.Random(args.seed)
        run(api.recommendations_handler, users, args.warmup, args.unknown_share, rng)
        started = time.perf_counter()
        calls = run(api.recommendations_handler, users, args.requests, args.unknown_share, rng)
        seconds = time.perf_counter() - started
        loaded = under_load(endpoint, table, users, args) if args.clients else None
    body = report(args, argv, calls, seconds, load)
    body += "\n\n" + publish_report(first_publish)
    if loaded is not None:
        body += "\n\n" + load_report(args, *loaded)
    print(body)
    if args.out:
        write_block(args.out, "api-latency", body)
        print(f"\nwritten to {args.out}")
    if loaded is not None:
        bad = [c for c in loaded[0] if c.error or c.mixed]
        if bad:
            print(
                f"error: {len(bad)} calls under load failed or mixed versions, e.g. {bad[0]}", file=sys.stderr
            )
            return 1
    return 0


def publish_report(first: tuple[int, float]) -> str:
    items, seconds = first
    return (
        f"Publishing a version to the local server (`serving.writer`, BatchWriteItem of 25 with "
        f"retries, one client): {items:,} items in {seconds:.1f} s, **{items / seconds:,.0f} items/s**. "
        "The export writes from `export.dynamodb.max_concurrency` executor partitions at once."
    )


def load_report(args: argparse.Namespace, calls: list[Call], published: dict) -> str:
    ok = [c for c in calls if not c.error]
    errors, mixed = len(calls) - len(ok), sum(c.mixed for c in calls)
    switched = published["switched_at"]
    after = [c for c in ok if c.at >= switched]
    served_old_after = [c.at - switched for c in after if c.version == VERSION]
    lines = [
        f"#### Under load: {args.clients} clients for {args.duration:.0f} s during a publish",
        "",
        f"{args.clients} client processes (each a warm function with its own client and pointer cache) "
        f"call the handler back to back for {args.duration:.0f} s; at {published['at']:.1f} s this process "
        f"publishes `{SECOND_VERSION}` as the export does: {published['items']:,} items in "
        f"{published['seconds']:.1f} s ({published['items'] / published['seconds']:,.0f} items/s while "
        f"serving), the pointer switch at {switched:.1f} s, then the {published['expired']:,} items of "
        f"`{VERSION}` rewritten with their TTL in {published['expire_seconds']:.1f} s. "
        "Milliseconds per call:",
        "",
        "| calls | n | p50 | p90 | p99 | max | mean | calls/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            summary_row(name, ms, seconds)
            for name, ms, seconds in (
                ("all", [c.ms for c in ok], args.duration),
                ("during the publish", [c.ms for c in ok if published["at"] <= c.at < switched], None),
                ("known user", [c.ms for c in ok if not c.fallback], None),
                ("unknown user", [c.ms for c in ok if c.fallback], None),
            )
            if ms
        ],
        "",
        f"Errors: **{errors}**. Responses mixing versions (an item not of the response's "
        f"`model_version`, or fewer than {K} items): **{mixed}**. Served `{VERSION}` before the switch: "
        f"{sum(c.version == VERSION for c in ok if c.at < switched):,}, `{SECOND_VERSION}` after it: "
        f"{sum(c.version == SECOND_VERSION for c in after):,}; `{VERSION}` after it (whole, from a pointer "
        f"cached up to `api.pointer_cache_seconds`): {len(served_old_after):,}"
        + (f", the last {max(served_old_after):.1f} s after the switch." if served_old_after else "."),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
