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
K = 10
MODELS = ("hybrid", "als", "content", "popular")


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


def publish(endpoint: str, users: int, seed: int) -> tuple[str, list[str]]:
    """A fresh table with ``users`` users' lists for every served model: (table, user ids)."""
    from amazon_recs.serving import dynamodb, writer

    table = f"bench-{uuid.uuid4().hex[:10]}"
    settings = dynamodb.StoreSettings(table=table, region=LOCAL_ENV["AWS_REGION"], endpoint_url=endpoint)
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, table)
    rng = random.Random(seed)
    catalogue = [
        (f"B{n:09d}", f"Product {n} with a title of usual length", f"Category {n % 10}") for n in range(500)
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
        writer.list_item(dynamodb.rec_key(m, u), VERSION, ranked(), generated, 2**31, user_id=u, model=m)
        for u in ids
        for m in MODELS
    ]
    items.append(writer.list_item(dynamodb.FALLBACK_PK, VERSION, ranked(), generated, 2**31))
    writer.write_items(client, settings, items)
    dynamodb.switch_version(client, table, VERSION, generated, expected=None)
    return table, ids


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


def run(handler, users: list[str], n: int, unknown_share: float, rng: random.Random) -> list[Call]:
    calls = []
    for _ in range(n):
        unknown = rng.random() < unknown_share
        user = f"X{rng.randrange(10**7):07d}" if unknown else rng.choice(users)
        request = event(user, rng.choice(MODELS))
        started = time.perf_counter_ns()
        response = handler(request, None)
        elapsed = (time.perf_counter_ns() - started) / 1e6
        if response["statusCode"] != 200:
            sys.exit(f"error: {response['statusCode']} {response['body']}")
        if json.loads(response["body"])["fallback"] != unknown:
            sys.exit(f"error: {user} came back with the wrong fallback flag")
        calls.append(Call(unknown, elapsed))
    return calls


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
    parser.add_argument("--endpoint", help="a running local DynamoDB (default: start one for the run)")
    parser.add_argument("--out", type=Path, help="Markdown file to write the table into (e.g. BENCHMARKS.md)")
    args = parser.parse_args(argv)
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
        table, users = publish(endpoint, args.users, args.seed)
        os.environ.update({"AMAZON_RECS_TABLE": table, "AMAZON_RECS_DYNAMODB_ENDPOINT": endpoint})
        rng = random.Random(args.seed)
        run(api.recommendations_handler, users, args.warmup, args.unknown_share, rng)
        started = time.perf_counter()
        calls = run(api.recommendations_handler, users, args.requests, args.unknown_share, rng)
        seconds = time.perf_counter() - started
    body = report(args, argv, calls, seconds, load)
    print(body)
    if args.out:
        write_block(args.out, "api-latency", body)
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
