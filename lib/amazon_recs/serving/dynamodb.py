"""The DynamoDB serving store: its keys and typed values, the table, the version
pointer with its atomic switch, and ``ServingStore``, the reader of what was published.

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

The writer (``writer``), activity edits (``activity``) and the gold-table reader
(``gold_tables``) build on the keys, types and pointer defined here.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs.config import Config
from amazon_recs.serving.interface import BackendUnavailable, Recommendations, ServingError

log = logging.getLogger(__name__)

POINTER_KEY = {"pk": "pointer", "sk": "current"}
FALLBACK_PK = "fallback#popular"
TTL_ATTRIBUTE = "expires_at"


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


def make_client(settings: StoreSettings, validate: bool = True):
    """A DynamoDB client; credentials come from the AWS default chain, never from config.

    botocore's own retries are off: throttling and UnprocessedItems are retried
    here, once, with a bound the run reports. ``validate``: botocore checks every
    request's parameters against the API's model before sending it.
    """
    return boto3.client(
        "dynamodb",
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=BotoConfig(
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
            parameter_validation=validate,
        ),
    )


def make_writer_client(settings: StoreSettings):
    """``make_client`` for the bulk writers (export, refresh), without botocore's
    parameter validation: their items are built by ``typed`` alone, and checking
    each BatchWriteItem against the API's model took a third of a writer's time
    (2.6 of 7.5 s for 5,000 lists; DynamoDB still validates every request)."""
    return make_client(settings, validate=False)


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


class ServingStore:
    """Reads what the export published; the app and any serving code go through this."""

    def __init__(self, client, table: str, pointer_ttl_s: float = 0.0, clock=time.monotonic):
        """``pointer_ttl_s``: how long the version pointer read is reused (0: read every
        call). A cached pointer can name the version just replaced for that long, which
        stays readable (its items expire hours later), so no answer mixes versions; the
        pointer item stops being read on every call (one hot key, strongly consistent)."""
        self.client = client
        self.table = table
        self.pointer_ttl_s = pointer_ttl_s
        self.clock = clock
        self._pointer: dict | None = None
        self._pointer_read_at = -math.inf

    @classmethod
    def from_config(cls, config: Config) -> ServingStore:
        settings = StoreSettings.from_config(config)
        return cls(make_client(settings), settings.table)

    @property
    def source(self) -> str:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        return f"DynamoDB table {self.table}" + (f" at {endpoint}" if endpoint else "")

    def current_version(self) -> dict | None:
        now = self.clock()
        if self._pointer is not None and now - self._pointer_read_at < self.pointer_ttl_s:
            return self._pointer
        with self._reading():
            pointer = current_version(self.client, self.table)
        self._pointer, self._pointer_read_at = pointer, now
        return pointer

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
