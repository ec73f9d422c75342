"""The DynamoDB serving store: versioned top-k lists, an atomic version switch, and the reader.

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
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs.config import Config
from amazon_recs.errors import RecsError

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


class ServingStore:
    """Reads what the export published; the app and any serving code go through this."""

    def __init__(self, client, table: str):
        self.client = client
        self.table = table

    @classmethod
    def from_config(cls, config: Config) -> ServingStore:
        settings = StoreSettings.from_config(config)
        return cls(make_client(settings), settings.table)

    def current_version(self) -> dict | None:
        return current_version(self.client, self.table)

    def get_recommendations(self, user_id: str, model: str) -> Recommendations:
        """The user's top-k from ``model`` in the current version, or the popular fallback.

        Raises:
            ServingError: nothing has been published yet.
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
        response = self.client.get_item(TableName=self.table, Key={"pk": typed(pk), "sk": typed(version)})
        item = response.get("Item")
        return {k: untyped(v) for k, v in item.items()} if item else None


@lru_cache(maxsize=1)
def _default_store() -> ServingStore:
    from amazon_recs.config import load_config

    return ServingStore.from_config(load_config(os.environ.get("AMAZON_RECS_CONFIG", "conf/local-aws.yaml")))


def get_recommendations(user_id: str, model: str, store: ServingStore | None = None) -> Recommendations:
    """One user's current top-k from ``model``; unknown users get popular products.

    Without ``store``, the one described by the config file named in
    ``AMAZON_RECS_CONFIG`` (default ``conf/local-aws.yaml``) is used.
    """
    from amazon_recs.schemas import MODELS

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    return (store or _default_store()).get_recommendations(user_id, model)
