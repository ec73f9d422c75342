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
# The activity function lands each event in the folder of the day it arrived,
# ``dt=YYYY-MM-DD``; ingest and refresh list only the recent ones.
DAY_FOLDER = "dt"
DAY_FOLDER_PATTERN = rf"{DAY_FOLDER}=(\d{{4}}-\d{{2}}-\d{{2}})"  # the day in group 1


def day_folder(day: str) -> str:
    """The folder name of a day (YYYY-MM-DD)."""
    return f"{DAY_FOLDER}={day}"


def day_of(name: str) -> str | None:
    """The day a folder is named for (YYYY-MM-DD), None for a folder not named by a day."""
    match = re.fullmatch(DAY_FOLDER_PATTERN, name)
    return match.group(1) if match else None
