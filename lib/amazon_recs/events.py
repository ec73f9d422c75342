"""What an activity event is, shared by the API that lands events and the ingest that
reads them (no imports: the Lambda package carries this module without pyspark)."""

from __future__ import annotations

import re

EVENT_TYPES = ("purchase", "rating", "view")
# Events that say what the user thinks of the item (like a review), as opposed to
# what they did: the latest of these sets an interaction's weight.
EXPLICIT_EVENTS = frozenset({"rating"})
# What a user bought or rated leaves their lists: the batch excludes interacted
# products, and serving should not wait for the next run. A view changes nothing.
REMOVING_EVENTS = frozenset({"purchase", "rating"})
EVENT_FIELDS = ("user_id", "item_id", "event_type", "timestamp", "rating", "event_id")
EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # the same, for Spark's rlike
