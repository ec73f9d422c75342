"""The DynamoDB serving store: batched writes, the attribute form, the version pointer and the reader.

Without a server (a small fake client records every BatchWriteItem call):
- ``write_items`` cuts items into batches of 25 in order, retries only what
  DynamoDB left unprocessed, retries throttling and connection errors, stops
  with ``ServingError`` after ``max_attempts`` calls for one batch, and never
  retries an error retrying cannot fix; the backoff sleeps only between
  attempts and never beyond ``min(cap, base * 2 ** attempt)``;
- ``typed``/``untyped`` round-trip nested values with their Python types
  (a bool stays a bool, a float an exact decimal string);
- ``list_item`` orders a top-k by rank, rounds scores and carries the keys.

Against a real local DynamoDB (dynalite, started for the test session by the
``local_aws`` fixture), each test on its own table: ``ensure_table`` is idempotent, the
pointer moves only from the version it is expected to name, and readers get
the lists of the current version or its popular fallback, never another
version's; a purchase leaves every stored version of the user's lists, and a
list rewritten or a pointer switched meanwhile is read again, never corrupted.

Requests: user and item ids, model names and k are checked with messages.

``GoldTableStore`` on a small warehouse written with deltalake
(tests/gold_tables.py): the same lists in rank order, the popular fallback, the
history newest first, the metrics, sample users, one snapshot per store, and
missing tables as messages.
"""

from __future__ import annotations

import itertools
import random
import uuid
from dataclasses import replace
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from amazon_recs import errors
from amazon_recs.schemas import MODELS
from amazon_recs.serving import dynamodb, gold_tables, interface, list_edits, stores, validation, writer
from amazon_recs.serving.dynamodb import (
    FALLBACK_PK,
    ServingStore,
    StoreSettings,
    ensure_table,
    make_client,
    rec_key,
    switch_version,
    typed,
    untyped,
)
from amazon_recs.serving.interface import ServingError
from amazon_recs.serving.writer import BATCH_SIZE, Backoff, WriteStats, list_item, write_items

TABLE = "recs-unit"


# --- a fake BatchWriteItem client -------------------------------------------


def client_error(code: str, operation: str = "BatchWriteItem") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"fake {code}"}}, operation)


def make_items(n: int) -> list[dict]:
    """``n`` items in typed form; attribute ``n`` is the item's index."""
    return [{"pk": {"S": f"rec#als#u{i}"}, "sk": {"S": "v1"}, "n": {"N": str(i)}} for i in range(n)]


def index_of(item: dict) -> int:
    return int(item["n"]["N"])


def leave_every(k: int):
    """An outcome: every k-th pending request (from the first) comes back unprocessed."""
    return lambda requests: requests[::k]


class FakeDynamo:
    """Records BatchWriteItem calls; each call's outcome comes from ``outcomes`` in turn.

    An outcome is an exception (raised), a function from the pending requests
    to the ones left unprocessed, or None (everything written). When
    ``outcomes`` runs out, every later call writes everything. ``timeline``,
    shared with a sleep recorder, gets ("call", indexes) per call.
    """

    def __init__(self, outcomes=(), timeline: list | None = None):
        self.outcomes = iter(outcomes)
        self.timeline = timeline if timeline is not None else []
        self.calls: list[tuple[str, list[int]]] = []  # (table, item indexes sent)
        self.written: list[int] = []  # indexes of items accepted, in order
        self.unprocessed_returned = 0

    def batch_write_item(self, RequestItems):  # noqa: N803 - boto3's keyword
        assert len(RequestItems) == 1, "one table per call"
        ((table, requests),) = RequestItems.items()
        indexes = [index_of(r["PutRequest"]["Item"]) for r in requests]
        self.calls.append((table, indexes))
        self.timeline.append(("call", indexes))
        outcome = next(self.outcomes, None)
        if isinstance(outcome, BaseException):
            raise outcome
        left = outcome(list(requests)) if outcome else []
        left_ids = {id(r) for r in left}
        self.written += [index_of(r["PutRequest"]["Item"]) for r in requests if id(r) not in left_ids]
        self.unprocessed_returned += len(left)
        return {"UnprocessedItems": {table: left} if left else {}}


def recorder(timeline: list):
    def sleep(seconds: float) -> None:
        timeline.append(("sleep", seconds))

    return sleep


def settings(max_attempts: int = 10) -> StoreSettings:
    return StoreSettings(table=TABLE, region="us-east-1", max_attempts=max_attempts)


def quiet_backoff(timeline: list | None = None) -> Backoff:
    return Backoff(0.01, 0.05, sleep=recorder(timeline if timeline is not None else []), rng=random.Random(0))


# --- write_items --------------------------------------------------------------


def test_sixty_items_go_in_three_ordered_batches_to_the_table():
    client = FakeDynamo()

    stats = write_items(client, settings(), make_items(60), quiet_backoff())

    assert [table for table, _ in client.calls] == [TABLE] * 3
    assert [len(indexes) for _, indexes in client.calls] == [25, 25, 10]
    assert [i for _, indexes in client.calls for i in indexes] == list(range(60))
    assert client.written == list(range(60))
    assert stats == WriteStats(items=60, batches=3, retries=0, throttled=0, unprocessed=0)


def test_a_generator_of_items_is_consumed_in_batches():
    client = FakeDynamo()

    stats = write_items(client, settings(), (item for item in make_items(BATCH_SIZE)), quiet_backoff())

    assert [len(indexes) for _, indexes in client.calls] == [BATCH_SIZE]
    assert stats.as_tuple() == (BATCH_SIZE, 1, 0, 0, 0)


def test_no_items_no_calls():
    client = FakeDynamo()

    assert write_items(client, settings(), [], quiet_backoff()) == WriteStats()
    assert client.calls == []


def test_unprocessed_items_are_resent_until_every_item_is_written_once():
    # Each of the 3 batches: the first two calls leave every 3rd pending item unprocessed.
    # Batch of 25: 9 left, then 3 of those 9 left, then the last 3 go through.
    # Batch of 10: 4 left, then 2 left, then the last 2 go through.
    outcomes = [leave_every(3), leave_every(3), None] * 3
    client = FakeDynamo(outcomes)
    sleeps: list = []

    stats = write_items(client, settings(), make_items(60), quiet_backoff(sleeps))

    assert sorted(client.written) == list(range(60))
    assert len(client.written) == 60, "an item was written twice"
    assert [len(indexes) for _, indexes in client.calls] == [25, 9, 3, 25, 9, 3, 10, 4, 2]
    assert stats.items == 60
    assert stats.batches == 3
    assert stats.unprocessed == client.unprocessed_returned == (9 + 3) * 2 + 4 + 2
    assert stats.retries == len(client.calls) - 3 == 6
    assert stats.throttled == 0
    assert len(sleeps) == stats.retries


def test_a_retry_sends_only_the_unprocessed_items():
    client = FakeDynamo([lambda requests: requests[-2:]])

    write_items(client, settings(), make_items(5), quiet_backoff())

    assert client.calls == [(TABLE, [0, 1, 2, 3, 4]), (TABLE, [3, 4])]


@pytest.mark.parametrize(
    "error",
    [
        client_error("ProvisionedThroughputExceededException"),
        client_error("ThrottlingException"),
        EndpointConnectionError(endpoint_url="http://dynamodb.invalid"),
    ],
    ids=["provisioned-throughput", "throttling", "connection"],
)
def test_throttled_calls_are_retried_and_counted(error):
    throttles = 3
    client = FakeDynamo([error] * throttles)

    stats = write_items(client, settings(max_attempts=10), make_items(30), quiet_backoff())

    assert stats.throttled == throttles
    assert stats.retries == throttles
    assert stats.unprocessed == 0
    # The first batch was sent 1 + 3 times, whole each time; then the second once.
    assert [len(indexes) for _, indexes in client.calls] == [25, 25, 25, 25, 5]
    assert client.written == list(range(30))


def test_always_throttled_stops_after_max_attempts_naming_table_and_count():
    client = FakeDynamo(itertools.repeat(client_error("ThrottlingException")))

    with pytest.raises(ServingError) as raised:
        write_items(client, settings(max_attempts=4), make_items(30), quiet_backoff())

    assert len(client.calls) == 4, "the second batch must not be tried after the first failed"
    message = str(raised.value)
    assert TABLE in message
    assert "25 items" in message
    assert client.written == []


def test_the_error_counts_only_the_items_still_unwritten():
    # The first call writes 18 of 25 (leaves 7), then DynamoDB throttles until the end.
    throttle = client_error("ProvisionedThroughputExceededException")
    client = FakeDynamo(itertools.chain([lambda requests: requests[:7]], itertools.repeat(throttle)))

    with pytest.raises(ServingError, match=r"\b7 items\b") as raised:
        write_items(client, settings(max_attempts=3), make_items(25), quiet_backoff())

    assert TABLE in str(raised.value)
    assert len(client.calls) == 3
    assert [len(indexes) for _, indexes in client.calls] == [25, 7, 7]


def test_always_unprocessed_also_stops():
    # The first call writes 20 of 25; every later call writes nothing.
    client = FakeDynamo(itertools.chain([leave_every(5)], itertools.repeat(leave_every(1))))

    with pytest.raises(ServingError, match=r"\b5 items\b"):
        write_items(client, settings(max_attempts=5), make_items(25), quiet_backoff())

    assert [len(indexes) for _, indexes in client.calls] == [25, 5, 5, 5, 5]
    assert sorted(client.written) == [i for i in range(25) if i % 5]


@pytest.mark.parametrize(
    "code", ["ValidationException", "ResourceNotFoundException", "AccessDeniedException"]
)
def test_an_error_retrying_cannot_fix_stops_at_once(code):
    sleeps: list = []
    client = FakeDynamo([client_error(code)])

    with pytest.raises(ServingError) as raised:
        write_items(client, settings(max_attempts=10), make_items(60), quiet_backoff(sleeps))

    assert len(client.calls) == 1
    assert sleeps == []
    assert code in str(raised.value)
    assert TABLE in str(raised.value)


def test_backoff_sleeps_only_between_attempts_within_the_jitter_bound():
    base, cap = 0.01, 0.05
    timeline: list = []
    throttle = client_error("ThrottlingException")
    # Batch 0 (items 0-24): throttled 4 times, then 9 left unprocessed, then done.
    # Batch 1 (items 25-29): throttled once, then done.
    outcomes = [throttle] * 4 + [leave_every(3), None] + [throttle, None]
    client = FakeDynamo(outcomes, timeline)
    backoff = Backoff(base, cap, sleep=recorder(timeline), rng=random.Random(0))

    stats = write_items(client, settings(max_attempts=10), make_items(30), backoff)

    assert timeline[0][0] == "call", "slept before the first call"
    attempts: dict[int, int] = {}  # batch -> calls made so far
    checked = 0
    for event, following in zip(timeline, [*timeline[1:], ("end", None)], strict=True):
        if event[0] == "call":
            batch = min(event[1]) // BATCH_SIZE
            attempts[batch] = attempts.get(batch, 0) + 1
            continue
        seconds = event[1]
        assert following[0] == "call", "a sleep not followed by a call"
        batch = min(following[1]) // BATCH_SIZE
        attempt = attempts.get(batch, 0)  # calls of this batch already made
        assert attempt >= 1, f"slept before the first call of batch {batch}"
        assert 0.0 <= seconds <= min(cap, base * 2**attempt), (attempt, seconds)
        checked += 1
    assert checked == stats.retries == 6
    assert attempts == {0: 6, 1: 2}


class TopOfRange(random.Random):
    """An rng whose jitter always lands on the upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_grows_exponentially_up_to_the_cap():
    timeline: list = []
    client = FakeDynamo(itertools.repeat(client_error("ThrottlingException")), timeline)
    backoff = Backoff(0.01, 0.05, sleep=recorder(timeline), rng=TopOfRange())

    with pytest.raises(ServingError):
        write_items(client, settings(max_attempts=6), make_items(3), backoff)

    kinds = [event[0] for event in timeline]
    assert kinds == ["call", "sleep"] * 5 + ["call"], "no sleep after the last attempt"
    sleeps = [event[1] for event in timeline if event[0] == "sleep"]
    assert sleeps == pytest.approx([0.02, 0.04, 0.05, 0.05, 0.05])


def test_write_stats_add_up():
    total = WriteStats(1, 2, 3, 4, 5) + WriteStats(10, 20, 30, 40, 50)
    assert total == WriteStats(items=11, batches=22, retries=33, throttled=44, unprocessed=55)


# --- typed / untyped ----------------------------------------------------------


def assert_same(actual, expected, where="value"):
    """Equal and of the same type all the way down (True == 1 and 2.0 == 2 in Python)."""
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


NESTED = {
    "none": None,
    "yes": True,
    "no": False,
    "zero": 0,
    "count": 42,
    "negative": -7,
    "big": 2**62 + 1,
    "tenth": 0.1,
    "tiny": 1e-7,
    "whole_float": 2.0,
    "third": 1 / 3,
    "negative_float": -3.75,
    "text": "Café ☕ 日本語 — naïve",
    "empty_text": "",
    "items": [
        {"rank": 1, "item_id": "B000X", "score": 0.987654, "title": None, "in_stock": True},
        {"rank": 2, "item_id": "B000Y", "score": 1e-7, "title": "Ünïcode", "in_stock": False},
    ],
    "empty_list": [],
    "empty_map": {},
    "nested": {"deeper": [[1, 2.5], [None, "x"]]},
}


def test_nested_values_round_trip_with_their_types():
    assert_same(untyped(typed(NESTED)), NESTED)


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_stays_a_bool(value):
    assert typed(value) == {"BOOL": value}
    assert untyped(typed(value)) is value


@pytest.mark.parametrize("value", [0.1, 1e-7, 1 / 3, 123456.789, -2.5e-12, 6.02e23])
def test_a_float_is_stored_as_its_exact_shortest_decimal(value):
    number = typed(value)["N"]
    # The decimal Python prints, not the binary expansion (0.1000000000000000055...).
    assert Decimal(number) == Decimal(repr(value))
    assert float(number) == value
    assert_same(untyped(typed(value)), value)


def test_examples_of_the_number_form():
    assert typed(0.1) == {"N": "0.1"}
    assert Decimal(typed(1e-7)["N"]) == Decimal("0.0000001")
    assert typed(7) == {"N": "7"}
    assert typed(-7) == {"N": "-7"}
    assert typed(None) == {"NULL": True}
    assert typed("x") == {"S": "x"}
    assert typed((1, "a")) == {"L": [{"N": "1"}, {"S": "a"}]}
    assert typed(Decimal("1.50")) == {"N": "1.50"}


def test_numbers_as_dynamodb_returns_them():
    # DynamoDB normalises numbers: 1.0 comes back as "1", 1e-7 as "0.0000001".
    assert_same(untyped({"N": "1"}), 1)
    assert_same(untyped({"N": "-12"}), -12)
    assert_same(untyped({"N": "0.0000001"}), 1e-7)
    assert_same(untyped({"N": "-0.5"}), -0.5)
    assert_same(untyped({"N": "123456789012345678901234567890"}), 123456789012345678901234567890)


@pytest.mark.parametrize(
    "value", [{1, 2}, frozenset(), object(), b"bytes", {"ok": 1, "bad": {3}}, [1, object()]]
)
def test_an_unsupported_type_raises_type_error(value):
    with pytest.raises(TypeError):
        typed(value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_number_dynamodb_cannot_hold_is_refused_before_the_write(value):
    with pytest.raises(ValueError, match="cannot store the number"):
        typed({"score": value})


# --- list_item ----------------------------------------------------------------


def test_list_item_orders_by_rank_rounds_scores_and_carries_keys():
    items = [
        {"rank": 3, "item_id": "c", "title": "Third", "score": 0.1, "reason": "popular"},
        {"rank": 1, "item_id": "a", "title": "First", "score": 0.987654321, "reason": "als"},
        {"rank": 10, "item_id": "j", "score": 1 / 3},  # no title, no reason
        {"rank": 2, "item_id": "b", "title": "Zweite – ü", "score": 2, "reason": None},
    ]

    item = list_item(
        "rec#als#u1", "v20240101", items, "2024-01-01T00:00:00Z", 1_700_000_000, user_id="u1", model="als"
    )

    assert item["pk"] == {"S": "rec#als#u1"}
    assert item["sk"] == {"S": "v20240101"}
    assert item["model_version"] == {"S": "v20240101"}
    assert item["generated_at"] == {"S": "2024-01-01T00:00:00Z"}
    assert item["expires_at"] == {"N": "1700000000"}
    assert item["user_id"] == {"S": "u1"}
    assert item["model"] == {"S": "als"}
    assert set(item) == {
        "pk",
        "sk",
        "model_version",
        "generated_at",
        "expires_at",
        "items",
        "user_id",
        "model",
    }
    for name, value in item.items():
        assert isinstance(value, dict) and len(value) == 1, f"{name} is not in typed form: {value!r}"

    stored = untyped(item["items"])
    assert [i["rank"] for i in stored] == [1, 2, 3, 10]  # numerically, not as text ("10" < "2")
    assert [i["item_id"] for i in stored] == ["a", "b", "c", "j"]
    assert [i["score"] for i in stored] == [0.987654, 2, 0.1, 0.333333]
    assert item["items"]["L"][3]["M"]["score"] == {"N": "0.333333"}
    assert stored[0] == {"rank": 1, "item_id": "a", "title": "First", "score": 0.987654, "reason": "als"}
    assert stored[1]["title"] == "Zweite – ü"
    assert stored[1]["reason"] is None
    assert stored[3]["title"] is None and stored[3]["reason"] is None
    assert [i["rank"] for i in items] == [3, 1, 10, 2], "the input list was reordered"


def test_list_item_without_extra_attributes_has_only_the_keys():
    item = list_item(FALLBACK_PK, "v1", [], "2024-01-01T00:00:00Z", 1)
    assert set(item) == {"pk", "sk", "model_version", "generated_at", "expires_at", "items"}
    assert item["items"] == {"L": []}


class FakeRow(dict):
    def asDict(self):  # noqa: N802 - pyspark's name
        return dict(self)


def test_write_partition_writes_one_item_per_row_and_yields_one_stats_tuple():
    clients: list[FakeDynamo] = []

    class ListClient(FakeDynamo):
        def batch_write_item(self, RequestItems):  # noqa: N803
            ((table, requests),) = RequestItems.items()
            self.calls.append((table, [r["PutRequest"]["Item"] for r in requests]))
            return {}

    def factory(store_settings):
        clients.append(ListClient())
        return clients[-1]

    rows = [
        {"model": "als", "user_id": f"u{n}", "items": [FakeRow(rank=1, item_id="a", score=0.5)]}
        for n in range(30)
    ]

    out = list(writer.write_partition(iter(rows), settings(), "v1", "2024-01-01", 99, client_factory=factory))

    assert out == [(30, 2, 0, 0, 0)]
    assert len(clients) == 1, "one client per partition"
    written = [item for _, items in clients[0].calls for item in items]
    assert [untyped(item["pk"]) for item in written] == [rec_key("als", f"u{n}") for n in range(30)]
    assert {name: untyped(value) for name, value in written[0].items()} == {
        "pk": "rec#als#u0",
        "sk": "v1",
        "model_version": "v1",
        "generated_at": "2024-01-01",
        "expires_at": 99,
        "items": [{"rank": 1, "item_id": "a", "title": None, "score": 0.5, "reason": None}],
        "user_id": "u0",
        "model": "als",
    }


# --- the module-level reader --------------------------------------------------


class NoCalls:
    def __getattr__(self, name):
        raise AssertionError(f"the client was used ({name}) for an unknown model")


def test_an_unknown_model_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError) as raised:
        stores.get_recommendations("u1", "nope", store=ServingStore(NoCalls(), TABLE))

    message = str(raised.value)
    assert "nope" in message
    for model in MODELS:
        assert model in message


# --- against a real local DynamoDB (dynalite) -----------------------------------


@pytest.fixture
def endpoint(local_aws) -> str:
    return local_aws["dynamodb"]


@pytest.fixture
def local(endpoint):
    """A fresh table of its own on the local server: (settings, client)."""
    store_settings = StoreSettings(
        table=f"recs-test-{uuid.uuid4().hex[:12]}", region="us-east-1", endpoint_url=endpoint
    )
    client = make_client(store_settings)
    ensure_table(client, store_settings.table)
    yield store_settings, client
    try:
        client.delete_table(TableName=store_settings.table)
    except ClientError:
        pass


def test_ensure_table_is_idempotent_with_pk_hash_and_sk_range(local):
    store_settings, client = local

    ensure_table(client, store_settings.table)  # the table exists: no error, no second create

    table = client.describe_table(TableName=store_settings.table)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
    }


def test_the_pointer_moves_only_from_the_expected_version(local):
    store_settings, client = local
    table = store_settings.table
    assert dynamodb.current_version(client, table) is None

    switch_version(client, table, "v1", "2024-01-01T00:00:00Z", expected=None)
    assert dynamodb.current_version(client, table) == {
        "pk": "pointer",
        "sk": "current",
        "model_version": "v1",
        "generated_at": "2024-01-01T00:00:00Z",
        "previous": None,
    }

    with pytest.raises(ServingError, match="moved"):
        switch_version(client, table, "v2", "2024-01-02T00:00:00Z", expected="v0")
    with pytest.raises(ServingError, match="moved"):
        switch_version(client, table, "v2", "2024-01-02T00:00:00Z", expected=None)  # already published
    assert dynamodb.current_version(client, table)["model_version"] == "v1"

    switch_version(client, table, "v2", "2024-01-02T00:00:00Z", expected="v1")
    pointer = dynamodb.current_version(client, table)
    assert pointer["model_version"] == "v2"
    assert pointer["previous"] == "v1"
    assert pointer["generated_at"] == "2024-01-02T00:00:00Z"


def test_nothing_published_yet_is_an_error(local):
    store_settings, client = local
    store = ServingStore(client, store_settings.table)

    with pytest.raises(ServingError, match="no version is published"):
        store.get_recommendations("u1", "als")


def top_k(*item_ids: str, shuffle: bool = True) -> list[dict]:
    """Ranked items; given in reverse rank order so the store has to sort them."""
    items = [
        {"rank": rank, "item_id": item_id, "title": f"Title {item_id}", "score": 1 / rank, "reason": "test"}
        for rank, item_id in enumerate(item_ids, start=1)
    ]
    return items[::-1] if shuffle else items


def test_readers_get_the_current_version_or_its_fallback(local):
    store_settings, client = local
    table = store_settings.table
    expires = 2_000_000_000
    items = [
        list_item(rec_key("als", "u1"), "v1", top_k("a1", "a2", "a3"), "gen-v1", expires, user_id="u1"),
        list_item(rec_key("content", "u1"), "v1", top_k("c1", "c2"), "gen-v1", expires, user_id="u1"),
        list_item(FALLBACK_PK, "v1", top_k("p1", "p2"), "gen-v1", expires),
        list_item(rec_key("als", "u1"), "v2", top_k("b1", "b2"), "gen-v2", expires, user_id="u1"),
        list_item(rec_key("als", "u2"), "v2", top_k("n1"), "gen-v2", expires, user_id="u2"),
        list_item(FALLBACK_PK, "v2", top_k("q1", "q2", "q3"), "gen-v2", expires),
    ]
    writer = make_client(
        StoreSettings(table=table, region="us-east-1", endpoint_url=store_settings.endpoint_url)
    )
    stats = write_items(writer, store_settings, items)
    assert (stats.items, stats.batches) == (6, 1)

    store = ServingStore(client, table)
    switch_version(client, table, "v1", "gen-v1", expected=None)

    known = store.get_recommendations("u1", "als")
    assert (known.user_id, known.model, known.model_version, known.generated_at) == (
        "u1",
        "als",
        "v1",
        "gen-v1",
    )
    assert known.fallback is False
    assert [i["item_id"] for i in known.items] == ["a1", "a2", "a3"]
    assert [i["rank"] for i in known.items] == [1, 2, 3]
    assert known.items[1] == {"rank": 2, "item_id": "a2", "title": "Title a2", "score": 0.5, "reason": "test"}
    assert [i["item_id"] for i in store.get_recommendations("u1", "content").items] == ["c1", "c2"]

    unknown = store.get_recommendations("nobody", "als")
    assert unknown.fallback is True
    assert unknown.model_version == "v1"
    assert [i["item_id"] for i in unknown.items] == ["p1", "p2"]
    # u2 exists only in v2: under v1 it is unknown.
    assert store.get_recommendations("u2", "als").fallback is True

    switch_version(client, table, "v2", "gen-v2", expected="v1")

    after = stores.get_recommendations("u1", "als", store=store)
    assert (after.model_version, after.generated_at, after.fallback) == ("v2", "gen-v2", False)
    assert [i["item_id"] for i in after.items] == ["b1", "b2"]
    assert [i["item_id"] for i in store.get_recommendations("u2", "als").items] == ["n1"]
    # u1 has no content list in v2: the v2 fallback, never v1's content list.
    content = store.get_recommendations("u1", "content")
    assert (content.fallback, content.model_version) == (True, "v2")
    assert [i["item_id"] for i in content.items] == ["q1", "q2", "q3"]


def test_a_version_without_a_fallback_list_is_an_error_for_unknown_users(local):
    store_settings, client = local
    write_items(client, store_settings, [list_item(rec_key("als", "u1"), "v1", top_k("a1"), "g", 1)])
    switch_version(client, store_settings.table, "v1", "g", expected=None)
    store = ServingStore(client, store_settings.table)

    assert store.get_recommendations("u1", "als").fallback is False
    with pytest.raises(ServingError, match="no popular fallback"):
        store.get_recommendations("nobody", "als")


def test_list_item_keeps_the_category_of_the_serving_layout():
    items = [
        {"rank": 1, "item_id": "a", "title": "A", "category": "Skin Care", "score": 0.5, "reason": "r"},
        {"rank": 2, "item_id": "b", "title": None, "category": None, "score": 0.4, "reason": "r"},
    ]

    stored = untyped(list_item("rec#als#u1", "v1", items, "g", 1)["items"])

    assert [i["category"] for i in stored] == ["Skin Care", None]
    assert stored[0] == {
        "rank": 1,
        "item_id": "a",
        "title": "A",
        "category": "Skin Care",
        "score": 0.5,
        "reason": "r",
    }


# --- requests -------------------------------------------------------------------


def test_the_served_and_stored_models_are_the_pipelines():
    assert set(validation.SERVED_MODELS) < set(MODELS)
    assert "random" not in validation.SERVED_MODELS
    assert set(list_edits.STORED_MODELS) == set(MODELS)


@pytest.mark.parametrize(
    "user_id",
    ["U000000R", "AGBFYI2DDIKXC5Y4FARTYDTQBMFQ", "A3SGXH7AUHU8GW", "42", "first.last@shop:eu_1-2", "u" * 128],
)
def test_ids_of_every_supported_source_are_accepted(user_id):
    assert validation.validate_id(user_id) == user_id


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "a user id is required"),
        ("", "a user id is required"),
        (" u1", "' u1' is not a valid user id"),
        ("u1\n", "is not a valid user id"),
        ("a#b", "'a#b' is not a valid user id"),  # the key separator
        ("a/b", "is not a valid user id"),
        ("ü1", "is not a valid user id"),
        ("u" * 129, "'" + "u" * 40 + "...' is not a valid user id"),
        (42, "'42' is not a valid user id"),
    ],
)
def test_malformed_ids_are_refused_with_the_rule(value, message):
    with pytest.raises(errors.RequestError) as raised:
        validation.validate_id(value)
    assert message in str(raised.value)
    if value:
        assert str(raised.value).endswith("use 1 to 128 letters, digits or . _ - : @")


def test_an_item_id_is_named_as_such():
    with pytest.raises(errors.RequestError, match="'x y' is not a valid item id"):
        validation.validate_id("x y", "item id")


@pytest.mark.parametrize("model", validation.SERVED_MODELS)
def test_served_models_are_accepted(model):
    assert validation.validate_model(model) == model


@pytest.mark.parametrize("model", ["random", "nope", "HYBRID", None, ""])
def test_other_models_are_refused_naming_the_served_ones(model):
    with pytest.raises(errors.RequestError) as raised:
        validation.validate_model(model)
    assert str(raised.value).endswith("one of hybrid, als, item_knn, content, popular")


@pytest.mark.parametrize(("value", "k"), [(1, 1), ("1", 1), ("10", 10), (10, 10), ("07", 7)])
def test_k_from_one_to_the_list_length_is_accepted(value, k):
    assert validation.validate_k(value, 10) == k


@pytest.mark.parametrize("value", [0, "0", 11, "11", "x", "1.5", " 5", "-1", True, None, 5.0, "５", ""])
def test_other_k_are_refused(value):
    with pytest.raises(errors.RequestError, match="k must be a whole number from 1 to 10"):
        validation.validate_k(value, 10)


# --- activity: a purchase leaves the user's lists (dynalite) ------------------------


def ids(client, table: str, pk: str, version: str) -> list[str] | None:
    item = client.get_item(TableName=table, Key={"pk": typed(pk), "sk": typed(version)}).get("Item")
    return [i["item_id"] for i in untyped(item["items"])] if item else None


def publish_lists(client, store_settings, lists: dict[tuple[str, str], list[str]]) -> None:
    """{(pk, version): item ids} written as stored lists."""
    write_items(
        client,
        store_settings,
        [
            list_item(pk, version, top_k(*items, shuffle=False), f"gen-{version}", 2**31)
            for (pk, version), items in lists.items()
        ],
    )


def test_a_purchase_leaves_every_stored_version_of_the_users_lists(local):
    store_settings, client = local
    table = store_settings.table
    als, hybrid, other = rec_key("als", "u1"), rec_key("hybrid", "u1"), rec_key("als", "u2")
    lists = {
        (als, "v1"): ["a", "x", "b", "c"],
        (als, "v2"): ["x", "d"],  # written by an export that has not switched yet
        (hybrid, "v1"): ["e", "f", "x"],
        (rec_key("content", "u1"), "v1"): ["g", "h"],  # does not hold x
        (other, "v1"): ["x", "a"],  # another user's
    }
    publish_lists(client, store_settings, lists)
    switch_version(client, table, "v1", "gen-v1", expected=None)

    removed = list_edits.remove_from_lists(client, table, "u1", "x")

    assert {model: sorted(versions) for model, versions in removed.items()} == {
        "als": ["v1", "v2"],
        "hybrid": ["v1"],
    }
    assert ids(client, table, als, "v1") == ["a", "b", "c"]
    assert ids(client, table, als, "v2") == ["d"]
    assert ids(client, table, hybrid, "v1") == ["e", "f"]
    assert ids(client, table, rec_key("content", "u1"), "v1") == ["g", "h"]
    assert ids(client, table, other, "v1") == ["x", "a"]
    assert dynamodb.current_version(client, table)["model_version"] == "v1"
    served = ServingStore(client, table).get_recommendations("u1", "als")
    assert [(i["rank"], i["item_id"]) for i in served.items] == [(1, "a"), (3, "b"), (4, "c")]

    assert list_edits.remove_from_lists(client, table, "u1", "x") == {}, "a second purchase changes nothing"
    assert list_edits.remove_from_lists(client, table, "nobody", "x") == {}


class Racing:
    """A real client that runs ``before_update`` (another writer) ahead of each of the
    first ``times`` UpdateItem calls, as if it had won the race."""

    def __init__(self, inner, before_update, times: int = 1):
        self.inner = inner
        self.before_update = before_update
        self.left = times
        self.updates = 0

    def update_item(self, **kwargs):
        self.updates += 1
        if self.left:
            self.left -= 1
            self.before_update()
        return self.inner.update_item(**kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_list_rewritten_meanwhile_is_read_again_and_the_right_product_removed(local):
    store_settings, client = local
    table, pk = store_settings.table, rec_key("als", "u1")
    publish_lists(client, store_settings, {(pk, "v1"): ["a", "x", "b"]})
    # The export re-publishes v1 between the read and the write: x moves to index 2.
    racing = Racing(client, lambda: publish_lists(client, store_settings, {(pk, "v1"): ["b", "a", "x", "c"]}))

    assert list_edits.remove_from_lists(racing, table, "u1", "x", models=["als"]) == {"als": ["v1"]}

    assert ids(client, table, pk, "v1") == [
        "b",
        "a",
        "c",
    ]  # not "b", "x", "c": index 1 was not removed blindly
    assert racing.updates == 2


def test_a_list_deleted_meanwhile_is_not_created_again(local):
    store_settings, client = local
    table, pk = store_settings.table, rec_key("als", "u1")
    publish_lists(client, store_settings, {(pk, "v1"): ["x", "a"]})
    key = {"pk": typed(pk), "sk": typed("v1")}
    racing = Racing(client, lambda: client.delete_item(TableName=table, Key=key))

    assert list_edits.remove_from_lists(racing, table, "u1", "x", models=["als"]) == {}
    assert "Item" not in client.get_item(TableName=table, Key=key)


def test_a_switch_while_removing_cleans_the_version_switched_to(local):
    store_settings, client = local
    table, pk = store_settings.table, rec_key("als", "u1")
    publish_lists(client, store_settings, {(pk, "v1"): ["x", "a"]})
    switch_version(client, table, "v1", "gen-v1", expected=None)

    def export_v2():  # writes v2 (after the lists were read) and switches to it
        publish_lists(client, store_settings, {(pk, "v2"): ["b", "x"]})
        switch_version(client, table, "v2", "gen-v2", expected="v1")

    removed = list_edits.remove_from_lists(Racing(client, export_v2), table, "u1", "x", models=["als"])

    assert removed == {"als": ["v1", "v2"]}
    assert ids(client, table, pk, "v2") == ["b"]
    assert ServingStore(client, table).get_recommendations("u1", "als").model_version == "v2"


def test_a_cached_pointer_is_reused_for_its_ttl_and_never_mixes_versions(local):
    store_settings, client = local
    table, pk = store_settings.table, rec_key("als", "u1")
    publish_lists(client, store_settings, {(pk, "v1"): ["a", "b"]})
    switch_version(client, table, "v1", "gen-v1", expected=None)
    now = [100.0]
    store = ServingStore(client, table, pointer_ttl_s=5.0, clock=lambda: now[0])
    assert store.get_recommendations("u1", "als").model_version == "v1"
    # A publish of v2: for up to 5 seconds this reader still serves v1, whole.
    publish_lists(client, store_settings, {(pk, "v2"): ["c", "d"]})
    switch_version(client, table, "v2", "gen-v2", expected="v1")
    now[0] = 104.9
    got = store.get_recommendations("u1", "als")
    assert (got.model_version, [i["item_id"] for i in got.items]) == ("v1", ["a", "b"])
    now[0] = 105.0
    got = store.get_recommendations("u1", "als")
    assert (got.model_version, [i["item_id"] for i in got.items]) == ("v2", ["c", "d"])
    # Without a TTL every call reads the pointer.
    assert ServingStore(client, table).current_version()["model_version"] == "v2"


def test_a_list_that_keeps_changing_stops_with_an_error(local):
    store_settings, client = local
    table, pk = store_settings.table, rec_key("als", "u1")
    orders = itertools.cycle([["a", "x"], ["x", "a"]])
    publish_lists(client, store_settings, {(pk, "v1"): next(orders)})
    racing = Racing(
        client, lambda: publish_lists(client, store_settings, {(pk, "v1"): next(orders)}), times=99
    )

    with pytest.raises(ServingError, match="kept changing: x not removed after 5 attempts"):
        list_edits.remove_item(racing, table, next(list_edits.stored_lists(client, table, pk)), "x")


def test_an_unreachable_dynamodb_is_a_typed_error_naming_the_endpoint():
    endpoint = "http://127.0.0.1:9"  # discard: nothing listens
    client = make_client(StoreSettings(table=TABLE, region="us-east-1", endpoint_url=endpoint))

    with pytest.raises(
        interface.BackendUnavailable, match=f"cannot reach DynamoDB table {TABLE} at {endpoint}"
    ):
        ServingStore(client, TABLE).get_recommendations("u1", "als")


def test_a_missing_table_says_to_publish_first(endpoint):
    client = make_client(StoreSettings(table="no-such-table", region="us-east-1", endpoint_url=endpoint))

    with pytest.raises(ServingError, match="DynamoDB table no-such-table at .* does not exist: publish"):
        ServingStore(client, "no-such-table").current_version()


# --- GoldTableStore: the gold tables without Spark ---------------------------------


@pytest.fixture(scope="module")
def gold(tmp_path_factory):
    from tests.gold_tables import write_gold_tables

    return write_gold_tables(tmp_path_factory.mktemp("gold"))


def store_over(gold) -> gold_tables.GoldTableStore:
    return gold_tables.GoldTableStore(str(gold.warehouse))


def test_gold_lists_are_served_in_rank_order_for_every_user_and_model(gold):
    from tests.gold_tables import VERSION

    store = store_over(gold)
    assert store.current_version()["model_version"] == VERSION
    for (user, model), expected in gold.lists.items():
        got = stores.get_recommendations(user, model, store=store)
        assert (got.user_id, got.model, got.model_version, got.fallback) == (user, model, VERSION, False)
        assert [i["rank"] for i in got.items] == list(range(1, 11))
        assert got.items == [
            {k: i[k] for k in ("rank", "item_id", "title", "category", "score", "reason")} for i in expected
        ]


def test_unknown_users_get_the_versions_most_popular_products(gold):
    got = store_over(gold).get_recommendations("U9999999", "als")
    assert got.fallback is True
    assert got.items == gold.popular
    assert [i["rank"] for i in got.items] == list(range(1, 11))


def test_history_is_newest_first_with_titles(gold):
    from tests.gold_tables import NO_METADATA_ITEM, USERS

    store = store_over(gold)
    for user in USERS[:3]:
        rows = store.history(user)
        assert [(r["ts"], r["item_id"], r["split"]) for r in rows] == [
            (r["ts"], r["item_id"], r["split"]) for r in gold.history[user]
        ]
        assert [r["title"] for r in rows] == [gold.items[r["item_id"]]["title"] for r in rows]
    assert NO_METADATA_ITEM in [r["item_id"] for r in store.history(USERS[0])]
    assert store.history("U9999999") == []


def test_metrics_and_sample_users(gold):
    from tests.gold_tables import USERS

    store = store_over(gold)
    assert store.metrics() == sorted(gold.metrics, key=lambda r: (r["model"], r["metric"]))
    assert store.sample_users(100) == sorted(USERS)
    some = store.sample_users(4)
    assert len(some) == 4 and set(some) < set(USERS) and some == sorted(some)
    assert some[0] == min(USERS) and some[-1] != sorted(USERS)[3], "spread over the ids, not the first four"


def test_a_store_is_one_snapshot_and_a_new_store_sees_a_new_run(gold, tmp_path):
    import shutil

    from deltalake import DeltaTable, write_deltalake

    from tests.gold_tables import USERS

    root = tmp_path / "copy"
    shutil.copytree(gold.root, root)
    old = gold_tables.GoldTableStore(str(root / "warehouse"))
    user = USERS[0]
    before = old.get_recommendations(user, "als").items

    path = str(root / "warehouse" / "gold" / "user_recommendations")
    table = DeltaTable(path).to_pyarrow_table()
    rows = [{**r, "model_version": "next"} for r in table.to_pylist() if r["user_id"] != user]
    write_deltalake(
        path, type(table).from_pylist(rows, schema=table.schema), mode="overwrite", partition_by=["model"]
    )
    path = str(root / "warehouse" / "gold" / "popular_fallback")
    table = DeltaTable(path).to_pyarrow_table()
    rows = [{**r, "model_version": "next"} for r in table.to_pylist()]
    write_deltalake(path, type(table).from_pylist(rows, schema=table.schema), mode="overwrite")

    assert old.get_recommendations(user, "als").items == before
    new = gold_tables.GoldTableStore(str(root / "warehouse"))
    assert new.current_version()["model_version"] == "next"
    unknown = new.get_recommendations(user, "als")
    assert (unknown.fallback, unknown.model_version) == (True, "next")
    assert unknown.items == gold.popular


def test_the_store_serves_the_version_published_last_among_those_kept(gold, tmp_path):
    """The gold tables keep a partition per version; gold/versions says which one the export
    published last. A store serves that one, with its own lists, fallback, metrics and
    users, whatever else the tables hold; publishing an older version again serves it."""
    import shutil
    from datetime import UTC, datetime

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from tests.gold_tables import USERS, VERSION

    root = tmp_path / "copy"
    shutil.copytree(gold.root, root)
    warehouse = root / "warehouse" / "gold"

    def reranked(items):
        return [{**item, "rank": rank} for rank, item in enumerate(items, start=1)]

    def add_version(name, change):
        table = DeltaTable(str(warehouse / name)).to_pyarrow_table()
        rows = [change({**r, "model_version": "next"}) for r in table.to_pylist()]
        rows = [r for r in rows if r is not None]
        partitions = ["model"] if name == "user_recommendations" else None
        write_deltalake(
            str(warehouse / name),
            type(table).from_pylist(rows, schema=table.schema),
            mode="append",
            partition_by=partitions,
        )

    # "next": every list reversed, user 0 unknown to it, other metrics and fallback scores.
    add_version(
        "user_recommendations",
        lambda r: None if r["user_id"] == USERS[0] else {**r, "items": reranked(r["items"][::-1])},
    )
    add_version("popular_fallback", lambda r: {**r, "score": r["score"] + 100})
    add_version("metrics", lambda r: {**r, "value": r["value"] / 2})

    def publish(*versions):
        rows = [
            {"model_version": v, "published_at": datetime(2026, 1, 1 + n, tzinfo=UTC)}
            for n, v in enumerate(versions)
        ]
        schema = pa.schema([("model_version", pa.string()), ("published_at", pa.timestamp("us", tz="UTC"))])
        write_deltalake(
            str(warehouse / "versions"), pa.Table.from_pylist(rows, schema=schema), mode="overwrite"
        )

    publish(VERSION, "next")
    store = gold_tables.GoldTableStore(str(root / "warehouse"))
    assert store.current_version() == {"model_version": "next", "generated_at": "2026-01-02T00:00:00+00:00"}
    user = USERS[1]
    got = store.get_recommendations(user, "als")
    assert (got.fallback, got.model_version) == (False, "next")
    assert got.items == reranked(gold.lists[(user, "als")][::-1])
    unknown = store.get_recommendations(USERS[0], "als")
    assert unknown.fallback and [i["score"] for i in unknown.items] == [
        p["score"] + 100 for p in gold.popular
    ]
    assert {r["model_version"] for r in store.metrics()} == {"next"}
    assert len(store.metrics()) == len(gold.metrics)
    assert USERS[0] not in store.sample_users(len(USERS))

    publish(VERSION, "next", VERSION)  # the older version published again
    again = gold_tables.GoldTableStore(str(root / "warehouse"))
    assert again.current_version()["model_version"] == VERSION
    assert again.get_recommendations(user, "als").items == gold.lists[(user, "als")]
    assert again.get_recommendations(USERS[0], "als").items == gold.lists[(USERS[0], "als")]
    assert sorted(r["value"] for r in again.metrics()) == sorted(r["value"] for r in gold.metrics)


def test_missing_tables_are_messages_naming_them(gold, tmp_path):
    import shutil

    from deltalake import DeltaTable, write_deltalake

    from tests.gold_tables import USERS

    empty = gold_tables.GoldTableStore(str(tmp_path / "warehouse"))
    with pytest.raises(
        ServingError, match=r"no Delta table at .*/gold/user_recommendations: run the pipeline first"
    ):
        empty.get_recommendations("u1", "als")
    with pytest.raises(ServingError, match=r"no Delta table at .*/silver/interactions"):
        empty.history("u1")

    copy = tmp_path / "copy"
    shutil.copytree(gold.warehouse, copy)
    fallback = copy / "gold" / "popular_fallback"
    shutil.rmtree(fallback)
    no_fallback = gold_tables.GoldTableStore(str(copy))
    assert no_fallback.get_recommendations(USERS[0], "als").fallback is False  # known users need no fallback
    with pytest.raises(ServingError, match=r"no Delta table at .*/gold/popular_fallback"):
        no_fallback.get_recommendations("U9999999", "als")

    # A fallback table from another version than the lists is refused, not served.
    stale = DeltaTable(str(gold.warehouse / "gold" / "popular_fallback")).to_pyarrow_table()
    rows = [{**r, "model_version": "older"} for r in stale.to_pylist()]
    write_deltalake(str(fallback), type(stale).from_pylist(rows, schema=stale.schema))
    with pytest.raises(ServingError, match=r"popular_fallback has no list for version fixture0001"):
        gold_tables.GoldTableStore(str(copy)).get_recommendations("U9999999", "als")


def test_store_from_config_picks_dynamodb_only_when_enabled(config):
    assert isinstance(stores.store_from_config(config), gold_tables.GoldTableStore)
    enabled = config.with_overrides(
        ["export.dynamodb.enabled=true", "aws.dynamodb_endpoint=http://127.0.0.1:9"]
    )
    store = stores.store_from_config(enabled)
    assert isinstance(store, ServingStore) and store.table == config.require("export.dynamodb.table")


def test_gold_tables_in_a_bucket_get_the_endpoint_but_no_credentials(config):
    local = config.with_overrides(["aws.s3_endpoint=http://127.0.0.1:9000", "aws.region=eu-west-1"])
    assert gold_tables.delta_storage_options(local, "/data/warehouse") is None
    assert gold_tables.delta_storage_options(local, "s3://b/warehouse") == {
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
    }
    assert gold_tables.delta_storage_options(config, "s3://b/warehouse") == {"AWS_REGION": "us-east-1"}


def test_gold_tables_in_a_bucket_read_the_same_as_on_disk(gold, config, local_aws):
    import boto3
    from deltalake import DeltaTable, write_deltalake

    from tests.gold_tables import USERS

    bucket = f"gold-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=local_aws["s3"], region_name="us-east-1").create_bucket(Bucket=bucket)
    aws = config.with_overrides(
        [
            f"aws.s3_endpoint={local_aws['s3']}",
            f"paths.warehouse=s3://{bucket}/warehouse",
            f"paths.models=s3://{bucket}/models",
        ]
    )
    options = gold_tables.delta_storage_options(aws, "s3://")
    copies = {
        f"warehouse/{n}": ["model"] if n == "gold/user_recommendations" else None
        for n in (
            "gold/user_recommendations",
            "gold/popular_fallback",
            "gold/metrics",
            "silver/interactions",
            "silver/items",
        )
    }
    for name, partition_by in copies.items():
        table = DeltaTable(str(gold.root / name)).to_pyarrow_table()
        write_deltalake(f"s3://{bucket}/{name}", table, partition_by=partition_by, storage_options=options)

    in_bucket, on_disk = gold_tables.GoldTableStore.from_config(aws), store_over(gold)
    assert in_bucket.source == f"gold tables under s3://{bucket}/warehouse"
    for user, model in [(USERS[0], "als"), (USERS[5], "hybrid"), ("U9999999", "content")]:
        got, expected = in_bucket.get_recommendations(user, model), on_disk.get_recommendations(user, model)
        assert replace(got, generated_at="") == replace(expected, generated_at="")  # written at other times
    assert in_bucket.history(USERS[1]) == on_disk.history(USERS[1])
    assert in_bucket.metrics() == on_disk.metrics()

    unreachable = gold_tables.GoldTableStore.from_config(
        aws.with_overrides(["aws.s3_endpoint=http://127.0.0.1:9"])
    )
    with pytest.raises(
        interface.BackendUnavailable,
        # The served version is looked up first (gold/versions, or the serving table here).
        match=r"cannot read s3://.*/gold/user_recommendations \(S3 endpoint http://127.0.0.1:9\)",
    ):
        unreachable.metrics()
