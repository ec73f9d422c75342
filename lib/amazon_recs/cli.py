"""Command line: ``amazon-recs run|show|sample|emr`` and the jobs' shared entry point.

This is the one place exceptions become messages: a RecsError prints its own
line, anything else prints a one-line summary (``--debug`` shows the trace), and
the process exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from amazon_recs.aws import commands as emr_commands
from amazon_recs.config import DEFAULT_CONFIG, Config, add_config_arguments, load_config
from amazon_recs.errors import ConfigError, RecsError, StageOrderError, out_of_memory
from amazon_recs.models import MODELS
from amazon_recs.pipeline.registry import STAGE_ORDER, STAGES, stage_function

SHOP_SIZES = ("100k", "1m", "10m")  # amazon_recs.ingest.shop.SIZES, without importing numpy here

log = logging.getLogger("amazon_recs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amazon-recs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run pipeline stages in order")
    run.add_argument(
        "stages",
        nargs="*",
        default=["all"],
        help=f"any of {', '.join(STAGES)}, or all (the first {len(STAGE_ORDER)} in order)",
    )
    add_config_arguments(run)
    show = sub.add_parser("show", help="print one user's top-10 for a model")
    show.add_argument("--user", required=True)
    show.add_argument("--model", default="hybrid", choices=MODELS)
    add_config_arguments(show)
    sample = sub.add_parser("sample", help="write the generated sample shop (or a large one) to a folder")
    sample.add_argument("--out", required=True)
    sample.add_argument(
        "--size",
        choices=SHOP_SIZES,
        help="a large shop for scale runs: part files under OUT/reviews and OUT/meta (default: the sample)",
    )
    sample.add_argument("--reviews", type=int, help="a large shop of exactly this many reviews")
    sample.add_argument("--users", type=int, help="with --reviews: how many users (default reviews / 4)")
    sample.add_argument("--items", type=int, help="with --reviews: how many products (default reviews / 20)")
    sample.add_argument("--seed", type=int, default=7)
    sample.add_argument("--config", default=DEFAULT_CONFIG)
    sample.add_argument("--set", dest="overrides", action="append", default=[])
    sample.add_argument("--debug", action="store_true")
    emr_commands.add_parser(sub.add_parser("emr", help="package, deploy and run the pipeline on AWS EMR"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        stages = list(STAGE_ORDER) if args.stages in (["all"], []) else args.stages
        return run_job(stages, args)
    if args.command == "emr":
        logging.getLogger("botocore").setLevel(logging.WARNING)  # not "Found credentials in ..."
        return _guarded(lambda: emr_commands.EMR_COMMANDS[args.emr_command](args), args.debug)
    commands: dict[str, Callable] = {"show": _show, "sample": _sample}
    return _guarded(lambda: commands[args.command](args), args.debug)


def job_main(stages: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/<stage>.py``: ``--config`` and ``--set`` only."""
    parser = argparse.ArgumentParser(description=f"run stage(s): {', '.join(stages)}")
    add_config_arguments(parser)
    return run_job(list(stages), parser.parse_args(argv))


def refresh_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jobs/refresh.py``: one refresh, or with ``--every`` one a round in
    the same Spark session, so that every round after the first finds the JVM started,
    its code compiled and the Delta logs read (the round's own work is what is left)."""
    parser = argparse.ArgumentParser(description="run stage(s): refresh")
    add_config_arguments(parser)
    parser.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="refresh in rounds this many seconds apart (start to start), in one Spark session",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        metavar="N",
        help="with --every: stop after N rounds (0: until stopped)",
    )
    args = parser.parse_args(argv)
    if args.every is None:
        return run_job(["refresh"], args)
    if args.every < 0 or args.rounds < 0:
        parser.error("--every and --rounds take a number of at least 0")
    return _guarded(
        lambda: refresh_rounds(lambda: _run_stages(["refresh"], args), args.every, args.rounds), args.debug
    )


def refresh_rounds(
    round_: Callable[[], object],
    every: float,
    rounds: int = 0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``round_`` every ``every`` seconds, start to start (at once after a round that
    took longer), ``rounds`` times (0: until stopped). A round that finds the warehouse
    held by another run, or the current version not exported yet (a full run between its
    train and export stages), is skipped with one line: the next round catches up. Any
    other error ends the rounds, as it ends a single refresh."""
    from amazon_recs.pipeline.run_lock import WarehouseLocked  # botocore: imported when rounds run

    done = 0
    next_at = clock()
    try:
        while not rounds or done < rounds:
            sleep(max(0.0, next_at - clock()))
            next_at = clock() + every
            done += 1
            try:
                round_()
            except (WarehouseLocked, StageOrderError) as exc:
                log.warning("refresh round %d skipped: %s", done, exc)
    except KeyboardInterrupt:
        log.info("refresh stopped after %d round(s)", done)


def run_job(stages: list[str], args: argparse.Namespace) -> int:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(
            f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}",
            file=sys.stderr,
        )
        return 2
    return _guarded(lambda: _run_stages(stages, args), args.debug)


def _guarded(action: Callable[[], int | None], debug: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return action() or 0
    except RecsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # the one place unexpected failures are summarised
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: unexpected {type(exc).__name__}: {first}", file=sys.stderr)
        if not debug:
            print("       (rerun with --debug for the full traceback)", file=sys.stderr)
        return 1


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def _run_stages(stages: list[str], args: argparse.Namespace) -> int:
    config = _load(args)
    with _run_lock(config, sorted(stages, key=STAGES.index)) as lock:
        return _run_locked(stages, config, lock)


def _run_lock(config: Config, stages: list[str]):
    """The warehouse's run lock (``pipeline.run_lock``), taken before Spark starts so
    that a second run stops at once: a lock file on a local warehouse, a lease in
    DynamoDB (``run.lock_table``) on an ``s3://`` one."""
    from amazon_recs.io import local_path
    from amazon_recs.pipeline import run_lock

    run_id = run_lock.new_run_id()
    if not config.require("run.lock"):
        return contextlib.nullcontext(None)
    timing = {
        "ttl_s": config.require("run.lock_ttl_seconds"),
        "heartbeat_s": config.require("run.lock_heartbeat_seconds"),
    }
    warehouse = config.require("paths.warehouse")
    local = local_path(warehouse)
    if local is not None:
        log.info("run %s: holding the lock %s", run_id, local / run_lock.LOCK_NAME)
        return run_lock.RunLock(local, run_id, stages, **timing)
    lease = run_lock.DynamoLease(
        _lease_client(config), config.require("run.lock_table"), warehouse, run_id, stages, **timing
    )
    log.info("run %s: holding %s", run_id, lease.where)
    return lease


def _lease_client(config: Config):
    """A DynamoDB client for the run lease, its table created when export may create tables."""
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    from amazon_recs.serving import dynamodb

    table = config.require("run.lock_table")
    client = boto3.client(
        "dynamodb",
        region_name=config.require("aws.region"),
        endpoint_url=config.require("aws.dynamodb_endpoint") or None,
        config=BotoConfig(
            retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=10
        ),
    )
    try:
        if config.require("export.dynamodb.create_table"):
            dynamodb.ensure_table(client, table)
        else:
            client.describe_table(TableName=table)
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError(
            f"the run lease of an s3:// warehouse lives in DynamoDB table {table} (run.lock_table), "
            f"which cannot be used: {exc}"
        ) from None
    return client


def _run_locked(stages: list[str], config: Config, lock) -> int:
    from amazon_recs.pipeline.base import NOW
    from amazon_recs.pipeline.summary import pipeline_summary
    from amazon_recs.spark import driver_facts, get_spark

    spark = get_spark(config)
    facts = driver_facts(spark)
    log.info(
        "driver: %s, JVM heap at most %.1f GiB (spark.driver_memory %s)%s",
        facts["master"],
        facts["max_heap_bytes"] / 2**30,
        config.require("spark.driver_memory"),
        f"; Spark's log: {facts['log_file']}" if facts["log_file"] else "",
    )
    summaries = {}
    for stage in sorted(stages, key=STAGES.index):
        if lock is not None:
            lock.check()
        started = time.time()
        log.info("stage %s: starting", stage)
        try:
            summaries[stage] = stage_function(stage)(spark, config)
        except RecsError:
            raise
        except Exception as exc:
            memory = config.require("spark.driver_memory")
            oom = out_of_memory(exc, stage, NOW["step"], memory, facts["log_file"])
            if oom is None:
                raise
            raise oom from exc
        log.info("stage %s: done in %.1fs%s", stage, time.time() - started, headline(summaries[stage]))
    if set(stages) == set(STAGE_ORDER):
        print(pipeline_summary(spark, config, summaries))
    return 0


def headline(summary: dict) -> str:
    """A stage's counts in a few words for its closing line ("" when it has none)."""
    counts = {k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)}
    files = summary.get("files")
    if files:
        read = sum(f["lines_read"] for f in files)
        accepted = sum(f["accepted"] for f in files)
        counts = {"lines read": read, "accepted": accepted, "rejected": sum(f["rejected"] for f in files)}
    if summary.get("model_version") and not counts:
        counts = {"model version": summary["model_version"]}
    shown = ", ".join(
        f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in counts.items()
    )
    return f" ({shown})" if shown else ""


def _show(args: argparse.Namespace) -> int:
    """One user's list from the gold tables, without Spark (as the app reads it)."""
    from amazon_recs.serving.gold_tables import GoldTableStore
    from amazon_recs.serving.validation import validate_id

    store = GoldTableStore.from_config(_load(args))
    recs = store.get_recommendations(validate_id(args.user), args.model)
    if recs.fallback:
        print(
            f"{args.user} is not a user of model version {recs.model_version}: "
            f"the {len(recs.items)} most popular products instead (as the API answers)"
        )
    else:
        print(
            f"Top {len(recs.items)} {args.model} recommendations for {args.user} "
            f"(model version {recs.model_version}):"
        )
    for r in recs.items:
        title = r.get("title") or r["item_id"]
        print(f"{r['rank']:>3}. {title}  [{r['item_id']}]  score {r['score']:.4f}  ({r['reason']})")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from amazon_recs.ingest.sample import generate_sample

    if args.size or args.reviews:
        return _large_shop(args)

    summary = generate_sample(args.out, **_load(args).require("sample"))
    print(
        f"wrote {summary.review_lines} review lines ({summary.bad_review_lines} malformed on purpose) "
        f"to {summary.reviews_path} and {summary.product_lines} products to {summary.products_path}"
    )
    return 0


def _large_shop(args: argparse.Namespace) -> int:
    from amazon_recs.ingest import shop

    started = time.time()
    if args.size:
        summary = shop.generate_size(args.out, args.size, seed=args.seed)
    else:
        summary = shop.generate_shop(
            args.out, reviews=args.reviews, users=args.users, items=args.items, seed=args.seed
        )
    print(
        f"wrote {summary.review_lines:,} reviews by {summary.users:,} users of {summary.items:,} products "
        f"(heaviest user {summary.heaviest_user_reviews:,} reviews) in {summary.parts} parts, "
        f"{time.time() - started:.0f}s:\n  input.reviews={summary.reviews_glob}\n"
        f"  input.products={summary.products_glob}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
