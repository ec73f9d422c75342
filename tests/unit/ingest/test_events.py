"""Activity events as interactions: ingest (accepted, rejected with a reason, a re-delivered
event once), and how a pair's reviews and events fold into one interaction."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from chispa import assert_df_equality

from amazon_recs import io
from amazon_recs.errors import ConfigError
from amazon_recs.features import silver as fe
from amazon_recs.pipeline.ingest import run_ingest
from amazon_recs.serving.api import Activity, event_record

T1 = 1_700_000_000_000
WEIGHTS = {"purchase": 4.0, "view": 1.0}


def landed(event_id: str, event_type: str, user: str, item: str, ts: int, rating=None) -> str:
    """An event line exactly as the API lands it."""
    activity = Activity(event_id, event_type, user, item, ts, rating)
    return json.dumps(event_record(activity, ts + 5), sort_keys=True)


# line -> reason (None: accepted)
EVENT_LINES = [
    (landed("e1", "purchase", "U1", "A1", T1), None),
    (landed("e2", "rating", "U1", "A2", T1 + 1, 4.0), None),
    (landed("e3", "view", "NEW", "A1", T1 + 2), None),
    (landed("e1", "purchase", "U1", "A1", T1), None),  # re-delivered: a duplicate
    (
        json.dumps(
            {"event_id": "e4", "event_type": "like", "user_id": "U1", "item_id": "A1", "timestamp": T1}
        ),
        "event type is not one of purchase, rating, view",
    ),
    (
        json.dumps({"event_type": "view", "user_id": "U1", "item_id": "A1", "timestamp": T1}),
        "missing event id",
    ),
    (
        json.dumps(
            {"event_id": "a b", "event_type": "view", "user_id": "U1", "item_id": "A1", "timestamp": T1}
        ),
        "event id is not 1-64 of A-Z a-z 0-9 _ -",
    ),
    (landed("e5", "rating", "U1", "A3", T1), "missing rating"),
    (landed("e6", "rating", "U1", "A3", T1, 9.0), "rating outside [1, 5]"),
    (
        json.dumps({"event_id": "e7", "event_type": "view", "item_id": "A1", "timestamp": T1}),
        "missing user id",
    ),
    (
        json.dumps({"event_id": "e8", "event_type": "view", "user_id": "U1", "item_id": "A1"}),
        "missing timestamp",
    ),
    ('{"event_id": "e9", ', "malformed JSON"),
]


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    from amazon_recs.config import load_config
    from tests.conftest import TEST_CONFIG

    root = tmp_path_factory.mktemp("events")
    raw = root / "raw"
    config = load_config(
        TEST_CONFIG,
        [f"paths.raw={raw}", f"paths.warehouse={root / 'warehouse'}", "input.max_reject_rate=0.9"],
    )
    day = raw / "events" / "dt=2023-11-14"
    day.mkdir(parents=True)
    # One file per event, as the API lands them, and one file of several lines.
    for n, (line, _) in enumerate(EVENT_LINES[:4]):
        (day / f"{n}.json").write_text(line + "\n")
    (day / "more.json").write_text("\n".join(line for line, _ in EVENT_LINES[4:]) + "\n")
    first = run_ingest(spark, config)
    again = run_ingest(spark, config)
    return config, first, again


def test_each_event_is_accepted_once_or_rejected_with_its_reason(spark, ingested):
    config, first, _ = ingested
    events = io.read_table(spark, config, "bronze/events")
    assert sorted(r["event_id"] for r in events.collect()) == ["e1", "e2", "e3"]
    by_id = {r["event_id"]: r for r in events.collect()}
    assert by_id["e2"]["rating"] == 4.0 and by_id["e1"]["rating"] is None
    assert by_id["e3"]["user_id"] == "NEW"
    rejects = io.read_table(spark, config, "bronze/rejects").filter("kind = 'events'")
    got = sorted(r["reason"] for r in rejects.collect())
    assert got == sorted(reason for _, reason in EVENT_LINES if reason)
    logged = [f for f in first["files"] if f["kind"] == "events"]
    assert sum(f["lines_read"] for f in logged) == len(EVENT_LINES)
    assert sum(f["accepted"] for f in logged) == 4 and sum(f["duplicates"] for f in logged) == 1
    assert sum(f["rejected"] for f in logged) == sum(1 for _, r in EVENT_LINES if r)


def test_reingesting_events_adds_nothing(spark, ingested):
    config, _, again = ingested
    assert io.read_table(spark, config, "bronze/events").count() == 3
    assert io.read_table(spark, config, "bronze/rejects").filter("kind = 'events'").count() == sum(
        1 for _, r in EVENT_LINES if r
    )


def test_a_later_ingest_reads_only_the_event_files_no_ingest_has_read_whole(spark, ingested, tmp_path):
    config, first, again = ingested
    assert (first["event_files"], first["event_files_read"]) == (5, 5)
    assert (again["event_files"], again["event_files_read"]) == (5, 0)
    assert not [f for f in again["files"] if f["kind"] == "events"]

    # Its own warehouse: a file that grew since it was read, and a new one.
    from amazon_recs.config import load_config
    from tests.conftest import TEST_CONFIG

    raw = tmp_path / "raw"
    config = load_config(TEST_CONFIG, [f"paths.raw={raw}", f"paths.warehouse={tmp_path / 'warehouse'}"])
    day = raw / "events" / "dt=2023-11-14"
    day.mkdir(parents=True)
    (day / "a.json").write_text(landed("a1", "view", "U1", "A1", T1) + "\n")
    (day / "b.json").write_text(landed("b1", "view", "U2", "A1", T1) + "\n")
    assert run_ingest(spark, config)["event_files_read"] == 2
    with (day / "b.json").open("a") as grown:
        grown.write(landed("b2", "purchase", "U2", "A2", T1 + 1) + "\n")
    (day / "c.json").write_text(landed("c1", "view", "U3", "A1", T1) + "\n")
    later = run_ingest(spark, config)
    read = sorted(f["source_file"].rsplit("/", 1)[1] for f in later["files"] if f["kind"] == "events")
    assert (later["event_files"], read) == (3, ["b.json", "c.json"])
    events = io.read_table(spark, config, "bronze/events")
    assert sorted(r["event_id"] for r in events.collect()) == ["a1", "b1", "b2", "c1"]  # b1 once


def test_a_later_ingest_lists_only_the_day_folders_from_shortly_before_the_newest_read(spark, tmp_path):
    from amazon_recs.config import load_config
    from tests.conftest import TEST_CONFIG

    raw = tmp_path / "raw"
    config = load_config(TEST_CONFIG, [f"paths.raw={raw}", f"paths.warehouse={tmp_path / 'warehouse'}"])

    def land(folder: str, name: str, event_id: str) -> None:
        (raw / "events" / folder).mkdir(parents=True, exist_ok=True)
        (raw / "events" / folder / name).write_text(landed(event_id, "view", "U1", "A1", T1) + "\n")

    land("dt=2023-11-01", "a.json", "a1")
    land("dt=2023-11-14", "b.json", "b1")
    first = run_ingest(spark, config)
    assert (first["event_files"], first["event_files_read"], first["event_files_since"]) == (2, 2, None)

    land("dt=2023-11-01", "late.json", "late1")  # far older than the newest day read: not listed
    land("dt=2023-11-13", "c.json", "c1")  # within events.relisted_days (1) of it
    land("dt=2023-11-15", "d.json", "d1")
    land("dt=unknown", "e.json", "e1")  # not a day: always listed
    later = run_ingest(spark, config)

    assert later["event_files_since"] == "2023-11-13"
    read = sorted(f["source_file"].split("/events/")[1] for f in later["files"] if f["kind"] == "events")
    assert read == ["dt=2023-11-13/c.json", "dt=2023-11-15/d.json", "dt=unknown/e.json"]
    assert (later["event_files"], later["event_files_read"]) == (4, 3)  # b.json listed, read before
    events = io.read_table(spark, config, "bronze/events")
    assert sorted(r["event_id"] for r in events.collect()) == ["a1", "b1", "c1", "d1", "e1"]


def test_one_bad_event_among_many_files_does_not_stop_ingest(spark, ingested):
    # Each event is a file of its own: the reject rate is judged over all event files.
    from amazon_recs.ingest import sources as ig

    rows = [
        {"source_file": f"f{n}", "lines_read": 1, "blank": 0, "header": 0, "rejected": 0} for n in range(99)
    ]
    rows.append({"source_file": "bad", "lines_read": 1, "blank": 0, "header": 0, "rejected": 1})
    rejects = spark.createDataFrame([("bad", "missing event id")], "source_file string, reason string")
    ig.check_reject_rate(rows, rejects, 0.05, as_one="events/*")  # 1% over all: passes
    with pytest.raises(Exception, match="bad: 1 of 1 lines rejected"):
        ig.check_reject_rate(rows, rejects, 0.05)


# --- one interaction per pair -----------------------------------------------------------


def day(n: int) -> datetime:
    return datetime(2023, 1, 1) + timedelta(days=n)


SIGNALS = (
    "user_id string, item_id string, rating double, weight double, ts timestamp, "
    "_explicit boolean, _tie string"
)


def test_the_latest_opinion_sets_the_weight_and_later_acts_only_raise_it(spark):
    signals = spark.createDataFrame(
        [
            # An opinion, then a purchase after it: the purchase raises the weight.
            ("u1", "a", 2.0, 2.0, day(0), True, "r1"),
            ("u1", "a", None, 4.0, day(1), False, "e1"),
            # A purchase, then a low rating after it: the rating decides.
            ("u1", "b", None, 4.0, day(0), False, "e2"),
            ("u1", "b", 1.0, 1.0, day(2), True, "e3"),
            # Only acts: the heaviest, and its weight as the rating.
            ("u2", "a", None, 1.0, day(0), False, "e4"),
            ("u2", "a", None, 4.0, day(3), False, "e5"),
            ("u2", "a", None, 1.0, day(5), False, "e6"),
            # Two opinions: the later wins even when lower; a view after it is lighter.
            ("u3", "c", 5.0, 5.0, day(0), True, "r2"),
            ("u3", "c", 3.0, 3.0, day(4), True, "r3"),
            ("u3", "c", None, 1.0, day(6), False, "e7"),
            # A null rating somewhere does not hide the opinion.
            ("u4", "d", 4.0, 4.0, day(1), True, "r4"),
        ],
        SIGNALS,
    )
    expected = spark.createDataFrame(
        [
            ("u1", "a", 2.0, 4.0, day(1)),
            ("u1", "b", 1.0, 1.0, day(2)),
            ("u2", "a", 4.0, 4.0, day(5)),
            ("u3", "c", 3.0, 3.0, day(6)),
            ("u4", "d", 4.0, 4.0, day(1)),
        ],
        "user_id string, item_id string, rating double, weight double, ts timestamp",
    )
    assert_df_equality(fe.pair_interactions(signals), expected, ignore_row_order=True, ignore_nullable=True)


def test_folding_later_events_onto_the_pair_row_gives_the_same_row(spark):
    # What refresh does (the training row as the pair's opinion so far, then the new
    # events) agrees with what the next features run does (all signals at once).
    old = [("u", "a", None, 1.0, day(0), False, "e1"), ("u", "b", 3.0, 3.0, day(0), True, "r1")]
    new = [
        ("u", "a", None, 4.0, day(2), False, "e2"),
        ("u", "b", None, 4.0, day(2), False, "e3"),
        ("u", "c", 5.0, 5.0, day(2), True, "e4"),
    ]
    everything = fe.pair_interactions(spark.createDataFrame(old + new, SIGNALS))
    trained = fe.pair_interactions(spark.createDataFrame(old, SIGNALS)).collect()
    as_opinions = [(r["user_id"], r["item_id"], r["weight"], r["weight"], r["ts"], True, "") for r in trained]
    folded = fe.pair_interactions(spark.createDataFrame(as_opinions + new, SIGNALS))
    assert_df_equality(
        folded.select("user_id", "item_id", "weight", "ts"),
        everything.select("user_id", "item_id", "weight", "ts"),
        ignore_row_order=True,
    )


def test_event_weights_come_from_config_and_every_act_needs_one(spark):
    events = spark.createDataFrame(
        [
            ("e1", "purchase", "u", "a", None, day(0)),
            ("e2", "rating", "u", "b", 2.0, day(0)),
            ("e3", "view", "u", "c", None, day(0)),
        ],
        "event_id string, event_type string, user_id string, item_id string, rating double, ts timestamp",
    )
    got = {r["item_id"]: (r["weight"], r["_explicit"]) for r in fe.event_signals(events, WEIGHTS).collect()}
    assert got == {"a": (4.0, False), "b": (2.0, True), "c": (1.0, False)}
    with pytest.raises(ConfigError, match="no weight for view"):
        fe.event_signals(events, {"purchase": 4.0})


def test_reviews_alone_fold_as_before(spark):
    reviews = spark.createDataFrame(
        [
            ("u", "p", "a1", 5.0, day(0)),
            ("u", "p", "a1", 2.0, day(3)),
            ("u", "q", "a2", 3.0, day(1)),
            ("u", "q", "a3", 4.0, day(1)),
        ],
        "user_id string, item_id string, asin string, rating double, ts timestamp",
    )
    got = {
        r["item_id"]: (r["rating"], r["weight"])
        for r in fe.pair_interactions(fe.review_signals(reviews)).collect()
    }
    assert got == {"p": (2.0, 2.0), "q": (4.0, 4.0)}
