"""The serving store: versioned top-k lists in DynamoDB with an atomic version switch,
the reader, and the request validation every front end shares.

One table, key ``pk`` (partition) + ``sk`` (sort), holds three kinds of item:

- ``pk = rec#<model>#<user_id>``, ``sk = <model_version>``: one user's top-k
  from one model (``items``: rank, item_id, title, score, reason), with
  ``generated_at`` and the TTL attribute ``expires_at`` (epoch seconds);
- ``pk = fallback#popular``, ``sk = <model_version>``: the most popular
  products, served to users the version does not know;
- ``pk = pointer``, ``sk = current``: which version readers use.

A run writes every item of its version first and only then moves the pointer,
with a condition on the version it replaces. A reader reads the pointer, then
items of that version only, so it sees the old lists or the new ones, never a
mix. Old versions stay readable until DynamoDB's TTL removes them.

``gold_store.GoldTableStore`` serves the same lists from the gold Delta tables;
``store_from_config`` picks DynamoDB when ``export.dynamodb.enabled``, else those.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs.config import Config
from amazon_recs.errors import RecsError, RequestError

log = logging.getLogger(__name__)

POINTER_KEY = {"pk": "pointer", "sk": "current"}
FALLBACK_PK = "fallback#popular"
TTL_ATTRIBUTE = "expires_at"
BATCH_SIZE = 25  # BatchWriteItem's limit
RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


class ServingError(RecsError):
    """The serving store refused or lost a write, or holds no published version."""


class BackendUnavailable(ServingError):
    """The store could not be reached or read (connection refused, timeout, throttled)."""


def rec_key(model: str, user_id: str) -> str:
    return f"rec#{model}#{user_id}"


@dataclass(frozen=True)
class StoreSettings:
    """Where the table is and how hard to retry; small and picklable, so executors get it."""

    table: str
    region: str
    endpoint_url: str | None = None
    max_attempts: int = 10
    base_delay_s: float = 0.05
    max_delay_s: float = 5.0

    @classmethod
    def from_config(cls, config: Config) -> StoreSettings:
        return cls(
            table=config.require("export.dynamodb.table"),
            region=config.require("aws.region"),
            endpoint_url=config.require("aws.dynamodb_endpoint") or None,
            max_attempts=config.require("export.dynamodb.max_attempts"),
            base_delay_s=config.require("export.dynamodb.base_delay_s"),
            max_delay_s=config.require("export.dynamodb.max_delay_s"),
        )


def make_client(settings: StoreSettings):
    """A DynamoDB client; credentials come from the AWS default chain, never from config.

    botocore's own retries are off: throttling and UnprocessedItems are retried
    here, once, with a bound the run reports.
    """
    return boto3.client(
        "dynamodb",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


# --- writing ----------------------------------------------------------------


@dataclass
class WriteStats:
    items: int = 0
    batches: int = 0
    retries: int = 0
    throttled: int = 0
    unprocessed: int = 0

    def __add__(self, other: WriteStats) -> WriteStats:
        return WriteStats(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def as_tuple(self) -> tuple[int, ...]:
        return (self.items, self.batches, self.retries, self.throttled, self.unprocessed)


@dataclass
class Backoff:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2 ** attempt))."""

    base_s: float
    cap_s: float
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def wait(self, attempt: int) -> None:
        self.sleep(self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt)))


def write_items(
    client, settings: StoreSettings, items: Iterable[dict], backoff: Backoff | None = None
) -> WriteStats:
    """BatchWriteItem ``items`` (already in DynamoDB's typed form) in batches of 25.

    Throttling errors and UnprocessedItems are retried with backoff until
    ``settings.max_attempts`` calls for one batch; then the run stops rather
    than lose an item.

    Raises:
        ServingError: a batch still had unwritten items after the last attempt,
            or DynamoDB refused it for a reason retrying cannot fix.
    """
    backoff = backoff or Backoff(settings.base_delay_s, settings.max_delay_s)
    stats = WriteStats()
    batch: list[dict] = []
    for item in items:
        batch.append(item)
        if len(batch) == BATCH_SIZE:
            stats += _write_batch(client, settings, batch, backoff)
            batch = []
    if batch:
        stats += _write_batch(client, settings, batch, backoff)
    return stats


def _write_batch(client, settings: StoreSettings, batch: list[dict], backoff: Backoff) -> WriteStats:
    stats = WriteStats(items=len(batch), batches=1)
    pending = [{"PutRequest": {"Item": item}} for item in batch]
    for attempt in range(settings.max_attempts):
        if attempt:
            stats.retries += 1
            backoff.wait(attempt)
        try:
            response = client.batch_write_item(RequestItems={settings.table: pending})
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in RETRYABLE_CODES:
                raise ServingError(f"DynamoDB refused a write to {settings.table}: {code}: {exc}") from None
            stats.throttled += 1
            continue
        except BotoCoreError as exc:  # connection reset, read timeout: the batch may be retried whole
            log.warning("DynamoDB call failed (%s); retrying", exc)
            stats.throttled += 1
            continue
        pending = response.get("UnprocessedItems", {}).get(settings.table, [])
        if not pending:
            return stats
        stats.unprocessed += len(pending)
    raise ServingError(
        f"{len(pending)} items were still unwritten to DynamoDB table {settings.table} after "
        f"{settings.max_attempts} attempts (raise export.dynamodb.max_attempts or the table's capacity)"
    )


def typed(value: Any) -> dict:
    """A Python value in DynamoDB's attribute-value form (floats as exact decimals)."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float, Decimal)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"DynamoDB cannot store the number {value}")
        return {"N": str(Decimal(str(value)))}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {k: typed(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"L": [typed(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def untyped(value: dict) -> Any:
    """The inverse of ``typed``: numbers come back as float (or int when whole)."""
    ((kind, inner),) = value.items()
    if kind == "NULL":
        return None
    if kind == "N":
        return int(inner) if inner.lstrip("-").isdigit() else float(inner)
    if kind == "M":
        return {k: untyped(v) for k, v in inner.items()}
    if kind == "L":
        return [untyped(v) for v in inner]
    return inner


def list_item(
    pk: str, version: str, items: list[dict], generated_at: str, expires_at: int, **extra: Any
) -> dict:
    """One stored top-k list in typed form."""
    ordered = [
        {
            "rank": int(i["rank"]),
            "item_id": i["item_id"],
            "title": i.get("title"),
            "score": round(float(i["score"]), 6),
            "reason": i.get("reason"),
            # The serving layout's category, kept when the source has the column.
            **({"category": i["category"]} if "category" in i else {}),
        }
        for i in sorted(items, key=lambda i: int(i["rank"]))
    ]
    attributes = {
        "pk": pk,
        "sk": version,
        "model_version": version,
        "generated_at": generated_at,
        TTL_ATTRIBUTE: expires_at,
        "items": ordered,
        **extra,
    }
    return {k: typed(v) for k, v in attributes.items()}


def write_partition(
    rows: Iterator,
    settings: StoreSettings,
    version: str,
    generated_at: str,
    expires_at: int,
    client_factory: Callable[[StoreSettings], Any] = make_client,
) -> Iterator[tuple[int, ...]]:
    """Executor side of the export: one client per partition, rows written in batches.

    Yields a single stats tuple, so the driver collects counts, never items.
    """
    client = client_factory(settings)
    items = (
        list_item(
            rec_key(row["model"], row["user_id"]),
            version,
            [i.asDict() for i in row["items"]],
            generated_at,
            expires_at,
            user_id=row["user_id"],
            model=row["model"],
        )
        for row in rows
    )
    yield write_items(client, settings, items).as_tuple()


# --- the pointer and the table ----------------------------------------------


def ensure_table(client, table: str) -> None:
    """Create the table (on demand capacity, TTL on ``expires_at``) unless it exists."""
    try:
        client.describe_table(TableName=table)
        return
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise ServingError(f"cannot describe DynamoDB table {table}: {exc}") from None
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    try:
        client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
    except ClientError as exc:  # dynalite, the local stand-in, has no TTL
        log.warning("TTL not enabled on %s (%s): old versions will not expire there", table, exc)


def current_version(client, table: str) -> dict | None:
    """The pointer item (``model_version``, ``generated_at``, ``previous``), or None."""
    response = client.get_item(
        TableName=table, Key={k: typed(v) for k, v in POINTER_KEY.items()}, ConsistentRead=True
    )
    item = response.get("Item")
    return {k: untyped(v) for k, v in item.items()} if item else None


def switch_version(client, table: str, version: str, generated_at: str, expected: str | None) -> None:
    """Point readers at ``version`` in one conditional write.

    Raises:
        ServingError: the pointer no longer names ``expected`` (another run switched it).
    """
    attributes = {**POINTER_KEY, "model_version": version, "generated_at": generated_at, "previous": expected}
    condition = "attribute_not_exists(pk)" if expected is None else "model_version = :expected"
    kwargs = {"ExpressionAttributeValues": {":expected": typed(expected)}} if expected is not None else {}
    try:
        client.put_item(
            TableName=table,
            Item={k: typed(v) for k, v in attributes.items()},
            ConditionExpression=condition,
            **kwargs,
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            raise ServingError(
                f"the serving pointer of {table} moved during this export (expected {expected!r}); "
                "another run published a version: re-run the export"
            ) from None
        raise


# --- activity: a product leaves a user's lists ---------------------------------

# Every model whose lists the export publishes (schemas.MODELS, which needs pyspark).
STORED_MODELS = ("als", "content", "popular", "hybrid", "random")


def stored_lists(client, table: str, pk: str) -> Iterator[dict]:
    """Every stored version of one list key (strongly consistent), untyped."""
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": typed(pk)},
        "ConsistentRead": True,
    }
    while True:
        page = client.query(**kwargs)
        for raw in page.get("Items", []):
            yield {k: untyped(v) for k, v in raw.items()}
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def remove_item(client, table: str, stored: dict, item_id: str, max_attempts: int = 5) -> bool:
    """Take ``item_id`` out of one stored list; True when this call removed it.

    One UpdateItem ``REMOVE items[i]`` on the condition that element ``i`` is still
    ``item_id``. A list changed meanwhile (another removal shifted it, or the export
    re-wrote it) fails the condition and is read again, so the wrong element is never
    removed. A list that no longer exists fails it too, and is never re-created.

    Raises:
        ServingError: the list changed on every one of ``max_attempts`` tries.
    """
    key = {"pk": typed(stored["pk"]), "sk": typed(stored["sk"])}
    for _ in range(max_attempts):
        ids = [entry.get("item_id") for entry in stored.get("items") or []]
        if item_id not in ids:
            return False
        index = ids.index(item_id)
        try:
            client.update_item(
                TableName=table,
                Key=key,
                UpdateExpression=f"REMOVE #items[{index}]",
                ConditionExpression=f"#items[{index}].item_id = :item",
                ExpressionAttributeNames={"#items": "items"},
                ExpressionAttributeValues={":item": typed(item_id)},
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
        fresh = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        if fresh is None:
            return False
        stored = {k: untyped(v) for k, v in fresh.items()}
    raise ServingError(
        f"list {stored['pk']} of version {stored['sk']} kept changing: {item_id} not removed "
        f"after {max_attempts} attempts"
    )


def remove_from_lists(
    client, table: str, user_id: str, item_id: str, models: Iterable[str] = STORED_MODELS, rounds: int = 3
) -> dict[str, list[str]]:
    """Take ``item_id`` out of every stored version of the user's lists: {model: [versions]}.

    Every version is cleaned, not only the one the pointer names, so a version the
    export has written but not yet switched to is covered. When the pointer moves
    while this runs, the lists are read and cleaned again (at most ``rounds`` times):
    the version switched to had all its lists written before the switch. Only lists
    are written, never the pointer, so readers still see one whole version.
    """
    changed: dict[str, list[str]] = {}
    for _ in range(rounds):
        before = current_version(client, table)
        for model in models:
            for stored in stored_lists(client, table, rec_key(model, user_id)):
                if remove_item(client, table, stored, item_id):
                    changed.setdefault(model, []).append(stored["sk"])
        if current_version(client, table) == before:
            break
    return changed


# --- requests: what a reader may ask for --------------------------------------

# The models people are offered (random is the evaluation's floor, not a product).
SERVED_MODELS = ("hybrid", "als", "content", "popular")
# Ids of every supported source fit (Amazon 2018/2023, MovieLens, the sample); '#',
# the key separator of rec#<model>#<user>, and white space do not.
ID_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
ID_RULE = "1 to 128 letters, digits or . _ - : @"


def _shown(value: object, limit: int = 40) -> str:
    """A value quoted for a message, cut so a huge input is never echoed back whole."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def validate_id(value: object, what: str = "user id") -> str:
    """``value`` when it is a well-formed user or item id.

    Raises:
        RequestError: it is missing, empty, too long or has other characters.
    """
    if value is None or (isinstance(value, str) and not value):
        raise RequestError(f"a {what} is required")
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise RequestError(f"{_shown(value)} is not a valid {what}: use {ID_RULE}")
    return value


def validate_model(value: object, allowed: Iterable[str] = SERVED_MODELS) -> str:
    """``value`` when it names a served model.

    Raises:
        RequestError: naming the models that are served.
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise RequestError(f"unknown model {_shown(value)}: one of {', '.join(allowed)}")
    return value


def validate_k(value: object, max_k: int) -> int:
    """``value`` (an int, or its decimal digits as text) when it is in 1..max_k.

    Raises:
        RequestError: it is not a whole number in range.
    """
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or not 1 <= int(text) <= max_k:
        raise RequestError(f"k must be a whole number from 1 to {max_k}, got {_shown(value)}")
    return int(text)


# --- reading ----------------------------------------------------------------


@dataclass(frozen=True)
class Recommendations:
    user_id: str
    model: str
    model_version: str
    generated_at: str
    items: list[dict]
    # True when the user is unknown to this version and popular products are served.
    fallback: bool


class RecommendationStore(Protocol):
    """What a reader needs from a store; ServingStore and GoldTableStore both have it."""

    @property
    def source(self) -> str: ...

    def current_version(self) -> dict | None: ...

    def get_recommendations(self, user_id: str, model: str) -> Recommendations: ...


class ServingStore:
    """Reads what the export published; the app and any serving code go through this."""

    def __init__(self, client, table: str):
        self.client = client
        self.table = table

    @classmethod
    def from_config(cls, config: Config) -> ServingStore:
        settings = StoreSettings.from_config(config)
        return cls(make_client(settings), settings.table)

    @property
    def source(self) -> str:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        return f"DynamoDB table {self.table}" + (f" at {endpoint}" if endpoint else "")

    def current_version(self) -> dict | None:
        with self._reading():
            return current_version(self.client, self.table)

    def get_recommendations(self, user_id: str, model: str) -> Recommendations:
        """The user's top-k from ``model`` in the current version, or the popular fallback.

        Raises:
            ServingError: nothing has been published yet.
            BackendUnavailable: DynamoDB could not be reached or refused the read.
        """
        pointer = self.current_version()
        if pointer is None:
            raise ServingError(
                f"no version is published in DynamoDB table {self.table}: run the export first"
            )
        version = pointer["model_version"]
        item = self._get(rec_key(model, user_id), version)
        fallback = item is None
        if fallback:
            item = self._get(FALLBACK_PK, version)
            if item is None:
                raise ServingError(f"version {version} in {self.table} has no popular fallback list")
        return Recommendations(user_id, model, version, item["generated_at"], item["items"], fallback)

    def _get(self, pk: str, version: str) -> dict | None:
        with self._reading():
            response = self.client.get_item(TableName=self.table, Key={"pk": typed(pk), "sk": typed(version)})
        item = response.get("Item")
        return {k: untyped(v) for k, v in item.items()} if item else None

    @contextmanager
    def _reading(self):
        """DynamoDB's failures as typed errors with a message a person can act on."""
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise ServingError(
                    f"{self.source} does not exist: publish with export.dynamodb.enabled first"
                ) from None
            raise BackendUnavailable(f"{self.source} refused a read ({code})") from None
        except BotoCoreError as exc:
            raise BackendUnavailable(f"cannot reach {self.source}: {exc}") from None


@lru_cache(maxsize=1)
def _default_store() -> ServingStore:
    from amazon_recs.config import load_config

    return ServingStore.from_config(load_config(os.environ.get("AMAZON_RECS_CONFIG", "conf/local-aws.yaml")))


def get_recommendations(
    user_id: str, model: str, store: RecommendationStore | None = None
) -> Recommendations:
    """One user's current top-k from ``model``; unknown users get popular products.

    Without ``store``, the one described by the config file named in
    ``AMAZON_RECS_CONFIG`` (default ``conf/local-aws.yaml``) is used.
    """
    from amazon_recs.schemas import MODELS

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    return (store or _default_store()).get_recommendations(user_id, model)


def store_from_config(config: Config) -> RecommendationStore:
    """DynamoDB when ``export.dynamodb.enabled``, else the gold tables under ``paths.warehouse``."""
    if config.require("export.dynamodb.enabled"):
        return ServingStore.from_config(config)
    from amazon_recs.gold_store import GoldTableStore  # deltalake is only needed here

    return GoldTableStore.from_config(config)
