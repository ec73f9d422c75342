"""``make bench-refresh``: the refresh stage on a published version, and fold-in parity.

1. The warehouse of ``make bench-scale SIZE=<size>`` (``data/scale-<size>/``) is used
   as it is when its version is current and exported; otherwise the shop is generated
   and the pipeline runs first, tuning off, as bench-scale runs it.
2. The version is published to a table on the local DynamoDB server (started for the
   run on 127.0.0.1): its pointer is switched to the version. The lists of the users
   who do not act are not written: refresh neither reads nor rewrites them.
3. ``--users`` users act through files laid out as the activity function lands them
   (one JSON object per event under ``raw/events/dt=<day>/``): a fifth of them new
   to the version, the rest known; each buys one product, rates another and views a
   third. ``jobs/refresh.py`` then runs as a spark-submit job and is timed: the
   stage's own seconds (its summary), users per second and lists written per second
   to DynamoDB; the command's wall time includes the JVM's start. With ``--rounds``
   N > 1 it runs as ``--every 0 --rounds N``: the same refresh N times in one Spark
   session, the first round in a new JVM, the others as a scheduled refresh loop runs
   them (each refreshes the same users: they acted since the version).
4. Fold-in parity: for users the version was trained on (all of them up to
   ``--parity-users``, else a seeded sample), their factors solved again from their
   training history against the fixed item factors, and each user's top-10 (seen
   items excluded, exact scores) from those factors against the top-10 from the
   trained ones: the mean overlap of the two lists.

BENCHMARKS.md gets a section with the command, the machine and, from the same
warehouse, the batch recommend stage's time per user beside refresh's.

    python bench/refresh.py --size 1m [--users 1000] [--rounds 3] [--out BENCHMARKS.md]
    python bench/refresh.py --parity-only --config conf/local.yaml   # the default sample (make run)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report_block import write_block  # noqa: E402
from scale import STAGE_DONE, ensure_shop, folder_settings, git_commit, machine, run_pipeline  # noqa: E402

from amazon_recs.config import load_config  # noqa: E402
from amazon_recs.models.fold_in import fold_in  # noqa: E402
from amazon_recs.serving import dynamodb  # noqa: E402

SERVICES = ROOT / "bootstrap" / "local" / "services.sh"
S3_PORT, DYNAMODB_PORT = 19300, 18300
TABLE = "bench-refresh"
NEW_SHARE = 0.2
# The local servers take any credentials; these keep boto3 from looking for real ones.
LOCAL_AWS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# --- fold-in parity ------------------------------------------------------------------


def _factors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = ds.dataset(str(path), format="parquet").to_table()
    ids = table.column("id").to_numpy()
    return ids, np.stack(table.column("features").to_pylist()).astype(np.float32)


def _at(path: Path, info: dict, name: str) -> DeltaTable:
    return DeltaTable(str(path / name), version=info.get("inputs", {}).get(name))


def fold_in_parity(warehouse: Path, models: Path, max_users: int, seed: int, k: int = 10) -> dict:
    """Mean overlap of each trained user's top-``k`` from trained and from folded factors."""
    version = (models / "CURRENT").read_text().strip()
    info = json.loads((models / version / "model_info.json").read_text())
    params = info.get("als_params") or {}
    tuning = models / version / "tuning.json"
    if not params and tuning.exists():
        params = json.loads(tuning.read_text()).get("als", {})
    user_ids, users = _factors(models / version / "als" / "userFactors")
    item_ids, items = _factors(models / version / "als" / "itemFactors")
    rows = (
        _at(warehouse, info, "silver/interactions")
        .to_pyarrow_table(columns=["user_idx", "item_idx", "weight", "split"])
        .filter(pc.equal(pc.field("split"), "train"))
    )
    u, i = rows.column("user_idx").to_numpy(), rows.column("item_idx").to_numpy()
    w = rows.column("weight").to_numpy().astype(np.float32)
    chosen = np.sort(user_ids)
    if len(chosen) > max_users:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_users, replace=False))
    keep = np.isin(u, chosen)
    u, i, w = u[keep], i[keep], w[keep]
    item_order = np.argsort(item_ids)
    col = item_order[np.searchsorted(item_ids[item_order], i)]
    row = np.searchsorted(chosen, u)
    started = time.perf_counter()
    folded = fold_in(items, row, col, w, len(chosen), float(params["reg_param"]), float(params["alpha"]))
    fold_s = time.perf_counter() - started
    by_id = np.argsort(user_ids)
    trained = users[by_id][np.searchsorted(user_ids[by_id], chosen)]
    overlaps = []
    for start in range(0, len(chosen), 2048):
        stop = min(start + 2048, len(chosen))
        a = trained[start:stop] @ items.T
        b = folded[start:stop] @ items.T
        seen = (row >= start) & (row < stop)
        a[row[seen] - start, col[seen]] = -np.inf
        b[row[seen] - start, col[seen]] = -np.inf
        top_a = np.argpartition(-a, k, axis=1)[:, :k]
        top_b = np.argpartition(-b, k, axis=1)[:, :k]
        overlaps += [len(set(x) & set(y)) for x, y in zip(top_a.tolist(), top_b.tolist(), strict=True)]
    diff = np.abs(folded - trained).max() / max(1e-12, np.abs(trained).max())
    overlaps = np.array(overlaps)
    return {
        "version": version,
        "users": len(chosen),
        "mean_overlap": float(overlaps.mean()),
        "share_all_ten": float((overlaps == k).mean()),
        "worst": int(overlaps.min()),
        "max_rel_diff": float(diff),
        "fold_s": fold_s,
        "reg_param": params["reg_param"],
        "alpha": params["alpha"],
    }


# --- the refresh run -------------------------------------------------------------------


def services(command: str, home: Path) -> None:
    env = {
        **os.environ,
        "AWS_LOCAL_HOME": str(home),
        "AWS_LOCAL_S3_PORT": str(S3_PORT),
        "AWS_LOCAL_DYNAMODB_PORT": str(DYNAMODB_PORT),
    }
    done = subprocess.run(["bash", str(SERVICES), command], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"services.sh {command} failed:\n{done.stdout}{done.stderr}")


def write_events(warehouse: Path, models: Path, events_dir: Path, n_users: int, seed: int) -> dict:
    """``n_users`` users' events, one JSON object per file as the activity function lands them."""
    version = (models / "CURRENT").read_text().strip()
    info = json.loads((models / version / "model_info.json").read_text())
    users = (
        _at(warehouse, info, "silver/user_ids").to_pyarrow_table(columns=["user_id"]).column(0).to_pylist()
    )
    items = (
        _at(warehouse, info, "silver/item_ids").to_pyarrow_table(columns=["item_id"]).column(0).to_pylist()
    )
    rng = random.Random(seed)
    n_new = int(n_users * NEW_SHARE)
    acting = rng.sample(users, n_users - n_new) + [f"NEWBENCH{n:07d}" for n in range(n_new)]
    day = datetime.now(tz=UTC)
    folder = events_dir / f"dt={day:%Y-%m-%d}"
    folder.mkdir(parents=True, exist_ok=True)
    ts = int(day.timestamp() * 1000)
    count = 0
    for user in acting:
        bought, rated, viewed = rng.sample(items, 3)
        for event_type, item, rating in (
            ("purchase", bought, None),
            ("rating", rated, 5),
            ("view", viewed, None),
        ):
            count += 1
            event_id = f"bench-{count:08d}"
            record = {
                "event_id": event_id,
                "event_type": event_type,
                "user_id": user,
                "item_id": item,
                "rating": rating,
                "timestamp": ts + count,
                "received_at": ts + count,
            }
            (folder / f"{ts + count}-{event_id}.json").write_text(json.dumps(record) + "\n")
    return {"users": n_users, "new_users": n_new, "events": count, "version": version}


def run_refresh(
    data: Path, events_glob: str, overrides: list[str], rounds: int = 1
) -> tuple[float, list[dict]]:
    """The refresh job's wall seconds and its rounds' rows of gold/refresh_log, in order."""
    endpoint = f"http://127.0.0.1:{DYNAMODB_PORT}"
    sets = [
        *folder_settings(data),
        f"input.events={events_glob}",
        "export.dynamodb.enabled=true",
        f"export.dynamodb.table={TABLE}",
        f"aws.dynamodb_endpoint={endpoint}",
        *overrides,
    ]
    command = [str(ROOT / "bin" / "spark-submit"), "jobs/refresh.py", "--config", "conf/scale.yaml"]
    command += [a for s in sets for a in ("--set", s)]
    if rounds > 1:
        command += ["--every", "0", "--rounds", str(rounds)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # LOCAL_AWS is set
    wall = time.perf_counter() - started
    sys.stdout.write(done.stdout[-3000:])
    if done.returncode:
        raise SystemExit(
            f"refresh failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    log = DeltaTable(str(data / "warehouse" / "gold" / "refresh_log")).to_pyarrow_table().to_pylist()
    return wall, sorted(log, key=lambda r: r["refreshed_at"])[-rounds:]


def publish_pointer(version: str) -> None:
    settings = dynamodb.StoreSettings(
        table=TABLE, region="us-east-1", endpoint_url=f"http://127.0.0.1:{DYNAMODB_PORT}"
    )
    client = dynamodb.make_client(settings)
    dynamodb.ensure_table(client, TABLE)
    current = dynamodb.current_version(client, TABLE)
    if current is None or current["model_version"] != version:
        generated = datetime.now(tz=UTC).isoformat(timespec="seconds")
        dynamodb.switch_version(
            client, TABLE, version, generated, expected=current["model_version"] if current else None
        )


def batch_recommend_seconds(data: Path) -> tuple[float | None, int | None]:
    """The recommend stage's seconds and users in the pipeline run that made the warehouse."""
    log = data / "logs" / "bench-scale.out"
    if not log.exists():
        return None, None
    done = dict(m.groups() for m in map(STAGE_DONE.search, log.read_text().splitlines()) if m)
    users = (
        DeltaTable(str(data / "warehouse" / "silver" / "users"))
        .to_pyarrow_table(columns=["user_id"])
        .num_rows
    )
    return (float(done["recommend"]) if "recommend" in done else None), users


def report(args, parity, rounds, wall, events, batch) -> str:
    refresh = rounds[0]
    lines = [
        f"### refresh on the {args.size} shop, and fold-in parity",
        "",
        f"`make bench-refresh SIZE={args.size}` "
        f"(`python bench/refresh.py --size {args.size} --users {args.users} --rounds {args.rounds}`), "
        f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC, commit {git_commit()}, {machine()}.",
        "",
        f"Version {events['version']}, published to the local DynamoDB server; {events['users']:,} users act "
        f"({events['new_users']:,} new to the version), {events['events']:,} events in as many files.",
        "",
        "| | value |",
        "|---|---:|",
        f"| refresh stage (its summary), first round: a new JVM | {refresh['seconds']:.1f} s |",
        f"| spark-submit wall (JVM start included), all {len(rounds)} round(s) | {wall:.1f} s |",
        f"| event files listed / read (the others the version had seen) | {refresh['event_files']:,} / "
        f"{refresh['event_files_read']:,} |",
        f"| events read / new / rejected / duplicate | {refresh['events_read']:,} / "
        f"{refresh['events_new']:,} / {refresh['events_rejected']:,} / {refresh['events_duplicate']:,} |",
        f"| users refreshed (new) | {refresh['users']:,} ({refresh['new_users']:,}) |",
        f"| users per second | {refresh['users'] / refresh['seconds']:.1f} |",
        f"| lists written to gold / DynamoDB | {refresh['lists']:,} / {refresh['dynamodb_lists']:,} |",
        f"| DynamoDB lists per second (of the stage's time) | "
        f"{refresh['dynamodb_lists'] / refresh['seconds']:.1f} |",
    ]
    if len(rounds) > 1:
        later = [r["seconds"] for r in rounds[1:]]
        mean = float(np.mean(later))
        lines += [
            f"| later rounds in the same session (`--every 0`): each | "
            f"{', '.join(f'{x:.1f}' for x in later)} s |",
            f"| later rounds: mean, and against the first | {mean:.1f} s, {mean / refresh['seconds']:.2f}x |",
            f"| later rounds: users per second | {refresh['users'] / mean:.1f} |",
        ]
    recommend_s, all_users = batch
    if recommend_s and all_users:
        per_user_batch = recommend_s / all_users * 1000
        per_user_refresh = refresh["seconds"] / refresh["users"] * 1000
        lines.append(
            f"| reference: the batch recommend stage, same warehouse | {recommend_s:.1f} s "
            f"for {all_users:,} users "
            f"({per_user_batch:.2f} ms a user; refresh {per_user_refresh:.1f} ms a user, "
            f"{per_user_refresh / per_user_batch:.0f}x) |"
        )
    lines += ["", *parity_lines(parity)]
    return "\n".join(lines)


def parity_lines(p: dict) -> list[str]:
    return [
        f"Fold-in parity ({p['users']:,} trained users, version {p['version']}, reg_param {p['reg_param']}, "
        f"alpha {p['alpha']}): top-10 from folded factors shares **{p['mean_overlap']:.2f} of 10** items "
        f"on average with the trained factors' ({p['share_all_ten']:.1%} of users all ten, "
        f"worst {p['worst']}); largest factor difference {p['max_rel_diff']:.1e} of the largest factor; "
        f"the fold-in took {p['fold_s']:.2f} s.",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1m")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="refresh rounds in one Spark session (--every 0); the first is cold",
    )
    parser.add_argument("--parity-users", type=int, default=20_000)
    parser.add_argument(
        "--parity-only", action="store_true", help="only fold-in parity, on --config's warehouse"
    )
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    if args.parity_only:
        config = load_config(ROOT / args.config, args.overrides)
        warehouse, models = Path(config.require("paths.warehouse")), Path(config.require("paths.models"))
        parity = fold_in_parity(ROOT / warehouse, ROOT / models, args.parity_users, args.seed)
        body = "\n".join(
            [
                f"### fold-in parity on {args.config}",
                "",
                f"`python bench/refresh.py --parity-only --config {args.config}` after `make run`, "
                f"{datetime.now(tz=UTC):%Y-%m-%d %H:%M} UTC, commit {git_commit()}, {machine()}.",
                "",
                *parity_lines(parity),
            ]
        )
        write_block(args.out, f"fold-in:{Path(args.config).stem}", body)
        print(body)
        return 0

    data = ROOT / "data" / f"scale-{args.size}"
    models = data / "models"
    if (
        not (models / "CURRENT").exists()
        or not (data / "warehouse" / "gold" / "user_recommendations").exists()
    ):
        summary, _ = ensure_shop(args.size, data / "raw", 7)
        (data / "logs").mkdir(parents=True, exist_ok=True)
        run_pipeline(data, summary, False, args.overrides, data / "logs" / "bench-scale.out")
    parity = fold_in_parity(data / "warehouse", models, args.parity_users, args.seed)
    print(parity_lines(parity)[0], flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
        home = Path(tmp) / "aws"
        home.mkdir()
        events_dir = Path(tmp) / "events"
        events = write_events(data / "warehouse", models, events_dir, args.users, args.seed)
        os.environ.update(LOCAL_AWS)
        services("up", home)
        try:
            publish_pointer(events["version"])
            wall, rounds = run_refresh(data, f"{events_dir}/dt=*/*.json", args.overrides, args.rounds)
        finally:
            services("down", home)
    body = report(args, parity, rounds, wall, events, batch_recommend_seconds(data))
    write_block(args.out, f"refresh:{args.size}", body)
    print(f"\n{body}\n\nwritten to {args.out} (block refresh:{args.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
