"""What a reader may ask for: ids, models and list lengths, validated the same way by
every front end (the Lambda handlers, the app)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from amazon_recs.errors import RequestError

# The models people are offered (random is the evaluation's floor, not a product).
SERVED_MODELS = ("hybrid", "als", "item_knn", "content", "popular")
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
