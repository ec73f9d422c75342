"""Writing lists to DynamoDB: batches of 25, retried with backoff, from the executors.

``write_partition`` runs on an executor with one client per partition and yields
only counts; ``write_items`` retries throttling and UnprocessedItems with full-jitter
exponential backoff and stops the run rather than lose an item.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from amazon_recs import failpoints
from amazon_recs.serving.dynamodb import TTL_ATTRIBUTE, StoreSettings, make_client, rec_key, typed
from amazon_recs.serving.interface import ServingError

log = logging.getLogger(__name__)

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
            failpoints.reached("dynamodb.batch_written")
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


def list_item(
    pk: str, version: str, items: list[dict], generated_at: str, expires_at: int | None, **extra: Any
) -> dict:
    """One stored top-k list in typed form; without ``expires_at`` it never expires."""
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
        **({TTL_ATTRIBUTE: expires_at} if expires_at is not None else {}),
        "items": ordered,
        **extra,
    }
    return {k: typed(v) for k, v in attributes.items()}


def write_partition(
    rows: Iterator,
    settings: StoreSettings,
    version: str,
    generated_at: str,
    expires_at: int | None,
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
