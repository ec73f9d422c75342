"""``jobs/refresh.py --every``: rounds on a schedule in one session, skipping a round
that finds a full run in its way, stopping on any other error."""

from __future__ import annotations

import pytest

from amazon_recs import cli
from amazon_recs.errors import InputError, StageOrderError
from amazon_recs.pipeline.run_lock import WarehouseLocked


class Clock:
    """A clock that moves only when the loop sleeps or a round works."""

    def __init__(self):
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def rounds_of(clock: Clock, outcomes: list):
    """A round that takes each outcome in turn: seconds of work, or an exception to raise."""
    started: list[float] = []

    def round_():
        started.append(clock.now)
        outcome = outcomes[len(started) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        clock.now += outcome

    return round_, started


def test_rounds_start_every_interval_and_at_once_after_a_long_one():
    clock = Clock()
    round_, started = rounds_of(clock, [2.0, 7.0, 1.0, 0.5])
    cli.refresh_rounds(round_, every=5.0, rounds=4, sleep=clock.sleep, clock=clock)
    # Start to start: 5 s apart, but the round after a 7 s one starts when it ends.
    assert started == [100.0, 105.0, 112.0, 117.0]
    assert clock.slept == [0.0, 3.0, 0.0, 4.0]


def test_a_round_that_finds_a_full_run_in_its_way_is_skipped_and_the_next_goes_on(caplog):
    clock = Clock()
    locked = WarehouseLocked("the warehouse /w is in use by run 20261207T000000Z-abcdef")
    unexported = StageOrderError("DynamoDB table t serves version a, not the current version b")
    round_, started = rounds_of(clock, [1.0, locked, unexported, 1.0])
    with caplog.at_level("WARNING", logger="amazon_recs"):
        cli.refresh_rounds(round_, every=10.0, rounds=4, sleep=clock.sleep, clock=clock)
    assert len(started) == 4
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [
        "refresh round 2 skipped: the warehouse /w is in use by run 20261207T000000Z-abcdef",
        "refresh round 3 skipped: DynamoDB table t serves version a, not the current version b",
    ]


def test_any_other_error_ends_the_rounds():
    clock = Clock()
    round_, started = rounds_of(clock, [1.0, InputError("events unreadable"), 1.0])
    with pytest.raises(InputError, match="events unreadable"):
        cli.refresh_rounds(round_, every=1.0, rounds=0, sleep=clock.sleep, clock=clock)
    assert len(started) == 2


def test_an_interrupt_stops_the_rounds_quietly(caplog):
    clock = Clock()
    round_, started = rounds_of(clock, [1.0, 1.0, KeyboardInterrupt()])
    with caplog.at_level("INFO", logger="amazon_recs"):
        cli.refresh_rounds(round_, every=1.0, sleep=clock.sleep, clock=clock)  # until stopped
    assert len(started) == 3
    assert "refresh stopped after 3 round(s)" in caplog.text


def test_every_and_rounds_must_not_be_negative(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.refresh_main(["--config", "conf/test.yaml", "--every", "-1"])
    assert exit_.value.code == 2
    assert "--every and --rounds take a number of at least 0" in capsys.readouterr().err
