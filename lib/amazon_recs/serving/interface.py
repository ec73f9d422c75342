"""What every reader of recommendations sees: the answer, the store interface, the errors.

``dynamodb.ServingStore`` and ``gold_tables.GoldTableStore`` both implement
``RecommendationStore``; front ends (the app, the Lambda handlers) depend on this only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from amazon_recs.errors import RecsError


class ServingError(RecsError):
    """The serving store refused or lost a write, or holds no published version."""


class BackendUnavailable(ServingError):
    """The store could not be reached or read (connection refused, timeout, throttled)."""


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
