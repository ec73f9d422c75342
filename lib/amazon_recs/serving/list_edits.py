"""User activity on stored lists: a product the user bought or rated leaves every list.

Only lists are written, never the pointer, so readers still see one whole version.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from amazon_recs.models import MODELS
from amazon_recs.serving.dynamodb import current_version, rec_key, typed, untyped
from amazon_recs.serving.interface import ServingError

# Every model whose lists the export publishes.
STORED_MODELS = MODELS


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
