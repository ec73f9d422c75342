"""A run killed inside ingest's MERGE, after it wrote data files and before it committed
them, leaves bronze as it was; the next run ends with the tables of a run that was
never interrupted.

A generated shop of four review part files (with bad lines, so rejects are merged
too). Run 1 ingests the first two parts; run 2 ingests all four, so its MERGE into
``bronze/reviews`` inserts the other two parts' rows. Run 2 is frozen (SIGSTOP of
its process group) the moment a data file that no commit lists appears in
``bronze/reviews``, shown to be uncommitted while frozen, then killed with
``kill -9``. Run 3 repeats run 2 to the end. A copy of the warehouse taken after
run 1 gets run 2 uninterrupted: every bronze table must be equal, row for row.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from deltalake import DeltaTable

from amazon_recs.ingest.shop import generate_shop
from tests.integration.test_run_lock import submit

pytestmark = pytest.mark.integration

BRONZE = ("reviews", "products", "rejects", "ingest_log")


def ingest(tmp_path, root, reviews_glob: str, products_glob: str) -> subprocess.Popen:
    return submit(
        tmp_path,
        root,
        "input.format=amazon2023",
        f"input.reviews={reviews_glob}",
        f"input.products={products_glob}",
        job="ingest",
    )


def finish(run: subprocess.Popen) -> str:
    log = run.communicate(timeout=600)[0]
    assert run.returncode == 0, log[-4000:]
    return log


def committed_files(table) -> set[str]:
    """Every data file an add action of the table's log names (removed ones included)."""
    names = set()
    for commit in (table / "_delta_log").glob("*.json"):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                names.add(action["add"]["path"])
    return names


def data_files(table) -> set[str]:
    return {str(p.relative_to(table)) for p in table.rglob("*.parquet") if "_delta_log" not in p.parts}


def freeze_when_uncommitted(run: subprocess.Popen, table, before: set[str]) -> dict:
    """Poll ``table`` while ``run`` lives; at the first data file neither in ``before``
    nor in the log, stop the whole run (SIGSTOP) and report what was on disk then."""
    found: dict = {}

    def watch():
        while run.poll() is None:
            if table.exists():
                new = data_files(table) - before
                if new and not new <= committed_files(table):
                    os.killpg(run.pid, signal.SIGSTOP)
                    found["files"] = data_files(table)  # read while nothing moves
                    found["committed"] = committed_files(table)
                    found["log"] = sorted(p.name for p in (table / "_delta_log").glob("*.json"))
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output = run.stdout.read  # drained below so the run never blocks on a full pipe
    drained = threading.Thread(target=lambda: found.setdefault("output", output()), daemon=True)
    drained.start()
    watcher.join(timeout=600)
    if "files" in found:
        os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=120)
    drained.join(timeout=60)
    return found


def rows(root, name: str) -> list[tuple]:
    table = DeltaTable(str(root / "warehouse" / "bronze" / name)).to_pyarrow_table().to_pylist()
    return sorted(tuple(sorted((k, repr(v)) for k, v in r.items())) for r in table)


@pytest.fixture(scope="module")
def crashed_and_clean(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    shop = tmp_path_factory.mktemp("shop")
    summary = generate_shop(
        shop, reviews=40_000, users=8_000, items=1_500, parts=4, bad_line_rate=0.01, workers=1
    )
    first_half = str(shop / "reviews" / "part-0000[01].jsonl")
    crashed = tmp_path_factory.mktemp("crashed")
    finish(ingest(home, crashed, first_half, summary.products_glob))
    clean = tmp_path_factory.mktemp("clean")
    shutil.copytree(crashed, clean, dirs_exist_ok=True)

    reviews = crashed / "warehouse" / "bronze" / "reviews"
    before = data_files(reviews)
    frozen = freeze_when_uncommitted(
        ingest(home, crashed, summary.reviews_glob, summary.products_glob), reviews, before
    )
    again = finish(ingest(home, crashed, summary.reviews_glob, summary.products_glob))
    finish(ingest(home, clean, summary.reviews_glob, summary.products_glob))
    return {"crashed": crashed, "clean": clean, "frozen": frozen, "before": before, "again": again}


def test_the_run_was_killed_between_the_merge_writing_files_and_committing_them(crashed_and_clean):
    frozen, before = crashed_and_clean["frozen"], crashed_and_clean["before"]
    output = frozen.get("output", "")
    assert "files" in frozen, "the run ended before its MERGE wrote a file:\n" + output[-3000:]
    uncommitted = frozen["files"] - frozen["committed"]
    assert uncommitted and not uncommitted & before, frozen  # new files, in no commit yet
    assert "stage ingest: done" not in output
    # the killed run's files stay on disk, unreferenced; the table never lists them
    reviews = crashed_and_clean["crashed"] / "warehouse" / "bronze" / "reviews"
    assert uncommitted <= data_files(reviews)
    assert not uncommitted & committed_files(reviews)


def test_the_next_run_ends_with_the_tables_of_an_uninterrupted_run(crashed_and_clean):
    crashed, clean = crashed_and_clean["crashed"], crashed_and_clean["clean"]
    assert "took over the lock of run" in crashed_and_clean["again"]
    for name in BRONZE:
        got, expected = rows(crashed, name), rows(clean, name)
        assert got == expected, name
        assert len(got) > 0, name
    reviews = DeltaTable(str(crashed / "warehouse" / "bronze" / "reviews")).to_pyarrow_table()
    assert reviews.num_rows == 40_000  # every good line of the four parts, once
